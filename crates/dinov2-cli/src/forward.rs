//! `dinov2 forward`: pixel values in, transformers-named outputs out.

use dinov2::io::{read_forward_inputs, read_reference, write_tensors, ForwardInputs};
use dinov2::{Backend, Checkpoint, Dinov2, ForwardOptions, Head, Interpolation, Output, Tensor};

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
    let (reference_inputs, expected) = match &args.expect {
        Some(path) => {
            let reference = read_reference(path)?;
            (reference.inputs, Some(reference.outputs))
        }
        None => (None, None),
    };
    let inputs = match (&args.input, reference_inputs) {
        (Some(path), _) => read_forward_inputs(path)?,
        (None, Some(inputs)) => inputs,
        (None, None) => {
            return Err(CliError(
                "--expect: the file holds no pixel_values; give them with --input".into(),
            ))
        }
    };
    let bad = inputs
        .pixel_values
        .data
        .iter()
        .filter(|v| !v.is_finite())
        .count();
    if bad > 0 {
        eprintln!(
            "warning: pixel_values holds {bad} values that are not finite (NaN or infinite): the \
             outputs will be too"
        );
    }
    let expects = |prefix: &str| {
        expected
            .iter()
            .flatten()
            .any(|(name, _)| name.starts_with(prefix))
    };
    let opts = ForwardOptions {
        hidden_states: args.hidden_states || expects("hidden_states."),
        attentions: args.attentions || expects("attentions."),
        interpolation: if args.legacy_interpolation {
            Interpolation::Legacy
        } else {
            Interpolation::Current
        },
    };
    let output = with_backend!(args.device, args.dtype, |backend| {
        execute(backend, &checkpoint, head, &inputs, &opts)?
    });
    let named = output.into_named();
    if let Some(path) = &args.output {
        write_tensors(path, &named)?;
    }
    match expected {
        Some(expected) => {
            let tolerance = args.tolerance.unwrap_or(match args.dtype {
                dinov2::Dtype::F32 => 1e-5,
                dinov2::Dtype::F16 => 1e-2,
                dinov2::Dtype::BF16 => 3e-2,
            });
            compare(&named, &expected, tolerance)
        }
        None => Ok(()),
    }
}

/// Prints each expected tensor's relative L2 error and largest difference against ours; an
/// error naming those beyond `tolerance` or missing.
fn compare(ours: &[(String, Tensor)], expected: &[(String, Tensor)], tolerance: f64) -> Result<()> {
    if expected.is_empty() {
        return Err(CliError(
            "--expect: the file holds no output to compare (only inputs)".into(),
        ));
    }
    println!(
        "{:<28} {:>18} {:>12} {:>12}  (tolerance {tolerance:e})",
        "output", "shape", "rel L2", "max |diff|"
    );
    let mut bad = Vec::new();
    for (name, want) in expected {
        let Some((_, got)) = ours.iter().find(|(n, _)| n == name) else {
            println!(
                "{name:<28} {:>18} {:>12} {:>12}  MISSING",
                format!("{:?}", want.shape),
                "-",
                "-"
            );
            bad.push(format!(
                "{name} (not computed: check --head and --out-indices)"
            ));
            continue;
        };
        if got.shape != want.shape {
            println!(
                "{name:<28} {:>18} {:>12} {:>12}  SHAPE {:?}",
                format!("{:?}", want.shape),
                "-",
                "-",
                got.shape
            );
            bad.push(format!(
                "{name} (shape {:?}, expected {:?})",
                got.shape, want.shape
            ));
            continue;
        }
        let (mut num, mut den, mut max) = (0f64, 0f64, 0f64);
        for (&a, &b) in got.data.iter().zip(&want.data) {
            let d = a as f64 - b as f64;
            num += d * d;
            den += (b as f64) * (b as f64);
            // NaN shows as NaN, not as the largest number.
            if d.is_nan() || max.is_nan() {
                max = f64::NAN;
            } else {
                max = max.max(d.abs());
            }
        }
        let rel = if den > 0.0 {
            (num / den).sqrt()
        } else {
            num.sqrt()
        };
        let ok = rel <= tolerance;
        println!(
            "{name:<28} {:>18} {rel:>12.3e} {max:>12.3e}  {}",
            format!("{:?}", want.shape),
            if ok { "ok" } else { "FAIL" }
        );
        if !ok {
            bad.push(format!("{name} (relative L2 {rel:.3e})"));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(CliError(format!(
            "{} of {} outputs differ beyond {tolerance:e}: {}",
            bad.len(),
            expected.len(),
            bad.join(", ")
        )))
    }
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
