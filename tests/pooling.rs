//! `Dinov2::embed` pools on the backend (`Backend::pool`) and copies back only the vectors; it must
//! give exactly what the host pooling (`pool`) gives over the full `forward` output, for every
//! pooling, with and without normalization, with and without register tokens, on square and
//! non-square inputs, and through the `Embedder`.

mod common;

use common::golden_dir;
use dinov2::io::read_forward_inputs;
use dinov2::{
    pool, pool_tokens, Backend, Checkpoint, CpuBackend, Dinov2, Embedder, ForwardOptions, Pooling,
    Tensor,
};

const POOLINGS: [Pooling; 4] = [
    Pooling::Cls,
    Pooling::Mean,
    Pooling::ClsMean,
    Pooling::Patch,
];

fn model(case: &str) -> Dinov2<CpuBackend> {
    Dinov2::load(
        CpuBackend,
        &Checkpoint::open(golden_dir().join(case)).unwrap(),
    )
    .unwrap()
}

fn pixels(case: &str, run: &str) -> Tensor {
    read_forward_inputs(
        &golden_dir()
            .join(case)
            .join(format!("{run}.inputs.safetensors")),
    )
    .unwrap()
    .pixel_values
}

#[test]
fn backend_pooling_equals_host_pooling() {
    for (case, run) in [
        ("dinov2_mlp", "rect24x40_mask"),
        ("registers_mlp", "sq32"),
        ("registers_mlp", "up44x36"),
    ] {
        let model = model(case);
        let px = pixels(case, run);
        let config = model.config();
        let prefix = config.num_prefix_tokens();
        let p = config.patch_size;
        let grid = (px.shape[2] / p, px.shape[3] / p);
        let full = model
            .forward(&px, None, &ForwardOptions::default())
            .unwrap();
        for pooling in POOLINGS {
            for normalize in [false, true] {
                let host = pool(&full, prefix, grid, pooling, normalize);
                let device = model.embed(&px, pooling, normalize).unwrap();
                assert_eq!(device, host, "{case}/{run} {pooling} normalize={normalize}");
                assert_eq!(device.len(), px.shape[0]);
            }
        }
        // The backend operation on its own, from the uploaded tokens.
        let be = model.backend();
        let tokens = be.upload(&full.last_hidden_state).unwrap();
        for pooling in POOLINGS {
            assert_eq!(
                be.pool(&tokens, prefix, pooling).unwrap(),
                pool_tokens(&full.last_hidden_state, prefix, pooling),
                "{case}/{run} {pooling}"
            );
        }
        // CLS pooling is `pooler_output`.
        let cls = model.embed(&px, Pooling::Cls, false).unwrap();
        let flat: Vec<f32> = cls.into_iter().flat_map(|e| e.values).collect();
        assert_eq!(flat, full.pooler_output.data, "{case}/{run}");
    }
}

#[test]
fn embedder_uses_the_backend_pooling() {
    let case = "registers_mlp";
    let px = pixels(case, "sq32");
    let [b, c, h, w] = px.shape[..] else {
        panic!("4-d pixels")
    };
    let images: Vec<dinov2::image::PixelValues> = (0..b)
        .map(|i| dinov2::image::PixelValues {
            shape: [c, h, w],
            data: px.data[i * c * h * w..(i + 1) * c * h * w].to_vec(),
        })
        .collect();
    for pooling in POOLINGS {
        let embedder = Embedder::new(model(case), Default::default())
            .with_pooling(pooling)
            .with_normalize(true);
        let got = embedder.embed_prepared(&images).unwrap();
        let want = model(case).embed(&px, pooling, true).unwrap();
        assert_eq!(got, want, "{pooling}");
    }
}

