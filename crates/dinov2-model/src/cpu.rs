//! The CPU backend: the model's operations mapped onto `dinov2-cpu`.

use dinov2_checkpoint::Activation;
use dinov2_cpu as ops;

use crate::backend::{Backend, Dtype, TokenParams};
use crate::error::{ModelError, Result};
use crate::Tensor;

/// Runs the model in f32 on the CPU, on rayon's thread pool.
#[derive(Debug, Clone, Default)]
pub struct CpuBackend;

impl CpuBackend {
    /// A CPU backend computing in `dtype`; only f32 is offered on the CPU.
    pub fn new(dtype: Dtype) -> Result<Self> {
        match dtype {
            Dtype::F32 => Ok(CpuBackend),
            other => Err(ModelError::Unsupported(format!(
                "the CPU backend computes in f32 only; --dtype {other} needs --device cuda"
            ))),
        }
    }
}

fn op_activation(act: Activation) -> ops::Activation {
    match act {
        Activation::Gelu => ops::Activation::Gelu,
        Activation::GeluTanh => ops::Activation::GeluTanh,
        Activation::QuickGelu => ops::Activation::QuickGelu,
        Activation::Relu => ops::Activation::Relu,
        Activation::Relu6 => ops::Activation::Relu6,
        Activation::Selu => ops::Activation::Selu,
        Activation::Silu => ops::Activation::Silu,
        Activation::Tanh => ops::Activation::Tanh,
        Activation::Sigmoid => ops::Activation::Sigmoid,
        Activation::Identity => ops::Activation::Identity,
    }
}

fn with_last(shape: &[usize], last: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    if let Some(l) = s.last_mut() {
        *l = last;
    }
    s
}

/// Shape check of the in-place copies.
fn same_shape(what: &str, src: &[usize], dst: &[usize]) -> Result<()> {
    if src == dst {
        Ok(())
    } else {
        Err(ModelError::Backend {
            backend: "cpu".into(),
            reason: format!("{what}: source shape {src:?}, destination shape {dst:?}"),
        })
    }
}

/// Shape check of the residual updates: `branch` shaped as `x`, whose last dimension `gamma`
/// spans.
fn residual_shapes(x: &Tensor, branch: &Tensor, gamma: &Tensor) -> Result<()> {
    same_shape("add_scaled", &branch.shape, &x.shape)?;
    if x.last_dim() == gamma.len() && !gamma.is_empty() {
        Ok(())
    } else {
        Err(ModelError::Backend {
            backend: "cpu".into(),
            reason: format!(
                "add_scaled: layer scale of {} for rows of {}",
                gamma.len(),
                x.last_dim()
            ),
        })
    }
}

impl Backend for CpuBackend {
    type Tensor = Tensor;
    type Weight = Tensor;
    /// The CPU records nothing: each operation is a function call, nothing to save by replaying.
    type Recording = std::convert::Infallible;

    fn name(&self) -> String {
        "cpu".into()
    }

    fn device_name(&self) -> String {
        cpu_model().unwrap_or_else(|| self.name())
    }

    fn device_details(&self) -> Vec<(&'static str, String)> {
        let unit = dinov2_cpu::fastmath::VectorUnit::detect();
        vec![("vector_unit", unit.name().to_string())]
    }

    fn weight(&self, values: Vec<f32>, shape: Vec<usize>) -> Result<Tensor> {
        Tensor::new(shape, values).ok_or_else(|| ModelError::Backend {
            backend: "cpu".into(),
            reason: "weight size disagrees with its shape".into(),
        })
    }

    /// Kept transposed, `[k, n]`: see [`ops::linear_kn`].
    fn linear_weight(&self, values: Vec<f32>, n: usize, k: usize) -> Result<Tensor> {
        if values.len() != n * k {
            return Err(ModelError::Backend {
                backend: "cpu".into(),
                reason: format!("linear weight [{n}, {k}] given {} values", values.len()),
            });
        }
        self.weight(ops::transpose(&values, n, k), vec![k, n])
    }

    fn upload(&self, tensor: &Tensor) -> Result<Tensor> {
        Ok(tensor.clone())
    }

    fn download(&self, tensor: &Tensor) -> Result<Tensor> {
        Ok(tensor.clone())
    }

    fn replay(&self, recording: &Self::Recording) -> Result<()> {
        match *recording {}
    }

    fn duplicate(&self, tensor: &Tensor) -> Result<Tensor> {
        Ok(tensor.clone())
    }

    fn copy_into(&self, src: &Tensor, dst: &mut Tensor) -> Result<()> {
        same_shape("copy_into", &src.shape, &dst.shape)?;
        dst.data.copy_from_slice(&src.data);
        Ok(())
    }

    fn upload_into(&self, src: &Tensor, dst: &mut Tensor) -> Result<()> {
        self.copy_into(src, dst)
    }

