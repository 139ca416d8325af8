//! `dinov2`: run DINOv2 checkpoints from the command line.

mod args;
mod bench;
mod classify;
mod convert;
mod embed;
mod embed_verb;
mod error;
mod fetch;
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

/// mimalloc's `mi_option_purge_delay` (its index in `mimalloc.h`, v2 and v3 alike): how long
/// freed pages wait before they go back to the OS (1000 ms by default in v3, the version the
/// `mimalloc` crate builds; −1: never).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps the pages of freed activation buffers for the next pass instead of returning them to
/// the OS a second later: the process holds its peak memory, as an inference server or a batch
/// job does anyway. ViT-B/14 at batch 8 on the CPU faulted in and zeroed 750-1000 pages a pass
/// (`perf stat`: 3800-5600 faults in 5 passes and set-up, 511 with this), with 0.2-1.2 s of
/// kernel time against 0.26-0.29 s; the pass times themselves stayed within the development
/// machine's noise.
fn keep_freed_pages() {
    // SAFETY: sets one of mimalloc's options; any value is valid, and it is read at each purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

fn main() {
    keep_freed_pages();
    let cli = args::Cli::parse();
    if !matches!(cli.command, args::Command::Serve(_)) {
        end_quietly_when_the_reader_leaves();
    }
    let result = match cli.command {
        args::Command::Forward(a) => forward::run(a),
        args::Command::Info(a) => info::run(a),
        args::Command::Convert(a) => convert::run(a),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // Its default in mimalloc v3, 1000 ms, identifies the option (unless the environment
        // sets it).
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads one of mimalloc's options.
            let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
            assert_eq!(default, 1000);
        }
        keep_freed_pages();
        // SAFETY: as above.
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
            -1
        );
    }
}
