//! Safe launchers of the kernels: each checks dtypes and sizes, then queues the kernel. Shapes
//! are passed by value (no device-side shape reads), so a sequence of them can be graph-captured.

use crate::buffer::{Buffer, DType};
use crate::device::{Arg, Device};
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

fn expect(op: &'static str, what: &str, b: &Buffer, dtype: DType, len: usize) -> Result<()> {
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

fn float(op: &'static str, b: &Buffer) -> Result<DType> {
    if b.dtype().is_float() {
        Ok(b.dtype())
    } else {
        Err(KernelError::shape(
            op,
            format!("expected a float buffer, found {}", b.dtype()),
        ))
    }
}

fn i32_of(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| KernelError::shape(op, format!("size {v} exceeds i32")))
}

impl Device {
    /// `y[m, n] = x[m, k] · w[n, k]ᵀ + bias` (cuBLASLt bias epilogue; cuBLAS + `bias_act` as the
    /// fallback). `x`, `w`, `y` share one dtype; `bias` is `[n]` in that dtype or f32.
    pub fn linear(
        &self,
        x: &Buffer,
        w: &Buffer,
        bias: Option<&Buffer>,
        y: &mut Buffer,
        (m, n, k): (usize, usize, usize),
    ) -> Result<GemmPath> {
        const OP: &str = "linear";
        let t = float(OP, x)?;
        expect(OP, "x", x, t, m * k)?;
        expect(OP, "weight", w, t, n * k)?;
        expect(OP, "y", y, t, m * n)?;
        if let Some(b) = bias {
            if b.len() != n || !(b.dtype() == t || b.dtype() == DType::F32) {
                return Err(KernelError::shape(
                    OP,
                    format!(
                        "bias is {} {:?}, expected [{n}] in {t} or f32",
                        b.dtype(),
                        b.shape()
                    ),
                ));
            }
        }
        if m == 0 || n == 0 {
            return Ok(GemmPath::GemmEx);
        }
        let s = &self.stream;
        let lt_bias = bias.filter(|b| b.dtype() == t).map(|b| b.ptr(s));
        let allow_lt = bias.is_none() || lt_bias.is_some();
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
            )?
        };
        if let (GemmPath::GemmEx, Some(b)) = (path, bias) {
            if b.dtype() == DType::F32 {
                self.bias_act(y, Some(b), m, n, Act::Identity)?;
            } else {
                let mut b32 = self.alloc(DType::F32, &[n])?;
                self.cast(b, &mut b32)?;
                self.bias_act(y, Some(&b32), m, n, Act::Identity)?;
            }
        }
        Ok(path)
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
        // 16-byte accesses when rows never split an 8-element group (buffers are 256-byte aligned).
        let (name, grid) = if cols % 8 == 0 {
            (format!("bias_act_v8_{t}"), self.grid_for(rows * cols / 8))
        } else {
            (format!("bias_act_{t}"), self.grid_for(rows * cols))
        };
        // SAFETY: y holds rows·cols elements, bias cols f32 (checked).
        unsafe { self.launch(&name, (grid, 1, 1), 256, 0, &args) }
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
        let grid = self.grid_for(rows * f);
        // SAFETY: sizes checked.
        unsafe { self.launch(&format!("swiglu_{t}"), (grid, 1, 1), 256, 0, &args) }
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
        let suffix = if tx == ty {
            tx.name().to_string()
        } else if tx == DType::F32 {
            format!("f32_{ty}")
        } else {
            return Err(KernelError::Unsupported(format!(
                "layer_norm from {tx} to {ty} (only same-type or f32 -> f16/bf16)"
            )));
        };
        if rows == 0 || h == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let mut args = vec![
            Arg::Ptr(x.ptr(s)),
            Arg::Ptr(y.ptr(s)),
            Arg::Ptr(w.ptr(s)),
            Arg::Ptr(b.ptr(s)),
        ];
        // SAFETY: sizes checked.
        unsafe {
            if h <= 1024 {
                args.extend([
                    Arg::I32(i32_of(OP, rows)?),
                    Arg::I32(h as i32),
                    Arg::F32(eps),
                ]);
                let grid = rows.div_ceil(4) as u32;
                self.launch(&format!("layer_norm_{suffix}"), (grid, 1, 1), 128, 0, &args)
            } else {
                args.extend([Arg::I32(i32_of(OP, h)?), Arg::F32(eps)]);
                self.launch(
                    &format!("layer_norm_wide_{suffix}"),
                    (i32_of(OP, rows)? as u32, 1, 1),
                    256,
                    0,
                    &args,
                )
            }
        }
    }

    /// `x += gamma ⊙ branch` over `[rows, h]`: `x` and `gamma` f32, `branch` any float type.
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
        expect(OP, "x", x, DType::F32, rows * h)?;
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
        unsafe { self.launch(&format!("add_scaled_{t}"), (grid, 1, 1), 256, 0, &args) }
    }

    /// `x += gamma ⊙ branch`, then `y = LayerNorm(x)` (`y` in the branch's dtype), one pass.
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
        expect(OP, "x", x, DType::F32, rows * h)?;
        expect(OP, "branch", branch, t, rows * h)?;
        expect(OP, "y", y, t, rows * h)?;
        expect(OP, "gamma", gamma, DType::F32, h)?;
        expect(OP, "weight", w, DType::F32, h)?;
        expect(OP, "bias", b, DType::F32, h)?;
        if rows == 0 || h == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let mut args = vec![
            Arg::Ptr(x.ptr(s)),
            Arg::Ptr(branch.ptr(s)),
            Arg::Ptr(gamma.ptr(s)),
            Arg::Ptr(y.ptr(s)),
            Arg::Ptr(w.ptr(s)),
            Arg::Ptr(b.ptr(s)),
        ];
        // SAFETY: sizes checked.
        unsafe {
            if h <= 1024 {
                args.extend([
                    Arg::I32(i32_of(OP, rows)?),
                    Arg::I32(h as i32),
                    Arg::F32(eps),
                ]);
                let grid = rows.div_ceil(4) as u32;
                self.launch(
                    &format!("add_scaled_layer_norm_{t}"),
                    (grid, 1, 1),
                    128,
                    0,
                    &args,
                )
            } else {
                args.extend([Arg::I32(i32_of(OP, h)?), Arg::F32(eps)]);
                self.launch(
                    &format!("add_scaled_layer_norm_wide_{t}"),
                    (i32_of(OP, rows)? as u32, 1, 1),
                    256,
                    0,
                    &args,
                )
            }
        }
    }

    /// Softmax attention over packed `qkv` `[batch, n, 3·heads·d]` into `out` `[batch, n, heads·d]`
    /// with scores `q·kᵀ·scale`. f16/bf16 run the tensor-core flash kernel (d a multiple of 8);
    /// f32 the SIMT kernel. `d <= 128`. Other head dims, or `DINOV2_ATTENTION=simple` (a
    /// debugging switch), take the row-per-block kernel of [`Device::attention_probs`].
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
        let simple = std::env::var("DINOV2_ATTENTION").is_ok_and(|v| v == "simple");
        if simple || (t != DType::F32 && d % 8 != 0) {
            // The tensor-core kernel loads 8-element chunks; the row kernel takes any d.
            let mut probs = self.alloc(DType::F32, &[batch, heads, n, n])?;
            return self.attention_probs(qkv, out, &mut probs, batch, n, heads, d, scale);
        }
        let s = &self.stream;
        let mut args = vec![
            Arg::Ptr(qkv.ptr(s)),
            Arg::Ptr(out.ptr(s)),
            Arg::I32(i32_of(OP, n)?),
            Arg::I32(heads as i32),
            Arg::I32(d as i32),
        ];
        let (y, z) = (heads as u32, batch as u32);
        // SAFETY: sizes checked; d <= the kernel's padded head dim.
        unsafe {
            if t == DType::F32 {
                args.push(Arg::F32(scale));
                self.launch(
                    "attention_f32",
                    (n.div_ceil(16) as u32, y, z),
                    128,
                    0,
                    &args,
                )
            } else {
                let pad = FLASH_PADS
                    .into_iter()
                    .find(|&p| p >= d)
                    .expect("d <= 128 checked");
                args.push(Arg::F32(scale * std::f32::consts::LOG2_E));
                let smem = (320 * (pad + 8) * 2) as u32;
                self.launch(
                    &format!("attention_{t}_d{pad}"),
                    (n.div_ceil(64) as u32, y, z),
                    128,
                    smem,
                    &args,
                )
            }
        }
    }

    /// [`Device::attention`] that also writes the f32 probabilities `[batch, heads, n, n]`.
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
        let s = &self.stream;
        let args = [
            Arg::Ptr(qkv.ptr(s)),
            Arg::Ptr(out.ptr(s)),
            Arg::Ptr(probs.ptr(s)),
            Arg::I32(i32_of(OP, n)?),
            Arg::I32(heads as i32),
            Arg::I32(d as i32),
            Arg::F32(scale),
        ];
        let grid = (i32_of(OP, n)? as u32, heads as u32, batch as u32);
        // SAFETY: sizes checked.
        unsafe { self.launch(&format!("attention_probs_{t}"), grid, 128, 0, &args) }
    }

    /// Unfolds f32 pixels `[b, c, h, w]` into `cols` `[b·(h/p)·(w/p), c·p·p]` (any float type).
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
        let t = float(OP, cols)?;
        if p == 0 {
            return Err(KernelError::shape(OP, "patch size 0"));
        }
        expect(OP, "pixels", pixels, DType::F32, b * c * h * w)?;
        expect(OP, "cols", cols, t, b * (h / p) * (w / p) * c * p * p)?;
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
        ];
        let grid = self.grid_for(cols.len());
        // SAFETY: sizes checked.
        unsafe { self.launch(&format!("im2col_{t}"), (grid, 1, 1), 256, 0, &args) }
    }

    /// Assembles the encoder input `x` (f32 `[b, 1 + r + n, h]`) from patch embeddings
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
        expect(OP, "x", x, DType::F32, b * (1 + r + n) * h)?;
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
        unsafe { self.launch(&format!("embed_tokens_{t}"), (grid, 1, 1), 256, 0, &args) }
    }

    /// The mean of tokens `start..s` of `x` `[b, s, h]` into f32 `out` `[b, h]`.
    pub fn mean_pool(
        &self,
        x: &Buffer,
        out: &mut Buffer,
        (b, s, h): (usize, usize, usize),
        start: usize,
    ) -> Result<()> {
        const OP: &str = "mean_pool";
        let t = float(OP, x)?;
        expect(OP, "x", x, t, b * s * h)?;
        expect(OP, "out", out, DType::F32, b * h)?;
        if start >= s {
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
        ];
        let grid = self.grid_for(b * h);
        // SAFETY: sizes checked.
        unsafe { self.launch(&format!("mean_pool_{t}"), (grid, 1, 1), 256, 0, &args) }
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
            let copy = self.copy(src)?;
            *dst = Buffer {
                shape: dst.shape.clone(),
                ..copy
            };
            return Ok(());
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
