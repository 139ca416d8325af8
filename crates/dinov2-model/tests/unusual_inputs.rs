//! Configs that parse but no released checkpoint has (a field at 0, 1 or far out of range, another
//! activation, registers, SwiGLU, a head of many labels), each built with random weights on the
//! CPU and run on good and bad inputs: pixels of every wrong shape (overflowing ones included),
//! masks and labels of the wrong length or type. Every call gives its outputs or an error that
//! names the config field or the input at fault, and nothing panics.

use std::panic::{catch_unwind, AssertUnwindSafe};

use dinov2_checkpoint::{expected_tensors, Dinov2Config};
use dinov2_model::{CpuBackend, Dinov2, Dtype, ForwardOptions, Labels, Tensor};
use serde_json::{json, Value};

/// The sample checkpoint's config: ViT with hidden size 48, 3 heads, 2 layers, patch 14.
fn sample_config() -> serde_json::Map<String, Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../assets/models/dinov2-tiny-random/config.json"
    );
    let text = std::fs::read_to_string(path).expect("the sample model's config");
    match serde_json::from_str(&text).expect("JSON") {
        Value::Object(map) => map,
        _ => panic!("{path}: not an object"),
    }
}

/// Checks one call's outcome: fine, or an error naming the input; records what is not.
fn outcome<T>(what: &str, result: dinov2_model::Result<T>, problems: &mut Vec<String>) {
    if let Err(e) = result {
        let message = e.to_string();
        let named = [
            "`pixel_values`",
            "`labels`",
            "`bool_masked_pos`",
            "classification head",
        ]
        .iter()
        .any(|name| message.contains(name));
        if !named {
            problems.push(format!("{what}: an error that names no input: {message}"));
        }
    }
}

/// Checks a call that must fail: an error naming the input; records a success or an error that
/// names nothing.
fn refused<T>(what: &str, result: dinov2_model::Result<T>, problems: &mut Vec<String>) {
    match result {
        Ok(_) => problems.push(format!("{what}: no error")),
        Err(e) => outcome(what, Err::<(), _>(e), problems),
    }
}

/// Runs the model of `config` on inputs good and bad; records errors that name nothing.
fn exercise(config: &Dinov2Config, problems: &mut Vec<String>) {
    let model = match Dinov2::random(CpuBackend::new(Dtype::F32).unwrap(), config, 1) {
        Ok(model) => model,
        Err(e) => return problems.push(format!("random weights: {e}")),
    };
    let (p, c) = (config.patch_size, config.num_channels);
    let all = ForwardOptions {
        hidden_states: true,
        attentions: true,
        ..Default::default()
    };
    for (h, w) in [(2 * p + 3, p), (p - 1, p)] {
        let b = 2;
        let n = b * c * h * w;
        let values = (0..n).map(|i| (i % 17) as f32 / 17.0).collect();
        let pixels = Tensor::new(vec![b, c, h, w], values).unwrap();
        let patches = (h / p) * (w / p);
        let mask: Vec<bool> = (0..b * patches).map(|i| i % 2 == 0).collect();
        for opts in [ForwardOptions::default(), all] {
            outcome("forward", model.forward(&pixels, None, &opts), problems);
            outcome(
                "masked",
                model.forward(&pixels, Some(&mask), &opts),
                problems,
            );
        }
        outcome("backbone", model.backbone(&pixels, &all), problems);
        let labels = [
            Labels::Classes(vec![0; b]),
            Labels::Classes(vec![-100; b]),
            Labels::Classes(vec![5000; b]),
            Labels::Classes(vec![-7; b]),
            Labels::Classes(vec![]),
            Labels::Targets(Tensor::zeros(vec![b])),
            Labels::Targets(Tensor::zeros(vec![b, config.num_labels()])),
            Labels::Targets(Tensor::zeros(vec![b + 1, 3])),
            Labels::Targets(Tensor::zeros(vec![])),
        ];
        outcome("classify", model.classify(&pixels, None, &all), problems);
        for labels in &labels {
            let result = model.classify(&pixels, Some(labels), &ForwardOptions::default());
            outcome("classify with labels", result, problems);
        }
    }
    let huge = usize::MAX / 2 + 3;
    for shape in [
        vec![],
        vec![1, c, p, p, 1],
        vec![1, c + 1, p, p],
        vec![0, c, p, p],
        vec![1, c, 0, p],
        vec![huge, 2, 2, 2],
        vec![1 << 32, 1 << 32, 0, 1],
        vec![1 << 33, 1 << 33, c, 1],
    ] {
        let pixels = Tensor {
            shape,
            data: vec![],
        };
        for opts in [ForwardOptions::default(), all] {
            let what = format!("pixels {:?}", pixels.shape);
            refused(&what, model.forward(&pixels, None, &opts), problems);
        }
    }
    let pixels = Tensor::zeros(vec![1, c, p, p]);
    for mask in [vec![], vec![true; 5]] {
        let result = model.forward(&pixels, Some(&mask), &ForwardOptions::default());
        refused(&format!("a mask of {}", mask.len()), result, problems);
    }
    for shape in [vec![huge, 4], vec![1 << 32, 1 << 32]] {
        let labels = Labels::Targets(Tensor {
            shape,
            data: vec![],
        });
        let result = model.classify(&pixels, Some(&labels), &ForwardOptions::default());
        refused("targets of an overflowing shape", result, problems);
    }
}

#[test]
fn unusual_configs_and_bad_inputs_give_outputs_or_errors_never_panics() {
    let values = [
        json!(0),
        json!(1),
        json!(-1),
        json!(2),
        json!(7),
        json!(1e-30),
        json!(0.5),
        json!(1e30),
        json!(u64::MAX),
        json!(null),
        json!("x"),
        json!([]),
        json!(true),
        json!([1, 2]),
        json!([-1]),
        json!(["stem"]),
        json!({"0": "a", "1": "b", "2": "c"}),
        json!("relu6"),
        json!("regression"),
        json!("multi_label_classification"),
        json!("dinov2_with_registers"),
    ];
    let sample = sample_config();
    let fields = sample.keys().cloned().chain(
        [
            "head_dim",
            "num_register_tokens",
            "id2label",
            "num_labels",
            "problem_type",
        ]
        .map(String::from),
    );
    let (mut built, mut refused, mut panics, mut problems) = (0, 0, Vec::new(), Vec::new());
    for field in fields {
        for value in &values {
            let mut config = sample.clone();
            config.insert(field.clone(), value.clone());
            let config = Value::Object(config);
            let run = catch_unwind(AssertUnwindSafe(|| {
                let config = match Dinov2Config::from_json(&config) {
                    Ok(config) => config,
                    Err(e) => return Err(e.to_string()),
                };
                let _ = expected_tensors(&config);
                let mut found = Vec::new();
                exercise(&config, &mut found);
                Ok(found)
            }));
            match run {
                Ok(Ok(found)) => {
                    built += 1;
                    problems.extend(found.into_iter().map(|p| format!("{field}={value}: {p}")));
                }
                Ok(Err(message)) => {
                    refused += 1;
                    // The field itself, or the one it contradicts (out_features past the
                    // last layer, hidden_size not divisible by the heads).
                    if !message.contains("config field `") {
                        problems.push(format!("{field}={value}: refused naming {message}"));
                    }
                }
                Err(_) => panics.push(format!("{field}={value}")),
            }
        }
    }
    assert!(panics.is_empty(), "panicked: {}", panics.join(", "));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The sweep must reach the model, not stop at the parser.
    assert!(
        built >= 100 && refused >= 100,
        "{built} built, {refused} refused"
    );
}
