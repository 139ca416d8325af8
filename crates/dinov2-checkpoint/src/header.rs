//! Names the tensor at fault in a safetensors file that the `safetensors` crate refuses without
//! naming one ("invalid shape, data type, or offset for tensor", an overflow, a size not in whole
//! bytes): the header is read again, tensor by tensor, and the first whose shape, dtype and byte
//! range disagree is described.

use std::collections::HashMap;

use safetensors::Dtype;
use serde::Deserialize;

/// One tensor's entry in the header, as the format defines it.
#[derive(Deserialize)]
struct Info {
    dtype: Dtype,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// What is wrong with the first inconsistent tensor of `file` (a whole safetensors file), in
/// offset order; `None` when the header cannot be read this way or every tensor is consistent.
pub(crate) fn explain_invalid_tensor(file: &[u8]) -> Option<String> {
    let len = u64::from_le_bytes(file.get(..8)?.try_into().ok()?);
    let header = file.get(8..8usize.checked_add(usize::try_from(len).ok()?)?)?;
    let data_len = file.len() - 8 - header.len();
    let mut entries: HashMap<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    entries.remove("__metadata__");
    let mut tensors: Vec<(String, Info)> = entries
        .into_iter()
        .map(|(name, value)| Some((name, Info::deserialize(value).ok()?)))
        .collect::<Option<_>>()?;
    tensors.sort_by(|(a, x), (b, y)| (x.data_offsets, a).cmp(&(y.data_offsets, b)));
    let mut end_of_previous = 0;
    for (name, info) in &tensors {
        let (start, end) = info.data_offsets;
        let elements = info.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let bytes = elements
            .and_then(|n| n.checked_mul(info.dtype.bitsize()))
            .filter(|bits| bits % 8 == 0)
            .map(|bits| bits / 8);
        let what = || format!("tensor `{name}` ({:?} {:?})", info.dtype, info.shape);
        let Some(bytes) = bytes else {
            return Some(format!(
                "{}: its size overflows or is not whole bytes",
                what()
            ));
        };
        if end < start {
            return Some(format!(
                "{}: data_offsets [{start}, {end}] end before they start",
                what()
            ));
        }
        if end > data_len {
            return Some(format!(
                "{}: data_offsets [{start}, {end}] reach past the {data_len} bytes of data",
                what()
            ));
        }
        if end - start != bytes {
            return Some(format!(
                "{}: takes {bytes} bytes, its data_offsets [{start}, {end}] hold {}",
                what(),
                end - start
            ));
        }
        if start != end_of_previous {
            return Some(format!(
                "{}: data_offsets [{start}, {end}] leave a gap or overlap at byte {end_of_previous}",
                what()
            ));
        }
        end_of_previous = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::explain_invalid_tensor;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data, 0);
        bytes
    }

    #[test]
    fn the_first_inconsistent_tensor_is_named() {
        let ok = r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "b": {"dtype": "F16", "shape": [2, 2], "data_offsets": [8, 16]}}"#;
        assert_eq!(explain_invalid_tensor(&file(ok, 16)), None);
        for (header, needles) in [
            (
                r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                   "b": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 16]}}"#,
                &["`b`", "takes 16 bytes", "hold 8"][..],
            ),
            (
                r#"{"a": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 8]}}"#,
                &["`a`", "overflows"][..],
            ),
            (
                r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}"#,
                &["`a`", "end before they start"][..],
            ),
            (
                r#"{"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}"#,
                &["`a`", "past the 16 bytes"][..],
            ),
            (
                r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}"#,
                &["`a`", "gap or overlap at byte 0"][..],
            ),
        ] {
            let found = explain_invalid_tensor(&file(header, 16)).expect(header);
            for needle in needles {
                assert!(found.contains(needle), "{found}: no {needle}");
            }
        }
        // Not a header this reads: no explanation, rather than a wrong one.
        assert_eq!(explain_invalid_tensor(b"abc"), None);
        assert_eq!(explain_invalid_tensor(&file("{{{", 0)), None);
        assert_eq!(explain_invalid_tensor(&u64::MAX.to_le_bytes()), None);
    }
}
