//! The `BitImageProcessorPil` pipeline of transformers 5.17.0 on one RGB image:
//! resize (PIL) -> center crop (zero padding) -> rescale -> normalise -> pad, giving float32
//! `pixel_values` in `[3, H, W]` (channels first).
//!
//! * Output size of the resize: transformers' `get_resize_output_image_size` (shortest edge),
//!   `get_size_with_aspect_ratio` (shortest + longest edge), `get_image_size_for_max_height_width`
//!   or the plain `{height, width}`; Python's float arithmetic and `int()` truncation are
//!   reproduced.
//! * Center crop (`image_transforms.center_crop`): `top = (H - h) // 2` (floor); if the crop
//!   does not fit, the image is first placed on a zero canvas of `max(H, h) x max(W, w)` at
//!   `ceil((max - H) / 2)`.
//! * Rescale: `float32(float64(u8) * rescale_factor)`; normalise in float32:
//!   `(v - float32(mean)) / float32(std)`; without rescale the uint8 values are cast to float32.
//! * Pad (`do_pad`): zeros at the bottom and right up to `pad_size`, after normalisation.

use crate::config::{HeightWidth, PreprocessConfig, SizeSpec};
use crate::error::{ImageError, Result};
use crate::resize::{resize_window, source_region, Rect, Window};
use crate::rgb::RgbImage;

/// Model input for one image: float32, channels first.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    /// `[3, height, width]`.
    pub shape: [usize; 3],
    /// `3 * height * width` values, channel planes R, G, B one after another, each row-major.
    pub data: Vec<f32>,
}

impl PixelValues {
    /// Height of the planes.
    pub fn height(&self) -> usize {
        self.shape[1]
    }

    /// Width of the planes.
    pub fn width(&self) -> usize {
        self.shape[2]
    }
}

/// Largest image the resize may produce (the same bound as the decoders' default pixel limit),
/// so that an extreme aspect ratio cannot ask for gigabytes.
pub const MAX_RESIZED_PIXELS: u64 = crate::decode::DEFAULT_MAX_PIXELS;

fn preprocess_err(image: &RgbImage, detail: String) -> ImageError {
    ImageError::Preprocess {
        width: image.width,
        height: image.height,
        detail,
    }
}

/// The `(height, width)` transformers 5.17's PIL backend resizes a `height x width` image to for
/// `size`. Errors when the result would be empty.
pub fn resize_output_size(height: u32, width: u32, size: &SizeSpec) -> Result<(u32, u32)> {
    let (h, w) = (height as u64, width as u64);
    let (oh, ow): (u64, u64) = match *size {
        SizeSpec::ShortestEdge(s) => {
            let s = s as u64;
            let (short, long) = if w <= h { (w, h) } else { (h, w) };
            // Python: int(s * long / short), an exact integer product, true division, truncation.
            let new_long = ((s * long) as f64 / short as f64) as u64;
            if w <= h {
                (new_long, s)
            } else {
                (s, new_long)
            }
        }
        SizeSpec::ShortestLongest {
            shortest_edge,
            longest_edge,
        } => size_with_aspect_ratio(h, w, shortest_edge as u64, longest_edge as u64),
        SizeSpec::Exact { height, width } => (height as u64, width as u64),
        SizeSpec::MaxHeightWidth {
            max_height,
            max_width,
        } => {
            let height_scale = max_height as f64 / h as f64;
            let width_scale = max_width as f64 / w as f64;
            let min_scale = if width_scale < height_scale {
                width_scale
            } else {
                height_scale
            };
            ((h as f64 * min_scale) as u64, (w as f64 * min_scale) as u64)
        }
    };
    if oh == 0 || ow == 0 || oh > u32::MAX as u64 || ow > u32::MAX as u64 {
        return Err(ImageError::Preprocess {
            width,
            height,
            detail: format!(
                "resize with size {size:?}: expected a non-empty output size that fits in 32 bits, \
                 found {oh}x{ow} (height x width)"
            ),
        });
    }
    Ok((oh as u32, ow as u32))
}

