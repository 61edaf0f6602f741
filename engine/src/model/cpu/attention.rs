//! One (sequence, head) of attention with AVX-512 register tiles: `ctx_i = softmax(scale q_i . K^T) V`
//! over the sequence's real tokens, a block of query rows at a time, so that a block's scores go from
//! their product through the softmax into the product with `V` while they are in L1.
//!
//! The head's values are copied into contiguous rows (at the QKV rows' stride, a head's rows fall into
//! a few cache sets, and the context reads them all for every block) and its keys transposed, 16 x 16
//! in registers; the queries are read in place, a block's few rows once. [`prefetch_head`] asks for
//! the next head's rows while one runs. The two products
//! run on register tiles of up to 24 accumulators, instead of the general GEMM, which packed both
//! operands of each product on every call. Every score and every context value is one chain of fused
//! multiply-adds, in order over the head's dimensions, then over the keys; and the softmax is
//! `elementwise::softmax_padded`'s arithmetic on 16 lanes (`softmax_rows_have_the_portable_bits`). For
//! sequences of more than 16 tokens that is what the `gemm` crate does for these shapes, so passages'
//! vectors have the bits of the general path (`cmp` of 300 passages, f32 and int8); up to 16 tokens
//! (most queries) the crate took other kernels (lane-wise partial sums over the head's dimensions, then
//! a reduction; unfused products for 2 keys), and a query's vector differs from it by rounding.

#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Query rows per block: the scores of a block are `ROWS x` the padded key count.
const ROWS: usize = 8;

/// Whether [`head`] runs for heads of `head_dim` values on this CPU: AVX-512 and whole 16-lane
/// vectors per row, up to 128 values.
pub fn supported(head_dim: usize) -> bool {
    cfg!(target_arch = "x86_64")
        && crate::simd::level() == crate::simd::Level::Avx512
        && head_dim.is_multiple_of(16)
        && (16..=128).contains(&head_dim)
}

/// Where one (sequence, head) reads and writes: `q`, `k`, `v` point at the first token's values of
/// this head, one token every `stride` values; `out` at the first token's context, one every
/// `out_stride` values.
#[derive(Clone, Copy)]
pub struct HeadIo {
    pub q: *const f32,
    pub k: *const f32,
    pub v: *const f32,
    pub stride: usize,
    pub out: *mut f32,
    pub out_stride: usize,
}

/// A task's reusable buffers: the transposed keys and a block's scores.
#[derive(Default)]
pub struct Scratch {
    kt: Vec<f32>,
    v: Vec<f32>,
    scores: Vec<f32>,
}

/// Asks for the cache lines of `len` tokens' queries, keys and values of one head (`rows`: where
/// each begins, as [`HeadIo`]'s `q`, `k` and `v`, one token every `stride` values, `head_dim` values
/// each) into the L2 cache, without waiting for them: called for the next (sequence, head) while this
/// one runs, so that its reads (a few hundred lines at the QKV rows' stride, otherwise fetched from
/// the shared cache or memory one latency after another) come from L2. A prefetch never faults, so
/// the addresses need not be valid.
pub fn prefetch_head(len: usize, head_dim: usize, rows: [*const f32; 3], stride: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let bytes = head_dim * 4;
        for j in 0..len {
            for src in rows {
                let row = src.wrapping_add(j * stride) as *const i8;
                // The row's first byte, every 64 after it, and its last (a row need not start a line).
                let mut b = 0;
                while b < bytes {
                    // Safety: a prefetch reads nothing and cannot fault.
                    unsafe { _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(b)) };
                    b += 64;
                }
                unsafe { _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(bytes - 1)) };
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (len, head_dim, rows, stride);
}

