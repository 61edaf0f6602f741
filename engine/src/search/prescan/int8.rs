//! The pre-scan in 8-bit integers, on AVX2 CPUs and on AVX-512 CPUs with VNNI (the shared scheme:
//! the parent module's note). The codes, the integer sums and the f32 arithmetic after them are the
//! same on both; only the products' instructions differ ([`tile`], [`tile_vnni`]).
//!
//! `vpmaddubsw` multiplies 32 pairs of bytes an instruction, an unsigned one by a signed one, and
//! adds neighbouring products into 16-bit lanes. A row `x` is coded `cx = round(x / sx)` in [-63,
//! 63], `sx = max |x_i| / 63`, and stored as `cx + 64` (the unsigned side, 1 to 127); a query `q` as
//! `cq = round(q / sq)` in [-63, 63], `sq = max |q_i| / 63` (the signed side). Two steps' 16-bit sums
//! stay within 16 bits (2 x 2 x 127 x 63 < 2^15), so they are added before `vpmaddwd` widens them to
//! 32 bits: five instructions take the products of 64 pairs, where an f32 FMA takes 8, and the
//! multiplies (`vpmaddubsw`, `vpmaddwd`), which share the FMA's ports, are three. The tile's integer
//! sum is exact; less `64 sum cq` it is `I = cq.cx`, and the pre-scan score is `s' = (f32(I) sx) sq`,
//! two f32 roundings of `bq.bx` (`bq = sq cq`, `bx = sx cx`; `f32(I)` is exact, `|I| <= 4096 x 63 x
//! 63 < 2^24`, and the tile would round it once more were it not). (Rows coded in [-127, 127], with one
//! `vpmaddwd` a step, gave a bound 1.3 times narrower and a pre-scan 12% slower: pool, k 10.)
//!
//! With `rq = q - bq` and `rx = x - bx`, `q.x - bq.bx = bq.rx + rq.x`, at most `|bq| |rx| + |rq| |x|`,
//! and `|bq| <= |q| + |rq|`; `s'` is within `4 u |bq| |bx|` of `bq.bx` (`u = 2^-24`; at most three
//! roundings, and room), `|bx| <= |x| + |rx|`; exact search's chain of FMAs is within `gamma_n |q|
//! |x|` of `q.x`; products rounded below `2^-126` add at most that each. So `e1 = |rq| + gamma_n |q| + 4 u (|q| +
//! |rq|)`, `e2 = (1 + 4 u)(|q| + |rq|)`, each with 1% room for the bound's own f32 arithmetic; a
//! row's `|x|` and `|rx|` are computed as it is packed (in f64, rounded up, the residual's values
//! `x_i - sx cx_i` each within a relative `2^-53` of their own, covered by that room). No value is
//! read as anything but itself, so subnormal values need no rule of their own; a row with a value
//! that is not finite sends the batch to the f32 scan (which reports it).

use super::{bound_abs, gamma, norm_of_up, sum_sq_norm_up, up, Codec, Norms, BIG};
use crate::simd::{has_avx512_vnni, TILE_Q, TILE_R};

/// Bytes of a step: four values of a query (one 32-bit lane, broadcast) or of a row.
const STEP: usize = 4;

/// The int8 pre-scan's packed queries, their scales, sums and factors.
pub(super) struct Int8 {
    dim: usize,
    /// Panels of [`TILE_Q`] queries: `panel[(k / 4) * 4 TILE_Q + 4 i + k % 4]`, codes in [-63, 63].
    queries: Vec<i8>,
    /// Each query's `sq`, and `64 sum cq` (what the rows' offset adds to the integer sum).
    scale: Vec<f32>,
    offset: Vec<i32>,
    err: Vec<[f32; 2]>,
    abs: f32,
    /// Whether the tiles run on AVX-512 VNNI ([`tile_vnni`]) rather than AVX2 ([`tile`]).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    vnni: bool,
}

/// Steps of [`STEP`] values in a vector of width `dim`, an even number (the tile takes two at a time).
fn steps(dim: usize) -> usize {
    dim.div_ceil(2 * STEP) * 2
}

