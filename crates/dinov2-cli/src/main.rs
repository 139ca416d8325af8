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
    if !matches!(cli.command, args::Command::Serve(_)) {
        end_quietly_when_the_reader_leaves();
    }
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

/// Output piped into a program that stops reading (`dinov2 knn ... | head`) ends the process
/// quietly, as other command-line tools end, instead of panicking in `println!`: Rust ignores
/// SIGPIPE unless told otherwise. The server keeps ignoring it, so that a client hanging up
/// cannot stop it.
fn end_quietly_when_the_reader_leaves() {
    #[cfg(unix)]
    // SAFETY: sets the signal's disposition back to the default, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
