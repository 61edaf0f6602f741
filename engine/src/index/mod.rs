//! Index folders: building (`build`), importing vectors made elsewhere (`import`), joining shards and rebuilding the graph (`merge`), checking
//! (`verify`), and opening one for search (`Index`, and `Searcher`: an index with the encoder its
//! manifest names). The folder's layout is `store::layout`'s.

mod build;
mod import;
mod merge;
mod progress;
mod searcher;
mod verify;
mod writer;

pub use build::{build, scan, shard_range, BuildOptions, Scan};
pub use import::{import, ImportOptions};
pub use merge::{merge, rebuild_graph};
pub use progress::{Progress, Quiet};
pub use searcher::{Searcher, SearcherOptions};
pub use verify::{verify, Problem};

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::search::hnsw::Graph;
use crate::search::Hit;
use crate::store::layout::{DOCIDS, GRAPH, OFFSETS, VECTORS};
use crate::store::manifest::Manifest;
use crate::store::npy::NpyMatrix;

/// How to search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchMode {
    /// Every vector: the reference.
    Exact,
    /// The HNSW graph with this search-time `ef`.
    Hnsw { ef: usize },
}

impl std::fmt::Display for SearchMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SearchMode::Exact => f.write_str("exact"),
            SearchMode::Hnsw { ef } => write!(f, "hnsw ef={ef}"),
        }
    }
}

/// A finished index, opened for search.
pub struct Index {
    pub dir: PathBuf,
    /// The generation folder holding the files.
    pub data: PathBuf,
    pub manifest: Manifest,
    pub vectors: NpyMatrix,
    pub ids: Vec<String>,
    pub offsets: Vec<u64>,
    graph: std::sync::OnceLock<Graph>,
}

impl Index {
    /// Opens an index, checking what is cheap to check: the manifest's own checksum, the matrix's
    /// header and size against the manifest, the ids' and offsets' checksums (they are read whole
    /// anyway). The matrix's and graph's bytes are checked by `verify`, not here.
    pub fn open(dir: &Path) -> Result<Self> {
        // A writer may commit a new generation, and remove this one, between the manifest's read and
        // the files' opening: then the manifest has changed, and the new one is opened.
        let mut tries = 0;
        loop {
            let manifest = Manifest::read(dir)?;
            let used = manifest.data.clone();
            match Self::open_with(dir, manifest) {
                Err(Error::Io { err, .. })
                    if err.kind() == std::io::ErrorKind::NotFound
                        && tries < 3
                        && Manifest::read(dir).ok().map(|m| m.data) != Some(used) =>
                {
                    tries += 1;
                }
                r => return r,
            }
        }
    }

    /// Opens the files `manifest` names.
    fn open_with(dir: &Path, manifest: Manifest) -> Result<Self> {
        let data = manifest.data_dir(dir);
        let vp = data.join(VECTORS);
        let vectors = NpyMatrix::open(&vp)?;
        if vectors.rows() != manifest.count
            || vectors.cols() != manifest.dim
            || vectors.header.dtype != manifest.dtype
        {
            return Err(Error::corrupt(
                &vp,
                format!(
                    "holds {} x {} {:?} vectors, the manifest says {} x {} {:?}: the index is damaged; rebuild it",
                    vectors.rows(),
                    vectors.cols(),
                    vectors.header.dtype,
                    manifest.count,
                    manifest.dim,
                    manifest.dtype,
                ),
            ));
        }
        let listed = |name: &str| {
            manifest.file(name).ok_or_else(|| {
                Error::corrupt(
                    dir.join(crate::store::layout::MANIFEST),
                    format!("does not list {name}: the index is damaged"),
                )
            })
        };
        let (ids, offsets) =
            crate::store::ids::read(&data, Some((listed(DOCIDS)?, listed(OFFSETS)?)))?;
        if ids.len() != manifest.count {
            return Err(Error::corrupt(
                data.join(DOCIDS),
                format!(
                    "{} ids for {} vectors: the index is damaged",
                    ids.len(),
                    manifest.count
                ),
            ));
        }
        Ok(Index {
            dir: dir.to_path_buf(),
            data,
            manifest,
            vectors,
            ids,
            offsets,
            graph: std::sync::OnceLock::new(),
        })
    }

    /// The HNSW graph, loaded on first use.
    pub fn graph(&self) -> Result<&Graph> {
        if let Some(g) = self.graph.get() {
            return Ok(g);
        }
        let path = self.data.join(GRAPH);
        let g = Graph::open(&path, &self.dir)?;
        let recorded = self.manifest.file(GRAPH).map(|f| f.size);
        if g.len() != self.vectors.rows()
            || g.dim() != self.vectors.cols()
            || recorded.is_some_and(|s| s != g.file_len() as u64)
        {
            return Err(Error::corrupt(
                &path,
                format!(
                    "a graph of {} x {} vectors ({} bytes) for a matrix of {} x {} (the manifest records {} bytes): \
                     rebuild it with `simlm-index hnsw {}`",
                    g.len(),
                    g.dim(),
                    g.file_len(),
                    self.vectors.rows(),
                    self.vectors.cols(),
                    recorded.unwrap_or(0),
                    self.dir.display()
                ),
            ));
        }
        // A graph that fits in memory is read into the page cache in the background, in large
        // sequential reads, instead of page by page as the first walks touch it (a cold 9 GB graph
        // read by random 4 KiB faults takes many minutes; sequentially, seconds).
        let len = g.file_len() as u64;
        if crate::memory::total_memory().is_some_and(|t| len <= t / 2) {
            if let Ok(f) = std::fs::File::open(&path) {
                crate::memory::warm_page_cache(f, len);
            }
        }
        Ok(self.graph.get_or_init(|| g))
    }

    /// The top `k` rows for each query (row-major `nq x dim`), exactly or through the graph. Every
    /// list holds `min(k, passages)` hits with finite scores, or the search is an error.
    pub fn search(&self, queries: &[f32], k: usize, mode: SearchMode) -> Result<Vec<Vec<Hit>>> {
        use rayon::prelude::*;
        let dim = self.manifest.dim;
        crate::search::check_queries(queries, dim)?;
        match mode {
            SearchMode::Exact => {
                // Bounded query blocks keep the score buffers small; each block streams the matrix once.
                let mut out = Vec::with_capacity(queries.len() / dim);
                for block in queries.chunks(1024 * dim) {
                    out.extend(crate::search::exact::search(&self.vectors, block, k)?);
                }
                Ok(out)
            }
            SearchMode::Hnsw { ef } => {
                let g = self.graph()?;
                queries
                    .par_chunks(dim)
                    .map(|q| g.search(&self.vectors, q, k, ef))
                    .collect()
            }
        }
    }

    /// The passage behind row `row`, read from the collection through its stored offset.
    pub fn passage(&self, row: usize) -> Result<crate::corpus::Record> {
        let Some(sources) = &self.manifest.sources else {
            return Err(Error::invalid(
                &self.dir,
                None,
                "no collection was given to `simlm-index import`: ids and scores only",
            ));
        };
        let src = &sources.collection;
        let path = Path::new(&src.path);
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let changed = || {
            Error::invalid(
                path,
                None,
                "the collection has changed since the index was built",
            )
        };
        if meta.len() != src.size {
            return Err(changed());
        }
        let rec = crate::corpus::read_record_at(path, self.offsets[row], sources.fix_encoding)?;
        if rec.id != self.ids[row] {
            return Err(changed());
        }
        Ok(rec)
    }
}

#[cfg(test)]
mod tests;
