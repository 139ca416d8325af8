//! `dinov2 preprocess`: images to the model's pixel values, as the checkpoint's processor makes them.

use dinov2::image::{decode_file, preprocess};
use dinov2::io::write_tensors;
use dinov2::{preprocess_config, Tensor};

use crate::args::PreprocessArgs;
use crate::embed_verb::decode_options;
use crate::error::{CliError, Result};
use crate::model_dir::resolve;

/// Runs the preprocess verb; the first bad image stops it with its error.
pub fn run(args: PreprocessArgs) -> Result<()> {
    let config = preprocess_config(&resolve(&args.model)?)?;
    let options = decode_options(&args.decode);
    let mut tensors = Vec::with_capacity(args.images.len());
    for path in &args.images {
        let name = path.to_string_lossy().into_owned();
        if tensors.iter().any(|(n, _): &(String, Tensor)| *n == name) {
            return Err(CliError(format!("{name} is given twice")));
        }
        let image = decode_file(path, &options).map_err(dinov2::Error::from)?;
        let pixels = preprocess(&image, &config).map_err(dinov2::Error::from)?;
        let tensor = Tensor::new(pixels.shape.to_vec(), pixels.data)
            .ok_or_else(|| CliError("bad pixel values".into()))?;
        tensors.push((name, tensor));
    }
    Ok(write_tensors(&args.output, &tensors)?)
}
