//! Pillow 13's `Image.resize(size, resample, reducing_gap=None)` for 8-bit RGB images, bit-exact.
//!
//! Convolution filters follow `libImaging/Resample.c`:
//!
//! * per axis, coefficients in double precision: `scale = in / out`,
//!   `filterscale = max(scale, 1)`, `support = filter_support * filterscale`; output pixel `i`
//!   has `center = (i + 0.5) * scale`, taps `xmin = (int)(center - support + 0.5)` (clamped to
//!   0) up to `(int)(center + support + 0.5)` (clamped to `in`), weights
//!   `filter((j + xmin - center + 0.5) / filterscale)` normalised by their sum;
//! * weights to fixed point with 22 fractional bits (`(int)(w * 2^22 +- 0.5)`), sums start at
//!   `2^21`, the result is `clamp(sum >> 22, 0, 255)`: every pass writes 8-bit values;
//! * two separable passes, each skipped when that side does not change. Pillow 13 runs the
//!   horizontal pass first unless the height shrinks by more than twice as many pixels as the
//!   width does (`in_h - out_h > 0 && in_h - out_h > 2 * (in_w - out_w)`), then vertical first.
//!   The order changes results, so it is reproduced.
//!
//! Nearest follows `ImagingScaleAffine` (`libImaging/Geometry.c`): source column of output `x`
//! is `(int)xo` with `xo` starting at `scale / 2` and advanced by repeated addition of `scale`.
//! A resize to the same size returns a copy.
//!
//! Every output pixel is a function of the source alone (its own coefficients, from its own
//! index), so [`resize_part`] computes any rectangle of the output, and only it, with the same
//! bits as the whole resize cropped afterwards. Preprocessing asks for the center crop's
//! rectangle: about half the work of the whole resize for a 4:3 photo.

use std::cell::RefCell;
use std::f64::consts::PI;
use std::ops::Range;
use std::rc::Rc;

use crate::config::Resample;
use crate::error::{ImageError, Result};
use crate::rgb::RgbImage;

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn box_filter(x: f64) -> f64 {
    if x > -0.5 && x <= 0.5 {
        1.0
    } else {
        0.0
    }
}

fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn hamming_filter(x: f64) -> f64 {
    let x = x.abs();
    if x == 0.0 {
        return 1.0;
    }
    if x >= 1.0 {
        return 0.0;
    }
    let x = x * PI;
    // The C source writes the constants as floats: 0.54f + 0.46f * cos(x).
    x.sin() / x * (0.54f32 as f64 + 0.46f32 as f64 * x.cos())
}

fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

fn sinc_filter(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * PI;
    x.sin() / x
}

fn lanczos_filter(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc_filter(x) * sinc_filter(x / 3.0)
    } else {
        0.0
    }
}

fn mks2013_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 0.5 {
        17.0 / 16.0 - 7.0 / 4.0 * (x * x)
    } else if x < 1.5 {
        (1.0 - x) * (7.0 / 4.0 - x)
    } else if x < 2.5 {
        let d = x - 5.0 / 2.0;
        -1.0 / 8.0 * (d * d)
    } else {
        0.0
    }
}

fn mks2021_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 0.5 {
        577.0 / 576.0 - 239.0 / 144.0 * (x * x)
    } else if x < 1.5 {
        35.0 / 36.0 * (x - 1.0) * (x - 239.0 / 140.0)
    } else if x < 2.5 {
        1.0 / 6.0 * (x - 2.0) * (65.0 / 24.0 - x)
    } else if x < 3.5 {
        1.0 / 36.0 * (x - 3.0) * (x - 15.0 / 4.0)
    } else if x < 4.5 {
        let d = x - 9.0 / 2.0;
        -1.0 / 288.0 * (d * d)
    } else {
        0.0
    }
}

/// A filter kernel.
type Kernel = fn(f64) -> f64;

/// The kernel and its support (in input pixels at scale 1) of a convolution filter.
fn filter_of(resample: Resample) -> Option<(Kernel, f64)> {
    Some(match resample {
        Resample::Nearest => return None,
        Resample::Box => (box_filter, 0.5),
        Resample::Bilinear => (bilinear_filter, 1.0),
        Resample::Hamming => (hamming_filter, 1.0),
        Resample::Bicubic => (bicubic_filter, 2.0),
        Resample::Lanczos => (lanczos_filter, 3.0),
        Resample::Mks2013 => (mks2013_filter, 2.5),
        Resample::Mks2021 => (mks2021_filter, 4.5),
    })
}

/// A rectangle of an image's pixels: columns `left .. left + width`, rows `top .. top + height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// First column.
    pub left: u32,
    /// First row.
    pub top: u32,
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
}

impl Rect {
    /// The whole of a `width x height` image.
    pub fn whole(width: u32, height: u32) -> Rect {
        Rect {
            left: 0,
            top: 0,
            width,
            height,
        }
    }

    /// `self` with `margin` more pixels on each side, within a `width x height` image.
    pub(crate) fn grown(self, margin: u32, width: u32, height: u32) -> Rect {
        let grow = |start: u32, len: u32, size: u32| {
            let first = start.saturating_sub(margin);
            let end = start.saturating_add(len).saturating_add(margin).min(size);
            (first, end.saturating_sub(first))
        };
        let (left, width) = grow(self.left, self.width, width);
        let (top, height) = grow(self.top, self.height, height);
        Rect {
            left,
            top,
            width,
            height,
        }
    }

    /// The rectangle of columns `columns` and rows `rows`.
    fn spanning(columns: Range<usize>, rows: Range<usize>) -> Rect {
        Rect {
            left: columns.start as u32,
            top: rows.start as u32,
            width: columns.len() as u32,
            height: rows.len() as u32,
        }
    }