/// The attention context of `len` tokens of one head of `head_dim` values (see the module's note).
///
/// # Safety
/// [`supported`]`(head_dim)`; `io`'s pointers are valid for `len` tokens at their strides
/// (reads of `head_dim` values each; writes of `head_dim` values for `out`), and nothing else writes
/// those outputs meanwhile.
#[cfg(target_arch = "x86_64")]
pub unsafe fn head(len: usize, head_dim: usize, scale: f32, io: HeadIo, scratch: &mut Scratch) {
    if len == 0 {
        return;
    }
    let ld = len.next_multiple_of(16);
    // K^T, `head_dim x ld`, its columns past `len` zero (their scores are computed and ignored).
    scratch.kt.clear();
    scratch.kt.reserve(head_dim * ld);
    // Safety: 16 x 16 blocks of `head_dim x ld` (both multiples of 16), every one written.
    transpose_keys(len, head_dim, ld, io.k, io.stride, scratch.kt.as_mut_ptr());
    scratch.kt.set_len(head_dim * ld);
    // The values packed row after row: read in place, at the QKV rows' stride, the rows of a head
    // fall into a few cache sets and evict each other while the context runs over all of them. The
    // queries are read in place: a block reads its own 8 rows once.
    scratch.v.clear();
    scratch.v.reserve(len * head_dim);
    copy_rows(len, head_dim, io.v, io.stride, scratch.v.as_mut_ptr());
    scratch.v.set_len(len * head_dim);
    if scratch.scores.len() < ROWS * ld {
        scratch.scores.resize(ROWS * ld, 0.0);
    }
    head_avx512(len, head_dim, ld, scale, io, scratch);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn head_avx512(
    len: usize,
    head_dim: usize,
    ld: usize,
    scale: f32,
    io: HeadIo,
    scratch: &mut Scratch,
) {
    let kt = scratch.kt.as_ptr();
    let vp = scratch.v.as_ptr();
    let scores = scratch.scores.as_mut_ptr();
    let panels = ld / 16;
    for i0 in (0..len).step_by(ROWS) {
        let rows = (len - i0).min(ROWS);
        // Scores of the block: all its rows against 1 to 3 panels of 16 keys per register tile, the
        // panels split evenly (5 as 3 + 2, not 4 + 1: a tile of few accumulators waits on the FMA
        // latency).
        let q = io.q.add(i0 * io.stride);
        let groups = panels.div_ceil(3);
        let mut p0 = 0;
        for g in 0..groups {
            let p = (panels - p0).div_ceil(groups - g);
            let out = scores.add(p0 * 16);
            let kt = kt.add(p0 * 16);
            macro_rules! tiles {
                ($($p:literal: $($r:literal)*;)*) => {
                    match (p, rows) {
                        $($(($p, $r) => tile::<$r, $p>(head_dim, q, io.stride, kt, ld, out, ld),)*)*
                        _ => unreachable!(),
                    }
                };
            }
            tiles! {
                1: 1 2 3 4 5 6 7 8;
                2: 1 2 3 4 5 6 7 8;
                3: 1 2 3 4 5 6 7 8;
            }
            p0 += p;
        }
        for r in 0..rows {
            softmax_row(scores.add(r * ld), len, ld, scale);
        }
        // The block's context: `rows x head_dim`, 16 accumulators or fewer per tile.
        let w = head_dim / 16;
        let per_tile = (16 / w).clamp(1, ROWS);
        for r0 in (0..rows).step_by(per_tile) {
            let r = (rows - r0).min(per_tile);
            let p = scores.add(r0 * ld);
            let out = io.out.add((i0 + r0) * io.out_stride);
            macro_rules! tiles {
                ($($w:literal: $($r:literal)*;)*) => {
                    match (w, r) {
                        $($(($w, $r) => tile::<$r, $w>(len, p, ld, vp, head_dim, out, io.out_stride),)*)*
                        _ => unreachable!(),
                    }
                };
            }
            tiles! {
                1: 1 2 3 4 5 6 7 8;
                2: 1 2 3 4 5 6 7 8;
                3: 1 2 3 4 5;
                4: 1 2 3 4;
                5: 1 2 3;
                6: 1 2;
                7: 1 2;
                8: 1 2;
            }
        }
    }
}

/// `elementwise::softmax_padded` of one row (`ld` values, `ld` a multiple of 16, `len <= ld` of them
/// real) on 16-lane vectors, with the same bits: the maximum is exact whatever the order, the
/// exponentials are the same operations lane by lane, and the sum adds the same 8-lane chunks in the
/// same order, then the lanes and the tail one by one, as `sum_lanes` does.
///
/// Safety: AVX-512 F; `row` holds `ld` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn softmax_row(row: *mut f32, len: usize, ld: usize, scale: f32) {
    let full = len / 16;
    let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
    // `max(x, m)`: a NaN score is passed over (the second operand is kept), as `max_lanes` does.
    for v in 0..full {
        m = _mm512_max_ps(_mm512_loadu_ps(row.add(16 * v)), m);
    }
    if !len.is_multiple_of(16) {
        let mask: __mmask16 = (1u16 << (len % 16)) - 1;
        m = _mm512_mask_max_ps(m, mask, _mm512_loadu_ps(row.add(16 * full)), m);
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(m) * scale);
    let scale_v = _mm512_set1_ps(scale);
    let mut acc = _mm256_setzero_ps();
    let chunks = len / 8;
    for v in 0..ld / 16 {
        let x = _mm512_loadu_ps(row.add(16 * v));
        let e = exp16(_mm512_sub_ps(_mm512_mul_ps(x, scale_v), max));
        _mm512_storeu_ps(row.add(16 * v), e);
        if 2 * v < chunks {
            acc = _mm256_add_ps(acc, _mm512_castps512_ps256(e));
        }
        if 2 * v + 1 < chunks {
            // The high 8 lanes, by AVX-512 F alone (`_mm512_extractf32x8_ps` needs DQ).
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(e)));
            acc = _mm256_add_ps(acc, hi);
        }
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    let tail = std::slice::from_raw_parts(row.add(8 * chunks), len % 8);
    let sum = lanes.iter().sum::<f32>() + tail.iter().sum::<f32>();
    let inv = _mm512_set1_ps(1.0 / sum);
    for v in 0..ld / 16 {
        let p = row.add(16 * v);
        _mm512_storeu_ps(p, _mm512_mul_ps(_mm512_loadu_ps(p), inv));
    }
}

