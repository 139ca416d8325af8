//! `grid_region`: the part of the original image the patch grid covers, checked on images whose
//! pixels say where they come from (a gradient along x, another along y): after the real
//! preprocessing, a pixel of the grid holds the gradient's value at the place the region puts it.

use dinov2_image::{grid_region, preprocess, HeightWidth, PreprocessConfig, RgbImage, SizeSpec};

/// `width x height`, red = x / 4 and green = y / 4 (so 1024 x 1024 at most).
fn gradients(width: u32, height: u32) -> RgbImage {
    let mut data = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            data.extend([(x / 4) as u8, (y / 4) as u8, 0]);
        }
    }
    RgbImage::new(width, height, data).unwrap()
}

/// Raw 0-255 values out of the preprocessing, so that they read back as positions.
fn raw(config: PreprocessConfig) -> PreprocessConfig {
    PreprocessConfig {
        do_rescale: false,
        do_normalize: false,
        ..config
    }
}

/// Checks that grid pixel (gy, gx) holds the image's gradient at the place `region` maps it to.
fn check(width: u32, height: u32, config: &PreprocessConfig, patch: usize) -> [f64; 4] {
    let region = grid_region(width, height, config, patch).unwrap();
    let values = preprocess(&gradients(width, height), config).unwrap();
    let (h, w) = (values.height(), values.width());
    let (gh, gw) = (h / patch, w / patch);
    let (sx, sy) = (
        (region[2] - region[0]) / (gw * patch) as f64,
        (region[3] - region[1]) / (gh * patch) as f64,
    );
    // Interior pixels only: the resize's kernel reaches past the image at its edges.
    for gy in (8..gh * patch - 8).step_by(7) {
        for gx in (8..gw * patch - 8).step_by(7) {
            let x = region[0] + (gx as f64 + 0.5) * sx; // the pixel's centre in the image
            let y = region[1] + (gy as f64 + 0.5) * sy;
            if x < 4.0 || y < 4.0 || x > width as f64 - 4.0 || y > height as f64 - 4.0 {
                continue;
            }
            let red = values.data[gy * w + gx] as f64;
            let green = values.data[h * w + gy * w + gx] as f64;
            // x / 4 rounded down by the image, then rounded again by the resize.
            assert!((red - (x / 4.0 - 0.5)).abs() <= 1.0, "x {x}: red {red}");
            assert!(
                (green - (y / 4.0 - 0.5)).abs() <= 1.0,
                "y {y}: green {green}"
            );
        }
    }
    region
}

#[test]
fn the_region_is_where_the_grid_s_pixels_come_from() {
    // The released checkpoints: shortest edge 256, crop 224: an exact 2x downscale here.
    let dinov2 = raw(PreprocessConfig::default());
    assert_eq!(check(768, 512, &dinov2, 14), [160.0, 32.0, 608.0, 480.0]);
    // A scale that is not a whole number, portrait.
    let r = check(480, 640, &dinov2, 14);
    assert!(
        (r[0] - 30.0).abs() < 1e-9 && (r[2] - 450.0).abs() < 1e-9,
        "{r:?}"
    );
    // No crop: the whole resized image, less the pixels past the last whole patch.
    let whole = PreprocessConfig {
        do_center_crop: false,
        size: SizeSpec::ShortestEdge(224),
        ..dinov2.clone()
    };
    let r = check(1000, 700, &whole, 14);
    // 700 -> 224 (16 patches), 1000 -> 320 (22 patches: 308 px).
    assert_eq!(r[..2], [0.0, 0.0]);
    assert!((r[3] - 700.0).abs() < 1e-9 && (r[2] - 308.0 * 1000.0 / 320.0).abs() < 1e-9);
    // A crop larger than the resized image: the region reaches past the edges (zeros there).
    let padded = PreprocessConfig {
        crop_size: HeightWidth {
            height: 280,
            width: 280,
        },
        ..dinov2.clone()
    };
    let r = check(768, 512, &padded, 14);
    assert_eq!(r, [104.0, -24.0, 664.0, 536.0]);
    // No resize at all, patch 16.
    let plain = PreprocessConfig {
        do_resize: false,
        do_center_crop: false,
        ..dinov2
    };
    assert_eq!(check(100, 90, &plain, 16), [0.0, 0.0, 96.0, 80.0]);
}
