//! What `Embedder.embed` returns: `Embeddings`, float32 rows in one buffer, read without a copy
//! by NumPy (the buffer protocol) and Arrow (the PyCapsule interface); and `Embedding`, one of
//! its rows (`e[i]`), with its shape, patch grid, image size and region, or its error.

use std::ffi::{c_int, c_void};

use arrow_buffer::Buffer;
use pyo3::exceptions::{PyBufferError, PyIndexError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyMemoryView, PySlice, PyTuple};

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

/// What is known of one row besides its values.
#[derive(Clone)]
struct Meta {
    /// Its shape; `None` for a failed image.
    shape: Option<Vec<usize>>,
    grid: Option<(usize, usize)>,
    size: Option<(u32, u32)>,
    region: Option<[f64; 4]>,
    error: Option<String>,
}

/// A C-contiguous float32 layout: the shape, and the strides in bytes.
type Layout = (Vec<isize>, Vec<isize>);

/// The layout of `rows` rows of `shape` (no row axis when `rows` is `None`).
fn layout(rows: Option<usize>, shape: &[usize]) -> Layout {
    let dims: Vec<isize> = rows
        .into_iter()
        .chain(shape.iter().copied())
        .map(|d| d as isize)
        .collect();
    let mut strides = vec![4isize; dims.len()];
    for k in (0..dims.len().saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * dims[k + 1];
    }
    (dims, strides)
}

/// Float32 embeddings of a list of images, in input order.
///
/// `numpy.asarray(e)` is an `(N, ...)` array over this object's memory (no copy) when every row
/// has one shape: `(N, D)` for a vector pooling, `(N, R, D)` for the registers, `(N, gh, gw, D)`
/// for the patch grid, `(N, T, D)` for every token; the rows of failed images are NaN.
/// `pyarrow.array(e)` is a `fixed_size_list<float>` column (`large_list<float>` when the rows
/// differ in size; `list<float>` when asked), rows flattened, failed images null. `e[i]` is row
/// `i` (an `Embedding`), `e[a:b]` the rows `a` to `b` (sharing the memory).
#[pyclass(frozen, module = "dinov2_rs", sequence)]
pub struct Embeddings {
    /// Every row's values, one after the other (f32).
    values: Buffer,
    /// Row `i` is `values[offsets[i]..offsets[i + 1]]` (in floats).
    offsets: Vec<usize>,
    meta: Vec<Meta>,
    /// The shape of every row (failed rows NaN in it), when they share one; else why not.
    common: Result<Vec<usize>, String>,
}

/// One row of an `Embeddings`: `numpy.asarray(row)` has the row's shape (NaN for a failed
/// image, when the others share a shape).
#[pyclass(frozen, module = "dinov2_rs")]
pub struct Embedding {
    values: Buffer,
    meta: Meta,
    /// The buffer's layout, or why there is none (a failed image of unknown shape).
    layout: Result<Layout, String>,
}

impl Embeddings {
    /// Gathers `rows`; a failed row is filled with NaN in the shape of the others when they
    /// share one (`fallback` when none succeeded: the shape known without an image).
    pub fn new(rows: Vec<Result<Row, String>>, fallback: Option<Vec<usize>>) -> Self {
        let mut shapes = rows
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|r| &r.shape));
        let common = match shapes.next() {
            Some(first) if shapes.all(|s| s == first) => Ok(first.clone()),
            Some(_) => Err(
                "the rows have different shapes (images of different patch grids): \
                            read them one at a time (e[i]), or as an Arrow list column \
                            (pyarrow.array(e))"
                    .to_string(),
            ),
            None => fallback.ok_or_else(|| {
                "no image was embedded, and without a fixed crop the shape of their rows is not \
                 known"
                    .to_string()
            }),
        };
        let mut values = Vec::new();
        let mut offsets = vec![0];
        let mut meta = Vec::with_capacity(rows.len());
        for row in rows {
            meta.push(match row {
                Ok(row) => {
                    values.extend_from_slice(&row.values);
                    Meta {
                        shape: Some(row.shape),
                        grid: row.grid,
                        size: Some(row.size),
                        region: Some(row.region),
                        error: None,
                    }
                }
                Err(message) => {
                    if let Ok(shape) = &common {
                        values.resize(values.len() + shape.iter().product::<usize>(), f32::NAN);
                    }
                    Meta {
                        shape: None,
                        grid: None,
                        size: None,
                        region: None,
                        error: Some(message),
                    }
                }
            });
            offsets.push(values.len());
        }
        Embeddings {
            values: Buffer::from_vec(values),
            offsets,
            meta,
            common,
        }
    }

    /// Rows `indices` (in order), sharing the memory when they are consecutive.
    fn rows(&self, indices: &[usize]) -> Self {
        let consecutive = indices.windows(2).all(|w| w[1] == w[0] + 1);
        let (values, offsets) = match (consecutive, indices.first(), indices.last()) {
            (true, Some(&a), Some(&b)) => {
                let start = self.offsets[a];
                let end = self.offsets[b + 1];
                let offsets = self.offsets[a..=b + 1].iter().map(|o| o - start).collect();
                (
                    self.values.slice_with_length(start * 4, (end - start) * 4),
                    offsets,
                )
            }
            _ => {
                let all: &[f32] = self.values.typed_data();
                let mut values = Vec::new();
                let mut offsets = vec![0];
                for &i in indices {
                    values.extend_from_slice(&all[self.offsets[i]..self.offsets[i + 1]]);
                    offsets.push(values.len());
                }
                (Buffer::from_vec(values), offsets)
            }
        };
        Embeddings {
            values,
            offsets,
            meta: indices.iter().map(|&i| self.meta[i].clone()).collect(),
            common: self.common.clone(),
        }
    }

    /// The layout of all rows, when they share a shape.
    fn layout(&self) -> Result<Layout, String> {
        self.common
            .as_ref()
            .map(|shape| layout(Some(self.meta.len()), shape))
            .map_err(Clone::clone)
    }
}

