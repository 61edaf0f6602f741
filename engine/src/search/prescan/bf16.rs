//! The pre-scan on CPUs with AVX512-BF16 (the shared scheme: the parent module's note).
//!
//! `vdpbf16ps` takes twice the products a cycle of an f32 FMA. A pre-scan score `s'` (query and row
//! rounded to bf16, `q = bq + rq` and `x = bx + rx`, products summed in f32) is within
//! `e = e1 |x| + e2 |rx| + abs` of the f32 score `s`: `q.x - bq.bx = q.rx + rq.bx`, at most
//! `|q| |rx| + |rq| |bx|`, and `|bx| <= (1 + u) |x|` with `u = 2^-8`; each sum (the pre-scan's, and
//! exact search's chain of FMAs) is within `gamma_n` of its exact value, `gamma_n = n 2^-24 / (1 - n
//! 2^-24)` over its `n` roundings, and `sum |q_i x_i| <= |q| |x|`, `|bq| |bx| <= (1 + u)^2 |q| |x|`;
//! results that `vdpbf16ps` flushes to zero add at most `2^-126` an operation. So
//! `e1 = gamma_n (2 + 2u + u^2) |q| + (1 + u) |rq|` and `e2 = |q|`, each with room for the rounding
//! of the bound's own arithmetic. The residuals' norms are about 0.42 u of their vectors' (MiniLM-shaped
//! vectors), so `e` is about 2.4 times narrower than the `(2u + u^2) |q| |x|` that bounds each
//! product's rounding alone. Three cases fall outside it and get an infinite bound (always kept, so
//! always scored in f32): a query or row with a subnormal value (`vdpbf16ps` reads it as zero, losing
//! a product the bound does not cover), a bound that is not a number (`0 x inf`), and one of `2^100`
//! or more (where the f32 sums might overflow, which the f32 scoring then reports as exact search
//! does).

use super::{bound_abs, gamma, norm_of_up, sum_sq_norm_up, up, Codec, Norms, BIG};
use crate::simd::{TILE_Q, TILE_R};

// The tile's broadcasts below are written for six queries a panel.
const _: () = assert!(TILE_Q == 6);

/// The bf16 pre-scan's packed queries and their factors.
pub(super) struct Bf16 {
    dim: usize,
    queries: Vec<u16>,
    err: Vec<[f32; 2]>,
    abs: f32,
}

impl Bf16 {
    /// The queries (row-major, width `dim`) packed; `None` where a query's bound cannot tell rows
    /// apart (a subnormal value, a norm past 2^100, or a zero query).
    pub(super) fn new(queries: &[f32], dim: usize) -> Option<Self> {
        let err: Vec<[f32; 2]> = queries.chunks_exact(dim).map(query_factors).collect();
        err.iter().all(|&e| super::usable(e)).then(|| Bf16 {
            dim,
            queries: pack_queries(queries, err.len(), dim),
            err,
            abs: bound_abs(dim),
        })
    }
}

/// A worker's packed rows: `data[at..]`, each panel's norms, and the packing's scratch space.
#[derive(Default)]
pub(super) struct Rows {
    data: Vec<u16>,
    at: usize,
    norms: Vec<Norms>,
    tmp: Vec<u32>,
}

impl Codec for Bf16 {
    type Rows = Rows;

    fn pack(&self, rows: &[f32], n: usize, buf: &mut Rows) -> bool {
        buf.at = pack_rows(
            rows,
            n,
            self.dim,
            &mut buf.data,
            &mut buf.norms,
            &mut buf.tmp,
        );
        // Values that are not finite give scores that are not (`tile` reports them).
        true
    }

    /// The panel's index and its queries' factors (zeros past the last query).
    type Panel = (usize, [[f32; 2]; TILE_Q]);

    fn panel(&self, qp: usize) -> Self::Panel {
        let mut e = [[0f32; 2]; TILE_Q];
        for (i, e) in e.iter_mut().enumerate() {
            *e = self.err.get(qp * TILE_Q + i).copied().unwrap_or_default();
        }
        (qp, e)
    }

    #[inline]
    fn tile(
        &self,
        &(qp, ref e): &Self::Panel,
        buf: &Rows,
        jp: usize,
        thr: &[f32; TILE_Q],
        out: &mut [f32; TILE_Q * TILE_R],
    ) -> Option<[u16; TILE_Q]> {
        let kp = self.dim.div_ceil(2);
        let panel = &self.queries[qp * kp * 2 * TILE_Q..][..kp * 2 * TILE_Q];
        let rows = &buf.data[buf.at + jp * kp * 2 * TILE_R..][..kp * 2 * TILE_R];
        // Safety: avx512f and avx512bf16 (checked by `runs`, which `kinds` asks), and the slices hold a whole panel each.
        unsafe { tile(kp, panel, rows, &buf.norms[jp], e, self.abs, thr, out) }
    }

    fn norms(buf: &Rows, jp: usize) -> &Norms {
        &buf.norms[jp]
    }

    fn factors(&self) -> &[[f32; 2]] {
        &self.err
    }

    fn abs(&self) -> f32 {
        self.abs
    }
}

/// A query's factors `[e1, e2]` of the bound `e1 |x| + e2 |rx| + abs` (module note): from its norm
/// and its residual's, in f64, each 1% more for the f32 arithmetic of `e1 |x| + e2 |rx|` (`s' +- e`
/// needs none: rounding is monotone, and `s` is an f32), and rounded up. Infinite for a query with a
/// subnormal value (its norm is); a residual's subnormal values are only small numbers (a normal
/// value rounds to a normal bf16, which `vdpbf16ps` reads as it is), so its norm has no such rule.
fn query_factors(q: &[f32]) -> [f32; 2] {
    let u = 2f64.powi(-8);
    let gamma = gamma(q.len());
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
        // Safety: avx512f and avx512bf16 (checked by `runs`, which `kinds` asks); the lengths are asserted there.
        unsafe { pack_panel(src, dim, stride, tmp, panel, &mut norms[p]) };
    }
    at
}

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
    unreachable!("the pre-scan runs only on x86_64 (`kinds`)")
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
    unreachable!("the pre-scan runs only on x86_64 (`kinds`)")
}

#[cfg(test)]
mod tests {
    use super::super::bound;
    use super::*;
    use crate::simd::ROWS;

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
        if !crate::search::test_support::has_prescan_of(super::super::Kind::Bf16) {
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
        if !crate::search::test_support::has_prescan_of(super::super::Kind::Bf16) {
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
                    // Safety: `has_prescan` above; whole panels.
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
