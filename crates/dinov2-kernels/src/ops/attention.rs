//! The attention launchers: which kernel runs a head dim, dtype and alignment (flash, the
//! warpgroup-MMA kernels, SIMT f32, or the probabilities path), and the geometry each assumes.

use super::{expect, float, i32_of};
use crate::buffer::{Buffer, DType};
use crate::device::{Arg, Device};
use crate::error::{KernelError, Result};

/// Head dims (padded) of the tensor-core attention kernels.
const FLASH_PADS: [usize; 5] = [16, 32, 64, 96, 128];
/// The largest head dim of every attention kernel.
pub const MAX_HEAD_DIM: usize = 128;

// Launch geometry the kernels assume (the #defines of kernels/*.cu): keep in sync.
/// Query rows per flash block (`FA_BM`; 4 warps x 16 rows) and keys per K/V tile (`FA_BN`).
const FLASH_BM: usize = 64;
/// Query rows per block of the `_r128` flash kernels (4 warps x 2 m-tiles of 16 rows), which
/// exist for padded head dims up to [`FLASH_R128_MAX_PAD`] (253 registers a thread at 64, so
/// two blocks an SM: on an H200 at 257 tokens they ran 12% slower than the 64-row kernels,
/// whose four blocks an SM hide more latency). Opt-in: `DINOV2_ATTENTION=r128`.
const FLASH_BM_WIDE: usize = 128;
const FLASH_R128_MAX_PAD: usize = 64;
const FLASH_BN: usize = 64;
/// Threads of every attention block (`FA_THREADS`, and the f32 and probs kernels).
const ATTENTION_THREADS: u32 = 128;
/// Query rows per block of `attention_f32` (`F32_BQ`).
const F32_ROWS: usize = 16;
/// Rows per block of `softmax_rows` (a warp per row, [`ATTENTION_THREADS`] threads).
const SOFTMAX_ROWS: usize = ATTENTION_THREADS as usize / 32;

/// Which attention kernels a device runs (`DINOV2_ATTENTION`, read when it opens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttentionChoice {
    /// The 64-row flash kernels (the default).
    Flash,
    /// `r128`: the 128-row flash kernels where they exist (head dims up to 64); slower on an
    /// H200 at 257 tokens (see docs/PERFORMANCE.md), kept to compare.
    Wide,
    /// `wgmma`: on an H100/H200, the warpgroup-MMA kernel (`attention_sm90a.cu`) at head dim
    /// 64, the flash kernels elsewhere. Opt-in until measured on a GPU.
    Wgmma,
    /// `wgmma2`: the same with two warpgroups (128 query rows) a block sharing each K/V tile.
    Wgmma2,
    /// `simple` (a debugging switch): the unfused path for every head dim.
    Simple,
}

impl AttentionChoice {
    /// For reports: `flash`, `flash (128 rows)`, `wgmma at head dim 64, flash elsewhere` (or
    /// `wgmma (128 rows) …`), `unfused`.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            AttentionChoice::Flash => "flash",
            AttentionChoice::Wide => "flash (128 rows)",
            AttentionChoice::Wgmma => "wgmma at head dim 64, flash elsewhere",
            AttentionChoice::Wgmma2 => "wgmma (128 rows) at head dim 64, flash elsewhere",
            AttentionChoice::Simple => "unfused",
        }
    }

    /// From `DINOV2_ATTENTION`; `wgmma` only where the sm_90a kernels are loaded (`hopper`).
    pub(crate) fn from_env(hopper: bool) -> Result<Self> {
        let choices = ["flash", "simple", "r128", "wgmma", "wgmma2"];
        Ok(Self::from_switch(
            crate::switch("DINOV2_ATTENTION", &choices)?,
            hopper,
        ))
    }

    /// The choice for the switch's value (`None`: unset); a Hopper kernel asked for without
    /// `hopper` is the flash kernel.
    pub(crate) fn from_switch(value: Option<&str>, hopper: bool) -> Self {
        match value {
            Some("simple") => AttentionChoice::Simple,
            Some("r128") => AttentionChoice::Wide,
            Some("wgmma") if hopper => AttentionChoice::Wgmma,
            Some("wgmma2") if hopper => AttentionChoice::Wgmma2,
            _ => AttentionChoice::Flash,
        }
    }
}

