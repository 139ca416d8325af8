//! JPEG through libjpeg (`mozjpeg-sys`), set up as Pillow's `JpegDecode.c` sets up
//! libjpeg-turbo: integer slow IDCT, fancy upsampling, the library's own colour-space guess, RGB
//! output for 3 components, grey for 1, CMYK for 4 (YCCK is converted to CMYK by libjpeg).
//!
//! Pillow reads every 4-component JPEG as inverted ("Adobe") CMYK (`rawmode "CMYK;I"`) and then
//! converts CMYK to RGB; this module does the same. A file whose data ends before the last
//! scanline is an error, as in Pillow (which raises "image file is truncated").
//!
//! A caller that needs only part of the image ([`Region`]) gets that part with a margin, and
//! libjpeg skips the rest: the columns outside it (`jpeg_crop_scanline`) and the rows above and
//! below (`jpeg_skip_scanlines`) are entropy-decoded but never inverse-transformed, upsampled or
//! colour-converted. The pixels are those of the full decode: fancy upsampling looks one chroma
//! sample beyond each pixel, and the margin of [`REGION_MARGIN`] pixels keeps the part clear of
//! the crop's and the skip's edges, where libjpeg sees no neighbour. The rows below the part are
//! skipped except the last, which is read: a skip to the end would stop decoding, and a file cut
//! short must still fail.
//!
//! libjpeg reports fatal errors through `error_exit`, which must not return: it unwinds (the
//! library is built with unwind tables, `mozjpeg-sys`' `unwinding` feature), the unwind is caught
//! here and turned into an [`ImageError`](crate::ImageError), and the decompressor is destroyed
//! on the way out.

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_ulong};
use std::panic::{catch_unwind, AssertUnwindSafe};

use mozjpeg_sys as ffi;

use super::{Ctx, Decoded, Region};
use crate::config::SizeSpec;
use crate::convert::cmyk_to_rgb;
use crate::error::Result;
use crate::exif;
use crate::preprocess::resize_output_size;
use crate::resize::Rect;
use crate::rgb::RgbImage;

/// Pixels decoded around a requested part on each side (where the image has them), so that the
/// part's own pixels are those of a full decode.
pub(crate) const REGION_MARGIN: u32 = 16;

/// A message libjpeg raised through `error_exit`, carried by the unwind.
struct Fatal(String);

/// The `error_exit` handler: formats libjpeg's message and unwinds to the `catch_unwind` in
/// [`decode`] (without the panic hook: this is an error of the input, not of the program).
unsafe extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    let message = unsafe { message(cinfo) };
    std::panic::resume_unwind(Box::new(Fatal(message)));
}

/// The `emit_message` handler: warnings (level -1) are ignored, as Pillow ignores them, except
/// that running out of data is recorded (libjpeg's memory source then inserts an end-of-image
/// marker and fills the rest with grey).
unsafe extern "C-unwind" fn emit_message(cinfo: &mut ffi::jpeg_common_struct, level: c_int) {
    // SAFETY: `err` is the error manager set up in `Decompressor::new`, and `client_data` the
    // `Cell<bool>` it lives beside, both alive for the decompressor's life.
    unsafe {
        if level < 0 && (*cinfo.err).msg_code == ffi::JWRN_JPEG_EOF as c_int {
            let ran_out = cinfo.client_data as *const Cell<bool>;
            if !ran_out.is_null() {
                (*ran_out).set(true);
            }
        }
    }
}

/// libjpeg's `JMSG_LENGTH_MAX`: the buffer `format_message` writes into.
const MESSAGE_LENGTH: usize = 200;

/// libjpeg's text for the message it last raised.
unsafe fn message(cinfo: &mut ffi::jpeg_common_struct) -> String {
    let mut buffer = [0u8; MESSAGE_LENGTH];
    // SAFETY: `err` is set. `format_message` writes at most MESSAGE_LENGTH bytes, NUL included,
    // whatever the buffer type `mozjpeg-sys` declares for it.
    unsafe {
        let err = &*cinfo.err;
        match err.format_message {
            Some(format) => {
                let format: unsafe extern "C-unwind" fn(*mut ffi::jpeg_common_struct, *mut u8) =
                    std::mem::transmute(format);
                format(cinfo, buffer.as_mut_ptr());
                let text = buffer.split(|&b| b == 0).next().unwrap_or_default();
                String::from_utf8_lossy(text).into_owned()
            }
            None => format!("libjpeg message {}", err.msg_code),
        }
    }
}

/// A libjpeg decompressor reading `data` from memory; destroyed on drop (also when an error
/// unwinds through it).
struct Decompressor<'a> {
    cinfo: Box<ffi::jpeg_decompress_struct>,
    // Referenced from `cinfo`: boxed so that they stay put, dropped after it.
    _err: Box<ffi::jpeg_error_mgr>,
    _ran_out: &'a Cell<bool>,
    _data: &'a [u8],
}

