//! GIF (first frame) through the `gif` crate's indexed output, composed as Pillow 13's
//! `GifImagePlugin` does for frame 0:
//!
//! * the canvas is the logical screen, grown to hold the frame if the frame sticks out;
//! * pixels outside the frame hold the frame's transparent index if it has one, else index 0;
//! * the palette is the frame's local table, else the global one; a table that is the identity
//!   grey ramp makes Pillow open the image as `L`: the index is the grey value;
//! * otherwise `convert("RGB")` is a palette lookup (black past the end of the table): the
//!   transparent index keeps its palette colour.

use std::io::Cursor;

use gif::{ColorOutput, DecodeOptions, DecodingError, MemoryLimit};

use super::{Ctx, Decoded};
use crate::convert::Palette;
use crate::error::{ImageError, Result};
use crate::exif::Orientation;

fn map_err(ctx: &Ctx<'_>, err: DecodingError) -> ImageError {
    let text = err.to_string();
    match err {
        DecodingError::UnexpectedEof => ctx.truncated(text),
        DecodingError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            ctx.truncated(e.to_string())
        }
        DecodingError::Format(_) if text.contains("truncated") => ctx.truncated(text),
        DecodingError::OutOfMemory | DecodingError::MemoryLimit => ctx.unsupported(text),
        _ => ctx.corrupt(text),
    }
}

pub(super) fn decode(data: &[u8], ctx: &Ctx<'_>) -> Result<Decoded> {
    let mut options = DecodeOptions::new();
    options.set_color_output(ColorOutput::Indexed);
    options.set_memory_limit(MemoryLimit::Unlimited); // the pixel limits are checked here
    let mut decoder = options
        .read_info(Cursor::new(data))
        .map_err(|e| map_err(ctx, e))?;
    let (screen_w, screen_h) = (decoder.width() as u32, decoder.height() as u32);
    ctx.check_size_limit(screen_w.max(1) as u64, screen_h.max(1) as u64)?;
    let global = decoder.global_palette().map(<[u8]>::to_vec);

    let frame = decoder
        .next_frame_info()
        .map_err(|e| map_err(ctx, e))?
        .ok_or_else(|| ctx.corrupt("expected an image, found no frame"))?;
    let (left, top) = (frame.left as u32, frame.top as u32);
    let (fw, fh) = (frame.width as u32, frame.height as u32);
    let transparent = frame.transparent;
    let local = frame.palette.clone();
    let width = screen_w.max(left + fw);
    let height = screen_h.max(top + fh);
    ctx.check_size(width as u64, height as u64)?;

    let mut indices = ctx.alloc(fw as usize * fh as usize)?;
    decoder
        .read_into_buffer(&mut indices)
        .map_err(|e| map_err(ctx, e))?;
    if first_image_data_cut(data) {
        // Pillow refuses a file whose last data sub-block is cut short, even when the pixels
        // it holds are not needed; a file that stops between sub-blocks is fine.
        return Err(ctx.truncated("the image data stops inside a data sub-block"));
    }

    let table = local.or(global).unwrap_or_default();
    let palette = if Palette::is_identity_ramp(&table) {
        Palette::from_entries((0..=255u8).map(|i| [i; 3]))
    } else {
        Palette::from_rgb_triples(&table)
    };
    let background = palette.get(transparent.unwrap_or(0));
    let mut image = ctx.rgb(width, height)?;
    for px in image.data.chunks_exact_mut(3) {
        px.copy_from_slice(&background);
    }
    let (w, fw, left, top) = (width as usize, fw as usize, left as usize, top as usize);
    if fw > 0 {
        for (y, row) in indices.chunks_exact(fw).enumerate() {
            let start = ((top + y) * w + left) * 3;
            let out = &mut image.data[start..start + fw * 3];
            for (px, &i) in out.chunks_exact_mut(3).zip(row) {
                px.copy_from_slice(&palette.get(i));
            }
        }
    }
    Ok(Decoded::new(image, Orientation::Normal))
}

/// Whether the file ends inside a data sub-block of its first image (or before the image).
fn first_image_data_cut(data: &[u8]) -> bool {
    let Some(&flags) = data.get(10) else {
        return true;
    };
    let mut at = 13usize;
    if flags & 0x80 != 0 {
        at += 3 << ((flags & 7) + 1);
    }
    // Walks sub-blocks from `at`; `Err(true)` if cut inside one, `Ok(next)` after the terminator,
    // `Err(false)` if the data ends exactly between sub-blocks.
    let sub_blocks = |mut at: usize| -> Result<usize, bool> {
        loop {
            let Some(&len) = data.get(at) else {
                return Err(false);
            };
            at += 1;
            if len == 0 {
                return Ok(at);
            }
            at += len as usize;
            if at > data.len() {
                return Err(true);
            }
        }
    };
    loop {
        match data.get(at) {
            None => return true,
            Some(0x21) => match sub_blocks(at + 2) {
                Ok(next) => at = next,
                Err(_) => return true,
            },
            Some(0x2C) => {
                let Some(&f) = data.get(at + 9) else {
                    return true;
                };
                at += 10;
                if f & 0x80 != 0 {
                    at += 3 << ((f & 7) + 1);
                }
                return match sub_blocks(at + 1) {
                    Ok(_) => false,
                    Err(cut) => cut,
                };
            }
            Some(_) => return false,
        }
    }
}
