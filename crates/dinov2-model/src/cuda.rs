//! The CUDA backend: the model's operations mapped onto `dinov2-kernels`.
//!
//! Weights are uploaded once in the compute dtype (f32, f16 or bf16); one-dimensional weights
//! (biases, LayerNorm parameters, layer scales, CLS and mask tokens) are also kept in f32 for the
//! kernels that read them in f32. Activations, the pixels included, are in the compute dtype,
//! except the residual stream (the output of `embed_tokens`, updated by `add_scaled`), which
//! stays f32 (with `DINOV2_RESIDUAL=compute`, in f16/bf16: the compute dtype, as transformers
//! keeps it; 4 bytes an element less through each residual update). Every operation is queued
//! on the device's stream; only `download` (and `pool`, which downloads its `[B, h]` result)
//! waits.
//!
//! The backend records (CUDA graphs, [`dinov2_kernels::Graph`]): the model replays the passes of
//! shapes it has seen. `DINOV2_CUDA_GRAPHS=0` in the environment, or
//! [`CudaBackend::set_graphs`], turns that off.

use std::sync::Arc;

use dinov2_checkpoint::Activation;
use dinov2_kernels::{
    flag, fold_layer_norm, switch, Act, Buffer, DType, Device, Graph, KernelError, OwnGemm,
    OwnTile, Recorder, RecordingMemory, RowStats, STATS_COLUMNS,
};

use crate::backend::{Backend, Dtype, FoldedNormLinear, OpTime, TokenParams};
use crate::error::{ModelError, Result};
use crate::pooling::Pooling;
use crate::Tensor;

/// Runs the model on one NVIDIA GPU.
#[derive(Clone)]
pub struct CudaBackend {
    device: Arc<Device>,
    dtype: Dtype,
    name: String,
    /// Whether [`Backend::record`] records CUDA graphs.
    graphs: bool,
    /// `DINOV2_FAST_GELU=1`: the exact GELU of a linear layer computed as its tanh
    /// approximation in cuBLASLt's epilogue, in f16/bf16 (see [`CudaBackend::new`]).
    fast_gelu: bool,
    /// Whether a recording's buffers are planned into one arena (see [`Backend::record`]);
    /// `DINOV2_PLANNED_MEMORY=0` leaves them to the graph's allocation nodes, to compare.
    planned_memory: bool,
    /// The residual stream's dtype: f32, or the compute dtype (`DINOV2_RESIDUAL=compute`).
    residual: DType,
    /// `DINOV2_NORM=fold`: the LayerNorms before qkv and the MLP folded into those GEMMs
    /// ([`Backend::fold_norm_linear`]).
    fold_norms: bool,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", self.device.info())
            .field("dtype", &self.dtype)
            .field("graphs", &self.graphs)
            .field("fast_gelu", &self.fast_gelu)
            .field("fold_norms", &self.fold_norms)
            .finish()
    }
}

/// An activation on the device. Clones share the memory; a write to a shared tensor copies it
/// first (copy on write), so the model can keep hidden states while the stream moves on.
#[derive(Clone)]
pub struct CudaTensor {
    buf: Arc<Buffer>,
    /// Set on the output of a LayerNorm folded into the next linear layer (`DINOV2_NORM=fold`):
    /// `buf` is then the residual stream the norm reads, and this what the layer needs to
    /// normalize its sums. Only [`Backend::linear`] takes such a tensor.
    pending: Option<Arc<PendingNorm>>,
}

/// A LayerNorm left to the linear layer after it ([`CudaTensor`]).
struct PendingNorm {
    /// Each row's (mean, M2) pairs, `[rows, parts, 2]` (`dinov2_kernels::RowStats`); `None`
    /// where no kernel wrote them, and the layer normalizes the rows first.
    stats: Option<Buffer>,
    eps: f32,
}

impl CudaTensor {
    fn new(buf: Buffer) -> Self {
        CudaTensor {
            buf: Arc::new(buf),
            pending: None,
        }
    }

    /// The LayerNorm of the residual stream `x`, left to the next linear layer.
    fn pending_norm(x: &CudaTensor, stats: Option<Buffer>, eps: f64) -> Self {
        let norm = PendingNorm {
            stats,
            eps: eps as f32,
        };
        CudaTensor {
            buf: x.buf.clone(),
            pending: Some(Arc::new(norm)),
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        self.buf.shape()
    }

    /// The element type on the device.
    pub fn dtype(&self) -> DType {
        self.buf.dtype()
    }

    /// The device buffer. (Of a LayerNorm folded into the next linear layer, which never leaves
    /// the model's pass: the residual stream it normalizes.)
    pub fn buffer(&self) -> &Buffer {
        &self.buf
    }

    fn rows(&self) -> usize {
        let last = self.shape().last().copied().unwrap_or(1).max(1);
        self.buf.len() / last
    }

    fn last_dim(&self) -> usize {
        self.shape().last().copied().unwrap_or(1)
    }
}

/// A parameter on the device: in the compute dtype, plus an f32 copy for one-dimensional ones
/// when the compute dtype is not f32.
pub struct CudaWeight {
    main: Buffer,
    f32: Option<Buffer>,
    /// Its part in a LayerNorm folded into a linear layer, if any.
    fold: Option<Fold>,
}

/// A parameter's part in a LayerNorm folded into the linear layer after it
/// ([`Backend::fold_norm_linear`]).
enum Fold {
    /// The norm's weight: a LayerNorm with it leaves the normalization to that layer.
    Norm,
    /// That layer's folded weight: its column sums (f32), and ones and zeros `[k]` (a
    /// LayerNorm without affine, for rows whose statistics no kernel wrote).
    Linear {
        colsum: Buffer,
        ones: Box<CudaWeight>,
        zeros: Box<CudaWeight>,
    },
}

impl CudaWeight {
    /// The parameter in the compute dtype.
    pub fn buffer(&self) -> &Buffer {
        &self.main
    }