impl Int8 {
    /// The queries (row-major, width `dim`) coded and packed; `None` where a query's bound cannot tell
    /// rows apart (a zero query, one whose largest value is too small for a normal scale, or a norm
    /// past 2^100).
    pub(super) fn new(queries: &[f32], dim: usize) -> Option<Self> {
        let nq = queries.len() / dim;
        let ks = steps(dim);
        let panel_len = ks * STEP * TILE_Q;
        let mut packed = vec![0i8; nq.div_ceil(TILE_Q) * panel_len];
        let (mut scale, mut offset, mut err) = (Vec::new(), Vec::new(), Vec::new());
        let gamma = gamma(dim);
        let u4 = 4.0 * 2f64.powi(-24);
        for (q, src) in queries.chunks_exact(dim).enumerate() {
            let (sq, codes) = code(src, 63);
            // Values all too small for a normal scale: every code 0, every score 0.
            if sq == 0.0 {
                return None;
            }
            let panel = &mut packed[(q / TILE_Q) * panel_len..][..panel_len];
            let mut sum = 0i32;
            let mut residual = 0f64;
            for (k, (&v, &c)) in src.iter().zip(&codes).enumerate() {
                panel[(k / STEP) * STEP * TILE_Q + STEP * (q % TILE_Q) + k % STEP] = c as i8;
                sum += c;
                let r = v as f64 - sq as f64 * c as f64;
                residual += r * r;
            }
            let (nq, nr) = (norm_of_up(src) as f64, sum_sq_norm_up(residual, dim) as f64);
            let e = [
                up((nr + gamma * nq + u4 * (nq + nr)) * 1.01),
                up((1.0 + u4) * (nq + nr) * 1.01),
            ];
            if !super::usable(e) {
                return None;
            }
            scale.push(sq);
            offset.push(64 * sum);
            err.push(e);
        }
        Some(Int8 {
            dim,
            queries: packed,
            scale,
            offset,
            err,
            abs: bound_abs(dim),
            vnni: has_avx512_vnni(),
        })
    }
}

/// `v`'s codes `round(v_i / s)` in `[-max, max]` and the scale `s = max |v_i| / max` (0, and every
/// code 0, where that is not a positive normal number): any codes will do for the bound, which
/// takes the residual `v - s c` as it is.
fn code(v: &[f32], max: i32) -> (f32, Vec<i32>) {
    let top = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let s = top / max as f32;
    if !s.is_normal() {
        return (0.0, vec![0; v.len()]);
    }
    let inv = 1.0 / s;
    // 1.5 x 2^23 added and taken away rounds to an integer, ties to even, as `vcvtps2dq` does (for
    // values below 2^22, as these are), without the library call `round_ties_even` makes here.
    let magic = 12_582_912.0f32;
    (
        s,
        v.iter()
            .map(|&x| ((((x * inv) + magic) - magic) as i32).clamp(-max, max))
            .collect(),
    )
}

/// A worker's packed rows: panels of [`TILE_R`] rows, `data[p * panel + (k / 4) * 4 TILE_R + 4 j +
/// k % 4] = cx + 64` from `data[at..]` (on a 64-byte boundary), and each panel's scales and norms.
#[derive(Default)]
pub(super) struct Rows {
    data: Vec<u8>,
    at: usize,
    scale: Vec<[f32; TILE_R]>,
    norms: Vec<Norms>,
    /// A panel's codes row by row, on their way to the panel's layout.
    tmp: Vec<u32>,
}

impl Codec for Int8 {
    type Rows = Rows;

    fn pack(&self, rows: &[f32], n: usize, buf: &mut Rows) -> bool {
        let dim = self.dim;
        let ks = steps(dim);
        let panel_len = ks * STEP * TILE_R;
        let panels = n.div_ceil(TILE_R);
        let len = panels * panel_len + 64;
        if buf.data.len() != len {
            buf.data.clear();
            buf.data.resize(len, 64);
        }
        buf.at = buf.data.as_ptr().align_offset(64).min(63);
        buf.scale.clear();
        buf.scale.resize(panels, [0.0; TILE_R]);
        buf.norms.clear();
        buf.norms.resize(panels, [[0.0; TILE_R]; 2]);
        buf.tmp.clear();
        buf.tmp.resize(TILE_R * ks, 0x4040_4040);
        for (p, src) in rows[..n * dim].chunks(TILE_R * dim).enumerate() {
            let live = src.len() / dim;
            for (j, row) in src.chunks_exact(dim).enumerate() {
                let words = &mut buf.tmp[j * ks..][..ks];
                // Safety: AVX2 and FMA (checked by `runs`, which `kinds` asks).
                let packed = unsafe { pack_row(row, words) };
                let Some((s, norm, rnorm)) = packed else {
                    return false;
                };
                buf.scale[p][j] = s;
                buf.norms[p][0][j] = norm;
                buf.norms[p][1][j] = rnorm;
            }
            // Rows past the end: codes of 0 (every byte 64), scale and norms 0.
            for j in live..TILE_R {
                buf.tmp[j * ks..][..ks].fill(0x4040_4040);
            }
            let panel = &mut buf.data[buf.at + p * panel_len..][..panel_len];
            for (k, step) in panel.chunks_exact_mut(STEP * TILE_R).enumerate() {
                for (j, word) in step.chunks_exact_mut(STEP).enumerate() {
                    word.copy_from_slice(&buf.tmp[j * ks + k].to_le_bytes());
                }
            }
        }
        true
    }

