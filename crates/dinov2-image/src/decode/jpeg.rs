//! JPEG through libjpeg (the `mozjpeg` crate), set up as Pillow's `JpegDecode.c` sets up
//! libjpeg-turbo: integer slow IDCT, fancy upsampling, the library's own colour-space guess, RGB
//! output for 3 components, grey for 1, CMYK for 4 (YCCK is converted to CMYK by libjpeg).
//!
//! Pillow reads every 4-component JPEG as inverted ("Adobe") CMYK (`rawmode "CMYK;I"`) and then
//! converts CMYK to RGB; this module does the same. A file whose data ends before the last
//! scanline is an error, as in Pillow (which raises "image file is truncated").
//!
//! libjpeg reports fatal errors by unwinding out of its error handler (the `mozjpeg` crate's
//! design); the unwind is caught here and turned into an [`ImageError`].

use std::cell::Cell;
use std::io::{BufRead, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};

use mozjpeg::ColorSpace;

use super::{Ctx, Decoded};
use crate::config::SizeSpec;
use crate::convert::cmyk_to_rgb;
use crate::error::{ImageError, Result};
use crate::exif;
use crate::preprocess::resize_output_size;

/// A reader over the whole file that records whether libjpeg asked for data past its end.
struct TrackingReader<'a> {
    data: &'a [u8],
    pos: usize,
    hit_eof: &'a Cell<bool>,
}

impl Read for TrackingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for TrackingReader<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        if rest.is_empty() {
            self.hit_eof.set(true);
        }
        Ok(rest)
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.data.len());
    }
}

enum Components {
    Gray,
    Rgb,
    Cmyk,
}

pub(super) fn decode(data: &[u8], ctx: &Ctx<'_>) -> Result<Decoded> {
    let hit_eof = Cell::new(false);
    let outcome = catch_unwind(AssertUnwindSafe(|| decode_inner(data, ctx, &hit_eof)));
    match outcome {
        Ok(Ok(decoded)) => Ok(decoded),
        Ok(Err(err)) => Err(err),
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "libjpeg error".to_string());
            let message = message
                .strip_prefix("libjpeg fatal error: ")
                .unwrap_or(&message)
                .to_string();
            if hit_eof.get() {
                Err(ctx.truncated(message))
            } else {
                Err(ctx.corrupt(message))
            }
        }
    }
}

fn io_error(ctx: &Ctx<'_>, hit_eof: &Cell<bool>, err: std::io::Error) -> ImageError {
    if hit_eof.get() || err.kind() == std::io::ErrorKind::UnexpectedEof {
        ctx.truncated(err.to_string())
    } else {
        ctx.corrupt(err.to_string())
    }
}

