//! Embedding images from Rust: paths, encoded bytes or decoded RGB images in, one [`Embedding`]
//! each out, with the checkpoint's preprocessing (Pillow parity) and the chosen pooling.
//!
//! ```no_run
//! use dinov2::{CpuBackend, Embedder, Pooling};
//!
//! let embedder = Embedder::from_dir("path/to/dinov2-small", CpuBackend)?
//!     .with_pooling(Pooling::Cls)
//!     .with_normalize(true);
//! for result in embedder.embed_paths(&["cat.jpg", "dog.png"]) {
//!     println!("{:?}", result.map(|e| e.values.len()));
//! }
//! # Ok::<(), dinov2::Error>(())
//! ```

use std::path::Path;

use dinov2_image::{
    decode, decode_file, preprocess, DecodeOptions, PixelValues, PreprocessConfig, RgbImage,
};

use crate::error::{Error, Result};
use crate::{Backend, Checkpoint, Dinov2, Embedding, Pooling, Tensor};

/// A model with its preprocessing and pooling.
pub struct Embedder<B: Backend> {
    model: Dinov2<B>,
    preprocess: PreprocessConfig,
    decode: DecodeOptions,
    pooling: Pooling,
    normalize: bool,
    /// Hidden states to pool instead of the final output, and whether through the final norm.
    layers: Option<(Vec<usize>, bool)>,
}

/// The checkpoint's `preprocessor_config.json`, or the facebook/dinov2 values when it has none.
pub fn preprocess_config(dir: &Path) -> Result<PreprocessConfig> {
    let path = dir.join("preprocessor_config.json");
    if path.is_file() {
        Ok(PreprocessConfig::from_file(&path)?)
    } else {
        Ok(PreprocessConfig::default())
    }
}

/// Stacks preprocessed images of one size into a batch `[B, C, H, W]` for
/// [`Embedder::embed_batch`]. A pipeline can stack the next batch on another thread while the
/// model runs this one.
pub fn stack_images(images: &[PixelValues]) -> Result<Tensor> {
    let bad = |reason: String| Error::Model(crate::ModelError::input("pixel_values", reason));
    let Some(first) = images.first() else {
        return Err(bad("the batch is empty".into()));
    };
    if let Some(other) = images.iter().find(|p| p.shape != first.shape) {
        return Err(bad(format!(
            "images of different sizes in one batch: {:?} and {:?}",
            first.shape, other.shape
        )));
    }
    let [c, h, w] = first.shape;
    let mut data = Vec::with_capacity(images.len() * c * h * w);
    images.iter().for_each(|p| data.extend_from_slice(&p.data));
    Tensor::new(vec![images.len(), c, h, w], data)
        .ok_or_else(|| bad("an image holds fewer values than its shape says".into()))
}

impl<B: Backend> Embedder<B> {
    /// An embedder over `model` with `preprocess`; CLS pooling, not normalized.
    pub fn new(model: Dinov2<B>, preprocess: PreprocessConfig) -> Self {
        Embedder {
            model,
            preprocess,
            decode: DecodeOptions::default(),
            pooling: Pooling::Cls,
            normalize: false,
            layers: None,
        }
    }

    /// Loads the checkpoint in `dir` and its preprocessing onto `backend`.
    pub fn from_dir(dir: impl AsRef<Path>, backend: B) -> Result<Self> {
        let dir = dir.as_ref();
        let checkpoint = Checkpoint::open(dir)?;
        let model = Dinov2::load(backend, &checkpoint)?;
        Ok(Self::new(model, preprocess_config(dir)?))
    }

    /// Chooses the pooling.
    pub fn with_pooling(mut self, pooling: Pooling) -> Self {
        self.pooling = pooling;
        self
    }

    /// L2-normalizes each output vector (each patch vector for patch pooling).
    pub fn with_normalize(mut self, normalize: bool) -> Self {
        self.normalize = normalize;
        self
    }

