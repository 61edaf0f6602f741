//! Search over the vector matrix: exact (the paper's setting, and the reference) and HNSW.

pub mod exact;
pub mod hnsw;
pub(crate) mod prescan;

/// One result: the matrix row and its inner product with the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub row: usize,
    pub score: f32,
}

/// The result order, as SimLM's search has it: `Greater` when `(a_score, a_row)` ranks above
/// `(b_score, b_row)`, that is a higher score, or an equal score and a lower row.
#[inline(always)]
pub(crate) fn rank(a_score: f32, a_row: usize, b_score: f32, b_row: usize) -> std::cmp::Ordering {
    a_score.total_cmp(&b_score).then(b_row.cmp(&a_row))
}

/// Sorts hits best first: score descending, ties to the lower row.
pub fn sort_hits(hits: &mut [Hit]) {
    hits.sort_unstable_by(|a, b| rank(b.score, b.row, a.score, a.row));
}

/// The error for a row whose score is not a number or infinite: the matrix is damaged there.
pub(crate) fn non_finite(
    matrix: &crate::store::npy::NpyMatrix,
    row: usize,
    score: f32,
) -> crate::Error {
    crate::Error::corrupt(
        matrix.path(),
        format!(
            "row {row} scores {score} against the query: the vector is damaged; run `simlm-index verify` on the index and rebuild it"
        ),
    )
}

/// Refuses query vectors with values that are not finite numbers, before they reach a search (where
/// every score would be NaN and seem to blame the index).
pub fn check_queries(queries: &[f32], dim: usize) -> crate::Result<()> {
    if dim == 0 || !queries.len().is_multiple_of(dim) {
        return Err(crate::Error::Usage(format!(
            "query vectors of {} values do not fit dimension {dim}",
            queries.len()
        )));
    }
    if let Some(i) = queries.iter().position(|x| !x.is_finite()) {
        return Err(crate::Error::Usage(format!(
            "query {} has a value that is not a finite number ({}) in dimension {}",
            i / dim,
            queries[i],
            i % dim
        )));
    }
    Ok(())
}

/// What the search tests share.
#[cfg(test)]
pub(crate) mod test_support {
    /// A small deterministic source of 31-bit values.
    pub(crate) fn lcg(seed: u64) -> impl FnMut() -> u32 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u32
        }
    }

    /// The same values as floats in `[-0.5, 0.5)`.
    pub(crate) fn centred(seed: u64) -> impl FnMut() -> f32 {
        let mut next = lcg(seed);
        move || next() as f32 / (1u64 << 31) as f32 - 0.5
    }

    /// The pre-scans this CPU runs (`prescan::runs`); where it runs none, says that the test calling
    /// it is skipped, and why.
    pub(crate) fn prescan_kinds() -> Vec<super::prescan::Kind> {
        use super::prescan::{runs, Kind};
        let kinds: Vec<Kind> = [Kind::Bf16, Kind::Int8]
            .into_iter()
            .filter(|&k| runs(k))
            .collect();
        if kinds.is_empty() {
            eprintln!(
                "skipped: this CPU has neither AVX512-BF16 nor AVX2, so exact search has no pre-scan to test"
            );
        }
        kinds
    }

    /// Whether this CPU runs the pre-scan of `kind`; where it does not, says that the test calling
    /// it is skipped, and why.
    pub(crate) fn has_prescan_of(kind: super::prescan::Kind) -> bool {
        let has = super::prescan::runs(kind);
        if !has {
            eprintln!(
                "skipped: this CPU does not run the {} pre-scan (the test runs where it does)",
                kind.name()
            );
        }
        has
    }
}
