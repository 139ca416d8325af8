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

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use dinov2_image::{
    decode_and_preprocess, preprocess, DecodeOptions, PixelValues, PreprocessConfig, RgbImage,
};

use crate::error::{Error, Result};
use crate::{Backend, Checkpoint, Dinov2, Embedding, ModelError, Pooling, Tensor};

/// A model with its preprocessing and pooling.
pub struct Embedder<B: Backend> {
    model: Dinov2<B>,
    preprocess: PreprocessConfig,
    decode: DecodeOptions,
    pooling: Pooling,
    normalize: bool,
    /// Hidden states to pool instead of the final output, and whether through the final norm.
    layers: Option<(Vec<usize>, bool)>,
    /// The most images per pass: unbounded until the device runs out of memory, then halved each
    /// time ([`Embedder::embed_batch`]).
    batch_limit: AtomicUsize,
    /// Images decoded and embedded together by the list and stream methods.
    batch_size: usize,
    /// Whether the list and stream methods decode the next batch while the model runs this one.
    overlap: bool,
}

/// The checkpoint's `preprocessor_config.json`, or the facebook/dinov2 values when it has none
/// (as for a weights file given alone: `model` is the model directory or that file).
pub fn preprocess_config(model: &Path) -> Result<PreprocessConfig> {
    let path = model.join("preprocessor_config.json");
    if model.is_dir() && path.is_file() {
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
    let shape = vec![images.len(), c, h, w];
    let per_image = Tensor::elements(&first.shape);
    let filled = images.iter().all(|p| Some(p.data.len()) == per_image);
    let Some(len) = Tensor::elements(&shape).filter(|_| filled) else {
        return Err(bad(format!(
            "an image's values do not fill its shape {:?}",
            first.shape
        )));
    };
    let mut data = Vec::with_capacity(len);
    images.iter().for_each(|p| data.extend_from_slice(&p.data));
    Ok(Tensor { shape, data })
}

/// The pixels an image's patches cover: the right and bottom remainders past the last whole
/// `patch` cut off. The model ignores them (the patch embedding is a stride-`patch`
/// convolution, and the position embeddings follow the patch grid), so the embeddings are the
/// same, and images of slightly different sizes with one patch grid can share a batch. An image
/// smaller than one patch is left as it is (for the model to refuse).
pub fn cut_to_patches(pixels: PixelValues, patch: usize) -> PixelValues {
    let [c, h, w] = pixels.shape;
    let patch = patch.max(1);
    let (ch, cw) = (h / patch * patch, w / patch * patch);
    let whole = Tensor::elements(&pixels.shape) == Some(pixels.data.len());
    if (ch, cw) == (h, w) || ch == 0 || cw == 0 || !whole {
        return pixels;
    }
    let mut data = Vec::with_capacity(c * ch * cw);
    for plane in pixels.data.chunks_exact(h * w) {
        for row in plane.chunks_exact(w).take(ch) {
            data.extend_from_slice(&row[..cw]);
        }
    }
    PixelValues {
        shape: [c, ch, cw],
        data,
    }
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
            batch_limit: AtomicUsize::new(usize::MAX),
            batch_size: B::BATCH_SIZE,
            overlap: true,
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

    /// Images decoded (in parallel) and embedded together by [`Embedder::embed_paths`],
    /// [`Embedder::embed_stream`], [`Embedder::embed_bytes`], [`Embedder::embed_images`] and
    /// [`Embedder::embed_prepared`]: memory holds one such batch at a time (two when
    /// overlapping, [`Embedder::with_overlap`]). Default
    /// [`Backend::BATCH_SIZE`] (8 on the CPU, 128 on CUDA); at least 1.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Whether the list and stream methods decode the next batch (on rayon's pool) while the
    /// model runs this one ([`InTurn`]); on by default. A GPU then does not wait for the
    /// decoding, and on the CPU the decoding tasks fill the gaps in the model's parallel loops,
    /// which share the pool: 28.7 -> 31.0 images/s from the Python module (ViT-S/14, batch 8,
    /// the 2-core development machine). Memory holds two batches instead of one. The results
    /// are the same either way.
    pub fn with_overlap(mut self, overlap: bool) -> Self {
        self.overlap = overlap;
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

    /// Decodes and preprocesses an image file: its pixel values and original `(width, height)`
    /// (the file's, also when it was decoded at reduced scale, [`DecodeOptions::draft`]).
    pub fn prepare_path(&self, path: impl AsRef<Path>) -> Result<(PixelValues, (u32, u32))> {
        let path = path.as_ref();
        let bytes = dinov2_image::read_file(path)?;
        self.prepare_named(&bytes, &path.display().to_string())
    }

    /// Decodes and preprocesses encoded image bytes.
    pub fn prepare_bytes(&self, bytes: &[u8]) -> Result<(PixelValues, (u32, u32))> {
        self.prepare_named(bytes, "in-memory image")
    }

    /// [`Embedder::prepare_bytes`] of an image that errors name `origin` (a file, an archive
    /// member).
    pub fn prepare_named(&self, bytes: &[u8], origin: &str) -> Result<(PixelValues, (u32, u32))> {
        Ok(decode_and_preprocess(
            bytes,
            origin,
            &self.decode,
            &self.preprocess,
        )?)
    }

    /// Preprocesses a decoded RGB image with the checkpoint's preprocessing.
    pub fn prepare_rgb(&self, image: &RgbImage) -> Result<PixelValues> {
        Ok(preprocess(image, &self.preprocess)?)
    }

    /// Images embedded together by the list and stream methods ([`Embedder::with_batch_size`]).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Runs the model on preprocessed images, in batches of consecutive images of one patch grid
    /// ([`cut_to_patches`]; at most [`Embedder::with_batch_size`] each). Pooling runs on the model's backend
    /// ([`Dinov2::embed`]): only the vectors are copied back.
    pub fn embed_prepared(&self, images: &[PixelValues]) -> Result<Vec<Embedding>> {
        self.prepared_each(images.to_vec()).into_iter().collect()
    }

    /// [`Embedder::embed_prepared`] of owned images, each with its own result: a batch that
    /// fails as a whole fails its images alone, not the other batches'.
    fn prepared_each(&self, images: Vec<PixelValues>) -> Vec<Result<Embedding>> {
        let patch = self.model.config().patch_size;
        let images: Vec<PixelValues> = images
            .into_iter()
            .map(|p| cut_to_patches(p, patch))
            .collect();
        let mut out = Vec::with_capacity(images.len());
        for group in images.chunk_by(|a, b| a.shape == b.shape) {
            for batch in group.chunks(self.batch_size) {
                match stack_images(batch).and_then(|pixels| self.embed_batch_each(&pixels)) {
                    Ok(results) => out.extend(results),
                    Err(e) => {
                        let message = e.to_string();
                        out.extend(batch.iter().map(|_| Err(Error::Batch(message.clone()))));
                    }
                }
            }
        }
        out
    }

    /// The most images this embedder now runs in one pass, when running out of device memory
    /// lowered it ([`Embedder::embed_batch`]); `None` while unbounded.
    pub fn batch_limit(&self) -> Option<usize> {
        Some(self.batch_limit.load(Ordering::Relaxed)).filter(|&l| l != usize::MAX)
    }

    /// Embeds a batch of preprocessed images `[B, C, H, W]` (from [`stack_images`]).
    ///
    /// Should the device run out of memory, the batch is embedded in smaller passes: the
    /// embedder halves its limit of images per pass, gives back the model's cached memory
    /// ([`Dinov2::release_memory`]) and runs those images again, and keeps the lower limit for
    /// the batches after ([`Embedder::batch_limit`]). Only an image too large to run alone
    /// fails, with [`ModelError::OutOfMemory`]. An image's embedding is the same in any pass, up to
    /// the rounding of the kernels the backend picks for the pass's size.
    pub fn embed_batch(&self, pixels: &Tensor) -> Result<Vec<Embedding>> {
        self.embed_batch_each(pixels)?.into_iter().collect()
    }

    /// [`Embedder::embed_batch`], each image with its own result: `Err` when the batch fails as
    /// a whole (a bad input, a device error), else per image an embedding or, for an image too
    /// large to run alone, [`ModelError::OutOfMemory`], the others embedded all the same.
    pub fn embed_batch_each(&self, pixels: &Tensor) -> Result<Vec<Result<Embedding>>> {
        in_passes(
            pixels,
            &self.batch_limit,
            |p| self.embed_pass(p),
            || Ok(self.model.release_memory()?),
        )
    }

    /// One pass of the model over `pixels`.
    fn embed_pass(&self, pixels: &Tensor) -> Result<Vec<Embedding>> {
        Ok(match &self.layers {
            None => self.model.embed(pixels, self.pooling, self.normalize)?,
            Some((layers, norm)) => {
                self.model
                    .embed_layers(pixels, layers, *norm, self.pooling, self.normalize)?
            }
        })
    }

    /// Embeds decoded RGB images, a batch at a time; the first error ends it.
    pub fn embed_images(&self, images: &[RgbImage]) -> Result<Vec<Embedding>> {
        let mut out = Vec::with_capacity(images.len());
        let mut turns = InTurn::new(images.chunks(self.batch_size), self.overlap);
        let prepare = |window: &&[RgbImage]| -> Result<Vec<PixelValues>> {
            window.par_iter().map(|i| self.prepare_rgb(i)).collect()
        };
        // The prepared batch moves to the model (`embed_prepared` would copy it).
        let embed = |prepared: Result<Vec<PixelValues>>| -> Result<Vec<Embedding>> {
            self.prepared_each(prepared?).into_iter().collect()
        };
        while let Some((_, embedded)) = turns.next_with(&prepare, embed) {
            out.extend(embedded?);
        }
        Ok(out)
    }

    /// Embeds image files, in order; a file that cannot be read or decoded gives its own error.
    /// A batch at a time is decoded (in parallel) and embedded, so memory does not grow with the
    /// number of files beyond the results ([`Embedder::embed_stream`] keeps none).
    pub fn embed_paths<P: AsRef<Path> + Sync>(&self, paths: &[P]) -> Vec<Result<Embedding>> {
        self.embed_stream(paths).map(|(_, result)| result).collect()
    }

    /// [`Embedder::embed_paths`] as an iterator over any number of paths: each path with its
    /// result, in order, a batch decoded and embedded whenever the previous one is used up.
    pub fn embed_stream<P, I>(&self, paths: I) -> EmbedStream<'_, B, I::IntoIter>
    where
        P: AsRef<Path> + Sync,
        I: IntoIterator<Item = P>,
    {
        let batches = Batches {
            items: paths.into_iter(),
            size: self.batch_size,
        };
        EmbedStream {
            embedder: self,
            turns: InTurn::new(batches, self.overlap),
            ready: VecDeque::new(),
        }
    }

    /// Embeds encoded images (JPEG, PNG, ...), a batch at a time; a bad one gives its own error.
    pub fn embed_bytes(&self, encoded: &[&[u8]]) -> Vec<Result<Embedding>> {
        let mut out = Vec::with_capacity(encoded.len());
        let mut turns = InTurn::new(encoded.chunks(self.batch_size), self.overlap);
        let prepare = |window: &&[&[u8]]| -> Vec<Result<PixelValues>> {
            window
                .par_iter()
                .map(|b| self.prepare_bytes(b).map(|r| r.0))
                .collect()
        };
        while let Some((_, embedded)) =
            turns.next_with(&prepare, |prepared| self.embed_prepared_each(prepared))
        {
            out.extend(embedded);
        }
        out
    }

    /// Embeds inputs prepared (or failed) apart, e.g. on the caller's own threads: the failures
    /// keep their errors, the others are embedded together as [`Embedder::embed_prepared`] does
    /// (all failing alike when the model does). One result per input, in order.
    pub fn embed_prepared_each(
        &self,
        prepared: Vec<Result<PixelValues>>,
    ) -> Vec<Result<Embedding>> {
        // The images move to the model; each slot keeps only its error, if any.
        let mut good = Vec::with_capacity(prepared.len());
        let slots: Vec<Option<Error>> = prepared
            .into_iter()
            .map(|p| match p {
                Ok(pixels) => {
                    good.push(pixels);
                    None
                }
                Err(e) => Some(e),
            })
            .collect();
        let mut embedded = self.prepared_each(good).into_iter();
        slots
            .into_iter()
            .map(|slot| match slot {
                Some(e) => Err(e),
                None => embedded
                    .next()
                    .unwrap_or_else(|| Err(Error::Batch("no result for this image".into()))),
            })
            .collect()
    }
}

/// The iterator of [`Embedder::embed_stream`]: `(path, result)` in input order.
pub struct EmbedStream<'a, B: Backend, I: Iterator> {
    embedder: &'a Embedder<B>,
    /// The paths a batch at a time, and the next batch decoded ahead when overlapping.
    turns: InTurn<Batches<I>, Vec<Result<PixelValues>>>,
    /// The current batch's results not yet handed out.
    ready: VecDeque<(I::Item, Result<Embedding>)>,
}

impl<B, P, I> Iterator for EmbedStream<'_, B, I>
where
    B: Backend,
    P: AsRef<Path> + Sync,
    I: Iterator<Item = P>,
{
    type Item = (P, Result<Embedding>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.ready.is_empty() {
            let embedder = self.embedder;
            let prepare = |window: &Vec<P>| -> Vec<Result<PixelValues>> {
                window
                    .par_iter()
                    .map(|p| embedder.prepare_path(p).map(|r| r.0))
                    .collect()
            };
            let (window, results) = self
                .turns
                .next_with(&prepare, |prepared| embedder.embed_prepared_each(prepared))?;
            self.ready.extend(window.into_iter().zip(results));
        }
        self.ready.pop_front()
    }
}

/// An iterator's items `size` at a time (the last batch shorter).
struct Batches<I> {
    items: I,
    size: usize,
}

impl<I: Iterator> Iterator for Batches<I> {
    type Item = Vec<I::Item>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch: Vec<I::Item> = self.items.by_ref().take(self.size.max(1)).collect();
        (!batch.is_empty()).then_some(batch)
    }
}

