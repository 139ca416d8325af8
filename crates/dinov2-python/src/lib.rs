//! `dinov2_rs`, the Python binding of dinov2-rs: DINOv2 embeddings from Python without PyTorch,
//! for the places where a batch job runs inside a Python engine (Ray Data `map_batches`, Spark
//! `mapInArrow`, Daft UDFs) rather than as the `dinov2 embed` command.
//!
//! ```python
//! import dinov2_rs, numpy as np, pyarrow as pa
//! model = dinov2_rs.Embedder("path/to/dinov2-small", device="cuda", dtype="f16", normalize=True)
//! out = model.embed([b"...jpeg bytes...", "cat.png", np.zeros((480, 640, 3), np.uint8)])
//! vectors = np.asarray(out)        # (3, 384) float32, no copy (the buffer protocol)
//! column = pa.array(out)           # fixed_size_list<float>[384], no copy (Arrow's C data interface)
//! ```
//!
//! The inputs: encoded images (`bytes`, `bytearray`, `memoryview`), paths (`str`,
//! `os.PathLike`), decoded pixels (`H x W x 3` or `H x W` uint8 arrays, PIL images), or an Arrow
//! column of images (binary, or Hugging Face datasets' `{bytes, path}` struct) or paths (string),
//! taken through the Arrow PyCapsule interface: a pyarrow `Array` or `ChunkedArray`, a polars
//! `Series`, and so on. Decoding and the model run with the GIL released.

mod arrow_io;
mod embedder;
mod embeddings;
mod inputs;

use pyo3::prelude::*;

/// The module's docstring (`help(dinov2_rs)`).
const DOC: &str =
    "DINOv2 image embeddings from Rust (dinov2-rs), with the numbers of Hugging Face \
transformers and no PyTorch.

    import dinov2_rs, numpy as np, pyarrow as pa
    model = dinov2_rs.Embedder(\"path/to/dinov2-small\", device=\"cuda\", dtype=\"f16\")
    out = model.embed([\"cat.jpg\", jpeg_bytes, pil_image, uint8_array])
    np.asarray(out)   # (4, 384) float32, no copy
    pa.array(out)     # fixed_size_list<float>[384], no copy

Embedder loads a checkpoint directory (config.json, model.safetensors); embed takes a list of
images (encoded bytes, paths, H x W x 3 uint8 arrays, PIL images, Hugging Face {\"bytes\",
\"path\"} dicts) or an Arrow column of them, and returns Embeddings, a row per image; e[i] is
one Embedding.
";

/// The Python module `dinov2_rs`.
#[pymodule]
fn dinov2_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<embedder::Embedder>()?;
    m.add_class::<embeddings::Embeddings>()?;
    m.add_class::<embeddings::Embedding>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.setattr("__doc__", DOC)?;
    Ok(())
}
