//! Safe launchers of the kernels: each checks dtypes and sizes, then queues the kernel. Shapes
//! are passed by value (no device-side shape reads), so a sequence of them can be graph-captured.

use crate::buffer::{Buffer, DType};
use crate::device::{grid_stride_blocks, Arg, Device};
use crate::error::{KernelError, Result};
use crate::gemm::GemmPath;

/// Element-wise activations, in the order of the kernels' `Act` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Identity = 0,
    /// Exact `0.5·x·(1 + erf(x/√2))`.
    Gelu = 1,
    /// The tanh approximation of GELU.
    GeluTanh = 2,
    /// `x·σ(1.702·x)`.
    QuickGelu = 3,
    Relu = 4,
    Relu6 = 5,
    Selu = 6,
    Silu = 7,
    Tanh = 8,
    Sigmoid = 9,
}

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
/// Rows per block of the warp-per-row LayerNorm kernels (128 threads).
const LN_WARP_ROWS: usize = 4;
/// Threads per block of the block-per-row (`_wide`) LayerNorm kernels.
const LN_WIDE_THREADS: u32 = 256;
// block_sum reduces 32 warp partials: whole warps, at most 1024 threads.
const _: () = assert!(LN_WIDE_THREADS % 32 == 0 && LN_WIDE_THREADS <= 1024);

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
        Ok(match crate::switch("DINOV2_ATTENTION", &choices)? {
            Some("simple") => AttentionChoice::Simple,
            Some("r128") => AttentionChoice::Wide,
            Some("wgmma") if hopper => AttentionChoice::Wgmma,
            Some("wgmma2") if hopper => AttentionChoice::Wgmma2,
            _ => AttentionChoice::Flash,
        })
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
        Some(pad) if d % 8 == 0 && qkv_aligned => AttentionKernel::Flash {
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

/// The 4-column-group counts per lane of the `_g{G}` LayerNorm kernels (`LAYER_NORM_G`,
/// `ADD_SCALED_LN_G`): a row of `h <= 128·G` columns.
const LN_GROUPS: [usize; 4] = [2, 4, 8, 16];

/// Which LayerNorm-family kernel runs a row of `h` columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowNorm {
    /// `{name}_g{G}_`: a warp per row in 4-column groups (16-byte f32 and 8-byte f16/bf16
    /// accesses): `h % 4 == 0`, `h <= 128·G`, every buffer 16-byte aligned. Every released
    /// model's rows (384 to 1536).
    Groups(usize),
    /// `{name}_wide_`: a block per row, any `h`, any alignment.
    Wide,
}

/// How a LayerNorm over `[rows, h]` is launched: (kernel, grid, block). `aligned`: every buffer
/// the kernel reads or writes is 16-byte aligned.
fn layer_norm_launch(rows: usize, h: usize, aligned: bool) -> (RowNorm, u32, u32) {
    let warp_grid = rows.div_ceil(LN_WARP_ROWS) as u32;
    let groups = LN_GROUPS.into_iter().find(|&g| h <= 128 * g);
    match groups {
        Some(g) if aligned && h % 4 == 0 => {
            (RowNorm::Groups(g), warp_grid, 32 * LN_WARP_ROWS as u32)
        }
        _ => (RowNorm::Wide, rows as u32, LN_WIDE_THREADS),
    }
}

/// Whether every pointer among a launch's `args` is 16-byte aligned (`layer_norm_launch`'s
/// `aligned`).
fn pointers_aligned(args: &[Arg]) -> bool {
    args.iter()
        .all(|a| !matches!(a, Arg::Ptr(p) if p % 16 != 0))
}

/// Whether `bias_act` (and `swiglu`, per half of z) may take the 8-wide kernel: its 16-byte accesses need rows of whole
/// 8-element groups (no group wraps into the next row, so bias[c0..c0 + 8] is in range) and a
/// 16-byte aligned base.
fn bias_act_vectorized(cols: usize, y_ptr: u64) -> bool {
    cols % 8 == 0 && y_ptr % 16 == 0
}

/// Grid and block of `bias_act_v8` and `swiglu_v8`: x over the `cols / 8` column groups (up to 128 threads
/// per block, whole warps), y over the rows (each block steps by `gridDim.y`), as many threads
/// in all as a grid-stride loop over the groups would get.
fn bias_act_v8_launch(rows: usize, cols: usize, multiprocessors: u32) -> ((u32, u32, u32), u32) {
    let groups = cols / 8;
    let block = groups.next_multiple_of(32).min(128);
    let grid_x = groups.div_ceil(block);
    let threads = grid_stride_blocks(rows * groups, multiprocessors) as usize * 256;
    let grid_y = threads
        .div_ceil(block * grid_x)
        .clamp(1, rows.clamp(1, 65_535));
    ((grid_x as u32, grid_y as u32, 1), block as u32)
}

