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

/// f32 GFLOP/s (2 per multiply-add) of every thread of the current rayon pool running
/// independent vector FMAs at once for about `time`, with the widest vector unit
/// ([`VectorUnit::detect`]); `None` where that unit has no FMA (the baseline).
pub fn fma_ceiling(time: Duration) -> Option<f64> {
    let lanes = match VectorUnit::detect() {
        VectorUnit::Avx512 => 16,
        VectorUnit::Avx2Fma => 8,
        VectorUnit::Baseline => return None,
    };
    let start = Instant::now();
    let steps: Vec<usize> = rayon::broadcast(|_| {
        let mut steps = 0;
        while steps == 0 || start.elapsed() < time {
            // SAFETY: `detect` found the unit the loop is compiled for.
            let sink = unsafe { fma_steps(lanes) };
            std::hint::black_box(sink);
            steps += 1;
        }
        steps
    });
    let seconds = start.elapsed().as_secs_f64();
    let flop = steps.iter().sum::<usize>() as f64 * (STEP * CHAINS * lanes * 2) as f64;
    Some(flop / seconds / 1e9)
}

/// [`STEP`] iterations of [`CHAINS`] vector FMAs of `lanes` f32 lanes.
///
/// # Safety
/// The CPU must have the unit of that width (AVX-512 for 16, AVX2 with FMA for 8).
#[cfg(target_arch = "x86_64")]
unsafe fn fma_steps(lanes: usize) -> f32 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    unsafe fn avx512() -> f32 {
        let (a, b) = (
            _mm512_set1_ps(std::hint::black_box(0.999_9)),
            _mm512_set1_ps(std::hint::black_box(1e-4)),
        );
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..STEP {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        acc.iter()
            .fold(0.0, |sum, &x| sum + _mm512_reduce_add_ps(x))
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2() -> f32 {
        let (a, b) = (
            _mm256_set1_ps(std::hint::black_box(0.999_9)),
            _mm256_set1_ps(std::hint::black_box(1e-4)),
        );
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..STEP {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut lanes = [0.0f32; 8];
        acc.iter().fold(0.0, |sum, &x| {
            _mm256_storeu_ps(lanes.as_mut_ptr(), x);
            sum + lanes.iter().sum::<f32>()
        })
    }

    // SAFETY: the caller's contract.
    unsafe {
        if lanes == 16 {
            avx512()
        } else {
            avx2()
        }
    }
}

/// Never called: [`VectorUnit::detect`] finds no vector FMA off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn fma_steps(_lanes: usize) -> f32 {
    0.0
}

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
