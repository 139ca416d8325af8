//! Decoding image files to [`RgbImage`] with the pixels Pillow 13 produces for
//! `Image.open(f).convert("RGB")`.
//!
//! The format is recognised by the first bytes, never by the file name. Every decoder reads the
//! header first and checks [`DecodeOptions::max_pixels`] / [`DecodeOptions::max_dimension`]
//! before allocating pixel memory. JPEG goes through libjpeg (mozjpeg's, through `mozjpeg-sys`,
//! whose integer IDCT, fancy upsampling and colour conversion are those of Pillow's
//! libjpeg-turbo), only where a caller's [`Region`] needs it; PNG, GIF and TIFF through the
//! `png`, `gif` and `tiff` crates with the samples converted here as Pillow converts them; WebP
//! and BMP through the `image` crate.

mod gif;
mod jpeg;
mod other;
mod png;
mod tiff;

use std::path::Path;

use crate::config::SizeSpec;
use crate::error::{ImageError, ImageFormat, Result};
use crate::exif::{apply_orientation, Orientation};
use crate::resize::Rect;
use crate::rgb::RgbImage;

/// Pillow's `Image.MAX_IMAGE_PIXELS` times two: above this Pillow raises `DecompressionBombError`.
pub const DEFAULT_MAX_PIXELS: u64 = 2 * 89_478_485;

/// Default limit on either side of an image.
pub const DEFAULT_MAX_DIMENSION: u32 = 65_535;

/// The largest image file read, 2 GiB: a larger one is refused before any of it is read (a
/// 60000 x 60000 PNG stored without compression is 10.8 GB, past the pixel limit anyway).
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// Reads an image file's bytes, refusing one larger than [`MAX_FILE_BYTES`] before reading it.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    let fail = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(fail)?.len();
    if len > MAX_FILE_BYTES {
        return Err(fail(std::io::Error::other(format!(
            "{len} bytes, more than the limit of {MAX_FILE_BYTES} for an image file"
        ))));
    }
    std::fs::read(path).map_err(fail)
}

/// Limits and options for [`decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Refuse images with more pixels than this (checked from the header, before decoding).
    /// Default [`DEFAULT_MAX_PIXELS`] = 178,956,970, Pillow's decompression-bomb error threshold.
    pub max_pixels: u64,
    /// Refuse images with a side longer than this. Default [`DEFAULT_MAX_DIMENSION`].
    pub max_dimension: u32,
    /// Refuse images with a side shorter than this (icons, tracking pixels, thumbnails in a
    /// web crawl), checked from the header. Default 1: every image, as transformers takes them.
    pub min_dimension: u32,
    /// Rotate/flip according to the EXIF orientation tag (JPEG APP1, PNG `eXIf`, WebP `EXIF`) as
    /// Pillow's `ImageOps.exif_transpose` does. Off by default: transformers does not apply it.
    /// TIFF files are oriented by their tag whatever this says, because Pillow 13 does that when
    /// it loads a TIFF.
    pub apply_exif_orientation: bool,
    /// Decode large JPEGs at reduced scale for a resize with this size rule: at the smallest of
    /// the DCT scales 1/8, 1/4 and 1/2 that keeps the image at least twice the resize's output
    /// in each side, as Pillow's `Image.draft(None, (2 * w, 2 * h))` (what `Image.thumbnail`
    /// does). About half the decoding and resizing time of a 12-megapixel photo (the entropy
    /// decoding stays); the pixels are then Pillow's for a drafted image, not a full decode's.
    /// `None` (the default): every image in full. Other formats always decode in full.
    pub draft: Option<SizeSpec>,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_pixels: DEFAULT_MAX_PIXELS,
            max_dimension: DEFAULT_MAX_DIMENSION,
            min_dimension: 1,
            apply_exif_orientation: false,
            draft: None,
        }
    }
}

/// The container format of `bytes`, from its first bytes; `None` if it is none of the supported
/// ones.
pub fn detect_format(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some(ImageFormat::Gif)
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(ImageFormat::WebP)
    } else if bytes.starts_with(b"BM") {
        Some(ImageFormat::Bmp)
    } else if bytes.starts_with(b"II*\0")
        || bytes.starts_with(b"MM\0*")
        || bytes.starts_with(b"II+\0")
        || bytes.starts_with(b"MM\0+")
    {
        Some(ImageFormat::Tiff)
    } else {
        None
    }
}

/// Decodes an image held in memory to 8-bit RGB (see the module documentation for the rules).
pub fn decode(bytes: &[u8], options: &DecodeOptions) -> Result<RgbImage> {
    Ok(decode_from(bytes, "in-memory image", options)?.image)
}

/// Reads and decodes an image file to 8-bit RGB; errors name the file.
pub fn decode_file(path: impl AsRef<Path>, options: &DecodeOptions) -> Result<RgbImage> {
    Ok(decode_file_sized(path, options)?.image)
}

