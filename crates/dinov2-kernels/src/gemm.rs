//! GEMMs through cuBLAS: `y[m, n] = x[m, k] · w[n, k]ᵀ (+ bias)` in f32, f16 or bf16 with f32
//! accumulation. cuBLASLt runs them with a fused bias epilogue (one plan and algorithm per shape,
//! cached); `cublasGemmEx` is the fallback (and the path when `DINOV2_GEMM=gemmex`). Neither uses
//! `cublas::result::hgemm`, which loads an unversioned libcublas.so and panics in wheel-only setups.
//!
//! Row-major `y = x·wᵀ` is the column-major `yᵀ (n×m) = w (n×k, stored k×n) ᵀ · xᵀ (k×m)`: the
//! "TN" layout, the fastest for cuBLAS.
//!
//! The algorithm of a shape is cuBLASLt's first heuristic choice. With `DINOV2_GEMM_TUNE=1` (or
//! `log`, which also prints the timings to stderr; read when the device opens), a large shape
//! (at least [`TUNE_MIN_MACS`] multiply-adds) is instead timed on its first use, outside CUDA
//! graph capture, over up to [`TUNE_CANDIDATES`] of the heuristic's algorithms, and the fastest
//! is kept. That first use
//! waits for the device, and the choice depends on timing, so two processes may pick different
//! algorithms whose results differ in the last bits: it is off by default.

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::{Arc, Mutex};

use cudarc::cublas::{result as bres, sys as bsys, CudaBlas};
use cudarc::cublaslt::{result as lres, sys as lsys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use crate::buffer::DType;
use crate::error::{DriverContext, KernelError, Result};

/// Which cuBLAS entry point a GEMM went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmPath {
    /// cuBLASLt with the bias fused as an epilogue.
    Lt,
    /// `cublasGemmEx` (bias added by a separate kernel).
    GemmEx,
    /// Our Hopper kernel (`kernels/gemm_sm90a.cu`), bias and activation in its epilogue.
    Own,
}

fn blas_err(context: impl Into<String>) -> impl FnOnce(bres::CublasError) -> KernelError {
    let context = context.into();
    move |e| KernelError::Blas {
        context,
        status: format!("{:?}", e.0),
    }
}

fn lt_err(context: impl Into<String>) -> impl FnOnce(lres::CublasError) -> KernelError {
    let context = context.into();
    move |e| KernelError::Blas {
        context,
        status: format!("{:?}", e.0),
    }
}

fn blas_type(dtype: DType) -> Result<bsys::cudaDataType> {
    Ok(match dtype {
        DType::F32 => bsys::cudaDataType::CUDA_R_32F,
        DType::F16 => bsys::cudaDataType::CUDA_R_16F,
        DType::BF16 => bsys::cudaDataType::CUDA_R_16BF,
        DType::U8 => return Err(KernelError::Unsupported("GEMM over u8".into())),
    })
}

fn lt_type(dtype: DType) -> Result<lsys::cudaDataType> {
    Ok(match dtype {
        DType::F32 => lsys::cudaDataType::CUDA_R_32F,
        DType::F16 => lsys::cudaDataType::CUDA_R_16F,
        DType::BF16 => lsys::cudaDataType::CUDA_R_16BF,
        DType::U8 => return Err(KernelError::Unsupported("GEMM over u8".into())),
    })
}

/// Shapes with at least this many multiply-adds (m·n·k) are tuned under `DINOV2_GEMM_TUNE`:
/// ViT-S/14's smallest GEMM from a batch of about 40 images at 224 px.
pub const TUNE_MIN_MACS: usize = 1 << 32;
/// How many of the heuristic's algorithms a tuned shape times.
pub const TUNE_CANDIDATES: usize = 8;
/// Timed runs per candidate (after one untimed run).
const TUNE_REPEATS: usize = 5;

/// The values `DINOV2_GEMM` takes: `gemmex` (here: `cublasGemmEx` instead of cuBLASLt), and
/// `fused` and `own` (our Hopper GEMMs: `OwnGemm`).
pub(crate) const GEMM_SWITCH: [&str; 3] = ["fused", "own", "gemmex"];

