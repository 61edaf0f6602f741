//! The activations' side of the int8 products: each row quantised to u8 over its range widened to
//! hold zero (asymmetric, dynamic), its scale and zero point, and the codes padded to whole
//! micro-tiles. Leaves of the int8 products.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::tiles::MR;
use crate::simd::{level, simd_dispatch, Level};

/// to libm: adding the largest float below one half, with `x`'s sign, then truncating gives the same
/// integer for every such `x` (at exactly a half the sum rounds up to the next integer; just below a
/// half it stays below it).
#[inline(always)]
pub(super) fn round_half_away(x: f32) -> i32 {
    (x + 0.5f32.next_down().copysign(x)) as i32
}

/// Rows quantised to u8: `x[r, k] ~ scale[r] * (q[r * kp + k] - zero[r])`. Rows are `kp` bytes (zero
/// padded) and their count is padded to a whole micro-tile with zero rows.
pub struct QuantRows {
    pub(super) q: Vec<u8>,
    pub(super) scale: Vec<f32>,
    pub(super) zero: Vec<i32>,
    /// The codes' row length.
    pub(super) kp: usize,
}

/// One row's codes, input, scale and zero point, as the quantiser's iterators hand them out.
type RowItem<'a> = (
    (&'a mut [MaybeUninit<u8>], &'a [f32]),
    (&'a mut f32, &'a mut i32),
);

impl QuantRows {
    pub(super) fn of(x: &[f32], rows: usize, inp: usize, kp: usize, serial: bool) -> QuantRows {
        // Every code row is written below only if x holds all the rows.
        assert!(
            x.len() >= rows * inp && inp <= kp,
            "quantised rows: input shape"
        );
        let mut out = QuantRows::unwritten(rows, kp);
        let (q, scale, zero) = (&mut out.q, &mut out.scale, &mut out.zero);
        let codes = &mut q.spare_capacity_mut()[..rows * kp];
        let one = |((q, x), (s, z)): RowItem| {
            (*s, *z) = quantize_row(x, q);
        };
        let it = codes
            .chunks_mut(kp)
            .zip(x.chunks(inp))
            .zip(scale.iter_mut().zip(zero.iter_mut()));
        if serial || rows < 16 {
            it.for_each(one);
        } else {
            codes
                .par_chunks_mut(kp)
                .zip(x.par_chunks(inp))
                .zip(scale.par_iter_mut().zip(zero.par_iter_mut()))
                .for_each(one);
        }
        // Safety: quantize_row wrote all kp codes of each of the rows.
        unsafe { out.finish_padding(rows) };
        out
    }

    /// Room for `rows` rows of `kp` codes (and the padding rows of the last micro-tile), none
    /// written yet: each is written once, by [`quantize_row`] and [`QuantRows::finish_padding`]
    /// (a zero fill first was a pass over every code that the quantiser then wrote again).
    pub(super) fn unwritten(rows: usize, kp: usize) -> QuantRows {
        QuantRows {
            q: Vec::with_capacity(rows.div_ceil(MR) * MR * kp),
            scale: vec![0f32; rows],
            zero: vec![0i32; rows],
            kp,
        }
    }

    /// Zeroes the padding rows and makes every code readable.
    ///
    /// Safety: the codes of rows `0..rows` must all have been written, and `self` made by
    /// [`QuantRows::unwritten`] for `rows` rows.
    pub(super) unsafe fn finish_padding(&mut self, rows: usize) {
        let all = rows.div_ceil(MR) * MR * self.kp;
        for c in &mut self.q.spare_capacity_mut()[rows * self.kp..all] {
            c.write(0);
        }
        self.q.set_len(all);
    }
}