    type Panel = Panel;

    fn panel(&self, qp: usize) -> Panel {
        let mut q = Panel {
            at: qp,
            ..Panel::default()
        };
        for i in 0..TILE_Q {
            if let Some(&e) = self.err.get(qp * TILE_Q + i) {
                q.err[i] = e;
                q.scale[i] = self.scale[qp * TILE_Q + i];
                q.offset[i] = self.offset[qp * TILE_Q + i];
            }
        }
        q
    }

    #[inline]
    fn tile(
        &self,
        q: &Panel,
        buf: &Rows,
        jp: usize,
        thr: &[f32; TILE_Q],
        out: &mut [f32; TILE_Q * TILE_R],
    ) -> Option<[u16; TILE_Q]> {
        let ks = steps(self.dim);
        let panel = &self.queries[q.at * ks * STEP * TILE_Q..][..ks * STEP * TILE_Q];
        let rows = &buf.data[buf.at + jp * ks * STEP * TILE_R..][..ks * STEP * TILE_R];
        let rows_of = (&buf.scale[jp], &buf.norms[jp]);
        // Safety: AVX-512 VNNI where `vnni` (checked by `has_avx512_vnni`), else AVX2 and FMA (checked by
        // `runs`, which `kinds` asks); the slices hold a whole panel each.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            if self.vnni {
                return tile_vnni(ks, panel, rows, rows_of, q, self.abs, thr, out);
            }
            tile(ks, panel, rows, rows_of, q, self.abs, thr, out)
        }
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

/// A query panel: its index, and its queries' scales, offsets and factors (zeros for the queries
/// past the end).
#[derive(Default)]
pub(super) struct Panel {
    at: usize,
    scale: [f32; TILE_Q],
    offset: [i32; TILE_Q],
    err: [[f32; 2]; TILE_Q],
}

