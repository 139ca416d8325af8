//! The embed verb's output files, written from the job's chunks in one streaming pass (memory stays
//! bounded by one chunk): Parquet (path, width, height, embedding; grid_h, grid_w for patches), npy
//! (`N x D` or `N x gh x gw x D`) or safetensors (`embeddings`), the latter two with
//! `FILE.paths.txt` naming each row's input, or a folder in clip-retrieval's layout
//! (`img_emb/img_emb_0.npy` and `metadata/metadata_0.parquet`, which embedding-reader and
//! autofaiss read). Values are float32, or float16 (`--output-dtype f16`, rounded to nearest even
//! at write time: the job's chunks stay f32). An Arrow IPC stream on standard output
//! ([`ArrowStream`], `--output -`) takes the Parquet output's columns as the job commits them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, FixedSizeListBuilder, Float16Builder, Float32Builder, Int8Builder, ListBuilder,
    UInt8Builder,
};
use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;

use super::job::{write_atomic, Job, Row};
use super::outputs::Outputs;
use crate::error::{CliError, Result};

/// Output formats, chosen by the output's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Parquet,
    Npy,
    Safetensors,
    /// A folder: `img_emb/img_emb_0.npy` (`N x D`) and `metadata/metadata_0.parquet`
    /// (`image_path`, `width`, `height`), rows in the same order, as clip-retrieval writes them.
    ClipRetrieval,
    /// `-`: an Arrow IPC stream on standard output, written as the job runs ([`ArrowStream`]).
    ArrowStream,
}

/// The two folders of a [`Format::ClipRetrieval`] output.
const CLIP_RETRIEVAL_ENTRIES: [&str; 2] = ["img_emb", "metadata"];

impl Format {
    /// The format of `output` as given on the command line: from its extension, or a folder when
    /// it ends with `/`; and the output path (without that `/`).
    pub fn of(output: &str) -> Result<(Self, PathBuf)> {
        if output == "-" {
            return Ok((Format::ArrowStream, PathBuf::from(output)));
        }
        if let Some(dir) = output.strip_suffix(['/', std::path::MAIN_SEPARATOR]) {
            let dir = dir.trim_end_matches(['/', std::path::MAIN_SEPARATOR]);
            if dir.is_empty() {
                return Err(CliError("--output /: name a folder to create".into()));
            }
            return Ok((Format::ClipRetrieval, PathBuf::from(dir)));
        }
        let path = PathBuf::from(output);
        let format = match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("parquet") => Format::Parquet,
            Some("npy") => Format::Npy,
            Some("safetensors") => Format::Safetensors,
            _ => {
                return Err(CliError(format!(
                    "--output {output}: unknown format; use a .parquet, .npy or .safetensors \
                     file name, a folder name ending in / (clip-retrieval's layout), or - (an \
                     Arrow stream on standard output)"
                )))
            }
        };
        Ok((format, path))
    }

    /// Whether every row must have one shape (one dense tensor).
    pub fn is_dense(self) -> bool {
        !matches!(self, Format::Parquet | Format::ArrowStream)
    }
}

/// The type of the written values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ValueType {
    /// float32, as computed.
    #[default]
    F32,
    /// float16: half the size (rounded to nearest even), read by numpy, pandas, DuckDB, FAISS
    /// loaders.
    F16,
    /// One bit per value, 1 where the value is above 0, packed 8 to a byte with the first value
    /// in the highest bit (numpy.packbits' order), each row's vector (each patch token's, for
    /// patch grids) padded to whole bytes: uint8, 1/32 of the size, for Hamming-distance search
    /// (FAISS binary indexes, vector databases' binary vectors).
    Binary,
    /// int8: each vector (each patch token's, for patch grids) scaled so that its largest
    /// magnitude is 127, then rounded: a quarter of the size, each value within half a step of
    /// 1/127 of its vector's largest, so that cosine similarities move by about 1e-3 (their
    /// lengths are not kept), for vector databases' int8 and byte vectors under cosine search.
    Int8,
}

impl ValueType {
    fn arrow(self) -> DataType {
        match self {
            ValueType::F32 => DataType::Float32,
            ValueType::F16 => DataType::Float16,
            ValueType::Binary => DataType::UInt8,
            ValueType::Int8 => DataType::Int8,
        }
    }

    /// How many stored elements a vector of `n` values takes.
    fn stored_len(self, n: usize) -> usize {
        match self {
            ValueType::Binary => n.div_ceil(8),
            _ => n,
        }
    }