fn decode_inner(data: &[u8], ctx: &Ctx<'_>, hit_eof: &Cell<bool>) -> Result<Decoded> {
    let reader = TrackingReader {
        data,
        pos: 0,
        hit_eof,
    };
    let mut dec = mozjpeg::Decompress::builder()
        .from_reader(reader)
        .map_err(|e| io_error(ctx, hit_eof, e))?;
    let (full_width, full_height) = dec.size();
    ctx.check_size(full_width as u64, full_height as u64)?;
    let orientation = if ctx.options.apply_exif_orientation {
        exif::jpeg_orientation(data)
    } else {
        exif::Orientation::Normal
    };
    let divisor = ctx.options.draft.as_ref().map_or(1, |spec| {
        draft_divisor((full_width, full_height), spec, orientation.swaps_axes())
    });
    if divisor > 1 {
        // libjpeg's output size for a scale of 8/divisor eighths: ceil(side / divisor).
        dec.scale((8 / divisor) as u8);
    }
    let (width, height) = (full_width.div_ceil(divisor), full_height.div_ceil(divisor));
    let components = match dec.components().len() {
        1 => Components::Gray,
        3 => Components::Rgb,
        4 => Components::Cmyk,
        n => return Err(ctx.unsupported(format!("{n}-component image (Pillow reads 1, 3 or 4)"))),
    };
    let (space, channels) = match components {
        Components::Gray => (ColorSpace::JCS_GRAYSCALE, 1),
        Components::Rgb => (ColorSpace::JCS_RGB, 3),
        Components::Cmyk => (ColorSpace::JCS_CMYK, 4),
    };
    let mut started = dec
        .to_colorspace(space)
        .map_err(|e| io_error(ctx, hit_eof, e))?;
    if started.width() != width || started.height() != height {
        return Err(ctx.corrupt("output size differs from the header"));
    }
    let width32 = u32::try_from(width).map_err(|_| ctx.corrupt("width out of range"))?;
    let height32 = u32::try_from(height).map_err(|_| ctx.corrupt("height out of range"))?;
    let mut image = ctx.rgb(width32, height32)?;
    let samples = width * height * channels;
    if channels == 3 {
        started
            .read_scanlines_into::<u8>(&mut image.data)
            .map_err(|e| io_error(ctx, hit_eof, e))?;
    } else {
        let mut buf = ctx.alloc(samples)?;
        started
            .read_scanlines_into::<u8>(&mut buf)
            .map_err(|e| io_error(ctx, hit_eof, e))?;
        if channels == 1 {
            for (out, &v) in image.data.chunks_exact_mut(3).zip(&buf) {
                out.copy_from_slice(&[v, v, v]);
            }
        } else {
            // "CMYK;I": Pillow inverts every sample, then converts CMYK to RGB.
            for (out, p) in image.data.chunks_exact_mut(3).zip(buf.chunks_exact(4)) {
                out.copy_from_slice(&cmyk_to_rgb(255 - p[0], 255 - p[1], 255 - p[2], 255 - p[3]));
            }
        }
    }
    if hit_eof.get() {
        // libjpeg substituted an end-of-image marker and filled the rest with grey.
        return Err(
            ctx.truncated("the entropy-coded data stops before the last scanline".to_string())
        );
    }
    // `finish` is not called: it would only read up to the end-of-image marker, which Pillow
    // does not require either. Dropping the decompressor releases libjpeg's state.
    drop(started);
    Ok(Decoded {
        image,
        orientation,
        file_size: (full_width as u32, full_height as u32),
    })
}

/// The scale divisor Pillow's `Image.draft(None, (2 * w, 2 * h))` picks for a JPEG of `full`
/// `(width, height)` that a resize with `spec` takes to `w x h` (the resize applying to the image
/// with its axes exchanged when `swapped` by its orientation): the largest of 8, 4 and 2 that is
/// at most both `width / 2w` and `height / 2h` (integer divisions), else 1.
pub(crate) fn draft_divisor(full: (usize, usize), spec: &SizeSpec, swapped: bool) -> usize {
    let (width, height) = full;
    let (w, h) = if swapped {
        (height, width)
    } else {
        (width, height)
    };
    let (Ok(w), Ok(h)) = (u32::try_from(w), u32::try_from(h)) else {
        return 1;
    };
    let Ok((oh, ow)) = resize_output_size(h, w, spec) else {
        return 1;
    };
    // The requested size in the file's frame.
    let (rw, rh) = if swapped {
        (2 * oh as usize, 2 * ow as usize)
    } else {
        (2 * ow as usize, 2 * oh as usize)
    };
    if rw == 0 || rh == 0 {
        return 1;
    }
    let scale = (width / rw).min(height / rh);
    [8, 4, 2].into_iter().find(|&s| scale >= s).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_draft_divisor_is_pillows_for_twice_the_resize() {
        let shortest = SizeSpec::ShortestEdge(256);
        // 2048 x 1366 -> 383 x 256: 2048 / 766 = 2, 1366 / 512 = 2.
        assert_eq!(draft_divisor((2048, 1366), &shortest, false), 2);
        // A 12-megapixel photo -> 341 x 256: 4032 / 682 = 5, 3024 / 512 = 5, so 4.
        assert_eq!(draft_divisor((4032, 3024), &shortest, false), 4);
        assert_eq!(
            draft_divisor((4032, 3024), &SizeSpec::ShortestEdge(64), false),
            8
        );
        // Already small: decoded in full.
        assert_eq!(draft_divisor((640, 427), &shortest, false), 1);
        assert_eq!(draft_divisor((1, 1), &shortest, false), 1);
        // A resize to an exact size on an image whose orientation exchanges the axes: the
        // request follows the oriented image.
        let exact = SizeSpec::Exact {
            height: 40,
            width: 15,
        };
        assert_eq!(draft_divisor((323, 121), &exact, false), 1);
        assert_eq!(draft_divisor((323, 121), &exact, true), 4);
    }
}
