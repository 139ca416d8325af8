//! The embedding passes of [`Dinov2`]: [`Dinov2::embed`] and its uploaded and intermediate-layer
//! forms, and the machinery they share with `forward`: a pass to the final tokens or their
//! pooling that is replayed when recorded, run and recorded on its second sighting, or run.

use super::*;

/// The input of an embedding pass: pixels on the host, or already on the backend.
pub(super) enum Pixels<'a, T> {
    Host(&'a Tensor),
    Uploaded(&'a PixelBatch<T>),
}

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
        let (batch, height, width) = self.check_pixels(pixels)?;
        let shape = PassShape {
            batch,
            height,
            width,
            output: PassOutput::Pooled(pooling),
            interpolation: Interpolation::default(),
        };
        self.embeddings_of(
            self.final_pass(Pixels::Host(pixels), shape)?,
            shape,
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
        let shape = PassShape {
            batch: pixels.batch,
            height: pixels.height,
            width: pixels.width,
            output: PassOutput::Pooled(pooling),
            interpolation: Interpolation::default(),
        };
        self.embeddings_of(
            self.final_pass(Pixels::Uploaded(pixels), shape)?,
            shape,
            normalize,
        )
    }

    /// [`Dinov2::embed`] of intermediate layers: for each image, the pooling of each hidden state
    /// in `layers` (0 = the embeddings, `i` = layer `i`'s output, as transformers'
    /// `hidden_states`; the last layer with `norm` is `last_hidden_state`), each through the final
    /// LayerNorm when `norm` (DINOv2's `get_intermediate_layers(norm=True)`), concatenated in the
    /// order given: `layers.len()` vectors one after the other, or for patch pooling each patch's
    /// vectors one after the other. `normalize` L2-normalizes the concatenated vector (each patch's).
    /// Runs as it comes (not recorded as a CUDA graph).
    pub fn embed_layers(
        &self,
        pixels: &Tensor,
        layers: &[usize],
        norm: bool,
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Vec<Embedding>> {
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
        let (batch, height, img_width) = self.check_pixels(pixels)?;
        let pass = self.exclusive()?;
        let uploaded = self.upload(pixels)?;
        let enc = self.encode(&uploaded, None, &ForwardOptions::default(), &|i| {
            layers.contains(&i)
        })?;
        // `enc.hidden_states` holds the distinct asked layers in increasing order.
        let mut kept: Vec<usize> = layers.to_vec();
        kept.sort_unstable();
        kept.dedup();
        let be = &self.backend;
        let prefix = self.config.num_prefix_tokens();
        let mut pooled = Vec::with_capacity(layers.len());
        for layer in layers {
            let state = &enc.hidden_states[kept.binary_search(layer).map_err(|_| {
                ModelError::Unsupported(format!("hidden state {layer} was not kept"))
            })?];
            let tokens = if norm {
                let n = &self.params.norm;
                be.layer_norm(state, &n.weight, &n.bias, self.config.layer_norm_eps)?
            } else {
                state.clone()
            };
            pooled.push(be.pool(&tokens, prefix, pooling)?);
        }
        drop(pass);
        let h = self.config.hidden_size;
        // Per image (per patch for patch pooling), the layers' vectors one after the other.
        let unit = if pooling == Pooling::Patch {
            h
        } else {
            pooled[0].last_dim()
        };
        let rows = pooled[0].len() / unit;
        let mut data = Vec::with_capacity(rows * unit * layers.len());
        for r in 0..rows {
            for p in &pooled {
                data.extend_from_slice(&p.data[r * unit..(r + 1) * unit]);
            }
        }
        let row = data.len() / batch;
        let p = self.config.patch_size;
        Ok(embeddings(
            Tensor {
                shape: vec![batch, row],
                data,
            },
            h * layers.len(),
            (height / p, img_width / p),
            pooling,
            normalize,
        ))
    }

    /// The embeddings from a pooled pass's result (pooled on the host when the backend did not).
    fn embeddings_of(
        &self,
        (result, pooled): (Tensor, bool),
        shape: PassShape,
        normalize: bool,
    ) -> Result<Vec<Embedding>> {
        let PassOutput::Pooled(pooling) = shape.output else {
            return Err(ModelError::Unsupported("embeddings of a token pass".into()));
        };
        let pooled = if pooled {
            result
        } else {
            pool_tokens(&result, self.config.num_prefix_tokens(), pooling)
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

    /// A pass to the final tokens or their pooling, on the host: replayed, run and recorded, or
    /// run. Returns the result and whether it is pooled (see [`Dinov2::output_pass`]).
    pub(super) fn final_pass(
        &self,
        pixels: Pixels<'_, B::Tensor>,
        shape: PassShape,
    ) -> Result<(Tensor, bool)> {
        let be = &self.backend;
        // Held for the whole pass: a recording's tensors serve one pass at a time, and the
        // backend runs passes one after another anyway.
        let mut replays = self.exclusive()?;
        let recorded = replays.as_mut().and_then(|r| r.find(shape));
        if let Some(rec) = recorded {
            match pixels {
                Pixels::Host(t) => be.upload_into(t, &mut rec.input)?,
                Pixels::Uploaded(p) => be.copy_into(&p.tensor, &mut rec.input)?,
            }
            be.replay(&rec.recording)?;
            return Ok((be.download(&rec.output)?, rec.pooled));
        }
        let uploaded;
        let pixels = match pixels {
            Pixels::Host(t) => {
                uploaded = self.upload(t)?;
                &uploaded
            }
            Pixels::Uploaded(p) => p,
        };
        let (out, pooled) = self.output_pass(pixels, &shape)?;
        if let Some(replays) = replays.as_mut() {
            if replays.should_record(shape) {
                match self.record_pass(pixels, &out, pooled, &shape) {
                    Ok(Some(rec)) => replays.insert(shape, rec),
                    Ok(None) => replays.fail("the backend recorded nothing".into()),
                    Err(e) => replays.fail(e.to_string()),
                }
            }
        }
        Ok((be.download(&out)?, pooled))
    }

    /// Encoder (and pooling), left on the backend: for [`PassOutput::Tokens`] the final tokens;
    /// for a pooling, the pooled rows and true where the backend pools this way
    /// ([`Backend::pool_on_device`]), else the final tokens and false.
    fn output_pass(
        &self,
        pixels: &PixelBatch<B::Tensor>,
        shape: &PassShape,
    ) -> Result<(B::Tensor, bool)> {
        let opts = ForwardOptions {
            interpolation: shape.interpolation,
            ..ForwardOptions::default()
        };
        let enc = self.encode(pixels, None, &opts, &|_| false)?;
        let PassOutput::Pooled(pooling) = shape.output else {
            return Ok((enc.normed, false));
        };
        let prefix = self.config.num_prefix_tokens();
        Ok(
            match self.backend.pool_on_device(&enc.normed, prefix, pooling)? {
                Some(pooled) => (pooled, true),
                None => (enc.normed, false),
            },
        )
    }

    /// Records [`Dinov2::output_pass`] on copies of `pixels` and of `out` (the result of the
    /// pass just run, which gives the output's shape), after that pass warmed every cache a
    /// recording cannot fill (position tables, kernel and GEMM plans).
    fn record_pass(
        &self,
        pixels: &PixelBatch<B::Tensor>,
        out: &B::Tensor,
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
        let mut output = be.duplicate(out)?;
        let recording = be.record(&mut || {
            let (result, _) = self.output_pass(&input, shape)?;
            be.copy_into(&result, &mut output)
        })?;
        Ok(recording.map(|recording| Recorded {
            input: input.tensor,
            output,
            pooled,
            recording,
        }))
    }
}
