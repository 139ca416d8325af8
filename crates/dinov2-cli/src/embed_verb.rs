//! `dinov2 embed`: builds the embedder from the arguments and runs the job.

use std::path::Path;

use dinov2::image::{DecodeOptions, HeightWidth, PreprocessConfig, Resolution};
use dinov2::{preprocess_config, Backend, Checkpoint, CpuBackend, CudaBackend, Dinov2, Embedder};

use crate::args::{with_backend, DecodeArgs, Device, EmbedArgs};
use crate::embed::{
    expand_inputs, run as run_job, Format, OnError, Outputs, Settings, TableColumns, ValueType,
};
use crate::error::{CliError, Result};
use crate::model_dir::resolve;
use clap::ValueEnum;

/// Decoding options from the command line, for images preprocessed with `preprocess` (which
/// `--draft` decodes JPEGs for).
pub fn decode_options(args: &DecodeArgs, preprocess: &PreprocessConfig) -> DecodeOptions {
    DecodeOptions {
        max_pixels: args.max_pixels,
        max_dimension: args.max_side,
        min_dimension: args.min_side,
        apply_exif_orientation: args.apply_exif_orientation,
        draft: (args.draft && preprocess.do_resize).then_some(preprocess.size),
    }
}

/// The checkpoint's preprocessing with the command line's overrides (`--resize`, `--crop`,
/// `--no-crop`); an error when the result cannot hold one `patch` x `patch` patch.
pub fn preprocessing(dir: &Path, args: &DecodeArgs, patch: usize) -> Result<PreprocessConfig> {
    let resolution = Resolution {
        resize: args.resize,
        crop: args
            .crop
            .map(|(height, width)| HeightWidth { height, width }),
        no_crop: args.no_crop,
    };
    Ok(preprocess_config(dir)?
        .with_resolution(&resolution, patch)
        .map_err(dinov2::Error::from)?)
}

/// The device the job opens first and the other GPUs it runs on: `--gpus` when given (the first
/// GPU, then the others, each once), else `device` alone.
pub fn devices(device: Device, gpus: Option<&[usize]>) -> Result<(Device, Vec<usize>)> {
    let Some(gpus) = gpus else {
        return Ok((device, Vec::new()));
    };
    let Some((&first, rest)) = gpus.split_first() else {
        return Err(CliError("--gpus: no GPU given".into()));
    };
    if let Some(twice) = rest
        .iter()
        .enumerate()
        .find(|(i, g)| gpus[..=*i].contains(g))
    {
        return Err(CliError(format!("--gpus: GPU {} is given twice", twice.1)));
    }
    Ok((Device::Cuda(first), rest.to_vec()))
}