    /// How many stored elements an output of `shape` takes (its last dimension is the vector).
    fn stored_elems(self, shape: &[usize]) -> usize {
        match shape.split_last() {
            Some((&last, rest)) => rest.iter().product::<usize>() * self.stored_len(last),
            None => 0,
        }
    }

    /// Appends `values`, vectors of `unit` values one after another, in this type's
    /// little-endian bytes.
    fn extend_bytes(self, out: &mut Vec<u8>, values: &[f32], unit: usize) {
        match self {
            ValueType::F32 => out.extend_from_slice(bytemuck::cast_slice(values)),
            ValueType::F16 => {
                for &v in values {
                    out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
                }
            }
            ValueType::Binary => {
                for vector in values.chunks(unit.max(1)) {
                    out.extend(vector.chunks(8).map(|bits| {
                        bits.iter()
                            .enumerate()
                            .fold(0u8, |byte, (i, &v)| byte | (((v > 0.0) as u8) << (7 - i)))
                    }));
                }
            }
            ValueType::Int8 => {
                for vector in values.chunks(unit.max(1)) {
                    let largest = vector.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let scale = if largest > 0.0 { 127.0 / largest } else { 0.0 };
                    out.extend(
                        vector
                            .iter()
                            .map(|&v| ((v * scale).round().clamp(-127.0, 127.0) as i8) as u8),
                    );
                }
            }
        }
    }

    /// Bytes per stored element.
    fn size(self) -> usize {
        match self {
            ValueType::F32 => 4,
            ValueType::F16 => 2,
            ValueType::Binary | ValueType::Int8 => 1,
        }
    }
}

/// A sibling path: `FILE` + `suffix` (e.g. `out.npy.paths.txt`).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CliError + '_ {
    move |e| CliError(format!("cannot write {}: {e}", path.display()))
}

/// An error when `shapes` (a row's outputs) differ from `first` (the job's first row's): a dense
/// format holds one shape per output.
pub fn same_shapes(
    first: &[Vec<usize>],
    shapes: &[Vec<usize>],
    format: Format,
    outputs: &Outputs,
) -> Result<()> {
    for ((a, b), pooling) in first.iter().zip(shapes).zip(&outputs.poolings) {
        if a != b {
            return Err(CliError(format!(
                "rows differ in the shape of their {pooling} output ({a:?} and {b:?}); {format:?} \
                 holds one shape: write Parquet, or preprocess every image to one size"
            )));
        }
    }
    Ok(())
}

/// The single shape of each output that a dense format needs; an error naming the output and the
/// shapes when rows differ (patch grids of different sizes fit only Parquet).
pub fn dense_shape(job: &Job, format: Format, outputs: &Outputs) -> Result<Vec<Vec<usize>>> {
    let Some(first) = job.shapes.first() else {
        return Ok(vec![vec![0]; outputs.poolings.len()]);
    };
    for other in &job.shapes[1..] {
        same_shapes(first, other, format, outputs)?;
    }
    Ok(first.clone())
}

/// Writes the final output of `job` to `out` (via a temporary file renamed into place, removed
/// when the write fails: a full disk gets its space back and the job stays resumable).
pub fn write_output(
    job: &Job,
    out: &Path,
    format: Format,
    values: ValueType,
    outputs: &Outputs,
    region: &Region<'_>,
) -> Result<()> {
    let tmp = sibling(out, ".tmp");
    // The paths file of .npy and .safetensors goes in last, after the old one is removed, so
    // that a failure never leaves new vectors beside old paths, or the reverse.
    let (paths, paths_tmp) = (sibling(out, ".paths.txt"), sibling(out, ".paths.txt.tmp"));
    let remove_tmp = || {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::remove_file(&paths_tmp);
    };
    remove_tmp();
    write_to(job, &tmp, &paths_tmp, format, values, outputs, region)
        .and_then(|()| {
            if format == Format::ClipRetrieval && out.is_dir() {
                // --overwrite of an earlier output folder (checked to be one).
                replaceable_folder(out)?;
                std::fs::remove_dir_all(out).map_err(io(out))?;
            }
            if paths_tmp.exists() && paths.exists() {
                std::fs::remove_file(&paths).map_err(io(&paths))?;
            }
            std::fs::rename(&tmp, out).map_err(io(out))?;
            if paths_tmp.exists() {
                std::fs::rename(&paths_tmp, &paths).map_err(io(&paths))?;
            }
            Ok(())
        })
        .inspect_err(|_| remove_tmp())
}