/// `embed_layers`: the last layer with the final norm is `embed`; an intermediate layer without
/// it is that hidden state pooled, with it that hidden state through the final LayerNorm; layers
/// come out concatenated in the order asked (per patch for patch pooling); bad layers are errors.
#[test]
fn intermediate_layers_pool_the_hidden_states() {
    for (case, run) in [
        ("dinov2_mlp", "rect24x40_mask"),
        ("registers_mlp", "up44x36"),
    ] {
        let checkpoint = Checkpoint::open(golden_dir().join(case)).unwrap();
        let model = Dinov2::load(CpuBackend, &checkpoint).unwrap();
        let px = pixels(case, run);
        let config = model.config().clone();
        let (depth, h, prefix) = (
            config.num_hidden_layers,
            config.hidden_size,
            config.num_prefix_tokens(),
        );
        for pooling in POOLINGS {
            for normalize in [false, true] {
                assert_eq!(
                    model
                        .embed_layers(&px, &[depth], true, pooling, normalize)
                        .unwrap(),
                    model.embed(&px, pooling, normalize).unwrap(),
                    "{case} {pooling} normalize={normalize}"
                );
            }
        }
        let opts = ForwardOptions {
            hidden_states: true,
            ..ForwardOptions::default()
        };
        let hidden = model
            .forward(&px, None, &opts)
            .unwrap()
            .hidden_states
            .unwrap();
        let norm = |name: &str| {
            checkpoint
                .weights
                .require(&format!("layernorm.{name}"))
                .or_else(|_| {
                    checkpoint
                        .weights
                        .require(&format!("dinov2.layernorm.{name}"))
                })
                .or_else(|_| {
                    checkpoint
                        .weights
                        .require(&format!("dinov2_with_registers.layernorm.{name}"))
                })
                .unwrap()
                .to_f32()
        };
        let (w, b) = (norm("weight"), norm("bias"));
        for layer in [0, 1] {
            let plain = model
                .embed_layers(&px, &[layer], false, Pooling::Mean, false)
                .unwrap();
            let want = pool_tokens(&hidden[layer], prefix, Pooling::Mean);
            let got: Vec<f32> = plain.iter().flat_map(|e| e.values.clone()).collect();
            assert_eq!(got, want.data, "{case} layer {layer} without norm");
            let normed = model
                .embed_layers(&px, &[layer], true, Pooling::Cls, false)
                .unwrap();
            let tokens = Tensor {
                shape: hidden[layer].shape.clone(),
                data: dinov2::crates::cpu::layer_norm(
                    &hidden[layer].data,
                    &w,
                    &b,
                    config.layer_norm_eps,
                ),
            };
            let want = pool_tokens(&tokens, prefix, Pooling::Cls);
            let got: Vec<f32> = normed.iter().flat_map(|e| e.values.clone()).collect();
            assert_eq!(got, want.data, "{case} layer {layer} with norm");
        }
        // Order and layout: [2, 1] is layer 2's vector then layer 1's, per patch for patches.
        let both = model
            .embed_layers(&px, &[2, 1], false, Pooling::Patch, false)
            .unwrap();
        let two = model
            .embed_layers(&px, &[2], false, Pooling::Patch, false)
            .unwrap();
        let one = model
            .embed_layers(&px, &[1], false, Pooling::Patch, false)
            .unwrap();
        for ((b, t), o) in both.iter().zip(&two).zip(&one) {
            assert_eq!(b.grid, t.grid);
            for ((bp, tp), op) in b
                .values
                .chunks(2 * h)
                .zip(t.values.chunks(h))
                .zip(o.values.chunks(h))
            {
                assert_eq!(&bp[..h], tp);
                assert_eq!(&bp[h..], op);
            }
        }
        for bad in [&[][..], &[depth + 1][..]] {
            let e = model
                .embed_layers(&px, bad, true, Pooling::Cls, false)
                .unwrap_err();
            assert!(e.to_string().contains("layers"), "{e}");
        }
    }
}

