//! `Embedder`: a checkpoint on a device with its preprocessing and pooling, embedding lists of
//! images with the GIL released.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dinov2::image::{
    fixed_grid, grid_region, DecodeOptions, HeightWidth, PixelValues, PreprocessConfig, Resolution,
};
use dinov2::{
    preprocess_config, Backend, Checkpoint, CpuBackend, CudaBackend, Device, Dinov2, Dinov2Config,
    Dtype, Embedding, Pooling,
};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use rayon::prelude::*;

use crate::embeddings::{Embeddings, Row};
use crate::inputs::{self, Source};

/// An image's pixel values and its `(width, height)`, or why it failed.
type Prepared = Result<(PixelValues, (u32, u32)), String>;

/// An image's embedding and its `(width, height)`, or why it failed.
type Embedded = Result<(Embedding, (u32, u32)), String>;

/// The embedder on its backend (boxed: the two differ in size).
enum Backed {
    Cpu(Box<dinov2::Embedder<CpuBackend>>),
    Cuda(Box<dinov2::Embedder<CudaBackend>>),
}

/// Runs `$body` with `$e` bound to the embedder, whichever its backend.
macro_rules! on_backend {
    ($backed:expr, |$e:ident| $body:expr) => {
        match $backed {
            Backed::Cpu($e) => $body,
            Backed::Cuda($e) => $body,
        }
    };
}

/// A DINOv2 checkpoint with its preprocessing, on the CPU or a CUDA GPU.
///
/// `Embedder(model, *, device="cpu", dtype="f32", pooling="cls", normalize=False, layers=None,
/// layer_norm=True, batch_size=None, resize=None, crop=None, no_crop=False, max_pixels=None,
/// max_side=None, min_side=None, apply_exif_orientation=False)`: `model` is a directory holding
/// `config.json` and `model.safetensors` or `pytorch_model.bin` (a Hugging Face snapshot, e.g.
/// from `huggingface_hub.snapshot_download("facebook/dinov2-small")`), preprocessed as its
/// `preprocessor_config.json` says, or a weights file alone (an original facebookresearch `.pth`,
/// a timm checkpoint; its config told from its tensors, facebook/dinov2's preprocessing), with `resize`/`crop`/`no_crop` overriding the resolution as
/// `dinov2 embed --resize/--crop/--no-crop` do (`crop` is `224`, `(448, 336)` or `"448x336"`).
/// `layer_norm=False` is `--no-layer-norm`.
#[pyclass(frozen, module = "dinov2_rs")]
pub struct Embedder {
    backed: Backed,
    config: Dinov2Config,
    preprocess: PreprocessConfig,
    device: Device,
    dtype: Dtype,
    pooling: Pooling,
    normalize: bool,
    layers: Option<Vec<usize>>,
}

/// How a Python argument was wrong.
fn bad(name: &str, message: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("{name}: {message}"))
}

