//! Criterion benchmarks of the image side of `dinov2 embed` on the CPU (`dinov2-image`): JPEG
//! decoding, Pillow's bicubic resize to a 256-pixel shortest edge, the whole DINOv2
//! preprocessing (resize, 224 center crop, rescale, normalize), and both as `dinov2 embed` runs
//! them (`decode_and_preprocess`: a JPEG decoded only where the crop needs it), per image, on
//! one thread, and the same with JPEGs decoded at reduced scale (`DecodeOptions::draft`,
//! `dinov2 embed --draft`).
//! Inputs are photographs: the shipped `rocket.jpg` (640 x 427) and the same picture upscaled to
//! 2048 x 1366 and 4032 x 2689 (a 12-megapixel phone photo's width) and re-encoded (quality 90,
//! 4:2:0) at start-up; and the shipped PNGs (512 x 512 RGB and grey, 451 x 300 RGB).
//!
//! ```sh
//! cargo bench --bench preprocess -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use dinov2::image::{
    decode, decode_and_preprocess, preprocess, resize, resize_output_size, DecodeOptions,
    PreprocessConfig, Resample, RgbImage, SizeSpec,
};

/// The shipped photograph, and the same picture at each of `widths` pixels wide as a JPEG.
fn photos(widths: &[u32]) -> Vec<(String, Vec<u8>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/images/rocket.jpg");
    let original = std::fs::read(path).expect("assets/images/rocket.jpg");
    let image = decode(&original, &DecodeOptions::default()).expect("a JPEG");
    let mut out = vec![(format!("{}x{}", image.width, image.height), original)];
    for &width in widths {
        let height = (image.height as u64 * width as u64 / image.width as u64) as u32;
        let big = resize(&image, width, height, Resample::Bicubic).expect("upscale");
        let jpeg = (|| -> std::io::Result<_> {
            let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
            c.set_size(width as usize, height as usize);
            c.set_quality(90.0);
            let mut c = c.start_compress(Vec::new())?;
            c.write_scanlines(&big.data)?;
            c.finish()
        })()
        .expect("JPEG encoding");
        out.push((format!("{width}x{height}"), jpeg));
    }
    out
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("preprocess");
    g.throughput(Throughput::Elements(1));
    let options = DecodeOptions::default();
    let config = PreprocessConfig::default();
    let draft = DecodeOptions {
        draft: Some(config.size),
        ..DecodeOptions::default()
    };
    // What a worker of `dinov2 embed` does with each file's bytes (a JPEG is decoded only where
    // the crop's pixels come from).
    let decode_and_preprocess = |bytes: &[u8], options: &DecodeOptions| {
        decode_and_preprocess(black_box(bytes), "bench", options, &config).expect("preprocesses")
    };
    for (name, jpeg) in photos(&[2048, 4032]) {
        let image: RgbImage = decode(&jpeg, &options).expect("decodes");
        let (h, w) = resize_output_size(image.height, image.width, &SizeSpec::ShortestEdge(256))
            .expect("a size");
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| decode(black_box(&jpeg), &options).expect("decodes"))
        });
        g.bench_function(format!("resize_bicubic_to_{w}x{h}/{name}"), |b| {
            b.iter(|| resize(black_box(&image), w, h, Resample::Bicubic).expect("resizes"))
        });
        g.bench_function(format!("preprocess/{name}"), |b| {
            b.iter(|| preprocess(black_box(&image), &config).expect("preprocesses"))
        });
        g.bench_function(format!("decode_and_preprocess/{name}"), |b| {
            b.iter(|| decode_and_preprocess(&jpeg, &options))
        });
        g.bench_function(format!("draft_decode_and_preprocess/{name}"), |b| {
            b.iter(|| decode_and_preprocess(&jpeg, &draft))
        });
    }
    // The shipped PNGs: Pillow's mode conversions, and zlib instead of the DCT.
    for name in ["astronaut.png", "camera.png", "chelsea.png"] {
        let path = format!("{}/assets/images/{name}", env!("CARGO_MANIFEST_DIR"));
        let png = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| decode(black_box(&png), &options).expect("decodes"))
        });
        g.bench_function(format!("decode_and_preprocess/{name}"), |b| {
            b.iter(|| decode_and_preprocess(&png, &options))
        });
    }
    g.finish();
    c.final_summary();
}