    /// Whether `self` lies inside `outer`.
    fn within(self, outer: Rect) -> bool {
        self.left >= outer.left
            && self.top >= outer.top
            && self.left as u64 + self.width as u64 <= outer.left as u64 + outer.width as u64
            && self.top as u64 + self.height as u64 <= outer.top as u64 + outer.height as u64
    }

    pub(crate) fn columns(self) -> Range<usize> {
        self.left as usize..(self.left + self.width) as usize
    }

    pub(crate) fn rows(self) -> Range<usize> {
        self.top as usize..(self.top + self.height) as usize
    }

    /// `self`'s pixels of a row-major RGB buffer `stride` pixels wide.
    fn copy_from(self, data: &[u8], stride: usize) -> Vec<u8> {
        let (columns, width) = (self.columns(), self.width as usize * 3);
        let mut out = Vec::with_capacity(width * self.height as usize);
        for y in self.rows() {
            out.extend_from_slice(&data[(y * stride + columns.start) * 3..][..width]);
        }
        out
    }
}

/// The pixels of `rect` of a `full_width x full_height` image (all of it, or the part a decoder
/// was asked for): what [`resize_window`] reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window<'a> {
    /// `rect.width x rect.height` pixels.
    pub image: &'a RgbImage,
    /// Where they lie in the full image.
    pub rect: Rect,
    /// The full image's width.
    pub full_width: u32,
    /// The full image's height.
    pub full_height: u32,
}

impl<'a> Window<'a> {
    /// All of `image`.
    pub fn whole(image: &'a RgbImage) -> Self {
        Window {
            image,
            rect: Rect::whole(image.width, image.height),
            full_width: image.width,
            full_height: image.height,
        }
    }

    /// Whether it holds the whole image.
    pub fn is_whole(&self) -> bool {
        self.rect == Rect::whole(self.full_width, self.full_height)
    }
}

/// Fixed-point coefficients of a run of outputs of one axis: the run's `i`-th output reads
/// `count[i]` inputs from `start[i]` with weights `weights[i * ksize ..]`.
struct Coefficients {
    ksize: usize,
    start: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<i32>,
}

impl Coefficients {
    /// The inputs the outputs read: from the first one's first to the last one's last.
    fn inputs(&self) -> Range<usize> {
        let first = self.start.iter().copied().min().unwrap_or(0);
        let end = (self.start.iter().zip(&self.count))
            .map(|(s, n)| s + n)
            .max()
            .unwrap_or(first);
        first..end
    }
}

/// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for the outputs `outputs`
/// of `0 .. out_size`.
fn coefficients(
    in_size: u32,
    out_size: u32,
    outputs: Range<usize>,
    filter: Kernel,
    filter_support: f64,
) -> Coefficients {
    // The box is passed to C as floats: (double)(in1 - in0) with in0 = 0.
    let scale = (in_size as f32) as f64 / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = filter_support * filterscale;
    let ksize = (support.ceil() as usize) * 2 + 1;
    let inv_filterscale = 1.0 / filterscale;
    let out = outputs.len();
    let mut start = Vec::with_capacity(out);
    let mut count = Vec::with_capacity(out);
    let mut weights = vec![0i32; out * ksize];
    let mut k = vec![0f64; ksize];
    for (i, xx) in outputs.enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        let mut xmin = (center - support + 0.5) as i64;
        if xmin < 0 {
            xmin = 0;
        }
        let mut xmax = (center + support + 0.5) as i64;
        if xmax > in_size as i64 {
            xmax = in_size as i64;
        }
        let n = (xmax - xmin).clamp(0, ksize as i64) as usize;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter(((x as i64 + xmin) as f64 - center + 0.5) * inv_filterscale);
            *kx = w;
            ww += w;
        }
        if ww != 0.0 {
            for kx in k.iter_mut().take(n) {
                *kx /= ww;
            }
        }
        let row = &mut weights[i * ksize..i * ksize + n];
        for (dst, &w) in row.iter_mut().zip(&k[..n]) {
            let scaled = w * (1u32 << PRECISION_BITS) as f64;
            *dst = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        start.push(xmin as usize);
        count.push(n);
    }
    Coefficients {
        ksize,
        start,
        count,
        weights,
    }
}

#[inline]
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass over rows `rows` of `src` (`src_w` wide), whose first column is the image's
/// column `first_col`.
///
/// Each output pixel is three dot products over the same run of input pixels, in 32-bit
/// integers that wrap as Pillow's do in practice. Integer sums do not depend on their order, so
/// the vectorized passes' results are Pillow's to the bit.
fn horizontal(
    src: &[u8],
    src_w: usize,
    rows: Range<usize>,
    first_col: usize,
    c: &Coefficients,
) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { horizontal_avx2(src, src_w, rows, first_col, c) };
    }
    horizontal_any(src, src_w, rows, first_col, c)
}

/// Bits of a weight's low part in the AVX2 horizontal pass: `w = hi·2^SPLIT + lo` with `lo` in
/// `0..2^SPLIT`, both parts 16-bit.
const SPLIT: u32 = 15;