/// transformers' `get_size_with_aspect_ratio((h, w), size, max_size)`.
fn size_with_aspect_ratio(h: u64, w: u64, size: u64, max_size: u64) -> (u64, u64) {
    let mut size = size;
    let mut raw_size: Option<f64> = None;
    let min_original = h.min(w) as f64;
    let max_original = h.max(w) as f64;
    if max_original / min_original * size as f64 > max_size as f64 {
        let raw = max_size as f64 * min_original / max_original;
        raw_size = Some(raw);
        size = raw.round_ties_even() as u64;
    }
    if (h <= w && h == size) || (w <= h && w == size) {
        (h, w)
    } else if w < h {
        let oh = match raw_size {
            Some(raw) => (raw * h as f64 / w as f64) as u64,
            None => ((size * h) as f64 / w as f64) as u64,
        };
        (oh, size)
    } else {
        let ow = match raw_size {
            Some(raw) => (raw * w as f64 / h as f64) as u64,
            None => ((size * w) as f64 / h as f64) as u64,
        };
        (size, ow)
    }
}

/// transformers' `center_crop` on an RGB image: crop `crop.height x crop.width` around the
/// center (offsets rounded down), zero-padding where the image is smaller.
pub fn center_crop(image: &RgbImage, crop: HeightWidth) -> Result<RgbImage> {
    image.validate()?;
    let Some(part) = crop_part(image.height, image.width, crop) else {
        return Err(preprocess_err(
            image,
            format!(
                "center crop to {}x{}: expected a non-empty size",
                crop.height, crop.width
            ),
        ));
    };
    if crop.height as u64 * crop.width as u64 > MAX_RESIZED_PIXELS {
        return Err(preprocess_err(
            image,
            format!(
                "center crop to {}x{} (height x width): more pixels than the limit of \
                 {MAX_RESIZED_PIXELS}",
                crop.height, crop.width
            ),
        ));
    }
    // Output row `y` shows image row `crop_start + y` (or padding): the kept part lands at its
    // distance from the crop's start.
    let top = (part.top as i64 - crop_start(image.height, crop.height)) as usize;
    let left = (part.left as i64 - crop_start(image.width, crop.width)) as usize;
    let (row_bytes, part_bytes) = (crop.width as usize * 3, part.width as usize * 3);
    let mut out = vec![0u8; crop.height as usize * row_bytes];
    for (r, y) in part.rows().enumerate() {
        let src = &image.data[(y * image.width as usize + part.left as usize) * 3..][..part_bytes];
        out[(top + r) * row_bytes + left * 3..][..part_bytes].copy_from_slice(src);
    }
    Ok(RgbImage {
        width: crop.width,
        height: crop.height,
        data: out,
    })
}

/// Runs the whole `BitImageProcessorPil` pipeline of `config` on `image`.
///
/// `do_convert_rgb` has no effect: the input is RGB already (decoding converts as Pillow does).
/// With a center crop, only the part of the resized image that the crop keeps is computed
/// ([`resize_part`](crate::resize_part)); the bits are those of the whole resize, cropped.
pub fn preprocess(image: &RgbImage, config: &PreprocessConfig) -> Result<PixelValues> {
    image.validate()?;
    preprocess_window(Window::whole(image), config)
}

