//! Resolves what `--model` names: a local GGUF path, a manifest name from `models/`, or a Hugging
//! Face `repo:file` (fetched only when the `hub` feature is built and the operator asked for it).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::{EngineError, Result};
use super::template;

pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

/// A manifest in `models/NAME.json`: where a bundled model's weights come from and how to check them.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// `chat` (a GGUF file), `embedder` (a folder with safetensors, config and tokenizer), or
    /// `dataset` (files for import and tests, such as the tau2 retail shop).
    #[serde(default = "chat_kind")]
    pub kind: String,
    /// The GGUF file, or the embedder's folder, relative to the models folder.
    pub file: String,
    #[serde(default)]
    pub sha256: String,
    #[serde(default)]
    pub wheels: Vec<String>,
    #[serde(default)]
    pub parts: Vec<String>,
    /// A template for models whose GGUF carries none: `chatml`, `gemma`, or Jinja source.
    #[serde(default)]
    pub chat_template: Option<String>,
}

fn chat_kind() -> String {
    "chat".into()
}

/// The manifest `models_dir/NAME.json`, if there is one; a manifest that doesn't parse is an error.
fn read_manifest(models_dir: &Path, name: &str) -> Result<Option<Manifest>> {
    let path = models_dir.join(format!("{name}.json"));
    if !path.is_file() {
        return Ok(None);
    }
    serde_json::from_slice(&std::fs::read(&path)?)
        .map(Some)
        .map_err(|e| EngineError::Load {
            path,
            message: e.to_string(),
        })
}

pub const DEFAULT_EMBEDDER: &str = "all-minilm-l6-v2";

/// Resolves an embedder: a folder holding `config.json`, `tokenizer.json` and `model.safetensors`,
/// or the name of an `embedder` manifest in the models folder. Returns (name, folder).
pub fn resolve_embedder(spec: &str, models_dir: &Path) -> Result<(String, PathBuf)> {
    let as_dir = Path::new(spec);
    if as_dir.join("config.json").is_file() {
        let name = as_dir
            .file_name()
            .map_or_else(|| spec.to_string(), |s| s.to_string_lossy().into_owned());
        return Ok((name, as_dir.to_path_buf()));
    }
    let Some(m) = read_manifest(models_dir, spec)? else {
        // `owner/repo`: a sentence-transformers repository on the hub (with the `hub` feature).
        if spec.split('/').count() == 2 && !as_dir.exists() {
            return fetch_embedder_from_hub(spec);
        }
        return Err(EngineError::ModelNotFound {
            name: spec.to_string(),
            hint: "give a folder with config.json, tokenizer.json and model.safetensors, the \
                   name of an embedder manifest in the models folder, or a hub `owner/repo`"
                .into(),
        });
    };
    if m.kind != "embedder" {
        return Err(EngineError::ModelNotFound {
            name: spec.to_string(),
            hint: format!("`{spec}` is a {} model, not an embedder", m.kind),
        });
    }
    let dir = models_dir.join(&m.file);
    if !dir.join("model.safetensors").is_file() {
        return Err(EngineError::ModelNotFound {
            name: m.name.clone(),
            hint: format!(
                "{} is missing; fetch it with `scripts/fetch-models.sh {}`",
                dir.display(),
                m.name
            ),
        });
    }
    Ok((m.name, dir))
}

#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub name: String,
    pub path: PathBuf,
    pub chat_template: Option<String>,
}

/// The folder holding manifests and weights: `$CLERK_MODELS_DIR`, else `models/` in the current
/// directory, else `models/` beside the source tree this binary was built from.
pub fn default_models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CLERK_MODELS_DIR") {
        return PathBuf::from(d);
    }
    let local = PathBuf::from("models");
    if local.is_dir() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models")
}