/// The AVX2 horizontal pass, on 16-bit multiplies that sum pairs (`vpmaddwd`, one micro-op)
/// where 32-bit ones (`vpmulld`) take two, over four rows at a time.
///
/// A row is laid out as pairs of adjacent pixels, channel by channel, in 16 bits:
/// `R0 R1 G0 G1 B0 B1 0 0 | R2 R3 ...`, so that one `vpmaddwd` sums two taps of each channel. A
/// step reads two pairs (4 taps, 32 bytes) from an even pixel; a run that starts at an odd one
/// starts a pixel earlier with a zero weight. Each weight is split in two 16-bit parts, and each
/// step multiplies by both: the products and sums are exact, and `hi·2^SPLIT + lo` of the sums
/// is Pillow's sum to the bit (modulo 2^32, as Pillow's `int` wraps in practice). Weights whose
/// high part does not fit 16 bits (none of the filters' normalized weights come near) take the
/// portable pass.
///
/// The weights of a downscale are more bytes than the first-level cache holds (64 a step, 6
/// steps an output pixel from 2048 to 383 columns), and a pass over one row at a time waited on
/// them; four rows share each weight load.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn horizontal_avx2(
    src: &[u8],
    src_w: usize,
    rows: Range<usize>,
    first_col: usize,
    c: &Coefficients,
) -> Vec<u8> {
    if c.weights
        .iter()
        .any(|&w| i16::try_from(w >> SPLIT).is_err())
    {
        return horizontal_any(src, src_w, rows, first_col, c);
    }
    let out_w = c.start.len();
    // Steps of 4 taps per output: its taps, plus one for a run that starts at an odd pixel.
    let steps = (c.ksize + 1).div_ceil(4);
    // Per output and step, 16 high parts then 16 low parts, in the row's pair layout.
    let mut weights = vec![0i16; out_w * steps * 32];
    let mut firsts = Vec::with_capacity(out_w);
    for (xx, w) in weights.chunks_exact_mut(steps * 32).enumerate() {
        let s = c.start[xx] - first_col;
        let lead = s % 2;
        firsts.push((s - lead) * 4);
        let k = &c.weights[xx * c.ksize..xx * c.ksize + c.count[xx]];
        for (i, &weight) in k.iter().enumerate() {
            // Tap t of a step: pair t % 4 / 2 (values from 8·that), slot t % 2 of each
            // channel's two.
            let t = i + lead;
            let at = (t / 4) * 32 + (t % 4 / 2) * 8 + t % 2;
            let (hi, lo) = (
                (weight >> SPLIT) as i16,
                (weight & ((1 << SPLIT) - 1)) as i16,
            );
            for ch in 0..3 {
                w[at + 2 * ch] = hi;
                w[at + 16 + 2 * ch] = lo;
            }
        }
    }
    // Input rows in the pair layout (8 values a pair), each with zeros after it for the steps
    // of the last runs.
    let len = (src_w.div_ceil(2) + 2 * steps) * 8;
    assert!(firsts.iter().all(|&f| f + steps * 16 <= len));
    let mut pairs = vec![0i16; 4 * len];
    let mut out = vec![0u8; out_w * rows.len() * 3];
    let mut outs = out.chunks_exact_mut(out_w * 3);
    for first_row in rows.clone().step_by(4) {
        let block = first_row..rows.end.min(first_row + 4);
        for (row, dst) in block.clone().zip(pairs.chunks_exact_mut(len)) {
            // SAFETY: AVX2 is enabled here; `dst` holds `src_w` pixels and more (len above).
            unsafe { pair_layout_avx2(&src[row * src_w * 3..(row + 1) * src_w * 3], dst) };
        }
        let p = |i: usize| &pairs[i * len..(i + 1) * len];
        let mut next_out = || outs.next().expect("an output row per input row");
        // SAFETY (both calls): AVX2 is enabled here; rows of `len` values with every run's
        // steps inside (asserted above), `steps · 32` weights an output, out rows of `out_w`
        // pixels.
        if block.len() == 4 {
            let o = std::array::from_fn(|_| next_out());
            unsafe { horizontal_rows_avx2([p(0), p(1), p(2), p(3)], &firsts, &weights, steps, o) }
        } else {
            for i in 0..block.len() {
                unsafe { horizontal_rows_avx2([p(i)], &firsts, &weights, steps, [next_out()]) }
            }
        }
    }
    out
}

/// One row of RGB pixels into `dst` in the pair layout of [`horizontal_avx2`] (values past the
/// row's are left as they are: zeros).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pair_layout_avx2(rgb: &[u8], dst: &mut [i16]) {
    use std::arch::x86_64::*;
    let w = rgb.len() / 3;
    assert!(dst.len() >= w.div_ceil(2) * 8);
    // Four pixels a step: 16 bytes loaded (12 used) into both halves of a register, and one
    // byte shuffle spreads pixels 0-1 into the low half and 2-3 into the high one as 16-bit
    // values (its zero bytes are the values' high bytes and the 0 pairs).
    let whole = rgb.len().saturating_sub(4) / 12;
    #[rustfmt::skip]
    let spread = _mm256_setr_epi8(
        0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1,
        6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1,
    );
    for i in 0..whole {
        // SAFETY: 16 bytes at 12·i lie inside `rgb` (12·i + 16 <= rgb.len() by `whole`); 16
        // values at 16·i inside `dst` (pixels 4·i .. 4·i + 4 < w, asserted above).
        unsafe {
            let v = _mm_loadu_si128(rgb.as_ptr().add(12 * i) as *const __m128i);
            let out = dst.as_mut_ptr().add(16 * i) as *mut __m256i;
            _mm256_storeu_si256(
                out,
                _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(v), spread),
            );
        }
    }
    for x in 4 * whole..w {
        for ch in 0..3 {
            dst[(x / 2) * 8 + 2 * ch + x % 2] = rgb[x * 3 + ch] as i16;
        }
    }
}