    /// Pools these hidden states (0 = the embeddings, `i` = layer `i`'s output) instead of the
    /// final output, each through the final LayerNorm when `norm`, concatenated in this order
    /// ([`Dinov2::embed_layers`]).
    pub fn with_layers(mut self, layers: Vec<usize>, norm: bool) -> Self {
        self.layers = Some((layers, norm));
        self
    }

    /// Sets the decoding limits and the EXIF option.
    pub fn with_decode_options(mut self, options: DecodeOptions) -> Self {
        self.decode = options;
        self
    }

    /// The model.
    pub fn model(&self) -> &Dinov2<B> {
        &self.model
    }

    /// Decodes and preprocesses an image file: its pixel values and original `(width, height)`.
    pub fn prepare_path(&self, path: impl AsRef<Path>) -> Result<(PixelValues, (u32, u32))> {
        let image = decode_file(path.as_ref(), &self.decode)?;
        Ok((
            preprocess(&image, &self.preprocess)?,
            (image.width, image.height),
        ))
    }

    /// Decodes and preprocesses encoded image bytes.
    pub fn prepare_bytes(&self, bytes: &[u8]) -> Result<(PixelValues, (u32, u32))> {
        let image = decode(bytes, &self.decode)?;
        Ok((
            preprocess(&image, &self.preprocess)?,
            (image.width, image.height),
        ))
    }

    /// Runs the model on preprocessed images, batching those of equal size together. Pooling runs
    /// on the model's backend ([`Dinov2::embed`]): only the vectors are copied back.
    pub fn embed_prepared(&self, images: &[PixelValues]) -> Result<Vec<Embedding>> {
        let mut out = Vec::with_capacity(images.len());
        for group in images.chunk_by(|a, b| a.shape == b.shape) {
            out.extend(self.embed_batch(&stack_images(group)?)?);
        }
        Ok(out)
    }

    /// Embeds a batch of preprocessed images `[B, C, H, W]` (from [`stack_images`]).
    pub fn embed_batch(&self, pixels: &Tensor) -> Result<Vec<Embedding>> {
        Ok(match &self.layers {
            None => self.model.embed(pixels, self.pooling, self.normalize)?,
            Some((layers, norm)) => {
                self.model
                    .embed_layers(pixels, layers, *norm, self.pooling, self.normalize)?
            }
        })
    }

    /// Embeds decoded RGB images.
    pub fn embed_images(&self, images: &[RgbImage]) -> Result<Vec<Embedding>> {
        let prepared = images
            .iter()
            .map(|i| preprocess(i, &self.preprocess).map_err(Error::from))
            .collect::<Result<Vec<_>>>()?;
        self.embed_prepared(&prepared)
    }

    /// Embeds image files; a file that cannot be read or decoded gives its own error.
    pub fn embed_paths<P: AsRef<Path>>(&self, paths: &[P]) -> Vec<Result<Embedding>> {
        self.embed_each(
            paths
                .iter()
                .map(|p| self.prepare_path(p).map(|r| r.0))
                .collect(),
        )
    }

    /// Embeds encoded images (JPEG, PNG, ...); a bad one gives its own error.
    pub fn embed_bytes(&self, encoded: &[&[u8]]) -> Vec<Result<Embedding>> {
        self.embed_each(
            encoded
                .iter()
                .map(|b| self.prepare_bytes(b).map(|r| r.0))
                .collect(),
        )
    }

    fn embed_each(&self, prepared: Vec<Result<PixelValues>>) -> Vec<Result<Embedding>> {
        let good: Vec<PixelValues> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        match self.embed_prepared(&good) {
            Ok(embeddings) => {
                let mut embeddings = embeddings.into_iter();
                prepared
                    .into_iter()
                    .map(|p| p.map(|_| embeddings.next().expect("one embedding per good image")))
                    .collect()
            }
            Err(e) => {
                let message = e.to_string();
                prepared
                    .into_iter()
                    .map(|p| p.and_then(|_| Err(Error::Batch(message.clone()))))
                    .collect()
            }
        }
    }
}
