//! Safetensors weights, memory-mapped: single-file or sharded, f32/f16/bf16, with the names
//! normalized to transformers' (prefix stripped, original facebookresearch names converted) and
//! validated against the config.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use crate::config::Dinov2Config;
use crate::error::{CheckpointError, Result};
use crate::header::explain_invalid_tensor;
use crate::names::{expected_tensors, from_original, is_original_naming, Renamed};

/// How a tensor is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDtype {
    F32,
    F16,
    BF16,
}

impl StorageDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageDtype::F32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 => 2,
        }
    }

    /// The transformers / torch name (`float32`, `float16`, `bfloat16`).
    pub fn name(self) -> &'static str {
        match self {
            StorageDtype::F32 => "float32",
            StorageDtype::F16 => "float16",
            StorageDtype::BF16 => "bfloat16",
        }
    }
}

/// A tensor's place in one of the mapped files.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: StorageDtype,
    shape: Vec<usize>,
    /// Byte offset into the file's mapping.
    start: usize,
    len: usize,
}

/// A borrowed tensor of the checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    pub dtype: StorageDtype,
    pub shape: &'a [usize],
    /// Little-endian bytes, row-major.
    pub bytes: &'a [u8],
}

impl TensorRef<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True for a tensor with no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values converted to f32 (exact for every storage dtype).
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            StorageDtype::F32 => self
                .bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            StorageDtype::F16 => self
                .bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            StorageDtype::BF16 => self
                .bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }
}

/// The weights of a checkpoint under transformers' names, validated against a config.
pub struct Weights {
    files: Vec<Mmap>,
    paths: Vec<PathBuf>,
    tensors: BTreeMap<String, Entry>,
    original_naming: bool,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("paths", &self.paths)
            .field("tensors", &self.tensors.len())
            .field("original_naming", &self.original_naming)
            .finish()
    }
}