/// The output pixels of `R` rows (`pairs`, in the pair layout) into `out`, the weights of
/// each step loaded once for all of them.
///
/// # Safety
/// AVX2; each run's `steps` steps of 16 values from `firsts[xx]` lie inside every row of
/// `pairs`; `weights` holds `steps · 32` values per output; each `out` row `3 · firsts.len()`
/// bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn horizontal_rows_avx2<const R: usize>(
    pairs: [&[i16]; R],
    firsts: &[usize],
    weights: &[i16],
    steps: usize,
    out: [&mut [u8]; R],
) {
    use std::arch::x86_64::*;
    let out_w = firsts.len();
    let out: [*mut u8; R] = out.map(|o| o.as_mut_ptr());
    for (xx, &first) in firsts.iter().enumerate() {
        // SAFETY: the bounds of the contract.
        unsafe {
            let mut w = weights.as_ptr().add(xx * steps * 32);
            let mut px: [*const i16; R] = pairs.map(|p| p.as_ptr().add(first));
            let mut hi = [_mm256_setzero_si256(); R];
            let mut lo = [_mm256_setzero_si256(); R];
            for _ in 0..steps {
                let wh = _mm256_loadu_si256(w as *const __m256i);
                let wl = _mm256_loadu_si256(w.add(16) as *const __m256i);
                for r in 0..R {
                    let v = _mm256_loadu_si256(px[r] as *const __m256i);
                    hi[r] = _mm256_add_epi32(hi[r], _mm256_madd_epi16(v, wh));
                    lo[r] = _mm256_add_epi32(lo[r], _mm256_madd_epi16(v, wl));
                    px[r] = px[r].add(16);
                }
                w = w.add(32);
            }
            let sums: [__m256i; R] = std::array::from_fn(|r| {
                _mm256_add_epi32(_mm256_slli_epi32::<{ SPLIT as i32 }>(hi[r]), lo[r])
            });
            let pixels: [u32; R] = if R == 4 {
                let four = pixels_of_four(std::array::from_fn(|r| sums[r]));
                std::array::from_fn(|r| four[r])
            } else {
                sums.map(|sum| pixels_of_four([sum; 4])[0])
            };
            for (r, pixel) in pixels.iter().enumerate() {
                let rgbx = pixel.to_le_bytes();
                let o = out[r].add(3 * xx);
                if xx + 1 < out_w {
                    // The fourth byte lands on the next pixel, written after this one.
                    std::ptr::write_unaligned(o as *mut [u8; 4], rgbx);
                } else {
                    std::ptr::copy_nonoverlapping(rgbx.as_ptr(), o, 3);
                }
            }
        }
    }
}

/// The output pixels of four rows' sums (each R, G, B, 0 twice, lanes 0..4 and 4..8) as R, G,
/// B and a byte to drop: each channel's two lanes added, plus the rounding half, shifted (into
/// -512..512 for any i32), then the two saturating packs clamp to 0..=255 as [`clip8`] does.
/// The four go through the adds, shifts and packs together.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn pixels_of_four(sums: [std::arch::x86_64::__m256i; 4]) -> [u32; 4] {
    use std::arch::x86_64::*;
    let half = _mm256_setr_epi32(HALF, HALF, HALF, 0, HALF, HALF, HALF, 0);
    // [row a | row b], each channel's two lanes added.
    let pair = |a, b| {
        let lows = _mm256_permute2x128_si256::<0x20>(a, b);
        let highs = _mm256_permute2x128_si256::<0x31>(a, b);
        let sum = _mm256_add_epi32(_mm256_add_epi32(lows, highs), half);
        _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(sum)
    };
    let (p01, p23) = (pair(sums[0], sums[1]), pair(sums[2], sums[3]));
    // Per 128-bit half: rows 0 and 2 in the low half, rows 1 and 3 in the high one, 4 bytes
    // each.
    let words = _mm256_packus_epi32(p01, p23);
    let bytes = _mm256_packus_epi16(words, words);
    let (low, high) = (
        _mm256_castsi256_si128(bytes),
        _mm256_extracti128_si256::<1>(bytes),
    );
    [
        _mm_cvtsi128_si32(low),
        _mm_cvtsi128_si32(high),
        _mm_extract_epi32::<1>(low),
        _mm_extract_epi32::<1>(high),
    ]
    .map(|v| v as u32)
}

/// Bytes the portable horizontal pass multiplies at once: two pixels stored as R, G, B, 0, so
/// that lane `l` always holds channel `l % 4`.
const LANES: usize = 8;

/// The portable horizontal pass: each output pixel's three dot products as one over the run's
/// bytes laid out as RGBX, `LANES` at a time (for the compiler to vectorize), against weights
/// repeated for each channel and zero-padded to a multiple of `LANES`; lanes are summed per
/// channel at the end.
fn horizontal_any(
    src: &[u8],
    src_w: usize,
    rows: Range<usize>,
    first_col: usize,
    c: &Coefficients,
) -> Vec<u8> {
    let out_w = c.start.len();
    let span = (4 * c.ksize).div_ceil(LANES) * LANES;
    // Weights per byte of each output's run: w, w, w, 0 per tap, then zeros.
    let mut expanded = vec![0i32; out_w * span];
    for (xx, row) in expanded.chunks_exact_mut(span).enumerate() {
        let k = &c.weights[xx * c.ksize..xx * c.ksize + c.count[xx]];
        for (dst, &w) in row.chunks_exact_mut(4).zip(k) {
            dst[..3].fill(w);
        }
    }
    // One input row as RGBX with `span` zero bytes after it, so every run reads `span` bytes in
    // bounds.
    let mut padded = vec![0u8; src_w * 4 + span];
    // Each run's first byte in `padded`, all checked here once rather than per pixel and row.
    let firsts: Vec<usize> = c.start.iter().map(|&s| (s - first_col) * 4).collect();
    assert!(firsts.iter().all(|&f| f + span <= padded.len()));
    let mut out = vec![0u8; out_w * rows.len() * 3];
    for (row, out_row) in rows.zip(out.chunks_exact_mut(out_w * 3)) {
        let rgb = &src[row * src_w * 3..(row + 1) * src_w * 3];
        for (dst, px) in padded.chunks_exact_mut(4).zip(rgb.chunks_exact(3)) {
            dst[..3].copy_from_slice(px);
        }
        let runs = firsts.iter().zip(expanded.chunks_exact(span));
        for ((&first, weights), px) in runs.zip(out_row.chunks_exact_mut(3)) {
            // SAFETY: first + span <= padded.len() for every run (asserted above).
            let taps = unsafe { padded.get_unchecked(first..first + span) };
            let mut lanes = [0i32; LANES];
            for (t, w) in taps.chunks_exact(LANES).zip(weights.chunks_exact(LANES)) {
                for l in 0..LANES {
                    lanes[l] = lanes[l].wrapping_add((t[l] as i32).wrapping_mul(w[l]));
                }
            }
            for (ch, v) in px.iter_mut().enumerate() {
                *v = clip8(HALF.wrapping_add(lanes[ch].wrapping_add(lanes[ch + 4])));
            }
        }
    }
    out
}

