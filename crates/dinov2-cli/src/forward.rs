//! `dinov2 forward`: pixel values in, transformers-named outputs out.

use dinov2::io::{read_forward_inputs, write_tensors};
use dinov2::{Checkpoint, CpuBackend, Dinov2, ForwardOptions, Head, Interpolation};

use crate::args::{Device, ForwardArgs};
use crate::error::{CliError, Result};

/// Runs the forward verb.
pub fn run(args: ForwardArgs) -> Result<()> {
    if let Device::Cuda(_) = args.device {
        return Err(CliError(
            "--device cuda: the CUDA backend is not available in this build yet; use --device cpu"
                .into(),
        ));
    }
    let backend = CpuBackend::new(args.dtype)?;
    let mut checkpoint = Checkpoint::open(&args.model)?;
    if let Some(indices) = &args.out_indices {
        // The config's validation speaks of the config field; here the user typed a flag.
        checkpoint
            .config
            .set_out_indices(indices)
            .map_err(|e| match e {
                dinov2::CheckpointError::Config { reason, .. } => {
                    CliError(format!("--out-indices: {reason}"))
                }
                other => other.into(),
            })?;
    }
    let head = match args.head {
        Some(h) => h,
        None => Head::from_config(&checkpoint.config)?,
    };
    let inputs = read_forward_inputs(&args.input)?;
    let model = Dinov2::load(backend, &checkpoint)?;
    let opts = ForwardOptions {
        hidden_states: args.hidden_states,
        attentions: args.attentions,
        interpolation: if args.legacy_interpolation {
            Interpolation::Legacy
        } else {
            Interpolation::Current
        },
    };
    let output = model.run(
        head,
        &inputs.pixel_values,
        inputs.bool_masked_pos.as_deref(),
        inputs.labels.as_ref(),
        &opts,
    )?;
    Ok(write_tensors(&args.output, &output.into_named())?)
}
