//! One batch of the embed job: decoded inputs grouped by patch grid and stacked into passes (on
//! the decoding side), then run through a model (on a model thread) into rows and failures.

use std::time::{Duration, Instant};

use dinov2::image::PixelValues;
use dinov2::{cut_to_patches, stack_images, Backend, Embedder, ModelError, Tensor};

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
    /// Worker time spent reading the inputs, and the time spent waiting for a stream's
    /// members.
    read: Duration,
    /// Worker time spent decoding and preprocessing.
    prepare: Duration,
}

/// One decoded input.
pub(super) struct Decoded {
    /// Its position among the job's inputs, and its name.
    pub index: usize,
    pub name: String,
    /// Its pixel values and original `(width, height)`, or the step that failed and why.
    pub result: std::result::Result<(PixelValues, u32, u32), (&'static str, String)>,
    /// The worker time reading it, and decoding and preprocessing it, took.
    pub read: Duration,
    pub prepare: Duration,
}

/// How a batch's images become model passes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Grouping {
    /// The model's patch size: images are grouped by patch grid.
    pub patch: usize,
    /// Images per pass at most.
    pub pass: usize,
}

/// One good image of a [`Group`]: its input index, name and original `(width, height)`.
type Member = (usize, String, u32, u32);

/// Good images of one patch grid, stacked for the model: one pass.
pub(super) struct Group {
    members: Vec<Member>,
    /// `[B, C, H, W]`, or why stacking failed.
    pixels: std::result::Result<Tensor, String>,
}

