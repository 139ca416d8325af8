//! The CPU's f32 multiply-add ceiling, measured: what `dinov2 bench` reports a pass's GFLOP/s
//! against on the CPU (a card's peak comes from its datasheet; a virtual machine's cores have
//! none to trust, and their speed drifts).

use std::time::{Duration, Instant};

use crate::fastmath::VectorUnit;

/// Independent accumulators a thread's loop keeps: more than an FMA's latency (4 cycles) times
/// the two FMA units of a core, so that the loop is bound by their throughput alone.
const CHAINS: usize = 12;

/// Iterations between two looks at the clock.
const STEP: usize = 1 << 16;

/// Windows the measurement is cut into: the ceiling is the fastest, since a neighbour's load
/// can only slow a window down (one window of 300 ms once read 240 GFLOP/s where the machine's
/// usual was 340, and a pass then ran at "104%" of it).
const WINDOWS: u32 = 6;

/// f32 GFLOP/s (2 per multiply-add) of every thread of the current rayon pool running
/// independent vector FMAs at once, with the widest vector unit ([`VectorUnit::detect`]): the
/// fastest of six windows that take `time` together (a neighbour's load can only slow a window
/// down). `None` where that unit has no FMA (the baseline).
pub fn fma_ceiling(time: Duration) -> Option<f64> {
    let lanes = match VectorUnit::detect() {
        VectorUnit::Avx512 => 16,
        VectorUnit::Avx2Fma => 8,
        VectorUnit::Baseline => return None,
    };
    let window = time / WINDOWS;
    let rate = || {
        let start = Instant::now();
        let steps: Vec<usize> = rayon::broadcast(|_| {
            let mut steps = 0;
            while steps == 0 || start.elapsed() < window {
                // SAFETY: `detect` found the unit of that width.
                unsafe { fma_steps(lanes) };
                steps += 1;
            }
            steps
        });
        let flop = steps.iter().sum::<usize>() as f64 * (STEP * CHAINS * lanes * 2) as f64;
        flop / start.elapsed().as_secs_f64() / 1e9
    };
    (0..WINDOWS).map(|_| rate()).reduce(f64::max)
}

/// [`STEP`] iterations of 12 independent vector FMAs of `lanes` f32 lanes (16: AVX-512's zmm
/// registers, else AVX2's ymm), in assembly: the compiler would neither keep twelve lane arrays
/// in registers (they went through memory, a tenth of the speed) nor, at this crate's minimum
/// Rust version, offer the AVX-512 intrinsics. Zeros throughout: an FMA's speed does not
/// depend on its values, short of subnormals.
///
/// # Safety
/// The CPU must have the unit: AVX-512F for 16 lanes, AVX2 with FMA for 8.
#[cfg(target_arch = "x86_64")]
unsafe fn fma_steps(lanes: usize) {
    use std::arch::asm;

    /// The loop over one register file: `$zero` clears `$a`, which then fills `$b` and the
    /// twelve accumulators; each step is `acc = acc·a + b` for each.
    macro_rules! fma_loop {
        ($zero:tt, $a:tt, $b:tt, [$($acc:tt),+]) => {
            asm!(
                concat!($zero, " ", $a, ", ", $a, ", ", $a),
                concat!("vmovaps ", $b, ", ", $a),
                $(concat!("vmovaps ", $acc, ", ", $a),)+
                "2:",
                $(concat!("vfmadd213ps ", $acc, ", ", $a, ", ", $b),)+
                "dec {n}",
                "jnz 2b",
                n = inout(reg) STEP => _,
                out($a) _, out($b) _, $(out($acc) _,)+
                options(nostack, nomem),
            )
        };
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn zmm() {
        // SAFETY: only the registers declared clobbered are written.
        unsafe {
            fma_loop!(
                "vpxord",
                "zmm12",
                "zmm13",
                [
                    "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9",
                    "zmm10", "zmm11"
                ]
            )
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn ymm() {
        // SAFETY: only the registers declared clobbered are written.
        unsafe {
            fma_loop!(
                "vxorps",
                "ymm12",
                "ymm13",
                [
                    "ymm0", "ymm1", "ymm2", "ymm3", "ymm4", "ymm5", "ymm6", "ymm7", "ymm8", "ymm9",
                    "ymm10", "ymm11"
                ]
            )
        }
    }

    // SAFETY: the caller's contract.
    unsafe {
        if lanes == 16 {
            zmm()
        } else {
            ymm()
        }
    }
}

/// Never called: [`VectorUnit::detect`] finds no vector FMA off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn fma_steps(_lanes: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_is_measured_where_the_unit_has_fma() {
        // A measurement, not a claim about this machine's speed: only that there is one.
        let ceiling = fma_ceiling(Duration::from_millis(20));
        match VectorUnit::detect() {
            VectorUnit::Baseline => assert_eq!(ceiling, None),
            _ => {
                let g = ceiling.expect("measured");
                assert!(g.is_finite() && g > 0.0, "{g} GFLOP/s");
            }
        }
    }
}
