//! Our own GEMMs for Hopper (`kernels/gemm_sm90a.cu`: wgmma, sm_90a only): `y = act(x·wᵀ +
//! bias)` with the bias and the activation applied to the f32 sums in the kernel's epilogue. What
//! they are for is the exact GELU after fc1, which cuBLASLt cannot fuse (its GELU epilogue is the
//! tanh approximation): fused, it costs no pass over the activations.
//!
//! Which GEMMs they run is [`OwnGemm`], and which kernel [`OwnTile`]: `DINOV2_GEMM` (`fused` or
//! `own`; cuBLASLt by default until the kernels are measured on a GPU) and `DINOV2_GEMM_TILE`
//! (`256`, `tma`, `tma2`, `pp`, `pp2`) when the device opens, or [`Device::set_own_gemm`]. A shape they cannot run
//! (f32, `n % 128 != 0`, `k % 64 != 0`, unaligned pointers, another activation) goes to cuBLAS
//! as before.

use std::ffi::c_void;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use cudarc::driver::{sys as dsys, DeviceRepr, LaunchConfig};

use crate::buffer::{Buffer, DType};
use crate::device::{Arg, Device};
use crate::error::{DriverContext, KernelError, Result};
use crate::ops::{check_linear_bias, expect, float, residual_suffix, Act};

/// Which GEMMs run on our Hopper kernels instead of cuBLAS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnGemm {
    /// None: cuBLAS(Lt) runs every GEMM.
    Off,
    /// Those followed by an activation that cuBLASLt cannot fuse (the exact GELU): the
    /// activation moves into our epilogue.
    Fused,
    /// Every GEMM they can run.
    All,
}

/// Which of our GEMM kernels runs the shapes it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnTile {
    /// 128 x 128 tiles fed by `cp.async`, two blocks an SM (`_n128`). The default.
    N128,
    /// 128 x 256 tiles fed by `cp.async`, one block an SM (`_n256`, `DINOV2_GEMM_TILE=256`).
    N256,
    /// 128 x 256 tiles fed by the tensor memory accelerator: a producer warpgroup and two
    /// consumer warpgroups handing stages over on mbarriers (`_tma`, `DINOV2_GEMM_TILE=tma`).
    Tma,
    /// The same in clusters of two CTAs along M, each fetching half of their common B tile for
    /// both (TMA multicast: a third less L2 traffic; `_tma2`, `DINOV2_GEMM_TILE=tma2`).
    Tma2,
    /// 128 x 128 tiles fed by TMA, persistent (a block an SM walks the tiles), its two consumer
    /// warpgroups taking turns so that one's epilogue runs under the other's MMAs (`_pp`,
    /// `DINOV2_GEMM_TILE=pp`).
    PingPong,
    /// The same in clusters of two CTAs along M multicasting their common B tile, as `Tma2`
    /// (`_pp2`, `DINOV2_GEMM_TILE=pp2`).
    PingPong2,
}

impl OwnTile {
    /// Every kernel, in declaration order (the order of the numbers a device stores them as).
    pub const ALL: [OwnTile; 6] = [
        OwnTile::N128,
        OwnTile::N256,
        OwnTile::Tma,
        OwnTile::Tma2,
        OwnTile::PingPong,
        OwnTile::PingPong2,
    ];

    /// The tile's columns.
    pub fn cols(self) -> usize {
        match self {
            OwnTile::N128 | OwnTile::PingPong | OwnTile::PingPong2 => 128,
            OwnTile::N256 | OwnTile::Tma | OwnTile::Tma2 => 256,
        }
    }

