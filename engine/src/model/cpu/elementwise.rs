//! The element-wise kernels of the forward, a row or a slice at a time, in plain arithmetic compiled
//! for each CPU level by [`simd_dispatch!`]: `e^x` and the erf GELU as polynomials (no libm call),
//! softmax (whole rows, and rows padded to whole vectors), LayerNorm, and the bias-and-residual
//! additions a projection's output gets. Leaves: they call nothing but each other.

use crate::simd::simd_dispatch;

/// `e^x` for the softmax: 2^(x log2 e) split into an integer power and a degree-5 polynomial in
/// `f = (x log2 e - n) ln 2`, `|f| <= ln 2 / 2` (a minimax fit of `e^f`, relative error 1.5e-7 in f32
/// arithmetic): plain arithmetic that vectorises. Relative error below 2e-6 on [-30, 30] (mostly from
/// rounding `x log2 e` to f32), far inside what the encoder's 1e-4 parity needs.
///
/// The polynomials here (and GELU's) are evaluated with fused multiply-adds, one instruction a step
/// where the level has FMA (AVX2 and AVX-512, for which these functions are compiled): half the
/// instructions of a multiply and an add. (The portable level, on a CPU without FMA, gets the same
/// values from a slower software `fma`.)
#[inline(always)]
fn exp_fast(x: f32) -> f32 {
    // (Mirrored by `attention::exp16` for 16 lanes: a change here goes there too.)
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E;
    // Round to nearest by the 1.5 * 2^23 trick (|t| < 2^22 here): plain adds that vectorise, where
    // `round`/`floor` would call libm without SSE4.1.
    const MAGIC: f32 = 12_582_912.0;
    let r = t + MAGIC;
    let n = r - MAGIC;
    let f = (t - n) * std::f32::consts::LN_2;
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p.mul_add(f, *c);
    }
    let p = p.mul_add(f, 1.0);
    // 2^n from the bits of `r` (1.5 * 2^23 + n: n sits in the low mantissa bits), in integer
    // arithmetic that vectorises; a float-to-int `as` cast saturates and would be done lane by lane.
    let pow2 = (r.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127)) << 23;
    p * f32::from_bits(pow2)
}

/// The coefficients of [`exp_fast`]'s polynomial, degree 5 down to 1 (its last step adds 1).
pub(crate) const EXP_POLY: [f32; 5] = [
    0.008_290_214,
    0.041_897_79,
    0.166_676_37,
    0.499_991_5,
    0.999_999_7,
];

/// The exact (erf) GELU, `0.5 x (1 + erf(x / sqrt 2))`, with `erf(z) = z P(z^2) / Q(z^2)` for `z`
/// clamped to [-4, 4]: `P` of degree 6 and `Q` of degree 4, a minimax fit (absolute error 5.5e-8 in
/// exact arithmetic, 3.4e-7 evaluated in f32): 11 fused multiply-adds and one division, no exponential
/// and no branch. The fit's f32 value passes 1 in magnitude from `|z|` = 3.91 (1.0000001 at 4), where
/// erf is +-1 in f32: it is clamped to [-1, 1], so that GELU is -0 below x = -5.5 instead of a small
/// positive value growing with `|x|`.
#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    const P: [f32; 7] = [
        1.922_041_5e-8,
        -1.990_000_3e-6,
        1.554_389e-4,
        4.288_943e-3,
        5.242_048e-2,
        2.138_482_3e-1,
        1.128_378_6,
    ];
    const Q: [f32; 5] = [
        1.097_044_1e-3,
        1.554_275_3e-2,
        1.207_595_4e-1,
        5.228_457_5e-1,
        1.0,
    ];
    let z = (x * std::f32::consts::FRAC_1_SQRT_2).clamp(-4.0, 4.0);
    let s = z * z;
    let mut p = P[0];
    for c in &P[1..] {
        p = p.mul_add(s, *c);
    }
    let mut q = Q[0];
    for c in &Q[1..] {
        q = q.mul_add(s, *c);
    }
    let erf = (z * p / q).clamp(-1.0, 1.0);
    0.5 * x * (1.0 + erf)
}

