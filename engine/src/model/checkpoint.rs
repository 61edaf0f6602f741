//! Finding a checkpoint's files: a local folder in Hugging Face layout, or a hub id resolved through
//! the hf-hub cache (downloading only when online).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// SimLM's fine-tuned bi-encoder on the Hugging Face hub.
pub const DEFAULT_MODEL: &str = "intfloat/simlm-base-msmarco-finetuned";

/// The files of one checkpoint.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// What the user named: a folder or a hub id.
    pub spec: String,
    pub config: PathBuf,
    /// `tokenizer.json`, or `vocab.txt` for checkpoints that ship only a WordPiece vocabulary.
    pub tokenizer: PathBuf,
    pub tokenizer_config: Option<PathBuf>,
    /// `model.safetensors` or `pytorch_model.bin`.
    pub weights: PathBuf,
    pub sentence_bert_config: Option<PathBuf>,
    pub pooling_config: Option<PathBuf>,
}

/// A checkpoint's tensors, read as the model takes them.
pub enum WeightFile {
    /// `model.safetensors`, memory-mapped (its header checked when opened): a tensor is copied out
    /// when taken, and f32 values can be read where they lie.
    Mapped(candle_core::safetensors::MmapedSafetensors),
    /// `pytorch_model.bin`, read whole.
    Loaded(HashMap<String, Tensor>),
}

impl WeightFile {
    /// The names of every tensor in the file.
    pub fn names(&self) -> Vec<String> {
        match self {
            WeightFile::Mapped(st) => st.tensors().into_iter().map(|(n, _)| n).collect(),
            WeightFile::Loaded(m) => m.keys().cloned().collect(),
        }
    }

    /// The tensor `name` on the CPU, in the file's dtype.
    pub fn tensor(&self, name: &str) -> candle_core::Result<Tensor> {
        match self {
            WeightFile::Mapped(st) => st.load(name, &Device::Cpu),
            WeightFile::Loaded(m) => m
                .get(name)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("no tensor `{name}`"))),
        }
    }

    /// The values and shape of the f32 tensor `name` where they lie in the mapped file, without a
    /// copy: `None` unless the file is mapped and the tensor is little-endian f32 on a 4-byte
    /// boundary (the caller then copies it out with [`WeightFile::tensor`]).
    pub fn f32_in_place(&self, name: &str) -> Option<(&[f32], Vec<usize>)> {
        let WeightFile::Mapped(st) = self else {
            return None;
        };
        let view = st.get(name).ok()?;
        if !cfg!(target_endian = "little")
            || candle_core::DType::try_from(view.dtype()).ok()? != candle_core::DType::F32
        {
            return None;
        }
        let bytes = view.data();
        // Safety: any 4 bytes are a valid f32; the pointer's alignment is checked by align_to,
        // which leaves the bytes in `head` when it is not on a 4-byte boundary.
        let (head, values, tail) = unsafe { bytes.align_to::<f32>() };
        if !head.is_empty() || !tail.is_empty() {
            return None;
        }
        Some((values, view.shape().to_vec()))
    }
}

const WEIGHT_FILES: &[&str] = &["model.safetensors", "pytorch_model.bin"];
const TOKENIZER_FILES: &[&str] = &["tokenizer.json", "vocab.txt"];

fn looks_like_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p != &"."
                && p != &".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

impl ModelFiles {
    /// Resolves `spec`: an existing folder is read as it is; otherwise a hub id (`owner/name`) is looked
    /// up in the Hugging Face cache (`HF_HOME`, `HF_HUB_CACHE`), and downloaded when missing unless
    /// `HF_HUB_OFFLINE=1`.
    pub fn resolve(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.exists() {
            return Self::from_folder(path);
        }
        if !looks_like_hub_id(spec) {
            return Err(Error::ModelNotFound(format!(
                "model folder `{spec}` does not exist (give a folder with config.json, tokenizer.json and \
                 model.safetensors or pytorch_model.bin, or a Hugging Face hub id such as `{DEFAULT_MODEL}`)"
            )));
        }
        Self::from_hub(spec)
    }

    /// [`ModelFiles::resolve`] without downloading: a folder, or a hub id already in the cache.
    pub fn resolve_cached(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.exists() || !looks_like_hub_id(spec) {
            return Self::resolve(spec);
        }
        Self::from_hub_cache(spec, hf_hub::Cache::from_env(), true)
    }

