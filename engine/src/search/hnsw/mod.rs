//! The HNSW graph over the unit vectors, searched by inner product.
//!
//! - `build`: the graph's construction (`hnsw_rs_build`: hnsw_rs's insertion, exported into this
//!   crate's layout with the unreached nodes linked);
//! - `codes`: the 8-bit codes of the vectors that the walk scores on;
//! - `format`: the file `graph.hnsw`, written once and memory-mapped for search, every size checked;
//! - `walk`: the search: a walk over fixed-stride link arrays with a per-thread visited table, scored
//!   on the codes (a quarter of the f32 matrix's bytes, so four times fewer cache lines per step); the
//!   `ef` candidates it ends with are re-scored with the exact inner products from the matrix, so
//!   returned scores, and their order and ties, are those of exact search.

pub mod codes;
mod format;
mod hnsw_rs_build;
mod walk;

pub use codes::CodeBook;
pub use format::Graph;

use crate::error::{Error, Result};
use crate::failpoint;
use crate::store::npy::NpyMatrix;

/// Build parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// The default search-time `ef`.
pub const DEFAULT_EF: usize = 128;

const MAX_LAYER: usize = 16;
/// "No list" in the upper-layer index; also the bound on node counts.
const NONE: u32 = u32::MAX;

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

/// Builds the graph over every row of `matrix`, inserting in parallel (rayon), and the rows' codes;
/// `progress` is called with the number of rows inserted so far.
pub fn build(
    matrix: &NpyMatrix,
    params: HnswParams,
    progress: &(dyn Fn(usize) + Sync),
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
    let halfway = std::sync::atomic::AtomicBool::new(false);
    let mut parts = hnsw_rs_build::build(matrix, params, &|done| {
        progress(done);
        if 2 * done >= n && !halfway.swap(true, std::sync::atomic::Ordering::Relaxed) {
            let _ = failpoint::hit("graph");
        }
    });
    parts.book = CodeBook::fit(matrix);
    parts.codes = parts.book.encode(matrix);
    failpoint::hit("codes").map_err(|e| Error::io(matrix.path(), e))?;
    Ok(parts)
}

#[cfg(test)]
mod tests;
