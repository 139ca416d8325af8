//! [`RgbImage`]: an 8-bit RGB image, the hand-over point between decoding and preprocessing.

use crate::error::{ImageError, Result};

/// An 8-bit RGB image, row-major, 3 interleaved bytes per pixel (R, G, B), no row padding:
/// `data.len() == width * height * 3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `height` rows of `width * 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// Wraps a buffer, checking that its length is `width * height * 3` and that the image is not
    /// empty.
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Result<Self> {
        let image = RgbImage {
            width,
            height,
            data,
        };
        image.validate()?;
        Ok(image)
    }

    /// Checks the invariants (non-zero size, buffer length).
    pub fn validate(&self) -> Result<()> {
        let expected = (self.width as u64) * (self.height as u64) * 3;
        if self.width == 0 || self.height == 0 || self.data.len() as u64 != expected {
            return Err(ImageError::InvalidImage {
                expected: format!("a non-empty image with width * height * 3 = {expected} bytes"),
                found: format!(
                    "{}x{} with {} bytes",
                    self.width,
                    self.height,
                    self.data.len()
                ),
            });
        }
        Ok(())
    }

    /// The pixel at (`x`, `y`) as `[r, g, b]`, `None` outside the image.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = ((y as usize) * (self.width as usize) + x as usize) * 3;
        let p = self.data.get(i..i + 3)?;
        Some([p[0], p[1], p[2]])
    }
}