/// Quantises one row into `q` (`q.len() >= x.len()`), writing every byte of `q` (the codes past
/// `x.len()` are zero): its scale and zero point. A row with a non-finite value gets a NaN scale
/// (and zero codes), so that its outputs are NaN as in f32.
pub(super) fn quantize_row(x: &[f32], q: &mut [MaybeUninit<u8>]) -> (f32, i32) {
    let mut range = [0f32; 3];
    row_range(x, &mut range);
    let [lo, hi, probe] = range;
    let zero_codes = |codes: &mut [MaybeUninit<u8>]| {
        for c in codes {
            c.write(0);
        }
    };
    let (codes, rest) = q.split_at_mut(x.len());
    zero_codes(rest);
    if !probe.is_finite() {
        zero_codes(codes);
        return (f32::NAN, 0);
    }
    if hi == lo {
        // All zeros: any scale; zero point 0 and codes 0.
        zero_codes(codes);
        return (1.0, 0);
    }
    let s = (hi - lo) / 255.0;
    let zero = (-lo / s).round().clamp(0.0, 255.0);
    quantize_into(x, codes, 1.0 / s, zero);
    (s, zero as i32)
}

/// `[min(0, min x), max(0, max x), sum(x * 0)]` in eight lanes (the last is NaN exactly when a value
/// is not finite).
#[inline(always)]
fn row_range_generic(x: &[f32], out: &mut [f32; 3]) {
    let (mut lo, mut hi, mut probe) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
            hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
            probe[i] += c[i] * 0.0;
        }
    }
    finish_range(lo, hi, probe, rest, out);
}

/// The last values of a row into the lanes (value `i` into lane `i % 8`), then the lanes folded
/// into `out`: the same for the generic and the vector ranges (minimum and maximum do not depend on
/// which lane a value enters).
#[inline(always)]
fn finish_range(
    mut lo: [f32; 8],
    mut hi: [f32; 8],
    mut probe: [f32; 8],
    rest: &[f32],
    out: &mut [f32; 3],
) {
    for (i, &v) in rest.iter().enumerate() {
        let i = i % 8;
        lo[i] = if v < lo[i] { v } else { lo[i] };
        hi[i] = if v > hi[i] { v } else { hi[i] };
        probe[i] += v * 0.0;
    }
    *out = [
        lo.iter().fold(0f32, |a, &b| if b < a { b } else { a }),
        hi.iter().fold(0f32, |a, &b| if b > a { b } else { a }),
        probe.iter().sum(),
    ];
}

/// The range of a row, widened to hold zero, and a finiteness probe (see `row_range_generic`).
fn row_range(x: &[f32], out: &mut [f32; 3]) {
    match level() {
        // Safety: the level says the CPU has AVX2.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { row_range_avx512(x, out) },
        // Safety: the level says the CPU has AVX2.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2Fma => unsafe { row_range_avx2(x, out) },
        _ => row_range_generic(x, out),
    }
}