/// `DINOV2_GEMM_TUNE`, read once per device: whether new large shapes are tuned (`1` or
/// `log`), and whether the timings are printed (`log`).
#[derive(Debug, Clone, Copy)]
struct Tuning {
    on: bool,
    log: bool,
}

impl Tuning {
    fn from_env() -> Result<Self> {
        let value = crate::switch("DINOV2_GEMM_TUNE", &["0", "1", "log"])?;
        Ok(Tuning {
            on: matches!(value, Some("1" | "log")),
            log: value == Some("log"),
        })
    }
}

/// A cuBLASLt plan for one shape: descriptor, layouts, the chosen algorithm and the heuristic's
/// other candidates (in its order; the first is `algo` until tuning picks another).
struct Plan {
    desc: lsys::cublasLtMatmulDesc_t,
    a: lsys::cublasLtMatrixLayout_t,
    b: lsys::cublasLtMatrixLayout_t,
    c: lsys::cublasLtMatrixLayout_t,
    algo: lsys::cublasLtMatmulAlgo_t,
    candidates: Vec<lsys::cublasLtMatmulAlgo_t>,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created by this plan, destroyed once; errors at teardown are ignored.
        unsafe {
            let _ = lres::destroy_matrix_layout(self.a);
            let _ = lres::destroy_matrix_layout(self.b);
            let _ = lres::destroy_matrix_layout(self.c);
            let _ = lres::destroy_matmul_desc(self.desc);
        }
    }
}

/// What cuBLASLt applies to the product before writing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Epilogue {
    /// Nothing.
    Plain,
    /// `+ bias[col]`.
    Bias,
    /// `gelu_tanh(· + bias[col])`: the tanh approximation of GELU, as transformers' `gelu_new`
    /// and `gelu_pytorch_tanh` define it (cuBLASLt's GELU epilogue).
    BiasGeluTanh,
}

type PlanKey = (DType, usize, usize, usize, Epilogue);

struct Lt {
    handle: lsys::cublasLtHandle_t,
    plans: HashMap<PlanKey, Option<Plan>>,
    tuning: Tuning,
}

impl Drop for Lt {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: created in Blas::new, destroyed once.
        unsafe {
            let _ = lres::destroy_handle(self.handle);
        }
    }
}

struct Inner {
    blas: CudaBlas,
    lt: Option<Lt>,
    /// Scratch memory of both libraries (they run in stream order, never at once). Given to
    /// cuBLAS too, so that it never allocates its own: what CUDA graph capture needs.
    workspace: CudaSlice<u8>,
}

/// The cuBLAS and cuBLASLt handles of a device, bound to its stream.
pub(crate) struct Blas {
    inner: Mutex<Inner>,
    stream: Arc<CudaStream>,
}

// SAFETY: the raw handles are only used under the mutex.
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