/// Whether `dir` may be replaced by `--overwrite`: a folder holding nothing but what a
/// clip-retrieval output holds (`img_emb/img_emb_*.npy`, `metadata/metadata_*.parquet`).
/// Anything else there is the user's, and never deleted.
pub fn replaceable_folder(dir: &Path) -> Result<()> {
    let list = |d: &Path| -> Result<Vec<(String, bool)>> {
        let fail = |e: std::io::Error| CliError(format!("cannot list {}: {e}", d.display()));
        std::fs::read_dir(d)
            .map_err(fail)?
            .map(|entry| {
                let entry = entry.map_err(fail)?;
                let is_file = entry.file_type().map_err(fail)?.is_file();
                Ok((entry.file_name().to_string_lossy().into_owned(), is_file))
            })
            .collect()
    };
    let refuse = |what: &str| {
        Err(CliError(format!(
            "{} holds {what}, which is not part of an embed output: refusing to replace the \
             folder; choose a new one",
            dir.display()
        )))
    };
    for (name, is_file) in list(dir)? {
        let (prefix, suffix) = match name.as_str() {
            "img_emb" => ("img_emb_", ".npy"),
            "metadata" => ("metadata_", ".parquet"),
            _ => return refuse(&name),
        };
        if is_file {
            return refuse(&name);
        }
        for (inner, inner_is_file) in list(&dir.join(&name))? {
            if !inner_is_file || !inner.starts_with(prefix) || !inner.ends_with(suffix) {
                return refuse(&format!("{name}/{inner}"));
            }
        }
    }
    Ok(())
}

/// The output of `job`, written to `tmp`, and for the dense file formats its paths to
/// `paths_tmp`.
fn write_to(
    job: &Job,
    tmp: &Path,
    paths_tmp: &Path,
    format: Format,
    values: ValueType,
    outputs: &Outputs,
    region: &Region<'_>,
) -> Result<()> {
    // Each output as a dense tensor: its name and full shape.
    let tensors = |default: &str| -> Result<Vec<(String, Vec<usize>)>> {
        let shapes = dense_shape(job, format, outputs)?;
        Ok(outputs
            .names(default)
            .into_iter()
            .zip(shapes)
            .map(|(name, shape)| {
                let mut full = vec![job.rows];
                full.extend(shape);
                (name, full)
            })
            .collect())
    };
    match format {
        Format::Parquet => write_parquet(job, tmp, values, outputs, region),
        Format::Npy | Format::Safetensors => write_dense(
            job,
            tmp,
            format,
            values,
            &tensors("embeddings")?,
            Some(paths_tmp),
        ),
        Format::ArrowStream => Err(CliError(
            "an Arrow stream is written as the job runs, not from its chunks".into(),
        )),
        Format::ClipRetrieval => {
            for entry in CLIP_RETRIEVAL_ENTRIES {
                let dir = tmp.join(entry);
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            }
            let npy = tmp.join("img_emb/img_emb_0.npy");
            write_dense(
                job,
                &npy,
                Format::Npy,
                values,
                &tensors("embeddings")?,
                None,
            )?;
            write_metadata(job, &tmp.join("metadata/metadata_0.parquet"))
        }
    }
}

/// clip-retrieval's metadata: `image_path`, `width`, `height` of each row, in order.
fn write_metadata(job: &Job, path: &Path) -> Result<()> {
    let file = File::create(path).map_err(io(path))?;
    let pq = |e: parquet::errors::ParquetError| {
        CliError(format!("cannot write {}: {e}", path.display()))
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("image_path", DataType::Utf8, false),
        Field::new("width", DataType::UInt32, false),
        Field::new("height", DataType::UInt32, false),
    ]));
    let mut writer = ArrowWriter::try_new(file, schema.clone(), None).map_err(pq)?;
    for chunk in job.chunks() {
        let rows: Vec<Row> = chunk?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.path.as_str()),
            )),
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.width))),
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.height))),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| CliError(format!("cannot write {}: {e}", path.display())))?;
        writer.write(&batch).map_err(pq)?;
    }
    writer.close().map_err(pq)?;
    Ok(())
}

/// The part of an image of `(width, height)` pixels that its patch grid covers, in its pixel
/// coordinates: `[x0, y0, x1, y1]` ([`dinov2::image::grid_region`] of the job's preprocessing).
pub type Region<'a> = dyn Fn(u32, u32) -> [f32; 4] + Sync + 'a;