/// Which attention kernel runs a head dim and dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttentionKernel {
    /// `attention_{t}_d{pad}` (`rows` 64) or `attention_{t}_d{pad}_r128` (`rows` 128): tensor
    /// cores, 16-byte cp.async loads (d % 8 == 0, qkv 16-byte aligned).
    Flash { pad: usize, rows: usize },
    /// `attention_wg_{t}_d64` (`rows` 64) or `attention_wg2_{t}_d64` (`rows` 128): Hopper's
    /// warpgroup MMAs, d == 64 (qkv 16-byte aligned).
    Wgmma { rows: usize },
    /// `attention_f32`: SIMT, any d.
    F32,
    /// [`Device::attention_probs`] with a scratch probability buffer: any d, any alignment.
    Probs,
}

/// The kernel for `dtype` and head dim `d` (1..=128) under `choice`; `qkv_aligned`: the qkv
/// and out pointers are 16-byte aligned.
fn attention_kernel(
    dtype: DType,
    d: usize,
    choice: AttentionChoice,
    qkv_aligned: bool,
) -> AttentionKernel {
    if choice == AttentionChoice::Simple {
        return AttentionKernel::Probs;
    }
    if dtype == DType::F32 {
        return AttentionKernel::F32;
    }
    if d == WGMMA_HEAD_DIM && qkv_aligned {
        match choice {
            AttentionChoice::Wgmma => return AttentionKernel::Wgmma { rows: WGMMA_ROWS },
            AttentionChoice::Wgmma2 => {
                return AttentionKernel::Wgmma {
                    rows: 2 * WGMMA_ROWS,
                }
            }
            _ => {}
        }
    }
    match FLASH_PADS.into_iter().find(|&p| p >= d) {
        Some(pad) if d.is_multiple_of(8) && qkv_aligned => AttentionKernel::Flash {
            pad,
            rows: if choice == AttentionChoice::Wide && pad <= FLASH_R128_MAX_PAD {
                FLASH_BM_WIDE
            } else {
                FLASH_BM
            },
        },
        _ => AttentionKernel::Probs,
    }
}

/// The head dim of the warpgroup-MMA attention kernel, its query rows per block
/// (`ATTN_WG_ROWS`), and its dynamic shared memory (`ATTN_WG_SMEM`): the 64-row flash kernel's,
/// whose key-split path runs its last query tile when that has at most 16 rows; more than its
/// own Q, two K and two V tiles of [64][64] 16-bit elements and 1 KiB of alignment.
const WGMMA_HEAD_DIM: usize = 64;
const WGMMA_ROWS: usize = 64;
const WGMMA_SMEM: u32 = flash_smem_bytes(WGMMA_HEAD_DIM, FLASH_BM);
/// `attention_wg2`'s (`ATTN_WG2_SMEM`): two Q tiles, two K and two V tiles, 1 KiB of alignment.
const WGMMA2_SMEM: u32 = 6 * 64 * 64 * 2 + 1024;

/// One kernel launch of [`Device::attention`].
struct AttentionLaunch {
    name: String,
    grid: (u32, u32, u32),
    threads: u32,
    smem: u32,
    /// `scale`, or `scale·log2(e)` for the tensor-core kernels (their exponents are base 2).
    scale: f32,
    /// The first query row, for the kernel that takes it (`attention_wg`).
    q_first: Option<usize>,
}

/// One launch of a warpgroup-MMA attention kernel over an (image, head) grid: `blocks` query
/// tiles of `rows` rows from `q_first` (`Some` for `attention_wg`, which takes it; None: from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WgLaunch {
    rows: usize,
    blocks: usize,
    q_first: Option<usize>,
}

