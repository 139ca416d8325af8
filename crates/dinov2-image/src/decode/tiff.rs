//! TIFF (first page) through the `tiff` crate (uncompressed, LZW, Deflate, PackBits, CCITT
//! fax), with the samples converted as Pillow 13 converts the mode it opens each kind as
//! (`TiffImagePlugin.OPEN_INFO`) to RGB:
//!
//! * grey 1/2/4/8 bits: scaled to 0..255 and replicated (`WhiteIsZero` is inverted by the
//!   decoder, as Pillow's `;I` raw modes do); grey 16 bits (`I;16`) and signed 16 bits (`I`):
//!   clipped to 0..=255;
//! * RGB / RGBA (8 or 16 bits): the samples, or their high bytes; alpha dropped;
//! * CMYK (8 or 16 bits, high byte): Pillow's CMYK to RGB conversion (not inverted);
//! * grey + alpha: grey.
//!
//! The orientation tag is always applied, as Pillow 13 does when it loads a TIFF.
//!
//! JPEG-compressed, palette (`RGBPalette`: the `tiff` crate refuses it), planar,
//! floating-point and other TIFF kinds are refused as unsupported.

use std::io::Cursor;

use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::tags::Tag;
use tiff::{ColorType, TiffError};

use super::{Ctx, Decoded};
use crate::convert::{clip_i64, clip_u16, cmyk_to_rgb, gray_scale, packed_sample};
use crate::error::{ImageError, Result};
use crate::exif::Orientation;

fn map_err(ctx: &Ctx<'_>, err: TiffError) -> ImageError {
    match err {
        TiffError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            ctx.truncated(e.to_string())
        }
        TiffError::UnsupportedError(e) => ctx.unsupported(e.to_string()),
        TiffError::LimitsExceeded => ctx.unsupported("decoder limits exceeded"),
        other => ctx.corrupt(other.to_string()),
    }
}

pub(super) fn decode(data: &[u8], ctx: &Ctx<'_>) -> Result<Decoded> {
    let mut decoder = Decoder::new(Cursor::new(data)).map_err(|e| map_err(ctx, e))?;
    let (width, height) = decoder.dimensions().map_err(|e| map_err(ctx, e))?;
    ctx.check_size(width as u64, height as u64)?;
    // The pixel limit is checked above; let the decoder allocate what such an image needs.
    let mut limits = Limits::default();
    let needed = (width as usize)
        .saturating_mul(height as usize)
        .saturating_mul(16);
    limits.decoding_buffer_size = limits.decoding_buffer_size.max(needed);
    limits.intermediate_buffer_size = limits.intermediate_buffer_size.max(needed);
    let mut decoder = decoder.with_limits(limits);

    let color = decoder.colortype().map_err(|e| map_err(ctx, e))?;
    let planar: u16 = decoder
        .find_tag_unsigned(Tag::PlanarConfiguration)
        .map_err(|e| map_err(ctx, e))?
        .unwrap_or(1);
    // Pillow 13 applies a TIFF's orientation tag when it loads the file (`load_end` calls
    // `ImageOps.exif_transpose`), whatever the caller asks for.
    let orientation = decoder
        .find_tag_unsigned::<u32>(Tag::Orientation)
        .ok()
        .flatten()
        .map_or(Orientation::Normal, Orientation::from_tag);
    let (samples, bits) = match color {
        ColorType::Gray(b) => (1, b),
        ColorType::GrayA(b) => (2, b),
        // Grey with an extra (alpha) sample: the crate reports it as two bands.
        ColorType::Multiband {
            bit_depth: 8,
            num_samples: 2,
        } => (2, 8),
        ColorType::RGB(b) => (3, b),
        ColorType::RGBA(b) | ColorType::CMYK(b) => (4, b),
        other => return Err(ctx.unsupported(format!("colour type {other:?}"))),
    };
    if planar != 1 && samples > 1 {
        return Err(ctx.unsupported("planar (separate) sample layout"));
    }
    let result = decoder.read_image().map_err(|e| map_err(ctx, e))?;
    let mut image = ctx.rgb(width, height)?;
    let (w, h) = (width as usize, height as usize);
    let short = || ctx.corrupt("decoded data shorter than the header promises");
    match (&result, bits) {
        (DecodingResult::U8(buf), 1 | 2 | 4) if samples == 1 => {
            let stride = (w * bits as usize).div_ceil(8);
            if buf.len() < stride * h {
                return Err(short());
            }
            for (row, out_row) in buf
                .chunks_exact(stride)
                .zip(image.data.chunks_exact_mut(w * 3))
            {
                for (x, out) in out_row.chunks_exact_mut(3).enumerate() {
                    let v = packed_sample(row, x, bits) * gray_scale(bits);
                    out.copy_from_slice(&[v; 3]);
                }
            }
        }
        (DecodingResult::U8(buf), 8) => {
            if buf.len() < w * h * samples {
                return Err(short());
            }
            for (p, out) in buf
                .chunks_exact(samples)
                .zip(image.data.chunks_exact_mut(3))
            {
                let rgb = match color {
                    ColorType::Gray(_) | ColorType::GrayA(_) | ColorType::Multiband { .. } => {
                        [p[0]; 3]
                    }
                    ColorType::CMYK(_) => cmyk_to_rgb(p[0], p[1], p[2], p[3]),
                    _ => [p[0], p[1], p[2]],
                };
                out.copy_from_slice(&rgb);
            }
        }
        (DecodingResult::U16(buf), 16) => {
            if buf.len() < w * h * samples {
                return Err(short());
            }
            for (p, out) in buf
                .chunks_exact(samples)
                .zip(image.data.chunks_exact_mut(3))
            {
                let hi = |v: u16| (v >> 8) as u8;
                let rgb = match color {
                    ColorType::Gray(_) => [clip_u16(p[0]); 3],
                    ColorType::GrayA(_) => [hi(p[0]); 3],
                    ColorType::CMYK(_) => cmyk_to_rgb(hi(p[0]), hi(p[1]), hi(p[2]), hi(p[3])),
                    ColorType::RGB(_) | ColorType::RGBA(_) => [hi(p[0]), hi(p[1]), hi(p[2])],
                    _ => return Err(ctx.unsupported(format!("16-bit {color:?}"))),
                };
                out.copy_from_slice(&rgb);
            }
        }
        (DecodingResult::I16(buf), 16) if samples == 1 => {
            if buf.len() < w * h {
                return Err(short());
            }
            for (&v, out) in buf.iter().zip(image.data.chunks_exact_mut(3)) {
                out.copy_from_slice(&[clip_i64(v as i64); 3]);
            }
        }
        _ => {
            return Err(ctx.unsupported(format!(
                "{bits}-bit {color:?} samples of this sample format"
            )))
        }
    }
    Ok(Decoded::new(
        crate::exif::apply_orientation(image, orientation),
        Orientation::Normal,
    ))
}
