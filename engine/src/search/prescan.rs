//! Exact search on CPUs with AVX512-BF16: a pre-scan in bfloat16 finds every row that can be among a
//! query's k best, and only those rows are scored in f32, by exact search's own arithmetic
//! ([`crate::simd::RowsFn`]), so the hits, their scores and their order are exact search's.
//!
//! `vdpbf16ps` takes twice the products a cycle of an f32 FMA. A pre-scan score `s'` (query and row
//! rounded to bf16, `q = bq + rq` and `x = bx + rx`, products summed in f32) is within
//! `e = e1 |x| + e2 |rx| + abs` of the f32 score `s`: `q.x - bq.bx = q.rx + rq.bx`, at most
//! `|q| |rx| + |rq| |bx|`, and `|bx| <= (1 + u) |x|` with `u = 2^-8`; each sum (the pre-scan's, and
//! exact search's chain of FMAs) is within `gamma_n` of its exact value, `gamma_n = n 2^-24 / (1 - n
//! 2^-24)` over its `n` roundings, and `sum |q_i x_i| <= |q| |x|`, `|bq| |bx| <= (1 + u)^2 |q| |x|`;
//! results that `vdpbf16ps` flushes to zero add at most `2^-126` an operation. So
//! `e1 = gamma_n (2 + 2u + u^2) |q| + (1 + u) |rq|` and `e2 = |q|`, each with room for the rounding
//! of the bound's own arithmetic; a row's `|x|` and `|rx|` are computed as it is packed. The residuals' norms are about
//! 0.42 u of their vectors' (MiniLM-shaped vectors), so `e` is about 2.4 times narrower than the
//! `(2u + u^2) |q| |x|` that bounds each product's rounding alone. Three cases fall outside it and
//! get an infinite bound (always kept, so always scored in f32): a query or row with a subnormal value
//! (`vdpbf16ps` reads it as zero, losing a product the bound does not cover), a bound that is not a
//! number (`0 x inf`), and one of `2^100` or more (where the f32 sums might overflow, which the f32
//! scoring then reports as exact search does). So every row whose exact score reaches
//! the k-th best exact score has `s' + e >= T`, where `T` is the k-th best `s' - e` (a lower bound of
//! that k-th score): the pre-scan keeps each row whose upper bound reaches the query's running `T`,
//! and the rows kept are a superset of the k best, ties included. A batch with a query whose bound is
//! infinite, or a zero query (every row tied at 0), goes to the f32 scan instead: such a query would
//! keep every row.

use super::exact::{TopK, PACK_ROWS};
use crate::simd::{ROWS, TILE_Q, TILE_R};

// The tile's broadcasts below are written for six queries a panel.
const _: () = assert!(TILE_Q == 6);
use crate::store::npy::NpyMatrix;

/// Widest query the bound below is written for.
const MAX_DIM: usize = 4096;

/// Whether the pre-scan is faster than the f32 scan for top `k` of `rows` rows a worker. A worker
/// keeps about `k (1 + ln(rows / k))` rows (those that reach its running threshold), and scores them
/// again in f32; past about a twentieth of its rows the f32 scan is faster (AMD EPYC Zen 4, 2 threads,
/// MiniLM-shaped vectors: 300,000 x 384 at k 1,000, 4% kept: 923 against 810 queries/s, at k 3,000,
/// 10%: 616 against 711; the pool's 28,606 x 384 at k 100, 4%: 7,868 against 7,795, at k 200, 7%:
/// 6,122 against 6,493). k is at most 1,000; a query's list of kept rows holds at most 8 max(k, 128) rows
/// and a block's (`scan_run`).
pub(super) fn pays(k: usize, rows: usize) -> bool {
    k > 0
        && k <= 1000
        && k < rows
        && k as f64 * (1.0 + (rows as f64 / k as f64).ln()) <= rows as f64 / 20.0
}

/// Whether the environment leaves the pre-scan on (`SIMLM_EXACT_PRESCAN=0` turns it off).
pub(crate) fn enabled() -> bool {
    std::env::var_os("SIMLM_EXACT_PRESCAN").is_none_or(|v| v != "0")
}

/// Whether this CPU runs the pre-scan, and the queries are within its bound.
pub(crate) fn available(dim: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        dim <= MAX_DIM
            && crate::simd::level() == crate::simd::Level::Avx512
            && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = dim;
        false
    }
}

