//! The HNSW graph over the unit vectors, searched by inner product.
//!
//! - `build`: the graph's construction, in parallel, scored on the codes, straight into the file's
//!   link arrays, every node given an incoming link;
//! - `codes`: the 8-bit codes of the vectors that the walk scores on;
//! - `format`: the file `graph.hnsw`, written once and read (or memory-mapped) for search, every size
//!   checked;
//! - `order`: the order the file stores the nodes in (breadth-first from the entry, so that a node's
//!   neighbours' codes lie together);
//! - `walk`: the search: a walk over fixed-stride link arrays with a per-thread visited table, scored
//!   on the codes (a quarter of the f32 matrix's bytes, so four times fewer cache lines per step); the
//!   `ef` candidates it ends with are re-scored from the matrix in exact search's arithmetic, so
//!   returned scores (bit for bit), and their order and ties, are those of exact search.

mod build;
pub mod checkpoint;
pub mod codes;
mod format;
mod order;
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

/// Insertions between two chances of a checkpoint, unless `SIMLM_GRAPH_CHUNK` says otherwise (see
/// [`CheckpointsIn`]).
const CHUNK: usize = 65_536;
/// "No list" in the upper-layer index; also the bound on node counts.
const NONE: u32 = u32::MAX;

impl HnswParams {
    /// The largest `m`. Layer 0 keeps `2m` links a node, so each node takes `8m + 4` bytes there:
    /// 4 KiB at 512, 36 GB for 8.8 million passages. hnswlib's and faiss's users go up to 64-128,
    /// where recall stops improving; 512 leaves them room and refuses a slip of the keyboard before
    /// it asks for terabytes.
    pub const MAX_M: usize = 512;
    /// The largest `ef_construction`. Build time grows with it about linearly and recall stops
    /// improving at a few hundred to a few thousand (hnswlib's and faiss's users go up to 2,000);
    /// 16,384 leaves room above that.
    pub const MAX_EF_CONSTRUCTION: usize = 16_384;

    /// Refuses parameters outside `1..=MAX_M` and `1..=MAX_EF_CONSTRUCTION`, before any work.
    pub fn validate(&self) -> Result<()> {
        let check = |flag: &str, v: usize, max: usize, why: &str| match v {
            0 => Err(Error::Usage(format!("{flag} 0: must be at least 1"))),
            v if v > max => Err(Error::Usage(format!(
                "{flag} {v}: must be at most {max} ({why})"
            ))),
            _ => Ok(()),
        };
        check(
            "--hnsw-m",
            self.m,
            Self::MAX_M,
            "16-64 is usual; each node keeps 2 x M links on layer 0",
        )?;
        check(
            "--ef-construction",
            self.ef_construction,
            Self::MAX_EF_CONSTRUCTION,
            "100-500 is usual; recall stops improving long before the bound",
        )
    }
}

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
    /// The order the file stores the nodes in (`order[i]` is the row of the file's node `i`; see
    /// `order`). The arrays above are by row.
    order: Vec<u32>,
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

/// Where and how often a build writes its checkpoints (see `checkpoint`), and where it says what it
/// resumes from or discards.
#[derive(Clone, Copy)]
pub struct CheckpointsIn<'a> {
    /// The index folder: checkpoints go to `DIR/graph.partial/`.
    pub dir: &'a std::path::Path,
    /// Where messages go.
    pub note: &'a dyn Fn(&str),
    /// The least time between two checkpoints.
    pub every: std::time::Duration,
    /// Insertions between two chances of a checkpoint (no insertion is in flight at one).
    pub chunk: usize,
}

impl<'a> CheckpointsIn<'a> {
    /// Checkpoints in index folder `dir` every 10 minutes, with a chance every 65,536 insertions;
    /// the environment variables `SIMLM_GRAPH_CHECKPOINT_SECS` and `SIMLM_GRAPH_CHUNK` change the
    /// two (tests set both low, to checkpoint a small graph).
    pub fn new(dir: &'a std::path::Path, note: &'a dyn Fn(&str)) -> Self {
        let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
        CheckpointsIn {
            dir,
            note,
            every: var("SIMLM_GRAPH_CHECKPOINT_SECS")
                .map_or(checkpoint::EVERY, std::time::Duration::from_secs),
            chunk: var("SIMLM_GRAPH_CHUNK").map_or(CHUNK, |c| (c as usize).max(1)),
        }
    }
}

/// [`build`], with checkpoints (see `checkpoint`): a build of the same graph that finds a good one
/// in `checkpoints.dir` starts from it, and says so through `checkpoints.note`; one that is damaged
/// is not used, and the note says why.
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
    params.validate()?;
    let started = std::time::Instant::now();
    // The codes first: the construction scores on them, reading a quarter of the f32 bytes.
    let book = CodeBook::fit(matrix)?;
    let codes = book.encode(matrix);
    failpoint::hit("codes").map_err(|e| Error::io(matrix.path(), e))?;
    let ck = checkpoints.map(|c| {
        checkpoint::Checkpoints::new(c.dir, n, matrix.cols(), params, &codes, started, c.every)
    });
    let resume = match (&ck, checkpoints) {
        (Some(c), Some(cin)) => c.load(cin.note),
        _ => None,
    };
    if let (Some((r, folder)), Some(cin)) = (&resume, checkpoints) {
        (cin.note)(&format!(
            "resuming the graph after {} of {n} nodes, {:.1} s of building so far (checkpoint in {})",
            r.inserted,
            r.build_seconds,
            folder.display()
        ));
    }
    let resume = resume.map(|(r, _)| r);
    let halfway = std::sync::atomic::AtomicBool::new(false);
    let save = |inserted: usize,
                l0: &[std::sync::atomic::AtomicU32],
                up: &[std::sync::atomic::AtomicU32]| match &ck {
        Some(c) => c.save_if_due(inserted, l0, up),
        None => Ok(()),
    };
    let chunk = checkpoints.map_or(CHUNK, |c| c.chunk);
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
        let dir = checkpoints.map_or(matrix.path(), |c| c.dir);
        Error::io(dir.join(checkpoint::FOLDER), e)
    })?;
    let order = order::breadth_first(&links.layer0, links.m0, n, links.entry);
    Ok(GraphParts {
        order,
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
