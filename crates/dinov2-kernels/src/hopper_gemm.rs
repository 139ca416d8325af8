//! Our own GEMMs for Hopper (`kernels/gemm_sm90a.cu`: wgmma, sm_90a only): `y = act(x·wᵀ +
//! bias)` with the bias and the activation applied to the f32 sums in the kernel's epilogue. What
//! they are for is the exact GELU after fc1, which cuBLASLt cannot fuse (its GELU epilogue is the
//! tanh approximation): fused, it costs no pass over the activations.
//!
//! Which GEMMs they run is [`OwnGemm`], `DINOV2_GEMM` when the device opens (`fused` or `own`;
//! cuBLASLt by default until the kernels are measured on a GPU), or
//! [`Device::set_own_gemm`]. A shape they cannot run (f32, `n % 128 != 0`, `k % 64 != 0`,
//! unaligned pointers, another activation) goes to cuBLAS as before.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::buffer::{Buffer, DType};
use crate::device::{Arg, CodeKind, Device};
use crate::error::{KernelError, Result};
use crate::ops::Act;

/// Which GEMMs run on our Hopper kernels instead of cuBLAS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnGemm {
    /// None: cuBLAS(Lt) runs every GEMM.
    Off,
    /// Those followed by an activation that cuBLASLt cannot fuse (the exact GELU): the
    /// activation moves into our epilogue.
    Fused,
    /// Every GEMM they can run.
    All,
}

/// Rows of a block's tile (`GM_BM`), and its columns: 128 (`_n128`: two blocks an SM) or 256
/// (`_n256`: one block an SM, `DINOV2_GEMM_TILE=256`). Keep in sync with gemm_sm90a.cu.
const TILE_ROWS: usize = 128;
const TILE_COLS: [usize; 2] = [128, 256];
/// K per pipeline stage (`GM_BK`): one 128-byte swizzled row of 64 16-bit elements.
const TILE_K: usize = 64;
const THREADS: u32 = 256;

/// Dynamic shared memory of a block with `cols`-column tiles: the stages (3 of them at 128
/// columns, 4 at 256) of A `[128][64]` and B `[cols][64]` in 16-bit elements, plus 1 KiB for
/// aligning them to 1024 bytes (`GM_SMEM_BYTES`).
pub(crate) fn smem_bytes(cols: usize) -> u32 {
    let stages = if cols == 256 { 4 } else { 3 };
    (stages * (TILE_ROWS + cols) * TILE_K * 2 + 1024) as u32
}

/// The `act` part of the kernel names, for the activations the epilogue has.
fn act_name(act: Act) -> Option<&'static str> {
    match act {
        Act::Identity => Some("id"),
        Act::Gelu => Some("gelu"),
        Act::GeluTanh => Some("gelu_tanh"),
        _ => None,
    }
}

/// The columns of the tile that runs `n` output columns, or `None` when none does; `wide`
/// prefers 256 where `n` allows it.
pub(crate) fn tile_cols(n: usize, wide: bool) -> Option<usize> {
    let [narrow, broad] = TILE_COLS;
    if wide && n % broad == 0 {
        Some(broad)
    } else if n % narrow == 0 {
        Some(narrow)
    } else {
        None
    }
}

/// The policy and tile choice of a device, in one atomic byte: bits 0-1 the [`OwnGemm`], bit 2
/// the 256-column tile.
pub(crate) struct OwnGemmState(AtomicU8);

impl OwnGemmState {
    /// From `DINOV2_GEMM` (`fused`, `own`) and `DINOV2_GEMM_TILE` (`256`); off where the kernels
    /// are not loaded (compute capability other than 9.0).
    pub(crate) fn from_env(code: CodeKind) -> Self {
        let policy = match std::env::var("DINOV2_GEMM").unwrap_or_default().as_str() {
            _ if code != CodeKind::CubinSm90 => OwnGemm::Off,
            "fused" => OwnGemm::Fused,
            "own" => OwnGemm::All,
            _ => OwnGemm::Off,
        };
        let wide = std::env::var("DINOV2_GEMM_TILE").is_ok_and(|v| v == "256");
        let state = OwnGemmState(AtomicU8::new(0));
        state.set(policy, wide);
        state
    }

    fn set(&self, policy: OwnGemm, wide: bool) {
        let bits = policy as u8 | (u8::from(wide) << 2);
        self.0.store(bits, Ordering::Relaxed);
    }

    fn get(&self) -> (OwnGemm, bool) {
        let bits = self.0.load(Ordering::Relaxed);
        let policy = match bits & 3 {
            1 => OwnGemm::Fused,
            2 => OwnGemm::All,
            _ => OwnGemm::Off,
        };
        (policy, bits & 4 != 0)
    }
}

impl Device {
    /// Which GEMMs run on our Hopper kernels, and whether with 256-column tiles.
    pub fn own_gemm(&self) -> (OwnGemm, bool) {
        self.own_gemm.get()
    }