impl Blas {
    pub(crate) fn new(stream: &Arc<CudaStream>, cc_major: i32, want_lt: bool) -> Result<Self> {
        let blas = CudaBlas::new(stream.clone()).map_err(blas_err("creating a cuBLAS handle"))?;
        // NVIDIA's recommended sizes: 32 MiB on Hopper, 4 MiB before.
        let size = if cc_major >= 9 { 32 << 20 } else { 4 << 20 };
        // SAFETY: scratch memory for cuBLAS(Lt), never read by us.
        let workspace =
            unsafe { stream.alloc::<u8>(size) }.ctx(|| "allocating the cuBLAS workspace".into())?;
        {
            let (ws, _guard) = workspace.device_ptr(stream);
            // SAFETY: the handle is live and the workspace outlives it (both in `Inner`, the
            // handle dropped first).
            let status =
                unsafe { bsys::cublasSetWorkspace_v2(*blas.handle(), ws as *mut c_void, size) };
            if status != bsys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(KernelError::Blas {
                    context: "setting the cuBLAS workspace".into(),
                    status: format!("{status:?}"),
                });
            }
        }
        let lt = if want_lt {
            let handle = lres::create_handle().map_err(lt_err("creating a cuBLASLt handle"))?;
            Some(Lt {
                handle,
                plans: HashMap::new(),
                tuning: Tuning::from_env()?,
            })
        } else {
            None
        };
        Ok(Blas {
            inner: Mutex::new(Inner {
                blas,
                lt,
                workspace,
            }),
            stream: stream.clone(),
        })
    }

    /// The handles, for one call, with the device's context current on this thread.
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        let inner = self
            .inner
            .lock()
            .map_err(|_| KernelError::Unsupported("cuBLAS state poisoned by a panic".into()))?;
        self.stream
            .context()
            .bind_to_thread()
            .ctx(|| "binding the context".into())?;
        Ok(inner)
    }

    /// The size of the cuBLAS(Lt) workspace, allocated when the device opened.
    pub(crate) fn workspace_bytes(&self) -> usize {
        self.inner.lock().map_or(0, |inner| inner.workspace.len())
    }

    /// The loaded cuBLAS version (`major·10000 + minor·100 + patch`), 0 when unknown.
    pub(crate) fn version(&self) -> i32 {
        let Ok(inner) = self.inner.lock() else {
            return 0;
        };
        let mut v = 0;
        // SAFETY: writes one int for a live handle.
        let ok = unsafe { bsys::cublasGetVersion_v2(*inner.blas.handle(), &mut v) };
        if ok == bsys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            v
        } else {
            0
        }
    }

    /// `y = x·wᵀ (+ bias)`, or with `gelu_tanh` `y = gelu_tanh(x·wᵀ + bias)`, with raw device
    /// pointers. Returns the path taken; with [`GemmPath::GemmEx`] neither the bias nor the
    /// GELU has been applied (the caller applies them).
    ///
    /// # Safety
    /// `x` holds `m·k`, `w` `n·k`, `y` `m·n` elements of `dtype`, `bias` (when given) `n`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gemm(
        &self,
        dtype: DType,
        (m, n, k): (usize, usize, usize),
        x: u64,
        w: u64,
        bias: Option<u64>,
        y: u64,
        allow_lt: bool,
        gelu_tanh: bool,
    ) -> Result<GemmPath> {
        let mut inner = self.lock()?;
        if allow_lt {
            let Inner { lt, workspace, .. } = &mut *inner;
            if let Some(lt) = lt.as_mut() {
                let epilogue = match (bias.is_some(), gelu_tanh) {
                    (true, true) => Epilogue::BiasGeluTanh,
                    (true, false) => Epilogue::Bias,
                    (false, false) => Epilogue::Plain,
                    (false, true) => {
                        return Err(KernelError::Unsupported(
                            "the GELU epilogue without a bias".into(),
                        ))
                    }
                };
                let dims = (m, n, k);
                if lt_matmul(
                    lt,
                    workspace,
                    &self.stream,
                    dtype,
                    dims,
                    x,
                    w,
                    bias,
                    y,
                    epilogue,
                )? {
                    return Ok(GemmPath::Lt);
                }
            }
        }
        let p = col_major_gemm((m, n, k));
        let t = blas_type(dtype)?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        bres::gemm_ex(
            *inner.blas.handle(),
            blas_op(p.transa),
            blas_op(p.transb),
            dim(p.m)?,
            dim(p.n)?,
            dim(p.k)?,
            (&alpha) as *const f32 as *const c_void,
            w as *const c_void,
            t,
            dim(p.a.2)?,
            x as *const c_void,
            t,
            dim(p.b.2)?,
            (&beta) as *const f32 as *const c_void,
            y as *mut c_void,
            t,
            dim(p.c.2)?,
            bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .map_err(blas_err(format!("cublasGemmEx {dtype} m={m} n={n} k={k}")))?;
        Ok(GemmPath::GemmEx)
    }
}

