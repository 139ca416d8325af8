//! Parquet tables as inputs: each row's encoded image, read from a column of bytes, as Hugging
//! Face datasets (an `Image` feature: a struct of `bytes` and `path`) and img2dataset (a `jpg`
//! binary column) store them.
//!
//! Only the footer is read when the inputs are listed. A row group's image column is decoded
//! when its first row is read, shared by the decoding threads reading its other rows, and let go
//! when its last row has been read, so every row group is decoded once. A [`Cache`] shared by
//! every table of a job bounds what stays decoded when rows are skipped (`--resume`, `--shard`).

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;

/// Column names taken for the image when a table has several columns of bytes.
const IMAGE_NAMES: &[&str] = &["image", "img", "jpg", "jpeg", "png", "webp"];

/// Decoded row groups no thread is reading are let go, oldest first, while more than this is
/// kept (in all tables together).
const KEPT_BYTES: u64 = 1 << 30;

/// A row group whose image column is larger than this (uncompressed) is refused: it would be
/// held in memory whole.
pub const MAX_ROW_GROUP_BYTES: u64 = 4 << 30;

/// A table claiming more rows than this is refused (its footer is likely garbled; a real one
/// would hold terabytes of images): each row becomes an input held in memory.
const MAX_ROWS: u64 = 1 << 28;

/// Rows decoded per arrow batch at most; fewer for large images, as a batch of binary values
/// holds at most 2 GiB: a batch aims at [`BATCH_BYTES`].
const READ_ROWS: usize = 256;
const BATCH_BYTES: u64 = 256 << 20;

/// A row group's decoded image cells: rows per batch, and the batches.
type Cells = Result<(usize, Vec<ArrayRef>), String>;

/// A row group being read or decoded: which table's, which group, its size.
struct Entry {
    table: usize,
    group: usize,
    bytes: u64,
    cells: Arc<OnceLock<Cells>>,
}

/// The row groups decoded lately, shared by every table of a job.
#[derive(Default)]
pub struct Cache {
    entries: Mutex<(usize, VecDeque<Entry>)>,
}

impl Cache {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, VecDeque<Entry>)> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A number naming a new table.
    fn new_table(&self) -> usize {
        let mut entries = self.lock();
        entries.0 += 1;
        entries.0
    }

    /// The cell of `group` in `table`, shared with the threads reading its other rows. Beyond
    /// [`KEPT_BYTES`], the oldest groups no thread holds are let go.
    fn get(&self, table: usize, group: usize, bytes: u64) -> Arc<OnceLock<Cells>> {
        let mut entries = self.lock();
        let list = &mut entries.1;
        if let Some(e) = list.iter().find(|e| e.table == table && e.group == group) {
            return e.cells.clone();
        }
        let cells = Arc::new(OnceLock::new());
        list.push_back(Entry {
            table,
            group,
            bytes,
            cells: cells.clone(),
        });
        let mut kept: u64 = list.iter().map(|e| e.bytes).sum();
        let mut i = 0;
        while kept > KEPT_BYTES && i + 1 < list.len() {
            if Arc::strong_count(&list[i].cells) == 1 {
                kept -= list[i].bytes;
                list.remove(i);
            } else {
                i += 1;
            }
        }
        cells
    }

    /// Lets go of `group` in `table`: its last row has been read.
    fn done(&self, table: usize, group: usize) {
        self.lock()
            .1
            .retain(|e| !(e.table == table && e.group == group));
    }
}

/// A Parquet table of images: its footer, the image column, and the rows of each row group not
/// read yet.
pub struct Table {
    path: PathBuf,
    metadata: ArrowReaderMetadata,
    /// The image column's name, and the index of its leaf holding the bytes.
    column: String,
    leaf: usize,
    cache: Arc<Cache>,
    /// This table's number in the cache.
    id: usize,
    /// Per row group, the rows not read yet.
    unread: Vec<AtomicUsize>,
    /// Each row's name from `--id-column`, when given (`None` where the id is null).
    ids: Option<Vec<Option<String>>>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("path", &self.path)
            .field("column", &self.column)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Table {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.column == other.column
    }
}

impl Eq for Table {}