/// The resize `config` asks of a `width x height` image: its output `(height, width)` and the
/// part of that output the center crop keeps (all of it without a crop); `None` without a
/// resize. Refuses an output of more than [`MAX_RESIZED_PIXELS`].
fn planned_resize(
    width: u32,
    height: u32,
    config: &PreprocessConfig,
) -> Result<Option<((u32, u32), Rect)>> {
    if !config.do_resize {
        return Ok(None);
    }
    let (oh, ow) = resize_output_size(height, width, &config.size)?;
    if oh as u64 * ow as u64 > MAX_RESIZED_PIXELS {
        return Err(ImageError::Preprocess {
            width,
            height,
            detail: format!(
                "resize with size {:?} would give {oh}x{ow} (height x width) pixels, more than \
                 the limit of {MAX_RESIZED_PIXELS}",
                config.size
            ),
        });
    }
    let part = match config.do_center_crop {
        true => crop_part(oh, ow, config.crop_size),
        false => None,
    };
    Ok(Some(((oh, ow), part.unwrap_or(Rect::whole(ow, oh)))))
}

/// The source pixels [`preprocess`] reads from a `width x height` image under `config`, when
/// that is less than all of them: with a resize, a center crop and a convolution filter, the
/// pixels the crop's part of the resize reads ([`source_region`]).
pub(crate) fn needed_region(width: u32, height: u32, config: &PreprocessConfig) -> Option<Rect> {
    if !config.do_center_crop {
        return None;
    }
    // A refused resize is reported by `preprocess_window`, after a whole decode.
    let ((oh, ow), part) = planned_resize(width, height, config).ok()??;
    source_region((width, height), ow, oh, config.resample, part)
}

/// [`preprocess`] of the full image that `window` is part of; the window holds at least the
/// [`needed_region`].
pub(crate) fn preprocess_window(
    window: Window<'_>,
    config: &PreprocessConfig,
) -> Result<PixelValues> {
    let (width, height) = (window.full_width, window.full_height);
    let refuse = |detail: String| ImageError::Preprocess {
        width,
        height,
        detail,
    };
    let resized;
    let mut current = window.image;
    if let Some(((oh, ow), part)) = planned_resize(width, height, config)? {
        resized = resize_window(window, ow, oh, config.resample, part)?;
        current = &resized;
    } else if !window.is_whole() {
        return Err(refuse(format!(
            "expected the whole image without a resize, found only {:?} of it",
            window.rect
        )));
    }
    let cropped;
    let crop = config.crop_size;
    if config.do_center_crop && (current.height, current.width) != (crop.height, crop.width) {
        cropped = center_crop(current, crop)?;
        current = &cropped;
    }
    let (h, w) = (current.height as usize, current.width as usize);
    // Channel-major (C, H, W): one pass over the pixels per channel, each value looked up.
    let mut data = Vec::with_capacity(3 * h * w);
    for (c, table) in channel_tables(config).iter().enumerate() {
        data.extend(current.data.chunks_exact(3).map(|px| table[px[c] as usize]));
    }
    let mut values = PixelValues {
        shape: [3, h, w],
        data,
    };
    if config.do_pad {
        if let Some(pad) = config.pad_size {
            values = pad_bottom_right(values, pad).map_err(refuse)?;
        }
    }
    Ok(values)
}

/// The float32 value of each byte in each channel after the rescale and the normalisation: the
/// transformers arithmetic, done once per byte value instead of once per pixel.
fn channel_tables(config: &PreprocessConfig) -> [[f32; 256]; 3] {
    let mean = config.image_mean.map(|m| m as f32);
    let std = config.image_std.map(|s| s as f32);
    std::array::from_fn(|c| {
        std::array::from_fn(|byte| {
            let mut v = if config.do_rescale {
                (byte as f64 * config.rescale_factor) as f32
            } else {
                byte as f32
            };
            if config.do_normalize {
                v = (v - mean[c]) / std[c];
            }
            v
        })
    })
}

/// Where transformers' center crop of `crop` pixels starts along an axis of `size`:
/// `(size - crop) // 2`, rounded down, negative where the crop pads.
fn crop_start(size: u32, crop: u32) -> i64 {
    (size as i64 - crop as i64).div_euclid(2)
}