impl Blas {
    /// `C_i = alpha · op(A_i) · op(B_i)` for each matrix `i` of `g` (`cublasGemmStridedBatchedEx`,
    /// f32 accumulation) over the buffers at the device addresses `a`, `b` and `c`: A and B of
    /// type `ab`, C of type `ct` (`ab` or f32).
    ///
    /// # Safety
    /// Every matrix `g` addresses lies inside the allocation at its operand's address.
    pub(crate) unsafe fn gemm_batched(
        &self,
        g: &BatchedGemm,
        alpha: f32,
        (ab, ct): (DType, DType),
        (a, b, c): (u64, u64, u64),
    ) -> Result<()> {
        let inner = self.lock()?;
        let (t, tc) = (blas_type(ab)?, blas_type(ct)?);
        let at = |base: u64, o: &StridedOperand, size: usize| base + (o.offset * size) as u64;
        let beta = 0.0f32;
        let stride = |v: usize| {
            i64::try_from(v)
                .map_err(|_| KernelError::Unsupported(format!("GEMM stride {v} > i64::MAX")))
        };
        bres::gemm_strided_batched_ex(
            *inner.blas.handle(),
            blas_op(g.transa),
            blas_op(g.transb),
            dim(g.m)?,
            dim(g.n)?,
            dim(g.k)?,
            (&alpha) as *const f32 as *const c_void,
            at(a, &g.a, ab.size()) as *const c_void,
            t,
            dim(g.a.ld)?,
            stride(g.a.stride)?,
            at(b, &g.b, ab.size()) as *const c_void,
            t,
            dim(g.b.ld)?,
            stride(g.b.stride)?,
            (&beta) as *const f32 as *const c_void,
            at(c, &g.c, ct.size()) as *mut c_void,
            tc,
            dim(g.c.ld)?,
            stride(g.c.stride)?,
            dim(g.count)?,
            bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .map_err(blas_err(format!(
            "cublasGemmStridedBatchedEx {ab} -> {ct} m={} n={} k={} x{}",
            g.m, g.n, g.k, g.count
        )))
    }
}

/// One operand of a strided-batched GEMM, column-major: where its first matrix starts (in
/// elements from the buffer's start), its leading dimension, and the distance from one matrix
/// to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StridedOperand {
    pub offset: usize,
    pub ld: usize,
    pub stride: usize,
}

/// `count` products `C_i = op(A_i) · op(B_i)` (`m × k` by `k × n`), as
/// `cublasGemmStridedBatchedEx` defines them on column-major storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchedGemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// `op(A) = Aᵀ`.
    pub transa: bool,
    /// `op(B) = Bᵀ`.
    pub transb: bool,
    pub a: StridedOperand,
    pub b: StridedOperand,
    pub c: StridedOperand,
    pub count: usize,
}

/// The column-major problem cuBLAS solves for the row-major `y[m, n] = x[m, k] · w[n, k]ᵀ`.
///
/// A row-major `[r, c]` array is the column-major `c × r` matrix with leading dimension `c`, so
/// `y` is `D` (`n × m`, ld `n`), `w` is `A` stored `k × n` (ld `k`) and used transposed, `x` is
/// `B` stored `k × m` (ld `k`): `D = Aᵀ · B`, i.e. `yᵀ = w · xᵀ` (the "TN" layout). cuBLASLt's
/// bias epilogue adds a vector of length "rows of D", broadcast over D's columns: `bias[n]`
/// along y's rows, as `nn.Linear` wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ColMajorGemm {
    /// Rows of `op(A)` and `D`.
    pub m: usize,
    /// Columns of `op(B)` and `D`.
    pub n: usize,
    /// The inner dimension.
    pub k: usize,
    /// `op(A) = Aᵀ`.
    pub transa: bool,
    /// `op(B) = Bᵀ`.
    pub transb: bool,
    /// Stored `(rows, cols, leading dimension)` of A (`w`), B (`x`) and C = D (`y`).
    pub a: (usize, usize, usize),
    pub b: (usize, usize, usize),
    pub c: (usize, usize, usize),
}

/// See [`ColMajorGemm`].
pub(crate) fn col_major_gemm((m, n, k): (usize, usize, usize)) -> ColMajorGemm {
    ColMajorGemm {
        m: n,
        n: m,
        k,
        transa: true,
        transb: false,
        a: (k, n, k),
        b: (k, m, k),
        c: (n, m, n),
    }
}

fn blas_op(trans: bool) -> bsys::cublasOperation_t {
    if trans {
        bsys::cublasOperation_t::CUBLAS_OP_T
    } else {
        bsys::cublasOperation_t::CUBLAS_OP_N
    }
}

fn dim(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| KernelError::Unsupported(format!("GEMM dimension {v} > i32::MAX")))
}