/// A query's factors `[e1, e2]` of the bound `e1 |x| + e2 |rx| + abs` (module note): from its norm
/// and its residual's, in f64, each 1% more for the f32 arithmetic of `e1 |x| + e2 |rx|` (`s' +- e`
/// needs none: rounding is monotone, and `s` is an f32), and rounded up. Infinite for a query with a
/// subnormal value (its norm is); a residual's subnormal values are only small numbers (a normal
/// value rounds to a normal bf16, which `vdpbf16ps` reads as it is), so its norm has no such rule.
fn query_factors(q: &[f32]) -> [f32; 2] {
    let u = 2f64.powi(-8);
    let n = q.len().max(1) as f64 * 2f64.powi(-24);
    let gamma = n / (1.0 - n);
    let residual: Vec<f32> = q.iter().map(|&v| v - widen(bf16(v))).collect();
    let (nq, nr) = (norm_up(q) as f64, norm_of_up(&residual) as f64);
    [
        up((gamma * (2.0 + 2.0 * u + u * u) * nq + (1.0 + u) * nr) * 1.01),
        up(nq * 1.01),
    ]
}

/// A bfloat16 as the f32 it stands for.
fn widen(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Flushed denormals: at most `2^-126` for each of `2 dim` operations, with room.
fn bound_abs(dim: usize) -> f32 {
    (4 * dim.max(1)) as f32 * f32::MIN_POSITIVE
}

/// `x` rounded to the nearest bfloat16 (ties to even); NaN stays NaN.
fn bf16(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fc0;
    }
    let u = x.to_bits();
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// Euclidean norm, rounded up (f64 sum, then a relative 2^-40 more than its error); infinite for a
/// vector with a subnormal value (see the module's note).
fn norm_up(v: &[f32]) -> f32 {
    if v.iter().any(|x| x.is_subnormal()) {
        return f32::INFINITY;
    }
    norm_of_up(v)
}

/// Euclidean norm, rounded up, of any vector (subnormal values included).
fn norm_of_up(v: &[f32]) -> f32 {
    sum_sq_norm_up(v.iter().map(|&x| x as f64 * x as f64).sum(), v.len())
}

/// The norm of a vector of `len` values from the f64 sum of their squares (in any order), rounded
/// up: a relative `2^-40 len` more than the sum's rounding error.
fn sum_sq_norm_up(sum: f64, len: usize) -> f32 {
    up(sum.sqrt() * (1.0 + 2f64.powi(-40) * len as f64))
}

/// `x` rounded up to an f32.
fn up(x: f64) -> f32 {
    let f = x as f32;
    if (f as f64) < x {
        f32::from_bits(f.to_bits() + 1)
    } else {
        f
    }
}

/// Bounds of `2^100` or more, and those that are not a number, are taken as infinite.
const BIG: f32 = 1.2676506e30;

/// A row's bound from its query's factors and its norms (`[|x|, |rx|]`): `e1 |x| + e2 |rx|`, infinite
/// where not below [`BIG`] (or NaN), plus `abs`; the tile computes the same, lane by lane.
#[inline]
fn bound(e: [f32; 2], norm: f32, rnorm: f32, abs: f32) -> f32 {
    let p = e[0] * norm + e[1] * rnorm;
    (if p < BIG { p } else { f32::INFINITY }) + abs
}

/// `nq` queries in panels of [`TILE_Q`], pair-major: `panel[(k / 2) * 2 TILE_Q + 2 i + k % 2]`, the
/// last panel (and an odd width's last pair) padded with zeros.
fn pack_queries(queries: &[f32], nq: usize, dim: usize) -> Vec<u16> {
    let kp = dim.div_ceil(2);
    let mut out = vec![0u16; nq.div_ceil(TILE_Q) * kp * 2 * TILE_Q];
    for (q, src) in queries.chunks_exact(dim).take(nq).enumerate() {
        let panel = &mut out[(q / TILE_Q) * kp * 2 * TILE_Q..][..kp * 2 * TILE_Q];
        for (k, &v) in src.iter().enumerate() {
            panel[(k / 2) * 2 * TILE_Q + 2 * (q % TILE_Q) + k % 2] = bf16(v);
        }
    }
    out
}

/// `n` rows in panels of [`TILE_R`], pair-major (`panel[(k / 2) * 2 TILE_R + 2 r + k % 2]`), from
/// `out[at..]`, `at` the returned offset that puts them on a 64-byte boundary (each panel's steps are
/// then whole cache lines); and each panel's [`Norms`]. `tmp` holds a panel's rows in bf16 on their
/// way to the pair-major layout.
fn pack_rows(
    rows: &[f32],
    n: usize,
    dim: usize,
    out: &mut Vec<u16>,
    norms: &mut Vec<Norms>,
    tmp: &mut Vec<u32>,
) -> usize {
    let kp = dim.div_ceil(2);
    let len = n.div_ceil(TILE_R) * kp * 2 * TILE_R + 32;
    // Every value of the panels is written below (dead rows as zeros), so a buffer of the right
    // length is not cleared first.
    if out.len() != len {
        out.clear();
        out.resize(len, 0);
    }
    let at = out.as_ptr().align_offset(64).min(32);
    norms.clear();
    norms.resize(n.div_ceil(TILE_R), [[0.0; TILE_R]; 2]);
    let stride = dim.div_ceil(16) * 8;
    tmp.clear();
    tmp.resize(TILE_R * stride, 0);
    let panel_len = kp * 2 * TILE_R;
    for (p, src) in rows[..n * dim].chunks(TILE_R * dim).enumerate() {
        let panel = &mut out[at + p * panel_len..][..panel_len];
        // Safety: avx512f and avx512bf16 (checked by `available`); the lengths are asserted there.
        unsafe { pack_panel(src, dim, stride, tmp, panel, &mut norms[p]) };
    }
    at
}

/// A panel's rows' norms, `[|x|; TILE_R]` then `[|rx|; TILE_R]` (the residuals `x - bf16(x)`), rounded
/// up; 0 for the rows past the end.
type Norms = [[f32; TILE_R]; 2];

/// One panel of up to [`TILE_R`] rows (`rows.len() / dim` of them; the rest of the panel zeros):
/// each row converted to bf16 (`vcvtneps2bf16`, the same rounding as [`bf16`] for every value but
/// subnormal ones, whose rows get infinite norms), its and its residual's norms as [`norm_up`]
/// computes them (the f64 squares summed in another order, within the same margin), then the pairs
/// gathered into the pair-major layout. `tmp` is `TILE_R` rows of `stride` pairs.
///
/// Safety: the CPU has AVX-512 F and BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_panel(
    rows: &[f32],
    dim: usize,
    stride: usize,
    tmp: &mut [u32],
    panel: &mut [u16],
    norms: &mut Norms,
) {
    use std::arch::x86_64::*;
    let kp = dim.div_ceil(2);
    let live = rows.len() / dim;
    assert!(
        live <= TILE_R
            && stride * 2 >= dim.div_ceil(16) * 16
            && tmp.len() >= TILE_R * stride
            && panel.len() >= kp * 2 * TILE_R
    );
    let exp = _mm512_set1_epi32(0x7f80_0000);
    let man = _mm512_set1_epi32(0x007f_ffff);
    let [norm, rnorm] = norms;
    for r in 0..TILE_R {
        let dst = tmp.as_mut_ptr().add(r * stride) as *mut u16;
        if r >= live {
            for c in (0..stride * 2).step_by(16) {
                _mm256_storeu_si256(dst.add(c) as *mut __m256i, _mm256_setzero_si256());
            }
            (norm[r], rnorm[r]) = (0.0, 0.0);
            continue;
        }
        let src = rows.as_ptr().add(r * dim);
        let mut subnormal: __mmask16 = 0;
        let (mut squares, mut rsquares) = ([_mm512_setzero_pd(); 2], [_mm512_setzero_pd(); 2]);
        for c in (0..dim).step_by(16) {
            let m: __mmask16 = if dim - c >= 16 {
                !0
            } else {
                (1 << (dim - c)) - 1
            };
            let v = _mm512_maskz_loadu_ps(m, src.add(c));
            let bits = _mm512_castps_si512(v);
            subnormal |= _mm512_mask_test_epi32_mask(_mm512_testn_epi32_mask(bits, exp), bits, man);
            add_squares(v, &mut squares);
            let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
            _mm256_storeu_si256(dst.add(c) as *mut __m256i, h);
            // The residual, exact in f32 (NaN for an infinity or NaN).
            let wide = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)));
            add_squares(_mm512_sub_ps(v, wide), &mut rsquares);
        }
        let norm_of = |[lo, hi]: [__m512d; 2]| {
            sum_sq_norm_up(_mm512_reduce_add_pd(_mm512_add_pd(lo, hi)), dim)
        };
        (norm[r], rnorm[r]) = if subnormal != 0 {
            (f32::INFINITY, f32::INFINITY)
        } else {
            (norm_of(squares), norm_of(rsquares))
        };
    }
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let idx = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(stride as i32));
    let base = tmp.as_ptr();
    let out = panel.as_mut_ptr();
    for k in 0..kp {
        let line = _mm512_i32gather_epi32::<4>(idx, base.add(k) as *const _);
        _mm512_storeu_si512(out.add(k * 2 * TILE_R) as *mut _, line);
    }
}