/// Register pooling: the register tokens of `last_hidden_state`, each normalized on its own;
/// through `embed_layers` per register the layers' vectors; an error for a model without
/// registers.
#[test]
fn register_pooling_gives_the_register_tokens() {
    let (case, run) = ("registers_mlp", "up44x36");
    let regs_model = model(case);
    let px = pixels(case, run);
    let config = regs_model.config().clone();
    let (h, regs) = (config.hidden_size, config.num_register_tokens);
    assert!(regs > 0);
    let full = regs_model
        .forward(&px, None, &ForwardOptions::default())
        .unwrap();
    let seq = full.last_hidden_state.shape[1];
    let got = regs_model.embed(&px, Pooling::Registers, false).unwrap();
    assert_eq!(got.len(), px.shape[0]);
    for (i, e) in got.iter().enumerate() {
        let tokens = &full.last_hidden_state.data[i * seq * h..(i + 1) * seq * h];
        assert_eq!(e.values, tokens[h..(1 + regs) * h], "image {i}");
        assert_eq!(e.grid, None);
    }
    for e in regs_model.embed(&px, Pooling::Registers, true).unwrap() {
        for v in e.values.chunks(h) {
            let norm: f64 = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            assert!(
                (norm - 1.0).abs() < 1e-6,
                "each register unit length: {norm}"
            );
        }
    }
    // Two layers: per register, layer 1's vector then layer 0's.
    let two = regs_model
        .embed_layers(&px, &[1, 0], false, Pooling::Registers, false)
        .unwrap();
    let l1 = regs_model
        .embed_layers(&px, &[1], false, Pooling::Registers, false)
        .unwrap();
    let l0 = regs_model
        .embed_layers(&px, &[0], false, Pooling::Registers, false)
        .unwrap();
    for i in 0..px.shape[0] {
        let want: Vec<f32> = (0..regs)
            .flat_map(|r| {
                let a = &l1[i].values[r * h..(r + 1) * h];
                let b = &l0[i].values[r * h..(r + 1) * h];
                a.iter().chain(b).copied().collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(two[i].values, want, "image {i}");
    }
    let plain = model("dinov2_mlp");
    let px = pixels("dinov2_mlp", "rect24x40_mask");
    let err = plain.embed(&px, Pooling::Registers, false).unwrap_err();
    assert!(err.to_string().contains("no register tokens"), "{err}");
}

/// `Pooling::Tokens` is `last_hidden_state` per image, and every other pooling taken from it
/// (`Embedding::pooled_as`) equals a pass with that pooling, intermediate layers included, so
/// that one pass gives several outputs.
#[test]
fn every_pooling_comes_from_the_tokens() {
    for (case, run) in [
        ("dinov2_mlp", "rect24x40_mask"),
        ("registers_mlp", "up44x36"),
    ] {
        let model = model(case);
        let px = pixels(case, run);
        let config = model.config();
        let prefix = config.num_prefix_tokens();
        let full = model
            .forward(&px, None, &ForwardOptions::default())
            .unwrap();
        let tokens = model.embed(&px, Pooling::Tokens, false).unwrap();
        let last = &full.last_hidden_state;
        let per_image = last.shape[1] * last.shape[2];
        for (i, t) in tokens.iter().enumerate() {
            assert_eq!(t.values, last.data[i * per_image..(i + 1) * per_image]);
        }
        let registers = (config.num_register_tokens > 0).then_some(Pooling::Registers);
        for pooling in POOLINGS.into_iter().chain(registers) {
            for normalize in [false, true] {
                let want = model.embed(&px, pooling, normalize).unwrap();
                let got: Vec<_> = tokens
                    .iter()
                    .map(|t| t.pooled_as(prefix, 1, pooling, normalize).unwrap())
                    .collect();
                assert_eq!(got, want, "{case}/{run} {pooling} normalize={normalize}");
            }
        }
        // Several layers, out of order, each through the final norm and not.
        let layers = [3, 0, 2];
        for norm in [true, false] {
            let tokens = model
                .embed_layers(&px, &layers, norm, Pooling::Tokens, false)
                .unwrap();
            for pooling in POOLINGS.into_iter().chain(registers) {
                let want = model
                    .embed_layers(&px, &layers, norm, pooling, true)
                    .unwrap();
                let got: Vec<_> = tokens
                    .iter()
                    .map(|t| t.pooled_as(prefix, layers.len(), pooling, true).unwrap())
                    .collect();
                assert_eq!(got, want, "{case}/{run} layers {pooling} norm={norm}");
            }
        }
        // Not an embedding of every token.
        let cls = model.embed(&px, Pooling::Cls, false).unwrap();
        assert!(cls[0].pooled_as(prefix, 1, Pooling::Mean, false).is_none());
    }
}