/// Runs the GEMM through cuBLASLt; `Ok(false)` when no algorithm supports the shape.
#[allow(clippy::too_many_arguments)]
unsafe fn lt_matmul(
    lt: &mut Lt,
    workspace: &CudaSlice<u8>,
    stream: &CudaStream,
    dtype: DType,
    (m, n, k): (usize, usize, usize),
    x: u64,
    w: u64,
    bias: Option<u64>,
    y: u64,
    epilogue: Epilogue,
) -> Result<bool> {
    let key = (dtype, m, n, k, epilogue);
    let new = !lt.plans.contains_key(&key);
    if new {
        let plan = make_plan(lt, workspace.len(), dtype, (m, n, k), epilogue)?;
        lt.plans.insert(key, plan);
    }
    let (handle, tuning) = (lt.handle, lt.tuning);
    let Some(plan) = lt.plans.get_mut(&key).and_then(|p| p.as_mut()) else {
        return Ok(false);
    };
    if let Some(bias) = bias {
        set_desc(
            plan.desc,
            lsys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
            &bias,
            "setting the bias pointer",
        )?;
    }
    let (ws, _guard) = workspace.device_ptr(stream);
    let run = |plan: &Plan, algo: &lsys::cublasLtMatmulAlgo_t| {
        let (alpha, beta) = (1.0f32, 0.0f32);
        lres::matmul(
            handle,
            plan.desc,
            (&alpha) as *const f32 as *const c_void,
            (&beta) as *const f32 as *const c_void,
            w as *const c_void,
            plan.a,
            x as *const c_void,
            plan.b,
            y as *const c_void,
            plan.c,
            y as *mut c_void,
            plan.c,
            algo,
            ws as *mut c_void,
            workspace.len(),
            stream.cu_stream() as lsys::cudaStream_t,
        )
    };
    if new
        && tuning.on
        && m * n * k >= TUNE_MIN_MACS
        && plan.candidates.len() > 1
        && !capturing(stream)
    {
        let times = time_candidates(stream, plan, |algo| run(plan, algo))?;
        if let Some((best, _)) = times
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (i, t)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
        {
            plan.algo = plan.candidates[best];
        }
        if tuning.log {
            let shown: Vec<String> = times
                .iter()
                .map(|t| t.map_or("-".into(), |t| format!("{:.1}", t * 1e3)))
                .collect();
            eprintln!(
                "dinov2: GEMM {dtype} m={m} n={n} k={k}: candidates (us) {}",
                shown.join(" ")
            );
        }
    }
    let status = run(plan, &plan.algo);
    match status {
        Ok(()) => Ok(true),
        // E.g. an operand less aligned than the algorithm assumed: use cublasGemmEx from now on.
        Err(e) if e.0 == lsys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED => {
            lt.plans.insert(key, None);
            Ok(false)
        }
        Err(e) => Err(lt_err(format!("cublasLtMatmul {dtype} m={m} n={n} k={k}"))(
            e,
        )),
    }
}