pub(crate) fn expect(
    op: &'static str,
    what: &str,
    b: &Buffer,
    dtype: DType,
    len: usize,
) -> Result<()> {
    if b.dtype() != dtype {
        return Err(KernelError::shape(
            op,
            format!("{what} is {}, expected {dtype}", b.dtype()),
        ));
    }
    if b.len() != len {
        return Err(KernelError::shape(
            op,
            format!(
                "{what} holds {} elements (shape {:?}), expected {len}",
                b.len(),
                b.shape()
            ),
        ));
    }
    Ok(())
}

pub(crate) fn float(op: &'static str, b: &Buffer) -> Result<DType> {
    if b.dtype().is_float() {
        Ok(b.dtype())
    } else {
        Err(KernelError::shape(
            op,
            format!("expected a float buffer, found {}", b.dtype()),
        ))
    }
}

/// The dtype of `b`, which must be f16 or bf16 (kernels of a residual stream in a 16-bit type).
fn half_float(op: &'static str, b: &Buffer) -> Result<DType> {
    match b.dtype() {
        t @ (DType::F16 | DType::BF16) => Ok(t),
        t => Err(KernelError::shape(
            op,
            format!("expected an f16 or bf16 buffer, found {t}"),
        )),
    }
}

/// The kernel-name suffix of an operation reading `tx` and writing `ty`: `f16` where the two are
/// one type, `f32_f16` from f32 into another type; other pairs have no kernel.
fn in_out_suffix(op: &'static str, tx: DType, ty: DType) -> Result<String> {
    if tx == ty {
        Ok(tx.name().to_string())
    } else if tx == DType::F32 {
        Ok(format!("f32_{ty}"))
    } else {
        Err(KernelError::Unsupported(format!(
            "{op} from {tx} to {ty} (only same-type or f32 -> f16/bf16)"
        )))
    }
}

/// The kernel-name suffix for a residual stream `x` of `rows·h` elements beside a branch of type
/// `t` (a float type): `""` for an f32 stream, `"_rx"` for one in `t` itself (16-bit types;
/// transformers keeps the stream so in f16/bf16). Any other stream is an error.
pub(crate) fn residual_suffix(
    op: &'static str,
    x: &Buffer,
    t: DType,
    len: usize,
) -> Result<&'static str> {
    let suffix = match x.dtype() {
        DType::F32 => "",
        dt if dt == t => "_rx",
        dt => {
            return Err(KernelError::shape(
                op,
                format!("x is {dt}, expected f32 or the branch's {t}"),
            ))
        }
    };
    expect(op, "x", x, x.dtype(), len)?;
    Ok(suffix)
}

/// A GEMM's bias: none, or `[n]` in the operands' type `t` or f32.
pub(crate) fn check_linear_bias(
    op: &'static str,
    bias: Option<&Buffer>,
    t: DType,
    n: usize,
) -> Result<()> {
    match bias {
        Some(b) if b.len() != n || !(b.dtype() == t || b.dtype() == DType::F32) => {
            Err(KernelError::shape(
                op,
                format!(
                    "bias is {} {:?}, expected [{n}] in {t} or f32",
                    b.dtype(),
                    b.shape()
                ),
            ))
        }
        _ => Ok(()),
    }
}

fn i32_of(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| KernelError::shape(op, format!("size {v} exceeds i32")))
}

impl Device {
    /// `y[m, n] = x[m, k] · w[n, k]ᵀ + bias`. `x`, `w`, `y` share one dtype; `bias` is `[n]` in
    /// that dtype or f32. The GEMM runs as [`Device::linear_fusing`] describes.
    pub fn linear(
        &self,
        x: &Buffer,
        w: &Buffer,
        bias: Option<&Buffer>,
        y: &mut Buffer,
        dims: (usize, usize, usize),
    ) -> Result<GemmPath> {
        self.linear_act(x, w, bias, y, dims, Act::Identity)
    }

    /// `y = act(x·wᵀ + bias)`: [`Device::linear_fusing`], then the activation it left, in a
    /// `bias_act` pass over `y`.
    pub fn linear_act(
        &self,
        x: &Buffer,
        w: &Buffer,
        bias: Option<&Buffer>,
        y: &mut Buffer,
        dims: (usize, usize, usize),
        act: Act,
    ) -> Result<GemmPath> {
        let (path, rest) = self.linear_fusing(x, w, bias, y, dims, act)?;
        if rest != Act::Identity {
            self.bias_act(y, None, dims.0, dims.1, rest)?;
        }
        Ok(path)
    }