/// Runs the model on a group; per-image failures when the model rejects it or it does not fit
/// the device.
fn embed_group<B: Backend>(
    embedder: &Embedder<B>,
    group: Group,
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
    let fail = |failures: &mut Vec<Failure>, index: usize, path: String, error: String| {
        failures.push(Failure {
            index,
            path,
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
            for ((index, path, width, height), result) in group.members.into_iter().zip(results) {
                match result {
                    Ok(e) => {
                        let grid = e.grid;
                        match outputs.split(e) {
                            Ok(split) => rows.push(Row {
                                index,
                                path,
                                width,
                                height,
                                grid: grid.filter(|_| outputs.has_grid()),
                                shapes: split.shapes,
                                values: split.values,
                            }),
                            Err(e) => fail(failures, index, path, e),
                        }
                    }
                    // An image that does not fit the device even alone (the embedder has
                    // retried in smaller passes); the others are kept.
                    Err(e) => fail(
                        failures,
                        index,
                        path,
                        format!("{e} (even one image at a time)"),
                    ),
                }
            }
        }
        // A group the model rejects: its images share one size, so the reason holds for each.
        Err(dinov2::Error::Model(ModelError::Input { reason, .. })) => {
            for (index, path, _, _) in group.members {
                fail(failures, index, path, reason.clone());
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Groups one batch's decoded inputs into a [`Batch`]: the good images by patch grid (cut to
/// it, [`cut_to_patches`]), in order of first appearance, each grid's in passes of at most
/// `grouping.pass`, stacked here rather than on a model thread; bad ones as failures. With
/// `--on-error fail` the first bad input ends the batch: nothing after it is kept. `waited` is
/// the time taking the inputs from the feed took (reading a stream), counted as reading.
pub(super) fn assemble(
    end: usize,
    items: Vec<Decoded>,
    waited: Duration,
    on_error: OnError,
    grouping: Grouping,
) -> Batch {
    let mut batch = Batch {
        end,
        groups: Vec::new(),
        failures: Vec::new(),
        read: waited,
        prepare: Duration::ZERO,
    };
    // Per shape: its members and their pixels.
    let mut sizes: Vec<([usize; 3], Vec<Member>, Vec<PixelValues>)> = Vec::new();
    for item in items {
        batch.read += item.read;
        batch.prepare += item.prepare;
        let (index, name) = (item.index, item.name);
        match item.result {
            Ok((p, width, height)) => {
                let p = cut_to_patches(p, grouping.patch);
                let at = match sizes.iter().position(|s| s.0 == p.shape) {
                    Some(at) => at,
                    None => {
                        sizes.push((p.shape, Vec::new(), Vec::new()));
                        sizes.len() - 1
                    }
                };
                sizes[at].1.push((index, name, width, height));
                sizes[at].2.push(p);
            }
            Err((stage, error)) => {
                batch.failures.push(Failure {
                    index,
                    path: name,
                    stage: stage.into(),
                    error,
                });
                if on_error == OnError::Fail {
                    break;
                }
            }
        }
    }
    let pass = grouping.pass.max(1);
    for (_, members, pixels) in sizes {
        for (members, pixels) in members.chunks(pass).zip(pixels.chunks(pass)) {
            batch.groups.push(Group {
                members: members.to_vec(),
                pixels: stack_images(pixels).map_err(|e| e.to_string()),
            });
        }
    }
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
    /// Model passes (groups of one patch grid) and the images they ran.
    pub passes: usize,
    pub pass_images: usize,
}

/// Runs the model over one batch (a model thread's work).
pub(super) fn run_batch<B: Backend>(
    embedder: &Embedder<B>,
    batch: Batch,
    outputs: &Outputs,
    on_error: OnError,
) -> Result<Outcome> {
    let t = Instant::now();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let passes = batch.groups.len();
    let pass_images = batch.groups.iter().map(|g| g.members.len()).sum();
    for group in batch.groups {
        embed_group(embedder, group, outputs, &mut rows, &mut failures)?;
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
        passes,
        pass_images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_cut_to_their_patches() {
        // 2 channels, 3 x 5 pixels, patch 2: rows 0-1, columns 0-3 stay.
        let data: Vec<f32> = (0..30).map(|v| v as f32).collect();
        let p = PixelValues {
            shape: [2, 3, 5],
            data,
        };
        let cut = cut_to_patches(p.clone(), 2);
        assert_eq!(cut.shape, [2, 2, 4]);
        assert_eq!(
            cut.data,
            [0., 1., 2., 3., 5., 6., 7., 8., 15., 16., 17., 18., 20., 21., 22., 23.]
        );
        assert_eq!(cut_to_patches(cut.clone(), 2), cut, "whole patches stay");
        assert_eq!(
            cut_to_patches(p.clone(), 7).shape,
            [2, 3, 5],
            "smaller than a patch"
        );
    }

    fn pixels(h: usize, w: usize, seed: u32) -> PixelValues {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        let data = (0..3 * h * w)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect();
        PixelValues {
            shape: [3, h, w],
            data,
        }
    }

    /// The model gives a cut image the values of the whole one: the cut is safe.
    #[test]
    fn the_model_ignores_what_the_cut_removes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../assets/models/dinov2-tiny-random");
        let embedder = Embedder::from_dir(dir, dinov2::CpuBackend)
            .unwrap()
            .with_pooling(dinov2::Pooling::Tokens);
        for (h, w, seed) in [(30, 62, 1), (41, 29, 2), (27, 70, 3)] {
            let whole = pixels(h, w, seed);
            let cut = cut_to_patches(whole.clone(), 14);
            assert_ne!(cut.shape, whole.shape);
            assert_eq!(
                embedder.embed_prepared(&[cut]).unwrap(),
                embedder.embed_prepared(&[whole]).unwrap(),
                "{h}x{w}"
            );
        }
    }

    #[test]
    fn images_of_one_patch_grid_share_passes() {
        // Grid 2 x 4 from three pixel sizes, grid 3 x 3 from two; passes of 2.
        let shapes = [(30, 62), (31, 56), (28, 69), (42, 42), (43, 44)];
        let decoded = |index: usize, result| Decoded {
            index,
            name: format!("{index}.png"),
            result,
            read: Duration::ZERO,
            prepare: Duration::ZERO,
        };
        let mut items: Vec<Decoded> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(h, w))| decoded(i, Ok((pixels(h, w, i as u32), w as u32, h as u32))))
            .collect();
        items.push(decoded(5, Err(("decode", "bad".into()))));
        let grouping = Grouping { patch: 14, pass: 2 };
        let batch = assemble(6, items, Duration::ZERO, OnError::Skip, grouping);
        let groups: Vec<(Vec<usize>, Vec<usize>)> = batch
            .groups
            .iter()
            .map(|g| {
                (
                    g.members.iter().map(|m| m.0).collect(),
                    g.pixels.as_ref().unwrap().shape.clone(),
                )
            })
            .collect();
        assert_eq!(
            groups,
            [
                (vec![0, 1], vec![2, 3, 28, 56]),
                (vec![2], vec![1, 3, 28, 56]),
                (vec![3, 4], vec![2, 3, 42, 42]),
            ]
        );
        // The original sizes stay with the rows.
        assert_eq!(batch.groups[0].members[1], (1, "1.png".into(), 56, 31));
        assert_eq!(batch.failures.len(), 1);
    }
}
