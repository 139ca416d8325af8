//! `decode_and_preprocess` decodes a JPEG only where the center crop's pixels come from; its
//! `pixel_values` must be those of `preprocess` over the whole decoded image, bit for bit, for
//! every layout libjpeg decodes differently (chroma subsampling, progressive, grey, CMYK), both
//! resize pass orders, crops that pad, reduced-scale decoding, and filters with and without a
//! region; and a file cut short must fail the same way.

use dinov2_image::{
    decode_and_preprocess, decode_sized, preprocess, DecodeOptions, HeightWidth, ImageError,
    PreprocessConfig, Resample, SizeSpec,
};
use mozjpeg::{ColorSpace, Compress};

/// Chroma layouts as (Cb, Cr) pixel sizes: 4:4:4, 4:2:2, 4:2:0, 4:4:0.
const SUBSAMPLINGS: [(u8, u8); 4] = [(1, 1), (2, 1), (2, 2), (1, 2)];

/// A photo-like test picture: smooth colour gradients with fine detail, so that a wrong
/// neighbour at a crop edge would change the upsampled chroma.
fn picture(width: usize, height: usize, channels: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9u32;
    let mut out = Vec::with_capacity(width * height * channels);
    for y in 0..height {
        for x in 0..width {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = (state >> 27) as usize;
            for c in 0..channels {
                let v = (x * (3 + c) + y * (5 - c) + noise * 4 + ((x / 7 + y / 5) % 3) * 40) % 256;
                out.push(v as u8);
            }
        }
    }
    out
}

/// `picture` encoded as a JPEG: `space` RGB, grey or CMYK; `chroma` the (Cb, Cr) sampling;
/// progressive or baseline.
fn jpeg(width: usize, height: usize, space: ColorSpace, chroma: u8, progressive: bool) -> Vec<u8> {
    let channels = match space {
        ColorSpace::JCS_GRAYSCALE => 1,
        ColorSpace::JCS_CMYK => 4,
        _ => 3,
    };
    let mut c = Compress::new(space);
    c.set_size(width, height);
    c.set_quality(88.0);
    if progressive {
        c.set_progressive_mode();
    } else {
        c.set_fastest_defaults();
    }
    if space == ColorSpace::JCS_RGB {
        let (h, v) = SUBSAMPLINGS[chroma as usize];
        c.set_chroma_sampling_pixel_sizes((h, v), (h, v));
    }
    let mut c = c.start_compress(Vec::new()).expect("compress");
    c.write_scanlines(&picture(width, height, channels))
        .expect("scanlines");
    c.finish().expect("finish")
}

fn config(size: SizeSpec, crop: (u32, u32), resample: Resample) -> PreprocessConfig {
    PreprocessConfig {
        size,
        crop_size: HeightWidth {
            height: crop.0,
            width: crop.1,
        },
        resample,
        ..PreprocessConfig::default()
    }
}

/// Compares the two paths on `bytes`; returns a description of the first difference.
fn compare(bytes: &[u8], options: &DecodeOptions, config: &PreprocessConfig) -> Option<String> {
    let (got, got_size) =
        decode_and_preprocess(bytes, "test.jpg", options, config).expect("crop-decodes");
    let whole = decode_sized(bytes, "test.jpg", options).expect("decodes");
    let want = preprocess(&whole.image, config).expect("preprocesses");
    if got.shape != want.shape || got_size != whole.file_size {
        return Some(format!(
            "shape {:?} / {:?}, size {got_size:?} / {:?}",
            got.shape, want.shape, whole.file_size
        ));
    }
    let at = (got.data.iter().zip(&want.data)).position(|(a, b)| a.to_bits() != b.to_bits())?;
    Some(format!(
        "value {at} differs: {} against {}",
        got.data[at], want.data[at]
    ))
}

