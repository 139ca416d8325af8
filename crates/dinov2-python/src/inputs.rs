//! What `Embedder.embed` takes, read into [`Source`]s while the GIL is held: encoded bytes, paths,
//! decoded pixels (arrays, PIL images), Hugging Face's `{"bytes", "path"}` dicts, or an Arrow
//! column ([`crate::arrow_io`]).

use std::path::PathBuf;

use dinov2::image::RgbImage;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyString};

/// One image to embed, owned, so that the GIL can be released while it is decoded.
#[derive(Clone)]
pub enum Source {
    /// Encoded image bytes (JPEG, PNG, ...), with the name errors give them.
    Encoded { bytes: Vec<u8>, origin: String },
    /// An image file.
    Path(PathBuf),
    /// Decoded RGB pixels.
    Rgb(RgbImage),
    /// An input that is not an image (a null row, a pixel array of the wrong shape, a PIL image
    /// that cannot load): its error.
    Invalid(String),
}

/// The sources of `images`: an Arrow array or stream (pyarrow, polars, ...), or a sequence of
/// single images. A lone image (a `str`, `bytes`, path, pixel array or PIL image) is refused: a
/// list of one is what is meant.
pub fn sources(images: &Bound<'_, PyAny>) -> PyResult<Vec<Source>> {
    if let Some(kind) = single_image(images)? {
        return Err(PyTypeError::new_err(format!(
            "images: expected a list of images (or an Arrow column), found a single {kind}; \
             pass [image]"
        )));
    }
    if let Some(sources) = crate::arrow_io::sources(images)? {
        return Ok(sources);
    }
    let iter = images.try_iter().map_err(|_| {
        PyTypeError::new_err(format!(
            "images: expected a list of images or an Arrow column, found {}",
            type_name(images)
        ))
    })?;
    iter.enumerate()
        .map(|(index, item)| source(&item?, index))
        .collect()
}

/// What `obj` is when it is one image rather than a list of them.
fn single_image(obj: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
    if obj.is_instance_of::<PyString>()
        || obj.is_instance_of::<PyBytes>()
        || obj.is_instance_of::<PyByteArray>()
        || obj.hasattr("__fspath__")?
        || obj.is_instance_of::<PyDict>()
        || is_pil_image(obj)?
    {
        return Ok(Some(type_name(obj)));
    }
    // Pixels (H x W or H x W x 3 uint8) would otherwise be taken as H images of one row each.
    if let Ok(buffer) = PyBuffer::<u8>::get(obj) {
        if matches!(buffer.shape(), [_, _] | [_, _, _]) {
            return Ok(Some(format!(
                "{} of shape {:?}",
                type_name(obj),
                buffer.shape()
            )));
        }
    }
    Ok(None)
}

/// One item of a sequence. Errors about its type are raised (they are the caller's mistake, not
/// the data's); an image that cannot be read becomes [`Source::Invalid`].
fn source(item: &Bound<'_, PyAny>, index: usize) -> PyResult<Source> {
    if item.is_none() {
        return Ok(Source::Invalid(format!("image {index}: None")));
    }
    if item.is_instance_of::<PyString>() || item.hasattr("__fspath__")? {
        // As `os.fsencode` gives it: file names that are not UTF-8 survive.
        return Ok(Source::Path(item.extract::<PathBuf>()?));
    }
    if let Ok(bytes) = item.cast::<PyBytes>() {
        return Ok(encoded(bytes.as_bytes().to_vec(), index));
    }
    if let Ok(dict) = item.cast::<PyDict>() {
        return hugging_face_image(dict, index);
    }
    if is_pil_image(item)? {
        return Ok(pil_image(item, index)
            .unwrap_or_else(|e| Source::Invalid(format!("image {index}: {e}"))));
    }
    if let Ok(buffer) = PyBuffer::<u8>::get(item) {
        let bytes = buffer.to_vec(item.py())?;
        return Ok(match *buffer.shape() {
            [_] => encoded(bytes, index),
            [h, w] => pixels(index, w, h, bytes.iter().flat_map(|&v| [v, v, v]).collect()),
            [h, w, 3] => pixels(index, w, h, bytes),
            ref shape => Source::Invalid(format!(
                "image {index}: expected encoded bytes (1 axis) or pixels (H x W x 3 or H x W \
                 uint8), found an array of shape {shape:?}"
            )),
        });
    }
    let dtype = match item.getattr("dtype") {
        Ok(dtype) => format!(" of {dtype}"),
        Err(_) => String::new(),
    };
    Err(PyTypeError::new_err(format!(
        "image {index}: expected encoded image bytes, a path, an H x W x 3 uint8 array, a PIL \
         image or a {{\"bytes\", \"path\"}} dict, found {}{dtype}",
        type_name(item)
    )))
}

/// A Hugging Face datasets Image row as a dict: its `bytes`, else its `path`.
fn hugging_face_image(dict: &Bound<'_, PyDict>, index: usize) -> PyResult<Source> {
    if let Some(bytes) = dict.get_item("bytes")?.filter(|b| !b.is_none()) {
        return source(&bytes, index);
    }
    if let Some(path) = dict.get_item("path")?.filter(|p| !p.is_none()) {
        return source(&path, index);
    }
    let keys: Vec<String> = dict.keys().iter().map(|k| k.to_string()).collect();
    Ok(Source::Invalid(format!(
        "image {index}: a dict without \"bytes\" or \"path\" (keys {keys:?})"
    )))
}

fn encoded(bytes: Vec<u8>, index: usize) -> Source {
    Source::Encoded {
        bytes,
        origin: format!("image {index}"),
    }
}

/// Decoded pixels, `h` rows of `w` RGB triples.
fn pixels(index: usize, w: usize, h: usize, data: Vec<u8>) -> Source {
    match (u32::try_from(w), u32::try_from(h)) {
        (Ok(w), Ok(h)) => RgbImage::new(w, h, data)
            .map(Source::Rgb)
            .unwrap_or_else(|e| Source::Invalid(format!("image {index}: {e}"))),
        _ => Source::Invalid(format!("image {index}: {h} x {w} pixels is too large")),
    }
}

/// Whether `item` is a PIL image (without importing PIL: its class is `PIL.Image.Image` or a
/// subclass of it, such as `PIL.JpegImagePlugin.JpegImageFile`).
fn is_pil_image(item: &Bound<'_, PyAny>) -> PyResult<bool> {
    for class in item.get_type().mro() {
        let module: String = class.getattr("__module__")?.extract().unwrap_or_default();
        let name: String = class.getattr("__name__")?.extract().unwrap_or_default();
        if module == "PIL.Image" && name == "Image" {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A PIL image's pixels, converted to RGB by PIL itself as transformers' `convert_rgb` does.
/// PIL loads lazily: a truncated file fails here, as that image's error.
fn pil_image(item: &Bound<'_, PyAny>, index: usize) -> PyResult<Source> {
    let mode: String = item.getattr("mode")?.extract()?;
    let rgb = if mode == "RGB" {
        item.clone()
    } else {
        item.call_method1("convert", ("RGB",))?
    };
    let (w, h): (usize, usize) = rgb.getattr("size")?.extract()?;
    let data: Vec<u8> = rgb.call_method0("tobytes")?.extract()?;
    Ok(pixels(index, w, h, data))
}

/// `module.Class` of a Python object, for error messages.
pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    let class = obj.get_type();
    let module = class.module().map(|m| m.to_string()).unwrap_or_default();
    let name = class.name().map(|n| n.to_string()).unwrap_or_default();
    match module.as_str() {
        "builtins" | "" => name,
        _ => format!("{module}.{name}"),
    }
}
