//! Element-wise activations (evaluated in f64, rounded once to f32) and SwiGLU.

use rayon::prelude::*;

use crate::fastmath::{exp_f32, gelu_f32, map_in_place};

/// The activations transformers' `ACT2FN` offers for DINOv2's MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact `0.5·x·(1 + erf(x/√2))`.
    Gelu,
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    GeluTanh,
    /// `x·σ(1.702·x)`.
    QuickGelu,
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `λ·(max(0, x) + min(0, α·(eˣ − 1)))`.
    Selu,
    /// `x·σ(x)`.
    Silu,
    Tanh,
    Sigmoid,
    Identity,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl Activation {
    /// The activation of one value.
    pub fn eval(self, x: f64) -> f64 {
        const SELU_ALPHA: f64 = 1.673_263_242_354_377_3;
        const SELU_SCALE: f64 = 1.050_700_987_355_480_5;
        match self {
            Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2)),
            Activation::GeluTanh => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
            }
            Activation::QuickGelu => x * sigmoid(1.702 * x),
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::Selu => SELU_SCALE * (x.max(0.0) + (SELU_ALPHA * x.exp_m1()).min(0.0)),
            Activation::Silu => x * sigmoid(x),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => sigmoid(x),
            Activation::Identity => x,
        }
    }
}

/// Applies `act` to every element in place: GELU and SiLU through the vectorized f32 kernels of
/// [`crate::fastmath`], the others through [`Activation::eval`].
pub fn apply_activation(x: &mut [f32], act: Activation) {
    match act {
        Activation::Identity => {}
        Activation::Gelu => x
            .par_chunks_mut(1 << 14)
            .for_each(|c| map_in_place(c, gelu_f32)),
        Activation::Silu => x
            .par_chunks_mut(1 << 14)
            .for_each(|c| map_in_place(c, silu_f32)),
        _ => x.par_chunks_mut(1 << 14).for_each(|chunk| {
            for v in chunk {
                *v = act.eval(*v as f64) as f32;
            }
        }),
    }
}

/// `x·σ(x)` in f32.
#[inline(always)]
fn silu_f32(x: f32) -> f32 {
    x / (1.0 + exp_f32(-x))
}

/// SwiGLU over rows of `z = [x1 | x2]` (each half `f` wide): returns `silu(x1) · x2`, `[rows, f]`.
pub fn swiglu(z: &[f32], f: usize) -> Vec<f32> {
    assert_eq!(z.len() % (2 * f), 0, "swiglu: rows are not 2·f wide");
    let rows = z.len() / (2 * f);
    let mut out = vec![0.0f32; rows * f];
    out.par_chunks_mut(f)
        .zip(z.par_chunks(2 * f))
        .for_each(|(o, zr)| {
            let (x1, x2) = zr.split_at(f);
            for ((o, &a), &b) in o.iter_mut().zip(x1).zip(x2) {
                let a = a as f64;
                *o = (a * sigmoid(a) * b as f64) as f32;
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert!((Activation::Gelu.eval(1.0) - 0.841_344_746_068_542_9).abs() < 1e-15);
        assert!((Activation::GeluTanh.eval(1.0) - 0.841_191_990_607_477_2).abs() < 1e-12);
        assert!((Activation::Selu.eval(-1.0) - -1.111_330_737_812_562_8).abs() < 1e-12);
        assert_eq!(Activation::Relu6.eval(7.0), 6.0);
        assert_eq!(swiglu(&[0.0, 3.0], 1), vec![0.0]);
    }
}