impl Table {
    /// Opens the table at `path` and finds its image column: `column` when given, else the one
    /// column of bytes (or of image structs), or among several the one Hugging Face datasets'
    /// metadata calls an `Image`, or the one named as an image is. Decoded row groups are kept
    /// in `cache`.
    pub fn open(
        path: &Path,
        column: Option<&str>,
        id_column: Option<&str>,
        cache: Arc<Cache>,
    ) -> Result<Table, String> {
        let file = File::open(path).map_err(|e| format!("cannot open the table: {e}"))?;
        let metadata = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new())
            .map_err(|e| format!("not a readable Parquet table: {e}"))?;
        let fields = metadata.schema().fields();
        let names = || {
            fields
                .iter()
                .map(|f| format!("{} ({})", f.name(), f.data_type()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Hugging Face datasets record each column's feature: an Image, or an Audio (a struct of
        // bytes and path too).
        let features = hf_features(&metadata);
        let candidates: Vec<&str> = fields
            .iter()
            .filter(|f| image_leaf(f.data_type()).is_some())
            .map(|f| f.name().as_str())
            .filter(|name| features.get(*name).is_none_or(|t| t == "Image"))
            .collect();
        let column = match column {
            Some(name) => {
                let Some(field) = fields.iter().find(|f| f.name() == name) else {
                    return Err(format!(
                        "no column {name:?} (--image-column); its columns: {}",
                        names()
                    ));
                };
                if image_leaf(field.data_type()).is_none() && !is_text(field.data_type()) {
                    return Err(format!(
                        "column {name:?} holds {}, not encoded images: a binary column, a \
                         struct with a binary `bytes` field (Hugging Face datasets' Image), or \
                         a text column of http(s) URLs is needed",
                        field.data_type()
                    ));
                }
                name.to_string()
            }
            None => match candidates[..] {
                [one] => one.to_string(),
                [] => {
                    return Err(format!(
                        "no column of images: a binary column, or a struct with a binary `bytes` \
                         field (Hugging Face datasets' Image), is needed, or a column of image \
                         URLs named with --image-column (img2dataset's `url`); its columns: {}",
                        names()
                    ))
                }
                _ => {
                    let images: Vec<&str> = candidates
                        .iter()
                        .copied()
                        .filter(|c| features.get(*c).is_some_and(|t| t == "Image"))
                        .collect();
                    let named: Vec<&str> = if images.is_empty() {
                        candidates
                            .iter()
                            .copied()
                            .filter(|c| IMAGE_NAMES.contains(&c.to_ascii_lowercase().as_str()))
                            .collect()
                    } else {
                        images
                    };
                    match named[..] {
                        [one] => one.to_string(),
                        _ => {
                            return Err(format!(
                                "several columns could hold the images ({}): choose one with \
                                 --image-column",
                                candidates.join(", ")
                            ))
                        }
                    }
                }
            },
        };
        let field = fields
            .iter()
            .find(|f| f.name() == &column)
            .ok_or_else(|| format!("no column {column:?}"))?;
        let mut parts = vec![column.clone()];
        if let Some(child) = image_leaf(field.data_type()).flatten() {
            parts.push(child.to_string());
        }
        let leaf = metadata
            .parquet_schema()
            .columns()
            .iter()
            .position(|c| c.path().parts() == parts.as_slice())
            .ok_or_else(|| format!("column {:?} has no stored leaf", parts.join(".")))?;
        // The row counts become inputs: they must agree with each other and with the column.
        let file_rows = metadata.metadata().file_metadata().num_rows();
        let mut unread = Vec::new();
        let mut total: i64 = 0;
        for (i, g) in metadata.metadata().row_groups().iter().enumerate() {
            let rows = g.num_rows();
            if rows < 0 || rows > g.column(leaf).num_values() {
                return Err(format!(
                    "row group {i} claims {rows} rows but its image column holds {} values: the \
                     footer is garbled",
                    g.column(leaf).num_values()
                ));
            }
            total = total.saturating_add(rows);
            unread.push(AtomicUsize::new(rows as usize));
        }
        if total != file_rows {
            return Err(format!(
                "the row groups hold {total} rows but the footer says {file_rows}: it is garbled"
            ));
        }
        if total as u64 > MAX_ROWS {
            return Err(format!(
                "{total} rows, more than the {MAX_ROWS} one job takes from a table: split it"
            ));
        }
        let ids = match id_column {
            Some(name) => Some(read_ids(path, &metadata, name)?),
            None => None,
        };
        Ok(Table {
            path: path.to_path_buf(),
            metadata,
            column,
            leaf,
            id: cache.new_table(),
            cache,
            unread,
            ids,
        })
    }

    /// How row `index` is named: its `--id-column` value, else `TABLE#ROW`.
    pub fn name(&self, index: usize) -> String {
        match self.ids.as_ref().and_then(|ids| ids.get(index)?.clone()) {
            Some(id) => id,
            None => format!("{}#{index}", self.path.display()),
        }
    }

    /// The rows of each row group, in order.
    pub fn row_groups(&self) -> impl Iterator<Item = usize> + '_ {
        self.metadata
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows().max(0) as usize)
    }