/// Vertical pass over columns `columns` of `src` (`w` wide): output row `yy` reads rows
/// `c.start[yy] - row_offset ..`.
fn vertical(
    src: &[u8],
    w: usize,
    row_offset: usize,
    columns: Range<usize>,
    c: &Coefficients,
) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { vertical_avx2(src, w, row_offset, columns, c) };
    }
    vertical_any(src, w, row_offset, columns, c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn vertical_avx2(
    src: &[u8],
    w: usize,
    row_offset: usize,
    columns: Range<usize>,
    c: &Coefficients,
) -> Vec<u8> {
    vertical_any(src, w, row_offset, columns, c)
}

/// Output bytes of a row that the vertical pass sums at once, over all of an output's taps:
/// its sums stay in registers (four of AVX2's) instead of going through memory at each tap.
const VBLOCK: usize = 32;

/// The vertical pass, written for the compiler to vectorize (for the CPU of its caller).
#[inline(always)]
fn vertical_any(
    src: &[u8],
    w: usize,
    row_offset: usize,
    columns: Range<usize>,
    c: &Coefficients,
) -> Vec<u8> {
    let out_h = c.start.len();
    let stride = w * 3;
    let (skip, out_stride) = (columns.start * 3, columns.len() * 3);
    let mut out = vec![0u8; out_h * out_stride];
    for (yy, out_row) in out.chunks_exact_mut(out_stride).enumerate() {
        let k = &c.weights[yy * c.ksize..yy * c.ksize + c.count[yy]];
        let first = c.start[yy] - row_offset;
        let in_rows = || (first..first + k.len()).map(|y| &src[y * stride + skip..][..out_stride]);
        let mut blocks = out_row.chunks_exact_mut(VBLOCK);
        for (b, block) in (&mut blocks).enumerate() {
            let mut acc = [HALF; VBLOCK];
            for (in_row, &weight) in in_rows().zip(k) {
                let values: &[u8; VBLOCK] = in_row[b * VBLOCK..][..VBLOCK].try_into().unwrap();
                for (a, &v) in acc.iter_mut().zip(values) {
                    *a = a.wrapping_add((v as i32).wrapping_mul(weight));
                }
            }
            for (o, &a) in block.iter_mut().zip(&acc) {
                *o = clip8(a);
            }
        }
        let tail = blocks.into_remainder();
        let x0 = out_stride - tail.len();
        let mut acc = [HALF; VBLOCK];
        for (in_row, &weight) in in_rows().zip(k) {
            for (a, &v) in acc.iter_mut().zip(&in_row[x0..]) {
                *a = a.wrapping_add((v as i32).wrapping_mul(weight));
            }
        }
        for (o, &a) in tail.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// `ImagingScaleAffine` with `fill = 1`: nearest-neighbour scaling.
fn nearest(src: &RgbImage, out_w: u32, out_h: u32, part: Rect) -> Vec<u8> {
    let (in_w, in_h) = (src.width as i64, src.height as i64);
    let a0 = (src.width as f32) as f64 / out_w as f64;
    let a4 = (src.height as f32) as f64 / out_h as f64;
    let coord = |v: f64| -> i64 {
        if v < 0.0 {
            -1
        } else {
            v as i64
        }
    };
    let ow = out_w as usize;
    let mut xintab = vec![0usize; ow];
    let (mut xmin, mut xmax) = (ow, 0usize);
    let mut xo = a0 * 0.5;
    for (x, slot) in xintab.iter_mut().enumerate() {
        let xin = coord(xo);
        if xin >= 0 && xin < in_w {
            xmax = x + 1;
            if x < xmin {
                xmin = x;
            }
            *slot = xin as usize;
        }
        xo += a0;
    }
    let (columns, rows) = (part.columns(), part.rows());
    let (xmin, xmax) = (xmin.max(columns.start), xmax.min(columns.end));
    let stride_in = src.width as usize * 3;
    let mut out = vec![0u8; columns.len() * rows.len() * 3];
    // `yo` advances by repeated addition from the first row, as in C, also above the part.
    let mut yo = a4 * 0.5;
    for y in 0..rows.end {
        let yi = coord(yo);
        yo += a4;
        if y < rows.start || yi < 0 || yi >= in_h {
            continue;
        }
        let in_row = &src.data[yi as usize * stride_in..(yi as usize + 1) * stride_in];
        let out_row = &mut out[(y - rows.start) * columns.len() * 3..][..columns.len() * 3];
        for (x, &s) in xintab.iter().enumerate().take(xmax).skip(xmin) {
            let s = s * 3;
            let d = (x - columns.start) * 3;
            out_row[d..d + 3].copy_from_slice(&in_row[s..s + 3]);
        }
    }
    out
}

/// Resizes `src` to `width x height` exactly as Pillow 13's `Image.resize((width, height),
/// resample)` does for an RGB image (`reducing_gap=None`, no box).
pub fn resize(src: &RgbImage, width: u32, height: u32, resample: Resample) -> Result<RgbImage> {
    resize_part(src, width, height, resample, Rect::whole(width, height))
}

/// The rectangle `part` of [`resize`]`(src, width, height, resample)`, computed without the rest:
/// the same bits as resizing the whole image and cropping `part` out of it. `part` must lie
/// inside `width x height` and not be empty.
pub fn resize_part(
    src: &RgbImage,
    width: u32,
    height: u32,
    resample: Resample,
    part: Rect,
) -> Result<RgbImage> {
    src.validate()?;
    resize_window(Window::whole(src), width, height, resample, part)
}

/// What one axis's coefficients are computed from: input and output sizes, the outputs, the
/// filter.
type AxisKey = (u32, u32, Range<usize>, Resample);

/// Coefficients kept per thread: a JPEG's are needed before decoding (the region to decode) and
/// again for the resize, and a collection's images often share their sizes.
const CACHED_AXES: usize = 8;

thread_local! {
    /// The most recently used first.
    static AXES: RefCell<Vec<(AxisKey, Rc<Coefficients>)>> = const { RefCell::new(Vec::new()) };
}

/// The coefficients of the outputs `outputs` of an axis resized from `in_size` to `out_size`
/// with `resample`'s filter (not the nearest); `None` when the axis keeps its size (the pass is
/// skipped). Computed once per thread for the last [`CACHED_AXES`] axes.
fn axis_coefficients(
    in_size: u32,
    out_size: u32,
    outputs: Range<usize>,
    resample: Resample,
) -> Option<Rc<Coefficients>> {
    if in_size == out_size {
        return None;
    }
    let (filter, support) = filter_of(resample)?;
    let key = (in_size, out_size, outputs, resample);
    AXES.with(|axes| {
        let mut axes = axes.borrow_mut();
        if let Some(i) = axes.iter().position(|(k, _)| *k == key) {
            let hit = axes.remove(i);
            axes.insert(0, hit);
        } else {
            let c = coefficients(in_size, out_size, key.2.clone(), filter, support);
            axes.insert(0, (key, Rc::new(c)));
            axes.truncate(CACHED_AXES);
        }
        Some(axes[0].1.clone())
    })
}

/// The inputs an axis's outputs `outputs` read: those of their coefficients, or the outputs
/// themselves where the axis keeps its size.
fn axis_reads(c: Option<&Coefficients>, outputs: Range<usize>) -> Range<usize> {
    c.map_or(outputs, Coefficients::inputs)
}

/// The source pixels [`resize_part`] reads for `part` of a resize of a `src_width x src_height`
/// image to `width x height`: `None` for the nearest filter, which may read any of them.
pub(crate) fn source_region(
    (src_width, src_height): (u32, u32),
    width: u32,
    height: u32,
    resample: Resample,
    part: Rect,
) -> Option<Rect> {
    filter_of(resample)?;
    let horiz = axis_coefficients(src_width, width, part.columns(), resample);
    let vert = axis_coefficients(src_height, height, part.rows(), resample);
    Some(Rect::spanning(
        axis_reads(horiz.as_deref(), part.columns()),
        axis_reads(vert.as_deref(), part.rows()),
    ))
}

/// [`resize_part`] of the full image that `src` is a window of; the window must hold the pixels
/// [`source_region`] names (all of them for the nearest filter).
pub(crate) fn resize_window(
    src: Window<'_>,
    width: u32,
    height: u32,
    resample: Resample,
    part: Rect,
) -> Result<RgbImage> {
    let (full_width, full_height) = (src.full_width, src.full_height);
    let refuse = |detail: String| ImageError::Preprocess {
        width: full_width,
        height: full_height,
        detail,
    };
    if width == 0 || height == 0 {
        return Err(refuse(format!(
            "resize to {width}x{height}: expected a non-empty output size"
        )));
    }
    let inside = |start: u32, len: u32, size: u32| {
        len > 0 && matches!(start.checked_add(len), Some(end) if end <= size)
    };
    if !(inside(part.left, part.width, width) && inside(part.top, part.height, height)) {
        return Err(refuse(format!(
            "resize to {width}x{height}: expected a non-empty part inside the output, found \
             {part:?}"
        )));
    }
    // Each axis's coefficients (`None` for the nearest filter), and the source they read.
    let axes = filter_of(resample).map(|_| {
        (
            axis_coefficients(full_width, width, part.columns(), resample),
            axis_coefficients(full_height, height, part.rows(), resample),
        )
    });
    let needed = match &axes {
        Some((horiz, vert)) => Rect::spanning(
            axis_reads(horiz.as_deref(), part.columns()),
            axis_reads(vert.as_deref(), part.rows()),
        ),
        None => Rect::whole(full_width, full_height),
    };
    let fits = (src.image.width, src.image.height) == (src.rect.width, src.rect.height);
    if !(fits && needed.within(src.rect)) {
        return Err(refuse(format!(
            "resize of {:?} to {width}x{height}: the pixels held, {:?}, do not cover the {:?} \
             that {part:?} reads",
            resample, src.rect, needed
        )));
    }
    let out = |data| RgbImage {
        width: part.width,
        height: part.height,
        data,
    };
    let (data, win) = (&src.image.data, src.rect);
    let (win_w, left, top) = (win.width as usize, win.left as usize, win.top as usize);
    // A rectangle of the full image in the window's coordinates.
    let local = |r: Rect| Rect {
        left: r.left - win.left,
        top: r.top - win.top,
        ..r
    };
    if width == full_width && height == full_height {
        return Ok(out(local(part).copy_from(data, win_w)));
    }
    let Some((horiz, vert)) = axes else {
        // The window is the whole image (checked above).
        return Ok(out(nearest(src.image, width, height, part)));
    };
    let (in_w, in_h) = (full_width as i64, full_height as i64);
    let (out_w, out_h) = (width as i64, height as i64);
    let horizontal_first = !((in_h - out_h) > 0 && (in_h - out_h) > (in_w - out_w) * 2);
    let shift = |r: Range<usize>, by: usize| r.start - by..r.end - by;
    let data = match (horiz, vert) {
        (Some(h), None) => horizontal(data, win_w, shift(part.rows(), top), left, &h),
        (None, Some(v)) => vertical(data, win_w, top, shift(part.columns(), left), &v),
        (Some(h), Some(v)) if horizontal_first => {
            // Only the rows the vertical pass reads are resampled horizontally.
            let rows = v.inputs();
            let tmp = horizontal(data, win_w, shift(rows.clone(), top), left, &h);
            vertical(
                &tmp,
                part.width as usize,
                rows.start,
                0..part.width as usize,
                &v,
            )
        }
        (Some(h), Some(v)) => {
            // Only the columns the horizontal pass reads are resampled vertically.
            let columns = h.inputs();
            let tmp = vertical(data, win_w, top, shift(columns.clone(), left), &v);
            horizontal(
                &tmp,
                columns.len(),
                0..part.height as usize,
                columns.start,
                &h,
            )
        }
        (None, None) => local(part).copy_from(data, win_w),
    };
    Ok(out(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-thread cache hands out what a fresh computation gives, for axes coming back
    /// after more than it keeps, and for the same sizes with other outputs or filters.
    #[test]
    fn cached_axis_coefficients_are_the_computed_ones() {
        let keys: Vec<(u32, u32, Range<usize>, Resample)> = (0..3 * CACHED_AXES)
            .map(|i| {
                let resample = [Resample::Bicubic, Resample::Lanczos][i % 2];
                (640 + (i % 11) as u32, 383, (i % 5)..(224 + i % 5), resample)
            })
            .collect();
        for round in 0..3 {
            for (in_size, out_size, outputs, resample) in &keys {
                let got = axis_coefficients(*in_size, *out_size, outputs.clone(), *resample)
                    .expect("a resized axis");
                let (filter, support) = filter_of(*resample).unwrap();
                let want = coefficients(*in_size, *out_size, outputs.clone(), filter, support);
                let what =
                    format!("round {round}: {in_size} -> {out_size} {outputs:?} {resample:?}");
                assert_eq!(got.ksize, want.ksize, "{what}");
                assert_eq!(got.start, want.start, "{what}");
                assert_eq!(got.count, want.count, "{what}");
                assert_eq!(got.weights, want.weights, "{what}");
            }
        }
        assert!(axis_coefficients(256, 256, 0..224, Resample::Bicubic).is_none());
        assert!(axis_coefficients(640, 383, 0..224, Resample::Nearest).is_none());
    }

    /// Pillow's horizontal pass as Pillow writes it: one pixel, one tap, one channel at a time.
    fn horizontal_reference(src: &[u8], src_w: usize, rows: usize, c: &Coefficients) -> Vec<u8> {
        let out_w = c.start.len();
        let mut out = vec![0u8; out_w * rows * 3];
        for r in 0..rows {
            for xx in 0..out_w {
                for ch in 0..3 {
                    let mut ss = HALF;
                    for x in 0..c.count[xx] {
                        let v = src[(r * src_w + c.start[xx] + x) * 3 + ch] as i32;
                        ss = ss.wrapping_add(v.wrapping_mul(c.weights[xx * c.ksize + x]));
                    }
                    out[(r * out_w + xx) * 3 + ch] = clip8(ss);
                }
            }
        }
        out
    }

    /// A `w` x `h` RGB image: a row of 0, a row of 255 (both ends of the clamp), then values
    /// from `seed`.
    fn clamp_test_image(w: usize, h: usize, seed: u32) -> Vec<u8> {
        let mut next = crate::test_sequence(seed);
        (0..w * h * 3)
            .map(|i| match i / (w * 3) {
                0 => 0,
                1 => 255,
                _ => (next() >> 16) as u8,
            })
            .collect()
    }

    #[test]
    fn vectorized_horizontal_pass_equals_pillows_loop() {
        // Source widths around the 4-pixel steps of the row copies (1-5: none; 6-9: one, then
        // the rest), and wider rows; rows of 0 and 255 reach both ends of the clamp. 7 rows: a
        // block of four, then three alone.
        for w in [1usize, 2, 3, 4, 5, 6, 7, 8, 9, 53, 130] {
            let h = 7usize;
            let src = clamp_test_image(w, h, 12345);
            for resample in [
                Resample::Bicubic,
                Resample::Lanczos,
                Resample::Box,
                Resample::Mks2021,
            ] {
                let (filter, support) = filter_of(resample).unwrap();
                // Down (several spans of LANES), slightly down, up, to one pixel.
                for out_w in [5u32, 17, 52, 90, 1] {
                    let c = coefficients(w as u32, out_w, 0..out_w as usize, filter, support);
                    let want = horizontal_reference(&src, w, h, &c);
                    assert_eq!(
                        horizontal(&src, w, 0..h, 0, &c),
                        want,
                        "{resample:?} {w}->{out_w}"
                    );
                    assert_eq!(
                        horizontal_any(&src, w, 0..h, 0, &c),
                        want,
                        "{resample:?} {w}->{out_w}"
                    );
                }
            }
        }
    }

    /// Weights too large for the AVX2 pass's 16-bit halves (no filter makes them) take the
    /// portable pass, which wraps as Pillow's sums do.
    #[test]
    fn weights_past_sixteen_bit_halves_give_pillows_sums() {
        let (w, h) = (9usize, 5usize);
        let src: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 256) as u8).collect();
        let c = Coefficients {
            ksize: 3,
            start: vec![0, 3, 6],
            count: vec![3, 3, 3],
            weights: vec![
                1 << 30,
                -(1 << 29),
                3,
                5,
                i32::MAX,
                -7,
                1 << 22,
                0,
                -(1 << 21),
            ],
        };
        assert_eq!(
            horizontal(&src, w, 0..h, 0, &c),
            horizontal_reference(&src, w, h, &c)
        );
    }

    /// The vertical pass over windows of columns whose bytes are a whole number of the pass's
    /// blocks, fewer, or more, equals Pillow's loop, one output at a time.
    #[test]
    fn the_vertical_pass_equals_pillows_loop() {
        let (w, h) = (40usize, 53usize);
        let src = clamp_test_image(w, h, 4242);
        for resample in [Resample::Bicubic, Resample::Lanczos] {
            let (filter, support) = filter_of(resample).unwrap();
            for out_h in [7u32, 30, 90] {
                let c = coefficients(h as u32, out_h, 0..out_h as usize, filter, support);
                for columns in [0..w, 3..14, 5..6, 0..32, 1..34] {
                    let got = vertical(&src, w, 0, columns.clone(), &c);
                    let n = columns.len() * 3;
                    for (yy, row) in got.chunks_exact(n).enumerate() {
                        for (i, &v) in row.iter().enumerate() {
                            let mut ss = HALF;
                            for y in 0..c.count[yy] {
                                let px = src[(c.start[yy] + y) * w * 3 + columns.start * 3 + i];
                                let k = c.weights[yy * c.ksize + y];
                                ss = ss.wrapping_add((px as i32).wrapping_mul(k));
                            }
                            assert_eq!(v, clip8(ss), "{resample:?} {h}->{out_h} {columns:?}");
                        }
                    }
                }
            }
        }
    }

    /// The pass over a window of columns (its first column odd or even, as `preprocess` gives
    /// it the crop's source columns) equals Pillow's loop over the whole row.
    #[test]
    fn the_horizontal_pass_over_a_window_of_columns_equals_pillows_loop() {
        let (w, h) = (97usize, 3usize);
        let mut next = crate::test_sequence(777);
        let src: Vec<u8> = (0..w * h * 3).map(|_| (next() >> 16) as u8).collect();
        let (filter, support) = filter_of(Resample::Bicubic).unwrap();
        for (out_w, outputs) in [(60u32, 7..51usize), (60, 8..9), (31, 3..30), (200, 11..190)] {
            let c = coefficients(w as u32, out_w, outputs.clone(), filter, support);
            let want = horizontal_reference(&src, w, h, &c);
            let cols = c.inputs();
            let window: Vec<u8> = (0..h)
                .flat_map(|r| src[(r * w + cols.start) * 3..(r * w + cols.end) * 3].to_vec())
                .collect();
            let got = horizontal(&window, cols.len(), 0..h, cols.start, &c);
            assert_eq!(got, want, "{w}->{out_w}, outputs {outputs:?}");
        }
    }

    #[test]
    fn a_part_has_the_bits_of_the_whole_resize_cropped() {
        let mut sequence = crate::test_sequence(99);
        let mut next = |n: u32| (sequence() >> 8) % n;
        // Both pass orders (the 30 x 90 source shrinks its height most), up and down, one axis
        // only, and the same size.
        for (in_w, in_h) in [(53u32, 41u32), (30, 90), (7, 5)] {
            let data = (0..in_w * in_h * 3).map(|_| next(256) as u8).collect();
            let src = RgbImage::new(in_w, in_h, data).unwrap();
            for (w, h) in [
                (17, 13),
                (30, 20),
                (80, 61),
                (53, 20),
                (20, 41),
                (in_w, in_h),
            ] {
                for resample in [Resample::Bicubic, Resample::Lanczos, Resample::Nearest] {
                    let whole = resize(&src, w, h, resample).unwrap();
                    for _ in 0..12 {
                        let (left, top) = (next(w), next(h));
                        let part = Rect {
                            left,
                            top,
                            width: 1 + next(w - left),
                            height: 1 + next(h - top),
                        };
                        let want = part.copy_from(&whole.data, w as usize);
                        let got = resize_part(&src, w, h, resample, part).unwrap();
                        assert_eq!(
                            (got.width, got.height),
                            (part.width, part.height),
                            "{part:?}"
                        );
                        assert!(
                            got.data == want,
                            "{resample:?} {in_w}x{in_h} -> {w}x{h}, {part:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_part_outside_the_output_is_refused() {
        let src = RgbImage::new(4, 4, vec![7; 48]).unwrap();
        for part in [
            Rect {
                left: 0,
                top: 0,
                width: 0,
                height: 2,
            },
            Rect {
                left: 3,
                top: 0,
                width: 2,
                height: 2,
            },
            Rect {
                left: 0,
                top: u32::MAX,
                width: 1,
                height: 2,
            },
        ] {
            let err = resize_part(&src, 4, 3, Resample::Bicubic, part).unwrap_err();
            assert!(err.to_string().contains("part inside the output"), "{err}");
        }
    }

    #[test]
    fn bicubic_weights_sum_to_one() {
        let c = coefficients(640, 256, 0..256, bicubic_filter, 2.0);
        for i in 0..256 {
            let sum: i64 = c.weights[i * c.ksize..i * c.ksize + c.count[i]]
                .iter()
                .map(|&w| w as i64)
                .sum();
            assert!(
                (sum - (1 << PRECISION_BITS)).abs() <= c.count[i] as i64,
                "{i}: {sum}"
            );
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = RgbImage::new(37, 23, [10u8, 200, 77].repeat(37 * 23)).unwrap();
        for resample in [
            Resample::Nearest,
            Resample::Bilinear,
            Resample::Bicubic,
            Resample::Lanczos,
            Resample::Box,
            Resample::Hamming,
            Resample::Mks2013,
            Resample::Mks2021,
        ] {
            for (w, h) in [(11, 50), (80, 9), (37, 5), (3, 23)] {
                let out = resize(&src, w, h, resample).unwrap();
                assert_eq!(
                    out.data,
                    [10u8, 200, 77].repeat((w * h) as usize),
                    "{resample:?} {w}x{h}"
                );
            }
        }
    }
}