/// One row coded into `words` (`words[k]` holds values `4k..4k+4`, each `cx + 64`, the words past
/// the row padded with 64): its scale, its norm and its residual's, rounded up; `None` for a row with a
/// value that is not finite.
///
/// Safety: the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_row(row: &[f32], words: &mut [u32]) -> Option<(f32, f32, f32)> {
    use std::arch::x86_64::*;
    let dim = row.len();
    assert!(words.len() * STEP >= dim);
    let mask_of = |c: usize| -> __m256i {
        let left = (dim - c).min(8) as i32;
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(left),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    };
    let src = row.as_ptr();
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let exp = _mm256_set1_epi32(0x7f80_0000);
    let (mut top, mut bad) = (_mm256_setzero_ps(), _mm256_setzero_si256());
    for c in (0..dim).step_by(8) {
        let v = _mm256_maskload_ps(src.add(c), mask_of(c));
        top = _mm256_max_ps(top, _mm256_and_ps(v, abs_mask));
        // An infinity or NaN: every exponent bit set.
        let e = _mm256_and_si256(_mm256_castps_si256(v), exp);
        bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(e, exp));
    }
    if _mm256_testz_si256(bad, bad) == 0 {
        return None;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), top);
    let m = lanes.iter().fold(0f32, |m, &l| m.max(l));
    let s = m / 63.0;
    let (s, inv) = if s.is_normal() {
        (s, 1.0 / s)
    } else {
        (0.0, 0.0)
    };
    let (vs, vinv) = (_mm256_set1_ps(s), _mm256_set1_ps(inv));
    let (lo, hi) = (_mm256_set1_epi32(-63), _mm256_set1_epi32(63));
    let bias = _mm256_set1_epi32(64);
    // Byte 0 of each 32-bit lane, in each 128-bit half.
    let pick = _mm256_setr_epi8(
        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1,
        -1, -1, -1, -1, -1, -1, -1, -1,
    );
    let (mut squares, mut rsquares) = ([_mm256_setzero_pd(); 2], [_mm256_setzero_pd(); 2]);
    let dst = words.as_mut_ptr() as *mut u8;
    for c in (0..dim).step_by(8) {
        let v = _mm256_maskload_ps(src.add(c), mask_of(c));
        // Rounded to nearest, ties to even (the default rounding), then clamped.
        let codes = _mm256_cvtps_epi32(_mm256_mul_ps(v, vinv));
        let codes = _mm256_min_epi32(_mm256_max_epi32(codes, lo), hi);
        // The residual v - s c: one rounding (an FMA) of a value that needs 33 bits at most.
        let r = _mm256_fnmadd_ps(vs, _mm256_cvtepi32_ps(codes), v);
        add_squares(v, &mut squares);
        add_squares(r, &mut rsquares);
        let bytes = _mm256_shuffle_epi8(_mm256_add_epi32(codes, bias), pick);
        let eight = _mm_unpacklo_epi32(
            _mm256_castsi256_si128(bytes),
            _mm256_extracti128_si256::<1>(bytes),
        );
        if c + 8 <= words.len() * STEP {
            // Lanes past the end were loaded as 0: code 0, byte 64.
            _mm_storel_epi64(dst.add(c) as *mut __m128i, eight);
        } else {
            let b: [u8; 16] = std::mem::transmute(eight);
            std::ptr::copy_nonoverlapping(b.as_ptr(), dst.add(c), words.len() * STEP - c);
        }
    }
    let sum = |[a, b]: [__m256d; 2]| {
        let t = _mm256_add_pd(a, b);
        let mut l = [0f64; 4];
        _mm256_storeu_pd(l.as_mut_ptr(), t);
        (l[0] + l[1]) + (l[2] + l[3])
    };
    // The residual's values are each within 2^-24 of their own (the FMA's rounding): 2^-20 more.
    let rnorm = up(sum_sq_norm_up(sum(rsquares), dim) as f64 * (1.0 + 2f64.powi(-20)));
    Some((s, sum_sq_norm_up(sum(squares), dim), rnorm))
}

/// Adds the squares of `v`'s 8 values, in f64 (exact), to the two 4-lane sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn add_squares(v: std::arch::x86_64::__m256, sums: &mut [std::arch::x86_64::__m256d; 2]) {
    use std::arch::x86_64::*;
    let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
    let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v));
    sums[0] = _mm256_fmadd_pd(lo, lo, sums[0]);
    sums[1] = _mm256_fmadd_pd(hi, hi, sums[1]);
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_row(_: &[f32], _: &mut [u32]) -> Option<(f32, f32, f32)> {
    unreachable!("the pre-scan runs only on x86_64 (`kinds`)")
}

