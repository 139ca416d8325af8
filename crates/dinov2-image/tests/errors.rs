//! Broken and hostile inputs: every one gives the right [`ImageError`], naming the file, and
//! nothing panics (truncated, corrupt, empty, not an image, decompression bombs, cut and
//! bit-flipped variants of every fixture image, invalid `RgbImage`s and sizes).

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::{fixtures, manifest};
use dinov2_image::{
    center_crop, decode, decode_and_preprocess, decode_file, preprocess, resize, DecodeOptions,
    HeightWidth, ImageError, ImageFormat, PreprocessConfig, Resample, RgbImage, SizeSpec,
};

fn kind(err: &ImageError) -> &'static str {
    match err {
        ImageError::Truncated { .. } => "truncated",
        ImageError::Empty { .. } => "empty",
        ImageError::UnknownFormat { .. } => "unknown_format",
        ImageError::TooManyPixels { .. } => "too_large",
        ImageError::DimensionTooLarge { .. } => "dimension_too_large",
        ImageError::Corrupt { .. } => "corrupt",
        ImageError::Unsupported { .. } => "unsupported",
        _ => "other",
    }
}

#[test]
fn broken_fixture_files_give_the_expected_errors() {
    let manifest = manifest();
    let broken = manifest["broken"].as_array().expect("broken");
    assert!(broken.len() >= 10);
    let mut failures = Vec::new();
    for entry in broken {
        let file = entry["file"].as_str().unwrap();
        let expected = entry["expected"].as_str().unwrap();
        let path = fixtures().join(file);
        match decode_file(&path, &DecodeOptions::default()) {
            Ok(img) => failures.push(format!(
                "{file}: decoded to {}x{}, expected a {expected} error (Pillow: {})",
                img.width, img.height, entry["pillow"]
            )),
            Err(err) => {
                let message = err.to_string();
                if kind(&err) != expected {
                    failures.push(format!("{file}: expected {expected}, got {message}"));
                }
                if !message.contains(&path.display().to_string()) {
                    failures.push(format!("{file}: message does not name the file: {message}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn kinds_pillow_opens_but_this_crate_does_not_are_unsupported_errors() {
    let manifest = manifest();
    let list = manifest["unsupported"].as_array().expect("unsupported");
    assert!(!list.is_empty());
    for entry in list {
        let file = entry["file"].as_str().unwrap();
        assert_eq!(entry["pillow"], "ok", "{file}: Pillow opens it");
        let path = fixtures().join(file);
        let err = decode_file(&path, &DecodeOptions::default()).unwrap_err();
        assert!(
            matches!(err, ImageError::Unsupported { .. }),
            "{file}: {err}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn bomb_is_refused_from_the_header_and_limit_is_configurable() {
    let bomb = std::fs::read(fixtures().join("broken/bomb.png")).unwrap();
    let err = decode(&bomb, &DecodeOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            ImageError::TooManyPixels {
                format: ImageFormat::Png,
                width: 60000,
                height: 60000,
                pixels: 3_600_000_000,
                max_pixels: 178_956_970,
                ..
            }
        ),
        "{text}"
    );
    assert!(
        text.contains("in-memory image") && text.contains("decompression bomb"),
        "{text}"
    );

    // A small real image against tighter limits.
    let png = std::fs::read(fixtures().join("images/png_rgb.png")).unwrap();
    let tight = DecodeOptions {
        max_pixels: 1000,
        ..DecodeOptions::default()
    };
    assert!(matches!(
        decode(&png, &tight),
        Err(ImageError::TooManyPixels { pixels: 3072, .. })
    ));
    let narrow = DecodeOptions {
        max_dimension: 50,
        ..DecodeOptions::default()
    };
    for file in [
        "images/png_rgb.png",
        "images/jpeg_sub420.jpg",
        "images/gif_palette.gif",
        "images/webp_lossy.webp",
        "images/bmp_rgb.bmp",
        "images/tiff_rgb.tif",
    ] {
        let bytes = std::fs::read(fixtures().join(file)).unwrap();
        let err = decode(&bytes, &narrow).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::DimensionTooLarge {
                    max_dimension: 50,
                    ..
                }
            ),
            "{file}: {err}"
        );
        // A minimum side: refused under it, from the header; taken at it.
        let decoded = decode(&bytes, &DecodeOptions::default()).unwrap();
        let short = decoded.width.min(decoded.height);
        let at_least = |min_dimension| DecodeOptions {
            min_dimension,
            ..DecodeOptions::default()
        };
        let err = decode(&bytes, &at_least(short + 1)).unwrap_err();
        assert!(
            matches!(err, ImageError::DimensionTooSmall { min_dimension, .. }
                if min_dimension == short + 1),
            "{file}: {err}"
        );
        assert_eq!(err.stage(), "decode");
        assert!(err.to_string().contains("--min-side"), "{err}");
        assert!(decode(&bytes, &at_least(short)).is_ok(), "{file}");
    }
}

#[test]
fn text_file_with_jpg_extension_says_what_it_found() {
    let path = fixtures().join("broken/text.jpg");
    let err = decode_file(&path, &DecodeOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("text starting with \"This is a text file"),
        "{text}"
    );
    assert!(
        text.contains("expected a JPEG, PNG, GIF, WebP, BMP or TIFF image"),
        "{text}"
    );
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let path = fixtures().join("images/does-not-exist.png");
    let err = decode_file(&path, &DecodeOptions::default()).unwrap_err();
    assert!(matches!(err, ImageError::Io { .. }));
    assert!(err.to_string().contains("does-not-exist.png"));
}

/// Every fixture image cut at many lengths and with bytes flipped: decoding returns (an image or
/// an error) and never panics or aborts.
#[test]
fn cut_and_corrupted_images_never_panic() {
    let mut files: Vec<_> = std::fs::read_dir(fixtures().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 50);
    let options = DecodeOptions::default();
    let mut truncated_ok = Vec::new();
    for path in &files {
        let data = std::fs::read(path).unwrap();
        let n = data.len();
        let mut variants: Vec<Vec<u8>> = Vec::new();
        for i in 1..16 {
            variants.push(data[..n * i / 16].to_vec());
        }
        variants.push(data[..n.saturating_sub(1)].to_vec());
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..12 {
            let mut v = data.clone();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = 16 + (state as usize) % n.saturating_sub(16).max(1);
                if at < n {
                    v[at] ^= (state >> 32) as u8 | 1;
                }
            }
            variants.push(v);
        }
        for (i, v) in variants.iter().enumerate() {
            // The path that decodes a JPEG only where the crop needs it: the same outcome kind
            // as the whole decode followed by preprocessing, and no panic either.
            let config = PreprocessConfig::default();
            let fused = catch_unwind(AssertUnwindSafe(|| {
                decode_and_preprocess(v, "variant", &options, &config)
            }));
            let whole = catch_unwind(AssertUnwindSafe(|| {
                decode(v, &options).and_then(|img| preprocess(&img, &config))
            }));
            match (fused, whole) {
                (Ok(Ok((a, _))), Ok(Ok(b))) => assert!(
                    a == b,
                    "{}: variant {i}: the two paths' values differ",
                    path.display()
                ),
                (Ok(Err(a)), Ok(Err(b))) => assert_eq!(
                    kind(&a),
                    kind(&b),
                    "{}: variant {i}: {a} / {b}",
                    path.display()
                ),
                (Ok(a), Ok(b)) => panic!(
                    "{}: variant {i}: {:?} / {:?}",
                    path.display(),
                    a.map(|_| ()),
                    b.map(|_| ())
                ),
                _ => panic!("{}: variant {i} panicked", path.display()),
            }
            let result = catch_unwind(AssertUnwindSafe(|| decode(v, &options)));
            match result {
                Err(_) => panic!("{}: variant {i} panicked", path.display()),
                Ok(Ok(img)) if i < 15 && v.len() * 10 < n * 9 => {
                    // A file cut well before its end decoded without error.
                    truncated_ok.push(format!(
                        "{} cut to {} of {n} bytes: {}x{}",
                        path.display(),
                        v.len(),
                        img.width,
                        img.height
                    ));
                }
                Ok(_) => {}
            }
        }
    }
    // Pillow refuses truncated pixel data; so must we (formats that store pixel data after
    // other chunks may legitimately decode only if the cut falls after the pixels).
    let unexpected: Vec<_> = truncated_ok
        .iter()
        .filter(|s| !s.contains(".bmp") && !s.contains(".tif"))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:#?}");
}

#[test]
fn invalid_rgb_images_and_sizes_are_errors() {
    assert!(matches!(
        RgbImage::new(2, 2, vec![0; 11]),
        Err(ImageError::InvalidImage { .. })
    ));
    assert!(matches!(
        RgbImage::new(0, 2, vec![]),
        Err(ImageError::InvalidImage { .. })
    ));
    let bad = RgbImage {
        width: 4,
        height: 4,
        data: vec![0; 5],
    };
    assert!(preprocess(&bad, &PreprocessConfig::default()).is_err());
    assert!(resize(&bad, 2, 2, Resample::Bicubic).is_err());
    assert!(center_crop(
        &bad,
        HeightWidth {
            height: 2,
            width: 2
        }
    )
    .is_err());

    let img = RgbImage::new(3, 2, vec![7; 18]).unwrap();
    assert!(matches!(
        resize(&img, 0, 5, Resample::Bilinear),
        Err(ImageError::Preprocess { .. })
    ));
    // A 1-pixel-high image with shortest edge 256 asks for a 768 x 256 resize: fine.
    let tall = preprocess(&img, &PreprocessConfig::default()).unwrap();
    assert_eq!(tall.shape, [3, 224, 224]);
    // An extreme aspect ratio that would need gigabytes is refused, not attempted.
    let line = RgbImage::new(60000, 1, vec![1; 180000]).unwrap();
    let err = preprocess(&line, &PreprocessConfig::default()).unwrap_err();
    assert!(err.to_string().contains("more than the limit"), "{err}");
    // A crop or a pad that would need gigabytes is refused, not attempted.
    for huge in [
        PreprocessConfig {
            crop_size: HeightWidth {
                height: 100_000,
                width: 100_000,
            },
            ..PreprocessConfig::default()
        },
        PreprocessConfig {
            do_pad: true,
            pad_size: Some(HeightWidth {
                height: 100_000,
                width: 100_000,
            }),
            ..PreprocessConfig::default()
        },
    ] {
        let err = preprocess(&img, &huge).unwrap_err();
        assert!(err.to_string().contains("than the limit"), "{err}");
    }
    // pad_size smaller than the image.
    let config = PreprocessConfig {
        do_pad: true,
        pad_size: Some(HeightWidth {
            height: 10,
            width: 10,
        }),
        ..PreprocessConfig::default()
    };
    assert!(matches!(
        preprocess(&img, &config),
        Err(ImageError::Preprocess { .. })
    ));
    // A resize to an empty size (transformers computes 0 here too).
    let config = PreprocessConfig {
        size: SizeSpec::MaxHeightWidth {
            max_height: 1,
            max_width: 100,
        },
        do_center_crop: false,
        ..PreprocessConfig::default()
    };
    let wide = RgbImage::new(30, 2, vec![0; 180]).unwrap();
    assert!(preprocess(&wide, &config).is_ok());
    let thin = RgbImage::new(1, 30, vec![0; 90]).unwrap();
    assert!(matches!(
        preprocess(&thin, &config),
        Err(ImageError::Preprocess { .. })
    ));
}

#[test]
fn errors_name_the_step_that_failed() {
    use dinov2_image::{decode, decode_file, DecodeOptions};
    let options = DecodeOptions::default();
    let missing = decode_file("/no/such/image.jpg", &options).unwrap_err();
    assert_eq!(missing.stage(), "read");
    let garbage = decode(b"not an image at all", &options).unwrap_err();
    assert_eq!(garbage.stage(), "decode");
    let empty = decode(b"", &options).unwrap_err();
    assert_eq!(empty.stage(), "decode");
}