/// Whether `stream` is recording a CUDA graph (tuning waits for the device, which capture forbids).
fn capturing(stream: &CudaStream) -> bool {
    !matches!(
        stream.capture_status(),
        Ok(cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    )
}

/// Times `run` (one GEMM with the given algorithm, queued on `stream`) for each of the plan's
/// candidates: the mean milliseconds of [`TUNE_REPEATS`] runs after one untimed run, or `None`
/// for a candidate that fails. Waits for the device.
fn time_candidates(
    stream: &CudaStream,
    plan: &Plan,
    run: impl Fn(&lsys::cublasLtMatmulAlgo_t) -> std::result::Result<(), lres::CublasError>,
) -> Result<Vec<Option<f64>>> {
    let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut times = Vec::with_capacity(plan.candidates.len());
    for algo in &plan.candidates {
        if run(algo).is_err() {
            times.push(None);
            continue;
        }
        let start = stream
            .record_event(timing)
            .ctx(|| "recording a GEMM timing event".into())?;
        let ok = (0..TUNE_REPEATS).all(|_| run(algo).is_ok());
        let end = stream
            .record_event(timing)
            .ctx(|| "recording a GEMM timing event".into())?;
        let ms = start
            .elapsed_ms(&end)
            .ctx(|| "timing a GEMM candidate".into())?;
        times.push(ok.then_some(f64::from(ms) / TUNE_REPEATS as f64));
    }
    Ok(times)
}

/// Sets one attribute of a matmul descriptor to `value`.
///
/// # Safety
/// `desc` is a live descriptor and `T` the attribute's type.
unsafe fn set_desc<T>(
    desc: lsys::cublasLtMatmulDesc_t,
    attribute: lsys::cublasLtMatmulDescAttributes_t,
    value: &T,
    what: &str,
) -> Result<()> {
    lres::set_matmul_desc_attribute(
        desc,
        attribute,
        value as *const T as *const c_void,
        size_of::<T>(),
    )
    .map_err(lt_err(what))
}

/// Builds the descriptor, layouts and algorithm of one shape; `None` when cuBLASLt has no
/// algorithm for it.
unsafe fn make_plan(
    lt: &Lt,
    workspace_bytes: usize,
    dtype: DType,
    (m, n, k): (usize, usize, usize),
    epilogue: Epilogue,
) -> Result<Option<Plan>> {
    let t = lt_type(dtype)?;
    let desc = lres::create_matmul_desc(
        lsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        lsys::cudaDataType::CUDA_R_32F,
    )
    .map_err(lt_err("creating a matmul descriptor"))?;
    let p = col_major_gemm((m, n, k));
    let layout = |(rows, cols, ld): (usize, usize, usize), what: &str| {
        lres::create_matrix_layout(t, rows as u64, cols as u64, ld as i64)
            .map_err(lt_err(format!("layout of {what}")))
    };
    // Layouts are made one by one: should a later one fail, `desc` and the earlier ones leak
    // (once per shape; creation only fails for invalid sizes, which the callers rule out).
    let mut plan = Plan {
        desc,
        a: layout(p.a, "w")?,
        b: layout(p.b, "x")?,
        c: layout(p.c, "y")?,
        // SAFETY: plain data, overwritten by the heuristic below.
        algo: std::mem::zeroed(),
        candidates: Vec::new(),
    };
    // cublasOperation_t values (CUBLAS_OP_N = 0, CUBLAS_OP_T = 1), as the attribute's int32.
    let trans_a = blas_op(p.transa) as i32;
    let trans_b = blas_op(p.transb) as i32;
    set_desc(
        desc,
        lsys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
        &trans_a,
        "setting TRANSA",
    )?;
    set_desc(
        desc,
        lsys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
        &trans_b,
        "setting TRANSB",
    )?;
    let epilogue = match epilogue {
        Epilogue::Plain => lsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
        Epilogue::Bias => lsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
        Epilogue::BiasGeluTanh => lsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS,
    };
    set_desc(
        desc,
        lsys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
        &epilogue,
        "setting the epilogue",
    )?;
    let pref = lres::create_matmul_pref().map_err(lt_err("creating a preference"))?;
    let size = workspace_bytes;
    let set = lres::set_matmul_pref_attribute(
        pref,
        lsys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
        (&size) as *const usize as *const c_void,
        size_of::<usize>(),
    );
    let mut results =
        [std::mem::zeroed::<lsys::cublasLtMatmulHeuristicResult_t>(); TUNE_CANDIDATES];
    let mut found = 0i32;
    let heuristic = set.and_then(|_| {
        lsys::cublasLtMatmulAlgoGetHeuristic(
            lt.handle,
            desc,
            plan.a,
            plan.b,
            plan.c,
            plan.c,
            pref,
            TUNE_CANDIDATES as i32,
            results.as_mut_ptr(),
            &mut found,
        )
        .result()
    });
    let _ = lres::destroy_matmul_pref(pref);
    plan.candidates = results[..found.clamp(0, TUNE_CANDIDATES as i32) as usize]
        .iter()
        .filter(|r| r.state == lsys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
        .map(|r| r.algo)
        .collect();
    // No algorithm (or a shape cuBLASLt rejects, e.g. unaligned leading dimensions): the caller
    // falls back to cublasGemmEx for this shape.
    if heuristic.is_err() || plan.candidates.is_empty() {
        return Ok(None);
    }
    plan.algo = plan.candidates[0];
    Ok(Some(plan))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Element `(i, j)` of a column-major matrix stored with leading dimension `ld`.
    fn at(buf: &[f64], ld: usize, i: usize, j: usize) -> f64 {
        buf[i + j * ld]
    }

    /// `D = op(A) · op(B) + bias[row of D]` exactly as the BLAS (and cuBLASLt's BIAS epilogue)
    /// define it on column-major storage, returned as D's storage.
    fn blas_emulation(p: &ColMajorGemm, a: &[f64], b: &[f64], bias: Option<&[f64]>) -> Vec<f64> {
        // Stored shapes agree with the operations.
        let (a_rows, a_cols) = if p.transa {
            (p.a.1, p.a.0)
        } else {
            (p.a.0, p.a.1)
        };
        let (b_rows, b_cols) = if p.transb {
            (p.b.1, p.b.0)
        } else {
            (p.b.0, p.b.1)
        };
        assert_eq!((a_rows, a_cols), (p.m, p.k), "op(A) is m x k");
        assert_eq!((b_rows, b_cols), (p.k, p.n), "op(B) is k x n");
        assert_eq!((p.c.0, p.c.1), (p.m, p.n), "D is m x n");
        for (rows, _, ld) in [p.a, p.b, p.c] {
            assert!(ld >= rows.max(1), "leading dimension below the row count");
        }
        let opa = |i: usize, l: usize| {
            if p.transa {
                at(a, p.a.2, l, i)
            } else {
                at(a, p.a.2, i, l)
            }
        };
        let opb = |l: usize, j: usize| {
            if p.transb {
                at(b, p.b.2, j, l)
            } else {
                at(b, p.b.2, l, j)
            }
        };
        let mut d = vec![f64::NAN; p.c.2 * p.c.1];
        for j in 0..p.n {
            for i in 0..p.m {
                let s: f64 = (0..p.k).map(|l| opa(i, l) * opb(l, j)).sum();
                d[i + j * p.c.2] = s + bias.map_or(0.0, |v| v[i]);
            }
        }
        d
    }

    #[test]
    fn the_column_major_problem_is_the_row_major_linear() {
        for &(m, n, k) in &[(1, 1, 1), (3, 5, 7), (13, 24, 32), (5, 3, 13), (8, 1, 4)] {
            let x: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
            let w: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.11).cos()).collect();
            let bias: Vec<f64> = (0..n).map(|i| i as f64 - 0.5).collect();
            let p = col_major_gemm((m, n, k));
            // Storage sizes: the row-major buffers are exactly the stored matrices.
            assert_eq!(p.a.2 * p.a.1, n * k);
            assert_eq!(p.b.2 * p.b.1, m * k);
            assert_eq!(p.c.2 * p.c.1, m * n);
            // The bias epilogue's vector has one entry per row of D: the n outputs.
            assert_eq!(p.m, n);
            let y = blas_emulation(&p, &w, &x, Some(&bias));
            for r in 0..m {
                for c in 0..n {
                    let want: f64 =
                        (0..k).map(|l| x[r * k + l] * w[c * k + l]).sum::<f64>() + bias[c];
                    let got = y[r * n + c];
                    assert!((got - want).abs() < 1e-12, "m={m} n={n} k={k} y[{r},{c}]");
                }
            }
        }
    }

    #[test]
    fn cublas_operations_have_the_documented_values() {
        // cuBLASLt's TRANSA/TRANSB attributes take the cublasOperation_t value as an int32.
        assert_eq!(blas_op(false) as i32, 0);
        assert_eq!(blas_op(true) as i32, 1);
        // The epilogue attribute is a uint32: the enum must be passed with that size.
        assert_eq!(size_of::<lsys::cublasLtEpilogue_t>(), 4);
        assert_eq!(lsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS as u32, 4);
        // GELU_BIAS is BIAS | GELU (cublasLt.h).
        assert_eq!(
            lsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS as u32,
            4 | 32
        );
        assert_eq!(
            lsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT as u32,
            1
        );
    }
}
