//! `Embeddings`, what `Embedder.embed` returns: float32 rows in one buffer, read without a copy
//! by NumPy (the buffer protocol) and Arrow (the PyCapsule interface), with each row's shape,
//! patch grid and error.

use std::ffi::{c_int, c_void};

use arrow_buffer::Buffer;
use pyo3::exceptions::{PyBufferError, PyIndexError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyMemoryView, PyTuple};

/// Float32 embeddings of a list of images, in input order.
///
/// `numpy.asarray(e)` is an `(N, ...)` array over this object's memory (no copy) when every row
/// has one shape: `(N, D)` for a vector pooling, `(N, R, D)` for the registers, `(N, gh, gw, D)`
/// for the patch grid, `(N, T, D)` for every token; the rows of failed images are NaN.
/// `pyarrow.array(e)` is a `fixed_size_list<float>` column (`large_list<float>` when the rows
/// differ in size), rows flattened, failed images null. `e[i]` is row `i` alone.
#[pyclass(frozen, module = "dinov2_rs", sequence)]
pub struct Embeddings {
    /// Every row's values, one after the other (f32).
    values: Buffer,
    /// Row `i` is `values[offsets[i]..offsets[i + 1]]` (in floats).
    offsets: Vec<usize>,
    /// Each row's shape; `None` for a failed image.
    shapes: Vec<Option<Vec<usize>>>,
    /// Each row's patch grid `(gh, gw)`, for the grid poolings.
    grids: Vec<Option<(usize, usize)>>,
    /// Each image's `(width, height)` and the region its grid covers; `None` for a failed one.
    places: Vec<Option<Place>>,
    /// `(row, message)` of each failed image.
    errors: Vec<(usize, String)>,
    /// The buffer's shape and strides (in bytes), when it has one shape; else why not.
    layout: Result<(Vec<isize>, Vec<isize>), String>,
    /// Values per row, when every row has the same number (a `fixed_size_list` in Arrow).
    row_len: Option<usize>,
}

/// An image's `(width, height)` and the region its grid covers.
type Place = ((u32, u32), [f64; 4]);

/// One image's embedding, as `Embeddings::new` takes them.
pub struct Row {
    /// The values, row-major in `shape`.
    pub values: Vec<f32>,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its patch grid, for the grid poolings.
    pub grid: Option<(usize, usize)>,
    /// The image's `(width, height)`.
    pub size: (u32, u32),
    /// The part of the image the patch grid covers, `[x0, y0, x1, y1]` in its pixels.
    pub region: [f64; 4],
}