#[pymethods]
impl Embeddings {
    /// The number of rows (images).
    fn __len__(&self) -> usize {
        self.meta.len()
    }

    /// `e[i]`: row `i` (negative counts from the end) as an `Embedding`; `e[a:b:s]`: those
    /// rows as `Embeddings`. Both share the memory where they can.
    fn __getitem__<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> PyResult<Py<PyAny>> {
        let n = self.meta.len();
        if let Ok(slice) = key.cast::<PySlice>() {
            let ix = slice.indices(n as isize)?;
            let indices: Vec<usize> = (0..ix.slicelength)
                .map(|k| (ix.start + k as isize * ix.step) as usize)
                .collect();
            return Ok(Py::new(py, self.rows(&indices))?.into_any());
        }
        let i: isize = key.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "embeddings are indexed by an integer or a slice, not {}",
                crate::inputs::type_name(key)
            ))
        })?;
        let j = if i < 0 { i + n as isize } else { i };
        if !(0..n as isize).contains(&j) {
            return Err(PyIndexError::new_err(format!(
                "row {i} of {n} embeddings: out of range"
            )));
        }
        let j = j as usize;
        let (start, end) = (self.offsets[j], self.offsets[j + 1]);
        let meta = self.meta[j].clone();
        let layout = match (&meta.shape, &self.common) {
            (Some(s), _) | (None, Ok(s)) => Ok(layout(None, s)),
            (None, Err(_)) => Err(format!(
                "row {j} is a failed image: {}",
                meta.error.as_deref().unwrap_or("")
            )),
        };
        let row = Embedding {
            values: self.values.slice_with_length(start * 4, (end - start) * 4),
            meta,
            layout,
        };
        Ok(Py::new(py, row)?.into_any())
    }

    /// The array shape `(N, ...)`, or `None` when the rows differ.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.layout()
            .ok()
            .map(|(dims, _)| PyTuple::new(py, dims))
            .transpose()
    }

    /// Each row's shape, `None` for a failed image.
    #[getter]
    fn shapes(&self) -> Vec<Option<Vec<usize>>> {
        self.meta.iter().map(|m| m.shape.clone()).collect()
    }

    /// Each row's patch grid `(rows, columns)` for the patch and token poolings, else `None`.
    #[getter]
    fn grids(&self) -> Vec<Option<(usize, usize)>> {
        self.meta.iter().map(|m| m.grid).collect()
    }

    /// Each image's `(width, height)` (a file's own, before any resize), `None` for a failed
    /// one.
    #[getter]
    fn sizes(&self) -> Vec<Option<(u32, u32)>> {
        self.meta.iter().map(|m| m.size).collect()
    }

    /// The part of each image its patch grid covers, `(x0, y0, x1, y1)` in the image's pixels
    /// (past its edges where a crop pads it): patch `(i, j)` of a `gh x gw` grid spans
    /// `x0 + (x1 - x0) * j / gw` to `x0 + (x1 - x0) * (j + 1) / gw` across, likewise down.
    /// `None` for a failed image.
    #[getter]
    fn regions(&self) -> Vec<Option<(f64, f64, f64, f64)>> {
        self.meta
            .iter()
            .map(|m| m.region.map(|[x0, y0, x1, y1]| (x0, y0, x1, y1)))
            .collect()
    }

    /// `(row, message)` of each image that failed (read, decode or model), with
    /// `on_error="null"`.
    #[getter]
    fn errors(&self) -> Vec<(usize, String)> {
        (self.meta.iter().enumerate())
            .filter_map(|(i, m)| m.error.clone().map(|e| (i, e)))
            .collect()
    }

    /// Whether each row holds an embedding.
    #[getter]
    fn ok(&self) -> Vec<bool> {
        self.meta.iter().map(|m| m.error.is_none()).collect()
    }

    fn __repr__(&self) -> String {
        let shape = match self.layout() {
            Ok((dims, _)) => format!("{dims:?}"),
            Err(_) => "ragged".to_string(),
        };
        let failed = self.meta.iter().filter(|m| m.error.is_some()).count();
        format!(
            "Embeddings(rows={}, shape={shape}, dtype=float32, errors={failed})",
            self.meta.len()
        )
    }

    /// NumPy's fallback when the buffer protocol declined (rows of different shapes): raises
    /// `ValueError` saying so, rather than letting NumPy guess from the rows.
    #[pyo3(signature = (dtype=None, copy=None))]
    fn __array__<'py>(
        slf: Bound<'py, Self>,
        dtype: Option<Bound<'py, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let layout = slf.get().layout();
        as_array(slf.into_any(), layout, dtype, copy)
    }

    /// Arrow's PyCapsule interface: `(schema, array)`, float32 rows. A `requested_schema` of
    /// `list<float>`, `large_list<float>` or `fixed_size_list<float>[D]` is honoured; other
    /// requests get the default type (the interface allows that).
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let valid = self.ok();
        let row_len = self.common.as_ref().ok().map(|s| s.iter().product());
        let array = crate::arrow_io::embeddings_array(
            &self.values,
            &self.offsets,
            &valid,
            row_len,
            requested_schema.as_ref(),
        )?;
        crate::arrow_io::export(py, &array)
    }

    /// The buffer protocol: read-only float32 (`"f"`), C-contiguous, `(N, ...)`.
    ///
    /// # Safety
    ///
    /// Called by Python with a valid `view`.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let (values, layout) = (slf.get().values.clone(), slf.get().layout());
        // SAFETY: `view` is valid (the caller's contract); see `fill_view`.
        unsafe { fill_view(view, flags, values, layout, slf.into_any()) }
    }

    unsafe fn __releasebuffer__(&self, view: *mut ffi::Py_buffer) {
        // SAFETY: `view` was filled by `__getbuffer__`, which gave it `internal`.
        unsafe { release_view(view) }
    }
}