    /// The encoded image in row `row` of row group `group` (each row is read once: the group
    /// is let go after its last row), if it is no larger than `limit` bytes.
    pub fn read(&self, group: usize, row: usize, limit: u64) -> Result<Vec<u8>, String> {
        let cells = self.cache.get(self.id, group, self.group_bytes(group));
        let result = self.cell(&cells, group, row, limit);
        drop(cells);
        let last = self
            .unread
            .get(group)
            .is_some_and(|n| n.fetch_sub(1, Ordering::AcqRel) == 1);
        if last {
            self.cache.done(self.id, group);
        }
        result
    }

    /// Row `row` of the decoded row group `group`.
    fn cell(
        &self,
        cells: &OnceLock<Cells>,
        group: usize,
        row: usize,
        limit: u64,
    ) -> Result<Vec<u8>, String> {
        let (rows_per_batch, batches) = cells.get_or_init(|| self.decode(group)).as_ref()?;
        let (batch, row) = (row / rows_per_batch, row % rows_per_batch);
        let array = batches
            .get(batch)
            .filter(|a| row < a.len())
            .ok_or_else(|| format!("row group {group} has fewer rows than its footer says"))?;
        let array = match array.as_struct_opt() {
            Some(image) if image.is_null(row) => return Err("no image in this row (null)".into()),
            Some(image) => image
                .column_by_name("bytes")
                .ok_or("the image struct has no bytes")?,
            None => array,
        };
        if array.is_null(row) {
            return Err("no image in this row (null)".into());
        }
        if let Some(url) = text(array, row) {
            if !crate::fetch::is_url(url) {
                return Err(format!("{url:?} is not an http(s) URL"));
            }
            return crate::fetch::for_jobs()
                .get(url)
                .map_err(|e| format!("fetching {url}: {e}"));
        }
        let bytes = if let Some(a) = array.as_binary_opt::<i32>() {
            a.value(row)
        } else if let Some(a) = array.as_binary_opt::<i64>() {
            a.value(row)
        } else if let Some(a) = array.as_binary_view_opt() {
            a.value(row)
        } else {
            return Err(format!(
                "the image column holds {}, not bytes",
                array.data_type()
            ));
        };
        if bytes.len() as u64 > limit {
            return Err(format!(
                "{} bytes, more than the limit of {limit} for an image file",
                bytes.len()
            ));
        }
        Ok(bytes.to_vec())
    }

    /// The uncompressed size of row group `group`'s image column.
    fn group_bytes(&self, group: usize) -> u64 {
        let groups = self.metadata.metadata().row_groups();
        groups
            .get(group)
            .map_or(0, |g| g.column(self.leaf).uncompressed_size().max(0) as u64)
    }

