//! Exact inner-product search: every query against every row. The matrix is cut into blocks, and
//! each worker takes one run of consecutive blocks, so the matrix is streamed once per query batch.
//! Rows are packed 128 at a time into panels of 16 and scored against panels of 6 queries by one tile
//! kernel ([`crate::simd::score_tile_kernel`]), which also compares the 96 scores with the queries'
//! top-k thresholds while they are still in registers: no score matrix is written or read back, and
//! only the few scores that can enter a top-k leave the kernel. Each score is one chain of
//! multiply-adds over the dimensions, in order, which the graph's re-scoring repeats bit for bit
//! ([`crate::simd::RowsFn`]).

use rayon::prelude::*;

use super::{sort_hits, Hit};
use crate::error::Result;
use crate::simd::{score_tile_kernel, TileFn, TILE_Q, TILE_R};
use crate::store::npy::NpyMatrix;

/// Rows per unit of work (a worker takes a run of consecutive blocks).
pub(super) const BLOCK_ROWS: usize = 2048;

/// Rows packed at a time: 8 panels of 16, 384 KB at width 768, which stay in a 512 KB L2 cache
/// while every query panel passes over them (the bf16 pre-scan packs as many, in half the bytes).
pub(super) const PACK_ROWS: usize = 128;

/// The k best hits seen so far: candidates at or above a threshold collect in a buffer; when it holds
/// 2k (at least 32), a selection keeps the best k and raises the threshold to the k-th score. That is
/// linear in the candidates, where a heap pays log k for each of them (k = 1000 for a recall run).
#[derive(Clone)]
pub struct TopK {
    k: usize,
    /// 8-byte candidates: a batch of 1,024 queries at k = 1000 holds up to 16 MB of them per worker.
    buf: Vec<Cand>,
    /// A hit scoring below this cannot be among the k best (k hits at or above it are held).
    thr: f32,
}

