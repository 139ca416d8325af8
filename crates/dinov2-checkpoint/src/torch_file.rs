//! PyTorch checkpoint files (`torch.save`: `.pth`, `.pt`, `pytorch_model.bin`), read in place.
//!
//! Since torch 1.6 such a file is an uncompressed zip archive: `ARCHIVE/data.pkl`, a pickle of the
//! saved object, and one record `ARCHIVE/data/KEY` per storage holding the raw little-endian
//! values. The pickle is read by the restricted reader of [`crate::pickle`], which runs no code;
//! each tensor becomes a byte range of the memory-mapped file, as safetensors' do.

use std::collections::HashMap;

use crate::pickle::{self, TensorSpec, Value};
use crate::weights::StorageDtype;

/// The first bytes of a zip archive's local file header.
pub const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

/// A tensor of the file, where its values lie.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchTensor {
    pub dtype: StorageDtype,
    pub shape: Vec<usize>,
    /// Byte range in the file.
    pub start: usize,
    pub len: usize,
}

/// Each tensor of a file by its dotted name in the saved object, or why it cannot be read (a type
/// we do not read, a strided view, a missing storage): an error only where the model needs it.
pub type Tensors = Vec<(String, Result<TorchTensor, String>)>;

/// Whether `bytes` start as the pre-1.6 (non-zip) `torch.save` format: a pickled magic number, or
/// a tar archive.
pub fn is_legacy_torch(bytes: &[u8]) -> bool {
    const MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
    bytes.starts_with(MAGIC) || bytes.get(257..262) == Some(b"ustar")
}

/// Every tensor of a `torch.save` zip archive, with names joined by `.` through nested dicts
/// (`{"teacher": {"backbone.cls_token": t}}` gives `teacher.backbone.cls_token`).
pub fn tensors(bytes: &[u8]) -> Result<Tensors, String> {
    let records = zip_records(bytes)?;
    let pkl = records
        .iter()
        .find(|r| r.name == "data.pkl" || r.name.ends_with("/data.pkl"))
        .ok_or("the zip archive has no data.pkl: not a torch.save file")?;
    let by_name: HashMap<&str, &Record> = records.iter().map(|r| (r.name.as_str(), r)).collect();
    let archive = pkl.name.strip_suffix("data.pkl").unwrap_or_default();
    if let Some(order) = by_name.get(format!("{archive}byteorder").as_str()) {
        let order = &bytes[order.start..order.start + order.len];
        if order != b"little" {
            return Err(format!(
                "the values are stored {}-endian; only little-endian files are read",
                String::from_utf8_lossy(order)
            ));
        }
    }
    let value = pickle::load(&bytes[pkl.start..pkl.start + pkl.len])
        .map_err(|e| format!("{}data.pkl: {e}", archive))?;
    let mut specs = Vec::new();
    match value {
        Value::Dict(items) => flatten(items, "", &mut specs),
        Value::Object(class) => {
            return Err(format!(
                "the file holds a pickled {class} object, not a dict of tensors: save the model's \
                 state_dict() instead (torch.save(model.state_dict(), path))"
            ))
        }
        _ => return Err("the file holds no dict of tensors".into()),
    }
    Ok(specs
        .into_iter()
        .map(|(name, spec)| {
            let data = format!("{archive}data/{}", spec.key);
            let found = match by_name.get(data.as_str()) {
                Some(record) => locate(&name, &spec, record),
                None => Err(format!(
                    "tensor `{name}`: its storage record {data} is missing"
                )),
            };
            (name, found)
        })
        .collect())
}

/// Collects the tensors of a (nested) dict under dotted names; other values are left out.
fn flatten(items: Vec<(Value, Value)>, prefix: &str, out: &mut Vec<(String, TensorSpec)>) {
    for (key, value) in items {
        let key = match key {
            Value::Str(s) => s,
            Value::Int(i) => i.to_string(),
            _ => continue,
        };
        let name = format!("{prefix}{key}");
        match value {
            Value::Tensor(spec) => out.push((name, spec)),
            Value::Dict(inner) => flatten(inner, &format!("{name}."), out),
            _ => {}
        }
    }
}