/// Batches of inputs taken in turn: each prepared (decoded, on rayon's pool), then embedded, in
/// order. With `overlap`, the batch after is prepared while one is embedded (`rayon::join`), and
/// kept for the next turn: a GPU then does not wait for the decoding. What the list and stream
/// methods of [`Embedder`] run on, and what other front ends (the Python module) can run on.
///
/// ```
/// use dinov2::InTurn;
///
/// let mut turns = InTurn::new([vec![1, 2], vec![3]].into_iter(), true);
/// let square = |b: &Vec<i32>| b.iter().map(|x| x * x).collect::<Vec<_>>();
/// let mut sums = Vec::new();
/// while let Some((batch, sum)) = turns.next_with(&square, |s| s.iter().sum::<i32>()) {
///     sums.push((batch, sum));
/// }
/// assert_eq!(sums, [(vec![1, 2], 5), (vec![3], 9)]);
/// ```
pub struct InTurn<W: Iterator, P> {
    batches: W,
    overlap: bool,
    /// The next batch, already prepared.
    ahead: Option<(W::Item, P)>,
}

impl<W, P> InTurn<W, P>
where
    W: Iterator,
    W::Item: Sync,
    P: Send,
{
    /// Takes `batches` in turn, preparing the next while one is embedded when `overlap`.
    pub fn new(batches: W, overlap: bool) -> Self {
        InTurn {
            batches,
            overlap,
            ahead: None,
        }
    }

    /// The next batch with what `embed` made of it (`prepare` having made its input); `None`
    /// after the last. Call it from the thread pool that should do the work (`install`).
    pub fn next_with<R: Send>(
        &mut self,
        prepare: &(impl Fn(&W::Item) -> P + Sync),
        embed: impl FnOnce(P) -> R + Send,
    ) -> Option<(W::Item, R)> {
        let (batch, prepared) = match self.ahead.take() {
            Some(ahead) => ahead,
            None => {
                let batch = self.batches.next()?;
                let prepared = prepare(&batch);
                (batch, prepared)
            }
        };
        if self.overlap {
            if let Some(after) = self.batches.next() {
                let (embedded, ready) = rayon::join(|| embed(prepared), || prepare(&after));
                self.ahead = Some((after, ready));
                return Some((batch, embedded));
            }
        }
        Some((batch, embed(prepared)))
    }
}