impl Embeddings {
    /// Gathers `rows`; a failed row is filled with NaN in the shape of the others when they
    /// share one (`fallback` when none succeeded: the vector poolings' known shape).
    pub fn new(rows: Vec<Result<Row, String>>, fallback: Option<Vec<usize>>) -> Self {
        let common = common_shape(&rows).or(fallback);
        let mut values = Vec::new();
        let mut offsets = vec![0];
        let (mut shapes, mut grids, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        let mut places = Vec::new();
        for (i, row) in rows.into_iter().enumerate() {
            match row {
                Ok(row) => {
                    values.extend_from_slice(&row.values);
                    shapes.push(Some(row.shape));
                    grids.push(row.grid);
                    places.push(Some((row.size, row.region)));
                }
                Err(message) => {
                    if let Some(shape) = &common {
                        values.resize(values.len() + shape.iter().product::<usize>(), f32::NAN);
                    }
                    shapes.push(None);
                    grids.push(None);
                    places.push(None);
                    errors.push((i, message));
                }
            }
            offsets.push(values.len());
        }
        let layout = match &common {
            Some(shape) if shapes.iter().flatten().all(|s| s == shape) => {
                Ok(layout(shapes.len(), shape))
            }
            _ => Err(
                "the rows have different shapes (images of different patch grids): read them \
                 one at a time (e[i]), or as an Arrow list column (pyarrow.array(e))"
                    .to_string(),
            ),
        };
        let row_len = match &layout {
            Ok(_) => common.map(|s| s.iter().product()),
            Err(_) => None,
        };
        Embeddings {
            values: Buffer::from_vec(values),
            offsets,
            shapes,
            grids,
            places,
            errors,
            layout,
            row_len,
        }
    }

    /// Row `i` alone, sharing the memory: its buffer is that row's shape.
    fn row(&self, i: usize) -> Self {
        let (start, end) = (self.offsets[i], self.offsets[i + 1]);
        let shape = self.shapes[i].clone();
        let layout = match (&shape, &self.layout) {
            (Some(s), _) => Ok(strip(layout(1, s))),
            (None, Ok(l)) => Ok(strip(l.clone())),
            (None, Err(_)) => Err(format!("row {i} is a failed image")),
        };
        Embeddings {
            values: self.values.slice_with_length(start * 4, (end - start) * 4),
            offsets: vec![0, end - start],
            shapes: vec![shape],
            grids: vec![self.grids[i]],
            places: vec![self.places[i]],
            errors: self
                .errors
                .iter()
                .filter(|(r, _)| *r == i)
                .map(|(_, m)| (0, m.clone()))
                .collect(),
            layout,
            row_len: Some(end - start),
        }
    }
}

/// The one shape of the successful rows, if they share one.
fn common_shape(rows: &[Result<Row, String>]) -> Option<Vec<usize>> {
    let mut shapes = rows
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|r| &r.shape));
    let first = shapes.next()?;
    shapes.all(|s| s == first).then(|| first.clone())
}

/// The C-contiguous shape and byte strides of `rows` rows of `shape`.
fn layout(rows: usize, shape: &[usize]) -> (Vec<isize>, Vec<isize>) {
    let dims: Vec<isize> = std::iter::once(rows)
        .chain(shape.iter().copied())
        .map(|d| d as isize)
        .collect();
    let mut strides = vec![4isize; dims.len()];
    for k in (0..dims.len().saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * dims[k + 1];
    }
    (dims, strides)
}

/// A layout without its leading row axis.
fn strip((dims, strides): (Vec<isize>, Vec<isize>)) -> (Vec<isize>, Vec<isize>) {
    (dims[1..].to_vec(), strides[1..].to_vec())
}

#[pymethods]
impl Embeddings {
    /// The number of rows (images).
    fn __len__(&self) -> usize {
        self.shapes.len()
    }

    /// Row `i` (negative counts from the end) as its own `Embeddings`, sharing the memory:
    /// `numpy.asarray(e[i])` has that row's shape.
    fn __getitem__(&self, i: isize) -> PyResult<Self> {
        let n = self.shapes.len() as isize;
        let j = if i < 0 { i + n } else { i };
        if !(0..n).contains(&j) {
            return Err(PyIndexError::new_err(format!(
                "row {i} of {n} embeddings: out of range"
            )));
        }
        Ok(self.row(j as usize))
    }