    /// The parameter in f32 (one-dimensional parameters, or everything when computing in f32).
    fn as_f32(&self) -> &Buffer {
        self.f32.as_ref().unwrap_or(&self.main)
    }

    fn shape(&self) -> &[usize] {
        self.main.shape()
    }
}

/// Which GEMMs run where, for reports: `cublasLt`, or our Hopper kernels for `fused` (the
/// linear layers followed by the exact GELU) or `all` of them, with their tile width, and
/// whether the MLP's residual update runs in a GEMM's epilogue; `fast GELU` when
/// `DINOV2_FAST_GELU=1`.
fn gemm_details((policy, tile): (OwnGemm, OwnTile), fast_gelu: bool) -> String {
    let ours = match policy {
        OwnGemm::Off => None,
        OwnGemm::Fused => Some("where the exact GELU follows"),
        OwnGemm::All => Some("where they run the shape"),
    };
    let mut s = match ours {
        None => "cublasLt".to_string(),
        Some(scope) => {
            let kind = match tile {
                OwnTile::Tma => "TMA, warp-specialized, ",
                OwnTile::Tma2 => "TMA multicast in clusters of 2, warp-specialized, ",
                OwnTile::PingPong => "TMA, persistent, ping-pong, ",
                OwnTile::PingPong2 => "TMA multicast in clusters of 2, persistent, ping-pong, ",
                OwnTile::N128 | OwnTile::N256 => "",
            };
            let cols = tile.cols();
            let residual = if policy == OwnGemm::All && tile.persistent() {
                "; the MLP's residual update in its output layer's epilogue"
            } else {
                ""
            };
            format!("ours (sm_90a, {kind}128x{cols} tiles) {scope}, else cublasLt{residual}")
        }
    };
    if fast_gelu {
        s.push_str("; fast GELU");
    }
    s
}

fn kernel_dtype(dtype: Dtype) -> DType {
    match dtype {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
    }
}

fn kernel_act(act: Activation) -> Act {
    match act {
        Activation::Gelu => Act::Gelu,
        Activation::GeluTanh => Act::GeluTanh,
        Activation::QuickGelu => Act::QuickGelu,
        Activation::Relu => Act::Relu,
        Activation::Relu6 => Act::Relu6,
        Activation::Selu => Act::Selu,
        Activation::Silu => Act::Silu,
        Activation::Tanh => Act::Tanh,
        Activation::Sigmoid => Act::Sigmoid,
        Activation::Identity => Act::Identity,
    }
}

fn with_last(shape: &[usize], last: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    if let Some(l) = s.last_mut() {
        *l = last;
    }
    s
}

impl CudaBackend {
    /// Opens GPU `ordinal` computing in `dtype`. Fails with a clear message where there is no
    /// driver, no GPU or no cuBLAS (set LD_LIBRARY_PATH to the directory of libcublas.so.13).
    ///
    /// In f16 and bf16, a linear layer followed by the tanh approximation of GELU (`gelu_new`,
    /// `gelu_pytorch_tanh`) runs it in cuBLASLt's GEMM epilogue, one pass over the activations
    /// less. `DINOV2_FAST_GELU=1` does the same for the exact GELU of the released checkpoints,
    /// replacing it by that approximation: it differs by at most 4.7e-4 per activation (at
    /// x = 2.70, where f16's spacing is 2e-3). Off by default: it is not transformers'
    /// function (the device script measures how far it moves the outputs).
    ///
    /// On an H100/H200, `DINOV2_GEMM=fused` runs the linear layers followed by the exact GELU on
    /// our own GEMM kernel, with the GELU in its epilogue (`own`: every linear layer it can run);
    /// see `dinov2_kernels::OwnGemm`. Off by default until measured on a GPU.
    pub fn new(ordinal: usize, dtype: Dtype) -> Result<Self> {
        let name = format!("cuda:{ordinal}");
        let setting = |e: KernelError| ModelError::Backend {
            backend: name.clone(),
            reason: e.to_string(),
        };
        let device = Device::new(ordinal).map_err(&setting)?;
        // Events cannot time the inside of a recording: profiling runs every pass eagerly.
        let graphs = flag("DINOV2_CUDA_GRAPHS", true).map_err(&setting)? && !device.profiling();
        let fast_gelu = flag("DINOV2_FAST_GELU", false).map_err(&setting)?;
        let planned_memory = flag("DINOV2_PLANNED_MEMORY", true).map_err(&setting)?;
        let residual = match switch("DINOV2_RESIDUAL", &["f32", "compute"]).map_err(&setting)? {
            Some("compute") => kernel_dtype(dtype),
            _ => DType::F32,
        };
        let fold_norms =
            switch("DINOV2_NORM", &["rows", "fold"]).map_err(&setting)? == Some("fold");
        let (policy, tile) = device.own_gemm();
        if fold_norms && (residual == DType::F32 || policy != OwnGemm::All || !tile.persistent()) {
            return Err(ModelError::Backend {
                backend: name,
                reason: "DINOV2_NORM=fold runs on our persistent GEMM over a 16-bit residual \
                         stream: it needs --dtype f16 or bf16, DINOV2_RESIDUAL=compute, \
                         DINOV2_GEMM=own and DINOV2_GEMM_TILE=pp or pp2"
                    .into(),
            });
        }
        Ok(CudaBackend {
            dtype,
            name,
            graphs,
            fast_gelu,
            planned_memory,
            residual,
            fold_norms,
            device: Arc::new(device),
        })
    }