/// The `region` column: each row's [`Region`], four float32 values.
fn regions(rows: &[Row], region: &Region<'_>) -> ArrayRef {
    let field = Arc::new(Field::new("item", DataType::Float32, false));
    let mut b = FixedSizeListBuilder::new(Float32Builder::new(), 4).with_field(field);
    for r in rows {
        b.values().append_slice(&region(r.width, r.height));
        b.append(true);
    }
    Arc::new(b.finish())
}

/// The header of a version 1.0 `.npy` file of a C-order array of `shape` with numpy type
/// `descr` (e.g. `<f4`); the data follows it.
pub fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let dims = if dims.len() == 1 {
        format!("{},", dims[0])
    } else {
        dims.join(", ")
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}");
    // Magic (6) + version (2) + length (2) + dict + '\n' is a multiple of 64.
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    h.extend((dict.len() as u16).to_le_bytes());
    h.extend(dict.as_bytes());
    h
}

/// Writes the dense tensors (`(name, full shape)`, one per output: npy holds one), output after
/// output, and in the first pass over the chunks the paths file beside them.
fn write_dense(
    job: &Job,
    path: &Path,
    format: Format,
    values: ValueType,
    tensors: &[(String, Vec<usize>)],
    paths_file: Option<&Path>,
) -> Result<()> {
    let file = File::create(path).map_err(io(path))?;
    let mut w = BufWriter::new(file);
    // Each tensor's rows hold vectors of `shape.last()` values, stored as `stored_len` of it.
    let stored = |shape: &[usize]| {
        let mut shape = shape.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = values.stored_len(*last);
        }
        shape
    };
    let (descr, dtype) = match values {
        ValueType::F32 => ("<f4", "F32"),
        ValueType::F16 => ("<f2", "F16"),
        ValueType::Binary => ("|u1", "U8"),
        ValueType::Int8 => ("|i1", "I8"),
    };
    let header = match (format, tensors) {
        (Format::Npy, [(_, shape)]) => npy_header(descr, &stored(shape)),
        (Format::Npy, _) => {
            return Err(CliError(format!(
                "{}: an .npy file holds one array, not {}: write .safetensors or .parquet",
                path.display(),
                tensors.len()
            )))
        }
        _ => {
            let mut header = serde_json::Map::new();
            let mut offset = 0;
            for (name, shape) in tensors {
                let shape = stored(shape);
                let bytes = shape.iter().product::<usize>() * values.size();
                header.insert(
                    name.clone(),
                    serde_json::json!({"dtype": dtype, "shape": shape,
                                       "data_offsets": [offset, offset + bytes]}),
                );
                offset += bytes;
            }
            header.insert(
                "__metadata__".into(),
                serde_json::json!({"format": "dinov2 embed", "paths": "see FILE.paths.txt"}),
            );
            let mut json = serde_json::Value::Object(header).to_string();
            while !json.len().is_multiple_of(8) {
                json.push(' ');
            }
            let mut h = (json.len() as u64).to_le_bytes().to_vec();
            h.extend(json.as_bytes());
            h
        }
    };
    w.write_all(&header).map_err(io(path))?;
    let mut paths = String::new();
    let mut buf = Vec::new();
    for k in 0..tensors.len() {
        for chunk in job.chunks() {
            for row in chunk? {
                let (shape, output) = nth_output(&row, k)?;
                buf.clear();
                values.extend_bytes(&mut buf, output, shape.last().copied().unwrap_or(1));
                w.write_all(&buf).map_err(io(path))?;
                if k == 0 {
                    paths.push_str(&row.path);
                    paths.push('\n');
                }
            }
        }
    }
    if let Some(paths_file) = paths_file {
        write_atomic(paths_file, paths.as_bytes())?;
    }
    w.flush().map_err(io(path))?;
    w.into_inner()
        .map_err(|e| io(path)(e.into_error()))?
        .sync_all()
        .map_err(io(path))
}

/// Output `k` of `row`: its shape and values.
fn nth_output(row: &Row, k: usize) -> Result<(&[usize], &[f32])> {
    row.outputs()
        .nth(k)
        .ok_or_else(|| CliError(format!("{}: a row without output {k}", row.path)))
}

/// A list builder over `values`' arrow type.
fn list_values(values: ValueType) -> Box<dyn ArrayBuilder> {
    match values {
        ValueType::F32 => Box::new(Float32Builder::new()),
        ValueType::F16 => Box::new(Float16Builder::new()),
        ValueType::Binary => Box::new(UInt8Builder::new()),
        ValueType::Int8 => Box::new(Int8Builder::new()),
    }
}

