//! One batch of the embed job: decoded inputs grouped by size and stacked (on the decoding
//! side), then run through a model (on a model thread) into rows and failures.

use std::time::{Duration, Instant};

use dinov2::image::PixelValues;
use dinov2::{stack_images, Backend, Embedder, ModelError, Tensor};

use super::inputs::Input;
use super::job::{Failure, Row};
use super::outputs::Outputs;
use super::OnError;
use crate::error::{CliError, Result};

/// One batch as the model thread receives it: the good images stacked per size, the bad ones
/// apart, in input order.
pub(super) struct Batch {
    /// Inputs before this index are done once this batch is.
    end: usize,
    groups: Vec<Group>,
    failures: Vec<Failure>,
    /// Worker time spent reading the inputs.
    read: Duration,
    /// Worker time spent decoding and preprocessing.
    prepare: Duration,
}

/// One decoded input: its index, its pixel values and original `(width, height)` or the step
/// that failed and why, and the worker time reading it and decoding and preprocessing it took.
pub(super) type Decoded = (
    usize,
    std::result::Result<(PixelValues, u32, u32), (&'static str, String)>,
    Duration,
    Duration,
);

/// Consecutive good images of one size, stacked for the model.
pub(super) struct Group {
    /// Input index and original `(width, height)` of each image.
    members: Vec<(usize, u32, u32)>,
    /// `[B, C, H, W]`, or why stacking failed.
    pixels: std::result::Result<Tensor, String>,
}

/// Runs the model on a group; per-image failures when the model rejects it or it does not fit
/// the device.
fn embed_group<B: Backend>(
    embedder: &Embedder<B>,
    group: Group,
    inputs: &[Input],
    outputs: &Outputs,
    rows: &mut Vec<Row>,
    failures: &mut Vec<Failure>,
) -> Result<()> {
    let result = match &group.pixels {
        Ok(pixels) => embedder.embed_batch_each(pixels),
        Err(reason) => Err(dinov2::Error::Model(ModelError::input(
            "pixel_values",
            reason.clone(),
        ))),
    };
    let fail = |failures: &mut Vec<Failure>, index: usize, error: String| {
        failures.push(Failure {
            index,
            path: inputs[index].name(),
            stage: "model".into(),
            error,
        })
    };
    match result {
        Ok(results) => {
            if results.len() != group.members.len() {
                // Never expected: zipping would silently lose images.
                return Err(CliError(format!(
                    "the model gave {} results for {} images",
                    results.len(),
                    group.members.len()
                )));
            }
            for ((index, width, height), result) in group.members.into_iter().zip(results) {
                match result {
                    Ok(e) => {
                        let grid = e.grid;
                        match outputs.split(e) {
                            Ok(split) => rows.push(Row {
                                index,
                                path: inputs[index].name(),
                                width,
                                height,
                                grid: grid.filter(|_| outputs.has_grid()),
                                shapes: split.shapes,
                                values: split.values,
                            }),
                            Err(e) => fail(failures, index, e),
                        }
                    }
                    // An image that does not fit the device even alone (the embedder has
                    // retried in smaller passes); the others are kept.
                    Err(e) => fail(failures, index, format!("{e} (even one image at a time)")),
                }
            }
        }
        // A group the model rejects: its images share one size, so the reason holds for each.
        Err(dinov2::Error::Model(ModelError::Input { reason, .. })) => {
            for (index, _, _) in group.members {
                fail(failures, index, reason.clone());
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Groups one batch's decoded inputs into a [`Batch`]: the good images stacked per size (one
/// group per size, in order of first appearance, so that images of mixed sizes still run in
/// few passes), on this thread rather than the model's; bad ones as failures. With
/// `--on-error fail` the first bad input ends the batch: nothing after it is kept.
pub(super) fn assemble(
    end: usize,
    items: Vec<Decoded>,
    inputs: &[Input],
    on_error: OnError,
) -> Batch {
    let mut batch = Batch {
        end,
        groups: Vec::new(),
        failures: Vec::new(),
        read: Duration::ZERO,
        prepare: Duration::ZERO,
    };
    // Per size: its members and their pixels.
    type Members = Vec<(usize, u32, u32)>;
    let mut sizes: Vec<([usize; 3], Members, Vec<PixelValues>)> = Vec::new();
    for (index, prepared, read, spent) in items {
        batch.read += read;
        batch.prepare += spent;
        match prepared {
            Ok((p, width, height)) => {
                let at = match sizes.iter().position(|s| s.0 == p.shape) {
                    Some(at) => at,
                    None => {
                        sizes.push((p.shape, Vec::new(), Vec::new()));
                        sizes.len() - 1
                    }
                };
                sizes[at].1.push((index, width, height));
                sizes[at].2.push(p);
            }
            Err((stage, error)) => {
                batch.failures.push(Failure {
                    index,
                    path: inputs[index].name(),
                    stage: stage.into(),
                    error,
                });
                if on_error == OnError::Fail {
                    break;
                }
            }
        }
    }
    batch.groups = sizes
        .into_iter()
        .map(|(_, members, pixels)| Group {
            members,
            pixels: stack_images(&pixels).map_err(|e| e.to_string()),
        })
        .collect();
    batch
}

/// What a model thread made of one [`Batch`].
pub(super) struct Outcome {
    pub end: usize,
    pub rows: Vec<Row>,
    /// Bad inputs and images the model rejected, in input order.
    pub failures: Vec<Failure>,
    /// With `--on-error fail`: the first bad input, where the job stops.
    pub stop: Option<Failure>,
    pub read: Duration,
    pub prepare: Duration,
    pub model: Duration,
}

/// Runs the model over one batch (a model thread's work).
pub(super) fn run_batch<B: Backend>(
    embedder: &Embedder<B>,
    batch: Batch,
    inputs: &[Input],
    outputs: &Outputs,
    on_error: OnError,
) -> Result<Outcome> {
    let t = Instant::now();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for group in batch.groups {
        embed_group(embedder, group, inputs, outputs, &mut rows, &mut failures)?;
    }
    // Groups are by size: back to input order.
    rows.sort_by_key(|r: &Row| r.index);
    // With --on-error fail, the batch ends at its bad input ([`assemble`]), which stops the job.
    let mut bad = batch.failures;
    let stop = match on_error {
        OnError::Fail => bad.pop(),
        OnError::Skip => None,
    };
    failures.extend(bad);
    failures.sort_by_key(|f| f.index);
    Ok(Outcome {
        end: batch.end,
        rows,
        failures,
        stop,
        read: batch.read,
        prepare: batch.prepare,
        model: t.elapsed(),
    })
}