/// `elementwise::exp_fast` on 16 lanes, with the same bits: the rounding of `x log2 e` to the nearest
/// integer `n` by `vrndscaleps` (nearest even, as the 1.5 * 2^23 addition there), the same polynomial,
/// and the scaling by 2^n by `vscalefps` (exact, as the multiplication by 2^n there: `n` stays in
/// [-126, 127], where 2^n is a normal float).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn exp16(x: __m512) -> __m512 {
    // The constant first: `vmaxps` / `vminps` return their second operand when either is NaN, so a
    // NaN goes through, as through `f32::clamp`.
    let x = _mm512_min_ps(
        _mm512_set1_ps(88.0),
        _mm512_max_ps(_mm512_set1_ps(-87.0), x),
    );
    let t = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let f = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(std::f32::consts::LN_2));
    let c = super::elementwise::EXP_POLY;
    let mut p = _mm512_set1_ps(c[0]);
    for c in &c[1..] {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(*c));
    }
    let p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0));
    _mm512_scalef_ps(p, n)
}

/// `out[r * out_stride + 16 n + j] = sum_t a[r * a_stride + t] * b[t * b_stride + 16 n + j]` over
/// `t < k`, for `R` rows and `N` vectors of 16 columns, the FMAs in order of `t`: the scores (`a` the
/// queries, `b` the transposed keys) and the context (`a` the probabilities, `b` the values).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<const R: usize, const N: usize>(
    k: usize,
    a: *const f32,
    a_stride: usize,
    b: *const f32,
    b_stride: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); N]; R];
    for t in 0..k {
        let bv: [__m512; N] =
            std::array::from_fn(|n| _mm512_loadu_ps(b.add(t * b_stride + 16 * n)));
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*a.add(r * a_stride + t));
            for (c, b) in acc.iter_mut().zip(&bv) {
                *c = _mm512_fmadd_ps(x, *b, *c);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (n, c) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add(r * out_stride + 16 * n), *c);
        }
    }
}