    /// Decodes row group `group`'s image column.
    fn decode(&self, group: usize) -> Cells {
        let size = self.group_bytes(group);
        if size > MAX_ROW_GROUP_BYTES {
            return Err(format!(
                "row group {group} holds {:.1} GiB of images, more than the {} GiB read at once; \
                 write the table with smaller row groups",
                size as f64 / (1u64 << 30) as f64,
                MAX_ROW_GROUP_BYTES >> 30
            ));
        }
        let file = File::open(&self.path).map_err(|e| format!("cannot open the table: {e}"))?;
        let mask = ProjectionMask::leaves(self.metadata.parquet_schema(), [self.leaf]);
        let groups = self.metadata.metadata().row_groups();
        let rows = groups.get(group).map_or(1, |g| g.num_rows().max(1) as u64);
        let rows_per_batch =
            (BATCH_BYTES / (size / rows).max(1)).clamp(1, READ_ROWS as u64) as usize;
        let reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.metadata.clone())
                .with_row_groups(vec![group])
                .with_projection(mask)
                .with_batch_size(rows_per_batch)
                .build()
                .map_err(|e| format!("cannot read row group {group}: {e}"))?;
        let mut batches = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| format!("cannot read row group {group}: {e}"))?;
            if batch.num_columns() != 1 {
                return Err(format!(
                    "row group {group}: the image column did not come back"
                ));
            }
            batches.push(batch.column(0).clone());
        }
        // Every batch but the last holds `rows_per_batch` rows, so that a row's batch is its
        // index divided by that.
        if let Some((_, full)) = batches.split_last() {
            if full.iter().any(|b| b.len() != rows_per_batch) {
                return Err(format!("row group {group} came back in uneven batches"));
            }
        }
        Ok((rows_per_batch, batches))
    }
}

/// The values of column `name` for every row, as text: strings, or integers written out.
fn read_ids(
    path: &Path,
    metadata: &ArrowReaderMetadata,
    name: &str,
) -> Result<Vec<Option<String>>, String> {
    let fields = metadata.schema().fields();
    let Some(at) = fields.iter().position(|f| f.name() == name) else {
        let names: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
        return Err(format!(
            "no column {name:?} (--id-column); its columns: {}",
            names.join(", ")
        ));
    };
    let file = File::open(path).map_err(|e| format!("cannot open the table: {e}"))?;
    let mask = ProjectionMask::roots(metadata.parquet_schema(), [at]);
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata.clone())
        .with_projection(mask)
        .build()
        .map_err(|e| format!("cannot read column {name:?}: {e}"))?;
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| format!("cannot read column {name:?}: {e}"))?;
        let col = batch.column(0);
        macro_rules! ints {
            ($t:ty) => {
                col.as_primitive_opt::<$t>().map(|a| {
                    (0..a.len())
                        .map(|i| a.is_valid(i).then(|| a.value(i).to_string()))
                        .collect::<Vec<_>>()
                })
            };
        }
        use arrow_array::types::{Int32Type, Int64Type, UInt32Type, UInt64Type};
        let values = if let Some(a) = col.as_string_opt::<i32>() {
            a.iter().map(|v| v.map(str::to_owned)).collect()
        } else if let Some(a) = col.as_string_opt::<i64>() {
            a.iter().map(|v| v.map(str::to_owned)).collect()
        } else if let Some(a) = col.as_string_view_opt() {
            a.iter().map(|v| v.map(str::to_owned)).collect()
        } else if let Some(v) = ints!(Int64Type)
            .or_else(|| ints!(Int32Type))
            .or_else(|| ints!(UInt64Type))
            .or_else(|| ints!(UInt32Type))
        {
            v
        } else {
            return Err(format!(
                "column {name:?} holds {}: --id-column takes strings or integers",
                col.data_type()
            ));
        };
        ids.extend(values);
    }
    Ok(ids)
}

