//! `dinov2 forward`: pixel values in, transformers-named outputs out.

use dinov2::io::{read_forward_inputs, write_tensors, ForwardInputs};
use dinov2::{Backend, Checkpoint, Dinov2, ForwardOptions, Head, Interpolation, Output};

use crate::args::{with_backend, ForwardArgs};
use crate::error::{CliError, Result};

/// Runs the forward verb: the checkpoint and inputs are checked before the device is opened.
pub fn run(args: ForwardArgs) -> Result<()> {
    let mut checkpoint = Checkpoint::open(crate::model_dir::resolve(&args.model)?)?;
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
    let opts = ForwardOptions {
        hidden_states: args.hidden_states,
        attentions: args.attentions,
        interpolation: if args.legacy_interpolation {
            Interpolation::Legacy
        } else {
            Interpolation::Current
        },
    };
    let output = with_backend!(args.device, args.dtype, |backend| {
        execute(backend, &checkpoint, head, &inputs, &opts)?
    });
    Ok(write_tensors(&args.output, &output.into_named())?)
}

fn execute<B: Backend>(
    backend: B,
    checkpoint: &Checkpoint,
    head: Head,
    inputs: &ForwardInputs,
    opts: &ForwardOptions,
) -> Result<Output> {
    let model = Dinov2::load(backend, checkpoint)?;
    Ok(model.run(
        head,
        &inputs.pixel_values,
        inputs.bool_masked_pos.as_deref(),
        inputs.labels.as_ref(),
        opts,
    )?)
}