/// `row_range_generic` with explicit min/max instructions (`vminps(v, lo)` is `v < lo ? v : lo`,
/// the generic code's rule), which the compiler does not find on its own, in four independent sets
/// of lanes (one set waited on each instruction's latency: a quarter of the speed). Minimum and
/// maximum do not depend on the order of the values, and the probe is only tested for finiteness, so
/// the result is the generic function's.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_range_avx2(x: &[f32], out: &mut [f32; 3]) {
    use std::arch::x86_64::*;
    let z = _mm256_setzero_ps();
    let (mut lo, mut hi, mut probe) = ([z; 4], [z; 4], [z; 4]);
    let n32 = x.len() / 32 * 32;
    for i in (0..n32).step_by(32) {
        for j in 0..4 {
            // Safety: i + 8j + 8 <= n32 <= x.len().
            let v = _mm256_loadu_ps(x.as_ptr().add(i + 8 * j));
            lo[j] = _mm256_min_ps(v, lo[j]);
            hi[j] = _mm256_max_ps(v, hi[j]);
            probe[j] = _mm256_add_ps(probe[j], _mm256_mul_ps(v, z));
        }
    }
    let n8 = x.len() / 8 * 8;
    for i in (n32..n8).step_by(8) {
        // Safety: i + 8 <= x.len().
        let v = _mm256_loadu_ps(x.as_ptr().add(i));
        lo[0] = _mm256_min_ps(v, lo[0]);
        hi[0] = _mm256_max_ps(v, hi[0]);
        probe[0] = _mm256_add_ps(probe[0], _mm256_mul_ps(v, z));
    }
    // A value that is NaN never enters lo or hi (min and max return their second operand), so the
    // sets combine exactly; a NaN probe stays NaN.
    let lo = _mm256_min_ps(_mm256_min_ps(lo[0], lo[1]), _mm256_min_ps(lo[2], lo[3]));
    let hi = _mm256_max_ps(_mm256_max_ps(hi[0], hi[1]), _mm256_max_ps(hi[2], hi[3]));
    let probe = _mm256_add_ps(
        _mm256_add_ps(probe[0], probe[1]),
        _mm256_add_ps(probe[2], probe[3]),
    );
    let (mut l, mut h, mut p) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    _mm256_storeu_ps(l.as_mut_ptr(), lo);
    _mm256_storeu_ps(h.as_mut_ptr(), hi);
    _mm256_storeu_ps(p.as_mut_ptr(), probe);
    finish_range(l, h, p, &x[n8..], out);
}

/// `row_range_avx2` in sixteen lanes: the sets folded to eight lanes (minimum, maximum and a sum
/// that is NaN exactly when one of its terms is) before the same finish, so the result is the
/// generic function's.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn row_range_avx512(x: &[f32], out: &mut [f32; 3]) {
    use std::arch::x86_64::*;
    let z = _mm512_setzero_ps();
    let (mut lo, mut hi, mut probe) = ([z; 4], [z; 4], [z; 4]);
    let n64 = x.len() / 64 * 64;
    for i in (0..n64).step_by(64) {
        for j in 0..4 {
            // Safety: i + 16j + 16 <= n64 <= x.len().
            let v = _mm512_loadu_ps(x.as_ptr().add(i + 16 * j));
            lo[j] = _mm512_min_ps(v, lo[j]);
            hi[j] = _mm512_max_ps(v, hi[j]);
            probe[j] = _mm512_add_ps(probe[j], _mm512_mul_ps(v, z));
        }
    }
    let n16 = x.len() / 16 * 16;
    for i in (n64..n16).step_by(16) {
        // Safety: i + 16 <= x.len().
        let v = _mm512_loadu_ps(x.as_ptr().add(i));
        lo[0] = _mm512_min_ps(v, lo[0]);
        hi[0] = _mm512_max_ps(v, hi[0]);
        probe[0] = _mm512_add_ps(probe[0], _mm512_mul_ps(v, z));
    }
    let lo = _mm512_min_ps(_mm512_min_ps(lo[0], lo[1]), _mm512_min_ps(lo[2], lo[3]));
    let hi = _mm512_max_ps(_mm512_max_ps(hi[0], hi[1]), _mm512_max_ps(hi[2], hi[3]));
    let probe = _mm512_add_ps(
        _mm512_add_ps(probe[0], probe[1]),
        _mm512_add_ps(probe[2], probe[3]),
    );
    let half = |v: __m512, hi: bool| -> __m256 {
        let d = _mm512_castps_si512(v);
        _mm256_castsi256_ps(if hi {
            _mm512_extracti64x4_epi64::<1>(d)
        } else {
            _mm512_castsi512_si256(d)
        })
    };
    let lo = _mm256_min_ps(half(lo, false), half(lo, true));
    let hi = _mm256_max_ps(half(hi, false), half(hi, true));
    let probe = _mm256_add_ps(half(probe, false), half(probe, true));
    let (mut l, mut h, mut p) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    _mm256_storeu_ps(l.as_mut_ptr(), lo);
    _mm256_storeu_ps(h.as_mut_ptr(), hi);
    _mm256_storeu_ps(p.as_mut_ptr(), probe);
    // The values past the last sixteen go through the finish.
    finish_range(l, h, p, &x[n16..], out);
}

