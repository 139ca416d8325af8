//! [`Device`]: a CUDA context, one non-default stream, the embedded kernel modules and the
//! cuBLAS(Lt) handles; allocation, upload and download of [`Buffer`]s.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, Weak};

use cudarc::driver::{
    result as dresult, sys as dsys, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use half::{bf16, f16};

use crate::arena::{Arena, Log, MemoryPlan};
use crate::artifacts::ARTIFACTS;
use crate::buffer::{Buffer, DType, Memory};
use crate::error::{DriverContext, KernelError, Result};
use crate::gemm::{Blas, GEMM_SWITCH};
use crate::graph::Graph;
use crate::hopper_gemm::OwnGemmState;
use crate::ops::AttentionChoice;

/// Oldest driver that loads our artifacts (PTX ISA 9.0 and nvcc 13.0 cubins): CUDA 13.0.
const MIN_DRIVER: i32 = 13000;

/// Which embedded code the device runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeKind {
    /// sm_90 SASS (compute capability 9.0).
    CubinSm90,
    /// compute_80 PTX, JIT-compiled by the driver.
    Ptx,
}

/// Facts about the device, for messages and reports.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    /// e.g. 13000 for CUDA 13.0.
    pub driver_version: i32,
    pub multiprocessors: u32,
    pub code: CodeKind,
    /// The cuBLAS that was loaded, `major·10000 + minor·100 + patch` (13.x expected).
    pub cublas_version: i32,
    /// Why the sm_90a kernels (our Hopper GEMMs and warpgroup-MMA attention, both opt-in) are
    /// not loaded on a compute capability 9.0 device: the driver's error. `None` where they
    /// loaded, and on other devices (which have none).
    pub hopper_error: Option<String>,
}

impl DeviceInfo {
    /// The CUDA version the driver supports, `13.0`.
    pub fn driver(&self) -> String {
        let v = self.driver_version;
        format!("{}.{}", v / 1000, v % 1000 / 10)
    }

    /// The loaded cuBLAS, `13.1.0` (`unknown` where it did not say).
    pub fn cublas(&self) -> String {
        match self.cublas_version {
            0 => "unknown".into(),
            v => format!("{}.{}.{}", v / 10000, v % 10000 / 100, v % 100),
        }
    }

    /// Whether our sm_90a kernels are loaded: compute capability 9.0, and the driver took them.
    pub fn hopper_kernels(&self) -> bool {
        self.code == CodeKind::CubinSm90 && self.hopper_error.is_none()
    }

    /// The code the kernels run as: `sm_90 cubin` or `PTX (JIT)`.
    pub fn kernel_code(&self) -> &'static str {
        match self.code {
            CodeKind::CubinSm90 => "sm_90 cubin",
            CodeKind::Ptx => "PTX (JIT)",
        }
    }
}

/// A span of stream time, from [`Device::start_timer`].
pub struct Timer {
    start: CudaEvent,
}

/// A kernel argument, kept alive until the launch.
pub(crate) enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
    /// A TMA tensor map, passed by value.
    TensorMap(crate::hopper_gemm::TensorMap),
}

/// One GPU with our kernels loaded. All work goes to one non-default stream, in order; methods
/// return once the work is queued, except the downloads, which wait for it.
pub struct Device {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    modules: Vec<Arc<CudaModule>>,
    /// Kernels looked up so far, with the dynamic shared memory each was allowed (0: the default
    /// 48 KiB, never raised).
    functions: Mutex<HashMap<String, (CudaFunction, u32)>>,
    pub(crate) blas: Blas,
    /// `DINOV2_ATTENTION` (read once here): which attention kernels run.
    pub(crate) attention_choice: AttentionChoice,
    /// `DINOV2_PROFILE=1` (read once here): the operations bracketed for [`Device::take_profile`].
    pub(crate) profile: Option<crate::profile::Pending>,
    /// Where [`Device::alloc`] puts buffers: the pool, except while a recording is made.
    pub(crate) placement: Mutex<Placement>,
    /// The arena of the recordings made with planned memory, while one of them (or a buffer in
    /// it) lives: the next such recording shares it if it is large enough.
    pub(crate) arena: Mutex<Weak<Arena>>,
    /// Which GEMMs run on our Hopper kernels (`DINOV2_GEMM`, [`Device::set_own_gemm`]).
    pub(crate) own_gemm: OwnGemmState,
    info: DeviceInfo,
}

/// Where [`Device::alloc`] puts a buffer.
#[derive(Debug, Clone)]
pub(crate) enum Placement {
    /// The stream's pool (inside a recording, the graph's own memory).
    Pool,
    /// As `Pool`, each allocation and free logged: the first capture of a planned recording.
    Traced(Arc<Log>),
    /// At the planned offsets in `arena`, logged to be checked against the plan.
    Planned {
        plan: Arc<MemoryPlan>,
        arena: Arc<Arena>,
        log: Arc<Log>,
    },
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("info", &self.info).finish()
    }
}