/// Runs the embed verb.
pub fn run(args: EmbedArgs) -> Result<()> {
    // --gpus: the first GPU opens the job's backend, the others follow.
    let (device, more_gpus) = devices(args.device, args.gpus.as_deref())?;
    let batch_size = args.batch_size.unwrap_or(match device {
        Device::Cpu => CpuBackend::BATCH_SIZE,
        Device::Cuda(_) => CudaBackend::BATCH_SIZE,
    });
    if batch_size == 0 {
        return Err(CliError("--batch-size must be at least 1".into()));
    }
    if args.on_error == OnError::Fail && args.max_failures.is_some() {
        return Err(CliError(
            "--max-failures applies to --on-error skip: --on-error fail stops at the first bad \
             input"
                .into(),
        ));
    }
    let (format, output) = Format::of(&args.output)?;
    if format == Format::ArrowStream && args.resume {
        return Err(CliError(
            "--resume with --output -: a stream on standard output cannot be resumed; name an \
             output file to make the job resumable"
                .into(),
        ));
    }
    let mut inputs = expand_inputs(
        &args.inputs,
        &TableColumns {
            image: args.image_column.clone(),
            id: args.id_column.clone(),
        },
    )?;
    if let Some((shard, shards)) = args.shard {
        // Shard i holds inputs i·n/N up to (i+1)·n/N (in 128 bits: no overflow), each image one
        // input and each stream (whose images are known only as it is read) one.
        let bound = |i: usize| (i as u128 * inputs.len() as u128 / shards as u128) as usize;
        let (start, end) = (bound(shard), bound(shard + 1));
        inputs.truncate(end);
        inputs.drain(..start);
        if inputs.is_empty() {
            return Err(CliError(format!(
                "shard {shard}/{shards} holds no input (fewer inputs than shards)"
            )));
        }
    }
    let dir = resolve(&args.model)?;
    let checkpoint = Checkpoint::open(&dir)?;
    let preprocess = preprocessing(&dir, &args.decode, checkpoint.config.patch_size)?;
    // Checked here, not per batch (where a model error would read as bad images).
    let poolings = &args.pooling;
    check_poolings(poolings, &checkpoint.config, &dir)?;
    if poolings.len() > 1 && matches!(format, Format::Npy | Format::ClipRetrieval) {
        return Err(CliError(format!(
            "--pooling {}: several outputs need a file that holds several: write .parquet (a \
             column each) or .safetensors (a tensor each)",
            pooling_list(poolings)
        )));
    }
    if let Some(p) = poolings.iter().find(|p| p.is_tokens()) {
        if format == Format::ClipRetrieval {
            return Err(CliError(format!(
                "--pooling {p} with a folder output: clip-retrieval's layout holds one vector per \
                 image (N x D); write token outputs to .parquet, .npy or .safetensors"
            )));
        }
    }
    let values = args.output_dtype;
    if format == Format::ClipRetrieval && matches!(values, ValueType::Binary | ValueType::Int8) {
        return Err(CliError(format!(
            "--output-dtype {} with a folder output: embedding-reader and autofaiss read float \
             vectors there; write {} to .npy, .safetensors or .parquet",
            values
                .to_possible_value()
                .map(|v| v.get_name().to_owned())
                .unwrap_or_default(),
            if values == ValueType::Binary {
                "packed bits"
            } else {
                "int8 vectors"
            }
        )));
    }
    let depth = checkpoint.config.num_hidden_layers;
    if let Some(bad) = args.layers.iter().flatten().find(|&&l| l > depth) {
        return Err(CliError(format!(
            "--layers {bad}: the model has hidden states 0 (the embeddings) to {depth}"
        )));
    }
    let layers = args.layers.clone().map(|l| (l, !args.no_layer_norm));
    let decode = decode_options(&args.decode, &preprocess);
    let identity = vec![
        format!("{layers:?}"),
        std::fs::canonicalize(&dir)
            .unwrap_or(dir.clone())
            .display()
            .to_string(),
        format!("{device:?}"),
        args.dtype.to_string(),
        format!("{preprocess:?}"),
        format!("{decode:?}"),
        format!(
            "image column {:?}, id column {:?}",
            args.image_column, args.id_column
        ),
    ];
    let settings = Settings {
        sources: inputs,
        output,
        format,
        output_dtype: args.output_dtype,
        batch_size,
        window: match args.window {
            Some(0) => return Err(CliError("--window must be at least 1".into())),
            Some(w) => w,
            None if preprocess.do_center_crop => batch_size,
            None => batch_size.saturating_mul(4),
        },
        patch: checkpoint.config.patch_size,
        preprocess: preprocess.clone(),
        outputs: Outputs {
            poolings: poolings.clone(),
            normalize: args.normalize,
            prefix: checkpoint.config.num_prefix_tokens(),
            layers: args.layers.as_ref().map_or(1, Vec::len),
        },
        on_error: args.on_error,
        max_failures: args.max_failures.unwrap_or_default(),
        overwrite: args.overwrite,
        resume: args.resume,
        workers: args
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        // On CUDA the model leaves the cores to decoding, and overlapping windows keeps them
        // busy. On the CPU the decoding workers are a pool of their own beside the model's, so
        // a second window in flight oversubscribes the cores and preempts the model's parallel
        // loops (10% slower at --batch-size 128 on the 2-core development machine; the same at
        // the default 8). The library and the Python module, whose decoding shares the model's
        // pool, overlap on the CPU too (`dinov2::InTurn`).
        decoders: args.decoders.unwrap_or(match device {
            Device::Cpu => 1,
            Device::Cuda(_) => 2,
        }),
        chunk_rows: args.chunk_rows.max(1),
        progress: args.progress,
        progress_every: args.progress_every,
        identity,
        layers,
    };
    let streams = args.streams.unwrap_or(match device {
        Device::Cpu => 1,
        Device::Cuda(_) => 2,
    });
    if streams == 0 {
        return Err(CliError("--streams must be at least 1".into()));
    }
    // One backend per stream: on CUDA each opens its own stream (and holds its own copy of the
    // weights); --gpus repeats that on each GPU.
    with_backend!(device, args.dtype, |first| {
        let mut backends = vec![first];
        for &gpu in &more_gpus {
            backends.push(backends[0].on_gpu(gpu)?);
        }
        let mut embedders = Vec::new();
        for backend in backends {
            let name = backend.name();
            let first = embedders.len();
            embedders.push(embedder(
                backend,
                &checkpoint,
                &preprocess,
                &decode,
                &settings,
            )?);
            for _ in 1..streams {
                // A copy that does not fit (device memory) leaves fewer streams, not a failed
                // job.
                match embedders[first]
                    .model()
                    .backend()
                    .reopen()
                    .and_then(|b| embedder(b, &checkpoint, &preprocess, &decode, &settings))
                {
                    Ok(e) => embedders.push(e),
                    Err(e) => {
                        eprintln!(
                            "warning: running {} stream(s) instead of {streams} on {name}: \
                             another copy of the model could not be loaded: {e}",
                            embedders.len() - first
                        );
                        break;
                    }
                }
            }
        }
        run_job(&embedders, settings)
    })
}

