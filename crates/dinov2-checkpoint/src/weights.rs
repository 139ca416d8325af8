//! Weights, memory-mapped: safetensors or PyTorch `torch.save` files, single-file or sharded,
//! f32/f16/bf16, with the names normalized to transformers' (prefixes stripped, original
//! facebookresearch and timm names converted) and validated against the config.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use crate::config::{Dinov2Config, ModelType};
use crate::error::{CheckpointError, Result};
use crate::header::explain_invalid_tensor;
use crate::names::{
    backbone_prefix, expected_tensors, from_original, hf_model_type, is_original_naming, Renamed,
};
use crate::torch_file;

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

/// A tensor's place in one of the checkpoint's buffers.
#[derive(Debug, Clone)]
struct Entry {
    /// The buffer holding the values.
    file: usize,
    /// The file (of [`Weights::paths`]) the tensor was read from.
    path: usize,
    dtype: StorageDtype,
    shape: Vec<usize>,
    /// Byte offset into the buffer.
    start: usize,
    len: usize,
}

/// The bytes tensors point into: a mapped file, or a tensor made while reading (a position
/// embedding completed with the CLS row a timm checkpoint folds into its CLS token).
enum Buffer {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Buffer::Mapped(m) => m,
            Buffer::Owned(v) => v,
        }
    }
}

/// A tensor as a file stores it, before renaming; `Err` for one that cannot be read (a dtype we do
/// not read, a strided view), an error only if it lies in the backbone read.
type Raw = (String, Result<Entry, CheckpointError>);

/// The files of a checkpoint, mapped, with their tensors as stored.
struct Read {
    files: Vec<Buffer>,
    raw: Vec<Raw>,
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
    files: Vec<Buffer>,
    paths: Vec<PathBuf>,
    tensors: BTreeMap<String, Entry>,
    layout: Layout,
}

/// How the stored names were read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Layout {
    /// Original facebookresearch (or timm) names rather than transformers'.
    original_naming: bool,
    /// timm's form of a model with registers: the CLS token's position embedding folded into the
    /// CLS token, and no position embedding for it (`no_embed_class`).
    timm_no_embed_class: bool,
    /// The prefix of the backbone in a larger saved object (`teacher.backbone.`), stripped.
    prefix: String,
    /// Tensors outside that prefix, left out (training heads, the student, ...).
    ignored: usize,
    /// Names given after renaming by their layout rather than by their name alone (timm's packed
    /// SwiGLU `fc1` read as `weights_in`), from and to.
    renamed: BTreeMap<String, String>,
    /// The original names without a mask token (timm drops it): a zero one was put in, as the
    /// original code initializes it and as transformers fills a missing one.
    zero_mask_token: bool,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("paths", &self.paths)
            .field("tensors", &self.tensors.len())
            .field("layout", &self.layout)
            .finish()
    }
}

impl Weights {
    /// Finds and maps the weights of a model directory (`model.safetensors`, the shards named by
    /// `model.safetensors.index.json`, or else PyTorch's `pytorch_model.bin` and its sharded form)
    /// and validates them against `config`.
    pub fn from_dir(dir: &Path, config: &Dinov2Config) -> Result<Self> {
        let single = ["model.safetensors", "pytorch_model.bin"].map(|f| dir.join(f));
        let index = [
            "model.safetensors.index.json",
            "pytorch_model.bin.index.json",
        ]
        .map(|f| dir.join(f));
        if let Some(file) = single.iter().find(|f| f.is_file()) {
            Self::from_files(std::slice::from_ref(file), config)
        } else if let Some(index) = index.iter().find(|f| f.is_file()) {
            Self::from_index(index, config)
        } else {
            Err(CheckpointError::NoWeights {
                dir: dir.to_owned(),
            })
        }
    }