/// `out[i * TILE_R + j] = (f32(I) sx_j) sq_i` for query i of the panel (four codes broadcast a
/// step) and row j (four codes a step), `I` the exact integer sum less the query's offset; for each
/// query the bits of the rows whose upper bound `s' + (e_i norms_j + abs)` reaches `thr[i]`; `None`
/// when any score is not finite.
///
/// Safety: the CPU has AVX2 and FMA; `a` holds `ks * 4 * TILE_Q` codes, `b` `ks * 4 * TILE_R`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    ks: usize,
    a: &[i8],
    b: &[u8],
    (scale, norms): (&[f32; TILE_R], &Norms),
    q: &Panel,
    abs: f32,
    thr: &[f32; TILE_Q],
    out: &mut [f32; TILE_Q * TILE_R],
) -> Option<[u16; TILE_Q]> {
    use std::arch::x86_64::*;
    assert!(a.len() >= ks * STEP * TILE_Q && b.len() >= ks * STEP * TILE_R);
    let ones = _mm256_set1_epi16(1);
    // Twelve accumulators (6 queries x 2 halves of 8 rows).
    let mut c = [[_mm256_setzero_si256(); 2]; TILE_Q];
    let (mut pa, mut pb) = (a.as_ptr(), b.as_ptr());
    for _ in 0..ks / 2 {
        let r0 = _mm256_load_si256(pb as *const __m256i);
        let r1 = _mm256_load_si256(pb.add(32) as *const __m256i);
        let r2 = _mm256_load_si256(pb.add(64) as *const __m256i);
        let r3 = _mm256_load_si256(pb.add(96) as *const __m256i);
        for (i, ci) in c.iter_mut().enumerate() {
            let x = _mm256_set1_epi32((pa.add(STEP * i) as *const i32).read_unaligned());
            let y = _mm256_set1_epi32((pa.add(STEP * (TILE_Q + i)) as *const i32).read_unaligned());
            let p0 = _mm256_add_epi16(_mm256_maddubs_epi16(r0, x), _mm256_maddubs_epi16(r2, y));
            let p1 = _mm256_add_epi16(_mm256_maddubs_epi16(r1, x), _mm256_maddubs_epi16(r3, y));
            ci[0] = _mm256_add_epi32(ci[0], _mm256_madd_epi16(p0, ones));
            ci[1] = _mm256_add_epi32(ci[1], _mm256_madd_epi16(p1, ones));
        }
        pa = pa.add(2 * STEP * TILE_Q);
        pb = pb.add(2 * STEP * TILE_R);
    }
    let zero = _mm256_setzero_ps();
    let mut nf = zero;
    let sx = [
        _mm256_loadu_ps(scale.as_ptr()),
        _mm256_loadu_ps(scale.as_ptr().add(8)),
    ];
    let nx = [
        _mm256_loadu_ps(norms[0].as_ptr()),
        _mm256_loadu_ps(norms[0].as_ptr().add(8)),
    ];
    let nr = [
        _mm256_loadu_ps(norms[1].as_ptr()),
        _mm256_loadu_ps(norms[1].as_ptr().add(8)),
    ];
    let abs = _mm256_set1_ps(abs);
    let (big, inf) = (_mm256_set1_ps(BIG), _mm256_set1_ps(f32::INFINITY));
    let mut hits = [0u16; TILE_Q];
    for (i, ci) in c.iter().enumerate() {
        let (sq, off) = (_mm256_set1_ps(q.scale[i]), _mm256_set1_epi32(q.offset[i]));
        let (e1, e2) = (_mm256_set1_ps(q.err[i][0]), _mm256_set1_ps(q.err[i][1]));
        let t = _mm256_set1_ps(thr[i]);
        let mut m = 0u16;
        for h in 0..2 {
            let s = _mm256_cvtepi32_ps(_mm256_sub_epi32(ci[h], off));
            let s = _mm256_mul_ps(_mm256_mul_ps(s, sx[h]), sq);
            _mm256_storeu_ps(out.as_mut_ptr().add(i * TILE_R + 8 * h), s);
            nf = _mm256_add_ps(nf, _mm256_mul_ps(s, zero));
            // `bound`'s operations: e1 |x| + e2 |rx|, infinite unless below BIG, + abs; then + s.
            let p = _mm256_add_ps(_mm256_mul_ps(e1, nx[h]), _mm256_mul_ps(e2, nr[h]));
            let p = _mm256_blendv_ps(inf, p, _mm256_cmp_ps::<_CMP_LT_OQ>(p, big));
            let up = _mm256_add_ps(s, _mm256_add_ps(p, abs));
            m |= (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(up, t)) as u16) << (8 * h);
        }
        hits[i] = m;
    }
    (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NEQ_UQ>(nf, zero)) == 0).then_some(hits)
}

