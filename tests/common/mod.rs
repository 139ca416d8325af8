//! Helpers shared by the integration tests: the golden fixtures and error measures.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dinov2::Tensor;
use safetensors::{Dtype, SafeTensors};

/// The golden fixture folder: `DINOV2_GOLDEN_DIR` when set (the GPU bundle carries the fixtures
/// elsewhere), else the repository's.
pub fn golden_dir() -> PathBuf {
    match std::env::var_os("DINOV2_GOLDEN_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden"),
    }
}

/// Every case folder (those with a `runs.json`), sorted.
pub fn cases() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap_or_else(|e| panic!("{}: {e}", golden_dir().display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("runs.json").is_file())
        .collect();
    out.sort();
    assert!(
        !out.is_empty(),
        "no golden cases in {}",
        golden_dir().display()
    );
    out
}

/// One run of a golden case, as `runs.json` describes it.
#[derive(Debug, Clone)]
pub struct Run {
    pub name: String,
    pub head: String,
    pub hidden_states: bool,
    pub attentions: bool,
    pub legacy_interpolation: bool,
    pub transformers_version: String,
}

impl Run {
    /// The head the run uses.
    pub fn head(&self) -> dinov2::Head {
        self.head.parse().expect("a known head")
    }

    /// The forward options the run asks for.
    pub fn options(&self) -> dinov2::ForwardOptions {
        dinov2::ForwardOptions {
            hidden_states: self.hidden_states,
            attentions: self.attentions,
            interpolation: if self.legacy_interpolation {
                dinov2::Interpolation::Legacy
            } else {
                dinov2::Interpolation::Current
            },
        }
    }
}

/// The runs of a case.
pub fn runs(case: &Path) -> Vec<Run> {
    let text = std::fs::read_to_string(case.join("runs.json")).expect("runs.json");
    let value: serde_json::Value = serde_json::from_str(&text).expect("runs.json is JSON");
    value
        .as_array()
        .expect("runs.json holds a list")
        .iter()
        .map(|r| Run {
            name: r["name"].as_str().expect("name").to_owned(),
            head: r["head"].as_str().expect("head").to_owned(),
            hidden_states: r["hidden_states"].as_bool().unwrap_or(false),
            attentions: r["attentions"].as_bool().unwrap_or(false),
            legacy_interpolation: r["legacy_interpolation"].as_bool().unwrap_or(false),
            transformers_version: r["transformers_version"].as_str().unwrap_or("").to_owned(),
        })
        .collect()
}

/// Every tensor of a safetensors file as f64 values with its shape.
pub fn read_f64(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let values = match v.dtype() {
                Dtype::F64 => v
                    .data()
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                Dtype::F32 => v
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, (v.shape().to_vec(), values))
        })
        .collect()
}

/// `‖a − b‖ / ‖b‖`.
pub fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Compares named outputs with the expected f64 tensors: same names, same shapes, relative L2
/// error within `tol`. Returns the largest error seen.
pub fn compare(
    context: &str,
    got: &[(String, Tensor)],
    expected: &BTreeMap<String, (Vec<usize>, Vec<f64>)>,
    tol: f64,
) -> f64 {
    let got_names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    let want_names: Vec<&str> = expected.keys().map(String::as_str).collect();
    let mut sorted = got_names.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, want_names, "{context}: output names differ");
    let mut worst = 0.0f64;
    for (name, t) in got {
        let (shape, want) = &expected[name];
        assert_eq!(&t.shape, shape, "{context}: `{name}` shape");
        let err = rel_l2(&t.data, want);
        assert!(
            err <= tol,
            "{context}: `{name}` relative L2 error {err:.3e} > {tol:.0e}"
        );
        worst = worst.max(err);
    }
    worst
}
