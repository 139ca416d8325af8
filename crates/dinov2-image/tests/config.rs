//! `preprocessor_config.json` parsing: the facebook/dinov2 file, every fixture variant, the
//! transformers rules for missing keys and legacy forms, and errors that name the field.

mod common;

use common::fixtures;
use dinov2_image::{
    HeightWidth, ImageError, PreprocessConfig, Resample, Resolution, SizeSpec, IMAGENET_MEAN,
    IMAGENET_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
};

/// The file shipped with facebook/dinov2-small/base/large/giant.
const DINOV2_JSON: &str = r#"{
  "crop_size": {"height": 224, "width": 224},
  "do_center_crop": true,
  "do_convert_rgb": true,
  "do_normalize": true,
  "do_rescale": true,
  "do_resize": true,
  "image_mean": [0.485, 0.456, 0.406],
  "image_processor_type": "BitImageProcessor",
  "image_std": [0.229, 0.224, 0.225],
  "resample": 3,
  "rescale_factor": 0.00392156862745098,
  "size": {"shortest_edge": 256}
}"#;

#[test]
fn dinov2_file_is_the_default() {
    let config = PreprocessConfig::from_json(DINOV2_JSON).unwrap();
    assert_eq!(config, PreprocessConfig::default());
    assert_eq!(config.rescale_factor, 1.0 / 255.0);
    assert_eq!(config.image_mean, IMAGENET_MEAN);
    assert_eq!(config.image_std, IMAGENET_STD);
}

#[test]
fn every_fixture_config_parses() {
    let dir = fixtures().join("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        PreprocessConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
        n += 1;
    }
    assert!(n >= 30, "{n} configs");
}

#[test]
fn every_fixture_config_is_written_back_as_it_reads() {
    for entry in std::fs::read_dir(fixtures().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        let config = PreprocessConfig::from_file(&path).unwrap();
        let again = PreprocessConfig::from_json(&config.to_json())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(again, config, "{}", path.display());
    }
    let default: serde_json::Value =
        serde_json::from_str(&PreprocessConfig::default().to_json()).unwrap();
    let dinov2: serde_json::Value = serde_json::from_str(DINOV2_JSON).unwrap();
    for (key, value) in dinov2.as_object().unwrap() {
        assert_eq!(&default[key], value, "{key}");
    }
}

