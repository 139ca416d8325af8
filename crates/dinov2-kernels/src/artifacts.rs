//! The kernel artifacts built by `cargo xtask kernels` and embedded here: per kernel family one
//! compute_80 PTX (ISA 9.0, JIT-compiled by the driver on any sm_80+ GPU) and one sm_90 cubin
//! (SASS for H100/H200, no JIT).

/// One compiled `kernels/<name>.cu`.
#[derive(Debug, Clone, Copy)]
pub struct Artifact {
    /// The family (`attention`, `layer_norm`, ...), the source file's stem.
    pub name: &'static str,
    /// compute_80 PTX text.
    pub ptx: &'static str,
    /// sm_90 cubin.
    pub cubin_sm90: &'static [u8],
}

macro_rules! artifact {
    ($name:literal) => {
        Artifact {
            name: $name,
            ptx: include_str!(concat!("../artifacts/", $name, ".ptx")),
            cubin_sm90: include_bytes!(concat!("../artifacts/", $name, ".sm_90.cubin")),
        }
    };
}

/// Every kernel family.
pub const ARTIFACTS: &[Artifact] = &[
    artifact!("activation"),
    artifact!("attention"),
    artifact!("embed"),
    artifact!("layer_norm"),
];

/// `manifest.json`: source and artifact hashes and the nvcc version.
pub const MANIFEST: &str = include_str!("../artifacts/manifest.json");

/// `ptxas -v` registers, spills and shared memory per kernel (sm_90).
pub const RESOURCES: &str = include_str!("../artifacts/resources.txt");
