//! `dinov2`: run DINOv2 checkpoints from the command line.

mod args;
mod bench;
mod classify;
mod embed;
mod embed_verb;
mod error;
mod forward;
mod info;
mod model_dir;
mod preprocess;
mod serve;
mod similar;

use clap::Parser;

/// mimalloc keeps freed blocks for reuse: the forward pass allocates and frees many large
/// activation buffers, which the system allocator maps and unmaps (page faults) every time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = args::Cli::parse();
    let result = match cli.command {
        args::Command::Forward(a) => forward::run(a),
        args::Command::Info(a) => info::run(a),
        args::Command::Bench(a) => bench::run(a),
        args::Command::Embed(a) => embed_verb::run(a),
        args::Command::Preprocess(a) => preprocess::run(a),
        args::Command::Classify(a) => classify::run(a),
        args::Command::Serve(a) => serve::run(a),
        args::Command::Knn(a) => similar::knn(a),
        args::Command::Dedup(a) => similar::dedup(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