#[test]
fn a_crop_decoded_jpeg_preprocesses_to_the_same_bits() {
    let default = PreprocessConfig::default();
    let configs = [
        default.clone(),
        // A smaller resize and an uneven crop; a crop that pads one axis; one that pads both.
        config(SizeSpec::ShortestEdge(200), (150, 180), Resample::Bicubic),
        config(SizeSpec::ShortestEdge(100), (120, 90), Resample::Bicubic),
        config(SizeSpec::ShortestEdge(64), (100, 100), Resample::Bicubic),
        // Other convolution filters (other tap counts), and the nearest filter (no region).
        config(SizeSpec::ShortestEdge(256), (224, 224), Resample::Lanczos),
        config(SizeSpec::ShortestEdge(256), (224, 224), Resample::Bilinear),
        config(SizeSpec::ShortestEdge(256), (224, 224), Resample::Nearest),
        // An exact size that changes the aspect ratio.
        config(
            SizeSpec::Exact {
                height: 300,
                width: 180,
            },
            (224, 160),
            Resample::Bicubic,
        ),
    ];
    // Landscape, portrait (vertical pass first at 300 x 1000), odd sizes, one smaller than the
    // crop, one a single iMCU wide.
    let sizes = [
        (397, 251),
        (251, 397),
        (300, 1000),
        (1001, 317),
        (150, 90),
        (16, 700),
    ];
    let options = DecodeOptions::default();
    let mut failures = Vec::new();
    for &(w, h) in &sizes {
        let mut files = Vec::new();
        for chroma in 0..SUBSAMPLINGS.len() as u8 {
            files.push((
                format!("rgb {chroma}"),
                jpeg(w, h, ColorSpace::JCS_RGB, chroma, false),
            ));
        }
        files.push((
            "progressive".into(),
            jpeg(w, h, ColorSpace::JCS_RGB, 2, true),
        ));
        files.push((
            "grey".into(),
            jpeg(w, h, ColorSpace::JCS_GRAYSCALE, 0, false),
        ));
        files.push(("cmyk".into(), jpeg(w, h, ColorSpace::JCS_CMYK, 0, false)));
        for (name, bytes) in &files {
            for (i, config) in configs.iter().enumerate() {
                if let Some(diff) = compare(bytes, &options, config) {
                    failures.push(format!("{w}x{h} {name}, config {i}: {diff}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_crop_decoded_draft_jpeg_preprocesses_to_the_same_bits() {
    let config = PreprocessConfig::default();
    let options = DecodeOptions {
        draft: Some(config.size),
        ..DecodeOptions::default()
    };
    // Decoded at 1/2, 1/4 and 1/8 scale.
    for (w, h) in [(1100, 800), (1500, 2100), (2300, 2100)] {
        for chroma in [0u8, 2] {
            let bytes = jpeg(w, h, ColorSpace::JCS_RGB, chroma, false);
            let diff = compare(&bytes, &options, &config);
            assert!(diff.is_none(), "{w}x{h} chroma {chroma}: {diff:?}");
        }
    }
}

#[test]
fn a_jpeg_cut_short_fails_as_the_whole_decode_does() {
    let config = PreprocessConfig::default();
    let options = DecodeOptions::default();
    let kind = |e: &ImageError| match e {
        ImageError::Truncated { .. } => "truncated",
        ImageError::Corrupt { .. } => "corrupt",
        _ => "other",
    };
    for progressive in [false, true] {
        let bytes = jpeg(640, 480, ColorSpace::JCS_RGB, 2, progressive);
        // Cut inside the rows the crop needs, and inside the rows below it only.
        for keep in [0.3, 0.6, 0.97, 0.995] {
            let cut = &bytes[..(bytes.len() as f64 * keep) as usize];
            let whole = decode_sized(cut, "cut.jpg", &options).expect_err("cut");
            let part = decode_and_preprocess(cut, "cut.jpg", &options, &config).expect_err("cut");
            assert_eq!(
                kind(&part),
                kind(&whole),
                "progressive {progressive}, kept {keep}: {part} / {whole}"
            );
        }
    }
}

#[test]
fn broken_fixture_files_fail_as_the_whole_decode_does() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/preprocess/broken");
    let config = PreprocessConfig::default();
    let options = DecodeOptions::default();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("the broken fixtures") {
        let path = entry.expect("an entry").path();
        let bytes = std::fs::read(&path).expect("readable");
        let whole = decode_sized(&bytes, "x", &options).and_then(|d| preprocess(&d.image, &config));
        let part = decode_and_preprocess(&bytes, "x", &options, &config);
        match (whole, part) {
            (Ok(a), Ok((b, _))) => assert!(a == b, "{}: values differ", path.display()),
            (Err(a), Err(b)) => assert_eq!(
                std::mem::discriminant(&a),
                std::mem::discriminant(&b),
                "{}: {a} / {b}",
                path.display()
            ),
            (a, b) => panic!("{}: {a:?} / {:?}", path.display(), b.map(|v| v.1)),
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} files");
}