#[inline(always)]
fn quantize_into_generic(x: &[f32], q: &mut [MaybeUninit<u8>], inv: f32, zero: f32) {
    // Adding 2^23 to a value in [0, 255] leaves it rounded (to nearest, ties to even) in the low
    // mantissa bits: plain float arithmetic that vectorises, the same rule on every CPU.
    const MAGIC: f32 = 8_388_608.0;
    for (q, &v) in q.iter_mut().zip(x) {
        let t = (v * inv + zero).clamp(0.0, 255.0);
        q.write(((t + MAGIC).to_bits() & 0xff) as u8);
    }
}

simd_dispatch! {
    /// `q = round(clamp(x * inv + zero, 0, 255))`.
    fn quantize_into = quantize_into_generic(x: &[f32], q: &mut [MaybeUninit<u8>], inv: f32, zero: f32)
}

#[cfg(test)]
mod tests {
    use super::super::lcg;
    use super::*;

    #[test]
    fn rounding_halves_away_matches_round() {
        let mut r = lcg(3);
        let mut xs: Vec<f32> = (0..100_000).map(|_| 70.0 * r()).collect();
        for i in -64..=64 {
            let h = i as f32 + 0.5;
            xs.extend([i as f32, h, h.next_down(), h.next_up(), -h, (-h).next_up()]);
        }
        xs.extend([
            0.0,
            -0.0,
            0.5f32.next_down(),
            1e-30,
            8_388_609.0,
            -8_388_609.0,
        ]);
        for x in xs {
            assert_eq!(round_half_away(x), x.round() as i32, "{x}");
        }
    }

    /// The AVX2 range (four sets of lanes) against the generic one: the same minimum and maximum
    /// bits and the same finiteness, at every length around the loops' steps, with negative zeros,
    /// and with a NaN or an infinity at any position.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn row_range_matches_the_generic_one() {
        // The vector ranges this CPU can run.
        #[allow(clippy::type_complexity)]
        let mut ranges: Vec<(&str, unsafe fn(&[f32], &mut [f32; 3]))> = Vec::new();
        if std::is_x86_feature_detected!("avx2") {
            ranges.push(("AVX2", row_range_avx2));
        }
        if std::is_x86_feature_detected!("avx512f") {
            ranges.push(("AVX-512", row_range_avx512));
        }
        let mut r = lcg(5);
        for len in 0..200 {
            let mut x: Vec<f32> = (0..len).map(|_| 4.0 * r()).collect();
            if len > 3 {
                x[len / 2] = -0.0;
            }
            for &(name, range) in &ranges {
                let check = |x: &[f32]| {
                    let (mut a, mut b) = ([0f32; 3], [0f32; 3]);
                    row_range_generic(x, &mut a);
                    // Safety: the CPU has the range's instructions (checked above).
                    unsafe { range(x, &mut b) };
                    assert_eq!(
                        a[0].to_bits(),
                        b[0].to_bits(),
                        "{name} min, {} values",
                        x.len()
                    );
                    assert_eq!(
                        a[1].to_bits(),
                        b[1].to_bits(),
                        "{name} max, {} values",
                        x.len()
                    );
                    assert_eq!(
                        a[2].is_finite(),
                        b[2].is_finite(),
                        "{name} probe, {} values",
                        x.len()
                    );
                };
                check(&x);
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    for at in [0, len / 3, len.saturating_sub(1)] {
                        if at < len {
                            let mut y = x.clone();
                            y[at] = bad;
                            check(&y);
                            let mut p = [0f32; 3];
                            // Safety: as above.
                            unsafe { range(&y, &mut p) };
                            assert!(!p[2].is_finite(), "{name}: {bad} at {at} of {len} not seen");
                        }
                    }
                }
            }
        }
    }
}