#[pymethods]
impl Embedder {
    #[new]
    #[pyo3(signature = (
        model, *, device = "cpu", dtype = "f32", pooling = "cls", normalize = false,
        layers = None, layer_norm = true, batch_size = None, resize = None, crop = None,
        no_crop = false, max_pixels = None, max_side = None, min_side = None,
        apply_exif_orientation = false,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: PathBuf,
        device: &str,
        dtype: &str,
        pooling: &str,
        normalize: bool,
        layers: Option<Vec<usize>>,
        layer_norm: bool,
        batch_size: Option<usize>,
        resize: Option<u32>,
        crop: Option<Bound<'_, PyAny>>,
        no_crop: bool,
        max_pixels: Option<u64>,
        max_side: Option<u32>,
        min_side: Option<u32>,
        apply_exif_orientation: bool,
    ) -> PyResult<Self> {
        let device: Device = device.parse().map_err(|e| bad("device", e))?;
        let dtype: Dtype = dtype.parse().map_err(|e| bad("dtype", e))?;
        let pooling: Pooling = pooling.parse().map_err(|e| bad("pooling", e))?;
        for (value, name) in [
            (batch_size.map(|v| v as u64), "batch_size"),
            (resize.map(u64::from), "resize"),
            (max_pixels, "max_pixels"),
            (max_side.map(u64::from), "max_side"),
            (min_side.map(u64::from), "min_side"),
        ] {
            if value == Some(0) {
                return Err(bad(name, "expected at least 1"));
            }
        }
        if dtype != Dtype::F32 && device == Device::Cpu {
            return Err(bad(
                "dtype",
                format!("{dtype} runs on a GPU: pass device=\"cuda\" (the CPU computes in f32)"),
            ));
        }
        if !layer_norm && layers.is_none() {
            return Err(bad(
                "layer_norm",
                "applies to the hidden states of layers=[...]; the final output is always \
                 normalized",
            ));
        }
        let resolution = Resolution {
            resize,
            crop: crop.map(|c| crop_size(&c)).transpose()?,
            no_crop,
        };
        if resolution.crop.is_some() && no_crop {
            return Err(bad("crop", "cannot be given with no_crop=True"));
        }
        let defaults = DecodeOptions::default();
        let decode = DecodeOptions {
            max_pixels: max_pixels.unwrap_or(defaults.max_pixels),
            max_dimension: max_side.unwrap_or(defaults.max_dimension),
            min_dimension: min_side.unwrap_or(defaults.min_dimension),
            apply_exif_orientation,
            draft: None,
        };
        let dir = model.clone();
        let options = (
            pooling,
            normalize,
            layers.clone(),
            layer_norm,
            batch_size,
            decode,
        );
        let loaded = py.detach(move || -> PyResult<_> {
            let failed =
                |e: dinov2::Error| PyValueError::new_err(format!("{}: {e}", dir.display()));
            let checkpoint = Checkpoint::open(&dir).map_err(|e| failed(e.into()))?;
            // The arguments that need only the config, checked before the weights load.
            check_for_model(&checkpoint.config, pooling, options.2.as_deref())?;
            let patch = checkpoint.config.patch_size;
            let preprocess = preprocess_config(&dir)
                .and_then(|p| Ok(p.with_resolution(&resolution, patch)?))
                .map_err(failed)?;
            let backed = match device {
                Device::Cpu => {
                    let model = CpuBackend::new(dtype)
                        .and_then(|b| Dinov2::load(b, &checkpoint))
                        .map_err(|e| failed(e.into()))?;
                    Backed::Cpu(Box::new(configure(model, &preprocess, options)))
                }
                Device::Cuda(n) => {
                    let model = CudaBackend::new(n, dtype)
                        .and_then(|b| Dinov2::load(b, &checkpoint))
                        .map_err(|e| failed(e.into()))?;
                    Backed::Cuda(Box::new(configure(model, &preprocess, options)))
                }
            };
            Ok((checkpoint.config, preprocess, backed))
        });
        let (config, preprocess, backed) = loaded?;
        Ok(Embedder {
            backed,
            config,
            preprocess,
            device,
            dtype,
            pooling,
            normalize,
            layers,
        })
    }

    /// Embeds `images`, in order: a list of encoded images (bytes), paths, pixel arrays or PIL
    /// images, or an Arrow column. Returns an `Embeddings` with a row per image.
    ///
    /// `on_error="raise"` (the default) raises `ValueError` naming the first image that could
    /// not be read, decoded or embedded, at the end of its batch (no later batch runs);
    /// `on_error="null"` keeps going: such a row is NaN (null in Arrow) and `Embeddings.errors`
    /// says why. Pixel arrays and PIL images are taken as they are: `max_pixels`, `max_side`
    /// and `min_side` limit what is decoded here, not what was decoded before.
    #[pyo3(signature = (images, *, on_error = "raise"))]
    fn embed(
        &self,
        py: Python<'_>,
        images: &Bound<'_, PyAny>,
        on_error: &str,
    ) -> PyResult<Embeddings> {
        let raise = match on_error {
            "raise" => true,
            "null" => false,
            other => {
                return Err(bad(
                    "on_error",
                    format!("expected \"raise\" or \"null\", found {other:?}"),
                ))
            }
        };
        let sources = inputs::sources(images)?;
        let results = py.detach(|| {
            on_backend!(&self.backed, |e| self.embed_all(
                e.as_ref(),
                &sources,
                raise
            ))
        })?;
        if raise {
            // The first failure: `embed_all` stopped after its batch.
            if let Some((i, Err(message))) = (results.iter().enumerate()).find(|(_, r)| r.is_err())
            {
                return Err(failed(i, message));
            }
        }
        let prefix = self.config.num_prefix_tokens();
        let patch = self.config.patch_size;
        let rows = results
            .into_iter()
            .map(|r| {
                r.and_then(|(e, (width, height))| {
                    let shape = e
                        .shape(self.pooling, prefix)
                        .ok_or_else(|| format!("the model returned {} values", e.values.len()))?;
                    let region = grid_region(width, height, &self.preprocess, patch)
                        .map_err(|e| e.to_string())?;
                    Ok(Row {
                        values: e.values,
                        shape,
                        grid: e.grid,
                        size: (width, height),
                        region,
                    })
                })
            })
            .collect();
        Ok(Embeddings::new(rows, self.known_shape()))
    }

    /// Values per vector (per token for the token poolings): the hidden size, times the
    /// number of `layers` concatenated, times 2 for `cls+mean`.
    #[getter]
    fn dim(&self) -> usize {
        let per = self.config.hidden_size * self.layers.as_ref().map_or(1, Vec::len);
        match self.pooling {
            Pooling::ClsMean => 2 * per,
            _ => per,
        }
    }

    /// `cpu` or `cuda:N`.
    #[getter]
    fn device(&self) -> String {
        self.device.to_string()
    }

    /// The compute precision: `f32`, `f16` or `bf16`.
    #[getter]
    fn dtype(&self) -> String {
        self.dtype.to_string()
    }

    /// The pooling: `cls`, `mean`, `cls+mean`, `patch`, `registers` or `tokens`.
    #[getter]
    fn pooling(&self) -> String {
        self.pooling.to_string()
    }

    /// Whether each vector (each token's, for the token poolings) is L2-normalized.
    #[getter]
    fn normalize(&self) -> bool {
        self.normalize
    }

    /// The model's hidden size.
    #[getter]
    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// The model's number of layers.
    #[getter]
    fn num_layers(&self) -> usize {
        self.config.num_hidden_layers
    }

    /// Register tokens (0 without).
    #[getter]
    fn num_register_tokens(&self) -> usize {
        self.config.num_register_tokens
    }

    /// Pixels per patch side (14).
    #[getter]
    fn patch_size(&self) -> usize {
        self.config.patch_size
    }

    /// The center crop `(height, width)` images are brought to, or `None` without a crop
    /// (each image's grid then follows its aspect ratio).
    #[getter]
    fn crop_size(&self) -> Option<(u32, u32)> {
        let HeightWidth { height, width } = self.preprocess.crop_size;
        self.preprocess.do_center_crop.then_some((height, width))
    }

    fn __repr__(&self) -> String {
        format!(
            "Embedder(hidden_size={}, layers={}, registers={}, device={}, dtype={}, \
             pooling={}, normalize={})",
            self.config.hidden_size,
            self.config.num_hidden_layers,
            self.config.num_register_tokens,
            self.device,
            self.dtype,
            self.pooling,
            if self.normalize { "True" } else { "False" },
        )
    }
}