/// `dst[j * head_dim ..][..head_dim] = src[j * stride ..][..head_dim]` for `j < len`, by whole vectors
/// (a `memcpy` call per row of a few hundred bytes cost more than the copy).
///
/// Safety: AVX-512 F; `src` holds `len` rows of `head_dim` values (a multiple of 16) at `stride`;
/// `dst` has room for `len * head_dim` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn copy_rows(len: usize, head_dim: usize, src: *const f32, stride: usize, dst: *mut f32) {
    for j in 0..len {
        for d in (0..head_dim).step_by(16) {
            let x = _mm512_loadu_ps(src.add(j * stride + d));
            _mm512_storeu_ps(dst.add(j * head_dim + d), x);
        }
    }
}

/// `kt[d * ld + j] = k[j * stride + d]` for `j < len`, 0 for `len <= j < ld`, in 16 x 16 blocks
/// transposed in registers.
///
/// Safety: AVX-512 F; `k` holds `len` rows of `head_dim` values at `stride`; `kt` has room for
/// `head_dim * ld` values; `head_dim` and `ld` are multiples of 16, `len <= ld`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_keys(
    len: usize,
    head_dim: usize,
    ld: usize,
    k: *const f32,
    stride: usize,
    kt: *mut f32,
) {
    for j0 in (0..ld).step_by(16) {
        for d0 in (0..head_dim).step_by(16) {
            let r: [__m512; 16] = std::array::from_fn(|i| {
                if j0 + i < len {
                    _mm512_loadu_ps(k.add((j0 + i) * stride + d0))
                } else {
                    _mm512_setzero_ps()
                }
            });
            let t = transpose16(r);
            for (i, t) in t.iter().enumerate() {
                _mm512_storeu_ps(kt.add((d0 + i) * ld + j0), *t);
            }
        }
    }
}

