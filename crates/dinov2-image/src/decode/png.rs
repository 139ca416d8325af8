//! PNG through the `png` crate, with the raw samples converted as Pillow 13 converts the mode it
//! opens each PNG kind as (`PngImagePlugin._MODES`) to RGB:
//!
//! | PNG colour type, bit depth | Pillow mode | RGB |
//! | --- | --- | --- |
//! | grey 1/2/4/8 | `1` / `L` | grey scaled to 0..255, replicated |
//! | grey 16 | `I;16` | clipped to 0..=255 |
//! | RGB 8 / 16 | `RGB` | samples / high bytes |
//! | palette 1/2/4/8 | `P` | palette lookup (tRNS ignored) |
//! | grey+alpha 8 / 16 | `LA` / `RGBA` | grey / high byte, alpha dropped |
//! | RGBA 8 / 16 | `RGBA` | samples / high bytes, alpha dropped |
//!
//! CRCs are checked; a file that ends inside the image data is "truncated".

use std::io::Cursor;

use png::{BitDepth, ColorType, DecodingError, Transformations};

use super::{Ctx, Decoded};
use crate::convert::{clip_u16, gray_scale, packed_sample, Palette};
use crate::error::{ImageError, Result};
use crate::exif;
use crate::rgb::RgbImage;

fn map_err(ctx: &Ctx<'_>, err: DecodingError) -> ImageError {
    match err {
        DecodingError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            ctx.truncated(e.to_string())
        }
        DecodingError::IoError(e) => ctx.corrupt(e.to_string()),
        DecodingError::Format(e) => ctx.corrupt(e.to_string()),
        DecodingError::Parameter(e) => ctx.corrupt(e.to_string()),
        DecodingError::LimitsExceeded => ctx.unsupported("decoder memory limit exceeded"),
    }
}

/// The `IEND` chunk (empty, with its CRC).
const IEND: &[u8] = &[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];

pub(super) fn decode(data: &[u8], ctx: &Ctx<'_>) -> Result<Decoded> {
    match decode_inner(data, ctx) {
        // Pillow stops reading once the image data is complete, so a file that lacks only the
        // final IEND chunk opens; the `png` crate wants to see the chunk after the image data.
        Err(err @ ImageError::Truncated { .. }) if !data.ends_with(IEND) => {
            let mut patched = Vec::new();
            if patched.try_reserve_exact(data.len() + IEND.len()).is_err() {
                return Err(err);
            }
            patched.extend_from_slice(data);
            patched.extend_from_slice(IEND);
            decode_inner(&patched, ctx).map_err(|_| err)
        }
        other => other,
    }
}