    /// The array shape `(N, ...)`, or `None` when the rows differ.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.layout
            .as_ref()
            .ok()
            .map(|(dims, _)| PyTuple::new(py, dims))
            .transpose()
    }

    /// Each row's shape, `None` for a failed image.
    #[getter]
    fn shapes(&self) -> Vec<Option<Vec<usize>>> {
        self.shapes.clone()
    }

    /// Each row's patch grid `(rows, columns)` for the patch and token poolings, else `None`.
    #[getter]
    fn grids(&self) -> Vec<Option<(usize, usize)>> {
        self.grids.clone()
    }

    /// Each image's `(width, height)` (a file's own, before any resize), `None` for a failed
    /// one.
    #[getter]
    fn sizes(&self) -> Vec<Option<(u32, u32)>> {
        self.places
            .iter()
            .map(|p| p.map(|(size, _)| size))
            .collect()
    }

    /// The part of each image its patch grid covers, `(x0, y0, x1, y1)` in the image's pixels
    /// (past its edges where a crop pads it): patch `(i, j)` of a `gh x gw` grid spans
    /// `x0 + (x1 - x0) * j / gw` to `x0 + (x1 - x0) * (j + 1) / gw` across, likewise down.
    /// `None` for a failed image.
    #[getter]
    fn regions(&self) -> Vec<Option<(f64, f64, f64, f64)>> {
        self.places
            .iter()
            .map(|p| p.map(|(_, [x0, y0, x1, y1])| (x0, y0, x1, y1)))
            .collect()
    }

    /// `(row, message)` of each image that failed (read, decode or model), with
    /// `on_error="null"`.
    #[getter]
    fn errors(&self) -> Vec<(usize, String)> {
        self.errors.clone()
    }

    /// Whether each row holds an embedding.
    #[getter]
    fn ok(&self) -> Vec<bool> {
        self.shapes.iter().map(Option::is_some).collect()
    }

    fn __repr__(&self) -> String {
        let shape = match &self.layout {
            Ok((dims, _)) => format!("{dims:?}"),
            Err(_) => "ragged".to_string(),
        };
        format!(
            "Embeddings(rows={}, shape={shape}, dtype=float32, errors={})",
            self.shapes.len(),
            self.errors.len()
        )
    }

    /// NumPy's fallback when the buffer protocol declined (rows of different shapes): raises
    /// `ValueError` saying so, rather than letting NumPy guess from the rows. With one shape it
    /// returns the array over this object's memory.
    #[pyo3(signature = (dtype=None, copy=None))]
    fn __array__<'py>(
        slf: Bound<'py, Self>,
        dtype: Option<Bound<'py, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        if let Err(why) = &slf.get().layout {
            return Err(PyValueError::new_err(why.clone()));
        }
        let numpy = py.import("numpy")?;
        let array = numpy.call_method1("asarray", (PyMemoryView::from(&slf.into_any())?,))?;
        let array = match dtype {
            Some(dtype) => array.call_method1("astype", (dtype,))?,
            None => array,
        };
        match copy {
            Some(true) => array.call_method0("copy"),
            _ => Ok(array),
        }
    }

    /// Arrow's PyCapsule interface: `(schema, array)`. `requested_schema` is not honoured
    /// (allowed by the interface); the column is float32.
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let _ = requested_schema;
        let valid = self.ok();
        let array =
            crate::arrow_io::embeddings_array(&self.values, &self.offsets, &valid, self.row_len)?;
        crate::arrow_io::export(py, &array)
    }

    /// The buffer protocol: read-only float32 (`"f"`), C-contiguous, in this object's memory.
    ///
    /// # Safety
    ///
    /// Called by Python with a valid `view`.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no view to fill"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("embeddings are read-only"));
        }
        let this = slf.get();
        let (dims, strides) = this
            .layout
            .as_ref()
            .map_err(|why| PyBufferError::new_err(why.clone()))?;
        // SAFETY: `view` is valid (Python's contract). The pointers handed out (data, shape,
        // strides, format) live in this frozen object, or are static, and `view.obj` holds a
        // reference to it until the view is released.
        unsafe {
            (*view).buf = this.values.as_ptr() as *mut c_void;
            (*view).len = this.values.len() as isize;
            (*view).readonly = 1;
            (*view).itemsize = 4;
            (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
                c"f".as_ptr() as *mut _
            } else {
                std::ptr::null_mut()
            };
            // Without PyBUF_ND the consumer asked for plain bytes: one axis, no shape.
            let nd = flags & ffi::PyBUF_ND == ffi::PyBUF_ND;
            (*view).ndim = if nd { dims.len() as c_int } else { 1 };
            (*view).shape = if nd {
                dims.as_ptr() as *mut isize
            } else {
                std::ptr::null_mut()
            };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
                strides.as_ptr() as *mut isize
            } else {
                std::ptr::null_mut()
            };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
            (*view).obj = slf.into_any().into_ptr();
        }
        Ok(())
    }
}