    /// The kernel name's suffix.
    fn suffix(self) -> &'static str {
        match self {
            OwnTile::N128 => "n128",
            OwnTile::N256 => "n256",
            OwnTile::Tma => "tma",
            OwnTile::Tma2 => "tma2",
            OwnTile::PingPong => "pp",
            OwnTile::PingPong2 => "pp2",
        }
    }

    /// Its name in `DINOV2_GEMM_TILE`.
    pub fn env_name(self) -> &'static str {
        match self {
            OwnTile::N128 => "128",
            OwnTile::N256 => "256",
            other => other.suffix(),
        }
    }

    /// The kernel named `name` in `DINOV2_GEMM_TILE`.
    pub fn from_env_name(name: &str) -> Option<OwnTile> {
        OwnTile::ALL.into_iter().find(|t| t.env_name() == name)
    }

    /// Threads of a block (`GM_THREADS`, `GW_THREADS`, `GP_THREADS`).
    fn threads(self) -> u32 {
        match self {
            OwnTile::N128 | OwnTile::N256 => 256,
            OwnTile::Tma | OwnTile::Tma2 | OwnTile::PingPong | OwnTile::PingPong2 => 384,
        }
    }

    /// Stages of the kernel's pipeline.
    fn stages(self) -> usize {
        match self {
            OwnTile::N128 => 3,
            _ => 4,
        }
    }

    /// Dynamic shared memory of a block: the stages of A `[128][64]` and B `[cols][64]` in
    /// 16-bit elements, the persistent kernel's two output tiles (128 rows of cols·2 + 16
    /// bytes), the TMA kernels' mbarriers (two a stage), and 1 KiB for aligning the stages to
    /// 1024 bytes (`GM_SMEM_BYTES`, `GW_SMEM_BYTES`, `GP_SMEM_BYTES`).
    pub(crate) fn smem_bytes(self) -> u32 {
        let (cols, stages) = (self.cols(), self.stages());
        // The persistent kernels' output tiles and row norms (8 bytes a row), two of each.
        let out_tiles = if self.persistent() {
            2 * TILE_ROWS * (cols * 2 + 16) + 2 * TILE_ROWS * 8
        } else {
            0
        };
        let barriers = if self.fed_by_tma() { 2 * stages * 8 } else { 0 };
        (stages * (TILE_ROWS + cols) * TILE_K * 2 + out_tiles + barriers + 1024) as u32
    }

    /// Whether the kernel's operands come by TMA (tensor maps, not pointers).
    fn fed_by_tma(self) -> bool {
        !matches!(self, OwnTile::N128 | OwnTile::N256)
    }

    /// Whether a block stays resident and walks the tiles (a 1-D grid of at most the blocks or
    /// clusters that fit on the device at once).
    pub fn persistent(self) -> bool {
        matches!(self, OwnTile::PingPong | OwnTile::PingPong2)
    }

    /// The launch grid for an `[m, n]` output: a block a tile (`(n / cols, row tiles)`, the row
    /// tiles a whole number of clusters: a CTA past m computes zeros and stores nothing); for
    /// the persistent kernels a cluster a unit of `cluster` row tiles by one column tile, at
    /// most `resident` clusters (as many as fit on the device at once).
    fn grid(self, m: usize, n: usize, resident: u32) -> (u32, u32, u32) {
        let row_tiles = m.div_ceil(TILE_ROWS).next_multiple_of(self.cluster());
        let col_tiles = n / self.cols();
        if self.persistent() {
            let units = row_tiles / self.cluster() * col_tiles;
            let clusters = units.min(resident.max(1) as usize);
            ((clusters * self.cluster()) as u32, 1, 1)
        } else {
            (col_tiles as u32, row_tiles as u32, 1)
        }
    }

    /// Rows of B a CTA fetches a stage: all the tile's, or half of them for the cluster (the
    /// tensor map's box).
    fn b_box_rows(self) -> usize {
        self.cols() / self.cluster()
    }

    /// CTAs of a cluster along M.
    fn cluster(self) -> usize {
        match self {
            OwnTile::Tma2 | OwnTile::PingPong2 => 2,
            _ => 1,
        }
    }

    /// The kernel that runs `n` output columns under this choice: itself where its tile divides
    /// `n`, else the 128-column one where that does, else none.
    pub(crate) fn for_cols(self, n: usize) -> Option<OwnTile> {
        if n.is_multiple_of(self.cols()) {
            Some(self)
        } else if n.is_multiple_of(OwnTile::N128.cols()) {
            Some(OwnTile::N128)
        } else {
            None
        }
    }
}

/// Rows of a block's tile (`GM_BM`). Keep in sync with gemm_sm90a.cu.
const TILE_ROWS: usize = 128;
/// K per pipeline stage (`GM_BK`): one 128-byte swizzled row of 64 16-bit elements.
const TILE_K: usize = 64;
/// Columns of the persistent kernels' tile (`GP_BN`), and so of each row statistic that
/// [`Device::linear_residual`] writes: `n / STATS_COLUMNS` pairs a row.
pub const STATS_COLUMNS: usize = 128;

/// A tensor map (`CUtensorMap`) as a kernel parameter: the TMA kernel reads its operands' shape,
/// box and swizzle from two of them.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub(crate) struct TensorMap(dsys::CUtensorMap);

// SAFETY: a plain 128-byte C struct, which the kernel takes by value (`__grid_constant__`).
unsafe impl DeviceRepr for TensorMap {}