/// Appends `row` (its vectors of `unit` values) to the values builder made by [`list_values`].
fn append_values(builder: &mut dyn ArrayBuilder, row: &[f32], unit: usize) {
    if let Some(b) = builder.as_any_mut().downcast_mut::<Float32Builder>() {
        b.append_slice(row);
    } else if let Some(b) = builder.as_any_mut().downcast_mut::<Float16Builder>() {
        for &v in row {
            b.append_value(half::f16::from_f32(v));
        }
    } else if let Some(b) = builder.as_any_mut().downcast_mut::<UInt8Builder>() {
        let mut bytes = Vec::with_capacity(ValueType::Binary.stored_len(row.len()));
        ValueType::Binary.extend_bytes(&mut bytes, row, unit);
        b.append_slice(&bytes);
    } else if let Some(b) = builder.as_any_mut().downcast_mut::<Int8Builder>() {
        let mut bytes = Vec::with_capacity(row.len());
        ValueType::Int8.extend_bytes(&mut bytes, row, unit);
        b.append_slice(bytemuck::cast_slice(&bytes));
    }
}

/// The columns of the Parquet and Arrow outputs: `path`, `width`, `height`, then each output's
/// column (`embedding` for one output, else named by pooling; a fixed-size list, or a list for
/// the outputs that follow the patch grid), then `grid_h`, `grid_w` and `region` when an output
/// follows it.
struct Columns<'a> {
    values: ValueType,
    outputs: &'a Outputs,
    region: &'a Region<'a>,
    names: Vec<String>,
    /// The list items' field.
    item: Arc<Field>,
}

impl<'a> Columns<'a> {
    fn new(values: ValueType, outputs: &'a Outputs, region: &'a Region<'a>) -> Self {
        Columns {
            values,
            outputs,
            region,
            names: outputs.names("embedding"),
            item: Arc::new(Field::new("item", values.arrow(), false)),
        }
    }

    /// `rows` as one record batch; `None` when there is none.
    fn batch(&self, rows: &[Row]) -> Result<Option<RecordBatch>> {
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let (values, item) = (self.values, &self.item);
        let mut columns: Vec<(&str, ArrayRef)> = vec![
            (
                "path",
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| r.path.as_str()),
                )),
            ),
            (
                "width",
                Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.width))),
            ),
            (
                "height",
                Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.height))),
            ),
        ];
        for (k, (name, pooling)) in self.names.iter().zip(&self.outputs.poolings).enumerate() {
            let column: ArrayRef = if pooling.has_grid() {
                let mut b = ListBuilder::new(list_values(values)).with_field(item.clone());
                for r in rows {
                    let (shape, v) = nth_output(r, k)?;
                    append_values(b.values().as_mut(), v, shape.last().copied().unwrap_or(1));
                    b.append(true);
                }
                Arc::new(b.finish())
            } else {
                let first = nth_output(first, k)?.0;
                let stored = values.stored_elems(first) as i32;
                let mut b =
                    FixedSizeListBuilder::new(list_values(values), stored).with_field(item.clone());
                for r in rows {
                    let (shape, v) = nth_output(r, k)?;
                    if shape != first {
                        return Err(CliError(format!(
                            "{}: its {name} output is shaped {shape:?}, the others {first:?}",
                            r.path
                        )));
                    }
                    append_values(b.values().as_mut(), v, shape.last().copied().unwrap_or(1));
                    b.append(true);
                }
                Arc::new(b.finish())
            };
            columns.push((name, column));
        }
        if self.outputs.has_grid() {
            let grid = |f: fn((usize, usize)) -> usize| -> ArrayRef {
                Arc::new(UInt32Array::from_iter_values(
                    rows.iter().map(|r| f(r.grid.unwrap_or((0, 0))) as u32),
                ))
            };
            columns.push(("grid_h", grid(|g| g.0)));
            columns.push(("grid_w", grid(|g| g.1)));
            columns.push(("region", regions(rows, self.region)));
        }
        let fields: Vec<Field> = columns
            .iter()
            .map(|(name, array)| Field::new(*name, array.data_type().clone(), false))
            .collect();
        RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns.into_iter().map(|(_, a)| a).collect(),
        )
        .map(Some)
        .map_err(|e| CliError(format!("cannot assemble the output's columns: {e}")))
    }

    /// The columns without rows (the vectors as lists: their length is not known).
    fn empty_schema(&self) -> Schema {
        let mut fields = vec![
            Field::new("path", DataType::Utf8, false),
            Field::new("width", DataType::UInt32, false),
            Field::new("height", DataType::UInt32, false),
        ];
        fields.extend(
            self.names
                .iter()
                .map(|name| Field::new(name, DataType::List(self.item.clone()), false)),
        );
        if self.outputs.has_grid() {
            fields.push(Field::new("grid_h", DataType::UInt32, false));
            fields.push(Field::new("grid_w", DataType::UInt32, false));
            let corner = Arc::new(Field::new("item", DataType::Float32, false));
            fields.push(Field::new(
                "region",
                DataType::FixedSizeList(corner, 4),
                false,
            ));
        }
        Schema::new(fields)
    }
}