    /// Turns CUDA graph recording on or off (on unless `DINOV2_CUDA_GRAPHS=0`). Set it before
    /// loading a model: the model asks once.
    ///
    /// A capture records all work queued on the device's stream: a model serializes its own
    /// passes around it, but models sharing one backend (clones) and used from several threads
    /// at once should turn graphs off.
    pub fn set_graphs(&mut self, on: bool) {
        self.graphs = on;
    }

    /// A backend on the same GPU with its own stream and cuBLAS handles (and the same dtype and
    /// graph setting): work queued on the two runs concurrently. Models load their weights onto
    /// each separately.
    pub fn another_stream(&self) -> Result<Self> {
        let mut other = CudaBackend::new(self.device.info().ordinal, self.dtype)?;
        other.graphs = self.graphs;
        other.fast_gelu = self.fast_gelu;
        other.planned_memory = self.planned_memory;
        other.residual = self.residual;
        other.fold_norms = self.fold_norms;
        let (policy, tile) = self.device.own_gemm();
        other
            .device
            .set_own_gemm(policy, tile)
            .map_err(|e| other.err(e))?;
        Ok(other)
    }

    /// The device, for direct use of the kernels (benchmarks, tests).
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// The compute dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.device.synchronize().map_err(|e| self.err(e))
    }

    fn err(&self, e: KernelError) -> ModelError {
        let (backend, reason) = (self.name.clone(), e.to_string());
        if e.is_out_of_memory() {
            ModelError::OutOfMemory { backend, reason }
        } else {
            ModelError::Backend { backend, reason }
        }
    }

    fn compute(&self) -> DType {
        kernel_dtype(self.dtype)
    }

    /// An error where `t` is a LayerNorm left to the next linear layer: no other operation may
    /// read it (its buffer holds the stream, not the normed rows).
    fn settled(&self, t: &CudaTensor) -> Result<()> {
        match t.pending {
            None => Ok(()),
            Some(_) => Err(ModelError::Backend {
                backend: self.name.clone(),
                reason: "a LayerNorm folded into the next linear layer reached another \
                         operation (DINOV2_NORM=fold)"
                    .into(),
            }),
        }
    }

    /// `t` in the compute dtype (a cast when it is not).
    fn in_compute(&self, t: &CudaTensor) -> Result<CudaTensor> {
        self.settled(t)?;
        if t.dtype() == self.compute() {
            return Ok(t.clone());
        }
        let mut out = self
            .device
            .alloc(self.compute(), t.shape())
            .map_err(|e| self.err(e))?;
        self.device
            .cast(&t.buf, &mut out)
            .map_err(|e| self.err(e))?;
        Ok(CudaTensor::new(out))
    }

