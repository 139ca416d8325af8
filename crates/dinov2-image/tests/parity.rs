//! Parity with transformers 5.17.0 `BitImageProcessorPil` + Pillow 13.0.0 on every fixture case
//! of `tests/fixtures/preprocess/cases.json`: the decoded RGB image (Pillow's
//! `convert("RGB")`), the intermediate resized 8-bit image and the float32 `pixel_values`.
//!
//! Each test walks all cases and reports every mismatch before failing, so one run shows the
//! whole picture.

mod common;

use common::{crc32, describe_u8_diff, fixtures, manifest, Expected};
use dinov2_image::{
    decode_file, load_and_preprocess, preprocess, resize, resize_output_size, DecodeOptions,
    PreprocessConfig, RgbImage, SizeSpec,
};
use serde_json::Value;

const TOLERANCE: f32 = 1e-6;

struct Case {
    name: String,
    image: std::path::PathBuf,
    config: PreprocessConfig,
    options: DecodeOptions,
    json: Value,
}

fn cases() -> Vec<Case> {
    let manifest = manifest();
    let list = manifest["cases"].as_array().expect("cases");
    assert!(
        list.len() >= 80,
        "expected the full case list, found {}",
        list.len()
    );
    list.iter()
        .map(|c| {
            let name = c["name"].as_str().expect("name").to_string();
            let config_path = fixtures().join(c["config"].as_str().expect("config"));
            let config =
                PreprocessConfig::from_file(&config_path).unwrap_or_else(|e| panic!("{name}: {e}"));
            let flag = |key: &str| c["decode"][key].as_bool().unwrap_or(false);
            let options = DecodeOptions {
                apply_exif_orientation: flag("apply_exif_orientation"),
                // Pillow's draft for this config's resize (the fixture script's `open_image`).
                draft: flag("draft").then_some(config.size),
                ..DecodeOptions::default()
            };
            Case {
                name,
                image: fixtures().join(c["image"].as_str().expect("image")),
                config,
                options,
                json: c.clone(),
            }
        })
        .collect()
}

fn decode_case(case: &Case) -> Result<RgbImage, String> {
    decode_file(&case.image, &case.options)
        .map_err(|e| format!("{}: decode failed: {e}", case.name))
}

#[test]
fn decoded_rgb_matches_pillow() {
    let mut failures = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for case in cases() {
        let img = match decode_case(&case) {
            Ok(img) => img,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let (w, h) = (
            case.json["width"].as_u64().unwrap(),
            case.json["height"].as_u64().unwrap(),
        );
        if (img.width as u64, img.height as u64) != (w, h) {
            failures.push(format!(
                "{}: size {}x{}, Pillow {w}x{h}",
                case.name, img.width, img.height
            ));
            continue;
        }
        let expected = Expected::load(&case.name);
        if let Some((shape, data)) = expected.u8("rgb") {
            assert_eq!(shape, vec![h as usize, w as usize, 3]);
            if let Some(diff) = describe_u8_diff(&img.data, &data) {
                failures.push(format!(
                    "{} ({}, Pillow mode {}): {diff}",
                    case.name, case.json["image"], case.json["pil_mode"]
                ));
                continue;
            }
        }
        if crc32(&img.data) as u64 != case.json["rgb_crc32"].as_u64().unwrap() {
            failures.push(format!(
                "{} ({}, Pillow mode {}): CRC-32 of the decoded RGB differs from Pillow's",
                case.name, case.json["image"], case.json["pil_mode"]
            ));
        }
        seen.insert(case.json["image"].as_str().unwrap().to_string());
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(seen.len() >= 55, "only {} images checked", seen.len());
}

#[test]
fn resized_image_matches_pillow() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases() {
        let Some(shape) = case.json["resized_shape"].as_array() else {
            continue;
        };
        let shape: Vec<u32> = shape.iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let img = match decode_case(&case) {
            Ok(img) => img,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let (oh, ow) = match resize_output_size(img.height, img.width, &case.config.size) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{}: {e}", case.name));
                continue;
            }
        };
        if (oh, ow) != (shape[0], shape[1]) {
            failures.push(format!(
                "{}: output size {oh}x{ow}, transformers {}x{}",
                case.name, shape[0], shape[1]
            ));
            continue;
        }
        let out = resize(&img, ow, oh, case.config.resample).expect("resize");
        let expected = Expected::load(&case.name);
        if let Some((_, data)) = expected.u8("resized") {
            if let Some(diff) = describe_u8_diff(&out.data, &data) {
                failures.push(format!(
                    "{} ({:?} {}x{} -> {ow}x{oh}): {diff}",
                    case.name, case.config.resample, img.width, img.height
                ));
                continue;
            }
        }
        if crc32(&out.data) as u64 != case.json["resized_crc32"].as_u64().unwrap() {
            failures.push(format!(
                "{} ({:?} {}x{} -> {ow}x{oh}): CRC-32 of the resized image differs from Pillow's",
                case.name, case.config.resample, img.width, img.height
            ));
        }
        checked += 1;
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= 80, "only {checked} resized images checked");
}