impl Embedder {
    /// Every source's embedding or error (naming the image's index), a batch at a time: the
    /// next batch is decoded (in parallel) while the model runs this one ([`dinov2::InTurn`]),
    /// so that a GPU does not wait for the decoding, and on the CPU the decoding fills the gaps
    /// in the model's parallel loops. With `stop_at_error`, no batch after one with a failure.
    /// Ctrl-C (a pending signal) stops between batches. Runs on this process's own thread pool
    /// ([`pool`]), decoding and model alike.
    fn embed_all<B: Backend>(
        &self,
        embedder: &dinov2::Embedder<B>,
        sources: &[Source],
        stop_at_error: bool,
    ) -> PyResult<Vec<Embedded>> {
        let pool = pool()?;
        let mut turns = dinov2::InTurn::new(sources.chunks(embedder.batch_size()), true);
        let prepare = |window: &&[Source]| -> Vec<Prepared> {
            window.par_iter().map(|s| self.prepare(s)).collect()
        };
        let mut out: Vec<Embedded> = Vec::with_capacity(sources.len());
        loop {
            Python::attach(|py| py.check_signals())?;
            let Some((_, results)) = pool
                .install(|| turns.next_with(&prepare, |prepared| embed_window(embedder, prepared)))
            else {
                break;
            };
            let first = out.len();
            for (k, result) in results.into_iter().enumerate() {
                let i = first + k;
                out.push(result.map_err(|e| {
                    // Decoding errors name `image {i}` already; file errors name the file.
                    if e.starts_with(&format!("image {i}:")) {
                        e
                    } else {
                        format!("image {i}: {e}")
                    }
                }));
            }
            if stop_at_error && out[first..].iter().any(Result::is_err) {
                break;
            }
        }
        Ok(out)
    }