/// Runs `pass` over the images of `pixels` `[B, ...]` in order, at most `limit` at a time. When a
/// pass of several images runs out of device memory, `limit` is halved (to at most half that
/// pass), `release` called (best effort), and the same images run again in smaller passes; an
/// image that runs out of memory alone gets that error and the next ones go on. Any other error
/// ends the batch.
fn in_passes(
    pixels: &Tensor,
    limit: &AtomicUsize,
    mut pass: impl FnMut(&Tensor) -> Result<Vec<Embedding>>,
    mut release: impl FnMut() -> Result<()>,
) -> Result<Vec<Result<Embedding>>> {
    let batch = pixels.shape.first().copied().unwrap_or(0);
    if batch == 0 {
        // The model says what is wrong with it.
        return Ok(pass(pixels)?.into_iter().map(Ok).collect());
    }
    let per_image = pixels.data.len() / batch;
    let mut out = Vec::with_capacity(batch);
    let mut start = 0;
    while start < batch {
        let n = limit.load(Ordering::Relaxed).clamp(1, batch - start);
        let result = if n == batch {
            pass(pixels)
        } else {
            let mut shape = pixels.shape.clone();
            shape[0] = n;
            let data = pixels.data[start * per_image..(start + n) * per_image].to_vec();
            pass(&Tensor { shape, data })
        };
        match result {
            Ok(embeddings) => {
                out.extend(embeddings.into_iter().map(Ok));
                start += n;
            }
            // Giving memory back is best effort: a failure there shows in the next pass.
            Err(Error::Model(ModelError::OutOfMemory { .. })) if n > 1 => {
                limit.fetch_min(n / 2, Ordering::Relaxed);
                let _ = release();
            }
            Err(e @ Error::Model(ModelError::OutOfMemory { .. })) => {
                out.push(Err(e));
                start += 1;
                let _ = release();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_in_turn_come_once_each_in_order_with_or_without_overlap() {
        for overlap in [false, true] {
            for n in [0usize, 1, 2, 5] {
                let prepared = AtomicUsize::new(0);
                let batches = Batches {
                    items: 0..n * 3 - n.min(1),
                    size: 3,
                };
                let mut turns = InTurn::new(batches, overlap);
                let prepare = |b: &Vec<usize>| {
                    prepared.fetch_add(1, Ordering::Relaxed);
                    b.iter().map(|x| x * x).collect::<Vec<_>>()
                };
                let mut seen = Vec::new();
                while let Some((batch, sums)) =
                    turns.next_with(&prepare, |p| p.iter().sum::<usize>())
                {
                    assert_eq!(sums, batch.iter().map(|x| x * x).sum::<usize>());
                    seen.extend(batch);
                }
                let want: Vec<usize> = (0..n * 3 - n.min(1)).collect();
                assert_eq!(seen, want, "overlap {overlap}, {n} batches");
                assert_eq!(prepared.load(Ordering::Relaxed), n, "each prepared once");
            }
        }
    }

    /// `[b, 2]` pixels whose image `i` holds `i` twice.
    fn numbered(b: usize) -> Tensor {
        Tensor {
            shape: vec![b, 2],
            data: (0..b).flat_map(|i| [i as f32; 2]).collect(),
        }
    }

    fn oom() -> Error {
        Error::Model(ModelError::OutOfMemory {
            backend: "test".into(),
            reason: "allocating".into(),
        })
    }

    /// A pass that fits `fits` images at most: one embedding per image, its number.
    fn pass_fitting(
        fits: usize,
        passes: &mut Vec<usize>,
    ) -> impl FnMut(&Tensor) -> Result<Vec<Embedding>> + '_ {
        move |t: &Tensor| {
            passes.push(t.shape[0]);
            if t.shape[0] > fits {
                return Err(oom());
            }
            Ok(t.data
                .chunks(2)
                .map(|c| Embedding {
                    values: vec![c[0]],
                    grid: None,
                })
                .collect())
        }
    }

    /// Each image's number, or NaN for one that failed.
    fn numbers(e: &[Result<Embedding>]) -> Vec<f32> {
        e.iter()
            .map(|e| e.as_ref().map_or(f32::NAN, |e| e.values[0]))
            .collect()
    }

    #[test]
    fn a_batch_that_fits_runs_in_one_pass() {
        let limit = AtomicUsize::new(usize::MAX);
        let mut passes = Vec::new();
        let got = in_passes(&numbered(5), &limit, pass_fitting(8, &mut passes), || {
            panic!("nothing to release")
        })
        .unwrap();
        assert_eq!(numbers(&got), [0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(passes, [5]);
        assert_eq!(limit.load(Ordering::Relaxed), usize::MAX);
    }

    #[test]
    fn running_out_of_memory_halves_the_passes_and_keeps_every_image_in_order() {
        let limit = AtomicUsize::new(usize::MAX);
        let mut passes = Vec::new();
        let mut released = 0;
        let got = in_passes(&numbered(11), &limit, pass_fitting(3, &mut passes), || {
            released += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(numbers(&got), (0..11).map(|i| i as f32).collect::<Vec<_>>());
        // 11 fails, 5 fails, then passes of 2.
        assert_eq!(passes, [11, 5, 2, 2, 2, 2, 2, 1]);
        assert_eq!((limit.load(Ordering::Relaxed), released), (2, 2));
        // The limit stays for the next batch.
        let mut passes = Vec::new();
        let got = in_passes(
            &numbered(4),
            &limit,
            pass_fitting(3, &mut passes),
            || Ok(()),
        )
        .unwrap();
        assert_eq!(numbers(&got), [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(passes, [2, 2]);
    }

    #[test]
    fn an_image_too_large_alone_fails_alone() {
        let limit = AtomicUsize::new(usize::MAX);
        let mut passes = Vec::new();
        let got = in_passes(
            &numbered(4),
            &limit,
            pass_fitting(0, &mut passes),
            || Ok(()),
        )
        .unwrap();
        assert!(got
            .iter()
            .all(|r| matches!(r, Err(Error::Model(ModelError::OutOfMemory { .. })))));
        assert_eq!(passes, [4, 2, 1, 1, 1, 1]);
        assert_eq!(limit.load(Ordering::Relaxed), 1);
        // Memory that frees up (another stream's pass ending): the images after the one that
        // failed are embedded, and the ones before keep their vectors.
        let limit = AtomicUsize::new(usize::MAX);
        let mut calls = 0;
        let got = in_passes(
            &numbered(3),
            &limit,
            |t| {
                calls += 1;
                if t.shape[0] > 1 || calls == 3 {
                    return Err(oom());
                }
                Ok(vec![Embedding {
                    values: vec![t.data[0]],
                    grid: None,
                }])
            },
            || Ok(()),
        )
        .unwrap();
        // The batch of 3 fails, then alone: image 0 works, image 1 fails, image 2 works.
        let n = numbers(&got);
        assert_eq!((n[0], n[2]), (0.0, 2.0));
        assert!(n[1].is_nan());
    }

    #[test]
    fn other_errors_are_not_retried() {
        let limit = AtomicUsize::new(usize::MAX);
        let mut calls = 0;
        let err = in_passes(
            &numbered(4),
            &limit,
            |_| {
                calls += 1;
                Err(Error::Batch("broken".into()))
            },
            || Ok(()),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Batch(_)));
        assert_eq!((calls, limit.load(Ordering::Relaxed)), (1, usize::MAX));
    }
}