impl<'a> Decompressor<'a> {
    /// Creates the decompressor over `data` and reads the header. `ran_out` is set when libjpeg
    /// asks for data past the end.
    fn new(data: &'a [u8], ran_out: &'a Cell<bool>) -> Self {
        // SAFETY: all-zero is the state libjpeg expects before `jpeg_std_error` and
        // `jpeg_create_decompress` fill the structures in.
        let mut err: Box<ffi::jpeg_error_mgr> = Box::new(unsafe { std::mem::zeroed() });
        let mut cinfo: Box<ffi::jpeg_decompress_struct> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: the error manager outlives `cinfo` (both owned by the result, `cinfo` dropped
        // first); `data` and `ran_out` outlive it by the lifetime. Errors unwind out of these
        // calls; `cinfo` is then destroyed by `Drop` only once `jpeg_create_decompress` returned.
        unsafe {
            ffi::jpeg_std_error(&mut err);
            err.error_exit = Some(error_exit);
            err.emit_message = Some(emit_message);
            cinfo.common.err = &mut *err;
            cinfo.common.client_data = ran_out as *const Cell<bool> as *mut _;
            ffi::jpeg_create_decompress(&mut *cinfo);
        }
        let mut decompressor = Decompressor {
            cinfo,
            _err: err,
            _ran_out: ran_out,
            _data: data,
        };
        // SAFETY: `data` stays borrowed for the decompressor's life.
        unsafe {
            ffi::jpeg_mem_src(
                &mut decompressor.cinfo,
                data.as_ptr(),
                data.len() as c_ulong,
            );
            ffi::jpeg_read_header(&mut decompressor.cinfo, 1);
        }
        decompressor
    }

    /// Reads the next scanline into `row` (the output width times the output components).
    fn read_row(&mut self, row: &mut [u8]) {
        // SAFETY: initialized bytes are valid `MaybeUninit` bytes, and libjpeg writes only
        // initialized values.
        let row = unsafe { &mut *(row as *mut [u8] as *mut [MaybeUninit<u8>]) };
        self.read_row_uninit(row);
    }

    /// Reads the next scanline into `row`, which need not be initialized: true when libjpeg
    /// wrote one, which it writes whole (the output width times the output components).
    fn read_row_uninit(&mut self, row: &mut [MaybeUninit<u8>]) -> bool {
        let width = self.cinfo.output_width as usize * self.cinfo.out_color_components as usize;
        assert!(row.len() >= width, "row of {} bytes for {width}", row.len());
        let mut rows = [row.as_mut_ptr().cast::<u8>()];
        // SAFETY: one row pointer to at least `width` writable bytes.
        unsafe { ffi::jpeg_read_scanlines(&mut self.cinfo, rows.as_mut_ptr(), 1) == 1 }
    }

    /// The next `rows` scanlines of an RGB output `columns` wide, in a buffer not zeroed first:
    /// libjpeg writes every byte.
    fn read_rgb_rows(&mut self, ctx: &Ctx<'_>, columns: u32, rows: u32) -> Result<RgbImage> {
        let len = ctx.rgb_len(columns, rows)?;
        let mut data = ctx.reserve(len)?;
        for row in data.spare_capacity_mut()[..len].chunks_exact_mut(columns as usize * 3) {
            if !self.read_row_uninit(row) {
                return Err(
                    ctx.corrupt("libjpeg returned fewer scanlines than the header promises")
                );
            }
        }
        // SAFETY: the `len` bytes are `rows` whole rows, each written by libjpeg above.
        unsafe { data.set_len(len) };
        Ok(RgbImage {
            width: columns,
            height: rows,
            data,
        })
    }

    /// Skips `count` scanlines (entropy-decoded, not output), unless it is 0.
    fn skip_rows(&mut self, count: u32) {
        if count > 0 {
            // SAFETY: called between `jpeg_start_decompress` and the last scanline.
            unsafe { ffi::jpeg_skip_scanlines(&mut self.cinfo, count) };
        }
    }
}

impl Drop for Decompressor<'_> {
    fn drop(&mut self) {
        // SAFETY: created by `jpeg_create_decompress`; destroying needs no finished decode.
        unsafe { ffi::jpeg_destroy_decompress(&mut self.cinfo) };
    }
}

enum Components {
    Gray,
    Rgb,
    Cmyk,
}

pub(super) fn decode(data: &[u8], ctx: &Ctx<'_>, region: Option<&Region<'_>>) -> Result<Decoded> {
    let ran_out = Cell::new(false);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        decode_inner(data, ctx, region, &ran_out)
    }));
    match outcome {
        Ok(Ok(decoded)) => Ok(decoded),
        Ok(Err(err)) => Err(err),
        Err(payload) => {
            let message = match payload.downcast::<Fatal>() {
                Ok(fatal) => fatal.0,
                // Not libjpeg's: a bug here, not an input error.
                Err(payload) => std::panic::resume_unwind(payload),
            };
            if ran_out.get() {
                Err(ctx.truncated(message))
            } else {
                Err(ctx.corrupt(message))
            }
        }
    }
}