/// The launches that cover `n` query rows with blocks of `rows` (64 or 128). The 128-row
/// kernel leaves a last tile of at most 16 rows to one 64-row block (which runs the flash
/// kernel's key-split path for it): at 257 tokens, two blocks of 128 rows and one of the last
/// row, instead of a third 128-row block computing one row.
fn wgmma_launches(n: usize, rows: usize) -> Vec<WgLaunch> {
    if rows == WGMMA_ROWS {
        return vec![WgLaunch {
            rows,
            blocks: n.div_ceil(rows),
            q_first: Some(0),
        }];
    }
    let tail = n % rows;
    if tail == 0 || tail > 16 {
        return vec![WgLaunch {
            rows,
            blocks: n.div_ceil(rows),
            q_first: None,
        }];
    }
    let mut launches = Vec::new();
    if n / rows > 0 {
        launches.push(WgLaunch {
            rows,
            blocks: n / rows,
            q_first: None,
        });
    }
    launches.push(WgLaunch {
        rows: WGMMA_ROWS,
        blocks: 1,
        q_first: Some(n - tail),
    });
    launches
}

/// Dynamic shared memory of a flash kernel of `rows` query rows per block: Q [rows][pad + 8],
/// K and V [2][64][pad + 8] (double buffered), 2-byte elements; rows padded by 8 elements so that
/// ldmatrix is conflict-free.
const fn flash_smem_bytes(pad: usize, rows: usize) -> u32 {
    ((rows + 4 * FLASH_BN) * (pad + 8) * 2) as u32
}

/// Grid of the flash kernels: (query tiles of `rows`, heads, images).
fn flash_grid(batch: usize, n: usize, heads: usize, rows: usize) -> (u32, u32, u32) {
    (n.div_ceil(rows) as u32, heads as u32, batch as u32)
}

/// Grid of `attention_f32`: (16-row query tiles, heads, images).
fn f32_attention_grid(batch: usize, n: usize, heads: usize) -> (u32, u32, u32) {
    (n.div_ceil(F32_ROWS) as u32, heads as u32, batch as u32)
}