/// What `cuTensorMapEncodeTiled` is given for a row-major `[rows][k]` operand of 16-bit
/// elements read in boxes of `box_rows` rows of 64 elements: dimensions (innermost first), the
/// byte stride of a row, the box. The TMA kernel's box is one pipeline stage's A or B tile.
pub(crate) fn tensor_map_shape(
    rows: usize,
    k: usize,
    box_rows: usize,
) -> ([u64; 2], [u64; 1], [u32; 2]) {
    (
        [k as u64, rows as u64],
        [(k * 2) as u64],
        [TILE_K as u32, box_rows as u32],
    )
}

/// The tensor map of a row-major `[rows][k]` operand at device address `ptr` (16-byte aligned,
/// `k % 8 == 0`), in boxes of `box_rows` x 64 elements in the 128-byte swizzle, zeros past the
/// last row.
fn tensor_map(ptr: u64, dtype: DType, rows: usize, k: usize, box_rows: usize) -> Result<TensorMap> {
    use dsys::{
        CUtensorMapDataType as Ty, CUtensorMapFloatOOBfill as Fill,
        CUtensorMapInterleave as Interleave, CUtensorMapL2promotion as L2,
        CUtensorMapSwizzle as Swizzle,
    };
    let ty = match dtype {
        DType::F16 => Ty::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        DType::BF16 => Ty::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        other => {
            return Err(KernelError::Unsupported(format!(
                "no tensor map for {other} operands"
            )))
        }
    };
    let (dims, strides, boxes) = tensor_map_shape(rows, k, box_rows);
    let elements = [1u32, 1];
    let mut map = std::mem::MaybeUninit::<dsys::CUtensorMap>::zeroed();
    // SAFETY: writes the 128-byte map; every array holds the rank's (2) entries (strides one
    // fewer); `ptr` is a live device allocation of rows·k elements (the caller's buffer).
    unsafe {
        dsys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            ty,
            2,
            ptr as *mut c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elements.as_ptr(),
            Interleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            Swizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            L2::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            Fill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    }
    .result()
    .ctx(|| format!("encoding the tensor map of a [{rows}, {k}] {dtype} operand"))?;
    // SAFETY: initialized by the successful call above (and zeroed before it).
    Ok(TensorMap(unsafe { map.assume_init() }))
}

/// Where one of our GEMMs writes: the output y, or (persistent kernels) the output of a
/// product with a LayerNorm folded in, or the residual stream it updates with gamma ⊙ its
/// product (and the updated rows' statistics, where given).
enum OwnOut<'a> {
    Y(&'a mut Buffer),
    Folded {
        y: &'a mut Buffer,
        norm: RowStats<'a>,
        colsum: &'a Buffer,
    },
    Residual {
        stream: &'a mut Buffer,
        gamma: &'a Buffer,
        stats: Option<&'a mut Buffer>,
    },
}

/// The statistics of the rows of a residual stream `[m, k]` that a GEMM with a LayerNorm folded
/// in normalizes its sums with ([`Device::linear_folded`]): `stats` f32 `[m, parts, 2]`, each
/// row's (mean, M2) over `parts` groups of `k / parts` columns ([`Device::row_stats`] writes one,
/// [`Device::linear_residual`] one a 128-column tile), and the norm's epsilon.
pub struct RowStats<'a> {
    /// The pairs.
    pub stats: &'a Buffer,
    /// Pairs a row.
    pub parts: usize,
    /// The LayerNorm's epsilon.
    pub eps: f32,
}

/// The `act` part of the kernel names, for the activations the epilogue has.
fn act_name(act: Act) -> Option<&'static str> {
    match act {
        Act::Identity => Some("id"),
        Act::Gelu => Some("gelu"),
        Act::GeluTanh => Some("gelu_tanh"),
        _ => None,
    }
}

/// The policy and kernel choice of a device, in one atomic byte (bits 0-1 the [`OwnGemm`], bits
/// 2-4 the [`OwnTile`]: its index in [`OwnTile::ALL`]), and how many clusters of the `_pp2`
/// kernels fit on the device at once (0 until asked, [`NO_CLUSTERS`] when none does; they all have
/// the same resources).
pub(crate) struct OwnGemmState(AtomicU8, AtomicU32);

/// [`OwnGemmState`]'s answer when the driver said that no cluster of the `_pp2` kernels fits.
const NO_CLUSTERS: u32 = u32::MAX;