#[pymethods]
impl Embedding {
    /// The row's shape, `None` for a failed image.
    #[getter]
    fn shape(&self) -> Option<Vec<usize>> {
        self.meta.shape.clone()
    }

    /// The patch grid `(rows, columns)` for the patch and token poolings, else `None`.
    #[getter]
    fn grid(&self) -> Option<(usize, usize)> {
        self.meta.grid
    }

    /// The image's `(width, height)`, `None` for a failed image.
    #[getter]
    fn size(&self) -> Option<(u32, u32)> {
        self.meta.size
    }

    /// The part of the image its patch grid covers, `(x0, y0, x1, y1)`, `None` for a failed
    /// image.
    #[getter]
    fn region(&self) -> Option<(f64, f64, f64, f64)> {
        self.meta.region.map(|[x0, y0, x1, y1]| (x0, y0, x1, y1))
    }

    /// Why the image failed, `None` when it did not.
    #[getter]
    fn error(&self) -> Option<String> {
        self.meta.error.clone()
    }

    /// Whether the row holds an embedding.
    #[getter]
    fn ok(&self) -> bool {
        self.meta.error.is_none()
    }

    fn __repr__(&self) -> String {
        match (&self.meta.error, &self.meta.shape) {
            (Some(e), _) => format!("Embedding(error={e:?})"),
            (None, Some(shape)) => format!("Embedding(shape={shape:?}, dtype=float32)"),
            (None, None) => "Embedding()".to_string(),
        }
    }