    pub fn from_folder(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::ModelNotFound(format!(
                "{}: not a folder (a model is a folder in Hugging Face layout: config.json, tokenizer.json, \
                 model.safetensors or pytorch_model.bin)",
                dir.display()
            )));
        }
        let find = |names: &[&str]| names.iter().map(|n| dir.join(n)).find(|p| p.is_file());
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(Error::ModelNotFound(format!(
                "{}: config.json is missing from the model folder",
                dir.display()
            )));
        }
        let tokenizer = find(TOKENIZER_FILES).ok_or_else(|| {
            Error::ModelNotFound(format!(
                "{}: neither tokenizer.json nor vocab.txt is in the model folder",
                dir.display()
            ))
        })?;
        let weights = find(WEIGHT_FILES).ok_or_else(|| {
            Error::ModelNotFound(format!(
                "{}: no weights in the model folder (expected model.safetensors or pytorch_model.bin)",
                dir.display()
            ))
        })?;
        let opt = |n: &str| Some(dir.join(n)).filter(|p| p.is_file());
        Ok(ModelFiles {
            spec: dir.display().to_string(),
            config,
            tokenizer,
            tokenizer_config: opt("tokenizer_config.json"),
            weights,
            sentence_bert_config: opt("sentence_bert_config.json"),
            pooling_config: opt("1_Pooling/config.json"),
        })
    }

    fn from_hub(id: &str) -> Result<Self> {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| !v.is_empty() && v != "0")
            .unwrap_or(false);
        Self::from_hub_cache(id, hf_hub::Cache::from_env(), offline)
    }

    /// A hub model from `cache`, downloaded into it first unless `offline`.
    fn from_hub_cache(id: &str, cache: hf_hub::Cache, offline: bool) -> Result<Self> {
        let repo = cache.model(id.to_string());
        let cached = |names: &[&str]| names.iter().find_map(|n| repo.get(n));
        let from_cache = || -> Option<ModelFiles> {
            Some(ModelFiles {
                spec: id.to_string(),
                config: repo.get("config.json")?,
                tokenizer: cached(TOKENIZER_FILES)?,
                tokenizer_config: repo.get("tokenizer_config.json"),
                weights: cached(WEIGHT_FILES)?,
                sentence_bert_config: repo.get("sentence_bert_config.json"),
                pooling_config: repo.get("1_Pooling/config.json"),
            })
        };
        if let Some(files) = from_cache() {
            return Ok(files);
        }
        let how_to = format!(
            "model `{id}` is not in the Hugging Face cache ({}). On a machine with internet run \
             `huggingface-cli download {id}` and copy the cache folder here (or set HF_HOME to it), or \
             download config.json, tokenizer.json (or vocab.txt) and model.safetensors (or pytorch_model.bin) \
             from https://huggingface.co/{id} into a folder and pass that folder as --model",
            cache.path().display()
        );
        if offline {
            return Err(Error::ModelNotFound(format!(
                "{how_to} (offline: HF_HUB_OFFLINE is set)"
            )));
        }
        download(id)
            .map_err(|e| Error::ModelNotFound(format!("{how_to}; the download failed: {e}")))?;
        from_cache().ok_or_else(|| Error::ModelNotFound(how_to))
    }

    /// Opens the weights: a safetensors file is memory-mapped (tensors are read as the model takes
    /// them), a PyTorch pickle is read whole.
    pub fn open_weights(&self) -> Result<WeightFile> {
        let p = &self.weights;
        let is_bin = p.extension().is_some_and(|e| e == "bin");
        let res = if is_bin {
            candle_core::pickle::read_all(p).map(|v| WeightFile::Loaded(v.into_iter().collect()))
        } else {
            // Safety: the mapping is only read, while the model loads; the file is the user's
            // checkpoint, not one this program writes.
            unsafe { candle_core::safetensors::MmapedSafetensors::new(p) }.map(WeightFile::Mapped)
        };
        res.map_err(|e| {
            Error::invalid(
                p,
                None,
                format!(
                    "cannot read the weights ({e}); the file may be truncated or damaged: download it again"
                ),
            )
        })
    }

    /// A SHA-256 over the weights and tokenizer files, which identifies the model an index was built with.
    pub fn fingerprint(&self) -> Result<String> {
        self.fingerprint_cached(fingerprint_cache_path().as_deref())
    }

    /// The fingerprint, looked up in (and added to) the cache file `cache` when given: a search starts
    /// without re-reading the weights, and a file that changed (size or modification time) is hashed
    /// again.
    pub fn fingerprint_cached(&self, cache: Option<&Path>) -> Result<String> {
        let files = [&self.weights, &self.tokenizer, &self.config];
        let key = fingerprint_key(&files);
        if let (Some(key), Some(cache)) = (&key, cache) {
            if let Some(fp) = read_cache(cache).get(key).and_then(|v| v.as_str()) {
                return Ok(fp.to_string());
            }
        }
        let mut h = Sha256::new();
        for p in files {
            crate::store::manifest::hash_file_into(p, &mut h)?;
        }
        let fp = format!("sha256:{:x}", h.finalize());
        if let (Some(key), Some(cache)) = (key, cache) {
            // Best effort: a cache that cannot be written costs the next start a re-read, nothing more.
            let mut map = read_cache(cache);
            map.insert(key, serde_json::Value::String(fp.clone()));
            if let Some(dir) = cache.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let text = serde_json::Value::Object(map).to_string();
            let _ = crate::store::atomic_write_str(cache, &text);
        }
        Ok(fp)
    }
}