impl Weights {
    /// Finds and maps the weights of a model directory (`model.safetensors`, or the shards named by
    /// `model.safetensors.index.json`) and validates them against `config`.
    pub fn from_dir(dir: &Path, config: &Dinov2Config) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let weights = if single.is_file() {
            Self::from_files(&[single], config)?
        } else if index.is_file() {
            Self::from_index(&index, config)?
        } else {
            let hint = if dir.join("pytorch_model.bin").is_file() {
                " (found pytorch_model.bin: pickled PyTorch weights are not read; convert them once with \
                 transformers' save_pretrained(..., safe_serialization=True))"
                    .to_owned()
            } else {
                String::new()
            };
            return Err(CheckpointError::NoWeights {
                dir: dir.to_owned(),
                hint,
            });
        };
        Ok(weights)
    }

    /// Maps the shards listed in a `model.safetensors.index.json` and validates them.
    pub fn from_index(index: &Path, config: &Dinov2Config) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|source| CheckpointError::Io {
            path: index.to_owned(),
            source,
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| CheckpointError::Json {
                path: index.to_owned(),
                source,
            })?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| CheckpointError::Index {
                path: index.to_owned(),
                reason: "no `weight_map` object".into(),
            })?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shards = BTreeSet::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| CheckpointError::Index {
                path: index.to_owned(),
                reason: format!("weight_map entry of `{name}` is not a file name"),
            })?;
            shards.insert(file.to_owned());
        }
        let paths: Vec<PathBuf> = shards.iter().map(|f| dir.join(f)).collect();
        let weights = Self::from_files(&paths, config)?;
        // Every tensor the index names must be in the shard it names.
        for (name, file) in map {
            let canonical = weights.canonical_stored_name(name, config);
            let found = canonical.iter().all(|n| {
                weights.tensors.get(n).is_some_and(|e| {
                    weights.paths[e.file] == dir.join(file.as_str().unwrap_or_default())
                })
            });
            if !found {
                return Err(CheckpointError::Index {
                    path: index.to_owned(),
                    reason: format!("the index places `{name}` in {file}, which does not hold it"),
                });
            }
        }
        Ok(weights)
    }

    /// Maps one or more safetensors files holding one checkpoint between them, and validates them.
    pub fn from_files(paths: &[PathBuf], config: &Dinov2Config) -> Result<Self> {
        let mut files = Vec::new();
        let mut stored: Vec<(String, Entry)> = Vec::new();
        for (file_index, path) in paths.iter().enumerate() {
            let io = |source| CheckpointError::Io {
                path: path.clone(),
                source,
            };
            let file = File::open(path).map_err(io)?;
            // SAFETY: the mapping is read-only; a checkpoint modified while we run is outside our
            // contract, as for every memory-mapped weight loader.
            let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| CheckpointError::Safetensors {
                path: path.clone(),
                reason: match e {
                    // Errors that name no tensor: the header read again names it.
                    SafeTensorError::TensorInvalidInfo
                    | SafeTensorError::ValidationOverflow
                    | SafeTensorError::MisalignedSlice => {
                        explain_invalid_tensor(&mmap).unwrap_or_else(|| e.to_string())
                    }
                    _ => e.to_string(),
                },
            })?;
            let base = mmap.as_ptr() as usize;
            for (name, view) in st.tensors() {
                let dtype = match view.dtype() {
                    Dtype::F32 => StorageDtype::F32,
                    Dtype::F16 => StorageDtype::F16,
                    Dtype::BF16 => StorageDtype::BF16,
                    other => {
                        return Err(CheckpointError::UnsupportedDtype {
                            name,
                            dtype: format!("{other:?}"),
                        })
                    }
                };
                let data = view.data();
                stored.push((
                    name,
                    Entry {
                        file: file_index,
                        dtype,
                        shape: view.shape().to_vec(),
                        start: data.as_ptr() as usize - base,
                        len: data.len(),
                    },
                ));
            }
            drop(st);
            files.push(mmap);
        }
        let original_naming = is_original_naming(stored.iter().map(|(n, _)| n.as_str()));
        let mut weights = Weights {
            files,
            paths: paths.to_vec(),
            tensors: BTreeMap::new(),
            original_naming,
        };
        for (name, entry) in stored {
            weights.insert_stored(name, entry, config)?;
        }
        weights.validate(config)?;
        Ok(weights)
    }

    /// transformers' name(s) for a stored name; the stored name itself when it is not one we rename.
    fn canonical_stored_name(&self, name: &str, config: &Dinov2Config) -> Vec<String> {
        if self.original_naming {
            return match from_original(name) {
                Some(Renamed::One(n)) => vec![n],
                Some(Renamed::SplitQkv(parts)) => parts.to_vec(),
                None => vec![name.to_owned()],
            };
        }
        let prefix = format!("{}.", config.model_type.base_prefix());
        vec![name.strip_prefix(&prefix).unwrap_or(name).to_owned()]
    }

    fn insert_stored(&mut self, name: String, entry: Entry, config: &Dinov2Config) -> Result<()> {
        let renamed = if self.original_naming {
            from_original(&name)
        } else {
            None
        };
        match renamed {
            Some(Renamed::SplitQkv(parts)) => {
                let rows = *entry.shape.first().unwrap_or(&0);
                if !rows.is_multiple_of(3) || rows == 0 {
                    return Err(CheckpointError::ShapeMismatch {
                        name,
                        expected: [3 * config.hidden_size]
                            .into_iter()
                            .chain(entry.shape.iter().skip(1).copied())
                            .collect(),
                        found: entry.shape,
                    });
                }
                let mut shape = entry.shape.clone();
                shape[0] = rows / 3;
                let part_len = entry.len / 3;
                for (i, part) in parts.into_iter().enumerate() {
                    self.insert(
                        part,
                        Entry {
                            shape: shape.clone(),
                            start: entry.start + i * part_len,
                            len: part_len,
                            ..entry
                        },
                    )?;
                }
                Ok(())
            }
            Some(Renamed::One(hf)) => self.insert(hf, entry),
            None => {
                let canonical = self.canonical_stored_name(&name, config).remove(0);
                self.insert(canonical, entry)
            }
        }
    }

    fn insert(&mut self, name: String, entry: Entry) -> Result<()> {
        if self.tensors.contains_key(&name) {
            return Err(CheckpointError::DuplicateTensor { name });
        }
        self.tensors.insert(name, entry);
        Ok(())
    }

    fn validate(&self, config: &Dinov2Config) -> Result<()> {
        let expected = expected_tensors(config);
        for t in &expected {
            match self.tensors.get(&t.name) {
                None if t.classifier_only => {}
                None => {
                    return Err(CheckpointError::MissingTensor {
                        name: t.name.clone(),
                        expected: t.shape.clone(),
                    })
                }
                Some(e) if e.shape != t.shape => {
                    return Err(CheckpointError::ShapeMismatch {
                        name: t.name.clone(),
                        expected: t.shape.clone(),
                        found: e.shape.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        let known: BTreeSet<&str> = expected.iter().map(|t| t.name.as_str()).collect();
        for (name, e) in &self.tensors {
            if !known.contains(name.as_str()) {
                return Err(CheckpointError::UnexpectedTensor {
                    name: name.clone(),
                    shape: e.shape.clone(),
                });
            }
        }
        Ok(())
    }

    /// The tensor stored under transformers' `name`, if present.
    pub fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        self.tensors.get(name).map(|e| TensorRef {
            dtype: e.dtype,
            shape: &e.shape,
            bytes: &self.files[e.file][e.start..e.start + e.len],
        })
    }

    /// The tensor stored under `name`, or the missing-tensor error.
    pub fn require(&self, name: &str) -> Result<TensorRef<'_>> {
        self.get(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                name: name.to_owned(),
                expected: vec![],
            })
    }

    /// Whether the classification head's tensors are present.
    pub fn has_classifier(&self) -> bool {
        self.tensors.contains_key("classifier.weight")
    }

    /// Names of all tensors, transformers' naming, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The storage dtypes present, with their element counts.
    pub fn dtype_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        for e in self.tensors.values() {
            *out.entry(e.dtype.name()).or_default() += e.shape.iter().product::<usize>();
        }
        out
    }

    /// Total number of parameters.
    pub fn num_parameters(&self) -> usize {
        self.tensors
            .values()
            .map(|e| e.shape.iter().product::<usize>())
            .sum()
    }

    /// Whether the file used the original facebookresearch names.
    pub fn original_naming(&self) -> bool {
        self.original_naming
    }

    /// The files mapped.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}