    /// `y = x·wᵀ + bias` with `act` applied in the GEMM's epilogue where one can: returns the
    /// path and the activation still to apply ([`Act::Identity`] when it was fused).
    ///
    /// - Our Hopper kernel ([`GemmPath::Own`], where [`Device::own_gemm`] picks it for `act`
    ///   and the shape): the bias and the identity, exact GELU or tanh GELU in its epilogue.
    /// - cuBLASLt ([`GemmPath::Lt`]) with the bias fused, and the tanh GELU too in f16/bf16 with
    ///   a bias of `y`'s dtype (f32 keeps the kernels' `tanhf`).
    /// - `cublasGemmEx` ([`GemmPath::GemmEx`], where cuBLASLt does not run the shape, or with
    ///   `DINOV2_GEMM=gemmex`), then a pass adding the bias.
    pub fn linear_fusing(
        &self,
        x: &Buffer,
        w: &Buffer,
        bias: Option<&Buffer>,
        y: &mut Buffer,
        (m, n, k): (usize, usize, usize),
        act: Act,
    ) -> Result<(GemmPath, Act)> {
        const OP: &str = "linear";
        let t = float(OP, x)?;
        expect(OP, "x", x, t, m * k)?;
        expect(OP, "weight", w, t, n * k)?;
        expect(OP, "y", y, t, m * n)?;
        check_linear_bias(OP, bias, t, n)?;
        if m == 0 || n == 0 {
            return Ok((GemmPath::GemmEx, Act::Identity));
        }
        if k == 0 {
            // An empty sum: y = bias (or 0). cuBLASLt rejects zero-sized layouts.
            self.memset(y, 0)?;
            self.add_bias(y, bias, m, n)?;
            return Ok((GemmPath::GemmEx, act));
        }
        if self.own_linear(x, w, bias, y, (m, n, k), act)? {
            return Ok((GemmPath::Own, Act::Identity));
        }
        let s = &self.stream;
        let lt_bias = bias.filter(|b| b.dtype() == t).map(|b| b.ptr(s));
        let allow_lt = bias.is_none() || lt_bias.is_some();
        let gelu_tanh = act == Act::GeluTanh && t != DType::F32 && lt_bias.is_some();
        // SAFETY: sizes checked above.
        let path = unsafe {
            self.blas.gemm(
                t,
                (m, n, k),
                x.ptr(s),
                w.ptr(s),
                lt_bias,
                y.ptr(s),
                allow_lt,
                gelu_tanh,
            )?
        };
        if path == GemmPath::GemmEx {
            self.add_bias(y, bias, m, n)?;
            return Ok((path, act));
        }
        Ok((path, if gelu_tanh { Act::Identity } else { act }))
    }

    /// `y[m, n] += bias[n]` with `bias` in any float type (cast to f32 for `bias_act`).
    fn add_bias(&self, y: &mut Buffer, bias: Option<&Buffer>, m: usize, n: usize) -> Result<()> {
        match bias {
            None => Ok(()),
            Some(b) if b.dtype() == DType::F32 => self.bias_act(y, Some(b), m, n, Act::Identity),
            Some(b) => {
                let mut b32 = self.alloc(DType::F32, &[n])?;
                self.cast(b, &mut b32)?;
                self.bias_act(y, Some(&b32), m, n, Act::Identity)
            }
        }
    }

    /// `y = act(y + bias[col])` in place over `[rows, cols]`; `bias` is f32 `[cols]`.
    pub fn bias_act(
        &self,
        y: &mut Buffer,
        bias: Option<&Buffer>,
        rows: usize,
        cols: usize,
        act: Act,
    ) -> Result<()> {
        const OP: &str = "bias_act";
        let t = float(OP, y)?;
        expect(OP, "y", y, t, rows * cols)?;
        if let Some(b) = bias {
            expect(OP, "bias", b, DType::F32, cols)?;
        }
        if rows * cols == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let args = [
            Arg::Ptr(y.ptr(s)),
            Arg::Ptr(bias.map_or(0, |b| b.ptr(s))),
            Arg::I64(rows as i64),
            Arg::I32(i32_of(OP, cols)?),
            Arg::I32(act as i32),
        ];
        // 16-byte accesses when rows never split an 8-element group and y is 16-byte aligned.
        let (name, grid, block) = if bias_act_vectorized(cols, y.ptr(s)) {
            let (grid, block) = bias_act_v8_launch(rows, cols, self.info().multiprocessors);
            (format!("bias_act_v8_{t}"), grid, block)
        } else {
            let grid = (self.grid_for(rows * cols), 1, 1);
            (format!("bias_act_{t}"), grid, 256)
        };
        // SAFETY: y holds rows·cols elements, bias cols f32 (checked).
        unsafe { self.launch(&name, grid, block, 0, &args) }
    }

