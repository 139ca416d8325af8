//! Arrow's PyCapsule interface, both ways: a column of images in (`__arrow_c_array__` or
//! `__arrow_c_stream__` of pyarrow, polars, DuckDB, ...), the embeddings out as a
//! `fixed_size_list<float>` (or `large_list<float>` for rows of different sizes, or the list
//! type the consumer asks for) without a copy of the values.

use std::ffi::CStr;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::ffi::{from_ffi, to_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::ffi_stream::ArrayStreamReader;
use arrow_array::{
    Array, ArrayRef, BinaryArray, BinaryViewArray, FixedSizeListArray, Float32Array,
    LargeBinaryArray, LargeListArray, LargeStringArray, ListArray, StringArray, StringViewArray,
    StructArray,
};
use arrow_buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyTuple};

use crate::inputs::Source;

const SCHEMA: &CStr = c"arrow_schema";
const ARRAY: &CStr = c"arrow_array";
const STREAM: &CStr = c"arrow_array_stream";

/// The images of an Arrow column, or `None` when `obj` speaks no Arrow, or declines to
/// (a pandas Series of arrays or PIL images exports no Arrow: it is read as a sequence).
pub fn sources(obj: &Bound<'_, PyAny>) -> PyResult<Option<Vec<Source>>> {
    let arrays = if obj.hasattr("__arrow_c_stream__")? {
        let Ok(capsule) = obj.call_method0("__arrow_c_stream__") else {
            return Ok(None);
        };
        let capsule = capsule.cast::<PyCapsule>()?;
        let pointer = capsule.pointer_checked(Some(STREAM))?;
        // SAFETY: a capsule named `arrow_array_stream` holds an `ArrowArrayStream` (the
        // interface's contract); `from_raw` moves it out and leaves a released one behind, which
        // the capsule's destructor then skips.
        let reader =
            unsafe { ArrayStreamReader::from_raw(pointer.cast().as_ptr()) }.map_err(arrow_error)?;
        reader
            .collect::<Result<Vec<ArrayRef>, _>>()
            .map_err(arrow_error)?
    } else if obj.hasattr("__arrow_c_array__")? {
        let Ok(pair) = obj.call_method0("__arrow_c_array__") else {
            return Ok(None);
        };
        let pair = pair.cast::<PyTuple>()?;
        let schema = pair.get_item(0)?;
        let schema = schema.cast::<PyCapsule>()?;
        let array = pair.get_item(1)?;
        let array = array.cast::<PyCapsule>()?;
        let schema = schema.pointer_checked(Some(SCHEMA))?;
        let array = array.pointer_checked(Some(ARRAY))?;
        // SAFETY: the capsules hold an `ArrowSchema` and an `ArrowArray` (the interface's
        // contract); the array is moved out as above, the schema only read.
        let data = unsafe {
            let array = FFI_ArrowArray::from_raw(array.cast().as_ptr());
            from_ffi(array, schema.cast::<FFI_ArrowSchema>().as_ref())
        }
        .map_err(arrow_error)?;
        vec![arrow_array::make_array(data)]
    } else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for array in arrays {
        // The import trusts the producer's buffers; check them (offsets in bounds, UTF-8)
        // before reading: a small cost beside decoding the images.
        array.to_data().validate_full().map_err(arrow_error)?;
        column(&array, out.len(), &mut out)?;
    }
    Ok(Some(out))
}

/// Appends the images of one array, whose first row is image `first`.
fn column(array: &ArrayRef, first: usize, out: &mut Vec<Source>) -> PyResult<()> {
    let any = array.as_any();
    let rows = array.len();
    let mut push = |row: usize, item: Option<Item<'_>>| {
        let index = first + row;
        out.push(match item {
            Some(Item::Bytes(bytes)) => Source::Encoded {
                bytes: bytes.to_vec(),
                origin: format!("image {index}"),
            },
            Some(Item::Path(path)) => Source::Path(path.into()),
            None => Source::Invalid(format!("image {index}: null")),
        });
    };
    if array.data_type() == &DataType::Null {
        // A column of nothing but nulls (pyarrow types `[None, None]` so).
        for row in 0..rows {
            push(row, None);
        }
        return Ok(());
    }
    macro_rules! each {
        ($ty:ty, $item:expr) => {
            if let Some(a) = any.downcast_ref::<$ty>() {
                for row in 0..rows {
                    push(row, a.is_valid(row).then(|| $item(a.value(row))));
                }
                return Ok(());
            }
        };
    }
    each!(BinaryArray, Item::Bytes);
    each!(LargeBinaryArray, Item::Bytes);
    each!(BinaryViewArray, Item::Bytes);
    each!(StringArray, Item::Path);
    each!(LargeStringArray, Item::Path);
    each!(StringViewArray, Item::Path);
    if let Some(dictionary) = array.as_any_dictionary_opt() {
        // Dictionary-encoded (polars' categorical paths): the values once, then by key.
        let mut values = Vec::new();
        column(dictionary.values(), first, &mut values)?;
        let keys = if values.is_empty() {
            Vec::new()
        } else {
            dictionary.normalized_keys()
        };
        for row in 0..rows {
            let value = keys.get(row).and_then(|&k| values.get(k));
            out.push(match value {
                Some(source) if array.is_valid(row) => source.clone(),
                _ => Source::Invalid(format!("image {}: null", first + row)),
            });
        }
        return Ok(());
    }
    if let Some(s) = any.downcast_ref::<StructArray>() {
        if s.num_columns() == 1 && s.column_by_name("bytes").is_none() {
            // A table of one column (pyarrow `Table`, DuckDB relation): that column.
            return column(s.column(0), first, out);
        }
        // Hugging Face datasets' Image feature: `{bytes: binary, path: string}`, the bytes when
        // present, else the path.
        let Some(bytes) = s.column_by_name("bytes") else {
            return Err(PyTypeError::new_err(format!(
                "images: an Arrow struct column needs a `bytes` field (Hugging Face's Image), \
                 found fields {:?}; pass the image column alone",
                s.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
            )));
        };
        let mut bytes_out = Vec::with_capacity(rows);
        column(bytes, first, &mut bytes_out)?;
        let mut paths_out = Vec::new();
        if let Some(paths) = s.column_by_name("path") {
            column(paths, first, &mut paths_out)?;
        }
        let mut paths_out = paths_out.into_iter();
        for (row, from_bytes) in bytes_out.into_iter().enumerate() {
            let from_path = paths_out.next();
            out.push(match (s.is_valid(row), from_bytes, from_path) {
                (false, _, _) => Source::Invalid(format!("image {}: null", first + row)),
                (true, Source::Invalid(_), Some(path @ Source::Path(_))) => path,
                (true, source, _) => source,
            });
        }
        return Ok(());
    }
    Err(PyTypeError::new_err(format!(
        "images: expected an Arrow column of encoded images (binary) or paths (string), found {}",
        array.data_type()
    )))
}