fn decode_inner(
    data: &[u8],
    ctx: &Ctx<'_>,
    region: Option<&Region<'_>>,
    ran_out: &Cell<bool>,
) -> Result<Decoded> {
    let mut dec = Decompressor::new(data, ran_out);
    let (full_width, full_height) = (
        dec.cinfo.image_width as usize,
        dec.cinfo.image_height as usize,
    );
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
        dec.cinfo.scale_num = (8 / divisor) as _;
        dec.cinfo.scale_denom = 8;
    }
    let (width, height) = (full_width.div_ceil(divisor), full_height.div_ceil(divisor));
    let components = match dec.cinfo.num_components {
        1 => Components::Gray,
        3 => Components::Rgb,
        4 => Components::Cmyk,
        n => return Err(ctx.unsupported(format!("{n}-component image (Pillow reads 1, 3 or 4)"))),
    };
    let (space, channels) = match components {
        Components::Gray => (ffi::J_COLOR_SPACE::JCS_GRAYSCALE, 1),
        Components::Rgb => (ffi::J_COLOR_SPACE::JCS_RGB, 3),
        Components::Cmyk => (ffi::J_COLOR_SPACE::JCS_CMYK, 4),
    };
    dec.cinfo.out_color_space = space;
    // Pillow's settings, which are libjpeg's defaults.
    dec.cinfo.dct_method = ffi::J_DCT_METHOD::JDCT_ISLOW;
    dec.cinfo.do_fancy_upsampling = 1;
    // SAFETY: the header was read.
    unsafe { ffi::jpeg_start_decompress(&mut dec.cinfo) };
    if (
        dec.cinfo.output_width as usize,
        dec.cinfo.output_height as usize,
    ) != (width, height)
    {
        return Err(ctx.corrupt("output size differs from the header"));
    }
    let width32 = u32::try_from(width).map_err(|_| ctx.corrupt("width out of range"))?;
    let height32 = u32::try_from(height).map_err(|_| ctx.corrupt("height out of range"))?;

    // What to produce: all, or the requested part with its margin (in the file's frame: only
    // when no orientation is applied after decoding).
    let wanted = match (region, orientation) {
        (Some(region), exif::Orientation::Normal) => region(width32, height32),
        _ => None,
    };
    let whole = Rect::whole(width32, height32);
    let part = wanted.map_or(whole, |r| r.grown(REGION_MARGIN, width32, height32));
    let (mut left, mut columns) = (part.left, part.width);
    if columns < width32 {
        // SAFETY: after `jpeg_start_decompress`, before any scanline; libjpeg widens the
        // columns to whole iMCUs and writes back where they start and how many there are.
        unsafe { ffi::jpeg_crop_scanline(&mut dec.cinfo, &mut left, &mut columns) };
    }
    let (top, rows) = (part.top, part.height);
    dec.skip_rows(top);
    let row_samples = columns as usize * channels;
    let image = if channels == 3 {
        dec.read_rgb_rows(ctx, columns, rows)?
    } else {
        let mut image = ctx.rgb(columns, rows)?;
        let mut buf = ctx.alloc(row_samples)?;
        for out in image.data.chunks_exact_mut(columns as usize * 3) {
            dec.read_row(&mut buf);
            if channels == 1 {
                for (px, &v) in out.chunks_exact_mut(3).zip(&buf) {
                    px.copy_from_slice(&[v, v, v]);
                }
            } else {
                // "CMYK;I": Pillow inverts every sample, then converts CMYK to RGB.
                for (px, p) in out.chunks_exact_mut(3).zip(buf.chunks_exact(4)) {
                    px.copy_from_slice(&cmyk_to_rgb(
                        255 - p[0],
                        255 - p[1],
                        255 - p[2],
                        255 - p[3],
                    ));
                }
            }
        }
        image
    };
    // The rows below: entropy-decoded to the last, which is read (see the module documentation).
    let below = height32 - (top + rows);
    if below > 0 {
        dec.skip_rows(below - 1);
        let mut scratch = ctx.alloc(row_samples)?;
        dec.read_row(&mut scratch);
    }
    if ran_out.get() {
        // libjpeg substituted an end-of-image marker and filled the rest with grey.
        return Err(
            ctx.truncated("the entropy-coded data stops before the last scanline".to_string())
        );
    }
    // `jpeg_finish_decompress` is not called: it would only read up to the end-of-image marker,
    // which Pillow does not require either. Dropping the decompressor releases libjpeg's state.
    drop(dec);
    Ok(Decoded {
        image,
        orientation,
        file_size: (full_width as u32, full_height as u32),
        window: Rect {
            left,
            top,
            width: columns,
            height: rows,
        },
        full: (width32, height32),
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