/// The features Hugging Face datasets record in a table's metadata: column name to `_type`
/// (`Image`, `Audio`, `Value`, ...); empty for other tables.
fn hf_features(metadata: &ArrowReaderMetadata) -> std::collections::HashMap<String, String> {
    let Some(text) = metadata
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|kv| kv.key == "huggingface"))
        .and_then(|kv| kv.value.as_deref())
    else {
        return Default::default();
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(text) else {
        return Default::default();
    };
    json["info"]["features"]
        .as_object()
        .map(|features| {
            features
                .iter()
                .filter_map(|(name, f)| Some((name.clone(), f["_type"].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a column of `data_type` holds text (image URLs, when chosen as the image column).
fn is_text(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

/// Row `row` of a text column, if `array` is one.
fn text(array: &dyn Array, row: usize) -> Option<&str> {
    if let Some(a) = array.as_string_opt::<i32>() {
        Some(a.value(row))
    } else if let Some(a) = array.as_string_opt::<i64>() {
        Some(a.value(row))
    } else {
        array.as_string_view_opt().map(|a| a.value(row))
    }
}

/// Whether a column of `data_type` holds encoded images: `Some(None)` for bytes, `Some(Some(child))`
/// for a struct holding them in its `bytes` field (Hugging Face datasets' `Image`).
fn image_leaf(data_type: &DataType) -> Option<Option<&'static str>> {
    let is_bytes = |t: &DataType| {
        matches!(
            t,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView
        )
    };
    match data_type {
        t if is_bytes(t) => Some(None),
        DataType::Struct(children)
            if children
                .iter()
                .any(|c| c.name() == "bytes" && is_bytes(c.data_type())) =>
        {
            Some(Some("bytes"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{BinaryArray, RecordBatch, StringArray, StructArray};
    use arrow_schema::{Field, Fields};
    use parquet::file::metadata::KeyValue;
    use parquet::file::properties::WriterProperties;

    fn write(path: &Path, batch: RecordBatch, rows_per_group: usize, hf: Option<&str>) {
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(rows_per_group))
            .set_key_value_metadata(
                hf.map(|json| vec![KeyValue::new("huggingface".into(), json.to_string())]),
            )
            .build();
        let file = File::create(path).unwrap();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    #[test]
    fn row_groups_are_let_go_after_their_last_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let cells: Vec<&[u8]> = vec![b"r0", b"r1", b"r2", b"r3", b"a longer row"];
        let column = Arc::new(BinaryArray::from_vec(cells)) as ArrayRef;
        write(
            &path,
            RecordBatch::try_from_iter([("image", column)]).unwrap(),
            2,
            None,
        );
        let cache = Arc::new(Cache::default());
        let table = Table::open(&path, None, None, cache.clone()).unwrap();
        assert_eq!(table.row_groups().collect::<Vec<_>>(), [2, 2, 1]);
        let kept = || cache.lock().1.len();
        assert_eq!(table.read(0, 1, 100).unwrap(), b"r1");
        assert_eq!(kept(), 1, "group 0 is kept for its other row");
        assert_eq!(table.read(1, 0, 100).unwrap(), b"r2");
        assert_eq!(kept(), 2);
        assert_eq!(table.read(0, 0, 100).unwrap(), b"r0");
        assert_eq!(kept(), 1, "group 0 is let go after its last row");
        let err = table.read(2, 0, 4).unwrap_err();
        assert!(err.contains("more than the limit of 4"), "{err}");
        assert_eq!(kept(), 1, "a failed read counts as read");
        // A second table shares the cache under another number.
        let other = Table::open(&path, Some("image"), None, cache.clone()).unwrap();
        assert_eq!(other.read(1, 1, 100).unwrap(), b"r3");
        assert_eq!(kept(), 2);
    }

    #[test]
    fn hugging_face_features_tell_images_from_audio() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let fields = Fields::from(vec![
            Field::new("bytes", DataType::Binary, true),
            Field::new("path", DataType::Utf8, true),
        ]);
        let item = |bytes: &'static [u8]| -> ArrayRef {
            Arc::new(StructArray::new(
                fields.clone(),
                vec![
                    Arc::new(BinaryArray::from_vec(vec![bytes])),
                    Arc::new(StringArray::from(vec!["x"])),
                ],
                None,
            ))
        };
        let batch =
            RecordBatch::try_from_iter([("audio", item(b"wav")), ("picture", item(b"png"))])
                .unwrap();
        let features = r#"{"info": {"features": {"audio": {"_type": "Audio"},
                            "picture": {"_type": "Image"}}}}"#;
        write(&path, batch.clone(), 10, Some(features));
        let cache = Arc::new(Cache::default());
        let table = Table::open(&path, None, None, cache.clone()).unwrap();
        assert_eq!(table.read(0, 0, 100).unwrap(), b"png");
        // Without the metadata, two structs of bytes: the user chooses.
        write(&path, batch, 10, None);
        let err = Table::open(&path, None, None, cache).unwrap_err();
        assert!(err.contains("--image-column"), "{err}");
    }
}
