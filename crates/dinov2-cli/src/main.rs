//! `dinov2`: run DINOv2 checkpoints from the command line.

mod args;
mod bench;
mod error;
mod forward;
mod info;

use clap::Parser;

fn main() {
    let cli = args::Cli::parse();
    let result = match cli.command {
        args::Command::Forward(a) => forward::run(a),
        args::Command::Info(a) => info::run(a),
        args::Command::Bench(a) => bench::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