/// Writes the Parquet output ([`Columns`]), a row group per chunk of the job.
fn write_parquet(
    job: &Job,
    path: &Path,
    values: ValueType,
    outputs: &Outputs,
    region: &Region<'_>,
) -> Result<()> {
    let file = File::create(path).map_err(io(path))?;
    let pq = |e: parquet::errors::ParquetError| {
        CliError(format!("cannot write {}: {e}", path.display()))
    };
    let columns = Columns::new(values, outputs, region);
    let mut writer: Option<ArrowWriter<File>> = None;
    let mut file = Some(file);
    for chunk in job.chunks() {
        let rows: Vec<Row> = chunk?;
        let Some(batch) = columns.batch(&rows)? else {
            continue;
        };
        if writer.is_none() {
            let file = file.take().expect("file is taken once");
            writer = Some(ArrowWriter::try_new(file, batch.schema(), None).map_err(pq)?);
        }
        writer
            .as_mut()
            .expect("writer was just created")
            .write(&batch)
            .map_err(pq)?;
    }
    match writer {
        Some(w) => {
            w.close().map_err(pq)?;
        }
        None => {
            // No image was embedded: an empty file with the columns, so readers see the schema.
            let schema = Arc::new(columns.empty_schema());
            ArrowWriter::try_new(file.take().expect("file is unused"), schema, None)
                .map_err(pq)?
                .close()
                .map_err(pq)?;
        }
    }
    Ok(())
}

/// `--output -`: the rows as an Arrow IPC stream on standard output, a record batch for each
/// commit of the job as it runs ([`Columns`], as in the Parquet output), so that the program
/// reading it (`pyarrow.ipc.open_stream(sys.stdin.buffer)`) gets them while the job goes on.
pub struct ArrowStream<'a> {
    columns: Columns<'a>,
    writer: Option<StreamWriter<BufWriter<std::io::Stdout>>>,
}

impl<'a> ArrowStream<'a> {
    /// Refused where standard output is a terminal.
    pub fn new(values: ValueType, outputs: &'a Outputs, region: &'a Region<'a>) -> Result<Self> {
        use std::io::IsTerminal;
        if std::io::stdout().is_terminal() {
            return Err(CliError(
                "--output -: standard output is a terminal; pipe the Arrow stream into a \
                 program, or name an output file"
                    .into(),
            ));
        }
        Ok(ArrowStream {
            columns: Columns::new(values, outputs, region),
            writer: None,
        })
    }

    /// Writes `rows` as one record batch, and flushes it to the reader.
    pub fn write(&mut self, rows: &[Row]) -> Result<()> {
        let Some(batch) = self.columns.batch(rows).map_err(stdout_error)? else {
            return Ok(());
        };
        if self.writer.is_none() {
            let writer = StreamWriter::try_new_buffered(std::io::stdout(), &batch.schema())
                .map_err(stdout_error)?;
            self.writer = Some(writer);
        }
        let writer = self.writer.as_mut().expect("the writer was just made");
        writer
            .write(&batch)
            .and_then(|()| writer.flush())
            .map_err(stdout_error)
    }

    /// Ends the stream (with the columns alone when no row was written).
    pub fn finish(mut self) -> Result<()> {
        let mut writer = match self.writer.take() {
            Some(writer) => writer,
            None => StreamWriter::try_new_buffered(std::io::stdout(), &self.columns.empty_schema())
                .map_err(stdout_error)?,
        };
        writer
            .finish()
            .and_then(|()| writer.flush())
            .map_err(stdout_error)
    }
}

/// An error writing the Arrow stream, saying where.
fn stdout_error(e: impl std::fmt::Display) -> CliError {
    CliError(format!(
        "cannot write the Arrow stream to standard output: {e}"
    ))
}
