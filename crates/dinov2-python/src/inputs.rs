//! What `Embedder.embed` takes, read into [`Source`]s while the GIL is held: encoded bytes, paths,
//! decoded pixels (arrays, PIL images) or an Arrow column ([`crate::arrow_io`]).

use std::path::PathBuf;

use dinov2::image::RgbImage;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString};

/// One image to embed, owned, so that the GIL can be released while it is decoded.
pub enum Source {
    /// Encoded image bytes (JPEG, PNG, ...), with the name errors give them.
    Encoded { bytes: Vec<u8>, origin: String },
    /// An image file.
    Path(PathBuf),
    /// Decoded RGB pixels.
    Rgb(RgbImage),
    /// An input that is not an image (a null row, a pixel array of the wrong shape): its error.
    Invalid(String),
}

/// The sources of `images`: an Arrow array or stream (pyarrow, polars, ...), or a sequence of
/// single images. A lone `str`, `bytes` or path is refused (a list of one is what is meant).
pub fn sources(images: &Bound<'_, PyAny>) -> PyResult<Vec<Source>> {
    if let Some(sources) = crate::arrow_io::sources(images)? {
        return Ok(sources);
    }
    if images.is_instance_of::<PyString>()
        || images.is_instance_of::<PyBytes>()
        || images.is_instance_of::<PyByteArray>()
        || images.hasattr("__fspath__")?
    {
        return Err(PyTypeError::new_err(format!(
            "images: expected a list of images (or an Arrow column), found a single {}; pass \
             [image]",
            type_name(images)
        )));
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

/// One item of a sequence. Errors about its type are raised (they are the caller's mistake, not
/// the data's); a pixel array of the wrong shape becomes [`Source::Invalid`].
fn source(item: &Bound<'_, PyAny>, index: usize) -> PyResult<Source> {
    if item.is_none() {
        return Ok(Source::Invalid(format!("image {index}: None")));
    }
    if let Ok(path) = item.cast::<PyString>() {
        return Ok(Source::Path(PathBuf::from(path.to_str()?)));
    }
    if item.hasattr("__fspath__")? {
        return Ok(Source::Path(item.extract::<PathBuf>()?));
    }
    if let Ok(bytes) = item.cast::<PyBytes>() {
        return Ok(encoded(bytes.as_bytes().to_vec(), index));
    }
    if is_pil_image(item)? {
        return pil_image(item, index);
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
        "image {index}: expected encoded image bytes, a path, an H x W x 3 uint8 array or a PIL \
         image, found {}{dtype}",
        type_name(item)
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