    /// Maps the shards listed in a `model.safetensors.index.json` (or `pytorch_model.bin.index.json`)
    /// and validates them.
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
            let canonical = weights.canonical_stored_name(name, Some(config.model_type));
            let found = canonical.iter().all(|n| {
                weights.tensors.get(n).is_some_and(|e| {
                    weights.paths[e.path] == dir.join(file.as_str().unwrap_or_default())
                })
            });
            if !found && !weights.is_ignored(name) {
                return Err(CheckpointError::Index {
                    path: index.to_owned(),
                    reason: format!("the index places `{name}` in {file}, which does not hold it"),
                });
            }
        }
        Ok(weights)
    }

    /// Maps one or more weight files holding one checkpoint between them (safetensors, or
    /// PyTorch's `torch.save` files), and validates them.
    pub fn from_files(paths: &[PathBuf], config: &Dinov2Config) -> Result<Self> {
        let mut weights = Self::read(paths, Some(config.model_type))?;
        // The zero mask token stands in only for a config that has one.
        if weights.layout.zero_mask_token && !config.use_mask_token {
            weights.tensors.remove("embeddings.mask_token");
            weights.layout.zero_mask_token = false;
        }
        weights.validate(config)?;
        Ok(weights)
    }

    /// Maps weight files and renames their tensors to transformers' names, without a config: the
    /// model type, when not given, is told by the names. Validation against a config is left to
    /// the caller ([`Weights::from_files`], or a config inferred from the tensors).
    pub(crate) fn read(paths: &[PathBuf], model_type: Option<ModelType>) -> Result<Self> {
        let Read { files, raw } = read_files(paths)?;
        let names = || raw.iter().map(|(n, _)| n.as_str());
        let original_naming = is_original_naming(names());
        let (prefix, ignored) = if original_naming {
            backbone_prefix(names()).map_err(|candidates| CheckpointError::Backbone {
                path: paths[0].clone(),
                candidates,
            })?
        } else {
            (String::new(), 0)
        };
        let mut weights = Weights {
            files,
            paths: paths.to_vec(),
            tensors: BTreeMap::new(),
            layout: Layout {
                original_naming,
                prefix,
                ignored,
                ..Layout::default()
            },
        };
        let model_type = model_type.unwrap_or_else(|| hf_model_type(names()));
        for (name, entry) in raw {
            if weights.is_ignored(&name) {
                continue;
            }
            weights.insert_stored(name, entry?, model_type)?;
        }
        if original_naming {
            weights.adopt_timm_forms()?;
        }
        Ok(weights)
    }

    /// Whether a stored name lies outside the backbone read.
    fn is_ignored(&self, name: &str) -> bool {
        !name.starts_with(&self.layout.prefix)
    }

    /// transformers' name(s) for a stored name; the stored name itself when it is not one we rename.
    fn canonical_stored_name(&self, name: &str, model_type: Option<ModelType>) -> Vec<String> {
        if self.layout.original_naming {
            let name = name.strip_prefix(&self.layout.prefix).unwrap_or(name);
            let names = match from_original(name) {
                Some(Renamed::One(n)) => vec![n],
                Some(Renamed::SplitQkv(parts)) => parts.to_vec(),
                None => vec![name.to_owned()],
            };
            return names
                .into_iter()
                .map(|n| self.layout.renamed.get(&n).cloned().unwrap_or(n))
                .collect();
        }
        let base = model_type.map_or("", ModelType::base_prefix);
        let prefix = format!("{base}.");
        vec![name.strip_prefix(&prefix).unwrap_or(name).to_owned()]
    }

    fn insert_stored(&mut self, name: String, entry: Entry, model_type: ModelType) -> Result<()> {
        let renamed = if self.layout.original_naming {
            from_original(name.strip_prefix(&self.layout.prefix).unwrap_or(&name))
        } else {
            None
        };
        match renamed {
            Some(Renamed::SplitQkv(parts)) => {
                let rows = *entry.shape.first().unwrap_or(&0);
                if !rows.is_multiple_of(3) || rows == 0 {
                    return Err(CheckpointError::FusedQkv {
                        name,
                        shape: entry.shape,
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
                let canonical = self
                    .canonical_stored_name(&name, Some(model_type))
                    .remove(0);
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

    /// timm's DINOv2 checkpoints differ from the original in two ways, undone here:
    /// - the SwiGLU layers of ViT-g are `mlp.fc1` (`2F x h`) and `mlp.fc2` (`h x F`) rather than
    ///   `w12`/`w3`: told by fc1 having twice the rows fc2 has columns;
    /// - the models with registers hold no CLS position (`no_embed_class`): their `cls_token` is
    ///   the original's plus its position embedding. A zero CLS row is put before the patch
    ///   positions, so that the CLS token plus it is that sum, exactly.
    fn adopt_timm_forms(&mut self) -> Result<()> {
        let layers: Vec<String> = self
            .tensors
            .keys()
            .filter_map(|n| n.strip_suffix(".mlp.fc1.weight").map(str::to_owned))
            .collect();
        for l in layers {
            let (fc1, fc2) = (format!("{l}.mlp.fc1.weight"), format!("{l}.mlp.fc2.weight"));
            let rows = self.tensors[&fc1].shape.first().copied();
            let cols = self.tensors.get(&fc2).and_then(|e| e.shape.get(1).copied());
            let (Some(rows), Some(cols)) = (rows, cols) else {
                continue;
            };
            if cols == 0 || Some(rows) != cols.checked_mul(2) {
                continue;
            }
            for (from, to) in [("fc1", "weights_in"), ("fc2", "weights_out")] {
                for param in ["weight", "bias"] {
                    let old = format!("{l}.mlp.{from}.{param}");
                    let new = format!("{l}.mlp.{to}.{param}");
                    if let Some(e) = self.tensors.remove(&old) {
                        self.insert(new.clone(), e)?;
                        self.layout.renamed.insert(old, new);
                    }
                }
            }
        }
        let pos_name = "embeddings.position_embeddings";
        let registers = self.tensors.contains_key("embeddings.register_tokens");
        if let (true, Some(pos)) = (registers, self.tensors.get(pos_name)) {
            let n = pos.shape.get(1).copied().unwrap_or(0);
            let square = |n: usize| n > 0 && n.isqrt() * n.isqrt() == n;
            if pos.shape.len() == 3 && square(n) && !square(n - 1) {
                let row = pos.len / n;
                let mut bytes = vec![0u8; row];
                bytes.extend_from_slice(&self.files[pos.file][pos.start..pos.start + pos.len]);
                let entry = Entry {
                    file: self.files.len(),
                    shape: vec![pos.shape[0], n + 1, pos.shape[2]],
                    start: 0,
                    len: bytes.len(),
                    ..pos.clone()
                };
                self.files.push(Buffer::Owned(bytes));
                self.tensors.insert(pos_name.to_owned(), entry);
                self.layout.timm_no_embed_class = true;
            }
        }
        // timm drops the mask token; the original code initializes it to zeros, and transformers
        // fills a missing one with zeros. It is read only with `bool_masked_pos`.
        let mask = "embeddings.mask_token";
        if let (None, Some(cls)) = (
            self.tensors.get(mask),
            self.tensors.get("embeddings.cls_token"),
        ) {
            if let [1, 1, h] = cls.shape[..] {
                let len = h * cls.dtype.size();
                let entry = Entry {
                    file: self.files.len(),
                    shape: vec![1, h],
                    start: 0,
                    len,
                    ..cls.clone()
                };
                self.files.push(Buffer::Owned(vec![0; len]));
                self.tensors.insert(mask.to_owned(), entry);
                self.layout.zero_mask_token = true;
            }
        }
        Ok(())
    }

    /// The shape of the stored tensor `name` (transformers' naming).
    pub(crate) fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.shape.as_slice())
    }

    pub(crate) fn validate(&self, config: &Dinov2Config) -> Result<()> {
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

    /// Whether the file used the original facebookresearch (or timm) names.
    pub fn original_naming(&self) -> bool {
        self.layout.original_naming
    }

    /// Whether the file was timm's form of a model with registers (no CLS position embedding).
    pub fn timm_no_embed_class(&self) -> bool {
        self.layout.timm_no_embed_class
    }

    /// Whether the file had the original names but no mask token (timm drops it), so that a zero
    /// one stands in.
    pub fn zero_mask_token(&self) -> bool {
        self.layout.zero_mask_token
    }

    /// The prefix under which the backbone was found in a larger saved object
    /// (`teacher.backbone.`), and how many tensors outside it were left out.
    pub fn backbone_prefix(&self) -> Option<(&str, usize)> {
        (!self.layout.prefix.is_empty())
            .then_some((self.layout.prefix.as_str(), self.layout.ignored))
    }

    /// The files mapped.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

/// Maps each file and lists its tensors: safetensors, or a `torch.save` zip archive.
fn read_files(paths: &[PathBuf]) -> Result<Read> {
    let mut files = Vec::new();
    let mut raw: Vec<Raw> = Vec::new();
    for (file_index, path) in paths.iter().enumerate() {
        let io = |source| CheckpointError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only; a checkpoint modified while we run is outside our
        // contract, as for every memory-mapped weight loader.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        if mmap.starts_with(torch_file::ZIP_MAGIC) {
            let tensors = torch_file::tensors(&mmap).map_err(|reason| CheckpointError::Torch {
                path: path.clone(),
                reason,
            })?;
            for (name, t) in tensors {
                let entry = t
                    .map(|t| Entry {
                        file: file_index,
                        path: file_index,
                        dtype: t.dtype,
                        shape: t.shape,
                        start: t.start,
                        len: t.len,
                    })
                    .map_err(|reason| CheckpointError::Torch {
                        path: path.clone(),
                        reason,
                    });
                raw.push((name, entry));
            }
        } else if torch_file::is_legacy_torch(&mmap) {
            return Err(CheckpointError::Torch {
                path: path.clone(),
                reason: "this is the legacy torch.save format of torch before 1.6, which is not \
                         read: load and save it again with a current torch"
                    .into(),
            });
        } else {
            read_safetensors(path, &mmap, file_index, &mut raw)?;
        }
        files.push(Buffer::Mapped(mmap));
    }
    Ok(Read { files, raw })
}

/// Lists the tensors of one mapped safetensors file.
fn read_safetensors(path: &Path, mmap: &[u8], file_index: usize, raw: &mut Vec<Raw>) -> Result<()> {
    let st = SafeTensors::deserialize(mmap).map_err(|e| CheckpointError::Safetensors {
        path: path.to_owned(),
        reason: match e {
            // Errors that name no tensor: the header read again names it.
            SafeTensorError::TensorInvalidInfo
            | SafeTensorError::ValidationOverflow
            | SafeTensorError::MisalignedSlice => {
                explain_invalid_tensor(mmap).unwrap_or_else(|| e.to_string())
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
                raw.push((
                    name.clone(),
                    Err(CheckpointError::UnsupportedDtype {
                        name,
                        dtype: format!("{other:?}"),
                    }),
                ));
                continue;
            }
        };
        let data = view.data();
        raw.push((
            name,
            Ok(Entry {
                file: file_index,
                path: file_index,
                dtype,
                shape: view.shape().to_vec(),
                start: data.as_ptr() as usize - base,
                len: data.len(),
            }),
        ));
    }
    Ok(())
}
