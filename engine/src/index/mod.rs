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

pub use build::{build, scan, shard_range, unfinished, BuildOptions, Scan, Unfinished};
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
    /// The graph, opened with the other files: `None` when the manifest lists none, an error when the
    /// listed one cannot be opened (exact search still answers).
    graph: Option<std::result::Result<(Graph, std::fs::File), Error>>,
    /// The graph's file is read into the page cache once, on the first graph search.
    warmed: std::sync::Once,
}

impl Index {
    /// Opens an index, checking what is cheap to check: the manifest's own checksum, the matrix's
    /// header and size against the manifest, the ids' and offsets' checksums (they are read whole
    /// anyway), the graph's header and size. The matrix's and graph's bytes are checked by `verify`,
    /// not here.
    ///
    /// Every file of the generation is opened here, the graph included, so that an open index answers
    /// from one generation whole even after a writer commits another and removes this one (the maps
    /// and open files keep the removed files' contents).
    pub fn open(dir: &Path) -> Result<Self> {
        // A writer may commit a new generation, and remove this one, between the manifest's read and
        // the files' opening: then the manifest has changed, and the new one is opened.
        let mut tries = 0;
        loop {
            let manifest = Manifest::read(dir)?;
            let used = manifest.data.clone();
            let moved = || Manifest::read(dir).ok().map(|m| m.data) != Some(used.clone());
            match Self::open_with(dir, manifest) {
                Err(Error::Io { err, .. })
                    if err.kind() == std::io::ErrorKind::NotFound && tries < 3 && moved() =>
                {
                    tries += 1;
                }
                Ok(index) if matches!(index.graph, Some(Err(_))) && tries < 3 && moved() => {
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
        let graph = (manifest.hnsw.is_some() || manifest.file(GRAPH).is_some())
            .then(|| open_graph(dir, &data, &manifest, &vectors));
        Ok(Index {
            dir: dir.to_path_buf(),
            data,
            manifest,
            vectors,
            ids,
            offsets,
            graph,
            warmed: std::sync::Once::new(),
        })
    }

    /// The HNSW graph, opened with the index; or why there is none.
    pub fn graph(&self) -> Result<&Graph> {
        let path = self.data.join(GRAPH);
        match &self.graph {
            Some(Ok((g, file))) => {
                // A graph that fits in memory is read into the page cache in the background, in
                // large sequential reads, instead of page by page as the first walks touch it (a
                // cold 9 GB graph read by random 4 KiB faults takes many minutes; sequentially,
                // seconds). The open map keeps the file even if its generation has been removed.
                self.warmed.call_once(|| {
                    let len = g.file_len() as u64;
                    if !g.is_resident()
                        && crate::memory::total_memory().is_some_and(|t| len <= t / 2)
                    {
                        if let Ok(f) = file.try_clone() {
                            crate::memory::warm_page_cache(f, len);
                        }
                    }
                });
                Ok(g)
            }
            Some(Err(e)) => Err(again(e)),
            None => Err(Error::invalid(
                &path,
                None,
                format!(
                    "the index has no HNSW graph; build it with `simlm-index hnsw {}` or search with --exact",
                    self.dir.display()
                ),
            )),
        }
    }

    /// The top `k` rows for each query (row-major `nq x dim`), exactly or through the graph. Every
    /// list holds `min(k, passages)` hits with finite scores, or the search is an error.
    pub fn search(&self, queries: &[f32], k: usize, mode: SearchMode) -> Result<Vec<Vec<Hit>>> {
        use rayon::prelude::*;
        let dim = self.manifest.dim;
        check_query_vectors(queries, dim)?;
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

/// Opens the graph `manifest` lists, and checks it against the matrix and the manifest. The file is
/// kept open beside the map, to read it into the page cache later even if its generation is removed.
fn open_graph(
    dir: &Path,
    data: &Path,
    manifest: &Manifest,
    vectors: &NpyMatrix,
) -> Result<(Graph, std::fs::File)> {
    let path = data.join(GRAPH);
    let file = std::fs::File::open(&path);
    let g = Graph::open(&path, dir)?;
    let file = file.map_err(|e| Error::io(&path, e))?;
    let recorded = manifest.file(GRAPH).map(|f| f.size);
    if g.len() != vectors.rows()
        || g.dim() != vectors.cols()
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
                vectors.rows(),
                vectors.cols(),
                recorded.unwrap_or(0),
                dir.display()
            ),
        ));
    }
    Ok((g, file))
}

/// A new error with the same kind, file and message as `e` (an error kept from the index's opening,
/// returned to each search that needs what failed to open).
fn again(e: &Error) -> Error {
    match e {
        Error::Io { path, err } => {
            Error::io(path, std::io::Error::new(err.kind(), err.to_string()))
        }
        Error::Invalid { path, line, msg } => Error::invalid(path, *line, msg.clone()),
        Error::DataCorruption { path, msg } => Error::corrupt(path, msg.clone()),
        other => Error::Usage(other.to_string()),
    }
}

/// The longest query vector searched. A score is at most the product of the two vectors' lengths, so
/// a query of at most this length scores every stored vector of length up to 1e20 without overflow;
/// encoders' vectors have lengths near 1.
pub const MAX_QUERY_NORM: f64 = 1e18;

/// The shortest query vector scored: below it the products underflow towards f32's subnormals and
/// zero, and the scores no longer rank anything.
pub const MIN_QUERY_NORM: f64 = 1e-18;

/// Checks query vectors (row-major, `dim` values each) before a search: the right size, finite
/// values, not all zeros (every score would be 0: no ranking), no shorter than `MIN_QUERY_NORM` (its
/// scores underflow to zero) and no longer than `MAX_QUERY_NORM` (its scores could overflow and seem
/// to blame the index). The error names the query.
pub fn check_query_vectors(queries: &[f32], dim: usize) -> Result<()> {
    crate::search::check_queries(queries, dim)?;
    for (i, q) in queries.chunks(dim).enumerate() {
        let norm = q
            .iter()
            .map(|&x| (x as f64) * (x as f64))
            .sum::<f64>()
            .sqrt();
        if norm == 0.0 {
            return Err(Error::Usage(format!(
                "query {i} is all zeros: it scores every passage 0, so there is nothing to rank"
            )));
        }
        if norm < MIN_QUERY_NORM {
            return Err(Error::Usage(format!(
                "query {i} has length {norm:.3e}, less than {MIN_QUERY_NORM:e}: its scores underflow \
                 to zero; scale it up (the index's model makes vectors of length near 1)"
            )));
        }
        if norm > MAX_QUERY_NORM {
            return Err(Error::Usage(format!(
                "query {i} has length {norm:.3e}, more than {MAX_QUERY_NORM:e}: its scores could \
                 overflow; scale it down (the index's model makes vectors of length near 1)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