/// Lets the stream-ordered allocator keep freed memory for reuse instead of returning it to the
/// driver at every synchronization (what a caching allocator does). Best effort.
fn keep_freed_memory(ctx: &CudaContext) {
    if !ctx.has_async_alloc() {
        return;
    }
    let mut pool: dsys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: the pool handle is written by the driver and only used for this attribute.
    unsafe {
        if dsys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
            == dsys::CUresult::CUDA_SUCCESS
        {
            let _ = dsys::cuMemPoolSetAttribute(
                pool,
                dsys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold) as *mut u64 as *mut c_void,
            );
        }
    }
}

/// The library search hint of every "not found" message.
const LIB_HINT: &str = "put the directory that holds it on LD_LIBRARY_PATH before starting the \
    program (for a PyTorch install: site-packages/nvidia/cu13/lib; for the CUDA toolkit: \
    /usr/local/cuda/lib64)";

/// Checks that the driver and the cuBLAS libraries can be loaded, without panicking.
pub fn probe_libraries() -> Result<()> {
    // SAFETY: these only try dlopen on the candidate names and close the handles again.
    if !unsafe { dsys::is_culib_present() } {
        return Err(KernelError::Library(
            "no CUDA driver found (libcuda.so.1 could not be loaded): is an NVIDIA GPU with its \
             driver installed?"
                .into(),
        ));
    }
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(KernelError::Library(format!(
            "cuBLAS not found (libcublas.so.13): {LIB_HINT}"
        )));
    }
    if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
        return Err(KernelError::Library(format!(
            "cuBLASLt not found (libcublasLt.so.13): {LIB_HINT}"
        )));
    }
    Ok(())
}

/// Values converted for an upload at a time: the converted chunk (2 MiB in f16) is copied from
/// cache, and no second batch-sized host buffer is made. Converting a batch of 128 images at 224
/// px to f16 on the development machine: 3.1 ms in chunks; into one fresh buffer, 20.4 ms with
/// the system allocator (page faults) and 3.7 ms with mimalloc's reused pages.
const UPLOAD_CHUNK: usize = 1 << 20;