/// The part of a `height x width` image that [`center_crop`] to `crop` keeps (all of an axis the
/// crop pads); `None` for an empty crop, which `center_crop` refuses.
fn crop_part(height: u32, width: u32, crop: HeightWidth) -> Option<Rect> {
    if crop.height == 0 || crop.width == 0 {
        return None;
    }
    // `center_crop` shows image row `crop_start + y` as output row `y`, or pads.
    let axis = |size: u32, crop: u32| {
        let start = crop_start(size, crop);
        let (first, end) = (start.max(0), (start + crop as i64).min(size as i64));
        (first as u32, (end - first) as u32)
    };
    let (top, height) = axis(height, crop.height);
    let (left, width) = axis(width, crop.width);
    Some(Rect {
        left,
        top,
        width,
        height,
    })
}

/// The patch grid `(rows, columns)` of `patch`-pixel patches that every image gets under
/// `config` when a center crop fixes its size (with the pad, if any); `None` without a crop,
/// where each image's grid follows its aspect ratio.
pub fn fixed_grid(config: &PreprocessConfig, patch: usize) -> Option<(usize, usize)> {
    if !config.do_center_crop {
        return None;
    }
    let HeightWidth {
        mut height,
        mut width,
    } = config.crop_size;
    if let (true, Some(pad)) = (config.do_pad, config.pad_size) {
        (height, width) = (height.max(pad.height), width.max(pad.width));
    }
    let p = patch.max(1);
    Some((height as usize / p, width as usize / p))
}

/// The part of a `width` x `height` image that `config`'s preprocessing brings into the model's
/// grid of `patch` x `patch` patches (the pixels past the last whole patch dropped, as the model
/// drops them): `[x0, y0, x1, y1]` in the image's pixel coordinates. It reaches past the image's
/// edges where a center crop or a pad adds zeros. Patch `(i, j)` of a `gh x gw` grid covers
/// `x0 + (x1 - x0) * j / gw` to `x0 + (x1 - x0) * (j + 1) / gw` across, and likewise down.
///
/// The resize maps pixel edges linearly (Pillow's convention): resized `x` is image
/// `x * width / resized_width`. `width` and `height` are the full image's, also when it was
/// decoded at reduced scale ([`crate::DecodeOptions::draft`]), where the result is then within a
/// resized pixel.
pub fn grid_region(
    width: u32,
    height: u32,
    config: &PreprocessConfig,
    patch: usize,
) -> Result<[f64; 4]> {
    let (rh, rw) = if config.do_resize {
        resize_output_size(height, width, &config.size)?
    } else {
        (height, width)
    };
    let (top, left, mut h, mut w) = if config.do_center_crop {
        // As `center_crop`: output (y, x) is resized (y + top, x + left), or padding.
        let crop = config.crop_size;
        (
            crop_start(rh, crop.height),
            crop_start(rw, crop.width),
            crop.height as i64,
            crop.width as i64,
        )
    } else {
        (0, 0, rh as i64, rw as i64)
    };
    let (rh, rw) = (rh as i64, rw as i64);
    if let (true, Some(pad)) = (config.do_pad, config.pad_size) {
        (h, w) = (h.max(pad.height as i64), w.max(pad.width as i64));
    }
    let p = patch.max(1) as i64;
    let (h, w) = (h / p * p, w / p * p);
    let (sx, sy) = (
        width as f64 / rw.max(1) as f64,
        height as f64 / rh.max(1) as f64,
    );
    Ok([
        left as f64 * sx,
        top as f64 * sy,
        (left + w) as f64 * sx,
        (top + h) as f64 * sy,
    ])
}

