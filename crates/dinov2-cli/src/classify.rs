//! `dinov2 classify`: the top labels of a classification checkpoint, with probabilities.

use dinov2::image::PixelValues;
use dinov2::{Backend, Checkpoint, Dinov2, Embedder, ForwardOptions, Tensor};

use crate::args::{with_backend, ClassifyArgs};
use crate::embed_verb::{decode_options, preprocessing};
use crate::error::{CliError, Result};
use crate::model_dir::resolve;

/// Runs the classify verb: one block per image, `label  probability` lines.
pub fn run(args: ClassifyArgs) -> Result<()> {
    with_backend!(args.device, args.dtype, |backend| classify_on(
        backend, &args
    ))
}

fn classify_on<B: Backend>(backend: B, args: &ClassifyArgs) -> Result<()> {
    let dir = resolve(&args.model)?;
    let checkpoint = Checkpoint::open(&dir)?;
    let labels = checkpoint.config.id2label.clone();
    let model = Dinov2::load(backend, &checkpoint)?;
    if !model.has_classifier() {
        return Err(CliError(format!(
            "{} has no classification head (classifier.weight); use a *-imagenet1k-1-layer checkpoint",
            dir.display()
        )));
    }
    let preprocess = preprocessing(&dir, &args.decode, checkpoint.config.patch_size)?;
    let decode = decode_options(&args.decode, &preprocess);
    let embedder = Embedder::new(model, preprocess).with_decode_options(decode);
    let mut failed = 0;
    for path in &args.images {
        let pixels: PixelValues = match embedder.prepare_path(path) {
            Ok((p, _)) => p,
            Err(e) => {
                eprintln!("skipped {}: {e}", path.display());
                failed += 1;
                continue;
            }
        };
        let mut shape = vec![1];
        shape.extend(pixels.shape);
        let input =
            Tensor::new(shape, pixels.data).ok_or_else(|| CliError("bad pixel values".into()))?;
        let out = embedder
            .model()
            .classify(&input, None, &ForwardOptions::default())?;
        let logits = &out.logits.data;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
        let z: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
        let mut ranked: Vec<(usize, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &x)| (i, (x as f64 - max).exp() / z))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        println!("{}", path.display());
        for (id, p) in ranked.into_iter().take(args.top_k) {
            let label = labels
                .get(&id)
                .map_or_else(|| format!("LABEL_{id}"), Clone::clone);
            println!("  {p:.4}  {label}");
        }
    }
    if failed > 0 {
        return Err(CliError(format!(
            "{failed} of {} images could not be classified",
            args.images.len()
        )));
    }
    Ok(())
}