#[test]
fn pixel_values_match_transformers() {
    let mut failures = Vec::new();
    let mut worst = 0f32;
    for case in cases() {
        let img = match decode_case(&case) {
            Ok(img) => img,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let ours = match preprocess(&img, &case.config) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{}: preprocess failed: {e}", case.name));
                continue;
            }
        };
        // The path that decodes a JPEG only where the crop needs it gives the same bits.
        match load_and_preprocess(&case.image, &case.options, &case.config) {
            Ok((fused, _)) if fused == ours => {}
            Ok(_) => failures.push(format!(
                "{}: load_and_preprocess differs from preprocess of the decoded image",
                case.name
            )),
            Err(e) => failures.push(format!("{}: load_and_preprocess failed: {e}", case.name)),
        }
        let (shape, data) = Expected::load(&case.name).f32("pixel_values");
        if ours.shape.to_vec() != shape {
            failures.push(format!(
                "{}: shape {:?}, transformers {shape:?}",
                case.name, ours.shape
            ));
            continue;
        }
        let max = ours
            .data
            .iter()
            .zip(&data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        worst = worst.max(max);
        if max > TOLERANCE || ours.data.iter().any(|v| !v.is_finite()) {
            failures.push(format!("{}: max |diff| {max}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("pixel_values: worst max |diff| over all cases {worst}");
}

#[test]
fn load_and_preprocess_matches_transformers_on_a_sample_photo() {
    let case = cases()
        .into_iter()
        .find(|c| c.name == "asset_astronaut_jpg_dinov2")
        .expect("the astronaut case");
    assert_eq!(
        case.config,
        PreprocessConfig::default(),
        "dinov2.json is the default config"
    );
    let (values, size) =
        load_and_preprocess(&case.image, &DecodeOptions::default(), &case.config).unwrap();
    assert_eq!(size, (512, 512));
    assert_eq!(values.shape, [3, 224, 224]);
    let (_, expected) = Expected::load(&case.name).f32("pixel_values");
    let max = values
        .data
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max <= TOLERANCE, "max |diff| {max}");
}

#[test]
fn resize_output_sizes_match_transformers() {
    let manifest = manifest();
    let table = manifest["output_sizes"].as_array().expect("output_sizes");
    assert!(table.len() > 100);
    let mut failures = Vec::new();
    for row in table {
        let h = row["height"].as_u64().unwrap() as u32;
        let w = row["width"].as_u64().unwrap() as u32;
        let size = &row["size"];
        let get = |k: &str| size.get(k).and_then(Value::as_u64).map(|v| v as u32);
        let spec = match (
            get("shortest_edge"),
            get("longest_edge"),
            get("height"),
            get("max_height"),
        ) {
            (Some(s), Some(l), _, _) => SizeSpec::ShortestLongest {
                shortest_edge: s,
                longest_edge: l,
            },
            (Some(s), None, _, _) => SizeSpec::ShortestEdge(s),
            (_, _, Some(height), _) => SizeSpec::Exact {
                height,
                width: get("width").unwrap(),
            },
            (_, _, _, Some(max_height)) => SizeSpec::MaxHeightWidth {
                max_height,
                max_width: get("max_width").unwrap(),
            },
            _ => panic!("unknown size {size}"),
        };
        let expected = (
            row["expected"][0].as_u64().unwrap() as u32,
            row["expected"][1].as_u64().unwrap() as u32,
        );
        match resize_output_size(h, w, &spec) {
            Ok(got) if got == expected => {}
            Ok(got) => failures.push(format!(
                "{h}x{w} {size}: {got:?}, transformers {expected:?}"
            )),
            // transformers computes an empty size here too; PIL would then refuse to resize.
            Err(_) if expected.0 == 0 || expected.1 == 0 => {}
            Err(e) => failures.push(format!("{h}x{w} {size}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