impl OwnGemmState {
    /// From `DINOV2_GEMM`'s value, read by the caller (`fused`, `own`), and `DINOV2_GEMM_TILE`
    /// (`128`, the default, `256`, `tma`, `tma2`, `pp`, `pp2`); off where the kernels are not
    /// loaded (`hopper` false: compute capability other than 9.0, or a driver that refused
    /// them).
    pub(crate) fn from_env(hopper: bool, gemm_switch: Option<&str>) -> Result<Self> {
        let policy = match gemm_switch {
            _ if !hopper => OwnGemm::Off,
            Some("fused") => OwnGemm::Fused,
            Some("own") => OwnGemm::All,
            _ => OwnGemm::Off,
        };
        let names = OwnTile::ALL.map(OwnTile::env_name);
        let tile = crate::switch("DINOV2_GEMM_TILE", &names)?
            .and_then(OwnTile::from_env_name)
            .unwrap_or(OwnTile::N128);
        let state = OwnGemmState(AtomicU8::new(0), AtomicU32::new(0));
        state.set(policy, tile);
        Ok(state)
    }

    fn set(&self, policy: OwnGemm, tile: OwnTile) {
        let bits = policy as u8 | ((tile as u8) << 2);
        self.0.store(bits, Ordering::Relaxed);
    }

    fn get(&self) -> (OwnGemm, OwnTile) {
        let bits = self.0.load(Ordering::Relaxed);
        let policy = match bits & 3 {
            1 => OwnGemm::Fused,
            2 => OwnGemm::All,
            _ => OwnGemm::Off,
        };
        let tile = OwnTile::ALL[usize::from(bits >> 2) % OwnTile::ALL.len()];
        (policy, tile)
    }
}

impl Device {
    /// Which GEMMs run on our Hopper kernels, and which kernel.
    pub fn own_gemm(&self) -> (OwnGemm, OwnTile) {
        self.own_gemm.get()
    }

    /// Sets which GEMMs run on our Hopper kernels from now on (recordings already made keep
    /// theirs). An error where they are not loaded (a device other than compute capability 9.0,
    /// or a driver that refused them), unless `policy` is [`OwnGemm::Off`].
    pub fn set_own_gemm(&self, policy: OwnGemm, tile: OwnTile) -> Result<()> {
        let info = self.info();
        if policy != OwnGemm::Off && !info.hopper_kernels() {
            return Err(KernelError::Unsupported(match &info.hopper_error {
                Some(why) => format!("our GEMM kernels (sm_90a) were refused: {why}"),
                None => format!(
                    "our GEMM kernels are sm_90a code; {} is compute capability {}.{}",
                    info.name, info.compute_capability.0, info.compute_capability.1
                ),
            }));
        }
        self.own_gemm.set(policy, tile);
        Ok(())
    }

    /// How many clusters of the persistent cluster kernel `name` (of `tile`) fit on the device at
    /// once: the driver's answer for its threads, shared memory and cluster shape, asked once.
    /// A cluster's CTAs must share a GPC, so this can be less than half the SMs; 0 where none
    /// fits (remembered too).
    fn resident_clusters(&self, name: &str, tile: OwnTile) -> Result<u32> {
        match self.own_gemm.1.load(Ordering::Relaxed) {
            0 => {}
            NO_CLUSTERS => return Ok(0),
            known => return Ok(known),
        }
        let f = self.function(name, tile.smem_bytes())?;
        self.bind()?;
        let cfg = LaunchConfig {
            grid_dim: (tile.cluster() as u32, 1, 1),
            block_dim: (tile.threads(), 1, 1),
            shared_mem_bytes: tile.smem_bytes(),
        };
        let clusters = f
            .occupancy_max_active_clusters(cfg, &self.stream)
            .ctx(|| format!("asking how many clusters of {name} fit at once"))?;
        let remembered = if clusters == 0 { NO_CLUSTERS } else { clusters };
        self.own_gemm.1.store(remembered, Ordering::Relaxed);
        Ok(clusters)
    }

    /// Queues `y = act(x·wᵀ + bias)` on our kernel when the policy picks it for `act` and the
    /// shape and pointers allow; `Ok(false)` (nothing queued) otherwise. Shapes and dtypes are
    /// checked by the caller ([`Device::linear_fusing`]): x `[m, k]`, w `[n, k]`, y `[m, n]` of one
    /// type, bias `[n]` of that type or f32, m, n, k > 0.
    pub(crate) fn own_linear(
        &self,
        x: &Buffer,
        w: &Buffer,
        bias: Option<&Buffer>,
        y: &mut Buffer,
        (m, n, k): (usize, usize, usize),
        act: Act,
    ) -> Result<bool> {
        let (policy, choice) = self.own_gemm();
        let wanted = match policy {
            OwnGemm::Off => false,
            OwnGemm::Fused => act == Act::Gelu,
            OwnGemm::All => true,
        };
        let (Some(act), Some(tile), true) = (act_name(act), choice.for_cols(n), wanted) else {
            return Ok(false);
        };
        self.launch_own(x, w, bias, OwnOut::Y(y), act, tile, (m, n, k))
    }

