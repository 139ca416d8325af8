//! `dinov2 preprocess`: images to the model's pixel values, as the checkpoint's processor makes them.

use dinov2::image::load_and_preprocess;
use dinov2::io::write_tensors;
use dinov2::{Dinov2Config, Tensor};

use crate::args::PreprocessArgs;
use crate::embed_verb::{decode_options, preprocessing};
use crate::error::{CliError, Result};
use crate::model_dir::resolve;

/// Runs the preprocess verb; the first bad image stops it with its error.
pub fn run(args: PreprocessArgs) -> Result<()> {
    let dir = resolve(&args.model)?;
    // The patch size bounds the crop; a folder with only a preprocessor config has none.
    let config_json = dir.join("config.json");
    let patch = if config_json.is_file() {
        Dinov2Config::from_file(&config_json)
            .map_err(dinov2::Error::from)?
            .patch_size
    } else {
        1
    };
    let config = preprocessing(&dir, &args.decode, patch)?;
    let options = decode_options(&args.decode, &config);
    let mut tensors = Vec::with_capacity(args.images.len());
    for path in &args.images {
        let name = path.to_string_lossy().into_owned();
        if tensors.iter().any(|(n, _): &(String, Tensor)| *n == name) {
            return Err(CliError(format!("{name} is given twice")));
        }
        let (pixels, _) =
            load_and_preprocess(path, &options, &config).map_err(dinov2::Error::from)?;
        let tensor = Tensor::new(pixels.shape.to_vec(), pixels.data)
            .ok_or_else(|| CliError("bad pixel values".into()))?;
        tensors.push((name, tensor));
    }
    Ok(write_tensors(&args.output, &tensors)?)
}