fn pad_bottom_right(values: PixelValues, pad: HeightWidth) -> Result<PixelValues, String> {
    let (h, w) = (values.height(), values.width());
    let (ph, pw) = (pad.height as usize, pad.width as usize);
    if ph as u64 * pw as u64 > MAX_RESIZED_PIXELS {
        return Err(format!(
            "pad to {ph}x{pw} (height x width): more pixels than the limit of {MAX_RESIZED_PIXELS}"
        ));
    }
    if ph < h || pw < w {
        return Err(format!(
            "pad to {ph}x{pw}: expected a pad_size at least the image size {h}x{w} (height x width)"
        ));
    }
    if (ph, pw) == (h, w) {
        return Ok(values);
    }
    let mut data = vec![0f32; 3 * ph * pw];
    for c in 0..3 {
        for y in 0..h {
            let src = &values.data[(c * h + y) * w..(c * h + y + 1) * w];
            data[(c * ph + y) * pw..(c * ph + y) * pw + w].copy_from_slice(src);
        }
    }
    Ok(PixelValues {
        shape: [3, ph, pw],
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Resample;

    #[test]
    fn shortest_edge_examples_from_the_spec() {
        let s = SizeSpec::ShortestEdge(256);
        assert_eq!(resize_output_size(480, 640, &s).unwrap(), (256, 341));
        assert_eq!(resize_output_size(1000, 333, &s).unwrap(), (768, 256));
        assert_eq!(resize_output_size(256, 256, &s).unwrap(), (256, 256));
    }

    /// The pipeline as transformers runs it, one step after another: the whole resize, the
    /// crop, then the arithmetic per pixel.
    fn preprocess_step_by_step(image: &RgbImage, config: &PreprocessConfig) -> Vec<f32> {
        let (oh, ow) = resize_output_size(image.height, image.width, &config.size).unwrap();
        let resized = crate::resize::resize(image, ow, oh, config.resample).unwrap();
        let cropped = center_crop(&resized, config.crop_size).unwrap();
        let plane = (cropped.width * cropped.height) as usize;
        let mut data = vec![0f32; 3 * plane];
        for (i, px) in cropped.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                let v = (px[c] as f64 * config.rescale_factor) as f32;
                data[c * plane + i] =
                    (v - config.image_mean[c] as f32) / config.image_std[c] as f32;
            }
        }
        data
    }

    #[test]
    fn the_cropped_resize_equals_the_steps_one_after_another() {
        let mut sequence = crate::test_sequence(7);
        let mut next = |n: u32| (sequence() >> 8) % n;
        // Crops inside the resized image, wider or taller than it (padding on one axis or
        // both), odd and even margins; bicubic and nearest.
        for (w, h) in [(64u32, 48u32), (48, 64), (33, 97), (20, 20), (9, 30)] {
            let data = (0..w * h * 3).map(|_| next(256) as u8).collect();
            let image = RgbImage::new(w, h, data).unwrap();
            for (size, crop) in [
                (24, (20, 20)),
                (24, (21, 19)),
                (16, (24, 16)),
                (16, (30, 40)),
            ] {
                for resample in [Resample::Bicubic, Resample::Nearest] {
                    let config = PreprocessConfig {
                        size: SizeSpec::ShortestEdge(size),
                        crop_size: HeightWidth {
                            height: crop.0,
                            width: crop.1,
                        },
                        resample,
                        ..PreprocessConfig::default()
                    };
                    let got = preprocess(&image, &config).unwrap();
                    assert_eq!(got.shape, [3, crop.0 as usize, crop.1 as usize]);
                    let want = preprocess_step_by_step(&image, &config);
                    let same = got
                        .data
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{w}x{h}, size {size}, crop {crop:?}, {resample:?}");
                }
            }
        }
    }

    #[test]
    fn crop_with_padding_centres_the_image() {
        let img = RgbImage::new(1, 1, vec![9, 9, 9]).unwrap();
        let out = center_crop(
            &img,
            HeightWidth {
                height: 3,
                width: 2,
            },
        )
        .unwrap();
        // new 3x2 canvas, pad_top = ceil(2/2) = 1, pad_left = ceil(1/2) = 1.
        assert_eq!(out.pixel(1, 1), Some([9, 9, 9]));
        assert_eq!(out.data.iter().filter(|&&v| v == 9).count(), 3);
    }
}