/// [`tile`] on AVX-512 VNNI: `vpdpbusd` adds each lane's four u8 x i8 products straight into 32
/// bits, so one instruction takes the products of a step (four values) for all 16 rows of the panel,
/// against a query's codes broadcast; the integer sums, and then every f32 operation, lane by lane,
/// are [`tile`]'s, so the scores and the rows kept are the same bits.
///
/// Safety: the CPU has AVX-512 F, BW and VNNI; `a` holds `ks * 4 * TILE_Q` codes, `b` `ks * 4 *
/// TILE_R`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_vnni(
    ks: usize,
    a: &[i8],
    b: &[u8],
    (scale, norms): (&[f32; TILE_R], &Norms),
    q: &Panel,
    abs: f32,
    thr: &[f32; TILE_Q],
    out: &mut [f32; TILE_Q * TILE_R],
) -> Option<[u16; TILE_Q]> {
    use std::arch::x86_64::*;
    const _: () = assert!(TILE_R == 16);
    assert!(a.len() >= ks * STEP * TILE_Q && b.len() >= ks * STEP * TILE_R);
    // Twelve accumulators: 6 queries x two steps, added at the end (two chains each, so that each
    // `vpdpbusd` waits on one issued twelve before it, not six).
    let mut c = [[_mm512_setzero_si512(); 2]; TILE_Q];
    let (mut pa, mut pb) = (a.as_ptr(), b.as_ptr());
    for _ in 0..ks / 2 {
        let r = [
            _mm512_loadu_si512(pb as *const __m512i),
            _mm512_loadu_si512(pb.add(64) as *const __m512i),
        ];
        for (h, r) in r.iter().enumerate() {
            for (i, ci) in c.iter_mut().enumerate() {
                let x = _mm512_set1_epi32(
                    (pa.add(STEP * (h * TILE_Q + i)) as *const i32).read_unaligned(),
                );
                ci[h] = _mm512_dpbusd_epi32(ci[h], *r, x);
            }
        }
        pa = pa.add(2 * STEP * TILE_Q);
        pb = pb.add(2 * STEP * TILE_R);
    }
    let zero = _mm512_setzero_ps();
    let mut nf = zero;
    let sx = _mm512_loadu_ps(scale.as_ptr());
    let nx = _mm512_loadu_ps(norms[0].as_ptr());
    let nr = _mm512_loadu_ps(norms[1].as_ptr());
    let abs = _mm512_set1_ps(abs);
    let (big, inf) = (_mm512_set1_ps(BIG), _mm512_set1_ps(f32::INFINITY));
    let mut hits = [0u16; TILE_Q];
    for (i, ci) in c.iter().enumerate() {
        let (sq, off) = (_mm512_set1_ps(q.scale[i]), _mm512_set1_epi32(q.offset[i]));
        let (e1, e2) = (_mm512_set1_ps(q.err[i][0]), _mm512_set1_ps(q.err[i][1]));
        let sum = _mm512_add_epi32(ci[0], ci[1]);
        let s = _mm512_cvtepi32_ps(_mm512_sub_epi32(sum, off));
        let s = _mm512_mul_ps(_mm512_mul_ps(s, sx), sq);
        _mm512_storeu_ps(out.as_mut_ptr().add(i * TILE_R), s);
        nf = _mm512_add_ps(nf, _mm512_mul_ps(s, zero));
        // `bound`'s operations: e1 |x| + e2 |rx|, infinite unless below BIG, + abs; then + s.
        let p = _mm512_add_ps(_mm512_mul_ps(e1, nx), _mm512_mul_ps(e2, nr));
        let p = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(p, big), inf, p);
        let up = _mm512_add_ps(s, _mm512_add_ps(p, abs));
        hits[i] = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(up, _mm512_set1_ps(thr[i]));
    }
    (_mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(nf, zero) == 0).then_some(hits)
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    _: usize,
    _: &[i8],
    _: &[u8],
    _: (&[f32; TILE_R], &Norms),
    _: &Panel,
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

    fn has_int8() -> bool {
        crate::search::test_support::has_prescan_of(super::super::Kind::Int8)
    }

    /// The AVX-512 VNNI tile against the AVX2 one, on a CPU with both: the same scores, bit for bit,
    /// and the same rows kept, over widths with odd steps, extreme codes, thresholds below, at and
    /// above the scores, and values so large that the scores overflow (both tiles then say `None`).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_vnni_tile_gives_the_avx2_tiles_bits() {
        if !has_int8() || !has_avx512_vnni() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI (the AVX2 tile alone runs here)");
            return;
        }
        let mut next = crate::search::test_support::lcg(29);
        let mut buf = Rows::default();
        let mut value = |scale: f32| ((next() % 20001) as f32 / 10000.0 - 1.0) * scale;
        for dim in [1, 7, 8, 9, 63, 64, 100, 384, 769] {
            for scale in [1.0, 1e-20, 1e15, 1e20] {
                let queries: Vec<f32> = (0..TILE_Q * dim).map(|_| value(scale)).collect();
                let Some(codec) = Int8::new(&queries, dim) else {
                    continue;
                };
                let mut rows: Vec<f32> = (0..TILE_R * dim).map(|_| value(scale)).collect();
                // A row at the largest codes, one of a single value, and a zero row.
                rows[..dim].fill(scale);
                rows[dim] = -scale;
                rows[2 * dim..3 * dim].fill(0.0);
                assert!(codec.pack(&rows, TILE_R, &mut buf));
                let ks = steps(dim);
                let q = codec.panel(0);
                let a = &codec.queries[..ks * STEP * TILE_Q];
                let b = &buf.data[buf.at..][..ks * STEP * TILE_R];
                let rows_of = (&buf.scale[0], &buf.norms[0]);
                let mut base = [0f32; TILE_Q * TILE_R];
                // Thresholds below, at and above a score of each query.
                let none = [f32::INFINITY; TILE_Q];
                unsafe { tile(ks, a, b, rows_of, &q, codec.abs, &none, &mut base) };
                for shift in [-1.0f32, 0.0, 1.0] {
                    let thr: [f32; TILE_Q] = std::array::from_fn(|i| {
                        base[i * TILE_R + i % TILE_R] + shift * scale * scale
                    });
                    let (mut want, mut got) = ([0f32; TILE_Q * TILE_R], [1f32; TILE_Q * TILE_R]);
                    let hits_avx2 =
                        unsafe { tile(ks, a, b, rows_of, &q, codec.abs, &thr, &mut want) };
                    let hits_vnni =
                        unsafe { tile_vnni(ks, a, b, rows_of, &q, codec.abs, &thr, &mut got) };
                    assert_eq!(
                        hits_vnni, hits_avx2,
                        "dim {dim} scale {scale} shift {shift}"
                    );
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "dim {dim} scale {scale}");
                }
            }
        }
    }

    /// The packed rows, one value at a time: each code (`round(x / s)` as [`code`] gives it, with
    /// its offset) where the layout puts it, each scale, and the norms (f64, from the exact
    /// residuals) within a few units of the last place of the packing's.
    #[test]
    fn packed_rows_are_the_scalar_codes() {
        if !has_int8() {
            return;
        }
        let mut next = crate::search::test_support::lcg(13);
        let mut buf = Rows::default();
        for dim in [1, 3, 4, 7, 8, 9, 15, 16, 17, 33, 100, 384, 385] {
            let codec = Int8::new(&vec![1.0; dim], dim).expect("a usable query");
            for n in [1, 5, 16, 17, 40, 128] {
                let mut rows: Vec<f32> = (0..n * dim)
                    .map(|_| (next() % 20001) as f32 / 10000.0 - 1.0)
                    .collect();
                // A zero row, a row of subnormal values and one of huge ones.
                rows[..dim].fill(0.0);
                if n > 2 {
                    rows[dim..2 * dim].fill(1e-40);
                    rows[2 * dim..3 * dim].fill(3e38);
                }
                assert!(codec.pack(&rows, n, &mut buf));
                let ks = steps(dim);
                let panel_len = ks * STEP * TILE_R;
                let data = &buf.data[buf.at..];
                assert_eq!(data.as_ptr() as usize % 64, 0, "dim {dim} n {n}: aligned");
                for (r, row) in rows.chunks_exact(dim).enumerate() {
                    let (p, j) = (r / TILE_R, r % TILE_R);
                    let (s, codes) = code(row, 63);
                    assert_eq!(buf.scale[p][j].to_bits(), s.to_bits(), "dim {dim} row {r}");
                    let mut squares = (0f64, 0f64);
                    for k in 0..ks * STEP {
                        let c = codes.get(k).copied().unwrap_or(0);
                        let got =
                            data[p * panel_len + (k / STEP) * STEP * TILE_R + STEP * j + k % STEP];
                        assert_eq!(got as i32 - 64, c, "dim {dim} row {r} value {k}");
                        if k < dim {
                            let x = row[k] as f64;
                            let rx = x - s as f64 * c as f64;
                            squares.0 += x * x;
                            squares.1 += rx * rx;
                        }
                    }
                    for (which, (want, got)) in [
                        (squares.0.sqrt(), buf.norms[p][0][j]),
                        (squares.1.sqrt(), buf.norms[p][1][j]),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        // (a norm past f32's range rounds up to infinity)
                        let top = if want > f32::MAX as f64 {
                            f64::INFINITY
                        } else {
                            want * (1.0 + 1e-5) + 1e-44
                        };
                        assert!(
                            got as f64 >= want && got as f64 <= top,
                            "dim {dim} row {r}: norm {which} {got} against {want}"
                        );
                    }
                }
                // The panel's rows past the end: code 0, scale 0, norms 0.
                for r in n..n.div_ceil(TILE_R) * TILE_R {
                    let (p, j) = (r / TILE_R, r % TILE_R);
                    assert_eq!(buf.scale[p][j], 0.0);
                    assert_eq!(buf.norms[p][0][j], 0.0);
                    for k in 0..ks * STEP {
                        let got =
                            data[p * panel_len + (k / STEP) * STEP * TILE_R + STEP * j + k % STEP];
                        assert_eq!(got, 64, "dim {dim}: dead row {r} value {k}");
                    }
                }
            }
        }
        // A row with a value that is not finite is refused (the batch goes to the f32 scan).
        let codec = Int8::new(&[1.0; 9], 9).unwrap();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut rows = vec![0.5f32; 9 * 3];
            rows[9 + 8] = bad;
            assert!(!codec.pack(&rows, 3, &mut buf), "{bad}");
        }
    }

    /// Each pre-scan score against the f32 score exact search gives the same pair, where both
    /// residuals point the way that widens the gap most (each value 0.49 of a code step past a code,
    /// with the signs of its query's): `|s - s'|` stays within the bound, and reaches eight tenths of
    /// it (so a bound a fifth too narrow fails here); and for plain random vectors, within it.
    #[test]
    fn the_int8_bound_holds_where_the_rounding_is_widest() {
        if !has_int8() {
            return;
        }
        let mut next = crate::search::test_support::lcg(17);
        let rows_fn = crate::simd::score_rows_kernel();
        let mut widest = 0f32;
        for dim in [2, 7, 64, 384, 1000] {
            // Aligned families: a first value of 63 steps (the scale), then values (c + 0.49) steps
            // for random codes c, signs shared by a query and its rows; then random vectors.
            let mut rows = Vec::new();
            let mut queries = Vec::new();
            let families = 4;
            for f in 0..families {
                let seed = next();
                let scale = 2f32.powi((seed % 21) as i32 - 10);
                let aligned = |r: u32, i: usize| -> f32 {
                    let sign = if (seed >> (i % 16)) & 1 == 1 {
                        -1.0
                    } else {
                        1.0
                    };
                    let steps = if i == 0 {
                        63.0
                    } else {
                        (r % 40 + 10) as f32 + 0.49
                    };
                    sign * scale * steps / 63.0
                };
                let value = |r: u32, i: usize| -> f32 {
                    if f < 3 {
                        aligned(r, i)
                    } else {
                        (r % 20001) as f32 / 10000.0 - 1.0
                    }
                };
                for i in 0..dim {
                    queries.push(value(next(), i));
                }
                for _ in 0..TILE_R {
                    for i in 0..dim {
                        rows.push(value(next(), i));
                    }
                }
            }
            let n = rows.len() / dim;
            let nq = queries.len() / dim;
            let codec = Int8::new(&queries, dim).expect("usable queries");
            let mut buf = Rows::default();
            assert!(codec.pack(&rows, n, &mut buf));
            for qp in 0..nq.div_ceil(TILE_Q) {
                for jp in 0..n.div_ceil(TILE_R) {
                    let mut out = [0f32; TILE_Q * TILE_R];
                    let thr = [f32::NEG_INFINITY; TILE_Q];
                    codec
                        .tile(&codec.panel(qp), &buf, jp, &thr, &mut out)
                        .expect("finite scores");
                    for i in 0..TILE_Q.min(nq - qp * TILE_Q) {
                        let q = qp * TILE_Q + i;
                        let slices: Vec<&[f32]> = (0..TILE_R)
                            .map(|j| &rows[(jp * TILE_R + j) * dim..][..dim])
                            .collect();
                        let mut exact = [0f32; ROWS];
                        rows_fn(&queries[q * dim..][..dim], &slices, &mut exact);
                        for j in 0..TILE_R {
                            let (s, sp) = (exact[j], out[i * TILE_R + j]);
                            let norms = &buf.norms[jp];
                            let b = bound(codec.err[q], norms[0][j], norms[1][j], codec.abs);
                            assert!(
                                sp - b <= s && s <= sp + b,
                                "dim {dim}: query {q} row {}: f32 {s}, pre-scan {sp}, bound {b}",
                                jp * TILE_R + j
                            );
                            if q == jp && q < 3 {
                                widest = widest.max((s - sp).abs() / b);
                            }
                        }
                    }
                }
            }
        }
        eprintln!("the widest gap: {widest} of the bound");
        assert!(
            widest > 0.8,
            "the widest gap reached only {widest} of the bound"
        );
    }
}