/// The byte range of a tensor in its storage record; only row-major, gap-free tensors are read.
fn locate(name: &str, spec: &TensorSpec, record: &Record) -> Result<TorchTensor, String> {
    let (dtype, size) = storage_kind(&spec.kind)
        .ok_or_else(|| format!("tensor `{name}` has the unknown storage type {}", spec.kind))?;
    if spec.shape.len() != spec.stride.len() {
        return Err(format!(
            "tensor `{name}`: its shape and strides differ in length"
        ));
    }
    let numel = spec
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("tensor `{name}` has the impossible shape {:?}", spec.shape))?;
    let mut expected = 1usize;
    for (&dim, &stride) in spec.shape.iter().zip(&spec.stride).rev() {
        if dim > 1 && stride != expected {
            return Err(format!(
                "tensor `{name}` is stored as a strided view (shape {:?}, stride {:?}): save a \
                 .contiguous() copy of it",
                spec.shape, spec.stride
            ));
        }
        expected = expected.saturating_mul(dim);
    }
    let dtype = dtype.ok_or_else(|| {
        format!(
            "tensor `{name}` holds {}, not float32, float16 or bfloat16",
            spec.kind
        )
    })?;
    let range = spec
        .offset
        .checked_add(numel)
        .and_then(|n| n.checked_mul(size))
        .filter(|&end| end <= record.len);
    match range {
        Some(_) => Ok(TorchTensor {
            dtype,
            shape: spec.shape.clone(),
            start: record.start + spec.offset * size,
            len: numel * size,
        }),
        None => Err(format!(
            "tensor `{name}` (shape {:?}, offset {}) runs past its storage of {} bytes: the file \
             is truncated or damaged",
            spec.shape, spec.offset, record.len
        )),
    }
}

/// A torch storage class: the element type when it is one we read, and the element size.
fn storage_kind(kind: &str) -> Option<(Option<StorageDtype>, usize)> {
    let read = |d: StorageDtype| Some((Some(d), d.size()));
    let other = |size: usize| Some((None, size));
    match kind {
        "FloatStorage" => read(StorageDtype::F32),
        "HalfStorage" => read(StorageDtype::F16),
        "BFloat16Storage" => read(StorageDtype::BF16),
        "ComplexDoubleStorage" => other(16),
        "DoubleStorage" | "LongStorage" | "ComplexFloatStorage" => other(8),
        "IntStorage" | "QInt32Storage" => other(4),
        "ShortStorage" | "UInt16Storage" => other(2),
        "CharStorage"
        | "ByteStorage"
        | "BoolStorage"
        | "QInt8Storage"
        | "QUInt8Storage"
        | "Float8_e4m3fnStorage"
        | "Float8_e5m2Storage" => other(1),
        _ => None,
    }
}

/// A stored (uncompressed) member of a zip archive: its name and the byte range of its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub start: usize,
    pub len: usize,
}

/// The `N` bytes at `at`, if the file has them.
fn bytes_at<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], String> {
    at.checked_add(N)
        .and_then(|end| b.get(at..end))
        .and_then(|s| s.try_into().ok())
        .ok_or_else(truncated)
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    bytes_at(b, at).map(u16::from_le_bytes)
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    bytes_at(b, at).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    bytes_at(b, at).map(u64::from_le_bytes)
}

/// `at + n`, or the truncation error where it overflows.
fn add(at: usize, n: usize) -> Result<usize, String> {
    at.checked_add(n).ok_or_else(truncated)
}

fn truncated() -> String {
    "the zip archive is truncated or damaged".into()
}

fn offset(v: u64) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| truncated())
}