/// Adds the squares of `v`'s 16 values, in f64 (exact), to the two 8-lane sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn add_squares(v: std::arch::x86_64::__m512, sums: &mut [std::arch::x86_64::__m512d; 2]) {
    use std::arch::x86_64::*;
    let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
        _mm512_castps_pd(v),
    )));
    sums[0] = _mm512_fmadd_pd(lo, lo, sums[0]);
    sums[1] = _mm512_fmadd_pd(hi, hi, sums[1]);
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_panel(_: &[f32], _: usize, _: usize, _: &mut [u32], _: &mut [u16], _: &mut Norms) {
    unreachable!("the pre-scan runs only on x86_64 (`available`)")
}

/// A query's state in one worker: the k best lower bounds (their threshold is `T`), the rows whose
/// upper bound reached `T` when they were scanned (with that bound, in row order), and the k best
/// f32 scores of the rows scored in the second pass. `T` only rises, so a row below it at some point
/// is below it at the end, and may leave the list then.
struct QueryState {
    lower: TopK,
    pending: Vec<(f32, u32)>,
    /// The length at which `pending` is next thinned.
    limit: usize,
    exact: TopK,
}

/// What a worker found: for each query the exact top k of its rows, or `None` where a pre-scan score
/// was not finite (the caller then runs exact search's f32 scan, which reports the row).
type WorkerResult = Option<Vec<TopK>>;