impl Device {
    /// Softmax attention over packed `qkv` `[batch, n, 3·heads·d]` into `out` `[batch, n, heads·d]`
    /// with scores `q·kᵀ·scale`. f16/bf16 run the tensor-core flash kernel (d a multiple of 8);
    /// f32 the SIMT kernel. `d <= 128`. Other head dims, or `DINOV2_ATTENTION=simple` (a
    /// debugging switch), take the unfused path of [`Device::attention_probs`].
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        qkv: &Buffer,
        out: &mut Buffer,
        batch: usize,
        n: usize,
        heads: usize,
        d: usize,
        scale: f32,
    ) -> Result<()> {
        const OP: &str = "attention";
        let t = check_attention(OP, qkv, out, batch, n, heads, d)?;
        let h = heads * d;
        if batch * n * h == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let (qp, op) = (qkv.ptr(s), out.ptr(s));
        let aligned = qp % 16 == 0 && op % 16 == 0;
        // The tensor-core kernels work in the log2 domain (ex2.approx): their scale carries
        // log2(e).
        let log2_scale = scale * std::f32::consts::LOG2_E;
        // Each launch: the kernel, its grid, threads and dynamic shared memory, the scale it
        // takes, and the first query row where it takes one (attention_wg).
        let launches: Vec<AttentionLaunch> =
            match attention_kernel(t, d, self.attention_choice, aligned) {
                AttentionKernel::Probs => {
                    // The tensor-core kernels load 8-element (16-byte) chunks; the unfused path
                    // takes any d and alignment. It needs a [batch, heads, n, n] f32 scratch
                    // buffer.
                    let mut probs = self.alloc(DType::F32, &[batch, heads, n, n])?;
                    return self.attention_probs(qkv, out, &mut probs, batch, n, heads, d, scale);
                }
                AttentionKernel::Flash { pad, rows } => {
                    let suffix = if rows == FLASH_BM_WIDE { "_r128" } else { "" };
                    vec![AttentionLaunch {
                        name: format!("attention_{t}_d{pad}{suffix}"),
                        grid: flash_grid(batch, n, heads, rows),
                        threads: ATTENTION_THREADS,
                        smem: flash_smem_bytes(pad, rows),
                        scale: log2_scale,
                        q_first: None,
                    }]
                }
                AttentionKernel::Wgmma { rows } => wgmma_launches(n, rows)
                    .into_iter()
                    .map(|l| {
                        let grid = (l.blocks as u32, heads as u32, batch as u32);
                        let (name, threads, smem) = match l.q_first {
                            Some(_) => ("attention_wg", ATTENTION_THREADS, WGMMA_SMEM),
                            None => ("attention_wg2", 2 * ATTENTION_THREADS, WGMMA2_SMEM),
                        };
                        AttentionLaunch {
                            name: format!("{name}_{t}_d64"),
                            grid,
                            threads,
                            smem,
                            scale: log2_scale,
                            q_first: l.q_first,
                        }
                    })
                    .collect(),
                AttentionKernel::F32 => vec![AttentionLaunch {
                    name: "attention_f32".to_string(),
                    grid: f32_attention_grid(batch, n, heads),
                    threads: ATTENTION_THREADS,
                    smem: 0,
                    scale,
                    q_first: None,
                }],
            };
        for l in launches {
            let mut args = vec![
                Arg::Ptr(qp),
                Arg::Ptr(op),
                Arg::I32(i32_of(OP, n)?),
                Arg::I32(heads as i32),
                Arg::I32(d as i32),
                Arg::F32(l.scale),
            ];
            args.extend(l.q_first.map(|q| Arg::I32(q as i32)));
            // SAFETY: sizes checked; d <= the kernel's padded head dim (64 for the wgmma
            // kernels); 16-byte alignment checked; the blocks cover query rows below n.
            unsafe { self.launch(&l.name, l.grid, l.threads, l.smem, &args)? };
        }
        Ok(())
    }

    /// [`Device::attention`] that also writes the f32 probabilities `[batch, heads, n, n]`:
    /// the scores `scale·q·kᵀ` by cuBLAS into `probs` (f32 accumulation and output), a row softmax
    /// in place (`softmax_rows_{t}`), and `out = P·V` by cuBLAS (f32 accumulation). For f16/bf16,
    /// P·V multiplies the probabilities rounded to that type (a scratch copy), as transformers'
    /// eager attention does. Any head dim up to 128, any alignment. See the `probs` module.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_probs(
        &self,
        qkv: &Buffer,
        out: &mut Buffer,
        probs: &mut Buffer,
        batch: usize,
        n: usize,
        heads: usize,
        d: usize,
        scale: f32,
    ) -> Result<()> {
        const OP: &str = "attention_probs";
        let t = check_attention(OP, qkv, out, batch, n, heads, d)?;
        let h = heads * d;
        expect(OP, "probs", probs, DType::F32, batch * heads * n * n)?;
        if batch * n * h == 0 {
            return Ok(());
        }
        let rows = batch * heads * n;
        // The probabilities in the storage type, for P·V (f32: the probabilities themselves).
        let rounded = if t == DType::F32 {
            None
        } else {
            Some(self.alloc(t, &[batch, heads, n, n])?)
        };
        let s = &self.stream;
        let (qp, pp, op) = (qkv.ptr(s), probs.ptr(s), out.ptr(s));
        let rp = rounded.as_ref().map_or(pp, |r| r.ptr(s));
        let plan = crate::probs::attention_gemms(batch, n, heads, d);
        // SAFETY: the plan's matrices lie inside the buffers whose sizes are checked above (the
        // plan's emulation test checks its bounds).
        unsafe {
            for (scores, _) in &plan {
                self.blas
                    .gemm_batched(scores, scale, (t, DType::F32), (qp, qp, pp))?;
            }
            let args = [
                Arg::Ptr(pp),
                Arg::Ptr(rounded.as_ref().map_or(0, |_| rp)),
                Arg::I32(i32_of(OP, n)?),
                Arg::I64(rows as i64),
            ];
            let blocks = u32::try_from(rows.div_ceil(SOFTMAX_ROWS))
                .map_err(|_| KernelError::shape(OP, format!("{rows} rows")))?;
            self.launch(
                &format!("softmax_rows_{t}"),
                (blocks, 1, 1),
                ATTENTION_THREADS,
                0,
                &args,
            )?;
            for (_, values) in &plan {
                self.blas.gemm_batched(values, 1.0, (t, t), (qp, rp, op))?;
            }
        }
        Ok(())
    }
}

