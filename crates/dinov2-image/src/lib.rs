//! Image decoding and DINOv2 preprocessing with Hugging Face transformers parity.
//!
//! The reference is transformers 5.17.0's `BitImageProcessorPil` (the PIL backend of the
//! processor every facebook/dinov2-* checkpoint names) with Pillow 13: the decoded RGB pixels,
//! the resized 8-bit image and the float32 `pixel_values` are reproduced bit for bit (the tests
//! compare against fixtures written by `xtask/golden/make_preprocess.py`).
//!
//! ```no_run
//! use dinov2_image::{load_and_preprocess, DecodeOptions, PreprocessConfig};
//!
//! let config = PreprocessConfig::from_file("model/preprocessor_config.json")?;
//! let (pixels, (width, height)) =
//!     load_and_preprocess("cat.jpg", &DecodeOptions::default(), &config)?;
//! assert_eq!(pixels.shape, [3, 224, 224]);
//! # let _ = (width, height);
//! # Ok::<(), dinov2_image::ImageError>(())
//! ```
//!
//! Steps, each public on its own: [`decode`] / [`decode_file`] (bytes to [`RgbImage`], as
//! Pillow's `Image.open(...).convert("RGB")`), [`resize_output_size`] and [`resize`] (Pillow's
//! `Image.resize`), [`center_crop`], and [`preprocess`] for the whole pipeline;
//! [`decode_and_preprocess`] does both, decoding a JPEG only where the crop needs it.

/// The pseudo-random sequence the unit tests draw pixels and sizes from: each call gives the
/// next state of a linear congruential generator started at `seed`.
#[cfg(test)]
fn test_sequence(seed: u32) -> impl FnMut() -> u32 {
    let mut state = seed;
    move || {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
        state
    }
}

mod config;
mod convert;
mod decode;
mod error;
mod exif;
mod preprocess;
mod resize;
mod rgb;

use std::path::Path;

pub use config::{
    HeightWidth, PreprocessConfig, Resample, Resolution, SizeSpec, IMAGENET_MEAN, IMAGENET_STD,
    OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
};
pub use decode::{
    decode, decode_file, decode_file_sized, decode_sized, detect_format, read_file, DecodeOptions,
    DecodedImage, DEFAULT_MAX_DIMENSION, DEFAULT_MAX_PIXELS, MAX_FILE_BYTES,
};
pub use error::{ImageError, ImageFormat, Result};
pub use exif::Orientation;
pub use preprocess::{
    center_crop, fixed_grid, grid_region, preprocess, resize_output_size, PixelValues,
    MAX_RESIZED_PIXELS,
};
pub use resize::{resize, resize_part, Rect};

pub use rgb::RgbImage;

/// Reads, decodes and preprocesses one image file ([`decode_and_preprocess`]). Returns the
/// `pixel_values` and the size `(width, height)` of the image in the file (after the EXIF
/// rotation, when that is enabled; the full size also when it was decoded at reduced scale,
/// [`DecodeOptions::draft`]).
pub fn load_and_preprocess(
    path: impl AsRef<Path>,
    decode_options: &DecodeOptions,
    config: &PreprocessConfig,
) -> Result<(PixelValues, (u32, u32))> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    let origin = path.display().to_string();
    decode_and_preprocess(&bytes, &origin, decode_options, config).map_err(|e| match e {
        ImageError::Preprocess {
            width,
            height,
            detail,
        } => ImageError::Preprocess {
            width,
            height,
            detail: format!("{} ({})", detail, path.display()),
        },
        other => other,
    })
}

/// Decodes encoded image `bytes` (errors naming `origin`) and preprocesses them with `config`:
/// the `pixel_values` and the size `(width, height)` of the image in the file, as
/// [`load_and_preprocess`] gives them.
///
/// The same values as [`preprocess`] of [`decode_sized`]'s image, with less work: a JPEG under a
/// resize and a center crop is decoded only where the crop's pixels come from (with a margin;
/// libjpeg skips the inverse DCT, upsampling and colour conversion of the rest).
pub fn decode_and_preprocess(
    bytes: &[u8],
    origin: &str,
    decode_options: &DecodeOptions,
    config: &PreprocessConfig,
) -> Result<(PixelValues, (u32, u32))> {
    let region = |width, height| preprocess::needed_region(width, height, config);
    let decoded = decode::decode_region(bytes, origin, decode_options, Some(&region))?;
    let (full_width, full_height) = decoded.full;
    let window = resize::Window {
        image: &decoded.image,
        rect: decoded.window,
        full_width,
        full_height,
    };
    let values = preprocess::preprocess_window(window, config)?;
    Ok((values, decoded.file_size))
}
