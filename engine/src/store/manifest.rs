//! `manifest.json`: what an index holds, how it was made, and which generation folder holds its files.
//! Written atomically, last of all: replacing it is the commit of every command that writes an index
//! (see `layout`). It carries a checksum of its own content, so that an edited or damaged manifest
//! (a changed `pooling`, `dtype` or `count`) is refused when it is read, not trusted.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::layout::{self, MANIFEST, PROGRESS};
use crate::error::{Error, IoContext, Result};
use crate::store::npy::Dtype;
use crate::{InputFormat, Pooling, Precision};

/// Version 2: files in generation folders, a checksum over the manifest.
pub const FORMAT_VERSION: u32 = 2;

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

/// The size and SHA-256 (hex) of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut h = Sha256::new();
    let size = hash_file_into(path, &mut h)?;
    Ok((size, format!("{:x}", h.finalize())))
}

/// Feeds a file's bytes into `h`; returns its size.
pub fn hash_file_into(path: &Path, h: &mut Sha256) -> Result<u64> {
    let mut f = std::fs::File::open(path).at(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            return Ok(size);
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
}

/// The SHA-256 (hex) of bytes in memory.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The HNSW graph's build parameters (recorded in the manifest; `search::hnsw` builds with them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswParams {
    /// Neighbours per node on the upper layers; layer 0 keeps up to twice as many (hnswlib's `M`).
    pub m: usize,
    pub ef_construction: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 32,
            ef_construction: 200,
        }
    }
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

/// Where an index made by `simlm-index import` took its vectors and ids from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Imported {
    /// The `.npy` file, as an absolute path, and its size when imported.
    pub vectors: String,
    pub size: u64,
    /// The ids file, if one was given (else the ids are the row numbers, or the collection's).
    pub ids: Option<FileSum>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// The encoder's model, input format, pooling and precision: absent (null) for an index imported
    /// from vectors made elsewhere, which answers pre-encoded queries only.
    pub model: Option<ModelInfo>,
    pub input_format: Option<InputFormat>,
    pub pooling: Option<Pooling>,
    pub precision: Option<Precision>,
    pub dim: usize,
    pub dtype: Dtype,
    pub count: usize,
    pub shard: Option<Shard>,
    pub hnsw: Option<HnswParams>,
    /// The collection behind the ids (absent for an import without `--collection`).
    pub sources: Option<Sources>,
    /// Set for an index made by `simlm-index import` (not written otherwise, so that the manifests
    /// of built indexes, and their checksums, are as they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported: Option<Imported>,
    /// A hash of everything a build's vectors depend on (model, format, sources, rows, ...): a build
    /// run again with the same finds the index complete. Empty for merged indexes.
    #[serde(default)]
    pub settings: String,
    /// The generation folder that holds the index's files.
    pub data: String,
    /// The index's own files (vectors, ids, offsets, graph; names inside `data`) with checksums.
    pub files: Vec<FileSum>,
    /// SHA-256 of this manifest written with an empty `checksum`.
    #[serde(default)]
    pub checksum: String,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self> {
        let p = dir.join(MANIFEST);
        if !p.is_file() {
            let unfinished = layout::generations(dir)
                .unwrap_or_default()
                .iter()
                .any(|g| {
                    dir.join(layout::generation_name(*g))
                        .join(PROGRESS)
                        .is_file()
                });
            let hint = if unfinished {
                "the build did not finish: run the same `simlm-index build` command again to resume it"
            } else {
                "is this an index folder made by `simlm-index build`?"
            };
            return Err(Error::invalid(
                dir,
                None,
                format!("no manifest.json ({hint})"),
            ));
        }
        let text = std::fs::read_to_string(&p).at(&p)?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            Error::corrupt(
                &p,
                format!("not valid JSON ({e}); the manifest is damaged: rebuild the index"),
            )
        })?;
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
        let m: Manifest = serde_json::from_value(v).map_err(|e| {
            Error::corrupt(
                &p,
                format!("unexpected content ({e}); the manifest is damaged: rebuild the index"),
            )
        })?;
        if m.checksum != m.own_checksum() {
            return Err(Error::corrupt(
                &p,
                "its checksum does not match its content: the manifest was edited or is damaged; \
                 restore it or rebuild the index",
            ));
        }
        if layout::parse_generation(&m.data).is_none() {
            return Err(Error::corrupt(
                &p,
                format!(
                    "`data` is {:?}, not a generation folder; the manifest is damaged",
                    m.data
                ),
            ));
        }
        Ok(m)
    }

    /// The checksum this manifest's content should carry.
    fn own_checksum(&self) -> String {
        let mut bare = self.clone();
        bare.checksum = String::new();
        sha256_bytes(
            serde_json::to_string(&bare)
                .expect("a manifest serialises")
                .as_bytes(),
        )
    }

    /// Writes `manifest.json` atomically, with its checksum: the commit of a write.
    pub fn write(&mut self, dir: &Path) -> Result<()> {
        self.checksum = self.own_checksum();
        let text = serde_json::to_string_pretty(self).expect("a manifest serialises");
        crate::store::atomic_write_str(&dir.join(MANIFEST), &(text + "\n"))
    }

    /// The generation folder of the index's files.
    pub fn data_dir(&self, dir: &Path) -> std::path::PathBuf {
        dir.join(&self.data)
    }

    /// The generation number of the index's files.
    pub fn generation(&self) -> u64 {
        layout::parse_generation(&self.data).unwrap_or(0)
    }

    /// The recorded size and checksum of one of the index's files.
    pub fn file(&self, name: &str) -> Option<&FileSum> {
        self.files.iter().find(|f| f.path == name)
    }
}