/// A candidate hit; rows are below 2^32 (checked by [`search_rows`]).
#[derive(Clone, Copy)]
struct Cand {
    score: f32,
    row: u32,
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
        self.buf.push(Cand {
            score,
            row: row as u32,
        });
        if self.buf.len() >= (2 * self.k).max(32) {
            self.keep_best();
        }
    }

    /// Keeps the best k (in no order) and raises the threshold to the worst of them.
    fn keep_best(&mut self) {
        if self.buf.len() > self.k {
            self.buf.select_nth_unstable_by(self.k - 1, |a, b| {
                super::rank(b.score, b.row as usize, a.score, a.row as usize)
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

    /// The k-th best score held (−inf below k hits): [`TopK::threshold`] once the candidates since
    /// the last selection are selected too.
    pub(super) fn settled_threshold(&mut self) -> f32 {
        self.keep_best();
        self.thr
    }

    pub fn merge(&mut self, other: TopK) {
        for h in other.buf {
            self.push(h.row as usize, h.score);
        }
    }

    pub fn into_sorted(mut self) -> Vec<Hit> {
        self.keep_best();
        let mut v: Vec<Hit> = self
            .buf
            .iter()
            .map(|c| Hit {
                row: c.row as usize,
                score: c.score,
            })
            .collect();
        sort_hits(&mut v);
        v
    }
}

/// Packs `nq` queries (row-major, width `dim`) into panels of [`TILE_Q`], k-major
/// (`panel[k * TILE_Q + i]`), the last panel padded with zero queries.
fn pack_queries(queries: &[f32], nq: usize, dim: usize) -> Vec<f32> {
    let mut out = vec![0f32; nq.div_ceil(TILE_Q) * dim * TILE_Q];
    for (q, src) in queries.chunks_exact(dim).take(nq).enumerate() {
        let panel = &mut out[(q / TILE_Q) * dim * TILE_Q..][..dim * TILE_Q];
        for (k, &v) in src.iter().enumerate() {
            panel[k * TILE_Q + q % TILE_Q] = v;
        }
    }
    out
}

/// Packs `n` rows (row-major, width `dim`) into panels of [`TILE_R`], k-major, the last panel padded
/// with zero rows.
fn pack_rows(rows: &[f32], n: usize, dim: usize, out: &mut Vec<f32>) {
    out.clear();
    out.resize(n.div_ceil(TILE_R) * dim * TILE_R, 0.0);
    for (r, src) in rows.chunks_exact(dim).take(n).enumerate() {
        let panel = &mut out[(r / TILE_R) * dim * TILE_R..][..dim * TILE_R];
        for (k, &v) in src.iter().enumerate() {
            panel[k * TILE_R + r % TILE_R] = v;
        }
    }
}

/// One worker's share: rows `[a, b)` of each block in `run`, scored against every query and kept in
/// `tops`. The first non-finite score met (lowest row) is noted in `bad`.
fn scan_run(
    tile: TileFn,
    matrix: &NpyMatrix,
    run: &[(usize, usize)],
    packed_queries: &[f32],
    tops: &mut [TopK],
    bad: &mut Option<(usize, f32)>,
) {
    let dim = matrix.cols();
    let nq = tops.len();
    let mut packed_rows = Vec::new();
    let mut out = [0f32; TILE_Q * TILE_R];
    let q_panels = nq.div_ceil(TILE_Q);
    // A matrix larger than memory is read from disk: each block is released once scored, and the
    // next one is asked for ahead.
    let release = matrix.exceeds_half_of_memory();
    for (bi, &(a, b)) in run.iter().enumerate() {
        if let Some(&(na, nb)) = run.get(bi + 1) {
            matrix.prefetch_rows(na, nb);
        }
        for c in (a..b).step_by(PACK_ROWS) {
            let d = (c + PACK_ROWS).min(b);
            pack_rows(&matrix.rows_f32(c, d), d - c, dim, &mut packed_rows);
            // Each query panel (18 KB at width 768, in L1) passes over the packed rows (in L2).
            for qp in 0..q_panels {
                let q0 = qp * TILE_Q;
                let live_q = (nq - q0).min(TILE_Q);
                let panel = &packed_queries[qp * dim * TILE_Q..][..dim * TILE_Q];
                for (jp, rows) in packed_rows.chunks_exact(dim * TILE_R).enumerate() {
                    let row0 = c + jp * TILE_R;
                    let live_rows = (d - row0).min(TILE_R);
                    let mut thr = [f32::INFINITY; TILE_Q];
                    for (t, top) in thr.iter_mut().zip(&tops[q0..q0 + live_q]) {
                        *t = top.threshold();
                    }
                    let hits = tile(dim, panel, rows, &thr, &mut out);
                    if hits.non_finite {
                        note_non_finite(&out, live_q, live_rows, row0, bad);
                    }
                    let row_mask = u16::MAX >> (TILE_R - live_rows);
                    for (i, top) in tops[q0..q0 + live_q].iter_mut().enumerate() {
                        let mut m = hits.at_or_above[i] & row_mask;
                        while m != 0 {
                            let j = m.trailing_zeros() as usize;
                            m &= m - 1;
                            // Equal scores go through push(), which applies the lower-row rule.
                            top.push(row0 + j, out[i * TILE_R + j]);
                        }
                    }
                }
            }
        }
        if release {
            matrix.release_rows(a, b);
        }
    }
}

/// Notes the lowest row of a tile with a non-finite score among its live queries and rows.
fn note_non_finite(
    out: &[f32; TILE_Q * TILE_R],
    live_q: usize,
    live_rows: usize,
    row0: usize,
    bad: &mut Option<(usize, f32)>,
) {
    for j in 0..live_rows {
        if let Some(i) = (0..live_q).find(|&i| !out[i * TILE_R + j].is_finite()) {
            if bad.is_none_or(|(r, _)| row0 + j < r) {
                *bad = Some((row0 + j, out[i * TILE_R + j]));
            }
            return;
        }
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
    let per_worker = end.saturating_sub(start) / rayon::current_num_threads().max(1);
    let nq = queries.len() / matrix.cols().max(1);
    let prescan = if matrix.exceeds_half_of_memory() {
        None
    } else {
        let mode = super::prescan::mode();
        super::prescan::choose(matrix.cols(), k, per_worker, nq, mode)
    };
    search_rows_with(score_tile_kernel(), prescan, matrix, start, end, queries, k)
}

/// One worker's top-k lists, one a query, and the lowest damaged row (with its score) it met.
type WorkerTops = (Vec<TopK>, Option<(usize, f32)>);

/// [`search_rows`] with a given tile kernel (the tests run every one the CPU has), through the
/// pre-scan ([`super::prescan`]) of the kind `prescan` names, which the CPU must run (the same results;
/// the f32 scan runs where it finds a score that is not finite, to name the row). The pre-scan scores
/// in f32 with this CPU's re-scoring kernel, whose bits are those of this CPU's tile kernel: with
/// `prescan`, `tile` must be that one.
pub(crate) fn search_rows_with(
    tile: TileFn,
    prescan: Option<super::prescan::Kind>,
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
    if end > u32::MAX as usize {
        return Err(crate::error::Error::Unsupported {
            path: matrix.path().to_path_buf(),
            msg: format!(
                "{end} rows: exact search takes at most {} rows per index; split the collection into shards",
                u32::MAX
            ),
        });
    }
    let packed_queries = pack_queries(queries, nq, dim);
    let blocks: Vec<(usize, usize)> = (start..end)
        .step_by(BLOCK_ROWS)
        .map(|a| (a, (a + BLOCK_ROWS).min(end)))
        .collect();
    // One run of consecutive blocks per worker, each with one set of top-k lists (a fold per rayon
    // split would allocate, fill and merge a set per split: nq lists of up to 2k hits each).
    let workers = rayon::current_num_threads().max(1);
    let per = blocks.len().div_ceil(workers).max(1);
    if let Some(kind) = prescan.filter(|_| k > 0) {
        let runs: Vec<&[(usize, usize)]> = blocks.chunks(per).collect();
        if let Some(parts) = super::prescan::search(kind, matrix, &runs, &queries[..nq * dim], k) {
            return Ok(merge_workers(parts, nq, k));
        }
    }
    let parts: Vec<WorkerTops> = blocks
        .par_chunks(per)
        .map(|run| {
            let mut tops = vec![TopK::new(k); nq];
            let mut bad = None::<(usize, f32)>;
            scan_run(tile, matrix, run, &packed_queries, &mut tops, &mut bad);
            (tops, bad)
        })
        .collect();
    // The lowest damaged row any worker met.
    if let Some((row, score)) = parts.iter().filter_map(|p| p.1).min_by_key(|&(row, _)| row) {
        return Err(super::non_finite(matrix, row, score));
    }
    Ok(merge_workers(
        parts.into_iter().map(|p| p.0).collect(),
        nq,
        k,
    ))
}

/// Each query's lists from every worker (`parts[w][q]`), merged and sorted on the pool (at k = 1000,
/// a query's merge and sort of a thousand hits: one thread alone took 4% of a 2,000-query search).
fn merge_workers(parts: Vec<Vec<TopK>>, nq: usize, k: usize) -> Vec<Vec<Hit>> {
    let mut lists: Vec<std::vec::IntoIter<TopK>> = parts.into_iter().map(Vec::into_iter).collect();
    let per_query: Vec<Vec<TopK>> = (0..nq)
        .map(|_| lists.iter_mut().filter_map(Iterator::next).collect())
        .collect();
    per_query
        .into_par_iter()
        .map(|tops| {
            let mut tops = tops.into_iter();
            let mut all = tops.next().unwrap_or_else(|| TopK::new(k));
            for t in tops {
                all.merge(t);
            }
            all.into_sorted()
        })
        .collect()
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

    /// Brute force in f64, the reference for the tiles.
    fn brute(queries: &[f32], rows: &[f32], dim: usize, k: usize) -> Vec<Vec<usize>> {
        queries
            .chunks_exact(dim)
            .map(|q| {
                let mut s: Vec<(f64, usize)> = rows
                    .chunks_exact(dim)
                    .enumerate()
                    .map(|(r, x)| (q.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum(), r))
                    .collect();
                s.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                s.into_iter().take(k).map(|(_, r)| r).collect()
            })
            .collect()
    }

    #[test]
    fn tiles_equal_brute_force_at_every_edge() {
        // Query and row counts off the tile sizes (6 and 16) and the block size, odd widths, and
        // more than one chunk of query panels.
        let tmp = tempfile::tempdir().unwrap();
        for (n, nq, dim, k) in [
            (1, 1, 1, 1),
            (17, 7, 3, 5),
            (2049, 13, 33, 40),
            (4100, 125, 8, 3),
        ] {
            let rows: Vec<f32> = (0..n * dim)
                .map(|i| (i * 7919 % 1013) as f32 / 1013.0 - 0.5)
                .collect();
            let queries: Vec<f32> = (0..nq * dim)
                .map(|i| (i * 104_729 % 997) as f32 / 997.0 - 0.5)
                .collect();
            let p = tmp.path().join(format!("v{n}.npy"));
            crate::store::npy::write_f32(&p, &rows, n, dim).unwrap();
            let m = NpyMatrix::open(&p).unwrap();
            let got = search(&m, &queries, k).unwrap();
            let want = brute(&queries, &rows, dim, k);
            for (q, (g, w)) in got.iter().zip(&want).enumerate() {
                let g: Vec<usize> = g.iter().map(|h| h.row).collect();
                assert_eq!(&g, w, "n={n} nq={nq} dim={dim} query {q}");
            }
        }
    }

    #[test]
    fn every_tile_kernel_scores_and_compares_alike() {
        let dim = 37;
        let a: Vec<f32> = (0..dim * TILE_Q).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..dim * TILE_R).map(|i| (i as f32 * 0.11).cos()).collect();
        let thr = [-1.0, 0.0, 0.5, f32::NEG_INFINITY, f32::INFINITY, 0.1];
        let mut kernels: Vec<crate::simd::TileFn> = vec![crate::simd::score_tile_kernel()];
        kernels.push(crate::simd::tile_kernel_for(crate::simd::Level::Portable).unwrap());
        if let Some(avx2) = crate::simd::tile_kernel_for(crate::simd::Level::Avx2Fma) {
            // The CPU's kernel (AVX-512 where it has it) and the AVX2 one: the same FMAs, the same bits.
            let (mut o1, mut o2) = ([0f32; TILE_Q * TILE_R], [0f32; TILE_Q * TILE_R]);
            let h1 = kernels[0](dim, &a, &b, &thr, &mut o1);
            let h2 = avx2(dim, &a, &b, &thr, &mut o2);
            assert_eq!(h1, h2);
            assert!(o1.iter().zip(&o2).all(|(x, y)| x.to_bits() == y.to_bits()));
            kernels.push(avx2);
        }
        for f in kernels {
            let mut out = [0f32; TILE_Q * TILE_R];
            let hits = f(dim, &a, &b, &thr, &mut out);
            assert!(!hits.non_finite);
            for i in 0..TILE_Q {
                for j in 0..TILE_R {
                    let want: f32 = (0..dim)
                        .map(|k| a[k * TILE_Q + i] * b[k * TILE_R + j])
                        .sum();
                    let got = out[i * TILE_R + j];
                    assert!((got - want).abs() < 1e-4, "{i} {j}: {got} vs {want}");
                    assert_eq!(hits.at_or_above[i] >> j & 1 == 1, got >= thr[i], "{i} {j}");
                }
            }
            let mut b2 = b.clone();
            b2[5 * TILE_R + 9] = f32::NAN;
            assert!(f(dim, &a, &b2, &thr, &mut out).non_finite);
            b2[5 * TILE_R + 9] = f32::INFINITY;
            assert!(f(dim, &a, &b2, &thr, &mut out).non_finite);
        }
    }

    /// Exact search over all of `m` by the f32 scan and by each pre-scan this CPU runs: the same hits
    /// and score bits, or the same error (asserted); whether they were hits.
    fn prescan_agrees(m: &NpyMatrix, queries: &[f32], k: usize, what: &str) -> bool {
        let kernel = score_tile_kernel();
        let n = m.rows();
        let bits = |v: Vec<Vec<Hit>>| -> Vec<Vec<(usize, u32)>> {
            v.iter()
                .map(|h| h.iter().map(|h| (h.row, h.score.to_bits())).collect())
                .collect()
        };
        let want = search_rows_with(kernel, None, m, 0, n, queries, k).map(bits);
        for kind in crate::search::test_support::prescan_kinds() {
            let got = search_rows_with(kernel, Some(kind), m, 0, n, queries, k);
            match (&want, got) {
                (Ok(w), Ok(g)) => assert_eq!(&bits(g), w, "{what}, {kind:?}"),
                (Err(w), Err(g)) => assert_eq!(g.to_string(), w.to_string(), "{what}, {kind:?}"),
                (w, g) => panic!(
                    "{what}, {kind:?}: f32 scan ok {}, pre-scan ok {}",
                    w.is_ok(),
                    g.is_ok()
                ),
            }
        }
        want.is_ok()
    }

    /// Each pre-scan returns exact search's hits, scores (bit for bit) and order: near-ties and
    /// exact ties (a coarse grid, duplicated rows), zero rows, rows far larger than the rest, odd
    /// widths, k from 1 to past the row count.
    #[test]
    fn the_prescan_gives_exact_search_bits() {
        if crate::search::test_support::prescan_kinds().is_empty() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut rnd = crate::search::test_support::centred(7);
        for (case, (n, nq, dim)) in [
            (3000, 20, 64),
            (5000, 7, 33),
            (700, 13, 384),
            (40, 3, 5),
            (300, 4, 1),
            (129, 5, 2),
        ]
        .into_iter()
        .enumerate()
        {
            let mut rows: Vec<f32> = (0..n * dim).map(|_| rnd()).collect();
            for r in 0..n {
                let row = &mut rows[r * dim..][..dim];
                match r % 9 {
                    // A coarse grid: many exact ties.
                    0 | 1 => row.iter_mut().for_each(|v| *v = (*v * 4.0).round() / 4.0),
                    // A copy of an earlier row.
                    2 if r > 20 => {
                        let src = (r - 17) * dim;
                        let copy: Vec<f32> = rows[src..src + dim].to_vec();
                        rows[r * dim..][..dim].copy_from_slice(&copy);
                    }
                    3 => row.iter_mut().for_each(|v| *v = 0.0),
                    4 => row.iter_mut().for_each(|v| *v *= 1e6),
                    _ => {}
                }
            }
            let mut queries: Vec<f32> = (0..nq * dim).map(|_| rnd()).collect();
            // One query equal to a grid row, so that its ties are at the top.
            queries[..dim].copy_from_slice(&rows[9 * dim..10 * dim]);
            let p = tmp.path().join(format!("p{case}.npy"));
            crate::store::npy::write_f32(&p, &rows, n, dim).unwrap();
            let m = NpyMatrix::open(&p).unwrap();
            for k in [1, 10, 100, n - 1, n + 5] {
                let what = format!("case {case} (n={n} dim={dim}) k={k}");
                assert!(prescan_agrees(&m, &queries, k, &what), "{what}: an error");
            }
        }
    }

    /// Rows the pre-scan's bound tells no apart (a quarter of the rows tied at the top): the hits
    /// are the f32 scan's, and no worker's list of kept rows passes its cap (before the cap, each
    /// list held every row: 8 bytes a row and query). A query whose residual is subnormal keeps a
    /// finite bound; a zero query, or one with a subnormal value, sends its batch to the f32 scan.
    #[test]
    fn the_prescan_keeps_bounded_lists_where_its_bound_tells_no_row_apart() {
        if crate::search::test_support::prescan_kinds().is_empty() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (n, dim) = (40_000, 8);
        let mut rnd = crate::search::test_support::centred(5);
        let mut rows: Vec<f32> = (0..n * dim).map(|_| rnd()).collect();
        // A quarter of the rows one vector, near the top for the last query.
        for r in (0..n).step_by(4) {
            rows[r * dim..][..dim].copy_from_slice(&[0.5; 8]);
        }
        let p = tmp.path().join("ties.npy");
        crate::store::npy::write_f32(&p, &rows, n, dim).unwrap();
        let m = NpyMatrix::open(&p).unwrap();
        // The tied rows best, and a query with a normal value whose bf16 residual is subnormal.
        let tiny = f32::MIN_POSITIVE * 1.0009766;
        let mut queries = vec![0.5; 8];
        queries.extend([tiny, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]);
        for k in [10, 100] {
            let what = format!("k={k}");
            assert!(prescan_agrees(&m, &queries, k, &what), "{what}: an error");
        }
        let blocks: Vec<(usize, usize)> = (0..n)
            .step_by(BLOCK_ROWS)
            .map(|a| (a, (a + BLOCK_ROWS).min(n)))
            .collect();
        for kind in crate::search::test_support::prescan_kinds() {
            assert!(
                crate::search::prescan::search(kind, &m, &[&blocks], &queries, 10).is_some(),
                "the {kind:?} pre-scan did not take the batch"
            );
        }
        let longest =
            crate::search::prescan::tests::LONGEST.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            longest <= 1000,
            "a kept-row list reached {longest} thousandths of its cap"
        );
        // A zero query and one with a subnormal value: infinite or empty bounds send the batch
        // to the f32 scan.
        let mut queries = vec![0f32; 8];
        queries.extend([1e-40, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]);
        for kind in crate::search::test_support::prescan_kinds() {
            assert!(
                crate::search::prescan::search(kind, &m, &[&blocks], &queries, 10).is_none(),
                "the {kind:?} pre-scan took a batch it cannot tell rows apart in"
            );
        }
        assert!(prescan_agrees(
            &m,
            &queries,
            10,
            "zero and subnormal queries"
        ));
    }

    /// Inputs at the edges of f32, where a pre-scan's bound alone would not hold: subnormal values
    /// (read as zero by `vdpbf16ps`; tiny scales for the int8 codes) in a row or a query, a bound of 0 x inf, and products that
    /// overflow in f32 (an error naming the row, as the f32 scan gives).
    #[test]
    fn the_prescan_keeps_exact_search_at_the_edges_of_f32() {
        if crate::search::test_support::prescan_kinds().is_empty() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let same = |rows: &[f32], n: usize, dim: usize, q: &[f32], k: usize| {
            let p = tmp.path().join(format!("e{n}x{dim}.npy"));
            crate::store::npy::write_f32(&p, rows, n, dim).unwrap();
            prescan_agrees(
                &NpyMatrix::open(&p).unwrap(),
                q,
                k,
                &format!("n={n} dim={dim} q={q:?}"),
            );
        };
        let d = f32::from_bits(0x0050_0000); // subnormal, 1.25 x 2^-127
                                             // Rows of 2^-126 first (so that the lower bounds' threshold is set), then a subnormal row
                                             // that scores best.
        for qv in [1.0f32, 20.0, 1e6] {
            let mut rows: Vec<f32> = (0..48).flat_map(|_| [f32::MIN_POSITIVE, 0.0]).collect();
            rows.extend([d, d]);
            same(&rows, 49, 2, &[qv, qv], 1);
        }
        // A query with a subnormal value.
        let mut rows: Vec<f32> = (0..48).flat_map(|_| [0.0, 40.0]).collect();
        rows.extend([100.0, 0.0]);
        same(&rows, 49, 2, &[d, f32::MIN_POSITIVE], 1);
        // Width 64: a row of subnormals against a large query.
        let mut rows = Vec::new();
        for _ in 0..48 {
            let mut r = vec![0f32; 64];
            r[0] = 1e-37;
            rows.extend(r);
        }
        rows.extend(vec![d; 64]);
        same(&rows, 49, 64, &[1000.0; 64], 1);
        // 0 x inf bounds: a zero query and a row whose norm passes f32's range, and the reverse.
        same(&[3e38, 3e38, 1.0, 1.0], 2, 2, &[0.0, 0.0], 1);
        same(&[0.0, 0.0, -1e-30, 0.0], 2, 2, &[3e38, 3e38], 1);
        // A product that overflows in f32 (the f32 scan's error) but not in bf16.
        let mut rows = vec![1.0f32; 100];
        rows.push(-(2f32.powi(64) * 1.0039));
        same(&rows, 101, 1, &[f32::from_bits(0x5f7f_8000 - 0x100)], 1);
    }

    #[test]
    fn a_damaged_row_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("v.npy");
        let mut data = vec![0.5f32; 20_000 * 4];
        data[12_345 * 4 + 2] = f32::NAN;
        data[19_999 * 4] = f32::INFINITY;
        crate::store::npy::write_f32(&p, &data, 20_000, 4).unwrap();
        let m = NpyMatrix::open(&p).unwrap();
        // k 10 goes through the bf16 pre-scan where the CPU has it, k 500 through the f32 scan.
        for k in [10, 500] {
            let e = search(&m, &[1.0, 0.0, 0.0, 1.0], k)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("row 12345") && e.contains("v.npy") && e.contains("verify"),
                "k {k}: {e}"
            );
        }
        data[12_345 * 4 + 2] = 0.5;
        data[19_999 * 4] = 0.5;
        crate::store::npy::write_f32(&p, &data, 20_000, 4).unwrap();
        let m = NpyMatrix::open(&p).unwrap();
        assert_eq!(
            search(&m, &[1.0, 0.0, 0.0, 1.0], 500).unwrap()[0].len(),
            500
        );
    }
}