    fn patch_embed(
        &self,
        pixels: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        patch: usize,
    ) -> Result<Tensor> {
        let [b, c, h, w] = pixels.shape[..] else {
            return Err(ModelError::input("pixel_values", "expected 4 dimensions"));
        };
        let cols = ops::im2col(&pixels.data, b, c, h, w, patch);
        // The weight is `[k, n]` ([`Backend::linear_weight`]).
        let (rows, k, n) = (
            b * (h / patch) * (w / patch),
            c * patch * patch,
            weight.shape[1],
        );
        let y = ops::linear_kn(&cols, rows, k, &weight.data, n, Some(&bias.data));
        Ok(Tensor {
            shape: vec![b, (h / patch) * (w / patch), n],
            data: y,
        })
    }

    fn embed_tokens(&self, patches: &Tensor, p: TokenParams<'_, Tensor>) -> Result<Tensor> {
        let [b, n, h] = patches.shape[..] else {
            return Err(ModelError::input(
                "patch embeddings",
                "expected 3 dimensions",
            ));
        };
        let r = p.registers.map_or(0, |t| t.shape[0]);
        let seq = 1 + r + n;
        let pos = &p.positions.data;
        let mut out = vec![0.0f32; b * seq * h];
        for (i, img) in out.chunks_exact_mut(seq * h).enumerate() {
            for (o, (&c, &q)) in img[..h].iter_mut().zip(p.cls.data.iter().zip(&pos[..h])) {
                *o = c + q;
            }
            if let Some(regs) = p.registers {
                img[h..(1 + r) * h].copy_from_slice(&regs.data);
            }
            for t in 0..n {
                let masked = p.mask.is_some_and(|(_, m)| m[i * n + t]);
                let src = match (masked, p.mask) {
                    (true, Some((token, _))) => &token.data[..],
                    _ => &patches.data[(i * n + t) * h..][..h],
                };
                let dst = &mut img[(1 + r + t) * h..][..h];
                let q = &pos[(1 + t) * h..][..h];
                for ((o, &s), &q) in dst.iter_mut().zip(src).zip(q) {
                    *o = s + q;
                }
            }
        }
        Ok(Tensor {
            shape: vec![b, seq, h],
            data: out,
        })
    }

    fn layer_norm(&self, x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
        Ok(Tensor {
            shape: x.shape.clone(),
            data: ops::layer_norm(&x.data, &weight.data, &bias.data, eps),
        })
    }

    fn linear(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        act: Activation,
    ) -> Result<Tensor> {
        // The weight is `[k, n]` ([`Backend::linear_weight`]).
        let (k, n) = (weight.shape[0], weight.shape[1]);
        let mut y = ops::linear_kn(
            &x.data,
            x.rows(),
            k,
            &weight.data,
            n,
            bias.map(|b| &b.data[..]),
        );
        ops::apply_activation(&mut y, op_activation(act));
        Ok(Tensor {
            shape: with_last(&x.shape, n),
            data: y,
        })
    }

    fn swiglu(&self, x: &Tensor) -> Result<Tensor> {
        let f = x.last_dim() / 2;
        Ok(Tensor {
            shape: with_last(&x.shape, f),
            data: ops::swiglu(&x.data, f),
        })
    }

    fn attention(
        &self,
        qkv: &Tensor,
        heads: usize,
        want_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let [b, n, three_h] = qkv.shape[..] else {
            return Err(ModelError::input("qkv", "expected 3 dimensions"));
        };
        let h = three_h / 3;
        let d = h / heads;
        let scale = (d as f64).powf(-0.5);
        let (out, probs) = ops::attention(&qkv.data, b, n, heads, d, scale, want_probs);
        Ok((
            Tensor {
                shape: vec![b, n, h],
                data: out,
            },
            probs.map(|p| Tensor {
                shape: vec![b, heads, n, n],
                data: p,
            }),
        ))
    }

    fn add_scaled(&self, x: &mut Tensor, branch: &Tensor, gamma: &Tensor) -> Result<()> {
        residual_shapes(x, branch, gamma)?;
        ops::add_scaled(&mut x.data, &branch.data, &gamma.data);
        Ok(())
    }

    fn add_scaled_layer_norm(
        &self,
        x: &mut Tensor,
        branch: &Tensor,
        gamma: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        residual_shapes(x, branch, gamma)?;
        let data = ops::add_scaled_layer_norm(
            &mut x.data,
            &branch.data,
            &gamma.data,
            &weight.data,
            &bias.data,
            eps,
        );
        Ok(Tensor {
            shape: x.shape.clone(),
            data,
        })
    }
}

/// The processor's model name as Linux reports it (`model name` in `/proc/cpuinfo`).
fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    model_name(&info)
}

/// The first `model name` of a `/proc/cpuinfo` text.
fn model_name(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == "model name" && !value.trim().is_empty()).then(|| value.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_processor_is_named_from_cpuinfo() {
        let info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14 96-Core Processor\n\
                    flags\t\t: fpu\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 9R14 96-Core Processor\n";
        assert_eq!(
            model_name(info).as_deref(),
            Some("AMD EPYC 9R14 96-Core Processor")
        );
        // Arm kernels may leave it out (or empty): then the backend says `cpu`.
        assert_eq!(model_name("processor\t: 0\nBogoMIPS\t: 50.00\n"), None);
        assert_eq!(model_name("model name\t:\n"), None);
        assert!(!CpuBackend.device_name().is_empty());
    }
}