/// The fingerprint cache's key for a model's files: each file's absolute path, size and modification
/// time (nanoseconds), so that a changed file is hashed again. `None` when a file cannot be stat'ed.
fn fingerprint_key(files: &[&PathBuf]) -> Option<String> {
    let mut key = String::new();
    for p in files {
        let abs = std::fs::canonicalize(p).ok()?;
        let meta = std::fs::metadata(&abs).ok()?;
        let mtime = meta
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?;
        key.push_str(&format!(
            "{}|{}|{};",
            abs.display(),
            meta.len(),
            mtime.as_nanos()
        ));
    }
    Some(key)
}

/// Where fingerprints are cached: `$SIMLM_CACHE`, else `$XDG_CACHE_HOME/simlm`, else `~/.cache/simlm`.
fn fingerprint_cache_path() -> Option<PathBuf> {
    let dir = std::env::var_os("SIMLM_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("simlm")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/simlm")))?;
    Some(dir.join("fingerprints.json"))
}

fn read_cache(path: &Path) -> serde_json::Map<String, serde_json::Value> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Downloads a hub repository's files into the cache; the first request is bounded in time so that a
/// machine without a route to the hub fails quickly instead of hanging.
fn download(id: &str) -> std::result::Result<(), String> {
    let id = id.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let res = (|| -> std::result::Result<(), String> {
            let api = hf_hub::api::sync::ApiBuilder::from_env()
                .with_progress(true)
                .build()
                .map_err(|e| e.to_string())?;
            let repo = api.model(id.clone());
            repo.get("config.json").map_err(|e| e.to_string())?;
            tx.send(Ok(())).ok();
            let mut got_tok = false;
            for n in TOKENIZER_FILES {
                if repo.get(n).is_ok() {
                    got_tok = true;
                    break;
                }
            }
            if !got_tok {
                return Err("the repository has neither tokenizer.json nor vocab.txt".into());
            }
            let _ = repo.get("tokenizer_config.json");
            let mut got_w = false;
            for n in WEIGHT_FILES {
                if repo.get(n).is_ok() {
                    got_w = true;
                    break;
                }
            }
            if !got_w {
                return Err(
                    "the repository has neither model.safetensors nor pytorch_model.bin".into(),
                );
            }
            let _ = repo.get("sentence_bert_config.json");
            let _ = repo.get("1_Pooling/config.json");
            Ok(())
        })();
        tx.send(res).ok();
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("no answer from the hub within 30 s (offline?)".into()),
    }
    // The first file arrived: the rest may take long (hundreds of MB), so wait without a bound.
    rx.recv().unwrap_or(Err("download thread ended".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_paths_are_told_apart() {
        assert!(looks_like_hub_id("intfloat/simlm-base-msmarco-finetuned"));
        assert!(!looks_like_hub_id("./models/x"));
        assert!(!looks_like_hub_id("models/x/y"));
        assert!(!looks_like_hub_id("/abs/x"));
        assert!(!looks_like_hub_id("../x"));
    }

    #[test]
    fn offline_uncached_hub_id_errors_at_once() {
        // The cache and the offline switch are passed in: setting HF_HOME here would change it for
        // the tests running beside this one.
        let tmp = tempfile::tempdir().unwrap();
        let cache = hf_hub::Cache::new(tmp.path().to_path_buf());
        let e = ModelFiles::from_hub_cache("intfloat/simlm-base-msmarco-finetuned", cache, true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("huggingface-cli download intfloat/simlm-base-msmarco-finetuned"),
            "{e}"
        );
        assert!(e.contains("--model"), "{e}");
    }

    #[test]
    fn fingerprints_are_cached_until_a_file_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        std::fs::create_dir(&dir).unwrap();
        for (name, text) in [
            ("config.json", "{}"),
            ("tokenizer.json", "{}"),
            ("model.safetensors", "w1"),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let files = ModelFiles {
            spec: "m".into(),
            config: dir.join("config.json"),
            tokenizer: dir.join("tokenizer.json"),
            tokenizer_config: None,
            weights: dir.join("model.safetensors"),
            sentence_bert_config: None,
            pooling_config: None,
        };
        let cache = tmp.path().join("cache/fingerprints.json");
        let fp = files.fingerprint_cached(Some(&cache)).unwrap();
        assert_eq!(fp, files.fingerprint_cached(None).unwrap());
        // The cached value is what a second start reads (shown by editing it).
        let text = std::fs::read_to_string(&cache).unwrap();
        std::fs::write(&cache, text.replace(&fp, "sha256:cached")).unwrap();
        assert_eq!(
            files.fingerprint_cached(Some(&cache)).unwrap(),
            "sha256:cached"
        );
        // A changed file is hashed again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.join("model.safetensors"), "w2").unwrap();
        let fresh = files.fingerprint_cached(Some(&cache)).unwrap();
        assert!(fresh != "sha256:cached" && fresh != fp, "{fresh}");
    }

    #[test]
    fn missing_folder_is_named() {
        let e = ModelFiles::resolve("./no/such/folder")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("./no/such/folder") && e.contains("does not exist"),
            "{e}"
        );
    }
}
