//! Shared helpers of the integration tests: the fixture folder written by
//! `xtask/golden/make_preprocess.py`, its `cases.json`, the expected tensors and CRC-32.

#![allow(dead_code)]

use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

/// `tests/fixtures/preprocess/` of the workspace.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/preprocess")
}

/// The parsed `cases.json`.
pub fn manifest() -> Value {
    let path = fixtures().join("cases.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("cases.json is valid JSON")
}

/// The expected tensors of one case.
pub struct Expected {
    bytes: Vec<u8>,
}

impl Expected {
    pub fn load(case: &str) -> Expected {
        let path = fixtures()
            .join("expected")
            .join(format!("{case}.safetensors"));
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        Expected { bytes }
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("valid safetensors")
    }

    /// A stored u8 tensor (shape, data), `None` when the case did not store it.
    pub fn u8(&self, name: &str) -> Option<(Vec<usize>, Vec<u8>)> {
        let st = self.tensors();
        let t = st.tensor(name).ok()?;
        assert_eq!(t.dtype(), Dtype::U8, "{name}");
        Some((t.shape().to_vec(), t.data().to_vec()))
    }

    /// A stored f32 tensor (shape, data).
    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let st = self.tensors();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        let data = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (t.shape().to_vec(), data)
    }
}

/// CRC-32 (IEEE, as Python's `zlib.crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, e) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *e = c;
    }
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc ^ 0xFFFF_FFFF
}

/// "identical" or a short description of how two byte arrays differ.
pub fn describe_u8_diff(ours: &[u8], theirs: &[u8]) -> Option<String> {
    if ours == theirs {
        return None;
    }
    if ours.len() != theirs.len() {
        return Some(format!("length {} vs {}", ours.len(), theirs.len()));
    }
    let mut count = 0;
    let mut max = 0i32;
    let mut first = None;
    for (i, (&a, &b)) in ours.iter().zip(theirs).enumerate() {
        let d = (a as i32 - b as i32).abs();
        if d > 0 {
            count += 1;
            max = max.max(d);
            first.get_or_insert((i, a, b));
        }
    }
    let (i, a, b) = first.unwrap_or_default();
    Some(format!(
        "{count} of {} bytes differ, max |diff| {max}, first at byte {i}: ours {a}, Pillow {b}",
        ours.len()
    ))
}