    /// `out[r, c] = silu(z[r, c]) · z[r, f + c]` with `z` `[rows, 2f]`, `out` `[rows, f]`.
    pub fn swiglu(&self, z: &Buffer, out: &mut Buffer, rows: usize, f: usize) -> Result<()> {
        const OP: &str = "swiglu";
        let t = float(OP, z)?;
        expect(OP, "z", z, t, rows * 2 * f)?;
        expect(OP, "out", out, t, rows * f)?;
        if rows * f == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let args = [
            Arg::Ptr(z.ptr(s)),
            Arg::Ptr(out.ptr(s)),
            Arg::I64(rows as i64),
            Arg::I32(i32_of(OP, f)?),
        ];
        // 16-byte accesses when both halves of z and out are whole aligned 8-element groups.
        let (name, grid, block) = if bias_act_vectorized(f, z.ptr(s)) && out.ptr(s) % 16 == 0 {
            let (grid, block) = bias_act_v8_launch(rows, f, self.info().multiprocessors);
            (format!("swiglu_v8_{t}"), grid, block)
        } else {
            (format!("swiglu_{t}"), (self.grid_for(rows * f), 1, 1), 256)
        };
        // SAFETY: sizes checked.
        unsafe { self.launch(&name, grid, block, 0, &args) }
    }