/// One row of an image column.
enum Item<'a> {
    Bytes(&'a [u8]),
    Path(&'a str),
}

/// The Arrow array of the embeddings: row `i` the values `offsets[i]..offsets[i+1]` of `values`
/// (f32), null where `valid` is false. A `fixed_size_list<float>` of `row_len` when the rows
/// share that length, else a `large_list<float>`; or the list type `requested` (a
/// `requested_schema` capsule) where it is one of float32 the rows fit.
pub fn embeddings_array(
    values: &Buffer,
    offsets: &[usize],
    valid: &[bool],
    row_len: Option<usize>,
    requested: Option<&Bound<'_, PyAny>>,
) -> PyResult<ArrayRef> {
    let floats = Float32Array::new(ScalarBuffer::new(values.clone(), 0, values.len() / 4), None);
    let floats = Arc::new(floats);
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let nulls = valid
        .iter()
        .any(|v| !v)
        .then(|| NullBuffer::from(valid.to_vec()));
    let too_many = |e| PyValueError::new_err(format!("embeddings as Arrow: {e}"));
    let fixed = |item: Arc<Field>, len: usize| -> PyResult<ArrayRef> {
        let size = i32::try_from(len).map_err(|_| too_many(format!("{len} values per row")))?;
        Ok(Arc::new(
            FixedSizeListArray::try_new(item, size, floats.clone(), nulls.clone())
                .map_err(arrow_error)?,
        ))
    };
    let large = |item: Arc<Field>| -> PyResult<ArrayRef> {
        let offsets = offsets.iter().map(|&o| o as i64).collect::<Vec<_>>();
        let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
        Ok(Arc::new(
            LargeListArray::try_new(item, offsets, floats.clone(), nulls.clone())
                .map_err(arrow_error)?,
        ))
    };
    let asked = requested.map(requested_type).transpose()?.flatten();
    match asked {
        Some(DataType::List(item)) if item.data_type() == &DataType::Float32 => {
            let offsets = offsets
                .iter()
                .map(|&o| i32::try_from(o))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| too_many("more values than a list<float> holds".into()))?;
            let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
            Ok(Arc::new(
                ListArray::try_new(item, offsets, floats.clone(), nulls.clone())
                    .map_err(arrow_error)?,
            ))
        }
        Some(DataType::LargeList(item)) if item.data_type() == &DataType::Float32 => large(item),
        Some(DataType::FixedSizeList(item, n)) if item.data_type() == &DataType::Float32 => {
            match row_len {
                Some(len) if len == n as usize => fixed(item, len),
                _ => Err(PyValueError::new_err(format!(
                    "embeddings as Arrow: fixed_size_list[{n}] asked, but the rows hold {}",
                    row_len.map_or("different numbers of values".into(), |l| l.to_string())
                ))),
            }
        }
        // No request, or one of another type: the default.
        _ => match row_len {
            Some(len) if len > 0 => fixed(item, len),
            _ => large(item),
        },
    }
}

/// The type of a `requested_schema` capsule, `None` when it is not one.
fn requested_type(capsule: &Bound<'_, PyAny>) -> PyResult<Option<DataType>> {
    let Ok(capsule) = capsule.cast::<PyCapsule>() else {
        return Ok(None);
    };
    let Ok(schema) = capsule.pointer_checked(Some(SCHEMA)) else {
        return Ok(None);
    };
    // SAFETY: a capsule named `arrow_schema` holds an `ArrowSchema`; it is only read.
    let schema = unsafe { schema.cast::<FFI_ArrowSchema>().as_ref() };
    Ok(DataType::try_from(schema).ok())
}

/// `(schema capsule, array capsule)` of `array`, as `__arrow_c_array__` returns them.
pub fn export<'py>(py: Python<'py>, array: &ArrayRef) -> PyResult<Bound<'py, PyTuple>> {
    let (array, schema) = to_ffi(&array.to_data()).map_err(arrow_error)?;
    // The capsules own the structs; pyarrow moves their contents out, leaving released structs
    // whose drop does nothing. Unconsumed, they are released when the capsules are collected.
    let schema = PyCapsule::new_with_value(py, schema, SCHEMA)?;
    let array = PyCapsule::new_with_value(py, array, ARRAY)?;
    PyTuple::new(py, [schema.into_any(), array.into_any()])
}

fn arrow_error(e: arrow_schema::ArrowError) -> PyErr {
    PyValueError::new_err(format!("Arrow: {e}"))
}
