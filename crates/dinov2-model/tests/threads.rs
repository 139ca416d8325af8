//! The CPU backend's outputs do not depend on how many threads share the work: products split
//! into grids of blocks and attention split into blocks of query rows must give the same bits
//! on one thread, two (the development machine) and sixteen (a server).

use dinov2_checkpoint::Dinov2Config;
use dinov2_model::{CpuBackend, Dinov2, Dtype, ForwardOptions, Tensor};
use serde_json::json;

#[test]
fn outputs_are_the_same_bits_on_any_number_of_threads() {
    // Large enough that the products are split (514 rows of 128 to 512 columns, and the patch
    // embedding's k of 588) and that two images of 2 heads are fewer tasks than 16 threads want.
    let config = Dinov2Config::from_json(&json!({
        "model_type": "dinov2", "hidden_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 2, "mlp_ratio": 4, "image_size": 224, "patch_size": 14,
    }))
    .unwrap();
    let model = Dinov2::random(CpuBackend::new(Dtype::F32).unwrap(), &config, 7).unwrap();
    let opts = ForwardOptions {
        hidden_states: true,
        attentions: true,
        ..Default::default()
    };
    // 224 px: two images of 257 tokens. 336 px: 577 tokens, where attention runs in blocks of
    // query rows and P·V sums over more than 512 keys.
    for (b, side) in [(2, 224), (1, 336)] {
        let values = (0..b * 3 * side * side)
            .map(|i| ((i * 7919) % 251) as f32 / 125.0 - 1.0)
            .collect();
        let pixels = Tensor::new(vec![b, 3, side, side], values).unwrap();
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let fast = model
                    .forward(&pixels, None, &ForwardOptions::default())
                    .unwrap();
                let all = model.forward(&pixels, None, &opts).unwrap();
                (fast.last_hidden_state.data, all.hidden_states.unwrap())
            })
        };
        let (one, one_layers) = run(1);
        for threads in [2, 16] {
            let (out, layers) = run(threads);
            assert!(
                out == one,
                "{side} px, {threads} threads: last hidden state differs"
            );
            for (l, (a, want)) in layers.iter().zip(&one_layers).enumerate() {
                assert!(
                    a.data == want.data,
                    "{side} px, {threads} threads: hidden state {l} differs"
                );
            }
        }
    }
}