/// Exact search through the pre-scan; `None` when a pre-scan or f32 score was not finite anywhere
/// (the caller runs the f32 scan instead, which reports the damaged row as it always has), or when a
/// query's bound cannot tell rows apart.
pub(super) fn search(
    matrix: &NpyMatrix,
    runs: &[&[(usize, usize)]],
    queries: &[f32],
    k: usize,
) -> Option<Vec<Vec<TopK>>> {
    use rayon::prelude::*;
    let dim = matrix.cols();
    let nq = queries.len() / dim;
    let packed = pack_queries(queries, nq, dim);
    let abs = bound_abs(dim);
    let err: Vec<[f32; 2]> = queries.chunks_exact(dim).map(query_factors).collect();
    // A query whose bound tells no row apart (infinite: a subnormal value, or a norm past 2^100; or
    // a zero query, every row tied at 0) would keep every row: the f32 scan takes the batch.
    if err
        .iter()
        .any(|e| !(e[0] < BIG && e[1] < BIG) || e[1] == 0.0)
    {
        return None;
    }
    let parts: Vec<WorkerResult> = runs
        .par_iter()
        .map(|run| scan_run(matrix, run, &packed, &err, abs, queries, k))
        .collect();
    parts.into_iter().collect()
}

/// One worker's run of blocks.
fn scan_run(
    matrix: &NpyMatrix,
    run: &[(usize, usize)],
    packed_queries: &[u16],
    err: &[[f32; 2]],
    abs: f32,
    queries: &[f32],
    k: usize,
) -> WorkerResult {
    let dim = matrix.cols();
    let kp = dim.div_ceil(2);
    let nq = err.len();
    // A list is thinned first at `base` rows; it holds at most `cap` between blocks.
    let base = (2 * k).max(256);
    let cap = 4 * base;
    let mut states: Vec<QueryState> = (0..nq)
        .map(|_| QueryState {
            lower: TopK::new(k),
            pending: Vec::new(),
            limit: base,
            exact: TopK::new(k),
        })
        .collect();
    let (mut rows16, mut norms, mut tmp) = (Vec::new(), Vec::new(), Vec::new());
    let mut out = [0f32; TILE_Q * TILE_R];
    let mut kept = Vec::new();
    let rows_fn = crate::simd::score_rows_kernel();
    let q_panels = nq.div_ceil(TILE_Q);
    for &(a, b) in run {
        // Read (for an f16 matrix, converted): packed 128 rows at a time.
        let block = matrix.rows_f32(a, b);
        for c0 in (a..b).step_by(PACK_ROWS) {
            let c1 = (c0 + PACK_ROWS).min(b);
            let rows_f32 = &block[(c0 - a) * dim..(c1 - a) * dim];
            let at = pack_rows(rows_f32, c1 - c0, dim, &mut rows16, &mut norms, &mut tmp);
            let packed = &rows16[at..at + (c1 - c0).div_ceil(TILE_R) * kp * 2 * TILE_R];
            for qp in 0..q_panels {
                let q0 = qp * TILE_Q;
                let live_q = (nq - q0).min(TILE_Q);
                let panel = &packed_queries[qp * kp * 2 * TILE_Q..][..kp * 2 * TILE_Q];
                for (jp, rows) in packed.chunks_exact(kp * 2 * TILE_R).enumerate() {
                    let row0 = c0 + jp * TILE_R;
                    let live_rows = (c1 - row0).min(TILE_R);
                    let norms = &norms[jp];
                    let mut thr = [f32::INFINITY; TILE_Q];
                    let mut e = [[0f32; 2]; TILE_Q];
                    for i in 0..live_q {
                        thr[i] = states[q0 + i].lower.threshold();
                        e[i] = err[q0 + i];
                    }
                    // Safety: avx512f and avx512bf16 (checked by `available`), and the slices hold
                    // a whole panel each.
                    let hits = unsafe { tile(kp, panel, rows, norms, &e, abs, &thr, &mut out) }?;
                    let row_mask = u16::MAX >> (TILE_R - live_rows);
                    for (i, st) in states[q0..q0 + live_q].iter_mut().enumerate() {
                        let mut m = hits[i] & row_mask;
                        while m != 0 {
                            let j = m.trailing_zeros() as usize;
                            m &= m - 1;
                            let s = out[i * TILE_R + j];
                            let bound = bound(e[i], norms[0][j], norms[1][j], abs);
                            st.lower.push(row0 + j, s - bound);
                            st.pending.push((s + bound, (row0 + j) as u32));
                        }
                    }
                }
            }
        }
        // Rows whose bound has fallen below T leave a list once it has doubled since it was last
        // thinned, so that a list holds about the rows that can still be among the k best. Rows the
        // bound cannot tell apart stay (ties within it, infinite bounds, a zero query): when more
        // than half of `cap` are left, they are scored in f32 now and leave too, so that a list
        // never holds more than `cap` rows and a block's.
        for (q, st) in states.iter_mut().enumerate() {
            #[cfg(test)]
            tests::LONGEST.fetch_max(
                1000 * st.pending.len() / (cap + super::exact::BLOCK_ROWS),
                std::sync::atomic::Ordering::Relaxed,
            );
            if st.pending.len() >= st.limit {
                let t = st.lower.threshold();
                st.pending.retain(|&(u, _)| u >= t);
                if st.pending.len() > cap / 2 {
                    kept.clear();
                    kept.extend(st.pending.drain(..).map(|(_, r)| r as usize));
                    let query = &queries[q * dim..][..dim];
                    score_anywhere(rows_fn, matrix, query, &kept, &mut st.exact)?;
                }
                st.limit = (2 * st.pending.len()).max(base);
            }
        }
    }
    // The second pass: each query's rows whose bound reaches its final T (far fewer than reached the
    // running T when they were scanned: about k ln(n / k) rows do), scored in f32 block by block,
    // each block read once more. The lists are in row order.
    let mut from = vec![0usize; nq];
    for st in states.iter_mut() {
        let t = st.lower.settled_threshold();
        st.pending.retain(|&(u, _)| u >= t);
    }
    let mut to = vec![0usize; nq];
    for &(a, b) in run {
        let mut any = false;
        for (q, st) in states.iter().enumerate() {
            to[q] = from[q] + st.pending[from[q]..].partition_point(|&(_, r)| (r as usize) < b);
            any |= to[q] > from[q];
        }
        // A block no query needs is not read (nor, for an f16 matrix, converted) again.
        if !any {
            continue;
        }
        let block = matrix.rows_f32(a, b);
        for (q, st) in states.iter_mut().enumerate() {
            let (start, end) = (from[q], to[q]);
            from[q] = end;
            if start == end {
                continue;
            }
            kept.clear();
            kept.extend(st.pending[start..end].iter().map(|&(_, r)| r as usize));
            let query = &queries[q * dim..][..dim];
            for group in kept.chunks(ROWS) {
                score_into(rows_fn, query, &block, a, dim, group, &mut st.exact)?;
            }
        }
    }
    Some(states.into_iter().map(|s| s.exact).collect())
}