    /// Reads, decodes and preprocesses one source with the embedder's decode options and
    /// preprocessing: its pixel values and `(width, height)`.
    fn prepare(&self, source: &Source) -> Prepared {
        on_backend!(&self.backed, |e| prepare(e, source))
    }

    /// The row shape known without an image (for a list whose images all failed, or none):
    /// the vector poolings', and the grid poolings' under a fixed center crop.
    fn known_shape(&self) -> Option<Vec<usize>> {
        let width = self.config.hidden_size * self.layers.as_ref().map_or(1, Vec::len);
        let grid = fixed_grid(&self.preprocess, self.config.patch_size);
        (self.pooling).fixed_shape(width, self.config.num_register_tokens, grid)
    }
}

/// [`Embedder::prepare`] through the library embedder `e`.
fn prepare<B: Backend>(e: &dinov2::Embedder<B>, source: &Source) -> Prepared {
    let prepared = match source {
        Source::Encoded { bytes, origin } => e.prepare_named(bytes, origin),
        Source::Path(path) => e.prepare_path(path),
        Source::Rgb(image) => e
            .prepare_rgb(image)
            .map(|p| (p, (image.width, image.height))),
        Source::Invalid(message) => return Err(message.clone()),
    };
    prepared.map_err(|e| e.to_string())
}

/// One decoded batch through the model: each image's embedding and size, or its error.
fn embed_window<B: Backend>(
    embedder: &dinov2::Embedder<B>,
    prepared: Vec<Prepared>,
) -> Vec<Embedded> {
    let mut sizes = Vec::with_capacity(prepared.len());
    let mut pixels = Vec::with_capacity(prepared.len());
    for p in prepared {
        match p {
            Ok((values, size)) => {
                sizes.push(Ok(size));
                pixels.push(Ok(values));
            }
            Err(e) => sizes.push(Err(e)),
        }
    }
    let mut embedded = embedder.embed_prepared_each(pixels).into_iter();
    sizes
        .into_iter()
        .map(|size| {
            size.and_then(|size| match embedded.next() {
                Some(result) => result.map(|e| (e, size)).map_err(|e| e.to_string()),
                None => Err("the model returned no result for this image".into()),
            })
        })
        .collect()
}

/// The arguments that must fit the model: `pooling="registers"` needs register tokens, `layers`
/// hidden states that exist.
fn check_for_model(
    config: &Dinov2Config,
    pooling: Pooling,
    layers: Option<&[usize]>,
) -> PyResult<()> {
    if pooling == Pooling::Registers && config.num_register_tokens == 0 {
        return Err(bad(
            "pooling",
            "registers: this model has no register tokens (a dinov2_with_registers \
             checkpoint has)",
        ));
    }
    if let Some(layers) = layers {
        let last = config.num_hidden_layers;
        if layers.is_empty() || layers.iter().any(|&l| l > last) {
            return Err(bad(
                "layers",
                format!(
                    "expected hidden states 0 (the embeddings) to {last} (the last layer), \
                     found {layers:?}"
                ),
            ));
        }
    }
    Ok(())
}

