//! The embedding passes of [`Dinov2`]: [`Dinov2::embed`] and its uploaded and intermediate-layer
//! forms, and the machinery they share with `forward`: a pass to the final tokens or their
//! pooling that is replayed when recorded, run and recorded on its second sighting, or run.

use super::*;

/// The input of an embedding pass: pixels on the host, or already on the backend.
pub(super) enum Pixels<'a, T> {
    Host(&'a Tensor),
    Uploaded(&'a PixelBatch<T>),
}

// By hand: derived, they would ask `T` to be `Copy` too.
impl<T> Clone for Pixels<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Pixels<'_, T> {}

impl<B: Backend> Dinov2<B> {
    /// One embedding per image of `pixel_values` `[B, C, H, W]`: the final tokens pooled on the
    /// backend ([`Backend::pool`]), so that only `[B, h]` (CLS, mean) or `[B, 2h]` (both) values
    /// are copied back (patch pooling copies every patch token), then L2-normalized when
    /// `normalize`. The same vectors as [`crate::pool`] over [`Dinov2::forward`]'s output.
    ///
    /// On a backend that records (CUDA graphs), the second pass of a (batch, height, width,
    /// pooling) shape is recorded and the later ones replay it: same results, one launch.
    pub fn embed(
        &self,
        pixels: &Tensor,
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Vec<Embedding>> {
        self.check_pooling(pooling)?;
        let (batch, height, width) = self.check_pixels(pixels)?;
        let shape = PassShape {
            batch,
            height,
            width,
            output: PassOutput::Pooled(pooling),
            interpolation: Interpolation::default(),
        };
        self.embeddings_of(
            self.final_pass(Pixels::Host(pixels), &shape)?,
            &shape,
            normalize,
        )
    }

    /// [`Dinov2::embed`] of pixels already uploaded by [`Dinov2::upload_pixels`].
    pub fn embed_batch(
        &self,
        pixels: &PixelBatch<B::Tensor>,
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Vec<Embedding>> {
        self.check_pooling(pooling)?;
        let shape = PassShape {
            batch: pixels.batch,
            height: pixels.height,
            width: pixels.width,
            output: PassOutput::Pooled(pooling),
            interpolation: Interpolation::default(),
        };
        self.embeddings_of(
            self.final_pass(Pixels::Uploaded(pixels), &shape)?,
            &shape,
            normalize,
        )
    }

    /// [`Dinov2::embed`] of intermediate layers: for each image, the pooling of each hidden state
    /// in `layers` (0 = the embeddings, `i` = layer `i`'s output, as transformers'
    /// `hidden_states`; the last layer with `norm` is `last_hidden_state`), each through the final
    /// LayerNorm when `norm` (DINOv2's `get_intermediate_layers(norm=True)`), concatenated in the
    /// order given: `layers.len()` vectors one after the other, or for patch pooling each patch's
    /// vectors one after the other. `normalize` L2-normalizes the concatenated vector (each patch's).
    ///
    /// Recorded and replayed as [`Dinov2::embed`]'s passes are, per shape and set of layers.
    pub fn embed_layers(
        &self,
        pixels: &Tensor,
        layers: &[usize],
        norm: bool,
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Vec<Embedding>> {
        self.check_pooling(pooling)?;
        let depth = self.config.num_hidden_layers;
        if layers.is_empty() {
            return Err(ModelError::input("layers", "no layer given"));
        }
        if let Some(bad) = layers.iter().find(|&&l| l > depth) {
            return Err(ModelError::input(
                "layers",
                format!("layer {bad} asked for: the model has hidden states 0 (the embeddings) to {depth}"),
            ));
        }
        let (batch, height, width) = self.check_pixels(pixels)?;
        // The pass yields the distinct asked layers in increasing order.
        let mut kept: Vec<usize> = layers.to_vec();
        kept.sort_unstable();
        kept.dedup();
        let shape = PassShape {
            batch,
            height,
            width,
            output: PassOutput::Layers {
                kept: kept.clone(),
                norm,
                pooling,
            },
            interpolation: Interpolation::default(),
        };
        let pooled = self.final_pass(Pixels::Host(pixels), &shape)?;
        let in_order = layers
            .iter()
            .map(|layer| {
                kept.binary_search(layer)
                    .ok()
                    .and_then(|i| pooled.get(i))
                    .ok_or_else(|| {
                        ModelError::Unsupported(format!("hidden state {layer} was not kept"))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let h = self.config.hidden_size;
        let joined = join_layers(&in_order, h, pooling, batch);
        let p = self.config.patch_size;
        Ok(embeddings(
            joined,
            h * layers.len(),
            (height / p, width / p),
            pooling,
            normalize,
        ))
    }

    /// Register pooling needs register tokens.
    fn check_pooling(&self, pooling: Pooling) -> Result<()> {
        if pooling == Pooling::Registers && self.config.num_register_tokens == 0 {
            return Err(ModelError::input(
                "pooling",
                "registers: this model has no register tokens (a dinov2_with_registers checkpoint has)",
            ));
        }
        Ok(())
    }

    /// The embeddings from a pooled pass's one result.
    fn embeddings_of(
        &self,
        mut results: Vec<Tensor>,
        shape: &PassShape,
        normalize: bool,
    ) -> Result<Vec<Embedding>> {
        let (Some(pooling), Some(pooled)) = (shape.output.pooling(), results.pop()) else {
            return Err(ModelError::Unsupported("embeddings of a token pass".into()));
        };
        let p = self.config.patch_size;
        Ok(embeddings(
            pooled,
            self.config.hidden_size,
            (shape.height / p, shape.width / p),
            pooling,
            normalize,
        ))
    }

    /// A pass to the final tokens or to pooled rows, on the host: replayed, run and recorded, or
    /// run. Returns the pass's results ([`PassOutput`]), pooled on the host where the backend did
    /// not pool them.
    pub(super) fn final_pass(
        &self,
        pixels: Pixels<'_, B::Tensor>,
        shape: &PassShape,
    ) -> Result<Vec<Tensor>> {
        let be = &self.backend;
        // Held for the whole pass: a recording's tensors serve one pass at a time, and the
        // backend runs passes one after another anyway.
        let mut replays = self.exclusive()?;
        if let Some(rec) = replays.as_mut().and_then(|r| r.find(shape)) {
            match self.replay_pass(pixels, rec, shape) {
                Ok(results) => return Ok(results),
                // The eager pass below gives the results, or the error that stands.
                Err(e) => {
                    if let Some(r) = replays.as_mut() {
                        r.replay_failed();
                        give_up_recording(r, shape, format!("a replay failed: {e}"), &e);
                    }
                }
            }
        }
        let uploaded;
        let pixels = match pixels {
            Pixels::Host(t) => {
                uploaded = self.upload(t)?;
                &uploaded
            }
            Pixels::Uploaded(p) => p,
        };
        let (outs, pooled) = self.output_pass(pixels, shape)?;
        if let Some(replays) = replays.as_mut() {
            if replays.should_record(shape) {
                match self.record_pass(pixels, &outs, pooled, shape) {
                    Ok(Some(rec)) => {
                        replays.insert(shape.clone(), rec);
                        // A recording that needed a larger arena leaves the others on the old.
                        replays.drop_stale(|r| be.is_current(&r.recording));
                    }
                    Ok(None) => replays.fail("the backend recorded nothing".into()),
                    // The pass itself ran: its results stand.
                    Err(e) => give_up_recording(replays, shape, e.to_string(), &e),
                }
            }
        }
        self.on_host(&outs, pooled, shape)
    }

    /// The recorded pass `rec` replayed on `pixels`, and its results on the host.
    fn replay_pass(
        &self,
        pixels: Pixels<'_, B::Tensor>,
        rec: &mut Recorded<B>,
        shape: &PassShape,
    ) -> Result<Vec<Tensor>> {
        let be = &self.backend;
        match pixels {
            Pixels::Host(t) => be.upload_into(t, &mut rec.input)?,
            Pixels::Uploaded(p) => be.copy_into(&p.tensor, &mut rec.input)?,
        }
        be.replay(&rec.recording)?;
        self.on_host(&rec.outputs, rec.pooled, shape)
    }

    /// A pass's results downloaded, and pooled on the host unless `pooled` already.
    fn on_host(&self, outs: &[B::Tensor], pooled: bool, shape: &PassShape) -> Result<Vec<Tensor>> {
        let prefix = self.config.num_prefix_tokens();
        outs.iter()
            .map(|t| {
                let host = self.backend.download(t)?;
                Ok(match shape.output.pooling() {
                    Some(pooling) if !pooled => pool_tokens(&host, prefix, pooling),
                    _ => host,
                })
            })
            .collect()
    }

    /// Encoder (and pooling), left on the backend: the results of [`PassShape::output`] (for
    /// [`PassOutput::Tokens`] the final tokens, for a pooling the pooled rows), and true when
    /// they are pooled: false where the backend does not pool this way
    /// ([`Backend::pool_on_device`]) and the results are the tokens to pool.
    fn output_pass(
        &self,
        pixels: &PixelBatch<B::Tensor>,
        shape: &PassShape,
    ) -> Result<(Vec<B::Tensor>, bool)> {
        let opts = ForwardOptions {
            interpolation: shape.interpolation,
            ..ForwardOptions::default()
        };
        let be = &self.backend;
        let prefix = self.config.num_prefix_tokens();
        let (states, pooling) = match &shape.output {
            PassOutput::Tokens => {
                let enc = self.encode(pixels, None, &opts, &|_| false)?;
                return Ok((vec![enc.normed], false));
            }
            PassOutput::Pooled(pooling) => {
                let enc = self.encode(pixels, None, &opts, &|_| false)?;
                (vec![enc.normed], *pooling)
            }
            PassOutput::Layers {
                kept,
                norm,
                pooling,
            } => {
                let enc = self.encode(pixels, None, &opts, &|i| kept.binary_search(&i).is_ok())?;
                let states = if *norm {
                    let n = &self.params.norm;
                    let eps = self.config.layer_norm_eps;
                    enc.hidden_states
                        .iter()
                        .map(|s| be.layer_norm(s, &n.weight, &n.bias, eps))
                        .collect::<Result<_>>()?
                } else {
                    enc.hidden_states
                };
                (states, *pooling)
            }
        };
        // The backend pools every state or none: the answer depends on the pooling alone.
        let mut pooled = Vec::with_capacity(states.len());
        for state in &states {
            match be.pool_on_device(state, prefix, pooling)? {
                Some(rows) => pooled.push(rows),
                None => return Ok((states, false)),
            }
        }
        Ok((pooled, true))
    }

    /// Records [`Dinov2::output_pass`] on copies of `pixels` and of `outs` (the results of the
    /// pass just run, which give the outputs' shapes), after that pass warmed every cache a
    /// recording cannot fill (position tables, kernel and GEMM plans).
    fn record_pass(
        &self,
        pixels: &PixelBatch<B::Tensor>,
        outs: &[B::Tensor],
        pooled: bool,
        shape: &PassShape,
    ) -> Result<Option<Recorded<B>>> {
        let be = &self.backend;
        let input = PixelBatch {
            tensor: be.duplicate(&pixels.tensor)?,
            batch: pixels.batch,
            height: pixels.height,
            width: pixels.width,
        };
        let mut outputs = outs
            .iter()
            .map(|o| be.duplicate(o))
            .collect::<Result<Vec<_>>>()?;
        let recording = be.record(&mut || {
            let (results, _) = self.output_pass(&input, shape)?;
            if results.len() != outputs.len() {
                return Err(ModelError::Unsupported(
                    "a recorded pass gave another number of results".into(),
                ));
            }
            for (result, output) in results.iter().zip(outputs.iter_mut()) {
                be.copy_into(result, output)?;
            }
            Ok(())
        })?;
        Ok(recording.map(|recording| Recorded {
            input: input.tensor,
            outputs,
            pooled,
            recording,
        }))
    }
}

/// After recording or replaying `shape` failed with `error` (the pass itself then runs
/// unrecorded): out of device memory, the other recordings give their memory back and this
/// shape runs unrecorded, or is recorded once more without them ([`Replays::too_large`]); any
/// other error turns recording off, for `reason`.
fn give_up_recording<R>(
    replays: &mut Replays<R>,
    shape: &PassShape,
    reason: String,
    error: &ModelError,
) {
    match error {
        ModelError::OutOfMemory { .. } => replays.too_large(shape),
        _ => replays.fail(reason),
    }
}