/// [`decode`], also giving the size of the full image (see [`DecodeOptions::draft`]); errors
/// name the image `origin` (a file name, an archive member).
pub fn decode_sized(bytes: &[u8], origin: &str, options: &DecodeOptions) -> Result<DecodedImage> {
    decode_from(bytes, origin, options)
}

/// [`decode_file`], also giving the size of the full image (see [`DecodeOptions::draft`]).
pub fn decode_file_sized(path: impl AsRef<Path>, options: &DecodeOptions) -> Result<DecodedImage> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    decode_from(&bytes, &path.display().to_string(), options)
}

/// Which part of a `width x height` decoded image a caller needs, or `None` for all of it: a
/// decoder may then decode only that part (JPEG does, [`jpeg`]), and return it as [`Decoded`]'s
/// `window`.
pub(crate) type Region<'a> = dyn Fn(u32, u32) -> Option<Rect> + 'a;

/// What a format decoder hands back: the RGB pixels, the EXIF orientation (1 when absent or
/// not looked for), and the `(width, height)` the file declares (the image's own unless it was
/// decoded at reduced scale, [`DecodeOptions::draft`]). `image` holds the pixels of `window` of
/// the decoded `full` (width, height): all of them unless a [`Region`] was asked for.
pub(crate) struct Decoded {
    pub image: RgbImage,
    pub orientation: Orientation,
    pub file_size: (u32, u32),
    pub window: Rect,
    pub full: (u32, u32),
}

impl Decoded {
    /// An image decoded whole, at full size.
    pub fn new(image: RgbImage, orientation: Orientation) -> Self {
        let file_size = (image.width, image.height);
        Decoded {
            window: Rect::whole(image.width, image.height),
            full: file_size,
            image,
            orientation,
            file_size,
        }
    }
}

/// A decoded image and the `(width, height)` of the image its file holds, oriented as the
/// image: larger than the image's own when it was decoded at reduced scale
/// ([`DecodeOptions::draft`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedImage {
    /// The RGB pixels.
    pub image: RgbImage,
    /// The full image's `(width, height)`.
    pub file_size: (u32, u32),
}

fn decode_from(bytes: &[u8], origin: &str, options: &DecodeOptions) -> Result<DecodedImage> {
    let decoded = decode_region(bytes, origin, options, None)?;
    Ok(DecodedImage {
        image: decoded.image,
        file_size: decoded.file_size,
    })
}

/// Decodes `bytes` (errors naming `origin`), only the part `region` asks for where the format
/// allows (see [`Region`]), and applies the EXIF orientation if `options` ask for it (the
/// `file_size` then follows the oriented image).
pub(crate) fn decode_region(
    bytes: &[u8],
    origin: &str,
    options: &DecodeOptions,
    region: Option<&Region<'_>>,
) -> Result<Decoded> {
    if bytes.is_empty() {
        return Err(ImageError::Empty {
            origin: origin.to_string(),
        });
    }
    let Some(format) = detect_format(bytes) else {
        return Err(ImageError::UnknownFormat {
            origin: origin.to_string(),
            found: describe_start(bytes),
        });
    };
    let ctx = Ctx {
        origin,
        format,
        options,
    };
    let mut decoded = match format {
        ImageFormat::Jpeg => jpeg::decode(bytes, &ctx, region)?,
        ImageFormat::Png => png::decode(bytes, &ctx)?,
        ImageFormat::Gif => gif::decode(bytes, &ctx)?,
        ImageFormat::Tiff => tiff::decode(bytes, &ctx)?,
        ImageFormat::WebP | ImageFormat::Bmp => other::decode(bytes, &ctx)?,
    };
    if options.apply_exif_orientation && decoded.orientation != Orientation::Normal {
        // Decoders decode the whole image when it is to be oriented.
        if decoded.orientation.swaps_axes() {
            let (width, height) = decoded.file_size;
            decoded.file_size = (height, width);
        }
        decoded.image = apply_orientation(decoded.image, decoded.orientation);
        decoded.window = Rect::whole(decoded.image.width, decoded.image.height);
        decoded.full = (decoded.image.width, decoded.image.height);
        decoded.orientation = Orientation::Normal;
    }
    Ok(decoded)
}

/// "text starting with ..." or the first bytes in hex, for [`ImageError::UnknownFormat`].
fn describe_start(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(32)];
    let printable = head
        .iter()
        .all(|&b| b == b'\n' || b == b'\r' || b == b'\t' || (0x20..0x7f).contains(&b));
    if printable {
        let text: String = head
            .iter()
            .map(|&b| {
                if b.is_ascii_whitespace() {
                    ' '
                } else {
                    b as char
                }
            })
            .collect();
        format!("text starting with {:?}", text.trim_end())
    } else {
        let hex: Vec<String> = head.iter().take(8).map(|b| format!("{b:02X}")).collect();
        format!("bytes {}", hex.join(" "))
    }
}

