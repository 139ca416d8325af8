//! PyTorch checkpoint files (`torch.save`: `.pth`, `.pt`, `pytorch_model.bin`), read in place.
//!
//! Since torch 1.6 such a file is an uncompressed zip archive: `ARCHIVE/data.pkl`, a pickle of the
//! saved object, and one record `ARCHIVE/data/KEY` per storage holding the raw little-endian
//! values. The pickle is read by the restricted reader of [`crate::pickle`], which runs no code;
//! each tensor becomes a byte range of the memory-mapped file, as safetensors' do.

use crate::pickle::{self, TensorSpec, Value};
use crate::weights::StorageDtype;

/// The first bytes of a zip archive's local file header.
pub const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

/// A tensor of the file: its dotted name in the saved object, and where its values lie.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchTensor {
    pub name: String,
    /// The element type; `Err` names a type we do not read (`LongStorage`), an error only where the
    /// model needs the tensor.
    pub dtype: Result<StorageDtype, String>,
    pub shape: Vec<usize>,
    /// Byte range in the file.
    pub start: usize,
    pub len: usize,
}

/// Whether `bytes` start as the pre-1.6 (non-zip) `torch.save` format: a pickled magic number, or
/// a tar archive.
pub fn is_legacy_torch(bytes: &[u8]) -> bool {
    const MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
    bytes.starts_with(MAGIC) || bytes.get(257..262) == Some(b"ustar")
}

/// Every tensor of a `torch.save` zip archive, with names joined by `.` through nested dicts
/// (`{"teacher": {"backbone.cls_token": t}}` gives `teacher.backbone.cls_token`).
pub fn tensors(bytes: &[u8]) -> Result<Vec<TorchTensor>, String> {
    let records = zip_records(bytes)?;
    let pkl = records
        .iter()
        .find(|r| r.name == "data.pkl" || r.name.ends_with("/data.pkl"))
        .ok_or("the zip archive has no data.pkl: not a torch.save file")?;
    let archive = pkl.name.strip_suffix("data.pkl").unwrap_or_default();
    if let Some(order) = records
        .iter()
        .find(|r| r.name == format!("{archive}byteorder"))
    {
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
    let mut out = Vec::with_capacity(specs.len());
    for (name, spec) in specs {
        let data = format!("{archive}data/{}", spec.key);
        let record = records
            .iter()
            .find(|r| r.name == data)
            .ok_or_else(|| format!("tensor `{name}`: its storage record {data} is missing"))?;
        out.push(locate(name, &spec, record)?);
    }
    Ok(out)
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
fn locate(name: String, spec: &TensorSpec, record: &Record) -> Result<TorchTensor, String> {
    let (dtype, size) = match spec.kind.as_str() {
        "FloatStorage" => (Ok(StorageDtype::F32), 4),
        "HalfStorage" => (Ok(StorageDtype::F16), 2),
        "BFloat16Storage" => (Ok(StorageDtype::BF16), 2),
        other => {
            let size = match other {
                "DoubleStorage" | "LongStorage" | "ComplexFloatStorage" => 8,
                "IntStorage" => 4,
                "ShortStorage" => 2,
                _ => 1,
            };
            (Err(other.to_owned()), size)
        }
    };
    if spec.shape.len() != spec.stride.len() {
        return Err(format!(
            "tensor `{name}`: its shape and strides differ in length"
        ));
    }
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
    let numel: usize = spec.shape.iter().product();
    let bytes = spec
        .offset
        .checked_add(numel)
        .and_then(|n| n.checked_mul(size));
    match bytes {
        Some(end) if end <= record.len => Ok(TorchTensor {
            name,
            dtype,
            shape: spec.shape.clone(),
            start: record.start + spec.offset * size,
            len: numel * size,
        }),
        _ => Err(format!(
            "tensor `{name}` (shape {:?}, offset {}) runs past its storage of {} bytes: the file \
             is truncated or damaged",
            spec.shape, spec.offset, record.len
        )),
    }
}

/// A stored (uncompressed) member of a zip archive: its name and the byte range of its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub start: usize,
    pub len: usize,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(truncated)
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(truncated)
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
        .ok_or_else(truncated)
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
        count = u64_at(b, end64 + 32)?;
        dir = u64_at(b, end64 + 48)?;
    }
    let mut at = offset(dir)?;
    let mut out = Vec::new();
    for _ in 0..count {
        if u32_at(b, at)? != 0x0201_4b50 {
            return Err(truncated());
        }
        let method = u16_at(b, at + 10)?;
        let mut compressed = u64::from(u32_at(b, at + 20)?);
        let mut uncompressed = u64::from(u32_at(b, at + 24)?);
        let name_len = usize::from(u16_at(b, at + 28)?);
        let extra_len = usize::from(u16_at(b, at + 30)?);
        let comment_len = usize::from(u16_at(b, at + 32)?);
        let mut local = u64::from(u32_at(b, at + 42)?);
        let name_bytes = b.get(at + 46..at + 46 + name_len).ok_or_else(truncated)?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        // ZIP64 extra field: the 64-bit values of the fields set to 0xffffffff, in this order.
        let extra = b
            .get(at + 46 + name_len..at + 46 + name_len + extra_len)
            .ok_or_else(truncated)?;
        let mut e = 0;
        while e + 4 <= extra.len() {
            let id = u16_at(extra, e)?;
            let size = usize::from(u16_at(extra, e + 2)?);
            if id == 1 {
                let mut f = e + 4;
                for field in [&mut uncompressed, &mut compressed, &mut local] {
                    if *field == 0xffff_ffff {
                        *field = u64_at(extra, f)?;
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
        let start =
            local + 30 + usize::from(u16_at(b, local + 26)?) + usize::from(u16_at(b, local + 28)?);
        let len = offset(uncompressed.max(compressed))?;
        if start.checked_add(len).is_none_or(|end| end > b.len()) {
            return Err(format!(
                "member {name} runs past the end of the file: the file is truncated"
            ));
        }
        out.push(Record { name, start, len });
        at += 46 + name_len + extra_len + comment_len;
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
                    assert!(found.iter().all(|t| t.start + t.len <= bytes.len()));
                }
            }
            bytes[i] = whole[i];
        }
    }
}
