//! The crate's one error type, [`ImageError`].
//!
//! Every message names where the data came from (a file path, or "in-memory image" /
//! "in-memory preprocessor config" for bytes handed over directly) and says what was expected and
//! what was found.

use std::fmt;
use std::path::PathBuf;

/// Image container formats recognised by their first bytes (never by the file extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// JPEG / JFIF / Exif (`FF D8 FF`).
    Jpeg,
    /// PNG (`89 'PNG' 0D 0A 1A 0A`).
    Png,
    /// GIF (`GIF87a` / `GIF89a`); the first frame is used.
    Gif,
    /// WebP (`RIFF....WEBP`); the first frame is used.
    WebP,
    /// Windows bitmap (`BM`).
    Bmp,
    /// TIFF (`II*\0` / `MM\0*`, also BigTIFF); the first page is used.
    Tiff,
}

impl ImageFormat {
    /// The usual name of the format.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "JPEG",
            ImageFormat::Png => "PNG",
            ImageFormat::Gif => "GIF",
            ImageFormat::WebP => "WebP",
            ImageFormat::Bmp => "BMP",
            ImageFormat::Tiff => "TIFF",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can go wrong while reading a configuration, decoding or preprocessing an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The data is empty.
    #[error("{origin}: expected image data, found an empty file")]
    Empty {
        /// Where the data came from.
        origin: String,
    },

    /// The data does not start like any supported image format.
    #[error(
        "{origin}: expected a JPEG, PNG, GIF, WebP, BMP or TIFF image (recognised by its first \
         bytes, not by the file name), found {found}"
    )]
    UnknownFormat {
        /// Where the data came from.
        origin: String,
        /// A description of the first bytes.
        found: String,
    },

    /// The header announces more pixels than [`crate::DecodeOptions::max_pixels`] (checked before
    /// anything is allocated for the pixels).
    #[error(
        "{origin}: {format} image of {width}x{height} = {pixels} pixels exceeds the limit of \
         {max_pixels} pixels (a possible decompression bomb; to accept it, raise the limit: \
         --max-pixels on the command line, DecodeOptions::max_pixels in Rust)"
    )]
    TooManyPixels {
        /// Where the data came from.
        origin: String,
        /// The container format.
        format: ImageFormat,
        /// Width from the header.
        width: u64,
        /// Height from the header.
        height: u64,
        /// width x height.
        pixels: u64,
        /// The limit in force.
        max_pixels: u64,
    },

    /// A side is longer than [`crate::DecodeOptions::max_dimension`].
    #[error(
        "{origin}: {format} image of {width}x{height} has a side longer than the limit of \
         {max_dimension} pixels (to accept it, raise the limit: --max-side on the command line, \
         DecodeOptions::max_dimension in Rust)"
    )]
    DimensionTooLarge {
        /// Where the data came from.
        origin: String,
        /// The container format.
        format: ImageFormat,
        /// Width from the header.
        width: u64,
        /// Height from the header.
        height: u64,
        /// The limit in force.
        max_dimension: u32,
    },

    /// A side is shorter than [`crate::DecodeOptions::min_dimension`].
    #[error(
        "{origin}: {format} image of {width}x{height} has a side shorter than the minimum of \
         {min_dimension} pixels (--min-side on the command line, DecodeOptions::min_dimension in \
         Rust)"
    )]
    DimensionTooSmall {
        /// Where the data came from.
        origin: String,
        /// The container format.
        format: ImageFormat,
        /// Width from the header.
        width: u64,
        /// Height from the header.
        height: u64,
        /// The minimum in force.
        min_dimension: u32,
    },

    /// The data ends before the image is complete.
    #[error("{origin}: truncated {format} file: expected more data, found the end of the file ({detail})")]
    Truncated {
        /// Where the data came from.
        origin: String,
        /// The container format.
        format: ImageFormat,
        /// What the decoder said.
        detail: String,
    },

    /// The data is not a valid image of its format.
    #[error("{origin}: corrupt {format} data: {detail}")]
    Corrupt {
        /// Where the data came from.
        origin: String,
        /// The container format.
        format: ImageFormat,
        /// What is wrong.
        detail: String,
    },

    /// A valid image of a kind this crate does not decode.
    #[error("{origin}: unsupported {format} image: {detail}")]
    Unsupported {
        /// Where the data came from.
        origin: String,
        /// The container format.
        format: ImageFormat,
        /// What is not supported.
        detail: String,
    },

    /// `preprocessor_config.json` is not valid JSON or not a JSON object.
    #[error("{origin}: expected a JSON object (preprocessor_config.json), found {found}")]
    ConfigSyntax {
        /// Where the configuration came from.
        origin: String,
        /// What the parser found.
        found: String,
    },

    /// A field of `preprocessor_config.json` has a value this crate cannot use.
    #[error("{origin}: field `{field}`: expected {expected}, found {found}")]
    ConfigField {
        /// Where the configuration came from.
        origin: String,
        /// The JSON key.
        field: String,
        /// What would be accepted.
        expected: String,
        /// The value found.
        found: String,
    },

    /// An [`crate::RgbImage`] whose buffer does not match its size.
    #[error("invalid RGB image: expected {expected}, found {found}")]
    InvalidImage {
        /// What is required.
        expected: String,
        /// What was given.
        found: String,
    },

    /// Resolution overrides that the model cannot take
    /// ([`crate::PreprocessConfig::with_resolution`]).
    #[error("{detail}")]
    Resolution {
        /// What is wrong, naming the size.
        detail: String,
    },

    /// A preprocessing step cannot be carried out for this image and configuration.
    #[error("cannot preprocess a {width}x{height} image: {detail}")]
    Preprocess {
        /// Input width.
        width: u32,
        /// Input height.
        height: u32,
        /// Which step and why.
        detail: String,
    },
}

impl ImageError {
    /// The step that failed, for error reports: `read` (the file), `decode` (the image data),
    /// `config` (the preprocessor configuration) or `preprocess`.
    pub fn stage(&self) -> &'static str {
        match self {
            ImageError::Io { .. } => "read",
            ImageError::Empty { .. }
            | ImageError::UnknownFormat { .. }
            | ImageError::TooManyPixels { .. }
            | ImageError::DimensionTooLarge { .. }
            | ImageError::DimensionTooSmall { .. }
            | ImageError::Truncated { .. }
            | ImageError::Corrupt { .. }
            | ImageError::Unsupported { .. }
            | ImageError::InvalidImage { .. } => "decode",
            ImageError::ConfigSyntax { .. }
            | ImageError::ConfigField { .. }
            | ImageError::Resolution { .. } => "config",
            ImageError::Preprocess { .. } => "preprocess",
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