    /// The row as a NumPy array, over this object's memory.
    #[pyo3(signature = (dtype=None, copy=None))]
    fn __array__<'py>(
        slf: Bound<'py, Self>,
        dtype: Option<Bound<'py, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let layout = slf.get().layout.clone();
        as_array(slf.into_any(), layout, dtype, copy)
    }

    /// The buffer protocol: read-only float32, C-contiguous, in the row's shape.
    ///
    /// # Safety
    ///
    /// Called by Python with a valid `view`.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let (values, layout) = (slf.get().values.clone(), slf.get().layout.clone());
        // SAFETY: `view` is valid (the caller's contract); see `fill_view`.
        unsafe { fill_view(view, flags, values, layout, slf.into_any()) }
    }

    unsafe fn __releasebuffer__(&self, view: *mut ffi::Py_buffer) {
        // SAFETY: `view` was filled by `__getbuffer__`, which gave it `internal`.
        unsafe { release_view(view) }
    }
}

/// `numpy.asarray` of `owner` (through its buffer), or `ValueError` with why it has no layout.
fn as_array<'py>(
    owner: Bound<'py, PyAny>,
    layout: Result<Layout, String>,
    dtype: Option<Bound<'py, PyAny>>,
    copy: Option<bool>,
) -> PyResult<Bound<'py, PyAny>> {
    layout.map_err(PyValueError::new_err)?;
    let numpy = owner.py().import("numpy")?;
    let array = numpy.call_method1("asarray", (PyMemoryView::from(&owner)?,))?;
    let array = match dtype {
        Some(dtype) => array.call_method1("astype", (dtype,))?,
        None => array,
    };
    match copy {
        Some(true) => array.call_method0("copy"),
        _ => Ok(array),
    }
}

/// Fills `view` over `values` (read-only float32, C order, `layout`, or a `BufferError` with
/// why there is none), memory that `owner` holds. The shape and strides live in a box that
/// `view.internal` holds until [`release_view`].
///
/// # Safety
///
/// `view` must be a valid `Py_buffer` to fill, and `values` must share `owner`'s memory.
unsafe fn fill_view(
    view: *mut ffi::Py_buffer,
    flags: c_int,
    values: Buffer,
    layout: Result<Layout, String>,
    owner: Bound<'_, PyAny>,
) -> PyResult<()> {
    let (dims, strides) = layout.map_err(PyBufferError::new_err)?;
    if view.is_null() {
        return Err(PyBufferError::new_err("no view to fill"));
    }
    if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
        return Err(PyBufferError::new_err("embeddings are read-only"));
    }
    // C order is Fortran order only when at most one axis is longer than 1.
    if flags & ffi::PyBUF_F_CONTIGUOUS == ffi::PyBUF_F_CONTIGUOUS
        && dims.iter().filter(|&&d| d > 1).count() > 1
    {
        return Err(PyBufferError::new_err(
            "embeddings are C-contiguous, not Fortran-contiguous",
        ));
    }
    let nd = flags & ffi::PyBUF_ND == ffi::PyBUF_ND;
    let mut layout = Box::new((dims, strides));
    // SAFETY: `view` is valid (the caller's contract). The data pointer lives in `owner`, which
    // `view.obj` keeps alive; shape and strides in `layout`, leaked into `view.internal` until
    // `release_view`; the format is static.
    unsafe {
        (*view).buf = values.as_ptr() as *mut c_void;
        (*view).len = values.len() as isize;
        (*view).readonly = 1;
        (*view).itemsize = 4;
        (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
            c"f".as_ptr() as *mut _
        } else {
            std::ptr::null_mut()
        };
        // Without PyBUF_ND the consumer asked for plain bytes: one axis, no shape.
        (*view).ndim = if nd { layout.0.len() as c_int } else { 1 };
        (*view).shape = if nd {
            layout.0.as_mut_ptr()
        } else {
            std::ptr::null_mut()
        };
        (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
            layout.1.as_mut_ptr()
        } else {
            std::ptr::null_mut()
        };
        (*view).suboffsets = std::ptr::null_mut();
        (*view).internal = Box::into_raw(layout).cast();
        (*view).obj = owner.into_ptr();
    }
    Ok(())
}

/// Frees what [`fill_view`] put in `view.internal`.
///
/// # Safety
///
/// `view` must have been filled by [`fill_view`] and not released before.
unsafe fn release_view(view: *mut ffi::Py_buffer) {
    // SAFETY: `internal` is the box `fill_view` leaked (the caller's contract).
    unsafe {
        let internal = (*view).internal;
        if !internal.is_null() {
            drop(Box::from_raw(internal.cast::<Layout>()));
            (*view).internal = std::ptr::null_mut();
        }
    }
}
