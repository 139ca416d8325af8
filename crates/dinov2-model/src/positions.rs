//! Position embeddings resized to an input's patch grid, by transformers' rules.

use dinov2_checkpoint::{Dinov2Config, ModelType};
use dinov2_cpu::{resize_grid, scale_factor_output, Resample};

use crate::error::{ModelError, Result};

/// Which rule resizes the pretrained position grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Interpolation {
    /// transformers ≥ 4.45: bicubic to `size=(gh, gw)`; the registers family antialiases.
    #[default]
    Current,
    /// transformers ≤ 4.44 and the original facebookresearch code: bicubic with
    /// `scale_factor = ((gh + 0.1) / M, (gw + 0.1) / M)`. Only for `dinov2` models.
    Legacy,
}

/// The position embeddings `[1 + gh·gw, h]` to add for an `height × width` input.
///
/// Skipped (the stored table returned) exactly when transformers skips it: the patch count equals
/// the table's and the input is square in pixels.
pub(crate) fn resized_positions(
    config: &Dinov2Config,
    table: &[f32],
    height: usize,
    width: usize,
    rule: Interpolation,
) -> Result<Vec<f32>> {
    let h = config.hidden_size;
    let m = config.grid_side();
    let p = config.patch_size;
    let (gh, gw) = (height / p, width / p);
    if gh * gw == m * m && height == width {
        return Ok(table.to_vec());
    }
    let mode = match (config.model_type, rule) {
        (ModelType::Dinov2WithRegisters, Interpolation::Current) => Resample::BicubicAntialias,
        (ModelType::Dinov2WithRegisters, Interpolation::Legacy) => {
            return Err(ModelError::Unsupported(
                "the legacy position-embedding rule exists only for dinov2 models, not dinov2_with_registers".into(),
            ))
        }
        (ModelType::Dinov2, Interpolation::Current) => Resample::Bicubic,
        (ModelType::Dinov2, Interpolation::Legacy) => {
            let scale_h = (gh as f64 + 0.1) / m as f64;
            let scale_w = (gw as f64 + 0.1) / m as f64;
            let out = (scale_factor_output(m, scale_h), scale_factor_output(m, scale_w));
            if out != (gh, gw) {
                return Err(ModelError::Unsupported(format!(
                    "legacy interpolation of the {m}x{m} position grid gives {}x{}, not the {gh}x{gw} patch grid",
                    out.0, out.1
                )));
            }
            Resample::BicubicScaleFactor { scale_h, scale_w }
        }
    };
    let mut out = Vec::with_capacity((1 + gh * gw) * h);
    out.extend_from_slice(&table[..h]);
    out.extend(resize_grid(&table[h..], m, m, h, gh, gw, mode));
    Ok(out)
}
