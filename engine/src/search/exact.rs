//! Exact inner-product search: every query against every row. The matrix is cut into blocks, and
//! each worker takes one run of consecutive blocks; each block is scored against the whole query
//! batch with one GEMM, so the matrix is streamed once per batch, and every worker keeps one top-k
//! per query for its whole run.

use rayon::prelude::*;

use super::{sort_hits, Hit};
use crate::error::Result;
use crate::store::npy::NpyMatrix;

/// Rows scored per GEMM (with 1,024 queries, an 8 MB score block).
const BLOCK_ROWS: usize = 2048;

/// The k best hits seen so far: candidates at or above a threshold collect in a buffer; when it holds
/// 2k (at least 32), a selection keeps the best k and raises the threshold to the k-th score. That is
/// linear in the candidates, where a heap pays log k for each of them (k = 1000 for a recall run).
#[derive(Clone)]
pub struct TopK {
    k: usize,
    buf: Vec<Hit>,
    /// A hit scoring below this cannot be among the k best (k hits at or above it are held).
    thr: f32,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            buf: Vec::new(),
            thr: f32::NEG_INFINITY,
        }
    }

    #[inline]
    pub fn push(&mut self, row: usize, score: f32) {
        // Equal scores are kept: the lower row wins a tie, decided at the selection.
        if self.k == 0 || score < self.thr {
            return;
        }
        self.buf.push(Hit { row, score });
        if self.buf.len() >= (2 * self.k).max(32) {
            self.keep_best();
        }
    }

    /// Keeps the best k (in no order) and raises the threshold to the worst of them.
    fn keep_best(&mut self) {
        if self.buf.len() > self.k {
            self.buf.select_nth_unstable_by(self.k - 1, |a, b| {
                super::rank(b.score, b.row, a.score, a.row)
            });
            self.buf.truncate(self.k);
        }
        if self.buf.len() == self.k {
            self.thr = self
                .buf
                .iter()
                .map(|h| h.score)
                .fold(f32::INFINITY, f32::min);
        }
    }

    /// The lowest score a new hit must reach (−inf until k hits are held).
    #[inline]
    pub fn threshold(&self) -> f32 {
        self.thr
    }

    pub fn merge(&mut self, other: TopK) {
        for h in other.buf {
            self.push(h.row, h.score);
        }
    }

    pub fn into_sorted(mut self) -> Vec<Hit> {
        self.keep_best();
        let mut v = self.buf;
        sort_hits(&mut v);
        v
    }
}

