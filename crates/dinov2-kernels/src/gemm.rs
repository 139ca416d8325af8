//! GEMMs through cuBLAS: `y[m, n] = x[m, k] · w[n, k]ᵀ (+ bias)` in f32, f16 or bf16 with f32
//! accumulation. cuBLASLt runs them with a fused bias epilogue (one plan and algorithm per shape,
//! cached); `cublasGemmEx` is the fallback (and the path when `DINOV2_GEMM=gemmex`). Neither uses
//! `cublas::result::hgemm`, which loads an unversioned libcublas.so and panics in wheel-only setups.
//!
//! Row-major `y = x·wᵀ` is the column-major `yᵀ (n×m) = w (n×k, stored k×n) ᵀ · xᵀ (k×m)`: the
//! "TN" layout, the fastest for cuBLAS.

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

/// A cuBLASLt plan for one shape: descriptor, layouts and the chosen algorithm.
struct Plan {
    desc: lsys::cublasLtMatmulDesc_t,
    a: lsys::cublasLtMatrixLayout_t,
    b: lsys::cublasLtMatrixLayout_t,
    c: lsys::cublasLtMatrixLayout_t,
    algo: lsys::cublasLtMatmulAlgo_t,
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

type PlanKey = (DType, usize, usize, usize, bool);

struct Lt {
    handle: lsys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    plans: HashMap<PlanKey, Option<Plan>>,
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
    pub(crate) fn new(stream: &Arc<CudaStream>, cc_major: i32) -> Result<Self> {
        let blas = CudaBlas::new(stream.clone()).map_err(blas_err("creating a cuBLAS handle"))?;
        let want_lt = std::env::var("DINOV2_GEMM").map_or(true, |v| v != "gemmex");
        let lt = if want_lt {
            let handle = lres::create_handle().map_err(lt_err("creating a cuBLASLt handle"))?;
            let size = if cc_major >= 9 { 32 << 20 } else { 4 << 20 };
            // SAFETY: scratch memory for cuBLASLt, never read by us.
            let workspace = unsafe { stream.alloc::<u8>(size) }
                .ctx(|| "allocating the cuBLASLt workspace".into())?;
            Some(Lt {
                handle,
                workspace,
                plans: HashMap::new(),
            })
        } else {
            None
        };
        Ok(Blas {
            inner: Mutex::new(Inner { blas, lt }),
            stream: stream.clone(),
        })
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

    /// `y = x·wᵀ (+ bias)` with raw device pointers. Returns the path taken; with
    /// [`GemmPath::GemmEx`] the bias has NOT been added (the caller adds it).
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
    ) -> Result<GemmPath> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| KernelError::Unsupported("cuBLAS state poisoned by a panic".into()))?;
        self.stream
            .context()
            .bind_to_thread()
            .ctx(|| "binding the context".into())?;
        if allow_lt {
            if let Some(lt) = inner.lt.as_mut() {
                if lt_matmul(lt, &self.stream, dtype, (m, n, k), x, w, bias, y)? {
                    return Ok(GemmPath::Lt);
                }
            }
        }
        let (mi, ni, ki) = (dim(m)?, dim(n)?, dim(k)?);
        let t = blas_type(dtype)?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        bres::gemm_ex(
            *inner.blas.handle(),
            bsys::cublasOperation_t::CUBLAS_OP_T,
            bsys::cublasOperation_t::CUBLAS_OP_N,
            ni,
            mi,
            ki,
            (&alpha) as *const f32 as *const c_void,
            w as *const c_void,
            t,
            ki,
            x as *const c_void,
            t,
            ki,
            (&beta) as *const f32 as *const c_void,
            y as *mut c_void,
            t,
            ni,
            bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .map_err(blas_err(format!("cublasGemmEx {dtype} m={m} n={n} k={k}")))?;
        Ok(GemmPath::GemmEx)
    }
}

fn dim(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| KernelError::Unsupported(format!("GEMM dimension {v} > i32::MAX")))
}