/// The transpose of 16 rows of 16 lanes: `out[i]` lane `j` = `r[j]` lane `i`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // Pairs of rows interleaved, then pairs of pairs, then 128-bit lanes twice.
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // u[4g + m]: from t[4g + (m / 2)] and t[4g + 2 + (m / 2)], low or high halves of each 128 bits.
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (g, m) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + m / 2], t[4 * g + 2 + m / 2]);
        if m % 2 == 0 {
            _mm512_shuffle_ps::<0x44>(a, b)
        } else {
            _mm512_shuffle_ps::<0xEE>(a, b)
        }
    });
    // v[8h + 4s + m]: 128-bit lanes 0, 2 (s = 0) or 1, 3 (s = 1) of u[8h + m] and u[8h + 4 + m].
    let v: [__m512; 16] = std::array::from_fn(|i| {
        let (h, s, m) = (i / 8, (i / 4) % 2, i % 4);
        let (a, b) = (u[8 * h + m], u[8 * h + 4 + m]);
        if s == 0 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xDD>(a, b)
        }
    });
    // out[8s + m]: the same between v[m] and v[8 + m].
    std::array::from_fn(|i| {
        let (s, m) = (i / 8, i % 8);
        let (a, b) = (v[m], v[8 + m]);
        if s == 0 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xDD>(a, b)
        }
    })
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn softmax_rows_have_the_portable_bits() {
        if !supported(16) {
            return;
        }
        let mut seed = 0x9e37_79b9u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as f32 / u32::MAX as f32
        };
        for len in 1..200usize {
            for spread in [0.1f32, 3.0, 40.0, 400.0] {
                let ld = len.next_multiple_of(16);
                let row: Vec<f32> = (0..ld).map(|_| (next() - 0.5) * spread).collect();
                let mut want = row.clone();
                super::super::elementwise::softmax_padded(&mut want, len, 0.125);
                let mut got = row.clone();
                unsafe { softmax_row(got.as_mut_ptr(), len, ld, 0.125) };
                for j in 0..len {
                    assert_eq!(
                        got[j].to_bits(),
                        want[j].to_bits(),
                        "len {len}, spread {spread}, [{j}]"
                    );
                }
            }
        }
    }

    /// Every tile shape and both block edges: the context against the formula in f64.
    #[test]
    fn head_matches_the_formula() {
        if !supported(16) {
            return;
        }
        for head_dim in [16usize, 32, 48, 64, 128] {
            for len in [1usize, 2, 7, 8, 9, 15, 16, 17, 33, 47, 80, 97, 144] {
                let stride = 3 * head_dim * 2 + 5;
                let qkv: Vec<f32> = (0..len * stride)
                    .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 2.0)
                    .collect();
                let out_stride = head_dim + 3;
                let mut out = vec![f32::NAN; len * out_stride];
                let io = HeadIo {
                    q: qkv.as_ptr(),
                    k: qkv[head_dim..].as_ptr(),
                    v: qkv[2 * head_dim..].as_ptr(),
                    stride,
                    out: out.as_mut_ptr(),
                    out_stride,
                };
                let scale = 1.0 / (head_dim as f32).sqrt();
                unsafe { head(len, head_dim, scale, io, &mut Scratch::default()) };
                let at =
                    |t: usize, part: usize, d: usize| qkv[t * stride + part * head_dim + d] as f64;
                for i in 0..len {
                    let s: Vec<f64> = (0..len)
                        .map(|j| {
                            (0..head_dim)
                                .map(|d| at(i, 0, d) * at(j, 1, d))
                                .sum::<f64>()
                                * scale as f64
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..head_dim {
                        let want: f64 = (0..len).map(|j| e[j] / z * at(j, 2, d)).sum();
                        let got = out[i * out_stride + d] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "head {head_dim}, len {len}, [{i}, {d}]: {got} vs {want}"
                        );
                    }
                    assert!(out[i * out_stride + head_dim..(i + 1) * out_stride]
                        .iter()
                        .all(|x| x.is_nan()));
                }
            }
        }
    }

    /// A NaN or infinite score makes the row NaN, as on the portable path, instead of being clamped
    /// or passed over into finite weights.
    #[test]
    fn non_finite_scores_give_the_portable_nans() {
        if !supported(16) {
            return;
        }
        for len in [1usize, 5, 16, 17, 40] {
            for at in [0, len / 2, len - 1] {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let ld = len.next_multiple_of(16);
                    let mut row: Vec<f32> = (0..ld).map(|i| (i % 7) as f32 * 0.3).collect();
                    row[at] = bad;
                    let mut want = row.clone();
                    super::super::elementwise::softmax_padded(&mut want, len, 0.125);
                    let mut got = row.clone();
                    unsafe { softmax_row(got.as_mut_ptr(), len, ld, 0.125) };
                    for j in 0..len {
                        assert!(
                            got[j].to_bits() == want[j].to_bits()
                                || (got[j].is_nan() && want[j].is_nan()),
                            "len {len}, {bad} at {at}: [{j}] {} vs {}",
                            got[j],
                            want[j]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn keys_are_transposed_and_padded() {
        if !supported(16) {
            return;
        }
        for (len, head_dim) in [
            (1usize, 16usize),
            (5, 32),
            (16, 16),
            (17, 64),
            (40, 48),
            (80, 32),
        ] {
            let stride = 3 * head_dim + 7;
            let k: Vec<f32> = (0..len * stride).map(|i| i as f32).collect();
            let ld = len.next_multiple_of(16);
            let mut kt = vec![f32::NAN; head_dim * ld];
            unsafe { transpose_keys(len, head_dim, ld, k.as_ptr(), stride, kt.as_mut_ptr()) };
            for d in 0..head_dim {
                for j in 0..ld {
                    let want = if j < len { k[j * stride + d] } else { 0.0 };
                    assert_eq!(
                        kt[d * ld + j],
                        want,
                        "len {len}, head {head_dim}: [{d}, {j}]"
                    );
                }
            }
        }
    }
}