/// Calls `copy(byte offset, bytes)` for f32 `values` as `dtype` on the device, `chunk` values at
/// a time, rounded to nearest even (f16 through the CPU's F16C conversions where it has them);
/// f32 goes as it is, in one piece (host and device are both little-endian). The bytes lent to
/// `copy` are overwritten after it returns.
fn encoded_chunks(
    op: &'static str,
    values: &[f32],
    dtype: DType,
    chunk: usize,
    mut copy: impl FnMut(usize, &[u8]) -> Result<()>,
) -> Result<()> {
    use half::slice::HalfFloatSliceExt;
    fn halves<H: bytemuck::Pod + Default>(
        values: &[f32],
        chunk: usize,
        convert: impl Fn(&mut [H], &[f32]),
        copy: &mut impl FnMut(usize, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let size = std::mem::size_of::<H>();
        let mut staged = vec![H::default(); values.len().min(chunk.max(1))];
        for (i, part) in values.chunks(chunk.max(1)).enumerate() {
            let out = &mut staged[..part.len()];
            convert(out, part);
            copy(i * chunk * size, bytemuck::cast_slice(out))?;
        }
        Ok(())
    }
    match dtype {
        DType::F32 => copy(0, bytemuck::cast_slice(values)),
        DType::F16 => halves(values, chunk, <[f16]>::convert_from_f32_slice, &mut copy),
        DType::BF16 => halves(values, chunk, <[bf16]>::convert_from_f32_slice, &mut copy),
        DType::U8 => Err(KernelError::Unsupported(format!(
            "{op}: f32 values as u8 (masks go through upload_bytes)"
        ))),
    }
}

impl Device {
    /// Opens GPU `ordinal`: checks the libraries and the driver version, creates the context and
    /// stream, loads the kernels (the sm_90 and sm_90a cubins on compute capability 9.0, else the
    /// PTX, without the Hopper-only GEMMs) and the cuBLAS handles. Never panics for a missing
    /// library or device: those are errors.
    ///
    /// The sm_90a kernels are all opt-in, so a driver that refuses them does not stop the
    /// default ones: the device then runs as any other (cuBLAS GEMMs, the flash attention), and
    /// [`DeviceInfo::hopper_error`] says why.
    pub fn new(ordinal: usize) -> Result<Self> {
        probe_libraries()?;
        let mut version = 0i32;
        // SAFETY: writes one int.
        unsafe { dsys::cuDriverGetVersion(&mut version) }
            .result()
            .ctx(|| "reading the driver version".into())?;
        if version < MIN_DRIVER {
            return Err(KernelError::Unsupported(format!(
                "the CUDA driver supports CUDA {}.{}, the kernels need 13.0 or newer (driver 580+)",
                version / 1000,
                (version % 1000) / 10
            )));
        }
        let count = CudaContext::device_count().ctx(|| "counting CUDA devices".into())?;
        if ordinal >= count.max(0) as usize {
            return Err(KernelError::Unsupported(format!(
                "cuda:{ordinal} requested, {count} CUDA device(s) present"
            )));
        }
        let ctx = CudaContext::new(ordinal).ctx(|| format!("opening cuda:{ordinal}"))?;
        // One stream, ordered by us: per-buffer events would cost API calls and break capture.
        // SAFETY: called before any allocation on this context by this crate.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().ctx(|| "creating a stream".into())?;
        keep_freed_memory(&ctx);
        let compute_capability = ctx
            .compute_capability()
            .ctx(|| "reading the compute capability".into())?;
        if compute_capability.0 < 8 {
            return Err(KernelError::Unsupported(format!(
                "compute capability {}.{}: the kernels need 8.0 (Ampere) or newer",
                compute_capability.0, compute_capability.1
            )));
        }
        let code = if compute_capability == (9, 0) {
            CodeKind::CubinSm90
        } else {
            CodeKind::Ptx
        };
        let mut modules = Vec::new();
        let mut hopper_error = None;
        for artifact in ARTIFACTS {
            let image = match (code, artifact.ptx) {
                (CodeKind::CubinSm90, _) => Ptx::from_binary(artifact.cubin_sm90.to_vec()),
                (CodeKind::Ptx, Some(ptx)) => Ptx::from_src(ptx),
                // A Hopper-only family: nothing to load on other GPUs.
                (CodeKind::Ptx, None) => continue,
            };
            let loaded = ctx.load_module(image).ctx(|| {
                format!(
                    "loading the {} kernels ({code:?}, driver {version})",
                    artifact.name
                )
            });
            match loaded {
                Ok(module) => modules.push(module),
                // A Hopper-only family (opt-in): the first refusal is kept, the others skipped.
                Err(e) if artifact.ptx.is_none() => {
                    hopper_error.get_or_insert_with(|| e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        let multiprocessors = ctx
            .attribute(dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .ctx(|| "reading the SM count".into())? as u32;
        // DINOV2_GEMM: `gemmex` here, `fused` and `own` (our Hopper GEMMs) below.
        let gemm_switch = crate::switch("DINOV2_GEMM", &GEMM_SWITCH)?;
        let blas = Blas::new(&stream, compute_capability.0, gemm_switch != Some("gemmex"))?;
        let cublas_version = blas.version();
        // The bindings are CUDA 13's; the loader also accepts an unversioned or 12.x library.
        if cublas_version / 10000 != 13 && cublas_version != 0 {
            return Err(KernelError::Library(format!(
                "cuBLAS {cublas_version} was loaded; cuBLAS 13 is needed: {LIB_HINT}"
            )));
        }
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().unwrap_or_else(|_| "unknown GPU".into()),
            compute_capability,
            driver_version: version,
            multiprocessors,
            code,
            cublas_version,
            hopper_error,
        };
        Ok(Device {
            ctx,
            stream,
            modules,
            functions: Mutex::new(HashMap::new()),
            blas,
            attention_choice: AttentionChoice::from_env(info.hopper_kernels())?,
            profile: crate::flag("DINOV2_PROFILE", false)?.then(Default::default),
            placement: Mutex::new(Placement::Pool),
            arena: Mutex::new(Weak::new()),
            own_gemm: OwnGemmState::from_env(info.hopper_kernels(), gemm_switch)?,
            info,
        })
    }

    /// Which attention kernels run (`DINOV2_ATTENTION`), in words, for reports.
    pub fn attention_kernels(&self) -> &'static str {
        self.attention_choice.describe()
    }

    /// What this device is.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The stream all work goes to (for timing with events, or graph capture).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits for all queued work and reports any error it raised.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .ctx(|| "waiting for the stream".into())?;
        self.ctx
            .check_err()
            .ctx(|| "a previous asynchronous operation".into())
    }

    /// Starts timing the stream's work (a CUDA event recorded now).
    pub fn start_timer(&self) -> Result<Timer> {
        let start = self
            .stream
            .record_event(Some(dsys::CUevent_flags::CU_EVENT_DEFAULT))
            .ctx(|| "recording an event".into())?;
        Ok(Timer { start })
    }

    /// Milliseconds of stream time since `timer` started; waits for the work queued so far.
    pub fn stop_timer(&self, timer: Timer) -> Result<f32> {
        let end = self
            .stream
            .record_event(Some(dsys::CUevent_flags::CU_EVENT_DEFAULT))
            .ctx(|| "recording an event".into())?;
        timer
            .start
            .elapsed_ms(&end)
            .ctx(|| "timing with events".into())
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().ctx(|| "reading memory info".into())
    }

    /// Waits for the queued work, then hands the freed memory that the stream-ordered allocator
    /// keeps for reuse back to the driver (what `torch.cuda.empty_cache()` does for PyTorch's
    /// caching allocator), with that of destroyed CUDA graphs, so that a used-memory delta
    /// measures one workload.
    pub fn release_cached_memory(&self) -> Result<()> {
        let Some(pool) = self.trim_pool()? else {
            return Ok(());
        };
        // SAFETY: the pool was trimmed after a synchronization. The graph trim returns the
        // memory of graphs destroyed so far (live graphs keep theirs).
        unsafe {
            dsys::cuDeviceGraphMemTrim(self.ctx.cu_device())
                .result()
                .ctx(|| "trimming the CUDA graph memory".into())?;
            // The high-water marks of [`Device::memory_parts`] count from here. A report only:
            // a driver that refuses the reset leaves them counting from earlier.
            let mut zero = 0u64;
            let zero = (&mut zero) as *mut u64 as *mut c_void;
            for attr in [
                dsys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
                dsys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            ] {
                let _ = dsys::cuMemPoolSetAttribute(pool, attr, zero);
            }
            for attr in [
                dsys::CUgraphMem_attribute::CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH,
                dsys::CUgraphMem_attribute::CU_GRAPH_MEM_ATTR_USED_MEM_HIGH,
            ] {
                let _ = dsys::cuDeviceSetGraphMemAttribute(self.ctx.cu_device(), attr, zero);
            }
        }
        Ok(())
    }

    /// Waits for the queued work, then hands the stream's pool's cached memory (freed blocks
    /// kept for reuse) back to the driver. Returns the pool, `None` without one.
    fn trim_pool(&self) -> Result<Option<dsys::CUmemoryPool>> {
        self.synchronize()?;
        let Some(pool) = self.default_pool()? else {
            return Ok(None);
        };
        // SAFETY: every block freed on our stream has completed (synchronized above).
        unsafe { dsys::cuMemPoolTrimTo(pool, 0) }
            .result()
            .ctx(|| "trimming the memory pool".into())?;
        Ok(Some(pool))
    }

    /// The device's default memory pool, the stream-ordered allocator's, with the context
    /// current on this thread; `None` where the driver lacks stream-ordered allocation.
    fn default_pool(&self) -> Result<Option<dsys::CUmemoryPool>> {
        if !self.ctx.has_async_alloc() {
            return Ok(None);
        }
        self.bind()?;
        let mut pool: dsys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: the driver writes the handle of a live device's pool.
        unsafe { dsys::cuDeviceGetDefaultMemPool(&mut pool, self.ctx.cu_device()) }
            .result()
            .ctx(|| "reading the default memory pool".into())?;
        Ok(Some(pool))
    }

    /// Where the device memory of this process's allocations is, in bytes, for telling a
    /// used-memory figure apart (`dinov2 bench`): the stream-ordered allocator's pool (memory
    /// it holds from the driver, and of that in live allocations) and the CUDA graphs' own
    /// memory (their allocation nodes), each now and at most since the last
    /// [`Device::release_cached_memory`]; the cuBLAS workspace and the recordings' arena (in
    /// the pool). Only those two where the driver lacks stream-ordered allocation.
    pub fn memory_parts(&self) -> Result<Vec<(&'static str, u64)>> {
        let mut parts = vec![
            ("cublas_workspace", self.blas.workspace_bytes() as u64),
            ("recording_arena", self.arena_bytes() as u64),
        ];
        let Some(pool) = self.default_pool()? else {
            return Ok(parts);
        };
        use dsys::CUgraphMem_attribute as G;
        use dsys::CUmemPool_attribute as P;
        // SAFETY: each call writes one u64 for a live device and its default pool.
        unsafe {
            for (name, attr) in [
                ("pool_reserved", P::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT),
                ("pool_reserved_high", P::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH),
                ("pool_used", P::CU_MEMPOOL_ATTR_USED_MEM_CURRENT),
                ("pool_used_high", P::CU_MEMPOOL_ATTR_USED_MEM_HIGH),
            ] {
                let mut v = 0u64;
                dsys::cuMemPoolGetAttribute(pool, attr, (&mut v) as *mut u64 as *mut c_void)
                    .result()
                    .ctx(|| format!("reading the memory pool's {name}"))?;
                parts.push((name, v));
            }
            for (name, attr) in [
                ("graphs_reserved", G::CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT),
                (
                    "graphs_reserved_high",
                    G::CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH,
                ),
                ("graphs_used", G::CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT),
                ("graphs_used_high", G::CU_GRAPH_MEM_ATTR_USED_MEM_HIGH),
            ] {
                let mut v = 0u64;
                dsys::cuDeviceGetGraphMemAttribute(
                    self.ctx.cu_device(),
                    attr,
                    (&mut v) as *mut u64 as *mut c_void,
                )
                .result()
                .ctx(|| format!("reading the CUDA graph memory's {name}"))?;
                parts.push((name, v));
            }
        }
        Ok(parts)
    }

    /// An uninitialized buffer.
    pub fn alloc(&self, dtype: DType, shape: &[usize]) -> Result<Buffer> {
        let bytes = shape.iter().product::<usize>() * dtype.size();
        let placement = self
            .placement
            .lock()
            .map_err(|_| KernelError::Unsupported("allocator state poisoned by a panic".into()))?;
        let (memory, traced) = match &*placement {
            Placement::Pool => (self.pool_alloc(bytes)?, None),
            Placement::Traced(log) => (self.pool_alloc(bytes)?, Some(log.alloc(bytes))),
            Placement::Planned { plan, arena, log } => {
                let traced = log.alloc(bytes);
                // A capture that leaves its trace gets memory of its own, and fails its check.
                let memory = match plan.offset(traced.alloc(), bytes) {
                    Some(offset) => Memory::Planned {
                        arena: arena.clone(),
                        offset,
                    },
                    None => self.pool_alloc(bytes)?,
                };
                (memory, Some(traced))
            }
        };
        Ok(Buffer {
            memory,
            dtype,
            shape: shape.to_vec(),
            _traced: traced,
        })
    }

    /// `bytes` of the stream's pool, in stream order.
    fn pool_alloc(&self, bytes: usize) -> Result<Memory> {
        // Zero-byte allocations are legal for the driver but cudarc wants at least one element.
        // SAFETY: u8 has no invalid bit patterns; kernels write before anyone reads.
        let data = unsafe { self.stream.alloc::<u8>(bytes.max(1)) }
            .ctx(|| format!("allocating {bytes} bytes"))?;
        Ok(Memory::Own(data))
    }

    /// The arena for `plan`: the live one if it is large enough, else a new one, at least as
    /// large as the live one, which later recordings share. The recordings on the outgrown one
    /// are then no longer current ([`Device::recording_is_current`]).
    ///
    /// Before a new arena is made, the stream's pool hands its cached memory back to the driver
    /// (the eager pass just before a recording left its whole peak there): the arena is one
    /// block, larger than any the pool freed, so it needs memory of its own.
    pub(crate) fn arena_for(&self, plan: &MemoryPlan) -> Result<Arc<Arena>> {
        let mut shared = self
            .arena
            .lock()
            .map_err(|_| KernelError::Unsupported("arena state poisoned by a panic".into()))?;
        let live = shared.upgrade();
        if let Some(arena) = live.as_ref().filter(|a| a.bytes() >= plan.bytes()) {
            return Ok(arena.clone());
        }
        let bytes = live.map_or(0, |a| a.bytes()).max(plan.bytes());
        // Best effort: an untrimmed pool only makes the allocation likelier to fail.
        let _ = self.trim_pool();
        let arena = Arc::new(Arena::new(&self.stream, bytes)?);
        *shared = Arc::downgrade(&arena);
        Ok(arena)
    }

    /// False when `graph`'s buffers are ranges of an arena that a larger one has replaced as
    /// the device's (a later recording did not fit it): that recording keeps the old arena's
    /// memory alive beside the new one's, where recorded again it would share the new one.
    /// Recordings without planned memory, and any while no arena lives, are current.
    pub fn recording_is_current(&self, graph: &Graph) -> bool {
        let (Some(arena), Ok(live)) = (graph.arena(), self.arena.lock()) else {
            return true;
        };
        live.upgrade().is_none_or(|live| Arc::ptr_eq(&live, arena))
    }

    /// Bytes of the live recording arena (0 when none lives).
    pub fn arena_bytes(&self) -> usize {
        self.arena
            .lock()
            .ok()
            .and_then(|a| a.upgrade())
            .map_or(0, |a| a.bytes())
    }

    /// A zero-filled buffer.
    pub fn zeros(&self, dtype: DType, shape: &[usize]) -> Result<Buffer> {
        let mut b = self.alloc(dtype, shape)?;
        self.memset(&mut b, 0)?;
        Ok(b)
    }

    /// Fills every byte with 0xff: NaN in f32, f16 and bf16. Tests poison outputs with it so that
    /// an element a kernel forgot to write shows.
    pub fn poison(&self, buffer: &mut Buffer) -> Result<()> {
        self.memset(buffer, 0xff)
    }

    pub(crate) fn memset(&self, buffer: &mut Buffer, byte: u8) -> Result<()> {
        let ptr = buffer.ptr(&self.stream);
        self.bind()?;
        // SAFETY: the range is the buffer's own.
        unsafe { dresult::memset_d8_async(ptr, byte, buffer.bytes(), self.stream.cu_stream()) }
            .ctx(|| "filling a buffer".into())
    }

    /// Uploads f32 values as `dtype` (rounded to nearest even on the host).
    pub fn upload(&self, values: &[f32], shape: &[usize], dtype: DType) -> Result<Buffer> {
        let n: usize = shape.iter().product();
        if n != values.len() {
            return Err(KernelError::shape(
                "upload",
                format!("{} values for shape {shape:?}", values.len()),
            ));
        }
        if dtype == DType::U8 {
            return Err(KernelError::Unsupported(
                "upload f32 values as u8: use upload_bytes".into(),
            ));
        }
        let mut b = self.alloc(dtype, shape)?;
        self.upload_into(values, &mut b)?;
        Ok(b)
    }

    /// Uploads bytes (for masks: one u8 per element).
    pub fn upload_bytes(&self, bytes: &[u8], shape: &[usize]) -> Result<Buffer> {
        if shape.iter().product::<usize>() != bytes.len() {
            return Err(KernelError::shape(
                "upload_bytes",
                format!("{} bytes for shape {shape:?}", bytes.len()),
            ));
        }
        self.upload_raw(bytes, shape, DType::U8)
    }

    fn upload_raw(&self, bytes: &[u8], shape: &[usize], dtype: DType) -> Result<Buffer> {
        let mut b = self.alloc(dtype, shape)?;
        self.copy_to_device(bytes, &mut b, 0)?;
        Ok(b)
    }

    /// Copies a buffer back as f32 values; waits for the queued work.
    pub fn download(&self, buffer: &Buffer) -> Result<Vec<f32>> {
        let n = buffer.len();
        Ok(match buffer.dtype {
            DType::F32 => {
                let mut values = vec![0f32; n];
                self.download_into(buffer, bytemuck::cast_slice_mut(&mut values))?;
                values
            }
            DType::F16 => {
                let mut values = vec![f16::ZERO; n];
                self.download_into(buffer, bytemuck::cast_slice_mut(&mut values))?;
                values.into_iter().map(f16::to_f32).collect()
            }
            DType::BF16 => {
                let mut values = vec![bf16::ZERO; n];
                self.download_into(buffer, bytemuck::cast_slice_mut(&mut values))?;
                values.into_iter().map(bf16::to_f32).collect()
            }
            DType::U8 => self
                .download_bytes(buffer)?
                .into_iter()
                .map(|b| b as f32)
                .collect(),
        })
    }

    /// Copies a buffer's bytes back; waits for the queued work.
    pub fn download_bytes(&self, buffer: &Buffer) -> Result<Vec<u8>> {
        let mut host = vec![0u8; buffer.bytes()];
        self.download_into(buffer, &mut host)?;
        Ok(host)
    }

    /// Copies a buffer's bytes into `host` (exactly as many); waits for the queued work.
    fn download_into(&self, buffer: &Buffer, host: &mut [u8]) -> Result<()> {
        let n = buffer.bytes();
        if host.len() != n {
            return Err(KernelError::shape(
                "download",
                format!("{n} bytes into {} host bytes", host.len()),
            ));
        }
        if n > 0 {
            let src = buffer.ptr(&self.stream);
            self.bind()?;
            // SAFETY: `src` holds `n` bytes (the buffer's), `host` as many; the copy is complete
            // at the synchronization below, before `host` is used.
            unsafe { dresult::memcpy_dtoh_async(host, src, self.stream.cu_stream()) }
                .ctx(|| format!("downloading {n} bytes"))?;
        }
        self.synchronize()
    }

    /// A device-side copy.
    pub fn copy(&self, src: &Buffer) -> Result<Buffer> {
        let mut dst = self.alloc(src.dtype, &src.shape)?;
        self.copy_into(src, &mut dst)?;
        Ok(dst)
    }

    /// Copies `src` into `dst` on the device; both must have the same dtype and element count.
    pub fn copy_into(&self, src: &Buffer, dst: &mut Buffer) -> Result<()> {
        if src.dtype != dst.dtype || src.len() != dst.len() {
            return Err(KernelError::shape(
                "copy_into",
                format!(
                    "source {} {:?}, destination {} {:?}",
                    src.dtype, src.shape, dst.dtype, dst.shape
                ),
            ));
        }
        let n = src.bytes();
        if n > 0 {
            let (from, to) = (src.ptr(&self.stream), dst.ptr(&self.stream));
            self.bind()?;
            // SAFETY: both buffers hold `n` bytes (same dtype and length, checked above).
            unsafe { dresult::memcpy_dtod_async(to, from, n, self.stream.cu_stream()) }
                .ctx(|| format!("copying {n} bytes"))?;
        }
        Ok(())
    }

    /// Uploads f32 values into the existing float buffer `dst` of as many elements, rounded to
    /// its type as [`Device::upload`] rounds them (a stream-ordered copy: `dst` keeps its
    /// address, as a recorded graph needs).
    pub fn upload_into(&self, values: &[f32], dst: &mut Buffer) -> Result<()> {
        if !dst.dtype.is_float() || dst.len() != values.len() {
            return Err(KernelError::shape(
                "upload_into",
                format!(
                    "{} f32 values into a {} buffer of shape {:?}",
                    values.len(),
                    dst.dtype,
                    dst.shape
                ),
            ));
        }
        let dtype = dst.dtype;
        encoded_chunks("upload_into", values, dtype, UPLOAD_CHUNK, |at, bytes| {
            self.copy_to_device(bytes, dst, at)
        })
    }

    /// Copies host `bytes` to `dst` from byte `at` on, in stream order. A copy from pageable
    /// memory returns once the driver has staged the bytes, so the caller may reuse them.
    fn copy_to_device(&self, bytes: &[u8], dst: &mut Buffer, at: usize) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if at + bytes.len() > dst.bytes() {
            return Err(KernelError::shape(
                "upload",
                format!(
                    "{} bytes at {at} into a buffer of {}",
                    bytes.len(),
                    dst.bytes()
                ),
            ));
        }
        let to = dst.ptr(&self.stream) + at as u64;
        self.bind()?;
        // SAFETY: the range lies in `dst` (checked above); pageable `bytes` are staged before
        // the call returns.
        unsafe { dresult::memcpy_htod_async(to, bytes, self.stream.cu_stream()) }
            .ctx(|| format!("uploading {} bytes", bytes.len()))
    }

    /// Makes the device's context current on the calling thread, for raw driver calls.
    pub(crate) fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .ctx(|| "binding the context".into())
    }

    /// The kernel `name`, looked up once in the loaded modules, allowed at least `smem` bytes of
    /// dynamic shared memory.
    ///
    /// Above 48 KiB a kernel must opt in (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`) or its
    /// launch fails; the attribute is set once per kernel, the first time a launch needs it. The
    /// context is bound first: the lookup and the attribute are driver calls on this context,
    /// and the calling thread (any thread sharing the device) may have none current.
    pub(crate) fn function(&self, name: &str, smem: u32) -> Result<CudaFunction> {
        let mut cache = self
            .functions
            .lock()
            .map_err(|_| KernelError::Unsupported("kernel cache poisoned by a panic".into()))?;
        if let Some((f, allowed)) = cache.get(name) {
            if !needs_smem_opt_in(smem, *allowed) {
                return Ok(f.clone());
            }
        }
        self.bind()?;
        let (f, allowed) = match cache.get(name) {
            Some((f, allowed)) => (f.clone(), *allowed),
            None => {
                let f = self
                    .modules
                    .iter()
                    .find_map(|m| m.load_function(name).ok())
                    .ok_or_else(|| {
                        // Either cause can be the one: both are said.
                        let refused = match &self.info.hopper_error {
                            Some(why) => format!("; the sm_90a kernels were refused: {why}"),
                            None => String::new(),
                        };
                        KernelError::Unsupported(format!(
                            "kernel `{name}` is not in the loaded artifacts (rebuild them with \
                             `cargo xtask kernels`){refused}"
                        ))
                    })?;
                (f, 0)
            }
        };
        let allowed = if needs_smem_opt_in(smem, allowed) {
            f.set_attribute(
                dsys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .ctx(|| format!("allowing {smem} bytes of dynamic shared memory for {name}"))?;
            smem
        } else {
            allowed
        };
        cache.insert(name.to_string(), (f.clone(), allowed));
        Ok(f)
    }

    /// Launches kernel `name` on the stream.
    ///
    /// # Safety
    /// The arguments must match the kernel's parameters, and every pointer must address a live
    /// allocation large enough for what the kernel reads and writes with these shapes.
    pub(crate) unsafe fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &[Arg],
    ) -> Result<()> {
        let f = self.function(name, smem)?;
        let mut b = self.stream.launch_builder(&f);
        for a in args {
            match a {
                Arg::Ptr(p) => b.arg(p),
                Arg::I32(v) => b.arg(v),
                Arg::I64(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
                Arg::TensorMap(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (block, 1, 1),
            shared_mem_bytes: smem,
        };
        b.launch(cfg).ctx(|| format!("launching {name}"))?;
        Ok(())
    }

    /// Blocks for a grid-stride loop over `n` elements with 256 threads per block.
    pub(crate) fn grid_for(&self, n: usize) -> u32 {
        grid_stride_blocks(n, self.info.multiprocessors)
    }
}

/// Dynamic shared memory a kernel may use without opting in.
const DEFAULT_DYNAMIC_SMEM: u32 = 48 * 1024;

/// True when a launch with `smem` bytes of dynamic shared memory needs the kernel's opt-in raised
/// above what it was already `allowed` (0 when never raised).
fn needs_smem_opt_in(smem: u32, allowed: u32) -> bool {
    smem > DEFAULT_DYNAMIC_SMEM && smem > allowed
}

/// Blocks of a grid-stride loop over `n` elements with 256 threads per block, on a device with
/// `multiprocessors` SMs: enough to cover `n`, at most 32 per SM (the loops stride past that),
/// never 0 (a zero grid is a launch error).
pub(crate) fn grid_stride_blocks(n: usize, multiprocessors: u32) -> u32 {
    let blocks = n.div_ceil(256).max(1);
    blocks.min(multiprocessors.max(1) as usize * 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_opt_in_is_set_once_and_only_above_48k() {
        assert!(!needs_smem_opt_in(0, 0));
        assert!(!needs_smem_opt_in(48 * 1024, 0));
        // attention_*_d96 and _d128: 320·(P + 8)·2 bytes.
        assert!(needs_smem_opt_in(66_560, 0));
        assert!(needs_smem_opt_in(87_040, 0));
        assert!(!needs_smem_opt_in(87_040, 87_040));
        assert!(!needs_smem_opt_in(66_560, 87_040));
        assert!(needs_smem_opt_in(87_040, 66_560));
    }

    #[test]
    fn grid_stride_blocks_cover_small_inputs_and_cap_large_ones() {
        assert_eq!(grid_stride_blocks(0, 132), 1);
        assert_eq!(grid_stride_blocks(1, 132), 1);
        assert_eq!(grid_stride_blocks(256, 132), 1);
        assert_eq!(grid_stride_blocks(257, 132), 2);
        assert_eq!(grid_stride_blocks(usize::MAX / 2, 132), 132 * 32);
        assert_eq!(grid_stride_blocks(1 << 20, 0), 32);
    }

    #[test]
    fn versions_read_as_their_libraries_write_them() {
        let info = DeviceInfo {
            ordinal: 0,
            name: "NVIDIA H200".into(),
            compute_capability: (9, 0),
            driver_version: 13000,
            multiprocessors: 132,
            code: CodeKind::CubinSm90,
            cublas_version: 130100,
            hopper_error: None,
        };
        assert_eq!(info.driver(), "13.0");
        assert_eq!(info.cublas(), "13.1.0");
        assert_eq!(info.kernel_code(), "sm_90 cubin");
        assert!(info.hopper_kernels());
        let refused = DeviceInfo {
            hopper_error: Some("loading the gemm_sm90a kernels: CUDA_ERROR_INVALID_IMAGE".into()),
            ..info.clone()
        };
        assert!(!refused.hopper_kernels());
        assert_eq!(refused.kernel_code(), "sm_90 cubin");
        let info = DeviceInfo {
            driver_version: 12080,
            cublas_version: 0,
            code: CodeKind::Ptx,
            ..info
        };
        assert_eq!(info.driver(), "12.8");
        assert_eq!(info.cublas(), "unknown");
        assert_eq!(info.kernel_code(), "PTX (JIT)");
        assert!(!info.hopper_kernels());
    }

    #[test]
    fn uploads_round_each_value_to_nearest_even() {
        // Ties both ways, subnormals, overflow to infinity, infinities, NaN, and enough values
        // (37) that the vector conversion's full steps and its tail both run.
        let mut values = vec![
            1.0 + 2f32.powi(-11),
            1.0 + 3.0 * 2f32.powi(-11),
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            2f32.powi(-20),
            -6.0e-8,
            65520.0,
            -1.0e6,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
        ];
        values.extend((0..25).map(|i| (i as f32 - 12.3) * 0.37));
        // The bytes as the device would receive them, checking that the chunks tile the range.
        let device_bytes = |values: &[f32], dtype: DType, chunk: usize| {
            let mut out = Vec::new();
            encoded_chunks("upload", values, dtype, chunk, |at, bytes| {
                assert_eq!(at, out.len(), "chunks in order, back to back");
                out.extend_from_slice(bytes);
                Ok(())
            })
            .unwrap();
            out
        };
        let f16s: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
        let bf16s: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
        // Whole, in chunks with a short last one, and one value at a time.
        for chunk in [UPLOAD_CHUNK, 8, 1] {
            let got = device_bytes(&values, DType::F16, chunk);
            assert_eq!(
                got,
                bytemuck::cast_slice::<f16, u8>(&f16s),
                "f16, chunk {chunk}"
            );
            let got = device_bytes(&values, DType::BF16, chunk);
            assert_eq!(
                got,
                bytemuck::cast_slice::<bf16, u8>(&bf16s),
                "bf16, chunk {chunk}"
            );
            let got = device_bytes(&values, DType::F32, chunk);
            assert_eq!(
                got,
                bytemuck::cast_slice::<f32, u8>(&values),
                "f32, chunk {chunk}"
            );
        }
        let nan = device_bytes(&[f32::NAN], DType::F16, UPLOAD_CHUNK);
        assert!(f16::from_le_bytes([nan[0], nan[1]]).is_nan());
        let nan = device_bytes(&[f32::NAN], DType::BF16, UPLOAD_CHUNK);
        assert!(bf16::from_le_bytes([nan[0], nan[1]]).is_nan());
        assert!(device_bytes(&[], DType::F16, UPLOAD_CHUNK).is_empty());
        let e = encoded_chunks("upload_into", &values, DType::U8, 8, |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("upload_into"), "{e}");
    }
}