fn decode_inner(data: &[u8], ctx: &Ctx<'_>) -> Result<Decoded> {
    let mut decoder = png::Decoder::new(Cursor::new(data));
    decoder.set_transformations(Transformations::IDENTITY);
    // The pixel limit below is the real guard; this only keeps the crate's own bookkeeping
    // (text chunks, ICC profiles, the output buffer) from refusing a permitted image.
    decoder.set_limits(png::Limits {
        bytes: usize::try_from(ctx.options.max_pixels.saturating_mul(8))
            .unwrap_or(usize::MAX)
            .max(64 << 20),
    });
    let mut reader = decoder.read_info().map_err(|e| map_err(ctx, e))?;
    let info = reader.info();
    let (width, height) = (info.width, info.height);
    ctx.check_size(width as u64, height as u64)?;
    let color_type = info.color_type;
    let bits: u8 = match info.bit_depth {
        BitDepth::One => 1,
        BitDepth::Two => 2,
        BitDepth::Four => 4,
        BitDepth::Eight => 8,
        BitDepth::Sixteen => 16,
    };
    let palette = info.palette.as_ref().map(|p| Palette::from_rgb_triples(p));
    let orientation = if ctx.options.apply_exif_orientation {
        info.exif_metadata
            .as_ref()
            .map_or(exif::Orientation::Normal, |e| {
                exif::orientation_from_exif(e)
            })
    } else {
        exif::Orientation::Normal
    };
    if color_type == ColorType::Indexed && palette.is_none() {
        return Err(ctx.corrupt("palette image without a PLTE chunk"));
    }

    let size = reader
        .output_buffer_size()
        .ok_or_else(|| ctx.unsupported("image too large for this machine's address space"))?;
    let mut raw = ctx.alloc(size)?;
    let frame = reader.next_frame(&mut raw).map_err(|e| map_err(ctx, e))?;
    if frame.width != width || frame.height != height {
        return Err(ctx.unsupported("first frame smaller than the image (APNG)"));
    }
    let line = frame.line_size;
    let w = width as usize;
    let rgb_bytes = ctx.rgb_len(width, height)?;
    if (color_type, bits) == (ColorType::Rgb, 8) && line == w * 3 && raw.len() >= rgb_bytes {
        // The samples are the pixels: no conversion, no second buffer.
        raw.truncate(rgb_bytes);
        let image = RgbImage {
            width,
            height,
            data: raw,
        };
        return Ok(Decoded::new(image, orientation));
    }
    let mut image = ctx.rgb(width, height)?;
    let samples: usize = match color_type {
        ColorType::Grayscale | ColorType::Indexed => 1,
        ColorType::GrayscaleAlpha => 2,
        ColorType::Rgb => 3,
        ColorType::Rgba => 4,
    };
    if line < (w * samples * bits as usize).div_ceil(8) || raw.len() < line * height as usize {
        return Err(ctx.corrupt("decoded rows shorter than the header promises"));
    }
    for (y, out_row) in image.data.chunks_exact_mut(w * 3).enumerate() {
        let row = raw
            .get(y * line..(y + 1) * line)
            .ok_or_else(|| ctx.corrupt("short image data"))?;
        convert_row(row, out_row, color_type, bits, samples, palette.as_ref());
    }
    Ok(Decoded::new(image, orientation))
}

/// One row of raw samples to RGB (the table in the module documentation).
fn convert_row(
    row: &[u8],
    out: &mut [u8],
    color_type: ColorType,
    bits: u8,
    samples: usize,
    palette: Option<&Palette>,
) {
    let pixels = out.chunks_exact_mut(3);
    match (color_type, bits) {
        (ColorType::Rgb, 8) => out.copy_from_slice(&row[..out.len()]),
        (ColorType::Indexed, _) => {
            let Some(p) = palette else { return };
            for (x, px) in pixels.enumerate() {
                let i = if bits == 8 {
                    row[x]
                } else {
                    packed_sample(row, x, bits)
                };
                px.copy_from_slice(&p.get(i));
            }
        }
        (ColorType::Grayscale, 1 | 2 | 4) => {
            for (x, px) in pixels.enumerate() {
                px.fill(packed_sample(row, x, bits) * gray_scale(bits));
            }
        }
        // I;16: clipped to 255.
        (ColorType::Grayscale, 16) => {
            for (px, s) in pixels.zip(row.chunks_exact(2)) {
                px.fill(clip_u16(u16::from_be_bytes([s[0], s[1]])));
            }
        }
        // High bytes ("LA;16B" -> RGBA, "RGB;16B", "RGBA;16B").
        (ColorType::GrayscaleAlpha, 16) => {
            for (px, s) in pixels.zip(row.chunks_exact(4)) {
                px.fill(s[0]);
            }
        }
        (_, 16) => {
            for (px, s) in pixels.zip(row.chunks_exact(samples * 2)) {
                px.copy_from_slice(&[s[0], s[2], s[4]]);
            }
        }
        (ColorType::Grayscale | ColorType::GrayscaleAlpha, _) => {
            for (px, s) in pixels.zip(row.chunks_exact(samples)) {
                px.fill(s[0]);
            }
        }
        _ => {
            for (px, s) in pixels.zip(row.chunks_exact(samples)) {
                px.copy_from_slice(&s[..3]);
            }
        }
    }
}
