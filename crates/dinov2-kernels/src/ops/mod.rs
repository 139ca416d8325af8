//! Safe launchers of the kernels: each checks dtypes and sizes, then queues the kernel. Shapes
//! are passed by value (no device-side shape reads), so a sequence of them can be graph-captured.
//! One module a family ([`attention`], [`norm`], [`linear`], [`tokens`]); here, the checks they
//! share and the dtype cast.

mod attention;
mod linear;
mod norm;
mod tokens;

pub(crate) use attention::AttentionChoice;
pub use attention::MAX_HEAD_DIM;

use crate::buffer::{Buffer, DType};
use crate::device::{Arg, Device};
use crate::error::{KernelError, Result};

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

/// Whether every pointer among a launch's `args` is 16-byte aligned (`layer_norm_launch`'s
/// `aligned`).
fn pointers_aligned(args: &[Arg]) -> bool {
    args.iter()
        .all(|a| !matches!(a, Arg::Ptr(p) if p % 16 != 0))
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
}
