//! `--model`: a model directory, or a Hugging Face hub id found in the local cache, downloaded
//! into that cache with `hf-hub` when it is absent and a network is there (from `HF_ENDPOINT`
//! when set, a mirror, else huggingface.co).

use std::path::{Path, PathBuf};

use dinov2::crates::checkpoint::{find_in_cache, hub_cache_dir, HubId};

use crate::error::{CliError, Result};

/// The directory `spec` names (a path that is not a hub id is returned as given).
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(path.to_owned());
    }
    let Some(id) = HubId::parse(spec) else {
        // Not a hub id: the checkpoint reader says what is wrong with the path.
        return Ok(path.to_owned());
    };
    let cache = hub_cache_dir().ok_or_else(|| {
        CliError(format!(
            "--model {spec}: no such directory, and no Hugging Face cache (set HF_HOME)"
        ))
    })?;
    if let Some(dir) = find_in_cache(&cache, &id) {
        return Ok(dir);
    }
    download(&id, &cache).map_err(|e| {
        CliError(format!(
            "--model {spec}: not a directory and not in the Hugging Face cache at {}; downloading it failed: {e}",
            cache.display()
        ))
    })
}

/// Fetches config, preprocessing and weights of `id` into `cache`; returns the snapshot folder.
fn download(id: &HubId, cache: &Path) -> std::result::Result<PathBuf, String> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};
    // `from_env`: HF_ENDPOINT (a mirror) and the saved token are honoured.
    let api = ApiBuilder::from_env()
        .with_cache_dir(cache.to_owned())
        .with_progress(true)
        .build()
        .map_err(|e| e.to_string())?;
    let repo = api.repo(Repo::with_revision(
        id.repo.clone(),
        RepoType::Model,
        id.revision.clone(),
    ));
    let config = repo.get("config.json").map_err(|e| e.to_string())?;
    let _ = repo.get("preprocessor_config.json");
    // safetensors where the repository has them; else PyTorch's pickled weights, which are read
    // without running the pickle.
    if repo.get("model.safetensors").is_err() && repo.get("pytorch_model.bin").is_err() {
        let index = repo
            .get("model.safetensors.index.json")
            .or_else(|_| repo.get("pytorch_model.bin.index.json"))
            .map_err(|e| {
                format!(
                    "no weights (model.safetensors, pytorch_model.bin or their sharded index): {e}"
                )
            })?;
        let text = std::fs::read_to_string(&index).map_err(|e| e.to_string())?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let mut shards: Vec<&str> = value["weight_map"]
            .as_object()
            .map(|m| m.values().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        shards.sort_unstable();
        shards.dedup();
        for shard in shards {
            repo.get(shard).map_err(|e| e.to_string())?;
        }
    }
    config
        .parent()
        .map(Path::to_owned)
        .ok_or_else(|| "bad cache path".to_owned())
}
