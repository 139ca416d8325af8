//! Parquet tables as inputs: each row's encoded image, read from a column of bytes, as Hugging
//! Face datasets (an `Image` feature: a struct of `bytes` and `path`) and img2dataset (a `jpg`
//! binary column) store them.
//!
//! Only the footer is read when the inputs are listed. A row group's image column is decoded
//! when its first row is read and kept while the rows near it are read (by several decoding
//! threads at once), so every row group is decoded about once.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
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

/// The decoded image columns kept per table: their total size may pass this, but only with two
/// row groups or fewer.
const KEPT_BYTES: u64 = 1 << 30;

/// A row group whose image column is larger than this (uncompressed) is refused: it would be
/// held in memory whole.
pub const MAX_ROW_GROUP_BYTES: u64 = 4 << 30;

/// Rows decoded per arrow batch: a batch of binary values holds at most 2 GiB.
const READ_ROWS: usize = 256;

/// A row group's decoded image cells, in batches of [`READ_ROWS`] rows.
type Cells = Result<Vec<ArrayRef>, String>;

/// A Parquet table of images: its footer, the image column, and the row groups decoded lately.
pub struct Table {
    path: PathBuf,
    metadata: ArrowReaderMetadata,
    /// The image column's name, and the index of its leaf holding the bytes.
    column: String,
    leaf: usize,
    recent: Mutex<VecDeque<(usize, Arc<OnceLock<Cells>>)>>,
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
    /// column of bytes (or of image structs), or among several the one named as an image is.
    pub fn open(path: &Path, column: Option<&str>) -> Result<Table, String> {
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
        let candidates: Vec<&str> = fields
            .iter()
            .filter(|f| image_leaf(f.data_type()).is_some())
            .map(|f| f.name().as_str())
            .collect();
        let column = match column {
            Some(name) => {
                let Some(field) = fields.iter().find(|f| f.name() == name) else {
                    return Err(format!(
                        "no column {name:?} (--image-column); its columns: {}",
                        names()
                    ));
                };
                if image_leaf(field.data_type()).is_none() {
                    return Err(format!(
                        "column {name:?} holds {}, not encoded images: a binary column, or a \
                         struct with a binary `bytes` field (Hugging Face datasets' Image), is \
                         needed",
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
                         field (Hugging Face datasets' Image), is needed; its columns: {}",
                        names()
                    ))
                }
                _ => {
                    let named: Vec<&str> = candidates
                        .iter()
                        .copied()
                        .filter(|c| IMAGE_NAMES.contains(&c.to_ascii_lowercase().as_str()))
                        .collect();
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
        Ok(Table {
            path: path.to_path_buf(),
            metadata,
            column,
            leaf,
            recent: Mutex::new(VecDeque::new()),
        })
    }

    /// Where the table is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rows of each row group, in order.
    pub fn row_groups(&self) -> impl Iterator<Item = usize> + '_ {
        self.metadata
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows().max(0) as usize)
    }

    /// The encoded image in row `row` of row group `group`.
    pub fn read(&self, group: usize, row: usize) -> Result<Vec<u8>, String> {
        let cells = self.cells(group);
        let batches = cells.get_or_init(|| self.decode(group)).as_ref()?;
        let (batch, row) = (row / READ_ROWS, row % READ_ROWS);
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
        Ok(bytes.to_vec())
    }

    /// The cell of row group `group`, shared with the threads reading its other rows; the
    /// oldest are let go while more than [`KEPT_BYTES`] are kept.
    fn cells(&self, group: usize) -> Arc<OnceLock<Cells>> {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, cells)) = recent.iter().find(|(g, _)| *g == group) {
            return cells.clone();
        }
        let cells = Arc::new(OnceLock::new());
        recent.push_back((group, cells.clone()));
        let size = |g: usize| self.group_bytes(g);
        while recent.len() > 2 && recent.iter().map(|(g, _)| size(*g)).sum::<u64>() > KEPT_BYTES {
            recent.pop_front();
        }
        cells
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
        let reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.metadata.clone())
                .with_row_groups(vec![group])
                .with_projection(mask)
                .with_batch_size(READ_ROWS)
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
        // Every batch but the last holds READ_ROWS rows, so that a row's batch is its index
        // divided by READ_ROWS.
        if let Some((_, full)) = batches.split_last() {
            if full.iter().any(|b| b.len() != READ_ROWS) {
                return Err(format!("row group {group} came back in uneven batches"));
            }
        }
        Ok(batches)
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