/// `scores[q * n + r] = queries[q] . rows[r]`, for `nq` queries and `n` rows of width `dim`.
pub fn score_block(
    queries: &[f32],
    nq: usize,
    rows: &[f32],
    n: usize,
    dim: usize,
    scores: &mut [f32],
) {
    assert!(queries.len() >= nq * dim && rows.len() >= n * dim && scores.len() >= nq * n);
    // Safety: the asserts above bound every access gemm makes: dst is nq x n (row stride n), lhs is
    // nq x dim (row stride dim), rhs is the transpose of the n x dim row block (element (k, j) at
    // j * dim + k).
    unsafe {
        gemm::gemm(
            nq,
            n,
            dim,
            scores.as_mut_ptr(),
            1,
            n as isize,
            false,
            queries.as_ptr(),
            1,
            dim as isize,
            rows.as_ptr(),
            dim as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The first score in `s` that is NaN or infinite, if any. `x * 0` is 0 for every finite `x` and NaN
/// otherwise, so the sum is 0 exactly when all are finite; the lanes let it vectorise (a few hundred
/// instructions per 8,192 scores, beside the GEMM's millions).
fn first_non_finite(s: &[f32]) -> Option<usize> {
    let mut acc = [0f32; 16];
    let chunks = s.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x * 0.0;
        }
    }
    let tail: f32 = rest.iter().map(|x| x * 0.0).sum();
    if acc.iter().sum::<f32>() + tail == 0.0 {
        None
    } else {
        s.iter().position(|x| !x.is_finite())
    }
}

/// The top `k` rows of `matrix` for each of the `queries` (row-major, `nq x dim`), exactly. A row
/// whose score is not finite (a damaged vector) is an error naming it.
pub fn search(matrix: &NpyMatrix, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>> {
    search_rows(matrix, 0, matrix.rows(), queries, k)
}

/// Exact search restricted to rows `[start, end)`.
pub fn search_rows(
    matrix: &NpyMatrix,
    start: usize,
    end: usize,
    queries: &[f32],
    k: usize,
) -> Result<Vec<Vec<Hit>>> {
    let dim = matrix.cols();
    let nq = queries.len() / dim.max(1);
    if nq == 0 {
        return Ok(Vec::new());
    }
    let blocks: Vec<(usize, usize)> = (start..end)
        .step_by(BLOCK_ROWS)
        .map(|a| (a, (a + BLOCK_ROWS).min(end)))
        .collect();
    // One run of consecutive blocks per worker, each with one set of top-k lists (a fold per rayon
    // split would allocate, fill and merge a set per split: nq lists of up to 2k hits each).
    let workers = rayon::current_num_threads().max(1);
    let per = blocks.len().div_ceil(workers).max(1);
    let merged = blocks
        .par_chunks(per)
        .map(|run| {
            let mut tops = vec![TopK::new(k); nq];
            let mut scores = Vec::<f32>::new();
            let mut bad = None::<(usize, f32)>;
            for &(a, b) in run {
                let rows = matrix.rows_f32(a, b);
                let n = b - a;
                scores.resize(nq * n, 0.0);
                score_block(queries, nq, &rows, n, dim, &mut scores);
                for (q, top) in tops.iter_mut().enumerate() {
                    let s = &scores[q * n..(q + 1) * n];
                    if let Some(i) = first_non_finite(s) {
                        if bad.is_none_or(|(r, _)| a + i < r) {
                            bad = Some((a + i, s[i]));
                        }
                    }
                    let mut thr = top.threshold();
                    for (i, &v) in s.iter().enumerate() {
                        // Equal scores go through push(), which applies the lower-row rule.
                        if v >= thr {
                            top.push(a + i, v);
                            thr = top.threshold();
                        }
                    }
                }
            }
            (tops, scores, bad)
        })
        .map(|(tops, _, bad)| (tops, bad))
        .reduce(
            || (vec![TopK::new(k); nq], None),
            |(mut x, xbad), (y, ybad)| {
                for (a, b) in x.iter_mut().zip(y) {
                    a.merge(b);
                }
                let bad = match (xbad, ybad) {
                    (Some(p), Some(q)) => Some(if p.0 <= q.0 { p } else { q }),
                    (p, q) => p.or(q),
                };
                (x, bad)
            },
        );
    if let Some((row, score)) = merged.1 {
        return Err(super::non_finite(matrix, row, score));
    }
    Ok(merged.0.into_iter().map(TopK::into_sorted).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_equals_a_full_sort() {
        // Many ties (scores on a coarse grid), k below, at and above the selection's buffer size.
        let n = 5000;
        let scores: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 251) as f32 / 25.0).floor())
            .collect();
        for k in [1, 10, 31, 32, 33, 100, 1000, 4999, 5000, 6000] {
            let mut t = TopK::new(k);
            let mut halves = (TopK::new(k), TopK::new(k));
            for (r, &s) in scores.iter().enumerate() {
                t.push(r, s);
                if r % 2 == 0 {
                    halves.0.push(r, s)
                } else {
                    halves.1.push(r, s)
                }
            }
            let mut all: Vec<Hit> = scores
                .iter()
                .enumerate()
                .map(|(row, &score)| Hit { row, score })
                .collect();
            sort_hits(&mut all);
            all.truncate(k);
            assert_eq!(t.into_sorted(), all, "k={k}");
            halves.0.merge(halves.1);
            assert_eq!(halves.0.into_sorted(), all, "k={k}, merged");
        }
        assert!(TopK::new(0).into_sorted().is_empty());
    }

    #[test]
    fn top_k_prefers_higher_scores_then_lower_rows() {
        let mut t = TopK::new(2);
        for (r, s) in [(5, 0.5), (1, 0.5), (3, 0.9), (0, 0.5)] {
            t.push(r, s);
        }
        let v = t.into_sorted();
        assert_eq!(v.iter().map(|h| h.row).collect::<Vec<_>>(), [3, 0]);
    }

    #[test]
    fn gemm_block_equals_dot_products() {
        let dim = 5;
        let q: Vec<f32> = (0..2 * dim).map(|i| i as f32 * 0.1).collect();
        let rows: Vec<f32> = (0..3 * dim).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut s = vec![0.0; 6];
        score_block(&q, 2, &rows, 3, dim, &mut s);
        for qi in 0..2 {
            for r in 0..3 {
                let want: f32 = (0..dim).map(|j| q[qi * dim + j] * rows[r * dim + j]).sum();
                assert!((s[qi * 3 + r] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn a_damaged_row_is_an_error_naming_it() {
        assert_eq!(first_non_finite(&[0.5; 100]), None);
        let mut s = vec![0.5f32; 100];
        s[37] = f32::NAN;
        s[90] = f32::INFINITY;
        assert_eq!(first_non_finite(&s), Some(37));
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("v.npy");
        let mut data = vec![0.5f32; 20_000 * 4];
        data[12_345 * 4 + 2] = f32::NAN;
        crate::store::npy::write_f32(&p, &data, 20_000, 4).unwrap();
        let m = NpyMatrix::open(&p).unwrap();
        let e = search(&m, &[1.0, 0.0, 0.0, 1.0], 500)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("row 12345") && e.contains("v.npy") && e.contains("verify"),
            "{e}"
        );
        data[12_345 * 4 + 2] = 0.5;
        crate::store::npy::write_f32(&p, &data, 20_000, 4).unwrap();
        let m = NpyMatrix::open(&p).unwrap();
        assert_eq!(
            search(&m, &[1.0, 0.0, 0.0, 1.0], 500).unwrap()[0].len(),
            500
        );
    }
}
