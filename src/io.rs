//! Safetensors files of tensors: the forward inputs (`pixel_values`, `bool_masked_pos`, `labels`)
//! and named f32 outputs, as `dinov2 forward` reads and writes them.

use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::{Labels, Tensor};

/// The tensors of a forward pass's input file.
#[derive(Debug, Clone)]
pub struct ForwardInputs {
    /// `[B, C, H, W]`.
    pub pixel_values: Tensor,
    /// `[B·num_patches]`, true = masked.
    pub bool_masked_pos: Option<Vec<bool>>,
    pub labels: Option<Labels>,
}

/// The tensors of a forward pass's input.
const INPUTS: [&str; 3] = ["pixel_values", "bool_masked_pos", "labels"];

/// The values of a float tensor (f32, f64, f16, bf16) as f32.
fn floats(name: &str, view: &TensorView<'_>) -> Result<Vec<f32>, String> {
    let b = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(format!(
                "tensor `{name}` has dtype {other:?}, expected F32, F64, F16 or BF16"
            ))
        }
    })
}

/// The values of an integer or boolean tensor as i64.
fn integers(name: &str, view: &TensorView<'_>) -> Result<Vec<i64>, String> {
    let b = view.data();
    Ok(match view.dtype() {
        Dtype::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        Dtype::I32 => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
            .collect(),
        Dtype::U8 | Dtype::BOOL => b.iter().map(|&v| v as i64).collect(),
        other => {
            return Err(format!(
                "tensor `{name}` has dtype {other:?}, expected I64, I32, U8 or BOOL"
            ))
        }
    })
}

/// The forward inputs of `st`; with `only_inputs`, any other tensor is an error.
fn parse_inputs(st: &SafeTensors<'_>, only_inputs: bool) -> Result<ForwardInputs, String> {
    for name in st.names() {
        if only_inputs && !INPUTS.contains(&name) {
            return Err(format!(
                "unexpected tensor `{name}` (expected pixel_values, bool_masked_pos, labels)"
            ));
        }
    }
    let pixels = st
        .tensor("pixel_values")
        .map_err(|_| "no tensor `pixel_values`".to_owned())?;
    let pixel_values = Tensor {
        shape: pixels.shape().to_vec(),
        data: floats("pixel_values", &pixels)?,
    };
    let bool_masked_pos = match st.tensor("bool_masked_pos") {
        Ok(view) => {
            if !matches!(view.dtype(), Dtype::U8 | Dtype::BOOL) {
                return Err(format!(
                    "tensor `bool_masked_pos` has dtype {:?}, expected U8 or BOOL",
                    view.dtype()
                ));
            }
            let batch = pixel_values.shape.first().copied().unwrap_or(0);
            if view.shape().len() != 2 || view.shape()[0] != batch {
                return Err(format!(
                    "tensor `bool_masked_pos` has shape {:?}, expected [B={batch}, num_patches]",
                    view.shape()
                ));
            }
            Some(
                integers("bool_masked_pos", &view)?
                    .into_iter()
                    .map(|v| v != 0)
                    .collect(),
            )
        }
        Err(_) => None,
    };
    let labels = match st.tensor("labels") {
        Ok(view) => Some(match view.dtype() {
            Dtype::I64 | Dtype::I32 => Labels::Classes(integers("labels", &view)?),
            _ => Labels::Targets(Tensor {
                shape: view.shape().to_vec(),
                data: floats("labels", &view)?,
            }),
        }),
        Err(_) => None,
    };
    Ok(ForwardInputs {
        pixel_values,
        bool_masked_pos,
        labels,
    })
}

/// Reads the safetensors file at `path` and gives its tensors to `read`; errors name the file.
fn with_safetensors<T>(
    path: &Path,
    read: impl FnOnce(&SafeTensors<'_>) -> Result<T, String>,
) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    read(&st).map_err(|reason| Error::format(path, reason))
}

/// Float tensor `name` of a safetensors file (stored as f32, f64, f16 or bf16), as f32.
pub fn read_tensor(path: &Path, name: &str) -> Result<Tensor> {
    with_safetensors(path, |st| {
        let view = st
            .tensor(name)
            .map_err(|_| format!("no tensor `{name}`; it holds {:?}", st.names()))?;
        let data = floats(name, &view)?;
        Tensor::new(view.shape().to_vec(), data)
            .ok_or_else(|| format!("tensor `{name}` holds fewer values than its shape"))
    })
}

/// Reads `pixel_values` and the optional `bool_masked_pos` and `labels` from a safetensors file.
pub fn read_forward_inputs(path: &Path) -> Result<ForwardInputs> {
    with_safetensors(path, |st| parse_inputs(st, true))
}

/// What [`read_reference`] reads: the forward inputs when the file holds `pixel_values`, and
/// the expected outputs by name.
pub struct Reference {
    pub inputs: Option<ForwardInputs>,
    pub outputs: Vec<(String, Tensor)>,
}

/// A reference file: the forward inputs when it holds `pixel_values`, and its other float
/// tensors as f32, sorted by name: expected outputs, named as transformers names them.
pub fn read_reference(path: &Path) -> Result<Reference> {
    with_safetensors(path, |st| {
        let inputs = if st.names().contains(&"pixel_values") {
            Some(parse_inputs(st, false)?)
        } else {
            None
        };
        let mut outputs = Vec::new();
        for (name, view) in st.tensors() {
            if INPUTS.contains(&name.as_str()) {
                continue;
            }
            let data = floats(&name, &view)?;
            let tensor = Tensor::new(view.shape().to_vec(), data)
                .ok_or_else(|| format!("tensor `{name}`: bad shape"))?;
            outputs.push((name, tensor));
        }
        outputs.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Reference { inputs, outputs })
    })
}

/// Writes named f32 tensors to `path`, through a temporary file renamed into place.
pub fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(name, t)| {
            TensorView::new(Dtype::F32, t.shape.clone(), bytemuck::cast_slice(&t.data))
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::format(path, format!("cannot encode tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| Error::format(path, format!("cannot encode: {e}")))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            Error::Io {
                path: path.to_owned(),
                source,
            }
        })
}