/// Checks an attention's head dim, grid and buffers (packed `qkv` `[batch, n, 3·heads·d]`,
/// `out` `[batch, n, heads·d]`, one float type) and returns that type.
fn check_attention(
    op: &'static str,
    qkv: &Buffer,
    out: &Buffer,
    batch: usize,
    n: usize,
    heads: usize,
    d: usize,
) -> Result<DType> {
    let t = float(op, qkv)?;
    check_heads(op, batch, heads, d)?;
    let h = heads * d;
    expect(op, "qkv", qkv, t, batch * n * 3 * h)?;
    expect(op, "out", out, t, batch * n * h)?;
    Ok(t)
}

fn check_heads(op: &'static str, batch: usize, heads: usize, d: usize) -> Result<()> {
    if d == 0 || d > MAX_HEAD_DIM {
        return Err(KernelError::Unsupported(format!(
            "{op}: head dim {d}; the kernels take 1..={MAX_HEAD_DIM}"
        )));
    }
    if heads > 65_535 || batch > 65_535 {
        return Err(KernelError::Unsupported(format!(
            "{op}: {batch} images x {heads} heads exceeds the grid limits (65535 each)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::{define, kernel_source};

    #[test]
    fn the_hopper_attention_is_not_chosen_without_the_hopper_kernels() {
        for (value, choice) in [
            ("wgmma", AttentionChoice::Wgmma),
            ("wgmma2", AttentionChoice::Wgmma2),
        ] {
            let without = AttentionChoice::from_switch(Some(value), false);
            assert_eq!(without, AttentionChoice::Flash, "{value}");
            assert_eq!(AttentionChoice::from_switch(Some(value), true), choice);
        }
    }

    #[test]
    fn launch_geometry_matches_the_kernel_sources() {
        let attention = kernel_source("attention.cu");
        let flash = kernel_source("flash.cuh");
        assert_eq!(define(&flash, "FA_BM"), FLASH_BM);
        assert_eq!(define(&flash, "FA_BN"), FLASH_BN);
        assert_eq!(define(&flash, "FA_THREADS"), ATTENTION_THREADS as usize);
        // 4 warps of 16 query rows each (one m16 MMA tile per warp).
        assert_eq!(FLASH_BM, 16 * ATTENTION_THREADS as usize / 32);
        // The _r128 kernels: two m-tiles a warp, instantiated up to FLASH_R128_MAX_PAD.
        assert_eq!(FLASH_BM_WIDE, 2 * FLASH_BM);
        assert!(attention.contains("flash_attention<T, DP, 2>"));
        for pad in FLASH_PADS {
            let wide = attention.contains(&format!("FLASH_R128(f16, f16, {pad})"));
            assert_eq!(wide, pad <= FLASH_R128_MAX_PAD, "pad {pad}");
        }
        assert_eq!(define(&attention, "F32_BQ"), F32_ROWS);
        // attention_f32: 4 warps x 4 rows; 32-key tiles, one key per lane.
        assert_eq!(F32_ROWS, 4 * ATTENTION_THREADS as usize / 32);
        assert_eq!(define(&attention, "F32_BK"), 32);
        assert_eq!(define(&attention, "DMAX"), MAX_HEAD_DIM);
        let wg = kernel_source("attention_sm90a.cu");
        assert_eq!(define(&wg, "ATTN_WG_ROWS"), WGMMA_ROWS);
        assert_eq!(define(&wg, "ATTN_WG_D"), WGMMA_HEAD_DIM);
        assert_eq!(define(&wg, "ATTN_WG_THREADS"), ATTENTION_THREADS as usize);
        assert!(wg.contains("#define ATTN_WG_TILE_BYTES (64 * 64 * 2)"));
        assert!(wg.contains("#define ATTN_WG_SMEM ((FA_BM + 4 * FA_BN) * (ATTN_WG_D + 8) * 2)"));
        assert!(wg.contains(
            "flash_attention<T, ATTN_WG_D, 1>(qkv, out, n, heads, ATTN_WG_D, scale_log2, q0);"
        ));
        assert_eq!(WGMMA_SMEM, 46_080);
        assert!(wg.contains("#define ATTN_WG2_SMEM (6 * ATTN_WG_TILE_BYTES + 1024)"));
        assert_eq!(WGMMA2_SMEM, 6 * 64 * 64 * 2 + 1024);
        assert!(wg.contains("__launch_bounds__(2 * ATTN_WG_THREADS, 2)"));
        const {
            assert!(WGMMA_SMEM as usize >= 5 * 64 * 64 * 2 + 1024);
            // Four blocks an SM (228 KiB, 1 KiB reserved per block), as the 109 registers allow.
            assert!(4 * (WGMMA_SMEM + 1024) <= 228 * 1024);
        }
    }

    #[test]
    fn wgmma_launches_cover_every_query_row_once() {
        for rows in [64, 128] {
            for n in 1..=700 {
                let mut covered = vec![0u8; n];
                let launches = wgmma_launches(n, rows);
                for l in &launches {
                    // attention_wg takes q_first; attention_wg2 starts at row 0.
                    assert_eq!(l.q_first.is_some(), l.rows == 64, "n={n} {l:?}");
                    let first = l.q_first.unwrap_or(0);
                    let end = (first + l.blocks * l.rows).min(n);
                    covered[first..end].iter_mut().for_each(|c| *c += 1);
                    // No block starts at or past n.
                    assert!(first + (l.blocks - 1) * l.rows < n, "n={n} {l:?}");
                }
                assert!(
                    covered.iter().all(|&c| c == 1),
                    "n={n} rows={rows}: {launches:?}"
                );
            }
        }
        // 257 tokens: two 128-row blocks, then the last row on a 64-row block (the flash
        // kernel's key-split path); 1370: eleven blocks, the last with 90 rows.
        assert_eq!(
            wgmma_launches(257, 128),
            [
                WgLaunch {
                    rows: 128,
                    blocks: 2,
                    q_first: None
                },
                WgLaunch {
                    rows: 64,
                    blocks: 1,
                    q_first: Some(256)
                }
            ]
        );
        assert_eq!(
            wgmma_launches(1370, 128),
            [WgLaunch {
                rows: 128,
                blocks: 11,
                q_first: None
            }]
        );
        assert_eq!(
            wgmma_launches(10, 128),
            [WgLaunch {
                rows: 64,
                blocks: 1,
                q_first: Some(0)
            }]
        );
    }

    #[test]
    fn every_head_dim_gets_the_right_attention_kernel() {
        use AttentionKernel::*;
        for d in 1..=MAX_HEAD_DIM {
            assert_eq!(
                attention_kernel(DType::F32, d, AttentionChoice::Flash, true),
                F32,
                "f32 d={d}"
            );
            assert_eq!(
                attention_kernel(DType::F32, d, AttentionChoice::Flash, false),
                F32
            );
            for t in [DType::F16, DType::BF16] {
                let k = attention_kernel(t, d, AttentionChoice::Flash, true);
                if d % 8 == 0 {
                    let Flash { pad, rows } = k else {
                        panic!("{t} d={d}: {k:?}")
                    };
                    // The smallest padded dim that holds d; MMA k-steps and n-tiles of 16.
                    assert!(pad >= d && pad % 16 == 0, "{t} d={d} pad={pad}");
                    assert!(FLASH_PADS.iter().all(|&p| p < d || p >= pad));
                    // 64 rows a block by default; 128 when asked, where those kernels exist.
                    assert_eq!(rows, 64, "{t} d={d}");
                    assert_eq!(
                        attention_kernel(t, d, AttentionChoice::Wide, true),
                        Flash {
                            pad,
                            rows: if pad <= 64 { 128 } else { 64 }
                        },
                        "wide"
                    );
                } else {
                    assert_eq!(k, Probs, "{t} d={d}");
                }
                assert_eq!(
                    attention_kernel(t, d, AttentionChoice::Flash, false),
                    Probs,
                    "unaligned"
                );
                assert_eq!(
                    attention_kernel(t, d, AttentionChoice::Simple, true),
                    Probs,
                    "simple"
                );
                // The warpgroup-MMA kernel takes d = 64 (aligned); other dims keep the flash
                // kernels.
                for (choice, rows) in [(AttentionChoice::Wgmma, 64), (AttentionChoice::Wgmma2, 128)]
                {
                    let wg = attention_kernel(t, d, choice, true);
                    if d == 64 {
                        assert_eq!(wg, Wgmma { rows }, "{t} d={d}");
                    } else {
                        assert_eq!(wg, k, "{t} d={d}");
                    }
                    assert_ne!(attention_kernel(t, d, choice, false), Wgmma { rows });
                }
            }
        }
        let pad = |d| match attention_kernel(DType::F16, d, AttentionChoice::Flash, true) {
            Flash { pad, .. } => pad,
            k => panic!("{k:?}"),
        };
        assert_eq!(
            [8, 16, 24, 32, 40, 64, 72, 96, 104, 128].map(pad),
            [16, 16, 32, 32, 64, 64, 96, 96, 128, 128]
        );
    }

    #[test]
    fn flash_shared_memory_fits_and_opts_in_where_needed() {
        for pad in FLASH_PADS {
            if pad <= FLASH_R128_MAX_PAD {
                // sQ [128][LDS] (attention.cu's header: 384·(pad + 8)·2 bytes).
                let wide = flash_smem_bytes(pad, FLASH_BM_WIDE) as usize;
                assert_eq!(wide, 384 * (pad + 8) * 2);
                assert!(wide <= 99 * 1024, "pad {pad}: {wide} bytes");
            }
            let smem = flash_smem_bytes(pad, FLASH_BM);
            // The kernel's layout: sQ [64][LDS] + sK [2][64][LDS] + sV [2][64][LDS], 2-byte
            // elements, LDS = pad + 8 (attention.cu's header: 320·(pad + 8)·2 bytes).
            assert_eq!(smem as usize, 320 * (pad + 8) * 2);
            // Rows stay 16-byte aligned (cp.async, ldmatrix) and shift by 4 banks per row, so
            // the 8 row addresses of an ldmatrix phase hit 8 distinct 4-bank groups.
            let row_bytes = (pad + 8) * 2;
            assert_eq!(row_bytes % 16, 0);
            let groups: std::collections::BTreeSet<usize> =
                (0..8).map(|r| (r * row_bytes / 16) % 8).collect();
            assert_eq!(groups.len(), 8, "pad {pad}: ldmatrix bank conflicts");
            // Fits every sm_80+ part, the 99 KiB opt-in limit of sm_86/sm_89 included.
            assert!(smem <= 99 * 1024, "pad {pad}: {smem} bytes");
        }
        // Above 48 KiB: the launch must raise the kernel's limit first (Device::function).
        assert!(flash_smem_bytes(64, FLASH_BM) <= 48 * 1024);
        assert!(flash_smem_bytes(96, FLASH_BM) > 48 * 1024);
        assert!(flash_smem_bytes(128, FLASH_BM) > 48 * 1024);
        assert!(flash_smem_bytes(64, FLASH_BM_WIDE) > 48 * 1024);
    }

    #[test]
    fn attention_grids_cover_every_query_row() {
        for n in [
            1, 13, 15, 16, 17, 63, 64, 65, 127, 128, 129, 257, 1370, 1374,
        ] {
            for rows in [FLASH_BM, FLASH_BM_WIDE] {
                let (x, y, z) = flash_grid(3, n, 12, rows);
                assert_eq!((y, z), (12, 3));
                assert!(
                    x as usize * rows >= n && (x as usize - 1) * rows < n,
                    "n={n} rows={rows}"
                );
            }
            let (x, y, z) = f32_attention_grid(3, n, 12);
            assert_eq!((y, z), (12, 3));
            assert!(
                x as usize * F32_ROWS >= n && (x as usize - 1) * F32_ROWS < n,
                "n={n}"
            );
        }
    }
}