    /// LayerNorm of `x` `[rows, h]` into `y` (f32 statistics); `w`, `b` are f32 `[h]`. `x` may be
    /// f32 with `y` in any float type, or `x` and `y` of one type.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm(
        &self,
        x: &Buffer,
        w: &Buffer,
        b: &Buffer,
        y: &mut Buffer,
        rows: usize,
        h: usize,
        eps: f32,
    ) -> Result<()> {
        const OP: &str = "layer_norm";
        let (tx, ty) = (float(OP, x)?, float(OP, y)?);
        expect(OP, "x", x, tx, rows * h)?;
        expect(OP, "y", y, ty, rows * h)?;
        expect(OP, "weight", w, DType::F32, h)?;
        expect(OP, "bias", b, DType::F32, h)?;
        let suffix = in_out_suffix(OP, tx, ty)?;
        if rows == 0 || h == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let args = vec![
            Arg::Ptr(x.ptr(s)),
            Arg::Ptr(y.ptr(s)),
            Arg::Ptr(w.ptr(s)),
            Arg::Ptr(b.ptr(s)),
        ];
        self.launch_row_norm(OP, &format!("layer_norm_{{}}{suffix}"), args, rows, h, eps)
    }

    /// Launches a LayerNorm-family kernel (`name` with `{}` where `wide_` goes): the warp-per-row
    /// variant, or the block-per-row one for wide rows, after `args` (the buffers).
    fn launch_row_norm(
        &self,
        op: &'static str,
        name: &str,
        mut args: Vec<Arg>,
        rows: usize,
        h: usize,
        eps: f32,
    ) -> Result<()> {
        i32_of(op, rows)?;
        let (kernel, grid, block) = layer_norm_launch(rows, h, pointers_aligned(&args));
        let name = match kernel {
            RowNorm::Wide => {
                args.extend([Arg::I32(i32_of(op, h)?), Arg::F32(eps)]);
                name.replace("{}", "wide_")
            }
            RowNorm::Groups(g) => {
                args.extend([Arg::I32(rows as i32), Arg::I32(h as i32), Arg::F32(eps)]);
                name.replace("{}", &format!("g{g}_"))
            }
        };
        // SAFETY: the callers checked every buffer's dtype and size against rows and h.
        unsafe { self.launch(&name, (grid, 1, 1), block, 0, &args) }
    }

    /// `x += gamma ⊙ branch` over `[rows, h]`: `gamma` f32, `branch` any float type, `x` f32
    /// or the branch's type.
    pub fn add_scaled(
        &self,
        x: &mut Buffer,
        branch: &Buffer,
        gamma: &Buffer,
        rows: usize,
        h: usize,
    ) -> Result<()> {
        const OP: &str = "add_scaled";
        let t = float(OP, branch)?;
        let rx = residual_suffix(OP, x, t, rows * h)?;
        expect(OP, "branch", branch, t, rows * h)?;
        expect(OP, "gamma", gamma, DType::F32, h)?;
        if rows * h == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let args = [
            Arg::Ptr(x.ptr(s)),
            Arg::Ptr(branch.ptr(s)),
            Arg::Ptr(gamma.ptr(s)),
            Arg::I64((rows * h) as i64),
            Arg::I32(i32_of(OP, h)?),
        ];
        let grid = self.grid_for(rows * h);
        // SAFETY: sizes checked.
        unsafe { self.launch(&format!("add_scaled_{t}{rx}"), (grid, 1, 1), 256, 0, &args) }
    }

    /// `x += gamma ⊙ branch`, then `y = LayerNorm(x)` (`y` in the branch's dtype), one pass; `x`
    /// f32 or the branch's type (then the sum is rounded to it before the LayerNorm reads it).
    #[allow(clippy::too_many_arguments)]
    pub fn add_scaled_layer_norm(
        &self,
        x: &mut Buffer,
        branch: &Buffer,
        gamma: &Buffer,
        w: &Buffer,
        b: &Buffer,
        y: &mut Buffer,
        rows: usize,
        h: usize,
        eps: f32,
    ) -> Result<()> {
        const OP: &str = "add_scaled_layer_norm";
        let t = float(OP, branch)?;
        let rx = residual_suffix(OP, x, t, rows * h)?;
        expect(OP, "branch", branch, t, rows * h)?;
        expect(OP, "y", y, t, rows * h)?;
        expect(OP, "gamma", gamma, DType::F32, h)?;
        expect(OP, "weight", w, DType::F32, h)?;
        expect(OP, "bias", b, DType::F32, h)?;
        if rows == 0 || h == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let args = vec![
            Arg::Ptr(x.ptr(s)),
            Arg::Ptr(branch.ptr(s)),
            Arg::Ptr(gamma.ptr(s)),
            Arg::Ptr(y.ptr(s)),
            Arg::Ptr(w.ptr(s)),
            Arg::Ptr(b.ptr(s)),
        ];
        self.launch_row_norm(
            OP,
            &format!("add_scaled_layer_norm_{{}}{t}{rx}"),
            args,
            rows,
            h,
            eps,
        )
    }

    /// The statistics of a LayerNorm folded into the next GEMM ([`Device::linear_folded`]):
    /// each row's (mean, M2) of `x` `[rows, h]` (the residual stream in f16/bf16) into `stats`
    /// (f32 `[rows, 2]`), as the LayerNorm kernels compute them. Rows that a warp holds
    /// (`h % 4 == 0`, `h <= 2048`, 16-byte aligned buffers: every released model); `Ok(false)`
    /// (nothing queued) otherwise.
    pub fn row_stats(&self, x: &Buffer, stats: &mut Buffer, rows: usize, h: usize) -> Result<bool> {
        const OP: &str = "row_stats";
        let t = half_float(OP, x)?;
        expect(OP, "x", x, t, rows * h)?;
        expect(OP, "stats", stats, DType::F32, rows * 2)?;
        let s = &self.stream;
        let args = vec![Arg::Ptr(x.ptr(s)), Arg::Ptr(stats.ptr(s))];
        self.launch_row_stats(OP, &format!("row_stats_{{}}{t}"), args, rows, h)
    }

    /// `x += gamma ⊙ branch` (x in the branch's 16-bit type, each sum rounded to it, as
    /// [`Device::add_scaled_layer_norm`] updates it), then [`Device::row_stats`] of the updated
    /// rows, in one pass. `Ok(false)` (nothing queued, x unchanged) where `row_stats` has no
    /// kernel.
    pub fn add_scaled_stats(
        &self,
        x: &mut Buffer,
        branch: &Buffer,
        gamma: &Buffer,
        stats: &mut Buffer,
        rows: usize,
        h: usize,
    ) -> Result<bool> {
        const OP: &str = "add_scaled_stats";
        let t = half_float(OP, branch)?;
        expect(OP, "x", x, t, rows * h)?;
        expect(OP, "branch", branch, t, rows * h)?;
        expect(OP, "gamma", gamma, DType::F32, h)?;
        expect(OP, "stats", stats, DType::F32, rows * 2)?;
        let s = &self.stream;
        let args = vec![
            Arg::Ptr(x.ptr(s)),
            Arg::Ptr(branch.ptr(s)),
            Arg::Ptr(gamma.ptr(s)),
            Arg::Ptr(stats.ptr(s)),
        ];
        self.launch_row_stats(OP, &format!("add_scaled_stats_{{}}{t}_rx"), args, rows, h)
    }

    /// Launches the row-statistics kernel `name` (`{}` standing for `g{G}_`) over `[rows, h]`
    /// with `args` and then rows and h, where a warp holds a row.
    fn launch_row_stats(
        &self,
        op: &'static str,
        name: &str,
        mut args: Vec<Arg>,
        rows: usize,
        h: usize,
    ) -> Result<bool> {
        i32_of(op, rows)?;
        let (RowNorm::Groups(g), grid, block) = layer_norm_launch(rows, h, pointers_aligned(&args))
        else {
            return Ok(false);
        };
        if rows == 0 {
            return Ok(true);
        }
        args.extend([Arg::I32(rows as i32), Arg::I32(h as i32)]);
        let name = name.replace("{}", &format!("g{g}_"));
        // SAFETY: the callers checked every buffer's dtype and size against rows and h; the
        // kernel's warp holds h <= 128·G columns, 16-byte aligned.
        unsafe { self.launch(&name, (grid, 1, 1), block, 0, &args)? };
        Ok(true)
    }

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
        let t = float(OP, qkv)?;
        let h = heads * d;
        expect(OP, "qkv", qkv, t, batch * n * 3 * h)?;
        expect(OP, "out", out, t, batch * n * h)?;
        check_heads(OP, batch, heads, d)?;
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
        let t = float(OP, qkv)?;
        let h = heads * d;
        expect(OP, "qkv", qkv, t, batch * n * 3 * h)?;
        expect(OP, "out", out, t, batch * n * h)?;
        expect(OP, "probs", probs, DType::F32, batch * heads * n * n)?;
        check_heads(OP, batch, heads, d)?;
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

    /// Unfolds pixels `[b, c, h, w]` into `cols` `[b·(h/p)·(w/p), kp]`: rows of `c·p·p` values,
    /// then zeros up to `kp` (cols' last dimension, at least `c·p·p`). Pixels and cols are of
    /// one float type, or the pixels f32 and cols f16/bf16 (rounded to nearest even, as an
    /// f16/bf16 upload of the pixels would round them).
    #[allow(clippy::too_many_arguments)]
    pub fn im2col(
        &self,
        pixels: &Buffer,
        cols: &mut Buffer,
        b: usize,
        c: usize,
        h: usize,
        w: usize,
        p: usize,
    ) -> Result<()> {
        const OP: &str = "im2col";
        let (tx, t) = (float(OP, pixels)?, float(OP, cols)?);
        let suffix = in_out_suffix(OP, tx, t)?;
        if p == 0 {
            return Err(KernelError::shape(OP, "patch size 0"));
        }
        expect(OP, "pixels", pixels, tx, b * c * h * w)?;
        let (rows, k) = (b * (h / p) * (w / p), c * p * p);
        // The row length: the last dimension of cols, C·p·p or more (zero padding).
        let kp = cols.shape().last().copied().unwrap_or(0);
        if cols.len() != rows * kp || (rows > 0 && kp < k) {
            return Err(KernelError::shape(
                OP,
                format!(
                    "cols is {:?}, expected [{rows}, kp] with kp >= {k}",
                    cols.shape()
                ),
            ));
        }
        if cols.is_empty() {
            return Ok(());
        }
        let s = &self.stream;
        let args = [
            Arg::Ptr(pixels.ptr(s)),
            Arg::Ptr(cols.ptr(s)),
            Arg::I32(i32_of(OP, b)?),
            Arg::I32(i32_of(OP, c)?),
            Arg::I32(i32_of(OP, h)?),
            Arg::I32(i32_of(OP, w)?),
            Arg::I32(i32_of(OP, p)?),
            Arg::I32(i32_of(OP, kp)?),
        ];
        // A block per row (stepping on past the grid), 128 threads over its columns.
        let grid = rows.min(32 * self.info().multiprocessors.max(1) as usize) as u32;
        // SAFETY: pixels hold b·c·h·w elements of their type, cols rows·kp (checked).
        unsafe { self.launch(&format!("im2col_{suffix}"), (grid, 1, 1), 128, 0, &args) }
    }

    /// Assembles the encoder input `x` (`[b, 1 + r + n, h]`, f32 or the patches' dtype: a residual
    /// stream kept in it) from patch embeddings
    /// `[b, n, h]`: CLS (f32 `[h]`) + positions `[1 + n, h]` (patches' dtype), registers
    /// `[r, h]` (patches' dtype) after CLS, and patches replaced by the f32 mask token where
    /// `mask` (u8 `[b·n]`) is non-zero.
    #[allow(clippy::too_many_arguments)]
    pub fn embed_tokens(
        &self,
        patches: &Buffer,
        cls: &Buffer,
        positions: &Buffer,
        registers: Option<&Buffer>,
        mask: Option<(&Buffer, &Buffer)>,
        x: &mut Buffer,
        (b, n, h): (usize, usize, usize),
    ) -> Result<()> {
        const OP: &str = "embed_tokens";
        let t = float(OP, patches)?;
        expect(OP, "patches", patches, t, b * n * h)?;
        expect(OP, "cls", cls, DType::F32, h)?;
        expect(OP, "positions", positions, t, (1 + n) * h)?;
        let r = match registers {
            Some(regs) => {
                if regs.dtype() != t || regs.len() % h.max(1) != 0 {
                    return Err(KernelError::shape(
                        OP,
                        format!(
                            "registers are {} {:?}, expected [R, {h}] {t}",
                            regs.dtype(),
                            regs.shape()
                        ),
                    ));
                }
                regs.len() / h.max(1)
            }
            None => 0,
        };
        if let Some((token, m)) = mask {
            expect(OP, "mask token", token, DType::F32, h)?;
            expect(OP, "mask", m, DType::U8, b * n)?;
        }
        let rx = residual_suffix(OP, x, t, b * (1 + r + n) * h)?;
        if x.is_empty() {
            return Ok(());
        }
        let s = &self.stream;
        let args = [
            Arg::Ptr(patches.ptr(s)),
            Arg::Ptr(x.ptr(s)),
            Arg::Ptr(cls.ptr(s)),
            Arg::Ptr(positions.ptr(s)),
            Arg::Ptr(registers.map_or(0, |r| r.ptr(s))),
            Arg::Ptr(mask.map_or(0, |(t, _)| t.ptr(s))),
            Arg::Ptr(mask.map_or(0, |(_, m)| m.ptr(s))),
            Arg::I32(i32_of(OP, b)?),
            Arg::I32(i32_of(OP, n)?),
            Arg::I32(i32_of(OP, r)?),
            Arg::I32(i32_of(OP, h)?),
        ];
        let grid = self.grid_for(x.len());
        // SAFETY: sizes checked.
        unsafe {
            self.launch(
                &format!("embed_tokens_{t}{rx}"),
                (grid, 1, 1),
                256,
                0,
                &args,
            )
        }
    }

    /// The mean of tokens `start..s` of `x` `[b, s, h]` into f32 `out` `[b, h]`:
    /// [`Device::pool_tokens`] with the mean alone.
    pub fn mean_pool(
        &self,
        x: &Buffer,
        out: &mut Buffer,
        dims: (usize, usize, usize),
        start: usize,
    ) -> Result<()> {
        self.pool_tokens(x, out, dims, start, false, true)
    }

    /// The embedding poolings of `x` `[b, s, h]` into f32 `out` `[b, (cls + mean)·h]`: per image
    /// token 0 (when `cls`), then the mean of tokens `start..s` (when `mean`).
    pub fn pool_tokens(
        &self,
        x: &Buffer,
        out: &mut Buffer,
        (b, s, h): (usize, usize, usize),
        start: usize,
        cls: bool,
        mean: bool,
    ) -> Result<()> {
        const OP: &str = "pool_tokens";
        let t = float(OP, x)?;
        let parts = cls as usize + mean as usize;
        if parts == 0 {
            return Err(KernelError::shape(OP, "neither cls nor mean asked for"));
        }
        expect(OP, "x", x, t, b * s * h)?;
        expect(OP, "out", out, DType::F32, b * parts * h)?;
        if s == 0 || (mean && start >= s) {
            return Err(KernelError::shape(OP, format!("no token in {start}..{s}")));
        }
        if b * h == 0 {
            return Ok(());
        }
        let st = &self.stream;
        let args = [
            Arg::Ptr(x.ptr(st)),
            Arg::Ptr(out.ptr(st)),
            Arg::I32(i32_of(OP, b)?),
            Arg::I32(i32_of(OP, s)?),
            Arg::I32(i32_of(OP, start)?),
            Arg::I32(i32_of(OP, h)?),
            Arg::I32(cls as i32),
            Arg::I32(mean as i32),
        ];
        let grid = self.grid_for(b * h);
        // SAFETY: sizes checked.
        unsafe { self.launch(&format!("pool_tokens_{t}"), (grid, 1, 1), 256, 0, &args) }
    }

    /// Converts `src` into `dst` (same element count): f32 <-> f16/bf16, or a copy.
    pub fn cast(&self, src: &Buffer, dst: &mut Buffer) -> Result<()> {
        const OP: &str = "cast";
        let (a, b) = (float(OP, src)?, float(OP, dst)?);
        if src.len() != dst.len() {
            return Err(KernelError::shape(
                OP,
                format!("{} elements into {}", src.len(), dst.len()),
            ));
        }
        if src.is_empty() {
            return Ok(());
        }
        if a == b {
            // Into `dst`'s own memory: its address may be recorded in a graph.
            return self.copy_into(src, dst);
        }
        if a != DType::F32 && b != DType::F32 {
            let mut tmp = self.alloc(DType::F32, src.shape())?;
            self.cast(src, &mut tmp)?;
            return self.cast(&tmp, dst);
        }
        let s = &self.stream;
        let args = [
            Arg::Ptr(src.ptr(s)),
            Arg::Ptr(dst.ptr(s)),
            Arg::I64(src.len() as i64),
        ];
        let grid = self.grid_for(src.len());
        // SAFETY: equal element counts checked.
        unsafe { self.launch(&format!("cast_{a}_{b}"), (grid, 1, 1), 256, 0, &args) }
    }
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
pub(crate) mod tests {
    use super::*;