    /// The kernel that would put the residual update of an `[n, k]` linear layer into its
    /// epilogue ([`Device::linear_residual`]), if any: where the policy is [`OwnGemm::All`] with
    /// [`OwnTile::PingPong`] or [`OwnTile::PingPong2`] and `k >= 2n`, a GEMM long enough for its
    /// MMAs to hide the stream's reads and writes (the MLP's output, not the attention's). The
    /// pointers and the shape's other limits are checked at the launch.
    pub fn residual_gemm(&self, n: usize, k: usize) -> Option<OwnTile> {
        let (policy, choice) = self.own_gemm();
        let tile = choice.for_cols(n)?;
        (policy == OwnGemm::All && tile.persistent() && k >= 2 * n && k.is_multiple_of(TILE_K))
            .then_some(tile)
    }

    /// `stream += gamma ⊙ (x·wᵀ + bias)`, the residual update of a pre-norm block, in one of our
    /// GEMM kernels' epilogue where [`Device::own_gemm`]'s policy and the shape allow (the
    /// branch `x·wᵀ + bias` is then never written to memory): `Ok(true)`. Otherwise nothing is
    /// queued and `Ok(false)`: the caller runs the product and the update as two operations.
    /// Either way each element is the branch rounded to x's type, added in f32 and rounded to the
    /// stream's type, as [`Device::linear`] then [`Device::add_scaled`] compute it. x `[m, k]` and
    /// w `[n, k]` of one type, bias `[n]` of that type or f32, gamma `[n]` f32, the stream
    /// `[m, n]` f32 or x's type. With `stats` (f32 `[m, n / 128, 2]`, a stream in x's type), also
    /// each updated row's (mean, M2) over each 128 columns, for a next GEMM with the LayerNorm
    /// folded in ([`RowStats`] of `n / 128` parts).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_residual(
        &self,
        x: &Buffer,
        w: &Buffer,
        bias: Option<&Buffer>,
        gamma: &Buffer,
        stream: &mut Buffer,
        stats: Option<&mut Buffer>,
        (m, n, k): (usize, usize, usize),
    ) -> Result<bool> {
        const OP: &str = "linear_residual";
        let t = float(OP, x)?;
        expect(OP, "x", x, t, m * k)?;
        expect(OP, "weight", w, t, n * k)?;
        expect(OP, "gamma", gamma, DType::F32, n)?;
        // `_rx`: the kernel of a stream in t.
        let rx = residual_suffix(OP, stream, t, m * n)?;
        check_linear_bias(OP, bias, t, n)?;
        if let Some(stats) = &stats {
            if rx.is_empty() {
                return Err(KernelError::shape(OP, "statistics of an f32 stream"));
            }
            expect(OP, "stats", stats, DType::F32, m * (n / STATS_COLUMNS) * 2)?;
        }
        if m == 0 || n == 0 || k == 0 {
            return Ok(false);
        }
        let Some(tile) = self.residual_gemm(n, k) else {
            return Ok(false);
        };
        let out = OwnOut::Residual {
            stream,
            gamma,
            stats,
        };
        self.launch_own(x, w, bias, out, &format!("res{rx}"), tile, (m, n, k))
    }

    /// The kernel that would run an `[n, k]` linear layer with the LayerNorm before it folded
    /// in ([`Device::linear_folded`]), if any: where the policy is [`OwnGemm::All`] with
    /// [`OwnTile::PingPong`] or [`OwnTile::PingPong2`] and the shape has whole tiles.
    pub fn folded_gemm(&self, n: usize, k: usize) -> Option<OwnTile> {
        let (policy, choice) = self.own_gemm();
        let tile = choice.for_cols(n)?;
        (policy == OwnGemm::All && tile.persistent() && k.is_multiple_of(TILE_K) && k > 0)
            .then_some(tile)
    }

    /// `y = act(LayerNorm(stream)·wᵀ + bias)` with the LayerNorm folded into the product (see
    /// [`fold_layer_norm`](crate::fold_layer_norm)): `folded` is the layer's folded weight
    /// `[n, k]` in the stream's 16-bit type, `colsum` its row sums and `bias` the folded bias
    /// (`[n]` f32), `norm` the stream's row statistics. The normed rows are never written.
    /// `Ok(true)` where [`Device::folded_gemm`] has a kernel and the pointers and shape allow;
    /// otherwise nothing is queued and `Ok(false)`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_folded(
        &self,
        stream: &Buffer,
        folded: &Buffer,
        colsum: &Buffer,
        bias: &Buffer,
        norm: RowStats,
        y: &mut Buffer,
        (m, n, k): (usize, usize, usize),
        act: Act,
    ) -> Result<bool> {
        const OP: &str = "linear_folded";
        let t = float(OP, stream)?;
        expect(OP, "stream", stream, t, m * k)?;
        expect(OP, "weight", folded, t, n * k)?;
        expect(OP, "colsum", colsum, DType::F32, n)?;
        expect(OP, "bias", bias, DType::F32, n)?;
        expect(OP, "y", y, t, m * n)?;
        let parts = norm.parts;
        if parts == 0 || k % parts != 0 {
            return Err(KernelError::shape(
                OP,
                format!("{parts} statistics a row of {k} columns"),
            ));
        }
        expect(OP, "stats", norm.stats, DType::F32, m * parts * 2)?;
        let (Some(act), Some(tile)) = (act_name(act), self.folded_gemm(n, k)) else {
            return Ok(false);
        };
        if m == 0 || n == 0 || i32::try_from(parts).is_err() {
            return Ok(false);
        }
        let out = OwnOut::Folded { y, norm, colsum };
        self.launch_own(
            stream,
            folded,
            Some(bias),
            out,
            &format!("{act}_ln"),
            tile,
            (m, n, k),
        )
    }

    /// Launches `gemm_{t}_{kind}_{tile}` on x, w and bias into `out` where the shape and
    /// pointers allow; `Ok(false)` (nothing queued) otherwise.
    #[allow(clippy::too_many_arguments)]
    fn launch_own(
        &self,
        x: &Buffer,
        w: &Buffer,
        bias: Option<&Buffer>,
        out: OwnOut,
        kind: &str,
        tile: OwnTile,
        (m, n, k): (usize, usize, usize),
    ) -> Result<bool> {
        let t = x.dtype();
        if !matches!(t, DType::F16 | DType::BF16) {
            return Ok(false);
        }
        let s = &self.stream;
        let (xp, wp) = (x.ptr(s), w.ptr(s));
        let yp = match &out {
            OwnOut::Y(y) | OwnOut::Folded { y, .. } => y.ptr(s),
            OwnOut::Residual { stream, .. } => stream.ptr(s),
        };
        let name = format!("gemm_{t}_{kind}_{}", tile.suffix());
        let resident = match tile {
            OwnTile::PingPong2 => self.resident_clusters(&name, tile)?,
            _ => self.info().multiprocessors,
        };
        if resident == 0 {
            return Ok(false);
        }
        let grid = tile.grid(m, n, resident);
        let fits = k % TILE_K == 0
            && [xp, wp, yp].iter().all(|p| p % 16 == 0)
            && grid.1 <= 65535
            // The kernels' int tile and pipeline counters.
            && m.div_ceil(TILE_ROWS) * (n / tile.cols()) * (k / TILE_K) <= i32::MAX as usize
            // The first row of a tile (a cluster's second may start a tile past m), in int.
            && [m + 2 * TILE_ROWS, n, k].iter().all(|&v| i32::try_from(v).is_ok());
        if !fits {
            return Ok(false);
        }
        let (a, b) = if tile.fed_by_tma() {
            // Encoding a tensor map may need the device's context current on this thread.
            self.bind()?;
            (
                Arg::TensorMap(tensor_map(xp, t, m, k, TILE_ROWS)?),
                Arg::TensorMap(tensor_map(wp, t, n, k, tile.b_box_rows())?),
            )
        } else {
            (Arg::Ptr(xp), Arg::Ptr(wp))
        };
        let bias_ptr = Arg::Ptr(bias.map_or(0, |b| b.ptr(s)));
        let bias_f32 = Arg::I32(i32::from(bias.is_some_and(|b| b.dtype() == DType::F32)));
        let mut args = match out {
            OwnOut::Y(_) => vec![a, b, bias_ptr, bias_f32, Arg::Ptr(yp)],
            OwnOut::Residual { gamma, stats, .. } => {
                let stats = stats.map_or(0, |st| st.ptr(s));
                let gamma = gamma.ptr(s);
                if gamma % 16 != 0 {
                    return Ok(false);
                }
                let (stream, gamma, stats) = (Arg::Ptr(yp), Arg::Ptr(gamma), Arg::Ptr(stats));
                vec![a, b, bias_ptr, bias_f32, stream, gamma, stats]
            }
            OwnOut::Folded { norm, colsum, .. } => vec![
                a,
                b,
                bias_ptr,
                Arg::Ptr(yp),
                Arg::Ptr(norm.stats.ptr(s)),
                Arg::I32(norm.parts as i32),
                Arg::Ptr(colsum.ptr(s)),
                Arg::F32(norm.eps),
            ],
        };
        args.extend([m, n, k].map(|v| Arg::I32(v as i32)));
        // SAFETY: x holds m·k, w n·k elements of t, bias, gamma and colsum n, the output (y or
        // the stream) m·n, the statistics in m·(n / 128) or m·parts pairs (checked by the
        // callers); the kernel reads and writes no more (rows past m are zero-filled and not
        // stored; the tensor maps span exactly x and w).
        unsafe { self.launch(&name, grid, tile.threads(), tile.smem_bytes(), &args)? };
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_gemms_are_off_without_the_hopper_kernels() {
        for switch in ["own", "fused"] {
            let without = OwnGemmState::from_env(false, Some(switch)).unwrap();
            assert_eq!(without.get().0, OwnGemm::Off, "{switch}");
            let with = OwnGemmState::from_env(true, Some(switch)).unwrap();
            assert_ne!(with.get().0, OwnGemm::Off, "{switch}");
        }
        let unset = OwnGemmState::from_env(true, None).unwrap();
        assert_eq!(unset.get().0, OwnGemm::Off);
    }

    #[test]
    fn tiles_fit_the_columns() {
        use OwnTile::*;
        assert_eq!(N128.for_cols(768), Some(N128));
        assert_eq!(N256.for_cols(768), Some(N256));
        assert_eq!(Tma.for_cols(768), Some(Tma));
        assert_eq!(N256.for_cols(384), Some(N128));
        assert_eq!(Tma.for_cols(1152), Some(N128));
        assert_eq!(N128.for_cols(100), None);
        assert_eq!(Tma.for_cols(64), None);
        assert_eq!(Tma2.for_cols(3072), Some(Tma2));
        assert_eq!(Tma2.for_cols(384), Some(N128));
        assert_eq!(PingPong.for_cols(384), Some(PingPong));
        assert_eq!(PingPong.for_cols(100), None);
        assert_eq!(PingPong2.for_cols(384), Some(PingPong2));
    }

    #[test]
    fn tiles_are_named_in_the_environment() {
        for tile in OwnTile::ALL {
            assert_eq!(OwnTile::from_env_name(tile.env_name()), Some(tile));
        }
        assert_eq!(OwnTile::from_env_name("tma2"), Some(OwnTile::Tma2));
        assert_eq!(OwnTile::from_env_name("pp"), Some(OwnTile::PingPong));
        assert_eq!(OwnTile::from_env_name("pp2"), Some(OwnTile::PingPong2));
        assert_eq!(OwnTile::from_env_name("512"), None);
    }

    #[test]
    fn grids_cover_the_tiles() {
        use OwnTile::*;
        // ViT-B/14's qkv at batch 256: 514 row tiles.
        assert_eq!(N128.grid(65792, 2304, 132), (18, 514, 1));
        assert_eq!(Tma.grid(65792, 2304, 132), (9, 514, 1));
        assert_eq!(Tma2.grid(65792 - 128, 2304, 132), (9, 514, 1));
        assert_eq!(Tma2.grid(65792, 2304, 132), (9, 514, 1));
        assert_eq!(Tma2.grid(1, 256, 132), (1, 2, 1));
        // Persistent: a block an SM, or a block a tile where there are fewer.
        assert_eq!(PingPong.grid(65792, 2304, 132), (132, 1, 1));
        assert_eq!(PingPong.grid(130, 256, 132), (4, 1, 1));
        // Clusters of two along M: units of two row tiles (257 of them here by 18 columns),
        // at most the resident clusters, whole clusters.
        assert_eq!(PingPong2.grid(65792, 2304, 60), (120, 1, 1));
        assert_eq!(PingPong2.grid(130, 256, 66), (4, 1, 1));
        assert_eq!(PingPong2.grid(1, 128, 66), (2, 1, 1));
    }

    #[test]
    fn shared_memory_fits_the_blocks_an_sm() {
        // 228 KiB an SM, 1 KiB of it reserved per block; at most 227 KiB for one block.
        let per_sm = 228 * 1024;
        assert_eq!(OwnTile::N128.smem_bytes(), 99_328);
        assert!(2 * (OwnTile::N128.smem_bytes() + 1024) <= per_sm);
        assert!(OwnTile::N256.smem_bytes() <= 227 * 1024);
        assert!(OwnTile::Tma.smem_bytes() <= 227 * 1024);
        assert_eq!(OwnTile::Tma2.smem_bytes(), OwnTile::Tma.smem_bytes());
        assert!(OwnTile::PingPong.smem_bytes() <= 227 * 1024);
        assert_eq!(
            OwnTile::PingPong2.smem_bytes(),
            OwnTile::PingPong.smem_bytes()
        );
    }

    #[test]
    fn launch_geometry_matches_the_kernel_source() {
        use crate::ops::tests::{define, kernel_source};
        let src = kernel_source("gemm_sm90a.cu");
        assert_eq!(define(&src, "GM_BM"), TILE_ROWS);
        assert_eq!(define(&src, "GM_BK"), TILE_K);
        assert_eq!(define(&src, "GM_THREADS"), OwnTile::N128.threads() as usize);
        assert_eq!(define(&src, "GW_THREADS"), OwnTile::Tma.threads() as usize);
        assert_eq!(define(&src, "GW_BN"), OwnTile::Tma.cols());
        assert_eq!(define(&src, "GW_STAGES"), 4);
        assert_eq!(
            define(&src, "GP_THREADS"),
            OwnTile::PingPong.threads() as usize
        );
        assert_eq!(define(&src, "GP_BN"), OwnTile::PingPong.cols());
        assert_eq!(define(&src, "GP_STAGES"), OwnTile::PingPong.stages());
        assert!(src.contains(
            "#define GP_SMEM_BYTES \\\n    (GP_STAGES * GM_STAGE_BYTES(GP_BN) + 2 * GP_TILE_BYTES + \
             2 * GP_STAGES * 8 + 2 * GP_NORM_BYTES + 1024)"
        ));
        assert!(src.contains("#define GP_TILE_BYTES (GM_BM * (GP_BN * 2 + 16))"));
        assert!(src.contains("#define GP_NORM_BYTES (GM_BM * 8)"));
        assert_eq!(
            OwnTile::PingPong.smem_bytes(),
            4 * (128 + 128) * 64 * 2 + 2 * 128 * (128 * 2 + 16) + 64 + 2 * 128 * 8 + 1024
        );
        assert_eq!(define(&src, "GP_BN"), STATS_COLUMNS);
        // The two cp.async tile shapes: columns, stages (what smem_bytes counts), MMA groups
        // left in flight, blocks an SM.
        assert!(src.contains("GEMM_KERNEL(name, T, aname, ACT, 128, 3, 0, 2)"));
        assert!(src.contains("GEMM_KERNEL(name, T, aname, ACT, 256, 4, 1, 1)"));
        assert!(src
            .contains("#define GM_SMEM_BYTES(BN, STAGES) ((STAGES) * GM_STAGE_BYTES(BN) + 1024)"));
        assert!(src.contains(
            "#define GW_SMEM_BYTES (GW_STAGES * GM_STAGE_BYTES(GW_BN) + 2 * GW_STAGES * 8 + 1024)"
        ));
        assert_eq!(OwnTile::N128.smem_bytes(), 3 * (128 + 128) * 64 * 2 + 1024);
        assert_eq!(OwnTile::N256.smem_bytes(), 4 * (128 + 256) * 64 * 2 + 1024);
        assert_eq!(
            OwnTile::Tma.smem_bytes(),
            4 * (128 + 256) * 64 * 2 + 64 + 1024
        );
        // The TMA boxes are one stage's A [128][64] and B [cols][64] tiles (B [cols / 2][64] a
        // CTA of a cluster).
        assert!(src.contains("tma_load_2d(stage, map_x, bar, k0, m0);"));
        assert!(src.contains("tma_load_2d(stage + A_BYTES, map_w, bar, k0, n0);"));
        assert!(src.contains("constexpr int HALF = BN / 2;"));
        assert_eq!(
            tensor_map_shape(1000, 768, 128),
            ([768, 1000], [1536], [64, 128])
        );
        assert_eq!(
            tensor_map_shape(3072, 768, 256),
            ([768, 3072], [1536], [64, 256])
        );
    }

    #[test]
    fn the_state_round_trips() {
        let s = OwnGemmState(AtomicU8::new(0), AtomicU32::new(0));
        for policy in [OwnGemm::Off, OwnGemm::Fused, OwnGemm::All] {
            for tile in OwnTile::ALL {
                s.set(policy, tile);
                assert_eq!(s.get(), (policy, tile));
            }
        }
    }
}