/// Where the data comes from, its format and the limits: shared by the format decoders to
/// build errors and check sizes.
pub(crate) struct Ctx<'a> {
    pub origin: &'a str,
    pub format: ImageFormat,
    pub options: &'a DecodeOptions,
}

impl Ctx<'_> {
    /// Checks the image's size from the header against the limits (before any pixel memory is
    /// allocated).
    pub fn check_size(&self, width: u64, height: u64) -> Result<()> {
        self.check_size_limit(width, height)?;
        let min_dimension = self.options.min_dimension as u64;
        if width < min_dimension || height < min_dimension {
            return Err(ImageError::DimensionTooSmall {
                origin: self.origin.to_string(),
                format: self.format,
                width,
                height,
                min_dimension: self.options.min_dimension,
            });
        }
        Ok(())
    }

    /// Checks a size from the header against the upper limits only: for a size that bounds the
    /// image from above (a GIF's logical screen, which its frame may outgrow).
    pub fn check_size_limit(&self, width: u64, height: u64) -> Result<()> {
        if width == 0 || height == 0 {
            return Err(self.corrupt(format!(
                "expected a non-empty image, found a size of {width}x{height} in the header"
            )));
        }
        let pixels = width.saturating_mul(height);
        if pixels > self.options.max_pixels {
            return Err(ImageError::TooManyPixels {
                origin: self.origin.to_string(),
                format: self.format,
                width,
                height,
                pixels,
                max_pixels: self.options.max_pixels,
            });
        }
        let max_dimension = self.options.max_dimension as u64;
        if width > max_dimension || height > max_dimension {
            return Err(ImageError::DimensionTooLarge {
                origin: self.origin.to_string(),
                format: self.format,
                width,
                height,
                max_dimension: self.options.max_dimension,
            });
        }
        Ok(())
    }

    pub fn truncated(&self, detail: impl Into<String>) -> ImageError {
        ImageError::Truncated {
            origin: self.origin.to_string(),
            format: self.format,
            detail: detail.into(),
        }
    }

    pub fn corrupt(&self, detail: impl Into<String>) -> ImageError {
        ImageError::Corrupt {
            origin: self.origin.to_string(),
            format: self.format,
            detail: detail.into(),
        }
    }

    pub fn unsupported(&self, detail: impl Into<String>) -> ImageError {
        ImageError::Unsupported {
            origin: self.origin.to_string(),
            format: self.format,
            detail: detail.into(),
        }
    }

    /// An empty buffer with room for `len` bytes, or an error instead of an allocation failure.
    pub fn reserve(&self, len: usize) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        v.try_reserve_exact(len)
            .map_err(|_| self.unsupported(format!("cannot allocate {len} bytes for the pixels")))?;
        Ok(v)
    }

    /// A zeroed buffer of `len` bytes, or an error instead of an allocation failure.
    pub fn alloc(&self, len: usize) -> Result<Vec<u8>> {
        let mut v = self.reserve(len)?;
        v.resize(len, 0);
        Ok(v)
    }

    /// The bytes of a `width x height` RGB image, or an error where they overflow.
    pub fn rgb_len(&self, width: u32, height: u32) -> Result<usize> {
        (width as usize)
            .checked_mul(height as usize)
            .and_then(|n| n.checked_mul(3))
            .ok_or_else(|| self.unsupported("image too large for this machine's address space"))
    }

    /// The RGB output buffer for a checked `width x height` image.
    pub fn rgb(&self, width: u32, height: u32) -> Result<RgbImage> {
        Ok(RgbImage {
            width,
            height,
            data: self.alloc(self.rgb_len(width, height)?)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_content() {
        assert_eq!(
            detect_format(&[0xFF, 0xD8, 0xFF, 0xE0]),
            Some(ImageFormat::Jpeg)
        );
        assert_eq!(
            detect_format(b"\x89PNG\r\n\x1a\nxxxx"),
            Some(ImageFormat::Png)
        );
        assert_eq!(detect_format(b"GIF89a.."), Some(ImageFormat::Gif));
        assert_eq!(
            detect_format(b"RIFF\0\0\0\0WEBPVP8 "),
            Some(ImageFormat::WebP)
        );
        assert_eq!(detect_format(b"RIFF\0\0\0\0WAVE"), None);
        assert_eq!(detect_format(b"BM\0\0"), Some(ImageFormat::Bmp));
        assert_eq!(detect_format(b"MM\0*\0\0\0\x08"), Some(ImageFormat::Tiff));
        assert_eq!(detect_format(b"hello"), None);
        assert_eq!(detect_format(b""), None);
    }

    #[test]
    fn describes_text_and_binary() {
        assert_eq!(
            describe_start(b"hello\nworld"),
            "text starting with \"hello world\""
        );
        assert_eq!(describe_start(&[0, 1, 2, 0xAB]), "bytes 00 01 02 AB");
    }
}
