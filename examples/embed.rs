//! Embeds image files with a checkpoint on the CPU and prints each vector's first values.
//!
//! `cargo run --release --example embed -- MODEL_DIR IMAGE...`

use dinov2::{CpuBackend, Embedder, Pooling};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args.next().ok_or("usage: embed MODEL_DIR IMAGE...")?;
    let images: Vec<String> = args.collect();
    let embedder = Embedder::from_dir(&model, CpuBackend)?
        .with_pooling(Pooling::Cls)
        .with_normalize(true);
    for (path, result) in images.iter().zip(embedder.embed_paths(&images)) {
        match result {
            Ok(e) => println!(
                "{path}: {} values, starting {:?}",
                e.values.len(),
                &e.values[..4.min(e.values.len())]
            ),
            Err(e) => eprintln!("{path}: {e}"),
        }
    }
    Ok(())
}
