//! The linear-layer launchers: the GEMM with its bias and activation (fused where a kernel
//! can), the separate bias + activation pass, and SwiGLU.

use super::{check_linear_bias, expect, float, i32_of, Act};
use crate::buffer::{Buffer, DType};
use crate::device::{grid_stride_blocks, Arg, Device};
use crate::error::Result;
use crate::gemm::GemmPath;

/// Whether `bias_act` (and `swiglu`, per half of z) may take the 8-wide kernel: its 16-byte
/// accesses need rows of whole 8-element groups (no group wraps into the next row, so
/// bias[c0..c0 + 8] is in range) and a 16-byte aligned base.
fn bias_act_vectorized(cols: usize, y_ptr: u64) -> bool {
    cols.is_multiple_of(8) && y_ptr.is_multiple_of(16)
}

/// Grid and block of `bias_act_v8` and `swiglu_v8`: x over the `cols / 8` column groups (up to
/// 128 threads per block, whole warps), y over the rows (each block steps by `gridDim.y`), as
/// many threads in all as a grid-stride loop over the groups would get.
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
        let (name, grid, block) =
            if bias_act_vectorized(f, z.ptr(s)) && out.ptr(s).is_multiple_of(16) {
                let (grid, block) = bias_act_v8_launch(rows, f, self.info().multiprocessors);
                (format!("swiglu_v8_{t}"), grid, block)
            } else {
                (format!("swiglu_{t}"), (self.grid_for(rows * f), 1, 1), 256)
            };
        // SAFETY: sizes checked.
        unsafe { self.launch(&name, grid, block, 0, &args) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
