//! WebP and BMP through the `image` crate. Its WebP decoder (`image-webp`, pure Rust) gives
//! libwebp's pixels on the lossy, lossless and alpha fixtures, including libwebp's "fancy"
//! chroma upsampling; its BMP decoder expands palettes and bit fields. Alpha is dropped, not
//! composited, as in Pillow's `convert("RGB")`; the first frame of an animated WebP is used.

use std::io::Cursor;

use image::codecs::bmp::BmpDecoder;
use image::codecs::webp::WebPDecoder;
use image::error::ImageError as CrateError;
use image::{ColorType, ImageDecoder, Limits};

use super::{Ctx, Decoded};
use crate::error::{ImageError, ImageFormat, Result};
use crate::exif::{orientation_from_exif, Orientation};

fn map_err(ctx: &Ctx<'_>, err: CrateError) -> ImageError {
    let text = err.to_string();
    match err {
        CrateError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            ctx.truncated(e.to_string())
        }
        CrateError::Unsupported(_) => ctx.unsupported(text),
        CrateError::Limits(_) => ctx.unsupported(text),
        _ if text.contains("end of file") || text.contains("EOF") || text.contains("truncated") => {
            ctx.truncated(text)
        }
        _ => ctx.corrupt(text),
    }
}

pub(super) fn decode(data: &[u8], ctx: &Ctx<'_>) -> Result<Decoded> {
    decode_inner(data, ctx).map_err(|err| match err {
        // The RIFF header says how long a WebP file is: a decoding failure in a file shorter
        // than that is a truncation, whatever the bitstream decoder called it.
        ImageError::Corrupt { detail, .. } if ctx.format == ImageFormat::WebP && riff_cut(data) => {
            ctx.truncated(detail)
        }
        other => other,
    })
}

/// Whether a RIFF file is shorter than its header declares.
fn riff_cut(data: &[u8]) -> bool {
    data.get(4..8).is_some_and(|b| {
        let declared = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64 + 8;
        (data.len() as u64) < declared
    })
}

fn decode_inner(data: &[u8], ctx: &Ctx<'_>) -> Result<Decoded> {
    match ctx.format {
        ImageFormat::WebP => {
            let mut decoder = WebPDecoder::new(Cursor::new(data)).map_err(|e| map_err(ctx, e))?;
            let orientation = if ctx.options.apply_exif_orientation {
                decoder
                    .exif_metadata()
                    .ok()
                    .flatten()
                    .map_or(Orientation::Normal, |e| orientation_from_exif(&e))
            } else {
                Orientation::Normal
            };
            finish(decoder, ctx, orientation)
        }
        _ => {
            let decoder = BmpDecoder::new(Cursor::new(data)).map_err(|e| map_err(ctx, e))?;
            finish(decoder, ctx, Orientation::Normal)
        }
    }
}

fn finish(
    mut decoder: impl ImageDecoder,
    ctx: &Ctx<'_>,
    orientation: Orientation,
) -> Result<Decoded> {
    let (width, height) = decoder.dimensions();
    ctx.check_size(width as u64, height as u64)?;
    let mut limits = Limits::no_limits();
    limits.max_image_width = Some(ctx.options.max_dimension);
    limits.max_image_height = Some(ctx.options.max_dimension);
    decoder.set_limits(limits).map_err(|e| map_err(ctx, e))?;
    let color = decoder.color_type();
    let channels: usize = match color {
        ColorType::L8 => 1,
        ColorType::La8 => 2,
        ColorType::Rgb8 => 3,
        ColorType::Rgba8 => 4,
        other => return Err(ctx.unsupported(format!("colour type {other:?}"))),
    };
    let total = usize::try_from(decoder.total_bytes())
        .map_err(|_| ctx.unsupported("image too large for this machine's address space"))?;
    if total != width as usize * height as usize * channels {
        return Err(ctx.corrupt("decoder buffer size differs from the header"));
    }
    let mut image = ctx.rgb(width, height)?;
    if channels == 3 {
        decoder
            .read_image(&mut image.data)
            .map_err(|e| map_err(ctx, e))?;
    } else {
        let mut buf = ctx.alloc(total)?;
        decoder.read_image(&mut buf).map_err(|e| map_err(ctx, e))?;
        for (p, out) in buf
            .chunks_exact(channels)
            .zip(image.data.chunks_exact_mut(3))
        {
            let rgb = if channels <= 2 {
                [p[0]; 3]
            } else {
                [p[0], p[1], p[2]]
            };
            out.copy_from_slice(&rgb);
        }
    }
    Ok(Decoded::new(image, orientation))
}
