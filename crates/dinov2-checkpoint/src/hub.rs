//! Models named by Hugging Face hub id (`facebook/dinov2-small`, optionally `@revision`), found in
//! the local Hugging Face cache laid out as `huggingface_hub` lays it out:
//! `<cache>/models--<org>--<name>/{refs/<revision>, snapshots/<commit>/...}`.

use std::path::{Path, PathBuf};

/// A hub repository id with an optional revision (`org/name[@revision]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: String,
}

impl HubId {
    /// Parses `org/name` or `org/name@revision`; `None` when `spec` does not look like a hub id.
    pub fn parse(spec: &str) -> Option<Self> {
        let (repo, revision) = match spec.split_once('@') {
            Some((r, rev)) if !rev.is_empty() => (r, rev),
            Some(_) => return None,
            None => (spec, "main"),
        };
        let (org, name) = repo.split_once('/')?;
        let valid = |s: &str| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        (valid(org) && valid(name)).then(|| HubId {
            repo: repo.to_owned(),
            revision: revision.to_owned(),
        })
    }

    /// The cache folder name of the repository (`models--org--name`).
    pub fn cache_folder(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

/// The hub cache directory, as `huggingface_hub` chooses it: `HF_HUB_CACHE`, else `HF_HOME/hub`,
/// else `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("huggingface").join("hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")))
}

/// The snapshot folder of `id` in `cache`, when it holds a `config.json`.
pub fn find_in_cache(cache: &Path, id: &HubId) -> Option<PathBuf> {
    let repo = cache.join(id.cache_folder());
    let commit = std::fs::read_to_string(repo.join("refs").join(&id.revision))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| id.revision.clone());
    if commit.contains('/') || commit.contains("..") {
        return None;
    }
    let snapshot = repo.join("snapshots").join(commit);
    snapshot.join("config.json").is_file().then_some(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids() {
        assert_eq!(
            HubId::parse("facebook/dinov2-small"),
            Some(HubId {
                repo: "facebook/dinov2-small".into(),
                revision: "main".into()
            })
        );
        assert_eq!(
            HubId::parse("facebook/dinov2-base@v1").unwrap().revision,
            "v1"
        );
        assert_eq!(HubId::parse("./models/x"), None);
        assert_eq!(HubId::parse("a/b/c"), None);
        assert_eq!(HubId::parse("dinov2"), None);
        assert_eq!(
            HubId::parse("facebook/dinov2-small")
                .unwrap()
                .cache_folder(),
            "models--facebook--dinov2-small"
        );
    }

    #[test]
    fn finds_snapshots() {
        let cache = std::env::temp_dir().join(format!("dinov2-hub-test-{}", std::process::id()));
        let repo = cache.join("models--facebook--dinov2-small");
        let snap = repo.join("snapshots").join("abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), "abc123\n").unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        let id = HubId::parse("facebook/dinov2-small").unwrap();
        assert_eq!(find_in_cache(&cache, &id), Some(snap.clone()));
        assert_eq!(
            find_in_cache(
                &cache,
                &HubId::parse("facebook/dinov2-small@abc123").unwrap()
            ),
            Some(snap)
        );
        assert_eq!(
            find_in_cache(&cache, &HubId::parse("facebook/dinov2-small@nope").unwrap()),
            None
        );
        assert_eq!(
            find_in_cache(&cache, &HubId::parse("facebook/dinov2-base").unwrap()),
            None
        );
        std::fs::remove_dir_all(&cache).unwrap();
    }
}
