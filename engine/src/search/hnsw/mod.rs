//! The HNSW graph over the unit vectors, searched by inner product.
//!
//! - `build`: the graph's construction, in parallel, scored on the codes, straight into the file's
//!   link arrays, every node given an incoming link;
//! - `codes`: the 8-bit codes of the vectors that the walk scores on;
//! - `format`: the file `graph.hnsw`, written once and memory-mapped for search, every size checked;
//! - `walk`: the search: a walk over fixed-stride link arrays with a per-thread visited table, scored
//!   on the codes (a quarter of the f32 matrix's bytes, so four times fewer cache lines per step); the
//!   `ef` candidates it ends with are re-scored from the matrix in exact search's arithmetic, so
//!   returned scores (bit for bit), and their order and ties, are those of exact search.

mod build;
pub mod checkpoint;
pub mod codes;
mod format;
mod walk;

pub use codes::CodeBook;
pub use format::Graph;

use crate::error::{Error, Result};
use crate::failpoint;
use crate::store::npy::NpyMatrix;

pub use crate::store::manifest::HnswParams;

/// The default search-time `ef`.
pub const DEFAULT_EF: usize = 128;

const MAX_LAYER: usize = 16;

/// Insertions between two chances of a checkpoint (`SIMLM_GRAPH_CHUNK` overrides it, for tests).
const CHUNK: usize = 65_536;
/// "No list" in the upper-layer index; also the bound on node counts.
const NONE: u32 = u32::MAX;

/// A scored node, ordered best first: higher score, then lower id (the result order,
/// `search::rank`; a u32 id keeps the heaps compact). The build's and the walk's heaps hold these.
#[derive(Debug, Clone, Copy)]
struct Near {
    score: f32,
    id: u32,
}

impl PartialEq for Near {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl Eq for Near {}
impl PartialOrd for Near {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Near {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        crate::search::rank(self.score, self.id as usize, o.score, o.id as usize)
    }
}

/// A built graph in memory, in the file's layout.
pub struct GraphParts {
    m0: usize,
    m: usize,
    top: usize,
    entry: usize,
    dim: usize,
    levels: Vec<u8>,
    layer0: Vec<u32>,
    upper_at: Vec<u32>,
    upper: Vec<u32>,
    book: CodeBook,
    codes: Vec<u8>,
}

impl GraphParts {
    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }
}

/// Builds the graph over every row of `matrix`, inserting in parallel on the current rayon pool (one
/// thread: the same graph every time), and the rows' codes; `progress` is called with the number of
/// rows inserted so far.
pub fn build(
    matrix: &NpyMatrix,
    params: HnswParams,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<GraphParts> {
    build_resumable(matrix, params, progress, None)
}

/// An index folder for a build's checkpoints, and where to say that it resumes.
pub type CheckpointsIn<'a> = (&'a std::path::Path, &'a dyn Fn(&str));

/// [`build`], with checkpoints in index folder `dir` (see `checkpoint`): a build of the same graph
/// that finds one there starts from it, and says so through `note`.
pub fn build_resumable(
    matrix: &NpyMatrix,
    params: HnswParams,
    progress: &(dyn Fn(usize) + Sync),
    checkpoints: Option<CheckpointsIn>,
) -> Result<GraphParts> {
    let n = matrix.rows();
    if n >= NONE as usize {
        return Err(Error::invalid(
            matrix.path(),
            None,
            format!(
                "{n} vectors: a graph holds at most {} (build shards)",
                NONE - 1
            ),
        ));
    }
    if params.m == 0 {
        return Err(Error::Usage(
            "the graph needs --hnsw-m of at least 1".into(),
        ));
    }
    let started = std::time::Instant::now();
    // The codes first: the construction scores on them, reading a quarter of the f32 bytes.
    let book = CodeBook::fit(matrix);
    let codes = book.encode(matrix);
    failpoint::hit("codes").map_err(|e| Error::io(matrix.path(), e))?;
    let ck = checkpoints.map(|(dir, _)| {
        checkpoint::Checkpoints::new(dir, n, matrix.cols(), params, &codes, started)
    });
    let resume = ck.as_ref().and_then(|c| {
        let (l0, up) = build::array_words(n, params.m);
        c.load(l0, up)
    });
    if let (Some(r), Some((dir, note))) = (&resume, checkpoints) {
        note(&format!(
            "resuming the graph after {} of {n} nodes, {:.1} s of building so far (checkpoint in {})",
            r.inserted,
            r.build_seconds,
            dir.join(checkpoint::FOLDER).display()
        ));
    }
    let halfway = std::sync::atomic::AtomicBool::new(false);
    let save = |inserted: usize,
                l0: &[std::sync::atomic::AtomicU32],
                up: &[std::sync::atomic::AtomicU32]| match &ck {
        Some(c) => c.save_if_due(inserted, l0, up),
        None => Ok(()),
    };
    let chunk = std::env::var("SIMLM_GRAPH_CHUNK")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CHUNK);
    let links = build::build(
        &codes,
        n,
        matrix.cols(),
        &book,
        params,
        &|done| {
            progress(done);
            if 2 * done >= n && !halfway.swap(true, std::sync::atomic::Ordering::Relaxed) {
                let _ = failpoint::hit("graph");
            }
        },
        resume,
        chunk,
        &save,
    )
    .map_err(|e| {
        let dir = checkpoints.map_or(matrix.path(), |(d, _)| d);
        Error::io(dir.join(checkpoint::FOLDER), e)
    })?;
    Ok(GraphParts {
        m0: links.m0,
        m: links.m,
        top: links.top,
        entry: links.entry,
        dim: matrix.cols(),
        levels: links.levels,
        layer0: links.layer0,
        upper_at: links.upper_at,
        upper: links.upper,
        book,
        codes,
    })
}

#[cfg(test)]
mod build_tests;
#[cfg(test)]
mod tests;
