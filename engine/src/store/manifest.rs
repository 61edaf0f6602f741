//! `manifest.json`: what an index holds and how it was made. Written atomically, last of all, so a
//! folder with a manifest is a finished index.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::search::hnsw::HnswParams;
use crate::store::npy::Dtype;
use crate::{InputFormat, Pooling, Precision};

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT_VERSION: u32 = 1;

/// A file and its checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

impl FileSum {
    pub fn of(path: &Path, name: &str) -> Result<Self> {
        let (size, sha256) = sha256_file(path)?;
        Ok(FileSum {
            path: name.to_string(),
            size,
            sha256,
        })
    }
}

pub fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(path).at(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, format!("{:x}", h.finalize())))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The folder or hub id given at build time.
    pub spec: String,
    /// SHA-256 over the weights, tokenizer and config files.
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
    /// Rows `[start, end)` of the whole collection that this shard holds.
    pub start: usize,
    pub end: usize,
    /// Passages in the whole collection.
    pub total: usize,
    /// Rows per chunk: shards are cut at chunk boundaries.
    pub chunk_rows: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sources {
    pub collection: FileSum,
    pub titles: Option<FileSum>,
    pub fix_encoding: bool,
    /// Malformed lines skipped under --skip-bad.
    pub skipped_lines: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub model: ModelInfo,
    pub input_format: InputFormat,
    pub pooling: Pooling,
    pub precision: Precision,
    pub dim: usize,
    pub dtype: Dtype,
    pub count: usize,
    pub shard: Option<Shard>,
    pub hnsw: Option<HnswParams>,
    pub sources: Sources,
    /// The index's own files (vectors, ids, offsets, graph) with checksums.
    pub files: Vec<FileSum>,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self> {
        let p = dir.join(MANIFEST);
        if !p.is_file() {
            let hint = if dir.join(crate::index::PROGRESS).is_file() {
                "the build did not finish: run the same `simlm-index build` command again to resume it"
            } else {
                "is this an index folder made by `simlm-index build`?"
            };
            return Err(Error::ModelNotFound(format!(
                "{}: no manifest.json ({hint})",
                dir.display()
            )));
        }
        let text = std::fs::read_to_string(&p).at(&p)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(&p, Some(e.line()), format!("not valid JSON: {e}")))?;
        let version = v.get("format_version").and_then(|x| x.as_u64());
        if version != Some(FORMAT_VERSION as u64) {
            return Err(Error::invalid(
                &p,
                None,
                format!(
                    "format_version {} is not supported by this build (it reads version {FORMAT_VERSION}); rebuild the index with this version of simlm-index",
                    version.map(|v| v.to_string()).unwrap_or_else(|| "missing".into())
                ),
            ));
        }
        serde_json::from_value(v)
            .map_err(|e| Error::invalid(&p, None, format!("unexpected content: {e}")))
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Msg(e.to_string()))?;
        crate::store::atomic_write_str(&dir.join(MANIFEST), &(text + "\n"))
    }
}