/// `ValueError` for image `i`'s failure in `on_error="raise"` mode.
fn failed(i: usize, message: &str) -> PyErr {
    let message = message
        .strip_prefix(&format!("image {i}: "))
        .unwrap_or(message);
    PyValueError::new_err(format!(
        "image {i} failed (on_error=\"null\" keeps going): {message}"
    ))
}

/// This process's thread pool for decoding and the CPU model, made anew in a child process:
/// after `fork` (multiprocessing's default on Linux before Python 3.14) the parent's worker threads do not exist
/// in the child, and a pool inherited from it would wait for them forever.
fn pool() -> PyResult<Arc<rayon::ThreadPool>> {
    static POOL: Mutex<Option<(u32, Arc<rayon::ThreadPool>)>> = Mutex::new(None);
    let mut slot = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    match slot.as_ref() {
        Some((owner, pool)) if *owner == pid => Ok(pool.clone()),
        _ => {
            // The parent's pool, copied by fork without its threads: never dropped here (its
            // drop would signal threads this process does not have).
            if let Some(stale) = slot.take() {
                std::mem::forget(stale);
            }
            let pool = rayon::ThreadPoolBuilder::new()
                .thread_name(|i| format!("dinov2-rs-{i}"))
                .build()
                .map(Arc::new)
                .map_err(|e| PyRuntimeError::new_err(format!("cannot start threads: {e}")))?;
            *slot = Some((pid, pool.clone()));
            Ok(pool)
        }
    }
}

/// Pooling, normalize, layers, layer norm, batch size and decode options, as `Embedder(...)`
/// takes them.
type Options = (
    Pooling,
    bool,
    Option<Vec<usize>>,
    bool,
    Option<usize>,
    DecodeOptions,
);

/// The model's embedder with the preprocessing, pooling, normalization, layers, batch size and
/// decode options asked for.
fn configure<B: Backend>(
    model: Dinov2<B>,
    preprocess: &PreprocessConfig,
    (pooling, normalize, layers, layer_norm, batch_size, decode): Options,
) -> dinov2::Embedder<B> {
    let mut e = dinov2::Embedder::new(model, preprocess.clone())
        .with_pooling(pooling)
        .with_normalize(normalize)
        .with_decode_options(decode);
    if let Some(layers) = layers {
        e = e.with_layers(layers, layer_norm);
    }
    match batch_size {
        Some(n) => e.with_batch_size(n),
        None => e,
    }
}

/// `crop=224` or `crop=(height, width)`.
fn crop_size(crop: &Bound<'_, PyAny>) -> PyResult<HeightWidth> {
    if crop.is_instance_of::<pyo3::types::PyBool>() {
        return Err(bad(
            "crop",
            "expected a size such as 224 or (448, 336), found a bool",
        ));
    }
    if let Ok(text) = crop.extract::<String>() {
        // As the command line writes it: `224` or `448x336`.
        let size = |v: &str| v.trim().parse::<u32>().ok().filter(|&n| n > 0);
        let parsed = match text.split_once(['x', 'X']) {
            Some((h, w)) => size(h).zip(size(w)),
            None => size(&text).map(|n| (n, n)),
        };
        let (height, width) = parsed.ok_or_else(|| {
            bad(
                "crop",
                format!("{text:?}: expected a size such as 224 or \"448x336\""),
            )
        })?;
        return Ok(HeightWidth { height, width });
    }
    let (height, width) = match crop.extract::<u32>() {
        Ok(n) => (n, n),
        Err(_) => crop.extract::<(u32, u32)>().map_err(|_| {
            bad(
                "crop",
                format!(
                    "expected a size such as 224 or (448, 336), found {}",
                    inputs::type_name(crop)
                ),
            )
        })?,
    };
    if height == 0 || width == 0 {
        return Err(bad("crop", "expected sizes of at least 1"));
    }
    Ok(HeightWidth { height, width })
}