#[inline(always)]
fn gelu_slice_generic(v: &mut [f32]) {
    for x in v {
        *x = gelu_erf(*x);
    }
}

simd_dispatch! {
    /// GELU over a slice, in place.
    pub(crate) fn gelu_slice = gelu_slice_generic(v: &mut [f32])
}

/// Maximum over eight independent lanes (a plain fold over `f32::max` does not vectorise).
#[inline(always)]
fn max_lanes(v: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            m[i] = if c[i] > m[i] { c[i] } else { m[i] };
        }
    }
    let mut out = f32::NEG_INFINITY;
    for x in m.iter().chain(rest) {
        out = if *x > out { *x } else { out };
    }
    out
}

/// Sum over eight independent lanes (a sequential float sum does not vectorise).
#[inline(always)]
fn sum_lanes(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Softmax of `scale * row` over the whole row, in place.
#[inline(always)]
fn softmax_generic(row: &mut [f32], scale: f32) {
    let max = max_lanes(row) * scale;
    for x in row.iter_mut() {
        *x = exp_fast(*x * scale - max);
    }
    let inv = 1.0 / sum_lanes(row);
    for x in row.iter_mut() {
        *x *= inv;
    }
}

simd_dispatch! {
    /// Softmax of `scale * row`, in place.
    pub(crate) fn softmax = softmax_generic(row: &mut [f32], scale: f32)
}

/// [`softmax_generic`] of `row[..len]`, where `row` runs on to a whole number of vectors: the
/// exponentials are taken over all of it (the values past `len` are ignored), so that no value goes
/// through the loop's scalar tail, which cost about as much as the rest of a row of a hundred keys;
/// the maximum and the sum still run over `row[..len]` in the same order, so the result has the same
/// bits.
///
/// (Mirrored by `attention::softmax_row` for AVX-512: a change here goes there too.)
#[inline(always)]
fn softmax_padded_generic(row: &mut [f32], len: usize, scale: f32) {
    let max = max_lanes(&row[..len]) * scale;
    for x in row.iter_mut() {
        *x = exp_fast(*x * scale - max);
    }
    let inv = 1.0 / sum_lanes(&row[..len]);
    for x in row[..len].iter_mut() {
        *x *= inv;
    }
}

simd_dispatch! {
    /// Softmax of `scale * row[..len]`, in place; `row[len..]` (padding to a whole vector) is
    /// overwritten.
    pub(crate) fn softmax_padded = softmax_padded_generic(row: &mut [f32], len: usize, scale: f32)
}

/// The row stride of a `len`-key score matrix: whole 16-lane vectors.
pub(crate) fn score_stride(len: usize) -> usize {
    len.next_multiple_of(16)
}

/// LayerNorm of one row in place: `(x - mean) / sqrt(var + eps) * weight + bias`, with the mean and
/// the variance in two passes over independent lanes.
#[inline(always)]
fn layer_norm_generic(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let n = x.len() as f32;
    let mean = sum_lanes(x) / n;
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    let var =
        (acc.iter().sum::<f32>() + rest.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((x, w), b) in x.iter_mut().zip(weight).zip(bias) {
        *x = (*x - mean) * inv * w + b;
    }
}

simd_dispatch! {
    /// LayerNorm of one row, in place.
    pub(crate) fn layer_norm = layer_norm_generic(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32)
}

/// `x = f(x + (residual + bias))` (`f(x + bias)` without a residual), one row.
#[inline(always)]
fn add_map(x: &mut [f32], bias: &[f32], residual: Option<&[f32]>, f: impl Fn(f32) -> f32) {
    match residual {
        Some(r) => {
            for ((x, r), b) in x.iter_mut().zip(r).zip(bias) {
                *x = f(*x + (r + b));
            }
        }
        None => {
            for (x, b) in x.iter_mut().zip(bias) {
                *x = f(*x + b);
            }
        }
    }
}

#[inline(always)]
fn add_scaled_rows_generic(dst: &mut [f32], coefs: &[f32], rows: &[f32], stride: usize) {
    for (i, &a) in coefs.iter().enumerate() {
        let row = &rows[i * stride..][..dst.len()];
        for (d, &x) in dst.iter_mut().zip(row) {
            *d += a * x;
        }
    }
}

simd_dispatch! {
    /// `dst += coefs[i] * rows[i * stride..][..dst.len()]` for each `i` in order, each a multiply
    /// and an add (so the same bits on every level, and for a row whatever else is summed beside it).
    pub(crate) fn add_scaled_rows = add_scaled_rows_generic(dst: &mut [f32], coefs: &[f32], rows: &[f32], stride: usize)
}

#[inline(always)]
fn add_row_generic(x: &mut [f32], bias: &[f32], residual: Option<&[f32]>) {
    add_map(x, bias, residual, |v| v)
}

simd_dispatch! {
    /// `x += residual + bias`, one row.
    pub(crate) fn add_row = add_row_generic(x: &mut [f32], bias: &[f32], residual: Option<&[f32]>)
}

#[inline(always)]
fn add_gelu_generic(x: &mut [f32], bias: &[f32], residual: Option<&[f32]>) {
    add_map(x, bias, residual, gelu_erf)
}

simd_dispatch! {
    /// `x = GELU(x + (residual + bias))`, one row.
    pub(crate) fn add_gelu = add_gelu_generic(x: &mut [f32], bias: &[f32], residual: Option<&[f32]>)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The padded softmax over `row[..len]` gives the plain softmax's bits at every length around
    /// the vector widths, whatever the padding holds.
    #[test]
    fn padded_softmax_matches_the_plain_one() {
        for len in 1..70 {
            let row: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) / 3.0)
                .collect();
            let mut want = row.clone();
            softmax(&mut want, 0.125);
            let mut got = row.clone();
            got.resize(score_stride(len), 1e30);
            softmax_padded(&mut got, len, 0.125);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got[..len]), bits(&want), "len {len}");
        }
    }

    #[test]
    fn fast_exp_and_gelu_are_accurate() {
        let mut x = -30.0f32;
        while x < 30.0 {
            let e = exp_fast(x) as f64;
            let want = (x as f64).exp();
            assert!(
                ((e - want) / want).abs() < 2e-6,
                "exp({x}) = {e}, want {want}"
            );
            let g = gelu_erf(x) as f64;
            // The series reference is exact to ~1e-8 for |x| <= 6; beyond, GELU is 0 or x to f32 precision.
            let want = if x < -6.0 {
                0.0
            } else if x > 6.0 {
                x as f64
            } else {
                0.5 * x as f64 * (1.0 + libm_erf(x as f64 / std::f64::consts::SQRT_2))
            };
            assert!(
                (g - want).abs() < 2e-6 * (1.0 + (x as f64).abs()),
                "gelu({x}) = {g}, want {want}"
            );
            // Never positive below 0, and no error growing with |x| in the far negative tail (GELU
            // there is -x e^{-x^2/2} / sqrt(2 pi) small, below 5e-7 past -5.5).
            if x < 0.0 {
                assert!(g <= 0.0, "gelu({x}) = {g} > 0");
            }
            if x < -5.5 {
                assert!(g.abs() < 5e-7, "gelu({x}) = {g}");
            }
            x += 0.013;
        }
        for x in [-1e30f32, -1e6, -100.0] {
            assert_eq!(gelu_erf(x), 0.0, "gelu({x})");
        }
        assert_eq!(gelu_erf(f32::INFINITY), f32::INFINITY);
        assert!(gelu_erf(f32::NAN).is_nan());
        assert!(gelu_erf(f32::NEG_INFINITY).is_nan());
    }

    /// erf by its series / continued fraction in f64, for the test only.
    fn libm_erf(x: f64) -> f64 {
        // Abramowitz & Stegun 7.1.5 series: exact to f64 rounding for |x| < 6 with enough terms.
        if x.abs() > 6.0 {
            return x.signum();
        }
        let mut sum = 0.0f64;
        let mut term = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs().max(1e-300) || n < 5.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
            if n > 400.0 {
                break;
            }
        }
        2.0 / std::f64::consts::PI.sqrt() * sum
    }
}
