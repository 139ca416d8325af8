//! The launchers around the encoder: im2col of the pixels for the patch embedding, the
//! encoder's input tokens, and the poolings of its output.

use super::{expect, float, i32_of, in_out_suffix, residual_suffix};
use crate::buffer::{Buffer, DType};
use crate::device::{Arg, Device};
use crate::error::{KernelError, Result};

impl Device {
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
}