pub fn list_manifests(models_dir: &Path) -> Vec<Manifest> {
    let mut out: Vec<Manifest> = std::fs::read_dir(models_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn template_source(t: &str) -> String {
    match t {
        "chatml" => template::CHATML_TEMPLATE.to_string(),
        "gemma" => template::GEMMA_TEMPLATE.to_string(),
        src => src.to_string(),
    }
}

/// A hub model named `owner/repo[@revision]:file.gguf`.
#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "hub"), allow(dead_code))]
struct HubSpec<'a> {
    repo: &'a str,
    revision: Option<&'a str>,
    file: &'a str,
}

/// `spec` read as a hub model, when it has that shape. The file may sit in a folder of the
/// repository, but may not climb out of it: hf-hub joins it onto its cache paths as given.
fn hub_spec(spec: &str) -> Option<HubSpec<'_>> {
    let (repo, file) = spec.split_once(':')?;
    let (repo, revision) = match repo.split_once('@') {
        Some((r, rev)) => (r, Some(rev)),
        None => (repo, None),
    };
    let (owner, name) = repo.split_once('/')?;
    let plain = |s: &str| !s.is_empty() && !s.contains(['/', '\\', '@', ':']);
    let file_ok = file.ends_with(".gguf")
        && !file.contains(['\\', ':'])
        && file
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..");
    let revision_ok = revision.is_none_or(|r| {
        !r.is_empty() && !r.contains(char::is_whitespace) && !r.split('/').any(|p| p == "..")
    });
    (plain(owner) && plain(name) && file_ok && revision_ok).then_some(HubSpec {
        repo,
        revision,
        file,
    })
}

pub fn resolve_model(spec: &str, models_dir: &Path) -> Result<ResolvedModel> {
    let as_path = Path::new(spec);
    let is_file = as_path.is_file();
    // A hub spec ends in `.gguf` too, so only an existing file wins over it.
    if !is_file {
        if let Some(hub) = hub_spec(spec) {
            return fetch_from_hub(spec, &hub);
        }
    }
    if is_file || as_path.extension().is_some_and(|x| x == "gguf") {
        if !is_file {
            return Err(EngineError::ModelNotFound {
                name: spec.to_string(),
                hint: "no such file".into(),
            });
        }
        let name = as_path
            .file_stem()
            .map_or_else(|| spec.to_string(), |s| s.to_string_lossy().into_owned());
        return Ok(ResolvedModel {
            name,
            path: as_path.to_path_buf(),
            chat_template: None,
        });
    }
    if let Some(m) = read_manifest(models_dir, spec)? {
        if m.kind != "chat" {
            return Err(EngineError::ModelNotFound {
                name: m.name,
                hint: format!("`{spec}` is an {} model, not a chat model", m.kind),
            });
        }
        let path = models_dir.join(&m.file);
        if !path.is_file() {
            return Err(EngineError::ModelNotFound {
                name: m.name.clone(),
                hint: format!(
                    "{} is missing; fetch it with `scripts/fetch-models.sh {}`",
                    path.display(),
                    m.name
                ),
            });
        }
        return Ok(ResolvedModel {
            name: m.name,
            path,
            chat_template: m.chat_template.as_deref().map(template_source),
        });
    }
    let known: Vec<String> = list_manifests(models_dir)
        .into_iter()
        .filter(|m| m.kind == "chat")
        .map(|m| m.name)
        .collect();
    Err(EngineError::ModelNotFound {
        name: spec.to_string(),
        hint: format!(
            "not a file, not a manifest in {} (known: {}), and not a hub `owner/repo:file.gguf`",
            models_dir.display(),
            known.join(", ")
        ),
    })
}

#[cfg(feature = "hub")]
fn fetch_from_hub(spec: &str, hub: &HubSpec) -> Result<ResolvedModel> {
    let path = super::hub::get(hub.repo, hub.revision, hub.file).map_err(|e| {
        EngineError::ModelNotFound {
            name: spec.to_string(),
            hint: e.to_string(),
        }
    })?;
    let stem = hub.file.rsplit('/').next().unwrap_or(hub.file);
    Ok(ResolvedModel {
        name: stem.trim_end_matches(".gguf").to_string(),
        path,
        chat_template: None,
    })
}

