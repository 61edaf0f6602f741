//! Exact search through a pre-scan: the matrix is scored in a narrower number format that the CPU
//! multiplies faster than f32 (bfloat16 on CPUs with AVX512-BF16, [`bf16`]; 8-bit integers on CPUs
//! with AVX-512 VNNI or AVX2, [`int8`]), each pre-scan score `s'` with a bound `e` of its distance from the f32 score `s`
//! that exact search computes for the same pair. Only the rows that can be among a query's k best are
//! scored in f32, by exact search's own arithmetic ([`crate::simd::RowsFn`]), so the hits, their
//! scores and their order are exact search's.
//!
//! Both formats write a row `x` as its rounded value and a residual, `x = bx + rx`, and a query the
//! same way, `q = bq + rq`; then `q.x - bq.bx = q.rx + rq.bx`, and each format's bound has the form
//! `e = e1 |x| + e2 |rx| + abs`: `e1` and `e2` are the query's (from its norm and its residual's),
//! `|x|` and `|rx|` the row's, computed as it is packed. Every row whose exact score reaches the
//! k-th best exact score has `s' + e >= T`, where `T` is the k-th best `s' - e` (a lower bound of that
//! k-th score): the pre-scan keeps each row whose upper bound reaches the query's running `T`, and the
//! rows kept are a superset of the k best, ties included. A batch with a query whose bound is
//! infinite, or a zero query (every row tied at 0), goes to the f32 scan instead: such a query would
//! keep every row.

mod bf16;
mod int8;

use super::exact::{TopK, PACK_ROWS};
use crate::simd::{ROWS, TILE_Q, TILE_R};
use crate::store::npy::NpyMatrix;

/// Widest query the bounds are written for.
const MAX_DIM: usize = 4096;

/// A pre-scan's number format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// bfloat16 products (`vdpbf16ps`), on CPUs with AVX-512 F and BF16.
    Bf16,
    /// 8-bit integer products: `vpdpbusd` on CPUs with AVX-512 VNNI, else `vpmaddubsw` (AVX2).
    Int8,
}

impl Kind {
    /// How `--version` names it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Bf16 => "bf16 (AVX512-BF16)",
            Kind::Int8 if crate::simd::has_avx512_vnni() => "int8 (AVX-512 VNNI)",
            Kind::Int8 => "int8 (AVX2)",
        }
    }

    /// The value of `SIMLM_EXACT_PRESCAN` that forces it ([`mode`]).
    pub(crate) fn setting(self) -> &'static str {
        match self {
            Kind::Bf16 => "bf16",
            Kind::Int8 => "int8",
        }
    }
}