    /// The text of `kernels/<name>`.
    pub(crate) fn kernel_source(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../kernels")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The value of `#define NAME value` in a kernel source.
    pub(crate) fn define(source: &str, name: &str) -> usize {
        source
            .lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some("#define") && it.next() == Some(name))
                    .then(|| it.next().unwrap().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no #define {name}"))
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
        let layer_norm = kernel_source("layer_norm.cu");
        for g in LN_GROUPS {
            assert!(layer_norm.contains(&format!("LAYER_NORM_G(name, TX, TY, {g})")));
            assert!(layer_norm.contains(&format!("ADD_SCALED_LN_G(name, suffix, TX, TB, {g})")));
        }
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
    fn mixed_type_kernels_read_f32_or_their_own_type() {
        use DType::*;
        for t in [F32, F16, BF16] {
            assert_eq!(in_out_suffix("op", t, t).unwrap(), t.name());
        }
        assert_eq!(in_out_suffix("op", F32, F16).unwrap(), "f32_f16");
        assert_eq!(in_out_suffix("op", F32, BF16).unwrap(), "f32_bf16");
        for (x, y) in [(F16, F32), (F16, BF16), (BF16, F16), (BF16, F32)] {
            let e = in_out_suffix("im2col", x, y).unwrap_err().to_string();
            assert!(e.contains(&format!("im2col from {x} to {y}")), "{e}");
        }
        // Every suffix names a kernel the sources define.
        let embed = kernel_source("embed.cu");
        for suffix in ["f32", "f16", "bf16", "f32_f16", "f32_bf16"] {
            assert!(
                embed.contains(&format!("IM2COL({suffix}, ")),
                "im2col_{suffix}"
            );
        }
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

    #[test]
    fn layer_norm_picks_the_grouped_kernel_for_aligned_rows_of_whole_groups() {
        use RowNorm::*;
        for (rows, h, aligned, want) in [
            (1, 1, true, (Wide, 1, 256)),
            (13, 32, true, (Groups(2), 4, 128)),
            (13, 32, false, (Wide, 13, 256)),
            (9, 36, true, (Groups(2), 3, 128)),
            (11, 37, true, (Wide, 11, 256)),
            (16, 384, true, (Groups(4), 4, 128)),
            (17, 768, true, (Groups(8), 5, 128)),
            (17, 1024, true, (Groups(8), 5, 128)),
            (17, 1024, false, (Wide, 17, 256)),
            (7, 1025, true, (Wide, 7, 256)),
            (350_720, 1536, true, (Groups(16), 87_680, 128)),
            (350_720, 1536, false, (Wide, 350_720, 256)),
            (3, 2048, true, (Groups(16), 1, 128)),
            (3, 2052, true, (Wide, 3, 256)),
        ] {
            assert_eq!(
                layer_norm_launch(rows, h, aligned),
                want,
                "rows={rows} h={h} aligned={aligned}"
            );
        }
    }

    #[test]
    fn bias_act_v8_covers_every_group_and_row() {
        // ViT-B/14's fc1 at batch 256 on 132 SMs: 384 groups in 3 blocks of 128, 2816 row
        // blocks (132·32·256 threads).
        assert_eq!(bias_act_v8_launch(65_792, 3072, 132), ((3, 2816, 1), 128));
        // Narrow rows: blocks of one warp; never more row blocks than rows.
        assert_eq!(bias_act_v8_launch(5, 8, 132), ((1, 5, 1), 32));
        assert_eq!(bias_act_v8_launch(3, 48, 132), ((1, 3, 1), 32));
        // 129 groups: two blocks across (the second holds one group), 504 row blocks.
        assert_eq!(bias_act_v8_launch(1000, 1032, 132), ((2, 504, 1), 128));
        for (rows, cols) in [(1, 8), (7, 264), (100_000, 4096), (1 << 20, 8)] {
            let ((gx, gy, _), block) = bias_act_v8_launch(rows, cols, 132);
            assert!(gx as usize * block as usize >= cols / 8);
            assert!(gy >= 1 && gy as usize <= rows.min(65_535));
            assert!(block % 32 == 0 && block <= 128);
        }
    }

    #[test]
    fn bias_act_vectorizes_only_whole_aligned_groups() {
        assert!(bias_act_vectorized(8, 0x1000));
        assert!(bias_act_vectorized(1536, 0x7f00_0000_0010));
        assert!(!bias_act_vectorized(37, 0x1000));
        assert!(!bias_act_vectorized(12, 0x1000));
        assert!(!bias_act_vectorized(8, 0x1008));
    }
}
