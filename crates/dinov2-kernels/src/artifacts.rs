//! The kernel artifacts built by `cargo xtask kernels` and embedded here: per kernel family one
//! compute_80 PTX (ISA 9.0, JIT-compiled by the driver on any sm_80+ GPU) and one sm_90 cubin
//! (SASS for H100/H200, no JIT); a Hopper-only family (`kernels/*_sm90a.cu`, wgmma) has an sm_90a
//! cubin alone and is loaded on compute capability 9.0 only.

/// One compiled `kernels/<name>.cu`.
#[derive(Debug, Clone, Copy)]
pub struct Artifact {
    /// The family (`attention`, `layer_norm`, ...), the source file's stem.
    pub name: &'static str,
    /// compute_80 PTX text; `None` for a Hopper-only family.
    pub ptx: Option<&'static str>,
    /// The cubin for compute capability 9.0: sm_90, or sm_90a for a Hopper-only family.
    pub cubin_sm90: &'static [u8],
}

macro_rules! artifact {
    ($name:literal) => {
        Artifact {
            name: $name,
            ptx: Some(include_str!(concat!("../artifacts/", $name, ".ptx"))),
            cubin_sm90: include_bytes!(concat!("../artifacts/", $name, ".sm_90.cubin")),
        }
    };
}

macro_rules! hopper_artifact {
    ($name:literal) => {
        Artifact {
            name: $name,
            ptx: None,
            cubin_sm90: include_bytes!(concat!("../artifacts/", $name, ".sm_90a.cubin")),
        }
    };
}

/// Every kernel family.
pub const ARTIFACTS: &[Artifact] = &[
    artifact!("activation"),
    artifact!("attention"),
    hopper_artifact!("attention_sm90a"),
    artifact!("embed"),
    hopper_artifact!("gemm_sm90a"),
    artifact!("layer_norm"),
];

/// `manifest.json`: source and artifact hashes and the nvcc version.
pub const MANIFEST: &str = include_str!("../artifacts/manifest.json");

/// `ptxas -v` registers, spills and shared memory per kernel (sm_90 and sm_90a).
pub const RESOURCES: &str = include_str!("../artifacts/resources.txt");
