//! `dinov2 convert`: any checkpoint this program reads, written as a transformers model directory.

use dinov2::{Checkpoint, Dtype, StorageDtype};

use crate::args::ConvertArgs;
use crate::error::{CliError, Result};
use crate::model_dir::resolve;

/// Reads the checkpoint, writes `config.json`, `model.safetensors` and `preprocessor_config.json`
/// (the source's, or facebook/dinov2's where it has none) into the output folder.
pub fn run(args: ConvertArgs) -> Result<()> {
    let source = resolve(&args.model)?;
    let checkpoint = Checkpoint::open(&source)?;
    let out = &args.output;
    let occupied = std::fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some());
    if occupied || out.is_file() {
        return Err(CliError(format!(
            "--output {}: exists and is not an empty folder; give a new one",
            out.display()
        )));
    }
    let dtype = args.dtype.map(|d| match d {
        Dtype::F32 => StorageDtype::F32,
        Dtype::F16 => StorageDtype::F16,
        Dtype::BF16 => StorageDtype::BF16,
    });
    checkpoint.save_transformers(out, dtype)?;
    let preprocess = dinov2::preprocess_config(&source)?;
    let path = out.join("preprocessor_config.json");
    std::fs::write(&path, preprocess.to_json())
        .map_err(|e| CliError(format!("cannot write {}: {e}", path.display())))?;
    eprintln!(
        "wrote {} ({} tensors, {} parameters; config {})",
        out.display(),
        checkpoint.weights.names().count(),
        checkpoint.weights.num_parameters(),
        match checkpoint.config_source {
            dinov2::ConfigSource::File(_) => "copied",
            dinov2::ConfigSource::Inferred(_) => "told from the tensors",
        }
    );
    Ok(())
}