/// Scores `rows`, wherever they lie in the matrix, in f32 and offers them to `top`; `None` for a
/// score that is not finite.
fn score_anywhere(
    rows_fn: crate::simd::RowsFn,
    matrix: &NpyMatrix,
    query: &[f32],
    rows: &[usize],
    top: &mut TopK,
) -> Option<()> {
    for group in rows.chunks(ROWS) {
        let read: Vec<_> = group.iter().map(|&r| matrix.rows_f32(r, r + 1)).collect();
        let slices: Vec<&[f32]> = read.iter().map(|v| &v[..]).collect();
        offer(rows_fn, query, &slices, group, top)?;
    }
    Some(())
}

/// Scores `rows` (of the block that starts at row `a`) in f32 and offers them to `top`; `None` for a
/// score that is not finite.
fn score_into(
    rows_fn: crate::simd::RowsFn,
    query: &[f32],
    block: &[f32],
    a: usize,
    dim: usize,
    rows: &[usize],
    top: &mut TopK,
) -> Option<()> {
    let mut slices: [&[f32]; ROWS] = [&[]; ROWS];
    for (s, &r) in slices.iter_mut().zip(rows) {
        *s = &block[(r - a) * dim..][..dim];
    }
    offer(rows_fn, query, &slices[..rows.len()], rows, top)
}

/// Scores up to [`ROWS`] rows, `slices` their vectors, in f32 and offers them to `top`; `None` for
/// a score that is not finite.
fn offer(
    rows_fn: crate::simd::RowsFn,
    query: &[f32],
    slices: &[&[f32]],
    rows: &[usize],
    top: &mut TopK,
) -> Option<()> {
    let mut scores = [0f32; ROWS];
    rows_fn(query, slices, &mut scores);
    for (&r, &s) in rows.iter().zip(&scores) {
        if !s.is_finite() {
            return None;
        }
        top.push(r, s);
    }
    Some(())
}

