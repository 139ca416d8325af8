//! The EXIF orientation tag (0x0112) and the rotation/flip it asks for, as Pillow's
//! `ImageOps.exif_transpose` applies it (used only with
//! [`crate::DecodeOptions::apply_exif_orientation`]; transformers does not apply it).

use crate::rgb::RgbImage;

/// EXIF orientation values 1..=8 and Pillow's transpose for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orientation {
    /// 1 (or absent / unknown): unchanged.
    Normal,
    /// 2: `FLIP_LEFT_RIGHT`.
    FlipHorizontal,
    /// 3: `ROTATE_180`.
    Rotate180,
    /// 4: `FLIP_TOP_BOTTOM`.
    FlipVertical,
    /// 5: `TRANSPOSE` (swap x and y).
    Transpose,
    /// 6: `ROTATE_270` (90 degrees clockwise).
    Rotate90Clockwise,
    /// 7: `TRANSVERSE` (transpose across the other diagonal).
    Transverse,
    /// 8: `ROTATE_90` (90 degrees counter-clockwise).
    Rotate90CounterClockwise,
}

impl Orientation {
    /// Whether applying it exchanges width and height (5 to 8).
    pub fn swaps_axes(self) -> bool {
        matches!(
            self,
            Orientation::Transpose
                | Orientation::Rotate90Clockwise
                | Orientation::Transverse
                | Orientation::Rotate90CounterClockwise
        )
    }

    /// From the tag value; anything other than 2..=8 means "unchanged", as in Pillow.
    pub fn from_tag(value: u32) -> Orientation {
        match value {
            2 => Orientation::FlipHorizontal,
            3 => Orientation::Rotate180,
            4 => Orientation::FlipVertical,
            5 => Orientation::Transpose,
            6 => Orientation::Rotate90Clockwise,
            7 => Orientation::Transverse,
            8 => Orientation::Rotate90CounterClockwise,
            _ => Orientation::Normal,
        }
    }
}

/// The orientation in an EXIF block (a TIFF structure, optionally behind `Exif\0\0`).
pub(crate) fn orientation_from_exif(exif: &[u8]) -> Orientation {
    let tiff = exif.strip_prefix(b"Exif\0\0").unwrap_or(exif);
    read_orientation(tiff).map_or(Orientation::Normal, Orientation::from_tag)
}

fn read_orientation(tiff: &[u8]) -> Option<u32> {
    let little = match tiff.get(0..4)? {
        b"II*\0" => true,
        b"MM\0*" => false,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let b = tiff.get(at..at + 2)?;
        Some(if little {
            u16::from_le_bytes([b[0], b[1]])
        } else {
            u16::from_be_bytes([b[0], b[1]])
        })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b = tiff.get(at..at + 4)?;
        Some(if little {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        } else {
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        })
    };
    let ifd = u32_at(4)? as usize;
    let count = u16_at(ifd)? as usize;
    for i in 0..count {
        let entry = ifd.checked_add(2 + 12 * i)?;
        if u16_at(entry)? != 0x0112 {
            continue;
        }
        let kind = u16_at(entry + 2)?;
        return match kind {
            3 => u16_at(entry + 8).map(u32::from),           // SHORT
            4 => u32_at(entry + 8),                          // LONG
            1 => tiff.get(entry + 8).map(|&b| u32::from(b)), // BYTE
            _ => None,
        };
    }
    None
}

/// The orientation of a JPEG: the first APP1 segment starting with `Exif\0\0` before the first
/// scan (Pillow keeps the first one).
pub(crate) fn jpeg_orientation(data: &[u8]) -> Orientation {
    let mut at = 2; // after SOI
    while at + 4 <= data.len() {
        if data[at] != 0xFF {
            return Orientation::Normal;
        }
        let marker = data[at + 1];
        if marker == 0xFF {
            at += 1; // fill byte
            continue;
        }
        if marker == 0xD8 || (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            at += 2;
            continue;
        }
        if marker == 0xDA || marker == 0xD9 {
            return Orientation::Normal; // start of scan / end of image
        }
        let len = u16::from_be_bytes([data[at + 2], data[at + 3]]) as usize;
        if len < 2 {
            return Orientation::Normal;
        }
        let body = data.get(at + 4..at + 2 + len);
        if marker == 0xE1 {
            if let Some(body) = body {
                if body.starts_with(b"Exif\0\0") {
                    return orientation_from_exif(body);
                }
            }
        }
        at += 2 + len;
    }
    Orientation::Normal
}

/// Applies `orientation` the way Pillow's `Image.transpose` does.
pub(crate) fn apply_orientation(image: RgbImage, orientation: Orientation) -> RgbImage {
    if orientation == Orientation::Normal {
        return image;
    }
    let (w, h) = (image.width as usize, image.height as usize);
    let swap = orientation.swaps_axes();
    let (ow, oh) = if swap { (h, w) } else { (w, h) };
    let mut data = vec![0u8; image.data.len()];
    for y in 0..oh {
        for x in 0..ow {
            // Source pixel of output (x, y).
            let (sx, sy) = match orientation {
                Orientation::Normal => (x, y),
                Orientation::FlipHorizontal => (w - 1 - x, y),
                Orientation::Rotate180 => (w - 1 - x, h - 1 - y),
                Orientation::FlipVertical => (x, h - 1 - y),
                Orientation::Transpose => (y, x),
                Orientation::Rotate90Clockwise => (y, h - 1 - x),
                Orientation::Transverse => (w - 1 - y, h - 1 - x),
                Orientation::Rotate90CounterClockwise => (w - 1 - y, x),
            };
            let s = (sy * w + sx) * 3;
            let d = (y * ow + x) * 3;
            data[d..d + 3].copy_from_slice(&image.data[s..s + 3]);
        }
    }
    RgbImage {
        width: ow as u32,
        height: oh as u32,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exif_le(value: u16) -> Vec<u8> {
        let mut v = b"Exif\0\0II*\0\x08\0\0\0".to_vec();
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(&0x0112u16.to_le_bytes());
        v.extend_from_slice(&3u16.to_le_bytes());
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&value.to_le_bytes());
        v.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        v
    }

    #[test]
    fn reads_orientation() {
        assert_eq!(
            orientation_from_exif(&exif_le(6)),
            Orientation::Rotate90Clockwise
        );
        assert_eq!(orientation_from_exif(&exif_le(1)), Orientation::Normal);
        assert_eq!(orientation_from_exif(&exif_le(9)), Orientation::Normal);
        assert_eq!(orientation_from_exif(b"garbage"), Orientation::Normal);
        assert_eq!(
            orientation_from_exif(&exif_le(3)[..20]),
            Orientation::Normal
        );
    }

    #[test]
    fn rotates_clockwise() {
        // 2x1: [A B] rotated clockwise is a 1x2 column [A; B].
        let img = RgbImage {
            width: 2,
            height: 1,
            data: vec![1, 1, 1, 2, 2, 2],
        };
        let out = apply_orientation(img, Orientation::Rotate90Clockwise);
        assert_eq!((out.width, out.height), (1, 2));
        assert_eq!(out.data, vec![1, 1, 1, 2, 2, 2]);
    }
}