    /// Sets which GEMMs run on our Hopper kernels from now on (recordings already made keep
    /// theirs). An error on a device other than compute capability 9.0, where they do not
    /// exist, unless `policy` is [`OwnGemm::Off`].
    pub fn set_own_gemm(&self, policy: OwnGemm, wide: bool) -> Result<()> {
        if policy != OwnGemm::Off && self.info().code != CodeKind::CubinSm90 {
            return Err(KernelError::Unsupported(format!(
                "our GEMM kernels are sm_90a code; {} is compute capability {}.{}",
                self.info().name,
                self.info().compute_capability.0,
                self.info().compute_capability.1
            )));
        }
        self.own_gemm.set(policy, wide);
        Ok(())
    }

    /// Queues `y = act(x·wᵀ + bias)` on our kernel when the policy picks it for `act` and the
    /// shape and pointers allow; `Ok(false)` (nothing queued) otherwise. Shapes and dtypes are
    /// checked by the caller ([`Device::linear_fusing`]): x `[m, k]`, w `[n, k]`, y `[m, n]` of one
    /// type, bias `[n]` of that type or f32, m, n, k > 0.
    pub(crate) fn own_linear(
        &self,
        x: &Buffer,
        w: &Buffer,
        bias: Option<&Buffer>,
        y: &mut Buffer,
        (m, n, k): (usize, usize, usize),
        act: Act,
    ) -> Result<bool> {
        let (policy, wide) = self.own_gemm();
        let wanted = match policy {
            OwnGemm::Off => false,
            OwnGemm::Fused => act == Act::Gelu,
            OwnGemm::All => true,
        };
        let t = x.dtype();
        let (Some(act), Some(cols), true) = (
            act_name(act),
            tile_cols(n, wide),
            wanted && matches!(t, DType::F16 | DType::BF16),
        ) else {
            return Ok(false);
        };
        let s = &self.stream;
        let (xp, wp, yp) = (x.ptr(s), w.ptr(s), y.ptr(s));
        let row_tiles = m.div_ceil(TILE_ROWS);
        let fits = k % TILE_K == 0
            && [xp, wp, yp].iter().all(|p| p % 16 == 0)
            && row_tiles <= 65535
            && [m, n, k].iter().all(|&v| i32::try_from(v).is_ok());
        if !fits {
            return Ok(false);
        }
        let args = [
            Arg::Ptr(xp),
            Arg::Ptr(wp),
            Arg::Ptr(bias.map_or(0, |b| b.ptr(s))),
            Arg::I32(i32::from(bias.is_some_and(|b| b.dtype() == DType::F32))),
            Arg::Ptr(yp),
            Arg::I32(m as i32),
            Arg::I32(n as i32),
            Arg::I32(k as i32),
        ];
        let name = format!("gemm_{t}_{act}_n{cols}");
        let grid = ((n / cols) as u32, row_tiles as u32, 1);
        // SAFETY: x holds m·k, w n·k, y m·n elements of t and bias n (checked by the caller);
        // the kernel reads and writes no more (rows past m are zero-filled and not stored).
        unsafe { self.launch(&name, grid, THREADS, smem_bytes(cols), &args)? };
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_fit_the_columns() {
        assert_eq!(tile_cols(768, false), Some(128));
        assert_eq!(tile_cols(768, true), Some(256));
        assert_eq!(tile_cols(384, true), Some(128));
        assert_eq!(tile_cols(1152, true), Some(128));
        assert_eq!(tile_cols(100, false), None);
        assert_eq!(tile_cols(64, true), None);
    }

    #[test]
    fn shared_memory_fits_the_blocks_an_sm() {
        // 228 KiB an SM, 1 KiB of it reserved per block; at most 227 KiB for one block.
        let per_sm = 228 * 1024;
        assert_eq!(smem_bytes(128), 99_328);
        assert!(2 * (smem_bytes(128) + 1024) <= per_sm);
        assert!(smem_bytes(256) <= 227 * 1024);
    }

    #[test]
    fn launch_geometry_matches_the_kernel_source() {
        use crate::ops::tests::{define, kernel_source};
        let src = kernel_source("gemm_sm90a.cu");
        assert_eq!(define(&src, "GM_BM"), TILE_ROWS);
        assert_eq!(define(&src, "GM_BK"), TILE_K);
        assert_eq!(define(&src, "GM_THREADS"), THREADS as usize);
        // The two tile shapes: columns, stages (what smem_bytes counts), MMA groups left in
        // flight, blocks an SM.
        assert!(src.contains("GEMM_KERNEL(name, T, aname, ACT, 128, 3, 0, 2)"));
        assert!(src.contains("GEMM_KERNEL(name, T, aname, ACT, 256, 4, 1, 1)"));
        assert!(src
            .contains("#define GM_SMEM_BYTES(BN, STAGES) ((STAGES) * GM_STAGE_BYTES(BN) + 1024)"));
        assert_eq!(smem_bytes(128), 3 * (128 + 128) * 64 * 2 + 1024);
        assert_eq!(smem_bytes(256), 4 * (128 + 256) * 64 * 2 + 1024);
    }

    #[test]
    fn the_state_round_trips() {
        let s = OwnGemmState(AtomicU8::new(0));
        for policy in [OwnGemm::Off, OwnGemm::Fused, OwnGemm::All] {
            for wide in [false, true] {
                s.set(policy, wide);
                assert_eq!(s.get(), (policy, wide));
            }
        }
    }
}