/// Downloads (or finds in the hub cache) the three files an embedder needs; they land in one
/// snapshot folder, which is what [`super::Embedder::load`] reads.
#[cfg(feature = "hub")]
fn fetch_embedder_from_hub(repo: &str) -> Result<(String, PathBuf)> {
    let failed = |hint: String| EngineError::ModelNotFound {
        name: repo.to_string(),
        hint,
    };
    let mut dir = None;
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        let path = super::hub::get(repo, None, file).map_err(|e| failed(e.to_string()))?;
        dir = path.parent().map(Path::to_path_buf);
    }
    let dir = dir.ok_or_else(|| failed("no snapshot folder".into()))?;
    let name = repo.rsplit('/').next().unwrap_or(repo).to_lowercase();
    Ok((name, dir))
}

#[cfg(not(feature = "hub"))]
fn fetch_embedder_from_hub(repo: &str) -> Result<(String, PathBuf)> {
    Err(EngineError::ModelNotFound {
        name: repo.to_string(),
        hint: "this build leaves out hub support (the default `hub` feature); rebuild with \
               `--features hub`, or download the repository's config.json, tokenizer.json and \
               model.safetensors into a folder and pass the folder"
            .into(),
    })
}

#[cfg(not(feature = "hub"))]
fn fetch_from_hub(spec: &str, _hub: &HubSpec) -> Result<ResolvedModel> {
    Err(EngineError::ModelNotFound {
        name: spec.to_string(),
        hint: "this build leaves out hub support (the default `hub` feature); rebuild with \
               `--features hub`, or download the file and pass its path"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_weights_name_the_fetch_command() {
        let dir = std::env::temp_dir().join(format!("clerk-registry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("tiny.json"),
            r#"{"name":"tiny","file":"tiny.gguf","sha256":"00","chat_template":"chatml"}"#,
        )
        .unwrap();
        let err = resolve_model("tiny", &dir).unwrap_err().to_string();
        assert!(err.contains("scripts/fetch-models.sh tiny"), "{err}");
        std::fs::write(dir.join("tiny.gguf"), b"x").unwrap();
        let r = resolve_model("tiny", &dir).unwrap();
        assert_eq!(r.path, dir.join("tiny.gguf"));
        assert!(r.chat_template.unwrap().contains("<|im_start|>"));
        let err = resolve_model("nope", &dir).unwrap_err().to_string();
        assert!(err.contains("known: tiny"), "{err}");
        #[cfg(not(feature = "hub"))]
        {
            let err = resolve_embedder(
                "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2",
                &dir,
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("--features hub"), "{err}");
        }
        #[cfg(not(feature = "hub"))]
        {
            let err = resolve_model("owner/repo:model.gguf", &dir)
                .unwrap_err()
                .to_string();
            assert!(err.contains("--features hub"), "{err}");
        }
        let err = resolve_embedder("tiny", &dir).unwrap_err().to_string();
        assert!(err.contains("not an embedder"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hub_specs_are_told_from_paths() {
        let spec = |repo, revision, file| {
            Some(HubSpec {
                repo,
                revision,
                file,
            })
        };
        assert_eq!(
            hub_spec("bartowski/Qwen2-0.5B-GGUF:qwen2-0_5b-q4_k_m.gguf"),
            spec("bartowski/Qwen2-0.5B-GGUF", None, "qwen2-0_5b-q4_k_m.gguf")
        );
        assert_eq!(
            hub_spec("owner/repo@v1.2:sub/dir/model.gguf"),
            spec("owner/repo", Some("v1.2"), "sub/dir/model.gguf")
        );
        for not_hub in [
            "models/smollm2.gguf",
            "a/b/c:d.gguf",
            "C:\\models\\x.gguf",
            "C:/models/x.gguf",
            "/abs:x.gguf",
            "owner/:x.gguf",
            "owner/repo:",
            "owner/repo:weights.bin",
            "owner/repo:/etc/x.gguf",
            "owner/repo:../../x.gguf",
            "owner/repo:sub//x.gguf",
            "owner/repo:sub\\x.gguf",
            "owner/repo@:x.gguf",
            "owner/repo@../..:x.gguf",
        ] {
            assert_eq!(hub_spec(not_hub), None, "{not_hub}");
        }
    }
}