#[test]
fn missing_keys_take_the_bit_image_processor_class_defaults() {
    let config =
        PreprocessConfig::from_json(r#"{"image_processor_type": "BitImageProcessor"}"#).unwrap();
    assert_eq!(config, PreprocessConfig::bit_image_processor_defaults());
    assert_eq!(config.size, SizeSpec::ShortestEdge(224));
    assert_eq!(config.image_mean, OPENAI_CLIP_MEAN);
    assert_eq!(config.image_std, OPENAI_CLIP_STD);
    // null is the same as missing
    let config = PreprocessConfig::from_json(r#"{"image_mean": null, "do_resize": null}"#).unwrap();
    assert_eq!(config, PreprocessConfig::bit_image_processor_defaults());
}

#[test]
fn legacy_and_alternative_forms() {
    let c = PreprocessConfig::from_json(
        r#"{"size": 256, "crop_size": 224, "use_square_size": true, "processor_class": "X",
            "image_mean": 0.5, "image_std": [1, 2, 4], "resample": 2}"#,
    )
    .unwrap();
    assert_eq!(c.size, SizeSpec::ShortestEdge(256));
    assert_eq!(
        c.crop_size,
        HeightWidth {
            height: 224,
            width: 224
        }
    );
    assert_eq!(c.image_mean, [0.5; 3]);
    assert_eq!(c.image_std, [1.0, 2.0, 4.0]);
    assert_eq!(c.resample, Resample::Bilinear);

    let c = PreprocessConfig::from_json(r#"{"size": 100, "default_to_square": true}"#).unwrap();
    assert_eq!(
        c.size,
        SizeSpec::Exact {
            height: 100,
            width: 100
        }
    );
    let c = PreprocessConfig::from_json(r#"{"size": [300, 200], "crop_size": [10, 20]}"#).unwrap();
    assert_eq!(
        c.size,
        SizeSpec::Exact {
            height: 300,
            width: 200
        }
    );
    assert_eq!(
        c.crop_size,
        HeightWidth {
            height: 10,
            width: 20
        }
    );
    let c = PreprocessConfig::from_json(r#"{"size": {"shortest_edge": 8, "longest_edge": 9}}"#)
        .unwrap();
    assert_eq!(
        c.size,
        SizeSpec::ShortestLongest {
            shortest_edge: 8,
            longest_edge: 9
        }
    );
    let c = PreprocessConfig::from_json(r#"{"size": {"max_height": 8, "max_width": 9}}"#).unwrap();
    assert_eq!(
        c.size,
        SizeSpec::MaxHeightWidth {
            max_height: 8,
            max_width: 9
        }
    );
    let c =
        PreprocessConfig::from_json(r#"{"do_pad": true, "pad_size": {"height": 5, "width": 6}}"#)
            .unwrap();
    assert!(c.do_pad);
    assert_eq!(
        c.pad_size,
        Some(HeightWidth {
            height: 5,
            width: 6
        })
    );
    for (code, filter) in [
        (0, Resample::Nearest),
        (1, Resample::Lanczos),
        (4, Resample::Box),
        (5, Resample::Hamming),
        (6, Resample::Mks2013),
        (7, Resample::Mks2021),
    ] {
        let c = PreprocessConfig::from_json(&format!(r#"{{"resample": {code}}}"#)).unwrap();
        assert_eq!(c.resample, filter);
        assert_eq!(filter.code(), code);
    }
}

fn field_error(json: &str) -> (String, String) {
    match PreprocessConfig::from_json(json) {
        Err(err @ ImageError::ConfigField { .. }) => {
            let text = err.to_string();
            let ImageError::ConfigField { field, .. } = err else {
                unreachable!()
            };
            (field, text)
        }
        other => panic!("{json}: expected a field error, got {other:?}"),
    }
}

#[test]
fn invalid_values_name_the_field() {
    for (json, field, found) in [
        (r#"{"size": {"height": 10}}"#, "size", r#"{"height":10}"#),
        (r#"{"size": {"longest_edge": 10}}"#, "size", "longest_edge"),
        (
            r#"{"size": {"shortest_edge": 0}}"#,
            "size.shortest_edge",
            "0",
        ),
        (r#"{"size": -3}"#, "size", "-3"),
        (r#"{"size": [1, 2, 3]}"#, "size", "[1,2,3]"),
        (r#"{"resample": 9}"#, "resample", "9"),
        (r#"{"resample": "bicubic"}"#, "resample", "\"bicubic\""),
        (r#"{"crop_size": "abc"}"#, "crop_size", "\"abc\""),
        (
            r#"{"crop_size": {"height": 5, "width": 2.5}}"#,
            "crop_size.width",
            "2.5",
        ),
        (r#"{"image_mean": [1, 2]}"#, "image_mean", "[1,2]"),
        (r#"{"image_std": [0.1, "x", 0.2]}"#, "image_std", "\"x\""),
        (r#"{"image_std": [0, 1, 1]}"#, "image_std", "[0,1,1]"),
        (
            r#"{"rescale_factor": "1/255"}"#,
            "rescale_factor",
            "\"1/255\"",
        ),
        (r#"{"do_resize": "yes"}"#, "do_resize", "\"yes\""),
        (r#"{"do_normalize": 1}"#, "do_normalize", "1"),
        (r#"{"do_pad": true}"#, "pad_size", "null"),
        (
            r#"{"do_pad": true, "pad_size": {"shortest_edge": 3}}"#,
            "pad_size",
            "shortest_edge",
        ),
        (
            r#"{"default_to_square": "no"}"#,
            "default_to_square",
            "\"no\"",
        ),
    ] {
        let (got, text) = field_error(json);
        assert_eq!(got, field, "{json}: {text}");
        assert!(text.contains(&format!("field `{field}`")), "{text}");
        assert!(
            text.contains("expected") && text.contains(found),
            "{json}: {text}"
        );
        assert!(text.contains("in-memory preprocessor config"), "{text}");
    }
}

#[test]
fn syntax_errors_and_files() {
    for json in ["", "{", "[1, 2]", "\"text\"", "{\"size\": 1,}"] {
        let err = PreprocessConfig::from_json(json).unwrap_err();
        assert!(
            matches!(err, ImageError::ConfigSyntax { .. }),
            "{json}: {err}"
        );
        assert!(err.to_string().contains("expected a JSON object"), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preprocessor_config.json");
    std::fs::write(&path, r#"{"crop_size": {"height": -1, "width": 3}}"#).unwrap();
    let err = PreprocessConfig::from_file(&path).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string()) && text.contains("crop_size.height"),
        "{text}"
    );
    let missing = dir.path().join("nope.json");
    let err = PreprocessConfig::from_file(&missing).unwrap_err();
    assert!(
        matches!(err, ImageError::Io { .. }) && err.to_string().contains("nope.json"),
        "{err}"
    );
}

#[test]
fn resolution_overrides_are_checked_against_the_patch() {
    let base = PreprocessConfig::default();
    let larger = Resolution {
        resize: Some(512),
        crop: Some(HeightWidth {
            height: 448,
            width: 336,
        }),
        no_crop: false,
    };
    let c = base.clone().with_resolution(&larger, 14).unwrap();
    assert_eq!(c.size, SizeSpec::ShortestEdge(512));
    assert_eq!((c.crop_size.height, c.crop_size.width), (448, 336));
    assert!(c.do_center_crop && c.do_resize);
    let whole = Resolution {
        no_crop: true,
        ..Resolution::default()
    };
    assert!(
        !base
            .clone()
            .with_resolution(&whole, 14)
            .unwrap()
            .do_center_crop
    );
    assert_eq!(
        base.clone()
            .with_resolution(&Resolution::default(), 14)
            .unwrap(),
        base
    );

    let refused = |r: Resolution, want: &str| {
        let e = base.clone().with_resolution(&r, 14).unwrap_err();
        assert!(matches!(e, ImageError::Resolution { .. }), "{e:?}");
        assert!(e.to_string().contains(want), "{e}");
        assert_eq!(e.stage(), "config");
    };
    let crop = |height, width| Resolution {
        crop: Some(HeightWidth { height, width }),
        ..Resolution::default()
    };
    refused(
        crop(13, 224),
        "center crop 13x224: smaller than one 14x14 patch",
    );
    refused(crop(100_000, 100_000), "more pixels than the limit");
    refused(
        Resolution {
            resize: Some(10),
            no_crop: true,
            crop: None,
        },
        "shortest edge 10",
    );
}