/// Runs the GEMM through cuBLASLt; `Ok(false)` when no algorithm supports the shape.
#[allow(clippy::too_many_arguments)]
unsafe fn lt_matmul(
    lt: &mut Lt,
    stream: &CudaStream,
    dtype: DType,
    (m, n, k): (usize, usize, usize),
    x: u64,
    w: u64,
    bias: Option<u64>,
    y: u64,
) -> Result<bool> {
    let key = (dtype, m, n, k, bias.is_some());
    if !lt.plans.contains_key(&key) {
        let plan = make_plan(lt, dtype, (m, n, k), bias.is_some())?;
        lt.plans.insert(key, plan);
    }
    let Some(plan) = lt.plans.get(&key).and_then(|p| p.as_ref()) else {
        return Ok(false);
    };
    if let Some(bias) = bias {
        lres::set_matmul_desc_attribute(
            plan.desc,
            lsys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
            (&bias) as *const u64 as *const c_void,
            size_of::<u64>(),
        )
        .map_err(lt_err("setting the bias pointer"))?;
    }
    let (alpha, beta) = (1.0f32, 0.0f32);
    let (ws, _guard) = lt.workspace.device_ptr(stream);
    let status = lres::matmul(
        lt.handle,
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
        &plan.algo,
        ws as *mut c_void,
        lt.workspace.len(),
        stream.cu_stream() as lsys::cudaStream_t,
    );
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

/// Builds the descriptor, layouts and algorithm of one shape; `None` when cuBLASLt has no
/// algorithm for it.
unsafe fn make_plan(
    lt: &Lt,
    dtype: DType,
    (m, n, k): (usize, usize, usize),
    with_bias: bool,
) -> Result<Option<Plan>> {
    let t = lt_type(dtype)?;
    let desc = lres::create_matmul_desc(
        lsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        lsys::cudaDataType::CUDA_R_32F,
    )
    .map_err(lt_err("creating a matmul descriptor"))?;
    let (m64, n64, k64) = (m as u64, n as u64, k as u64);
    let mut plan = Plan {
        desc,
        a: lres::create_matrix_layout(t, k64, n64, k as i64).map_err(lt_err("layout of w"))?,
        b: lres::create_matrix_layout(t, k64, m64, k as i64).map_err(lt_err("layout of x"))?,
        c: lres::create_matrix_layout(t, n64, m64, n as i64).map_err(lt_err("layout of y"))?,
        // SAFETY: plain data, overwritten by the heuristic below.
        algo: std::mem::zeroed(),
    };
    let trans_a: i32 = 1; // CUBLAS_OP_T
    let trans_b: i32 = 0; // CUBLAS_OP_N
    lres::set_matmul_desc_attribute(
        desc,
        lsys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
        (&trans_a) as *const i32 as *const c_void,
        size_of::<i32>(),
    )
    .map_err(lt_err("setting TRANSA"))?;
    lres::set_matmul_desc_attribute(
        desc,
        lsys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
        (&trans_b) as *const i32 as *const c_void,
        size_of::<i32>(),
    )
    .map_err(lt_err("setting TRANSB"))?;
    let epilogue = if with_bias {
        lsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS
    } else {
        lsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT
    };
    lres::set_matmul_desc_attribute(
        desc,
        lsys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
        (&epilogue) as *const lsys::cublasLtEpilogue_t as *const c_void,
        size_of::<lsys::cublasLtEpilogue_t>(),
    )
    .map_err(lt_err("setting the epilogue"))?;
    let pref = lres::create_matmul_pref().map_err(lt_err("creating a preference"))?;
    let size = lt.workspace.len();
    let set = lres::set_matmul_pref_attribute(
        pref,
        lsys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
        (&size) as *const usize as *const c_void,
        size_of::<usize>(),
    );
    let heuristic = set.and_then(|_| {
        lres::get_matmul_algo_heuristic(lt.handle, desc, plan.a, plan.b, plan.c, plan.c, pref)
    });
    let _ = lres::destroy_matmul_pref(pref);
    // No algorithm (or a shape cuBLASLt rejects, e.g. unaligned leading dimensions): the caller
    // falls back to cublasGemmEx for this shape.
    Ok(heuristic.ok().map(|h| {
        plan.algo = h.algo;
        plan
    }))
}
