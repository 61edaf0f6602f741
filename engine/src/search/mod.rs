//! Search over the vector matrix: exact (the paper's setting, and the reference) and HNSW.

pub mod exact;
pub mod hnsw;
pub mod simd;

/// One result: the matrix row and its inner product with the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub row: usize,
    pub score: f32,
}

/// Result order: score descending, ties to the lower row (as SimLM's search).
pub fn sort_hits(hits: &mut [Hit]) {
    hits.sort_unstable_by(|a, b| b.score.total_cmp(&a.score).then(a.row.cmp(&b.row)));
}
