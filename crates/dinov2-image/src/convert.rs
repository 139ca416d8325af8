//! Pixel conversions to RGB exactly as Pillow 13's `Image.convert("RGB")` does them
//! (`libImaging/Convert.c`, `Unpack.c`), for the modes a decoder can produce.
//!
//! * `L`, `LA`, `1`, low-bit grey: the grey value replicated (1/2/4-bit samples are first scaled
//!   to 0..255 by x255 / x85 / x17, as Pillow's unpackers do).
//! * `RGBA`, `LA`, `PA`: alpha is dropped, not composited (transformers 5.17 calls a plain
//!   `convert("RGB")`).
//! * `P`: palette lookup; indices past the end of the palette read black (Pillow 13 allocates
//!   palettes zeroed).
//! * `CMYK`: `nk = 255 - K; R = clip(nk - (C * nk) / 255)` with Pillow's rounding division.
//! * `I;16` (16-bit grey): clipped to 0..=255, not rescaled. 16-bit RGB(A) and grey+alpha take
//!   the high byte of each sample (Pillow opens them as 8-bit modes that way).

/// Pillow's `MULDIV255(a, b)`: `a * b / 255` rounded, exactly as its integer trick computes it.
#[inline]
fn muldiv255(a: i32, b: i32) -> i32 {
    let tmp = a * b + 128;
    ((tmp >> 8) + tmp) >> 8
}

#[inline]
fn clip8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// `cmyk2rgb` of Pillow: one CMYK pixel (plain, not inverted) to RGB.
#[inline]
pub(crate) fn cmyk_to_rgb(c: u8, m: u8, y: u8, k: u8) -> [u8; 3] {
    let nk = 255 - k as i32;
    [
        clip8(nk - muldiv255(c as i32, nk)),
        clip8(nk - muldiv255(m as i32, nk)),
        clip8(nk - muldiv255(y as i32, nk)),
    ]
}

/// `I;16 -> RGB` of Pillow: values above 255 become 255.
#[inline]
pub(crate) fn clip_u16(v: u16) -> u8 {
    v.min(255) as u8
}

/// `I -> RGB` of Pillow (32-bit or signed samples): clipped to 0..=255.
#[inline]
pub(crate) fn clip_i64(v: i64) -> u8 {
    v.clamp(0, 255) as u8
}

/// Scale factor Pillow's unpackers apply to 1/2/4-bit grey samples (`1`, `L;2`, `L;4`).
#[inline]
pub(crate) fn gray_scale(bits: u8) -> u8 {
    match bits {
        1 => 255,
        2 => 85,
        4 => 17,
        _ => 1,
    }
}

/// Sample `x` of a row packed MSB-first at `bits` (1, 2 or 4) bits per sample.
#[inline]
pub(crate) fn packed_sample(row: &[u8], x: usize, bits: u8) -> u8 {
    let bits = bits as usize;
    let bit = x * bits;
    let byte = row.get(bit / 8).copied().unwrap_or(0);
    let shift = 8 - bits - (bit % 8);
    (byte >> shift) & ((1u16 << bits) - 1) as u8
}

/// A palette as Pillow holds it: 256 RGB entries, zero-initialised, overwritten by the entries
/// the file provides.
pub(crate) struct Palette {
    rgb: [[u8; 3]; 256],
}

impl Palette {
    /// From `r, g, b` triples (at most 256 are used; a trailing partial triple is ignored).
    pub(crate) fn from_rgb_triples(bytes: &[u8]) -> Self {
        let mut rgb = [[0u8; 3]; 256];
        for (e, t) in rgb.iter_mut().zip(bytes.chunks_exact(3)) {
            *e = [t[0], t[1], t[2]];
        }
        Palette { rgb }
    }

    /// From explicit entries.
    pub(crate) fn from_entries(entries: impl IntoIterator<Item = [u8; 3]>) -> Self {
        let mut palette = Palette::from_rgb_triples(&[]);
        for (e, v) in palette.rgb.iter_mut().zip(entries) {
            *e = v;
        }
        palette
    }

    /// Whether `bytes` is the identity grey ramp (entry `i` is `(i, i, i)`); Pillow's GIF reader
    /// then opens the image as `L` with the indices as grey values.
    pub(crate) fn is_identity_ramp(bytes: &[u8]) -> bool {
        bytes
            .chunks(3)
            .enumerate()
            .all(|(i, t)| t.len() == 3 && t.iter().all(|&v| v as usize == i))
    }

    #[inline]
    pub(crate) fn get(&self, index: u8) -> [u8; 3] {
        self.rgb[index as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn muldiv255_matches_rounded_division() {
        for a in 0..=255 {
            for b in 0..=255 {
                let exact = (a * b) as f64 / 255.0;
                assert_eq!(muldiv255(a, b), exact.round() as i32, "{a} {b}");
            }
        }
    }

    #[test]
    fn cmyk_extremes() {
        assert_eq!(cmyk_to_rgb(0, 0, 0, 0), [255, 255, 255]);
        assert_eq!(cmyk_to_rgb(255, 255, 255, 0), [0, 0, 0]);
        assert_eq!(cmyk_to_rgb(0, 0, 0, 255), [0, 0, 0]);
    }

    #[test]
    fn packed_samples() {
        let row = [0b1011_0010u8, 0b1100_0000];
        assert_eq!(packed_sample(&row, 0, 1), 1);
        assert_eq!(packed_sample(&row, 1, 1), 0);
        assert_eq!(packed_sample(&row, 0, 2), 0b10);
        assert_eq!(packed_sample(&row, 3, 2), 0b10);
        assert_eq!(packed_sample(&row, 1, 4), 0b0010);
        assert_eq!(packed_sample(&row, 2, 4), 0b1100);
        assert_eq!(packed_sample(&row, 9, 4), 0);
    }

    #[test]
    fn palette_black_past_the_end() {
        let p = Palette::from_rgb_triples(&[1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(p.get(0), [1, 2, 3]);
        assert_eq!(p.get(1), [4, 5, 6]);
        assert_eq!(p.get(2), [0, 0, 0]);
        assert_eq!(p.get(255), [0, 0, 0]);
    }
}