/// `out[i * TILE_R + j]`: query i of the panel (pairs of bf16 broadcast) against row j (pairs of
/// bf16), `vdpbf16ps` over the `kp` pairs; for each query the bits of the rows whose upper bound
/// `s + (e_i norm_j + abs)` reaches `thr[i]`; `None` when any score is not finite.
///
/// Safety: the CPU has AVX-512 F and BF16; `a` holds `kp * 2 * TILE_Q` values, `b` `kp * 2 * TILE_R`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    kp: usize,
    a: &[u16],
    b: &[u16],
    norms: &Norms,
    e: &[[f32; 2]; TILE_Q],
    abs: f32,
    thr: &[f32; TILE_Q],
    out: &mut [f32; TILE_Q * TILE_R],
) -> Option<[u16; TILE_Q]> {
    use std::arch::x86_64::*;
    assert!(a.len() >= kp * 2 * TILE_Q && b.len() >= kp * 2 * TILE_R);
    let mut c = [_mm512_setzero_ps(); TILE_Q];
    let (mut pa, mut pb) = (a.as_ptr(), b.as_ptr());
    for _ in 0..kp {
        let r: __m512bh = std::mem::transmute(_mm512_loadu_si512(pb as *const __m512i));
        // The panel's six query pairs broadcast by `vpbroadcastd`, an integer-domain load: LLVM
        // picks the float domain's `vbroadcastss` for `_mm512_set1_epi32` here, and on AMD Zen 4
        // passing its result to `vdpbf16ps` costs the loop a third of its rate (1,390 against 1,940
        // queries/s for the same C loop, 300,000 x 384). One block, so that the six loads keep their
        // offsets from one pointer.
        let (q0, q1, q2, q3, q4, q5): (__m512i, __m512i, __m512i, __m512i, __m512i, __m512i);
        std::arch::asm!(
            "vpbroadcastd {q0}, dword ptr [{p}]",
            "vpbroadcastd {q1}, dword ptr [{p} + 4]",
            "vpbroadcastd {q2}, dword ptr [{p} + 8]",
            "vpbroadcastd {q3}, dword ptr [{p} + 12]",
            "vpbroadcastd {q4}, dword ptr [{p} + 16]",
            "vpbroadcastd {q5}, dword ptr [{p} + 20]",
            p = in(reg) pa,
            q0 = out(zmm_reg) q0,
            q1 = out(zmm_reg) q1,
            q2 = out(zmm_reg) q2,
            q3 = out(zmm_reg) q3,
            q4 = out(zmm_reg) q4,
            q5 = out(zmm_reg) q5,
            options(pure, readonly, nostack, preserves_flags)
        );
        for (ci, qi) in c.iter_mut().zip([q0, q1, q2, q3, q4, q5]) {
            *ci = _mm512_dpbf16_ps(*ci, std::mem::transmute::<__m512i, __m512bh>(qi), r);
        }
        pa = pa.add(2 * TILE_Q);
        pb = pb.add(2 * TILE_R);
    }
    let zero = _mm512_setzero_ps();
    let mut nf = zero;
    let nx = _mm512_loadu_ps(norms[0].as_ptr());
    let nr = _mm512_loadu_ps(norms[1].as_ptr());
    let abs = _mm512_set1_ps(abs);
    let (big, inf) = (_mm512_set1_ps(BIG), _mm512_set1_ps(f32::INFINITY));
    let mut hits = [0u16; TILE_Q];
    for (i, &ci) in c.iter().enumerate() {
        _mm512_storeu_ps(out.as_mut_ptr().add(i * TILE_R), ci);
        nf = _mm512_add_ps(nf, _mm512_mul_ps(ci, zero));
        // `bound`'s operations: e1 |x| + e2 |rx|, infinite unless below BIG, + abs; then + s.
        let p = _mm512_add_ps(
            _mm512_mul_ps(_mm512_set1_ps(e[i][0]), nx),
            _mm512_mul_ps(_mm512_set1_ps(e[i][1]), nr),
        );
        let p = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(p, big), inf, p);
        let bound = _mm512_add_ps(p, abs);
        hits[i] =
            _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_add_ps(ci, bound), _mm512_set1_ps(thr[i]));
    }
    (_mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(nf, zero) == 0).then_some(hits)
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    _: usize,
    _: &[u16],
    _: &[u16],
    _: &Norms,
    _: &[[f32; 2]; TILE_Q],
    _: f32,
    _: &[f32; TILE_Q],
    _: &mut [f32; TILE_Q * TILE_R],
) -> Option<[u16; TILE_Q]> {
    unreachable!("the pre-scan runs only on x86_64 (`available`)")
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// The longest kept-row list met between blocks in any test, in thousandths of what `scan_run`
    /// lets a list hold (`cap` and a block's rows): at most 1,000.
    pub(crate) static LONGEST: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn the_pre_scan_runs_where_it_was_measured_faster() {
        // (k, rows a worker): the measured cases in `pays`'s note, and the edges.
        for (k, rows, want) in [
            (10, 150_000, true),
            (1000, 150_000, true),
            (3000, 150_000, false),
            (10, 14_303, true),
            (100, 14_303, true),
            (200, 14_303, false),
            (1000, 14_303, false),
            (0, 150_000, false),
            (10, 10, false),
            (1001, 100_000_000, false),
        ] {
            assert_eq!(pays(k, rows), want, "k {k}, {rows} rows a worker");
        }
    }

    /// The layout and norms `pack_rows` writes, one value at a time.
    fn pack_rows_scalar(rows: &[f32], n: usize, dim: usize) -> (Vec<u16>, Vec<Norms>) {
        let kp = dim.div_ceil(2);
        let mut out = vec![0u16; n.div_ceil(TILE_R) * kp * 2 * TILE_R];
        let mut norms = vec![[[0f32; TILE_R]; 2]; n.div_ceil(TILE_R)];
        for (r, src) in rows.chunks_exact(dim).take(n).enumerate() {
            let panel = &mut out[(r / TILE_R) * kp * 2 * TILE_R..][..kp * 2 * TILE_R];
            for (k, &v) in src.iter().enumerate() {
                panel[(k / 2) * 2 * TILE_R + 2 * (r % TILE_R) + k % 2] = bf16(v);
            }
            let residual: Vec<f32> = src.iter().map(|&v| v - widen(bf16(v))).collect();
            // (a subnormal value's residual differs: the instruction reads the value as zero)
            norms[r / TILE_R][0][r % TILE_R] = norm_up(src);
            norms[r / TILE_R][1][r % TILE_R] = norm_of_up(&residual);
        }
        (out, norms)
    }

    #[test]
    fn packed_rows_are_the_scalar_layout() {
        if !crate::search::test_support::has_prescan() {
            return;
        }
        let mut next = crate::search::test_support::lcg(7);
        // Ordinary values with, now and then, the edges: zeros of both signs, NaN, infinities,
        // f32's largest values (which round to a bf16 infinity), the smallest normal, ties.
        let edges = [
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -f32::MAX,
            f32::MIN_POSITIVE,
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            -(1.0 + 2f32.powi(-8)),
        ];
        let (mut out, mut norms, mut tmp) = (Vec::new(), Vec::new(), Vec::new());
        for dim in [1, 2, 3, 15, 16, 17, 31, 32, 33, 64, 100, 384, 385] {
            for n in [1, 5, 16, 17, 40, 128] {
                let mut rows: Vec<f32> = (0..n * dim)
                    .map(|_| {
                        let x = next();
                        if x.is_multiple_of(97) {
                            edges[(x / 97) as usize % edges.len()]
                        } else {
                            (x % 20001) as f32 / 10000.0 - 1.0
                        }
                    })
                    .collect();
                // One row with a subnormal value: its norm is infinite (its packed bits are not
                // compared: the instruction reads it as zero).
                let sub_row = n / 2;
                rows[sub_row * dim + dim / 2] = 1e-40;
                let (want, want_norms) = pack_rows_scalar(&rows, n, dim);
                let at = pack_rows(&rows, n, dim, &mut out, &mut norms, &mut tmp);
                let got = &out[at..at + want.len()];
                assert_eq!(got.as_ptr() as usize % 64, 0, "dim {dim} n {n}: aligned");
                let kp = dim.div_ceil(2);
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    let (panel, rest) = (i / (kp * 2 * TILE_R), i % (kp * 2 * TILE_R));
                    let row = panel * TILE_R + (rest % (2 * TILE_R)) / 2;
                    if row != sub_row {
                        assert_eq!(g, w, "dim {dim} n {n}: value {i} (row {row})");
                    }
                }
                assert_eq!(norms.len(), want_norms.len());
                for (p, (g, w)) in norms.iter().zip(&want_norms).enumerate() {
                    for (which, (g, w)) in g.iter().zip(w).enumerate() {
                        for (j, (&g, &w)) in g.iter().zip(w).enumerate() {
                            let row = p * TILE_R + j;
                            let same = g.to_bits() == w.to_bits()
                                || (g.is_nan() && w.is_nan())
                                || (g.is_finite()
                                    && w.is_finite()
                                    && (g - w).abs() <= 2.0 * w * f32::EPSILON);
                            // A subnormal row's residual is not compared (its norms are infinite).
                            assert!(
                                same || (row == sub_row && which == 1),
                                "dim {dim} n {n}: row {row}'s norm {which}: {g} against {w}"
                            );
                        }
                    }
                }
                let (p, j) = (sub_row / TILE_R, sub_row % TILE_R);
                assert!(
                    norms[p][0][j].is_infinite() && norms[p][1][j].is_infinite(),
                    "dim {dim} n {n}: the subnormal row"
                );
                // Packed again into the same buffers (not cleared between calls).
                let at2 = pack_rows(&rows, n, dim, &mut out, &mut norms, &mut tmp);
                assert_eq!(at2, at);
            }
        }
    }

    /// Each pre-scan score against the f32 score exact search gives the same pair, for vectors whose
    /// bf16 residuals all point one way (the widest the rounding goes: each value 0.49 or 0.51 of a
    /// bf16 step off), at several scales, signs and widths: `|s - s'|` stays within the bound, and
    /// reaches nine tenths of it on the aligned vectors (so a bound a tenth too narrow fails here).
    #[test]
    fn the_bound_holds_where_the_rounding_is_widest() {
        if !crate::search::test_support::has_prescan() {
            return;
        }
        let mut next = crate::search::test_support::lcg(11);
        let step = 2f32.powi(-7);
        let rows_fn = crate::simd::score_rows_kernel();
        let mut widest = 0f32;
        for dim in [1, 7, 64, 384, 1000] {
            // Families: all up (0.49 of a step below the midpoint: rounds down), all down (rounds
            // up), scaled by powers of two, with random signs shared by a query and its rows, and
            // plain random values.
            let family = |f: u32, i: usize, r: u32| -> f32 {
                let sign = if f >= 2 && (r >> (i % 16)) & 1 == 1 {
                    -1.0
                } else {
                    1.0
                };
                let scale = if f >= 3 {
                    2f32.powi((r % 21) as i32 - 10)
                } else {
                    1.0
                };
                match f {
                    0 | 2 | 3 => sign * scale * (1.0 + 0.49 * step),
                    1 => 1.0 + 1.51 * step,
                    _ => (r % 20001) as f32 / 10000.0 - 1.0 + (i as f32) * 1e-3,
                }
            };
            let mut rows = Vec::new();
            let mut queries = Vec::new();
            let families = 5;
            for f in 0..families {
                let r = next();
                for i in 0..dim {
                    queries.push(family(f, i, r));
                }
                for _ in 0..TILE_R {
                    let r2 = if f == 4 { next() } else { r };
                    for i in 0..dim {
                        rows.push(family(f, i, r2));
                    }
                }
            }
            let n = rows.len() / dim;
            let nq = queries.len() / dim;
            let (mut out16, mut norms, mut tmp) = (Vec::new(), Vec::new(), Vec::new());
            let at = pack_rows(&rows, n, dim, &mut out16, &mut norms, &mut tmp);
            let kp = dim.div_ceil(2);
            let packed_q = pack_queries(&queries, nq, dim);
            let abs = bound_abs(dim);
            for qp in 0..nq.div_ceil(TILE_Q) {
                let panel = &packed_q[qp * kp * 2 * TILE_Q..][..kp * 2 * TILE_Q];
                let mut e = [[0f32; 2]; TILE_Q];
                for (i, e) in e.iter_mut().enumerate().take(nq - qp * TILE_Q) {
                    *e = query_factors(&queries[(qp * TILE_Q + i) * dim..][..dim]);
                }
                for p in 0..n.div_ceil(TILE_R) {
                    let rows16 = &out16[at + p * kp * 2 * TILE_R..][..kp * 2 * TILE_R];
                    let mut out = [0f32; TILE_Q * TILE_R];
                    let thr = [f32::NEG_INFINITY; TILE_Q];
                    // Safety: `available` above; whole panels.
                    unsafe { tile(kp, panel, rows16, &norms[p], &e, abs, &thr, &mut out) }
                        .expect("finite scores");
                    for i in 0..TILE_Q.min(nq - qp * TILE_Q) {
                        let q = qp * TILE_Q + i;
                        let slices: Vec<&[f32]> = (0..TILE_R)
                            .map(|j| &rows[(p * TILE_R + j) * dim..][..dim])
                            .collect();
                        let mut exact = [0f32; ROWS];
                        rows_fn(&queries[q * dim..][..dim], &slices, &mut exact);
                        for j in 0..TILE_R {
                            let (s, sp) = (exact[j], out[i * TILE_R + j]);
                            let b = bound(e[i], norms[p][0][j], norms[p][1][j], abs);
                            assert!(
                                sp - b <= s && s <= sp + b,
                                "dim {dim}: query {q} row {}: f32 {s}, pre-scan {sp}, bound {b}",
                                p * TILE_R + j
                            );
                            // The aligned families, query and row of the same one.
                            if q == p && q < 2 {
                                widest = widest.max((s - sp).abs() / b);
                            }
                        }
                    }
                }
            }
        }
        assert!(
            widest > 0.9,
            "the widest gap reached only {widest} of the bound"
        );
    }
}
