//! The LayerNorm-family launchers: LayerNorm, the residual update (with or without the norm
//! after it), and the row statistics of a LayerNorm folded into the next GEMM.

use super::{expect, float, half_float, i32_of, in_out_suffix, pointers_aligned, residual_suffix};
use crate::buffer::{Buffer, DType};
use crate::device::{Arg, Device};
use crate::error::Result;

/// Rows per block of the warp-per-row LayerNorm kernels (128 threads).
const LN_WARP_ROWS: usize = 4;
/// Threads per block of the block-per-row (`_wide`) LayerNorm kernels.
const LN_WIDE_THREADS: u32 = 256;
// block_sum reduces 32 warp partials: whole warps, at most 1024 threads.
const _: () = assert!(LN_WIDE_THREADS.is_multiple_of(32) && LN_WIDE_THREADS <= 1024);

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
        Some(g) if aligned && h.is_multiple_of(4) => {
            (RowNorm::Groups(g), warp_grid, 32 * LN_WARP_ROWS as u32)
        }
        _ => (RowNorm::Wide, rows as u32, LN_WIDE_THREADS),
    }
}

impl Device {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::kernel_source;

    #[test]
    fn layer_norm_geometry_matches_the_kernel_source() {
        let layer_norm = kernel_source("layer_norm.cu");
        for g in LN_GROUPS {
            assert!(layer_norm.contains(&format!("LAYER_NORM_G(name, TX, TY, {g})")));
            assert!(layer_norm.contains(&format!("ADD_SCALED_LN_G(name, suffix, TX, TB, {g})")));
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
}