/// The pre-scans this CPU runs for queries of width `dim`, in the order a search tries them
/// (the first that [`pays`]): on AVX-512 CPUs, int8 where they have VNNI, then bf16 where they have
/// BF16; on AVX2 CPUs, int8. AVX-512 CPUs with neither have none: their f32 scan multiplies 16 lanes a
/// step, and the AVX2 int8 tile was not measured against it.
pub(crate) fn kinds(dim: usize) -> Vec<Kind> {
    if dim > MAX_DIM {
        return Vec::new();
    }
    #[cfg(target_arch = "x86_64")]
    {
        match crate::simd::level() {
            crate::simd::Level::Avx512 => [Kind::Int8, Kind::Bf16]
                .into_iter()
                .filter(|&k| match k {
                    Kind::Int8 => crate::simd::has_avx512_vnni() && runs(Kind::Int8),
                    Kind::Bf16 => runs(Kind::Bf16),
                })
                .collect(),
            crate::simd::Level::Avx2Fma => vec![Kind::Int8],
            _ => Vec::new(),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// The pre-scan a search of top `k` over `rows` rows a worker, `nq` queries a batch, runs, as
/// `mode` asks: the first of [`kinds`] that [`pays`] (`Auto`), the one named (`Force`, if the CPU
/// runs it; unnamed, the first of `kinds`), or none (`Off`).
pub(crate) fn choose(dim: usize, k: usize, rows: usize, nq: usize, mode: Mode) -> Option<Kind> {
    let kinds = kinds(dim);
    let beside_bf16 = kinds.contains(&Kind::Bf16);
    let mut kinds = kinds.into_iter();
    match mode {
        Mode::Auto => kinds.find(|&kind| pays(kind, k, rows, nq, beside_bf16)),
        Mode::Off => None,
        Mode::Force(None) => kinds.next(),
        Mode::Force(Some(want)) => kinds.find(|&kind| kind == want),
    }
}

/// Whether the pre-scan of `kind` is faster than the f32 scan for top `k` of `rows` rows a worker,
/// `nq` queries a batch, and for int8 where the CPU runs bf16 too (`beside_bf16`), faster than bf16.
/// A worker keeps the rows that reach its running threshold within the bound, about
/// `k (1 + ln(rows / k))` where the bound is narrow, and scores them again in f32.
///
/// bf16: past about a twentieth of a worker's rows the f32 scan is faster (AMD EPYC Zen 4, 2
/// threads, MiniLM-shaped vectors: 300,000 x 384 at k 1,000, 4% kept: 923 against 810 queries/s, at
/// k 3,000, 10%: 616 against 711; the pool's 28,606 x 384 at k 100, 4%: 7,868 against 7,795, at k 200,
/// 7%: 6,122 against 6,493); it pays from one query on (its packing costs what the f32 scan's does).
///
/// int8: its bound is about 6 times as wide, and the rows within it of the threshold grow faster with
/// k than `k ln(rows / k)`; and coding the rows costs more than the f32 scan's (or bf16's) packing,
/// which only a batch of queries repays. Against the f32 scan (the same CPU under
/// `scripts/bench/avx2-only`, the AVX2 tile, 2,000 queries): crossovers between k 40 and 70 on the
/// pool (14,303 rows a worker: 9,290 against 8,433, 7,444 against 8,527 queries/s) and between k 100
/// and 200 on 300,000 x 384 (962 against 878, 781 against 878), so k up to `0.3 sqrt(rows)`; a batch of
/// about 50 queries (the pool at k 10: 48 queries 5,162 against 5,363, 64 queries 6,114 against
/// 5,794). Against bf16 (the VNNI tile, AMD EPYC Zen 4, 2 threads, 2,000 queries): the pool k 10 /
/// 20 / 30 / 40: 17,106 / 14,291 / 12,215 / 10,221 against 13,886 / 12,987 / 11,869 / 11,400;
/// 300,000 x 384 k 10 / 50 / 100: 2,309 / 1,642 / 1,099 against 1,541 / 1,328 / 1,357, so k up to
/// `0.2 sqrt(rows)`; batches at k 10 of 128 / 256 / 512 queries, the pool: 9,502 / 12,429 / 15,452
/// against 10,425 / 12,261 / 13,232 (300,000 x 384 at 256: 1,394 against 1,150), so 256 queries.
///
/// k is at most 1,000; a query's list of kept rows holds at most 8 max(k, 128) rows and a block's
/// (`scan_run`).
pub(super) fn pays(kind: Kind, k: usize, rows: usize, nq: usize, beside_bf16: bool) -> bool {
    let (kf, rf) = (k as f64, rows as f64);
    let narrow = k > 0 && k <= 1000 && k < rows && kf * (1.0 + (rf / kf).ln()) <= rf / 20.0;
    match kind {
        Kind::Bf16 => narrow,
        Kind::Int8 if beside_bf16 => narrow && nq >= 256 && kf <= 0.2 * rf.sqrt(),
        Kind::Int8 => narrow && nq >= 64 && kf <= 0.3 * rf.sqrt(),
    }
}

/// What `SIMLM_EXACT_PRESCAN` asks of the pre-scan: unset (or any other value), the first that
/// pays ([`choose`]); `0`, never; `force`, the CPU's first wherever it runs; `int8` or `bf16`, that
/// one wherever the CPU runs it (for measuring where each pays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Auto,
    Off,
    Force(Option<Kind>),
}

/// The environment's [`Mode`].
pub(crate) fn mode() -> Mode {
    match std::env::var_os("SIMLM_EXACT_PRESCAN") {
        Some(v) if v == "0" => Mode::Off,
        Some(v) if v == "force" => Mode::Force(None),
        Some(v) => [Kind::Int8, Kind::Bf16]
            .into_iter()
            .find(|k| v == k.setting())
            .map_or(Mode::Auto, |k| Mode::Force(Some(k))),
        None => Mode::Auto,
    }
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

/// `gamma_n = n 2^-24 / (1 - n 2^-24)`: a sum of `n` f32 roundings (exact search's chain of FMAs
/// over `dim` values) is within `gamma_n sum |q_i x_i|` of its exact value.
fn gamma(dim: usize) -> f64 {
    let n = dim.max(1) as f64 * 2f64.powi(-24);
    n / (1.0 - n)
}

/// Results flushed or rounded below `2^-126`: at most that for each of `2 dim` operations, with room.
fn bound_abs(dim: usize) -> f32 {
    (4 * dim.max(1)) as f32 * f32::MIN_POSITIVE
}

/// Bounds of `2^100` or more, and those that are not a number, are taken as infinite.
const BIG: f32 = 1.2676506e30;

/// A row's bound from its query's factors and its norms (`[|x|, |rx|]`): `e1 |x| + e2 |rx|`, infinite
/// where not below [`BIG`] (or NaN), plus `abs`; the tiles compute the same, lane by lane.
#[inline]
fn bound(e: [f32; 2], norm: f32, rnorm: f32, abs: f32) -> f32 {
    let p = e[0] * norm + e[1] * rnorm;
    (if p < BIG { p } else { f32::INFINITY }) + abs
}

/// A panel's rows' norms, `[|x|; TILE_R]` then `[|rx|; TILE_R]` (the residuals), rounded up; 0 for the
/// rows past the end.
type Norms = [[f32; TILE_R]; 2];

/// A pre-scan's number format: its packed queries, how it packs rows and scores a tile of them.
trait Codec: Sync {
    /// A worker's buffers for [`PACK_ROWS`] packed rows, reused from chunk to chunk.
    type Rows: Default;
    /// Packs `n` rows (row-major f32) into `buf`; `false` where a row has a value that is not finite
    /// (the batch then goes to the f32 scan, which reports the row).
    fn pack(&self, rows: &[f32], n: usize, buf: &mut Self::Rows) -> bool;
    /// What a tile needs of query panel `qp` (its queries' factors, and for int8 their scales),
    /// gathered once for every row panel it meets.
    type Panel;
    fn panel(&self, qp: usize) -> Self::Panel;
    /// A query panel against row panel `jp` of `buf`: the pre-scan scores in `out` (`out[i * TILE_R +
    /// j]`), and for each query the bits of the rows whose upper bound `s' + e` reaches `thr[i]`;
    /// `None` where a score is not finite.
    fn tile(
        &self,
        panel: &Self::Panel,
        buf: &Self::Rows,
        jp: usize,
        thr: &[f32; TILE_Q],
        out: &mut [f32; TILE_Q * TILE_R],
    ) -> Option<[u16; TILE_Q]>;
    /// Row panel `jp`'s norms.
    fn norms(buf: &Self::Rows, jp: usize) -> &Norms;
    /// Each query's factors `[e1, e2]`.
    fn factors(&self) -> &[[f32; 2]];
    /// The bound's absolute term.
    fn abs(&self) -> f32;
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

/// Whether this CPU runs the pre-scan of `kind`: those [`kinds`] lists, and on an AVX-512 CPU
/// without VNNI the int8 one too, on its AVX2 tile (the tests run every one the CPU runs).
pub(crate) fn runs(kind: Kind) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match kind {
            Kind::Bf16 => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bf16")
            }
            Kind::Int8 => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = kind;
        false
    }
}

/// Exact search through the pre-scan of `kind`, which the CPU must run ([`runs`]: panics where it
/// does not); `None` when a pre-scan or f32 score was not finite anywhere (the caller runs the f32
/// scan instead, which reports the damaged row as it always has), or when a query's bound cannot tell
/// rows apart.
pub(super) fn search(
    kind: Kind,
    matrix: &NpyMatrix,
    runs: &[&[(usize, usize)]],
    queries: &[f32],
    k: usize,
) -> Option<Vec<Vec<TopK>>> {
    assert!(
        self::runs(kind),
        "this CPU does not run the {} pre-scan",
        kind.name()
    );
    let dim = matrix.cols();
    if dim > MAX_DIM {
        return None;
    }
    match kind {
        Kind::Bf16 => search_with(&bf16::Bf16::new(queries, dim)?, matrix, runs, queries, k),
        Kind::Int8 => search_with(&int8::Int8::new(queries, dim)?, matrix, runs, queries, k),
    }
}

/// [`search`] with one format's packed queries.
fn search_with<C: Codec>(
    codec: &C,
    matrix: &NpyMatrix,
    runs: &[&[(usize, usize)]],
    queries: &[f32],
    k: usize,
) -> Option<Vec<Vec<TopK>>> {
    use rayon::prelude::*;
    let parts: Vec<WorkerResult> = runs
        .par_iter()
        .map(|run| scan_run(codec, matrix, run, queries, k))
        .collect();
    parts.into_iter().collect()
}

/// Whether a query's factors leave its bound finite and able to tell rows apart (a zero query's
/// are 0: every row ties at 0).
fn usable(e: [f32; 2]) -> bool {
    e[0] < BIG && e[1] < BIG && e[1] > 0.0
}

/// One worker's run of blocks.
fn scan_run<C: Codec>(
    codec: &C,
    matrix: &NpyMatrix,
    run: &[(usize, usize)],
    queries: &[f32],
    k: usize,
) -> WorkerResult {
    let dim = matrix.cols();
    let nq = queries.len() / dim;
    let abs = codec.abs();
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
    let err = codec.factors();
    let mut buf = C::Rows::default();
    let mut out = [0f32; TILE_Q * TILE_R];
    let mut kept = Vec::new();
    let rows_fn = crate::simd::score_rows_kernel();
    let q_panels = nq.div_ceil(TILE_Q);
    for &(a, b) in run {
        // Read (for an f16 matrix, converted): packed 128 rows at a time.
        let block = matrix.rows_f32(a, b);
        for c0 in (a..b).step_by(PACK_ROWS) {
            let c1 = (c0 + PACK_ROWS).min(b);
            if !codec.pack(&block[(c0 - a) * dim..(c1 - a) * dim], c1 - c0, &mut buf) {
                return None;
            }
            for qp in 0..q_panels {
                let q0 = qp * TILE_Q;
                let live_q = (nq - q0).min(TILE_Q);
                let panel = codec.panel(qp);
                for jp in 0..(c1 - c0).div_ceil(TILE_R) {
                    let row0 = c0 + jp * TILE_R;
                    let live_rows = (c1 - row0).min(TILE_R);
                    let mut thr = [f32::INFINITY; TILE_Q];
                    for i in 0..live_q {
                        thr[i] = states[q0 + i].lower.threshold();
                    }
                    let hits = codec.tile(&panel, &buf, jp, &thr, &mut out)?;
                    let norms = C::norms(&buf, jp);
                    let row_mask = u16::MAX >> (TILE_R - live_rows);
                    for (i, st) in states[q0..q0 + live_q].iter_mut().enumerate() {
                        let mut m = hits[i] & row_mask;
                        while m != 0 {
                            let j = m.trailing_zeros() as usize;
                            m &= m - 1;
                            let s = out[i * TILE_R + j];
                            let bound = bound(err[q0 + i], norms[0][j], norms[1][j], abs);
                            st.lower.push(row0 + j, s - bound);
                            st.pending.push((s + bound, (row0 + j) as u32));
                        }
                    }
                }
            }
        }
        // Rows whose bound has fallen below T leave a list once it has doubled since it was last
        // thinned, so that a list holds about the rows that can still be among the k best. Rows the
        // bound cannot tell apart stay (ties within it, infinite bounds): when more than half of
        // `cap` are left, they are scored in f32 now and leave too, so that a list never holds more
        // than `cap` rows and a block's.
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// The longest kept-row list met between blocks in any test, in thousandths of what `scan_run`
    /// lets a list hold (`cap` and a block's rows): at most 1,000.
    pub(crate) static LONGEST: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn the_pre_scan_runs_where_it_was_measured_faster() {
        use Kind::{Bf16, Int8};
        // (kind, k, rows a worker, queries): the measured cases in `pays`'s note, and the edges;
        // int8 against the f32 scan here, against bf16 below.
        for (kind, k, rows, nq, want) in [
            (Bf16, 10, 150_000, 2000, true),
            (Bf16, 1000, 150_000, 2000, true),
            (Bf16, 3000, 150_000, 2000, false),
            (Bf16, 10, 14_303, 2000, true),
            (Bf16, 10, 14_303, 1, true),
            (Bf16, 100, 14_303, 2000, true),
            (Bf16, 200, 14_303, 2000, false),
            (Bf16, 1000, 14_303, 2000, false),
            (Bf16, 0, 150_000, 2000, false),
            (Bf16, 10, 10, 2000, false),
            (Bf16, 1001, 100_000_000, 2000, false),
            (Int8, 10, 14_303, 2000, true),
            (Int8, 20, 14_303, 2000, true),
            (Int8, 70, 14_303, 2000, false),
            (Int8, 100, 14_303, 2000, false),
            (Int8, 100, 150_000, 2000, true),
            (Int8, 200, 150_000, 2000, false),
            (Int8, 1000, 150_000, 2000, false),
            (Int8, 10, 14_303, 64, true),
            (Int8, 10, 14_303, 48, false),
            (Int8, 10, 14_303, 1, false),
            (Int8, 0, 150_000, 2000, false),
        ] {
            assert_eq!(
                pays(kind, k, rows, nq, false),
                want,
                "{kind:?}, k {k}, {rows} rows a worker, {nq} queries"
            );
            if kind == Bf16 {
                assert_eq!(pays(kind, k, rows, nq, true), want, "bf16 does not ask");
            }
        }
        for (k, rows, nq, want) in [
            (10, 14_303, 2000, true),
            (20, 14_303, 2000, true),
            (30, 14_303, 2000, false),
            (40, 14_303, 2000, false),
            (10, 150_000, 2000, true),
            (50, 150_000, 2000, true),
            (100, 150_000, 2000, false),
            (10, 14_303, 256, true),
            (10, 14_303, 128, false),
            (10, 14_303, 64, false),
            (0, 150_000, 2000, false),
        ] {
            assert_eq!(
                pays(Int8, k, rows, nq, true),
                want,
                "int8 beside bf16, k {k}, {rows} rows a worker, {nq} queries"
            );
        }
    }
}