/// The members of a zip archive (ZIP64 included), from its central directory. Compressed members
/// are refused: `torch.save` stores every record as it is.
pub fn zip_records(b: &[u8]) -> Result<Vec<Record>, String> {
    // The end-of-central-directory record: 22 bytes plus a comment of up to 64 KiB, at the end.
    let floor = b.len().saturating_sub(22 + 65535);
    let eocd = (floor..b.len().saturating_sub(21))
        .rev()
        .find(|&i| b[i..i + 4] == *b"PK\x05\x06")
        .ok_or("no end of central directory: the zip archive is truncated")?;
    let mut count = u64::from(u16_at(b, eocd + 10)?);
    let mut dir = u64::from(u32_at(b, eocd + 16)?);
    if count == 0xffff || dir == 0xffff_ffff {
        // ZIP64: a locator just before points at the ZIP64 end record.
        let locator = eocd.checked_sub(20).ok_or_else(truncated)?;
        if u32_at(b, locator)? != 0x0706_4b50 {
            return Err(truncated());
        }
        let end64 = offset(u64_at(b, locator + 8)?)?;
        if u32_at(b, end64)? != 0x0606_4b50 {
            return Err(truncated());
        }
        count = u64_at(b, add(end64, 32)?)?;
        dir = u64_at(b, add(end64, 48)?)?;
    }
    let mut at = offset(dir)?;
    let mut out = Vec::new();
    for _ in 0..count {
        if u32_at(b, at)? != 0x0201_4b50 {
            return Err(truncated());
        }
        let method = u16_at(b, add(at, 10)?)?;
        let mut compressed = u64::from(u32_at(b, add(at, 20)?)?);
        let mut uncompressed = u64::from(u32_at(b, add(at, 24)?)?);
        let name_len = usize::from(u16_at(b, add(at, 28)?)?);
        let extra_len = usize::from(u16_at(b, add(at, 30)?)?);
        let comment_len = usize::from(u16_at(b, add(at, 32)?)?);
        let mut local = u64::from(u32_at(b, add(at, 42)?)?);
        let name_start = add(at, 46)?;
        let extra_start = add(name_start, name_len)?;
        let next = add(add(extra_start, extra_len)?, comment_len)?;
        let name_bytes = b.get(name_start..extra_start).ok_or_else(truncated)?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        let extra = b
            .get(extra_start..extra_start + extra_len)
            .ok_or_else(truncated)?;
        // ZIP64 extra field: the 64-bit values of the fields set to 0xffffffff, in this order.
        let mut e = 0;
        while e + 4 <= extra.len() {
            let id = u16_at(extra, e)?;
            let size = usize::from(u16_at(extra, e + 2)?);
            let field = extra.get(e + 4..e + 4 + size).ok_or_else(truncated)?;
            if id == 1 {
                let mut f = 0;
                for value in [&mut uncompressed, &mut compressed, &mut local] {
                    if *value == 0xffff_ffff {
                        *value = u64_at(field, f)?;
                        f += 8;
                    }
                }
            }
            e += 4 + size;
        }
        if method != 0 {
            return Err(format!(
                "member {name} is compressed (method {method}); torch.save stores its records \
                 uncompressed: was the file re-zipped?"
            ));
        }
        let local = offset(local)?;
        if u32_at(b, local)? != 0x0403_4b50 {
            return Err(truncated());
        }
        let start = add(
            add(local, 30)?,
            usize::from(u16_at(b, add(local, 26)?)?) + usize::from(u16_at(b, add(local, 28)?)?),
        )?;
        if compressed != uncompressed {
            return Err(format!(
                "member {name} has two sizes ({compressed} and {uncompressed} bytes): the \
                 archive is damaged"
            ));
        }
        let len = offset(compressed)?;
        if start.checked_add(len).is_none_or(|end| end > b.len()) {
            return Err(format!(
                "member {name} runs past the end of the file: the file is truncated"
            ));
        }
        out.push(Record { name, start, len });
        at = next;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-member archive in the ZIP64 form torch writes past 4 GiB (ViT-g/14 in float32): every
    /// size and offset 0xffffffff in the 32-bit fields, the values in ZIP64 extra fields, and the
    /// ZIP64 end record with its locator.
    fn zip64(name: &str, data: &[u8], comment: &[u8]) -> Vec<u8> {
        let n = data.len() as u64;
        let mut out = Vec::new();
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend([45, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // version, flags, method, time, date, crc
        out.extend([0xff; 8]); // sizes: see the extra field
        out.extend((name.len() as u16).to_le_bytes());
        out.extend(20u16.to_le_bytes());
        out.extend(name.as_bytes());
        out.extend(1u16.to_le_bytes());
        out.extend(16u16.to_le_bytes());
        out.extend(n.to_le_bytes());
        out.extend(n.to_le_bytes());
        out.extend(data);
        let dir = out.len() as u64;
        out.extend(0x0201_4b50u32.to_le_bytes());
        out.extend([45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // versions .. crc
        out.extend([0xff; 8]);
        out.extend((name.len() as u16).to_le_bytes());
        out.extend(28u16.to_le_bytes());
        out.extend([0; 8]); // comment length, disk, internal and external attributes (part)
        out.extend([0; 2]);
        out.extend([0xff; 4]); // local header offset: see the extra field
        out.extend(name.as_bytes());
        out.extend(1u16.to_le_bytes());
        out.extend(24u16.to_le_bytes());
        out.extend(n.to_le_bytes());
        out.extend(n.to_le_bytes());
        out.extend(0u64.to_le_bytes());
        let dir_len = out.len() as u64 - dir;
        let end64 = out.len() as u64;
        out.extend(0x0606_4b50u32.to_le_bytes());
        out.extend(44u64.to_le_bytes());
        out.extend([45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend(1u64.to_le_bytes());
        out.extend(1u64.to_le_bytes());
        out.extend(dir_len.to_le_bytes());
        out.extend(dir.to_le_bytes());
        out.extend(0x0706_4b50u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(end64.to_le_bytes());
        out.extend(1u32.to_le_bytes());
        out.extend(0x0605_4b50u32.to_le_bytes());
        out.extend([0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        out.extend([0xff; 8]);
        out.extend((comment.len() as u16).to_le_bytes());
        out.extend(comment);
        out
    }

    #[test]
    fn zip64_records_are_found() {
        let data = b"the member's bytes";
        for comment in [&b""[..], b"a comment after the end record"] {
            let bytes = zip64("archive/data/0", data, comment);
            let records = zip_records(&bytes).unwrap();
            assert_eq!(records.len(), 1);
            let r = &records[0];
            assert_eq!(r.name, "archive/data/0");
            assert_eq!(&bytes[r.start..r.start + r.len], data);
        }
    }

    #[test]
    fn damaged_archives_are_errors_not_panics() {
        let whole = zip64("archive/data/0", b"0123456789", b"");
        // Every prefix, and every single byte set to 0xff: an error or a record within bounds.
        for cut in 0..whole.len() {
            if let Ok(records) = zip_records(&whole[..cut]) {
                assert!(records.iter().all(|r| r.start + r.len <= cut));
            }
        }
        // Offsets near the end of the address space: errors, not overflows.
        let locator = whole.len() - 22 - 20;
        for far in [u64::MAX, u64::MAX - 1, u64::MAX - 40] {
            let mut bytes = whole.clone();
            bytes[locator + 8..locator + 16].copy_from_slice(&far.to_le_bytes());
            assert!(zip_records(&bytes).is_err());
        }
        for i in 0..whole.len() {
            let mut bytes = whole.clone();
            bytes[i] = 0xff;
            if let Ok(records) = zip_records(&bytes) {
                assert!(records.iter().all(|r| r.start + r.len <= bytes.len()));
            }
        }
    }

    #[test]
    fn a_damaged_torch_file_is_an_error_not_a_panic() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/golden/original_pth/model.pth"
        );
        let whole = std::fs::read(path).unwrap();
        let good = tensors(&whole).unwrap();
        assert_eq!(good.len(), 49);
        let records = zip_records(&whole).unwrap();
        let pkl = records
            .iter()
            .find(|r| r.name.ends_with("data.pkl"))
            .unwrap();
        let directory = whole.len() - 22 - 46 * records.len() - 200;
        // Each byte of the pickle and of the zip directory set to a few values: whatever reads,
        // reads within the file.
        let mut bytes = whole.clone();
        for i in (pkl.start..pkl.start + pkl.len).chain(directory..whole.len()) {
            for v in [0x00, 0xff, whole[i] ^ 1] {
                bytes[i] = v;
                if let Ok(found) = tensors(&bytes) {
                    for t in found.iter().filter_map(|(_, t)| t.as_ref().ok()) {
                        assert!(t.start + t.len <= bytes.len());
                    }
                }
            }
            bytes[i] = whole[i];
        }
    }
}