/// More backends of the same kind: on the same device, or on another GPU.
pub(crate) trait Reopen: Sized {
    /// Another backend on the same device (on CUDA, another stream).
    fn reopen(&self) -> Result<Self>;
    /// A backend of the same kind and dtype on GPU `ordinal`.
    fn on_gpu(&self, ordinal: usize) -> Result<Self>;
}

impl Reopen for CpuBackend {
    fn reopen(&self) -> Result<Self> {
        Ok(self.clone())
    }

    fn on_gpu(&self, ordinal: usize) -> Result<Self> {
        Err(CliError(format!(
            "GPU {ordinal}: the CPU backend runs on no GPU"
        )))
    }
}

impl Reopen for CudaBackend {
    fn reopen(&self) -> Result<Self> {
        Ok(self.another_stream()?)
    }

    fn on_gpu(&self, ordinal: usize) -> Result<Self> {
        Ok(CudaBackend::new(ordinal, self.dtype())?)
    }
}

/// The model on `backend`, with the job's preprocessing, decoding and pooling.
fn embedder<B: Backend>(
    backend: B,
    checkpoint: &Checkpoint,
    preprocess: &PreprocessConfig,
    decode: &DecodeOptions,
    settings: &Settings,
) -> Result<Embedder<B>> {
    let model = Dinov2::load(backend, checkpoint)?;
    let embedder = Embedder::new(model, preprocess.clone())
        .with_pooling(settings.outputs.pass())
        .with_normalize(settings.outputs.pass_normalizes())
        .with_decode_options(decode.clone());
    Ok(match &settings.layers {
        Some((layers, norm)) => embedder.with_layers(layers.clone(), *norm),
        None => embedder,
    })
}

/// `cls,patch`: poolings as `--pooling` takes them.
fn pooling_list(poolings: &[dinov2::Pooling]) -> String {
    poolings
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `--pooling` as `embed` and `serve` take it: each pooling once, and `registers` only for a
/// model with register tokens (`dir`, its folder, names it).
pub fn check_poolings(
    poolings: &[dinov2::Pooling],
    config: &dinov2::Dinov2Config,
    dir: &std::path::Path,
) -> Result<()> {
    if let Some((i, p)) = poolings
        .iter()
        .enumerate()
        .find(|(i, p)| poolings[..*i].contains(p))
    {
        return Err(CliError(format!(
            "--pooling: {p} is asked twice (at positions {} and {})",
            poolings.iter().position(|q| q == p).unwrap_or(0) + 1,
            i + 1
        )));
    }
    if poolings.contains(&dinov2::Pooling::Registers) && config.num_register_tokens == 0 {
        return Err(CliError(format!(
            "--pooling registers: {} has no register tokens (a dinov2_with_registers checkpoint \
             has)",
            dir.display()
        )));
    }
    Ok(())
}