    /// The residual stream `x` as a buffer of the stream's dtype this call may write (copied
    /// when shared).
    fn residual<'a>(&self, x: &'a mut CudaTensor) -> Result<&'a mut Buffer> {
        if x.dtype() != self.residual {
            let mut out = self
                .device
                .alloc(self.residual, x.shape())
                .map_err(|e| self.err(e))?;
            self.device
                .cast(&x.buf, &mut out)
                .map_err(|e| self.err(e))?;
            x.buf = Arc::new(out);
        } else if Arc::get_mut(&mut x.buf).is_none() {
            let copy = self.device.copy(&x.buf).map_err(|e| self.err(e))?;
            x.buf = Arc::new(copy);
        }
        Ok(Arc::get_mut(&mut x.buf).expect("unique after the copy above"))
    }

    /// The buffer of `t` for writing in place, which needs `t` to be its only owner: a write
    /// through a shared buffer would change the tensors sharing it.
    fn exclusive<'a>(&self, t: &'a mut CudaTensor, what: &str) -> Result<&'a mut Buffer> {
        Arc::get_mut(&mut t.buf).ok_or_else(|| ModelError::Backend {
            backend: self.name.clone(),
            reason: format!("{what}: the destination tensor is shared"),
        })
    }

    /// The LayerNorm (`eps`) of the residual stream `x` left to the next linear layer: its rows'
    /// statistics where a kernel writes them (`row_stats`), else none (the layer normalizes).
    fn stats_for_fold(&self, x: &CudaTensor, eps: f64) -> Result<CudaTensor> {
        self.settled(x)?;
        let (rows, h) = (x.rows(), x.last_dim());
        let stats = self.device.profile_op("row_stats", || {
            if x.dtype() != self.compute() {
                return Ok::<_, ModelError>(None);
            }
            let mut stats = self.alloc(DType::F32, &[rows, 1, 2])?;
            let ran = self
                .device
                .row_stats(&x.buf, &mut stats, rows, h)
                .map_err(|e| self.err(e))?;
            Ok(ran.then_some(stats))
        })?;
        Ok(CudaTensor::pending_norm(x, stats, eps))
    }

    /// [`Backend::linear`] of a LayerNorm's output with the norm folded into the layer
    /// (`DINOV2_NORM=fold`): `x` a pending norm of the stream, `weight` and `bias` the folded
    /// ones. On our persistent GEMM where the device runs it (`Device::linear_folded`);
    /// otherwise the rows normalized without affine and the folded layer, which is the same
    /// function.
    fn folded_linear(
        &self,
        x: &CudaTensor,
        weight: &CudaWeight,
        bias: Option<&CudaWeight>,
        act: Activation,
    ) -> Result<CudaTensor> {
        let (
            Some(norm),
            Some(Fold::Linear {
                colsum,
                ones,
                zeros,
            }),
            Some(bias),
        ) = (&x.pending, &weight.fold, bias)
        else {
            return Err(ModelError::Backend {
                backend: self.name.clone(),
                reason: "a folded LayerNorm and a linear layer that does not fold it (or the \
                         reverse)"
                    .into(),
            });
        };
        let (n, k) = (weight.shape()[0], weight.shape()[1]);
        let rows = x.rows();
        let mut y = self.alloc(self.compute(), &with_last(x.shape(), n))?;
        if let Some(stats) = &norm.stats {
            let stats = RowStats {
                stats,
                parts: stats.shape()[1],
                eps: norm.eps,
            };
            let ran = self.device.profile_op("gemm_folded_norm", || {
                self.device
                    .linear_folded(
                        &x.buf,
                        &weight.main,
                        colsum,
                        bias.as_f32(),
                        stats,
                        &mut y,
                        (rows, n, k),
                        self.gemm_act(act),
                    )
                    .map_err(|e| self.err(e))
            })?;
            if ran {
                return Ok(CudaTensor::new(y));
            }
        }
        drop(y);
        let stream = CudaTensor {
            buf: x.buf.clone(),
            pending: None,
        };
        let normed = self.layer_norm(&stream, ones, zeros, norm.eps as f64)?;
        self.gemm(&normed, &weight.main, Some(bias.as_f32()), act)
    }

    /// The activation a GEMM applies for `act`: the exact GELU as its tanh approximation under
    /// `DINOV2_FAST_GELU=1` in f16/bf16.
    fn gemm_act(&self, act: Activation) -> Act {
        match kernel_act(act) {
            Act::Gelu if self.fast_gelu && self.compute() != DType::F32 => Act::GeluTanh,
            act => act,
        }
    }

    /// `act(x · wᵀ + b)` with `weight` `[n, k]` in the compute dtype and `bias` in it or f32
    /// ([`Backend::linear`]).
    fn gemm(
        &self,
        x: &CudaTensor,
        weight: &Buffer,
        bias: Option<&Buffer>,
        act: Activation,
    ) -> Result<CudaTensor> {
        let x = self.in_compute(x)?;
        let (n, k) = (weight.shape()[0], weight.shape()[1]);
        let rows = x.rows();
        let mut y = self.alloc(self.compute(), &with_last(x.shape(), n))?;
        let act = self.gemm_act(act);
        // The activation in the GEMM's epilogue where one runs it, else in its own pass.
        let (_, rest) = self.device.profile_op("gemm", || {
            self.device
                .linear_fusing(&x.buf, weight, bias, &mut y, (rows, n, k), act)
                .map_err(|e| self.err(e))
        })?;
        if rest != Act::Identity {
            self.device.profile_op("activation", || {
                self.device
                    .bias_act(&mut y, None, rows, n, rest)
                    .map_err(|e| self.err(e))
            })?;
        }
        Ok(CudaTensor::new(y))
    }

    fn alloc(&self, dtype: DType, shape: &[usize]) -> Result<Buffer> {
        self.device.alloc(dtype, shape).map_err(|e| self.err(e))
    }

    /// Runs `body` inside a capture with `memory`, for the caller to finish or plan from. The
    /// capture ends whatever the body did (the recorder ends it when dropped, even on a panic),
    /// so the stream runs the eager passes that follow a failed recording.
    fn capture(
        &self,
        body: &mut dyn FnMut() -> Result<()>,
        memory: RecordingMemory,
    ) -> Result<Recorder<'_>> {
        let recorder = self
            .device
            .begin_recording(memory)
            .map_err(|e| self.err(e))?;
        if let Err(e) = body() {
            return Err(match recorder.abandon() {
                Ok(()) => e,
                Err(end) => ModelError::Backend {
                    backend: self.name.clone(),
                    reason: format!("{e}; ending the CUDA graph capture also failed: {end}"),
                },
            });
        }
        Ok(recorder)
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Weight = CudaWeight;
    type Recording = Graph;

    /// Enough rows (128 x 257 tokens) for the GEMMs to fill an H100.
    const BATCH_SIZE: usize = 128;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn weight(&self, values: Vec<f32>, shape: Vec<usize>) -> Result<CudaWeight> {
        if shape.iter().product::<usize>() != values.len() {
            return Err(ModelError::Backend {
                backend: self.name.clone(),
                reason: format!("weight of shape {shape:?} given {} values", values.len()),
            });
        }
        let main = self
            .device
            .upload(&values, &shape, self.compute())
            .map_err(|e| self.err(e))?;
        let f32 = if shape.len() == 1 && self.compute() != DType::F32 {
            Some(
                self.device
                    .upload(&values, &shape, DType::F32)
                    .map_err(|e| self.err(e))?,
            )
        } else {
            None
        };
        Ok(CudaWeight {
            main,
            f32,
            fold: None,
        })
    }

    /// Under `DINOV2_NORM=fold`, where our persistent GEMM takes the layer's shape and a warp
    /// the norm's rows (`k % 4 == 0`, `k <= 2048`): the folded weights of `fold_layer_norm`.
    fn fold_norm_linear(
        &self,
        (gamma, beta): (&[f32], &[f32]),
        weight: &[f32],
        bias: Option<&[f32]>,
        (n, k): (usize, usize),
    ) -> Result<Option<FoldedNormLinear<CudaWeight>>> {
        if !self.fold_norms || self.device.folded_gemm(n, k).is_none() || k % 4 != 0 || k > 2048 {
            return Ok(None);
        }
        let Some(f) = fold_layer_norm(weight, bias, gamma, beta, (n, k), self.compute()) else {
            return Ok(None);
        };
        let colsum = self
            .device
            .upload(&f.colsum, &[n], DType::F32)
            .map_err(|e| self.err(e))?;
        let mut norm_weight = self.weight(gamma.to_vec(), vec![k])?;
        norm_weight.fold = Some(Fold::Norm);
        let mut folded = self.weight(f.weight, vec![n, k])?;
        folded.fold = Some(Fold::Linear {
            colsum,
            ones: Box::new(self.weight(vec![1.0; k], vec![k])?),
            zeros: Box::new(self.weight(vec![0.0; k], vec![k])?),
        });
        Ok(Some(FoldedNormLinear {
            norm_weight,
            norm_bias: self.weight(beta.to_vec(), vec![k])?,
            weight: folded,
            bias: self.weight(f.bias, vec![n])?,
        }))
    }

    fn patch_weight(&self, values: Vec<f32>, n: usize, k: usize) -> Result<CudaWeight> {
        let kp = padded_patch_k(k);
        if kp == k || values.len() != n * k {
            return self.weight(values, vec![n, k]);
        }
        let mut padded = vec![0.0f32; n * kp];
        for (dst, src) in padded.chunks_exact_mut(kp).zip(values.chunks_exact(k)) {
            dst[..k].copy_from_slice(src);
        }
        self.weight(padded, vec![n, kp])
    }

    /// Pixels go up in the compute dtype: half the bytes of f32 to copy and, for a recorded
    /// pass, to keep as its input. The patch embedding's `im2col` would round them to that
    /// dtype on the device anyway, in the same way, so the results are the same.
    fn upload(&self, tensor: &Tensor) -> Result<CudaTensor> {
        self.device.profile_op("upload", || {
            let buf = self
                .device
                .upload(&tensor.data, &tensor.shape, self.compute())
                .map_err(|e| self.err(e))?;
            Ok(CudaTensor::new(buf))
        })
    }

    fn download(&self, tensor: &CudaTensor) -> Result<Tensor> {
        self.settled(tensor)?;
        self.device.profile_op("download", || {
            let data = self.device.download(&tensor.buf).map_err(|e| self.err(e))?;
            Ok(Tensor {
                shape: tensor.shape().to_vec(),
                data,
            })
        })
    }

    fn pool_on_device(
        &self,
        tokens: &CudaTensor,
        prefix: usize,
        pooling: Pooling,
    ) -> Result<Option<CudaTensor>> {
        self.settled(tokens)?;
        self.device.profile_op("pool", || {
            let (cls, mean) = match pooling {
                Pooling::Cls => (true, false),
                Pooling::Mean => (false, true),
                Pooling::ClsMean => (true, true),
                // The patch grid is most of the tokens: they are downloaded as they are.
                Pooling::Patch | Pooling::Registers | Pooling::Tokens => return Ok(None),
            };
            let [b, s, h] = tokens.shape()[..] else {
                return Err(ModelError::input("tokens", "expected 3 dimensions"));
            };
            let width = (cls as usize + mean as usize) * h;
            let mut out = self.alloc(DType::F32, &[b, width])?;
            self.device
                .pool_tokens(&tokens.buf, &mut out, (b, s, h), prefix, cls, mean)
                .map_err(|e| self.err(e))?;
            Ok(Some(CudaTensor::new(out)))
        })
    }

    fn can_record(&self) -> bool {
        self.graphs && self.device.records()
    }

    /// With planned memory (the default), `body` is captured twice: once to trace its
    /// allocations, which are then planned into one arena shared with the device's other
    /// recordings, and once for the graph, whose buffers are ranges of that arena
    /// ([`dinov2_kernels::MemoryPlan`]). The plan for ViT-B/14 at batch 64 in f16 is the 169 MiB
    /// of the buffers alive at once; run 4 measured 386 MiB for recorded passes of that shape
    /// with the graph's allocation nodes. The first capture costs host time once per shape.
    fn record(&self, body: &mut dyn FnMut() -> Result<()>) -> Result<Option<Graph>> {
        if !self.can_record() {
            return Ok(None);
        }
        let memory = if self.planned_memory {
            let plan = self
                .capture(body, RecordingMemory::Traced)?
                .plan()
                .map_err(|e| self.err(e))?;
            RecordingMemory::Planned(Arc::new(plan))
        } else {
            RecordingMemory::Graph
        };
        let graph = self
            .capture(body, memory)?
            .finish()
            .map_err(|e| self.err(e))?;
        // Errors of the eager pass before the recording surface here, as at any wait.
        self.synchronize()?;
        // That pass left its memory in the stream's pool; replays use the arena or the graph's
        // own, so hand the pool's back (what the bench's memory figure sees). Best effort: a
        // pool that cannot be trimmed only keeps more memory. The pool is the device's, shared
        // by every stream: another model's stream on this device (`--streams`) loses its
        // cached blocks too, and allocates them afresh in its next unrecorded pass. That is
        // once per recorded shape, and results do not change.
        let _ = self.device.release_cached_memory();
        Ok(Some(graph))
    }

    fn replay(&self, graph: &Graph) -> Result<()> {
        self.device.replay(graph).map_err(|e| self.err(e))
    }

    fn is_current(&self, graph: &Graph) -> bool {
        self.device.recording_is_current(graph)
    }

    fn duplicate(&self, tensor: &CudaTensor) -> Result<CudaTensor> {
        let copy = self.device.copy(&tensor.buf).map_err(|e| self.err(e))?;
        Ok(CudaTensor::new(copy))
    }

    fn copy_into(&self, src: &CudaTensor, dst: &mut CudaTensor) -> Result<()> {
        let dev = self.device.clone();
        let out = self.exclusive(dst, "copy_into")?;
        dev.copy_into(&src.buf, out).map_err(|e| self.err(e))
    }

    fn upload_into(&self, src: &Tensor, dst: &mut CudaTensor) -> Result<()> {
        self.device.profile_op("upload", || {
            if src.shape != dst.shape() {
                return Err(ModelError::Backend {
                    backend: self.name.clone(),
                    reason: format!(
                        "upload_into: source shape {:?}, destination shape {:?}",
                        src.shape,
                        dst.shape()
                    ),
                });
            }
            let dev = self.device.clone();
            let out = self.exclusive(dst, "upload_into")?;
            dev.upload_into(&src.data, out).map_err(|e| self.err(e))
        })
    }

    fn device_name(&self) -> String {
        self.device.info().name.clone()
    }

    fn device_details(&self) -> Vec<(&'static str, String)> {
        let info = self.device.info();
        let (major, minor) = info.compute_capability;
        let mut details = vec![
            ("cuda_driver", info.driver()),
            ("cublas", info.cublas()),
            ("compute_capability", format!("{major}.{minor}")),
            ("multiprocessors", info.multiprocessors.to_string()),
            ("kernels", info.kernel_code().to_string()),
            ("gemm", gemm_details(self.device.own_gemm(), self.fast_gelu)),
            ("residual_stream", self.residual.to_string()),
            (
                "layer_norm",
                if self.fold_norms {
                    "folded into qkv and the MLP's input GEMM"
                } else {
                    "rows"
                }
                .to_string(),
            ),
            ("attention", self.device.attention_kernels().to_string()),
        ];
        if let Some(why) = &info.hopper_error {
            details.push(("sm90a_kernels", format!("not loaded: {why}")));
        }
        details
    }

    fn memory_used(&self) -> Option<usize> {
        self.device.synchronize().ok()?;
        let (free, total) = self.device.memory().ok()?;
        Some(total.saturating_sub(free))
    }

    fn memory_parts(&self) -> Vec<(&'static str, u64)> {
        // A report only: a failure to read it leaves it empty.
        self.device.memory_parts().unwrap_or_default()
    }

    fn take_op_profile(&self) -> Result<Option<Vec<OpTime>>> {
        if !self.device.profiling() {
            return Ok(None);
        }
        self.device
            .take_profile()
            .map(Some)
            .map_err(|e| self.err(e))
    }

    fn release_cached_memory(&self) -> Result<()> {
        self.device.release_cached_memory().map_err(|e| self.err(e))
    }

    fn patch_embed(
        &self,
        pixels: &CudaTensor,
        weight: &CudaWeight,
        bias: &CudaWeight,
        patch: usize,
    ) -> Result<CudaTensor> {
        self.device.profile_op("patch_embed", || {
            let [b, c, h, w] = pixels.shape()[..] else {
                return Err(ModelError::input("pixel_values", "expected 4 dimensions"));
            };
            // im2col reads f32 pixels or pixels in the compute dtype (what `upload` makes).
            let px = if pixels.dtype() == DType::F32 {
                pixels.clone()
            } else {
                self.in_compute(pixels)?
            };
            let (gh, gw) = (h / patch.max(1), w / patch.max(1));
            // k: the weight's row, C·p·p padded by `patch_weight` (zero columns in both).
            let (rows, k, n) = (b * gh * gw, weight.shape()[1], weight.shape()[0]);
            if k != padded_patch_k(c * patch * patch) {
                return Err(ModelError::input(
                    "pixel_values",
                    format!(
                        "{c} channels of {patch}x{patch} patches, but the patch weight is {:?}",
                        weight.shape()
                    ),
                ));
            }
            let mut cols = self.alloc(self.compute(), &[rows, k])?;
            self.device
                .im2col(&px.buf, &mut cols, b, c, h, w, patch)
                .map_err(|e| self.err(e))?;
            let mut y = self.alloc(self.compute(), &[b, gh * gw, n])?;
            self.device
                .linear(&cols, &weight.main, Some(&bias.main), &mut y, (rows, n, k))
                .map_err(|e| self.err(e))?;
            Ok(CudaTensor::new(y))
        })
    }

    fn embed_tokens(
        &self,
        patches: &CudaTensor,
        p: TokenParams<'_, CudaWeight>,
    ) -> Result<CudaTensor> {
        self.device.profile_op("embed_tokens", || {
            let [b, n, h] = patches.shape()[..] else {
                return Err(ModelError::input(
                    "patch embeddings",
                    "expected 3 dimensions",
                ));
            };
            let patches = self.in_compute(patches)?;
            let r = p.registers.map_or(0, |t| t.shape()[0]);
            let mask = match p.mask {
                Some((token, m)) => {
                    let bytes: Vec<u8> = m.iter().map(|&v| v as u8).collect();
                    let md = self
                        .device
                        .upload_bytes(&bytes, &[bytes.len()])
                        .map_err(|e| self.err(e))?;
                    Some((token, md))
                }
                None => None,
            };
            let mut x = self.alloc(self.residual, &[b, 1 + r + n, h])?;
            self.device
                .embed_tokens(
                    &patches.buf,
                    p.cls.as_f32(),
                    &p.positions.main,
                    p.registers.map(|t| &t.main),
                    mask.as_ref().map(|(t, m)| (t.as_f32(), m)),
                    &mut x,
                    (b, n, h),
                )
                .map_err(|e| self.err(e))?;
            Ok(CudaTensor::new(x))
        })
    }

    fn layer_norm(
        &self,
        x: &CudaTensor,
        weight: &CudaWeight,
        bias: &CudaWeight,
        eps: f64,
    ) -> Result<CudaTensor> {
        if matches!(weight.fold, Some(Fold::Norm)) {
            return self.stats_for_fold(x, eps);
        }
        self.device.profile_op("layer_norm", || {
            let h = x.last_dim();
            // f32 input (the residual stream) or compute-dtype input; output in the compute dtype.
            let x = if x.dtype() == DType::F32 || x.dtype() == self.compute() {
                x.clone()
            } else {
                self.in_compute(x)?
            };
            let mut y = self.alloc(self.compute(), x.shape())?;
            self.device
                .layer_norm(
                    &x.buf,
                    weight.as_f32(),
                    bias.as_f32(),
                    &mut y,
                    x.rows(),
                    h,
                    eps as f32,
                )
                .map_err(|e| self.err(e))?;
            Ok(CudaTensor::new(y))
        })
    }

    fn linear(
        &self,
        x: &CudaTensor,
        weight: &CudaWeight,
        bias: Option<&CudaWeight>,
        act: Activation,
    ) -> Result<CudaTensor> {
        if x.pending.is_some() || weight.fold.is_some() {
            return self.folded_linear(x, weight, bias, act);
        }
        self.gemm(x, &weight.main, bias.map(|b| &b.main), act)
    }

    fn swiglu(&self, x: &CudaTensor) -> Result<CudaTensor> {
        self.device.profile_op("swiglu", || {
            let x = self.in_compute(x)?;
            let f = x.last_dim() / 2;
            let mut out = self.alloc(self.compute(), &with_last(x.shape(), f))?;
            self.device
                .swiglu(&x.buf, &mut out, x.rows(), f)
                .map_err(|e| self.err(e))?;
            Ok(CudaTensor::new(out))
        })
    }

    fn attention(
        &self,
        qkv: &CudaTensor,
        heads: usize,
        want_probs: bool,
    ) -> Result<(CudaTensor, Option<CudaTensor>)> {
        self.device.profile_op("attention", || {
            let [b, n, three_h] = qkv.shape()[..] else {
                return Err(ModelError::input("qkv", "expected 3 dimensions"));
            };
            let qkv = self.in_compute(qkv)?;
            let h = three_h / 3;
            let d = h / heads.max(1);
            let scale = (d as f64).powf(-0.5) as f32;
            let mut out = self.alloc(self.compute(), &[b, n, h])?;
            let probs = if want_probs {
                let mut probs = self.alloc(DType::F32, &[b, heads, n, n])?;
                self.device
                    .attention_probs(&qkv.buf, &mut out, &mut probs, b, n, heads, d, scale)
                    .map_err(|e| self.err(e))?;
                Some(CudaTensor::new(probs))
            } else {
                self.device
                    .attention(&qkv.buf, &mut out, b, n, heads, d, scale)
                    .map_err(|e| self.err(e))?;
                None
            };
            Ok((CudaTensor::new(out), probs))
        })
    }

    fn add_scaled(
        &self,
        x: &mut CudaTensor,
        branch: &CudaTensor,
        gamma: &CudaWeight,
    ) -> Result<()> {
        self.device.profile_op("add_scaled", || {
            let h = gamma.main.len();
            let rows = x.rows();
            let branch = self.in_compute(branch)?;
            let dev = self.device.clone();
            let xb = self.residual(x)?;
            dev.add_scaled(xb, &branch.buf, gamma.as_f32(), rows, h)
                .map_err(|e| self.err(e))
        })
    }

    fn add_scaled_layer_norm(
        &self,
        x: &mut CudaTensor,
        branch: &CudaTensor,
        gamma: &CudaWeight,
        weight: &CudaWeight,
        bias: &CudaWeight,
        eps: f64,
    ) -> Result<CudaTensor> {
        if matches!(weight.fold, Some(Fold::Norm)) {
            // The update and the rows' statistics in one pass where a kernel runs it.
            let stats = self.device.profile_op("add_scaled_stats", || {
                let h = gamma.main.len();
                let rows = x.rows();
                let branch = self.in_compute(branch)?;
                let mut stats = self.alloc(DType::F32, &[rows, 1, 2])?;
                let dev = self.device.clone();
                let xb = self.residual(x)?;
                let ran = dev
                    .add_scaled_stats(xb, &branch.buf, gamma.as_f32(), &mut stats, rows, h)
                    .map_err(|e| self.err(e))?;
                Ok::<_, ModelError>(ran.then_some(stats))
            })?;
            return match stats {
                Some(stats) => Ok(CudaTensor::pending_norm(x, Some(stats), eps)),
                None => {
                    self.add_scaled(x, branch, gamma)?;
                    self.stats_for_fold(x, eps)
                }
            };
        }
        self.device.profile_op("add_scaled_layer_norm", || {
            let h = gamma.main.len();
            let rows = x.rows();
            let branch = self.in_compute(branch)?;
            let mut y = self.alloc(self.compute(), x.shape())?;
            let dev = self.device.clone();
            let xb = self.residual(x)?;
            dev.add_scaled_layer_norm(
                xb,
                &branch.buf,
                gamma.as_f32(),
                weight.as_f32(),
                bias.as_f32(),
                &mut y,
                rows,
                h,
                eps as f32,
            )
            .map_err(|e| self.err(e))?;
            Ok(CudaTensor::new(y))
        })
    }

    /// The residual update in our persistent GEMM's epilogue where the device runs it
    /// ([`Device::linear_residual`]: the branch is never written), then the LayerNorm; else the
    /// product, then the fused update + LayerNorm. The same values either way.
    fn linear_add_scaled_layer_norm(
        &self,
        x: &mut CudaTensor,
        h: CudaTensor,
        weight: &CudaWeight,
        bias: Option<&CudaWeight>,
        gamma: &CudaWeight,
        norm_weight: &CudaWeight,
        norm_bias: &CudaWeight,
        eps: f64,
    ) -> Result<CudaTensor> {
        let h = {
            let compute = self.in_compute(&h)?;
            drop(h);
            compute
        };
        let (n, k) = (weight.shape()[0], weight.shape()[1]);
        let fusable = self.device.residual_gemm(n, k).is_some();
        // A folded norm next: the epilogue also writes the updated rows' statistics, a pair
        // each STATS_COLUMNS columns (a stream in the compute type, whole tiles).
        let rows = h.rows();
        let parts = n / STATS_COLUMNS;
        let mut stats = if matches!(norm_weight.fold, Some(Fold::Norm))
            && self.residual == self.compute()
            && n % STATS_COLUMNS == 0
            && fusable
        {
            Some(self.alloc(DType::F32, &[rows, parts, 2])?)
        } else {
            None
        };
        let fused = fusable
            && self.device.profile_op("gemm_residual", || {
                let dev = self.device.clone();
                let stream = self.residual(x)?;
                dev.linear_residual(
                    &h.buf,
                    &weight.main,
                    bias.map(|b| &b.main),
                    gamma.as_f32(),
                    stream,
                    stats.as_mut(),
                    (rows, n, k),
                )
                .map_err(|e| self.err(e))
            })?;
        if fused {
            drop(h);
            if let Some(stats) = stats {
                return Ok(CudaTensor::pending_norm(x, Some(stats), eps));
            }
            return self.layer_norm(x, norm_weight, norm_bias, eps);
        }
        let branch = self.linear(&h, weight, bias, Activation::Identity)?;
        drop(h);
        self.add_scaled_layer_norm(x, &branch, gamma, norm_weight, norm_bias, eps)
    }
}

/// The row length of the patch weight on the device: `C·p·p` rounded up to a multiple of 8, so
/// that rows of f16/bf16 (and f32) are 16-byte aligned for cuBLASLt's fast kernels.
fn padded_patch_k(k: usize) -> usize {
    k.next_multiple_of(8)
}
