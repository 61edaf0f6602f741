//! Fused CPU kernels for the f32 forward, as candle custom ops (the CUDA and half-precision paths use
//! candle's own ops). candle's CPU backend runs each elementwise op as its own pass with libm's scalar
//! `erf`/`exp`; fusing the bias, residual and GELU into the projection GEMM and computing attention
//! per (sequence, head) over the real tokens only removes those passes and the padding work.
//!
//! * [`FusedLinear`]: `x @ W + b (+ residual)`, optionally followed by GELU or LayerNorm: one GEMM
//!   writing into a buffer that already holds the bias (and residual), or, when GELU or LayerNorm
//!   follows a batch's GEMM, that pass adding them as it goes (one pass over the output fewer).
//! * [`FusedAttention`]: from the fused QKV projection to the attention context, per (sequence, head)
//!   in parallel: scores for the sequence's real tokens only, softmax, times V. Padding keys are left
//!   out exactly (not down-weighted), so a sequence's result does not depend on its batch; padding rows
//!   of the output are zero.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::simd::{TILE_Q, TILE_R};

thread_local! {
    /// Whether the operations run by this thread may split their work across the pool, when set
    /// (see [`with_splitting`]); unset, they split unless the thread is a pool worker.
    static SPLIT: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether an operation may split its work across the rayon pool: as [`with_splitting`] set it, and
/// otherwise only from outside the pool (a worker is taken to be encoding one of many batches, whose
/// operations do better on one thread each than split again).
pub fn may_split() -> bool {
    SPLIT
        .get()
        .unwrap_or_else(|| rayon::current_thread_index().is_none())
}

/// Runs `f` with the operations it runs on this thread splitting across the pool (`split`) or not.
pub fn with_splitting<R>(split: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SPLIT.set(self.0);
        }
    }
    let _restore = Restore(SPLIT.replace(Some(split)));
    f()
}

/// A raw pointer that parallel tasks may share: each task writes a disjoint region (also used by
/// `model::int8`).
#[derive(Clone, Copy)]
pub(super) struct SharedMut(pub(super) *mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer, through a method: a closure that calls it captures the whole (Sync) wrapper, not
    /// the raw pointer field, which is neither Send nor Sync.
    pub(super) fn ptr(&self) -> *mut f32 {
        self.0
    }
}

/// [`SharedMut`]'s read-only twin (the int8 residual), for the same reason.
#[derive(Clone, Copy)]
pub(super) struct SharedConst(pub(super) *const f32);
unsafe impl Send for SharedConst {}
unsafe impl Sync for SharedConst {}

impl SharedConst {
    pub(super) fn ptr(&self) -> *const f32 {
        self.0
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let v = match s {
        CpuStorage::F32(v) => v,
        _ => candle_core::bail!("{what}: the fused CPU kernels take f32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: must be contiguous"),
    }
}

/// Runs `f` with the f32 data of a CPU tensor.
pub(super) fn with_f32<R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(s) => f(f32_slice(s, l, what)?),
        _ => candle_core::bail!("{what}: the fused CPU kernels need CPU tensors"),
    }
}

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
pub(super) const EXP_POLY: [f32; 5] = [
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
    pub(super) fn gelu_slice = gelu_slice_generic(v: &mut [f32])
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
    fn softmax = softmax_generic(row: &mut [f32], scale: f32)
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
    pub(super) fn softmax_padded = softmax_padded_generic(row: &mut [f32], len: usize, scale: f32)
}

/// The row stride of a `len`-key score matrix: whole 16-lane vectors.
fn score_stride(len: usize) -> usize {
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
    fn layer_norm = layer_norm_generic(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32)
}

/// `dst (m x n) = lhs (m x k) @ rhs (k x n) + read_dst * dst`, all with explicit strides.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    read_dst: bool,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
    parallel: bool,
) {
    let par = if parallel {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    gemm::gemm(
        m, n, k, dst, 1, dst_rs, read_dst, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs, 1.0, 1.0,
        false, false, false, par,
    );
}

/// `x @ weight + bias (+ residual)`, then GELU or LayerNorm if asked. `weight` is `(in, out)`
/// contiguous.
pub struct FusedLinear<'a> {
    /// `None` when the projection runs on `quant` alone.
    pub weight: Option<&'a Tensor>,
    /// Where the same weight packed for the small-batch path (used up to [`SMALL_ROWS`] rows) is
    /// kept: packed on the first call that has so few rows, so that a model that only ever sees
    /// large batches never holds the second copy.
    pub packed: Option<&'a std::sync::OnceLock<Option<PackedWeight>>>,
    /// The weight as int8 (`--precision int8`): when present, the product runs on it, at any size.
    pub quant: Option<&'a super::int8::QuantWeight>,
    pub bias: &'a Tensor,
    pub residual: Option<&'a Tensor>,
    pub gelu: bool,
    /// LayerNorm `(weight, bias, eps)` over each output row.
    pub norm: Option<(&'a Tensor, &'a Tensor, f32)>,
}

impl CustomOp1 for FusedLinear<'_> {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "fused-linear input")?;
        let (rows, inp) = l.shape().dims2()?;
        let (win, out) = match (self.weight, self.quant) {
            (Some(w), _) => w.dims2()?,
            (None, Some(q)) => (q.inp(), q.out()),
            (None, None) => candle_core::bail!("fused-linear: no weight"),
        };
        if win != inp {
            candle_core::bail!("fused-linear: input width {inp}, weight {win} x {out}");
        }
        // The elementwise passes (bias, GELU, LayerNorm) of a small output (a query) run on this
        // thread: splitting a few thousand values across threads costs more in wake-ups than it saves.
        let serial = rows * out <= SERIAL_ELEMENTS || !may_split();
        let mut dst: Vec<f32> = Vec::with_capacity(rows * out);
        if let Some(q) = self.quant {
            if q.inp() != inp || q.out() != out {
                candle_core::bail!(
                    "fused-linear: int8 weight {}x{}, input width {inp}",
                    q.inp(),
                    q.out()
                );
            }
            // The int8 tiles' epilogues write residual + bias + product straight into the output.
            with_f32(self.bias, "bias", |b| {
                if b.len() != out {
                    candle_core::bail!("fused-linear: bias width mismatch");
                }
                let spare = &mut dst.spare_capacity_mut()[..rows * out];
                match self.residual {
                    Some(r) => with_f32(r, "residual", |r| {
                        if r.len() != rows * out {
                            candle_core::bail!("fused-linear: residual shape mismatch");
                        }
                        q.product_into(x, rows, b, Some(r), spare, self.gelu);
                        Ok(())
                    }),
                    None => {
                        q.product_into(x, rows, b, None, spare, self.gelu);
                        Ok(())
                    }
                }
            })?;
            // Safety: product_into wrote every one of the rows * out elements.
            unsafe { dst.set_len(rows * out) };
            // The GELU was applied by the product.
            return self.finish(dst, rows, out, serial, false, None);
        }
        let Some(weight) = self.weight else {
            candle_core::bail!("fused-linear: no f32 weight");
        };
        let small = self
            .packed
            .filter(|_| rows <= SMALL_ROWS)
            .and_then(|cell| cell.get_or_init(|| PackedWeight::of(weight).ok()).as_ref())
            .filter(|p| p.inp == inp && p.out == out);
        if small.is_none() && (self.gelu || self.norm.is_some()) {
            // The general GEMM writes the product alone, and the GELU or LayerNorm pass that follows
            // adds the bias (and residual) on its way: no pass that fills the output with them first.
            let spare = &mut dst.spare_capacity_mut()[..rows * out];
            // Safety: spare holds rows x out values, all written (read_dst false).
            unsafe { self.general_product(x, rows, spare.as_mut_ptr() as *mut f32, false)? };
            // Safety: the GEMM wrote every one of the rows * out elements.
            unsafe { dst.set_len(rows * out) };
            return with_f32(self.bias, "bias", |b| {
                if b.len() != out {
                    candle_core::bail!("fused-linear: bias width mismatch");
                }
                match self.residual {
                    Some(r) => with_f32(r, "residual", |r| {
                        if r.len() != rows * out {
                            candle_core::bail!("fused-linear: residual shape mismatch");
                        }
                        self.finish(dst, rows, out, serial, self.gelu, Some((b, Some(r))))
                    }),
                    None => self.finish(dst, rows, out, serial, self.gelu, Some((b, None))),
                }
            });
        }
        // The output starts as bias (+ residual), written once (no zero fill); the GEMM adds into it.
        with_f32(self.bias, "bias", |b| {
            let spare = &mut dst.spare_capacity_mut()[..rows * out];
            match self.residual {
                Some(r) => with_f32(r, "residual", |r| {
                    if r.len() != rows * out {
                        candle_core::bail!("fused-linear: residual shape mismatch");
                    }
                    let fill = |(d, r): (&mut [std::mem::MaybeUninit<f32>], &[f32])| {
                        for ((d, r), b) in d.iter_mut().zip(r).zip(b) {
                            d.write(r + b);
                        }
                    };
                    if serial {
                        spare.chunks_mut(out).zip(r.chunks(out)).for_each(fill);
                    } else {
                        spare
                            .par_chunks_mut(out)
                            .zip(r.par_chunks(out))
                            .for_each(fill);
                    }
                    Ok(())
                })?,
                None => {
                    let fill = |d: &mut [std::mem::MaybeUninit<f32>]| {
                        for (d, b) in d.iter_mut().zip(b) {
                            d.write(*b);
                        }
                    };
                    if serial {
                        spare.chunks_mut(out).for_each(fill);
                    } else {
                        spare.par_chunks_mut(out).for_each(fill);
                    }
                }
            }
            Ok(())
        })?;
        // Safety: every one of the rows * out elements was written just above.
        unsafe { dst.set_len(rows * out) };
        if let Some(p) = small {
            p.add_product(x, rows, &mut dst);
        } else {
            // Safety: dst holds rows x out values, read and written.
            unsafe { self.general_product(x, rows, dst.as_mut_ptr(), true)? };
        }
        self.finish(dst, rows, out, serial, self.gelu, None)
    }
}

impl FusedLinear<'_> {
    /// `dst (rows x out) = x (rows x inp) @ W (+ dst when read_dst)` by the general GEMM. Inside a
    /// rayon worker (batches encoded in parallel) one thread per GEMM does better than splitting each
    /// GEMM again.
    ///
    /// Safety: `dst` is valid for writes (and, with read_dst, reads) of rows x out values; `x` holds
    /// rows x inp values (checked by the caller against the weight's shape).
    unsafe fn general_product(
        &self,
        x: &[f32],
        rows: usize,
        dst: *mut f32,
        read_dst: bool,
    ) -> Result<()> {
        let Some(weight) = self.weight else {
            candle_core::bail!("fused-linear: no f32 weight");
        };
        let (inp, out) = weight.dims2()?;
        with_f32(weight, "weight", |w| {
            // Safety: x is rows x inp, w inp x out, dst rows x out, all contiguous row-major.
            unsafe {
                gemm_f32(
                    rows,
                    out,
                    inp,
                    dst,
                    out as isize,
                    read_dst,
                    x.as_ptr(),
                    inp as isize,
                    1,
                    w.as_ptr(),
                    out as isize,
                    1,
                    may_split(),
                )
            };
            Ok(())
        })
    }

    /// GELU (when `gelu`: the int8 product applies its own) or LayerNorm over the projection's output;
    /// with `add` (`bias`, `residual`), the first of them adds `residual + bias` to each value first,
    /// which gives the bits of an output filled with `residual + bias` before a single-step product
    /// added into it (one float addition, commutative).
    fn finish(
        &self,
        mut dst: Vec<f32>,
        rows: usize,
        out: usize,
        serial: bool,
        gelu: bool,
        mut add: Option<(&[f32], Option<&[f32]>)>,
    ) -> Result<(CpuStorage, Shape)> {
        // Runs f(row, residual row) over the rows, in parallel unless serial.
        let for_rows =
            |dst: &mut Vec<f32>, residual: Option<&[f32]>, f: &RowFn| match (residual, serial) {
                (Some(r), true) => dst
                    .chunks_mut(out)
                    .zip(r.chunks(out))
                    .for_each(|(d, r)| f(d, Some(r))),
                (Some(r), false) => dst
                    .par_chunks_mut(out)
                    .zip(r.par_chunks(out))
                    .for_each(|(d, r)| f(d, Some(r))),
                (None, true) => dst.chunks_mut(out).for_each(|d| f(d, None)),
                (None, false) => dst.par_chunks_mut(out).for_each(|d| f(d, None)),
            };
        if gelu {
            match add.take() {
                Some((b, r)) => for_rows(&mut dst, r, &|d, r| add_gelu(d, b, r)),
                None if serial => gelu_slice(&mut dst),
                None => dst.par_chunks_mut(4096).for_each(gelu_slice),
            }
        }
        if let Some((w, nb, eps)) = self.norm {
            with_f32(w, "norm weight", |w| {
                with_f32(nb, "norm bias", |nb| {
                    if w.len() != out || nb.len() != out {
                        candle_core::bail!("fused-linear: norm width mismatch");
                    }
                    match add.take() {
                        Some((b, r)) => for_rows(&mut dst, r, &|d, r| {
                            add_row(d, b, r);
                            layer_norm(d, w, nb, eps)
                        }),
                        None => for_rows(&mut dst, None, &|d, _| layer_norm(d, w, nb, eps)),
                    }
                    Ok(())
                })
            })?;
        }
        if let Some((b, r)) = add {
            for_rows(&mut dst, r, &|d, r| add_row(d, b, r));
        }
        Ok((CpuStorage::F32(dst), Shape::from((rows, out))))
    }
}

/// The int8 feed-forward block: `LayerNorm(x + b2 + GELU(x @ W1 + b1) @ W2)`, with GELU erf. The
/// intermediate activations go from the first product's tiles straight to the codes the second
/// reads ([`super::int8::QuantWeight::gelu_codes`]): the same bits as two [`FusedLinear`]s, without
/// the `rows x intermediate` f32 output in memory.
pub struct FeedForwardInt8<'a> {
    pub intermediate: &'a super::int8::QuantWeight,
    pub intermediate_bias: &'a Tensor,
    pub output: &'a super::int8::QuantWeight,
    pub output_bias: &'a Tensor,
    /// LayerNorm `(weight, bias, eps)` over each output row.
    pub norm: (&'a Tensor, &'a Tensor, f32),
}

impl CustomOp1 for FeedForwardInt8<'_> {
    fn name(&self) -> &'static str {
        "feed-forward-int8"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "feed-forward input")?;
        let (rows, h) = l.shape().dims2()?;
        let (w1, w2) = (self.intermediate, self.output);
        if w1.inp() != h || w2.inp() != w1.out() || w2.out() != h {
            candle_core::bail!(
                "feed-forward: input width {h}, weights {}x{} and {}x{}",
                w1.inp(),
                w1.out(),
                w2.inp(),
                w2.out()
            );
        }
        let codes = with_f32(self.intermediate_bias, "bias", |b1| {
            if b1.len() != w1.out() {
                candle_core::bail!("feed-forward: intermediate bias width mismatch");
            }
            Ok(w1.gelu_codes(x, rows, b1, w2))
        })?;
        let mut dst: Vec<f32> = Vec::with_capacity(rows * h);
        with_f32(self.output_bias, "bias", |b2| {
            if b2.len() != h {
                candle_core::bail!("feed-forward: output bias width mismatch");
            }
            w2.codes_product_into(&codes, rows, b2, Some(x), dst.spare_capacity_mut(), false);
            Ok(())
        })?;
        // Safety: codes_product_into wrote every one of the rows * h elements.
        unsafe { dst.set_len(rows * h) };
        let serial = rows * h <= SERIAL_ELEMENTS || !may_split();
        FusedLinear {
            weight: None,
            packed: None,
            quant: Some(w2),
            bias: self.output_bias,
            residual: None,
            gelu: false,
            norm: Some(self.norm),
        }
        .finish(dst, rows, h, serial, false, None)
    }
}

/// The embedding sums `(word[id] + type[type id]) + position[p]` of `ids.len() / seq` sequences of
/// `seq` tokens, as a `(tokens, hidden)` tensor: candle's `index_select` and two additions give the
/// same bits, but run their additions on candle's own thread pool, whose workers spin beside the
/// encoder's threads. Here the rows are summed on the calling thread, or split across the pool
/// when the encoder may split.
pub fn embedding_sums(
    word: &Tensor,
    token_type: &Tensor,
    position: &Tensor,
    ids: &[u32],
    types: &[u32],
    seq: usize,
) -> Result<Tensor> {
    let (vocab, h) = word.dims2()?;
    let (type_vocab, max_pos) = (token_type.dims2()?.0, position.dims2()?.0);
    if ids.is_empty() && types.is_empty() {
        return Tensor::zeros((0, h), candle_core::DType::F32, &candle_core::Device::Cpu);
    }
    if types.len() != ids.len() || seq == 0 || seq > max_pos || !ids.len().is_multiple_of(seq) {
        candle_core::bail!(
            "embeddings: {} ids, {} type ids, {seq} per sequence",
            ids.len(),
            types.len()
        );
    }
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
        candle_core::bail!(
            "token id {id} is outside the model's {vocab} word embeddings: the tokenizer does not \
             belong to this checkpoint (use the tokenizer.json that came with its config.json)"
        );
    }
    if let Some(&t) = types.iter().find(|&&t| t as usize >= type_vocab) {
        candle_core::bail!("token type {t} is outside the model's {type_vocab} token types");
    }
    let mut out = vec![0f32; ids.len() * h];
    with_f32(word, "word embeddings", |w| {
        with_f32(token_type, "token type embeddings", |t| {
            with_f32(position, "position embeddings", |p| {
                let row = |(i, o): (usize, &mut [f32])| {
                    let w = &w[ids[i] as usize * h..][..h];
                    let t = &t[types[i] as usize * h..][..h];
                    let p = &p[(i % seq) * h..][..h];
                    for (((o, w), t), p) in o.iter_mut().zip(w).zip(t).zip(p) {
                        *o = (w + t) + p;
                    }
                };
                if may_split() && ids.len() * h > SERIAL_ELEMENTS {
                    out.par_chunks_mut(h).enumerate().for_each(row);
                } else {
                    out.chunks_mut(h).enumerate().for_each(row);
                }
                Ok(())
            })
        })
    })?;
    Tensor::from_vec(out, (ids.len(), h), &candle_core::Device::Cpu)
}

/// A pass over one output row, given the residual's row (if any).
type RowFn<'a> = dyn Fn(&mut [f32], Option<&[f32]>) + Sync + 'a;

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
fn add_row_generic(x: &mut [f32], bias: &[f32], residual: Option<&[f32]>) {
    add_map(x, bias, residual, |v| v)
}

simd_dispatch! {
    /// `x += residual + bias`, one row.
    fn add_row = add_row_generic(x: &mut [f32], bias: &[f32], residual: Option<&[f32]>)
}

#[inline(always)]
fn add_gelu_generic(x: &mut [f32], bias: &[f32], residual: Option<&[f32]>) {
    add_map(x, bias, residual, gelu_erf)
}

simd_dispatch! {
    /// `x = GELU(x + (residual + bias))`, one row.
    fn add_gelu = add_gelu_generic(x: &mut [f32], bias: &[f32], residual: Option<&[f32]>)
}

/// Up to this many output values, a projection's elementwise passes run on the calling thread.
const SERIAL_ELEMENTS: usize = 1 << 15;

/// Up to this many rows (a query or a few), a projection runs on weights packed once, with the tile
/// kernel: the general GEMM packs the whole weight matrix on every call, which for a handful of rows
/// costs more than the products.
pub const SMALL_ROWS: usize = 64;

/// A `(inp, out)` weight packed into panels of [`TILE_R`] output columns, k-major
/// (`panel[k * TILE_R + j]`), the last panel padded with zero columns.
pub struct PackedWeight {
    inp: usize,
    out: usize,
    panels: Vec<f32>,
}

impl PackedWeight {
    pub fn of(weight: &Tensor) -> Result<PackedWeight> {
        let (inp, out) = weight.dims2()?;
        with_f32(weight, "weight", |w| {
            let np = out.div_ceil(TILE_R);
            let mut panels = vec![0f32; np * inp * TILE_R];
            for (p, panel) in panels.chunks_exact_mut(inp * TILE_R).enumerate() {
                let cols = (out - p * TILE_R).min(TILE_R);
                for k in 0..inp {
                    panel[k * TILE_R..k * TILE_R + cols]
                        .copy_from_slice(&w[k * out + p * TILE_R..k * out + p * TILE_R + cols]);
                }
            }
            Ok(PackedWeight { inp, out, panels })
        })
    }

    /// `dst (rows x out) += x (rows x inp) @ W`.
    fn add_product(&self, x: &[f32], rows: usize, dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::simd::level() == crate::simd::Level::Avx512 {
            return self.add_product_wide(x, rows, dst);
        }
        self.add_product_tiles(x, rows, dst)
    }

    /// [`PackedWeight::add_product`] with the 6 x 16 tile kernel, any row count.
    fn add_product_tiles(&self, x: &[f32], rows: usize, dst: &mut [f32]) {
        let (inp, out) = (self.inp, self.out);
        // The rows in panels of TILE_Q, k-major, zero-padded.
        let qp = rows.div_ceil(TILE_Q);
        let mut a = vec![0f32; qp * inp * TILE_Q];
        for (r, src) in x.chunks_exact(inp).take(rows).enumerate() {
            let panel = &mut a[(r / TILE_Q) * inp * TILE_Q..][..inp * TILE_Q];
            for (k, &v) in src.iter().enumerate() {
                panel[k * TILE_Q + r % TILE_Q] = v;
            }
        }
        let tile = crate::simd::score_tile_kernel();
        let never = [f32::INFINITY; TILE_Q];
        let dst_ptr = SharedMut(dst.as_mut_ptr());
        // Column panels in parallel (each writes its own columns of dst), unless this already runs
        // on a worker (batches in parallel).
        let run = |p: usize, b: &[f32]| {
            let mut t = [0f32; TILE_Q * TILE_R];
            let cols = (out - p * TILE_R).min(TILE_R);
            for q in 0..qp {
                tile(
                    inp,
                    &a[q * inp * TILE_Q..][..inp * TILE_Q],
                    b,
                    &never,
                    &mut t,
                );
                let n = (rows - q * TILE_Q).min(TILE_Q);
                // Safety: rows q*TILE_Q.. +n <= rows of dst (rows x out); this task owns panel p.
                unsafe { add_tile(dst_ptr, out, p, cols, q * TILE_Q, &t[..n * TILE_R]) };
            }
        };
        self.for_each_panel(run);
    }
}

impl PackedWeight {
    /// Runs `run(p, panel p)` for every column panel: in parallel, unless this already runs on a
    /// worker (batches in parallel).
    fn for_each_panel(&self, run: impl Fn(usize, &[f32]) + Send + Sync) {
        let size = self.inp * TILE_R;
        if may_split() {
            self.panels
                .par_chunks_exact(size)
                .enumerate()
                .for_each(|(p, b)| run(p, b));
        } else {
            self.panels
                .chunks_exact(size)
                .enumerate()
                .for_each(|(p, b)| run(p, b));
        }
    }
}

/// Adds a tile's rows (`t`: [`TILE_R`] values each) into rows `r0..` of `dst` (`out` wide), columns
/// `p * TILE_R ..` + `cols`.
///
/// Safety: those rows and columns lie inside `dst`, and no other task writes them meanwhile.
unsafe fn add_tile(dst: SharedMut, out: usize, p: usize, cols: usize, r0: usize, t: &[f32]) {
    for (i, t) in t.chunks_exact(TILE_R).enumerate() {
        let d = std::slice::from_raw_parts_mut(dst.ptr().add((r0 + i) * out + p * TILE_R), cols);
        for (d, v) in d.iter_mut().zip(t) {
            *d += v;
        }
    }
}

/// Up to this many rows at a time, the AVX-512 small-batch product runs them against each weight panel
/// in one pass (one accumulator register per row): a query's projections read each weight once
/// instead of once per 6-row tile, and for a query the weights come from memory, not cache.
#[cfg(target_arch = "x86_64")]
const WIDE_ROWS: usize = 24;

#[cfg(target_arch = "x86_64")]
impl PackedWeight {
    /// [`PackedWeight::add_product`] on AVX-512: the rows in chunks of at most [`WIDE_ROWS`] (as even
    /// as the count allows), each packed k-major in one panel, and a kernel compiled for each chunk's
    /// row count (no padding rows: a query is 9 tokens on average). Each weight panel goes through every
    /// chunk while it is in cache: a query of up to 24 tokens reads each weight once, one of 25-48
    /// twice, where the 6-row tiles read it once per tile. Each output is the same sequence of FMAs over
    /// k as in the 6 x 16 tile kernel, so the result has the same bits.
    fn add_product_wide(&self, x: &[f32], rows: usize, dst: &mut [f32]) {
        let (inp, out) = (self.inp, self.out);
        if rows == 0 {
            return;
        }
        let chunks = rows.div_ceil(WIDE_ROWS);
        // (first row, row count, rows packed k-major) of each chunk.
        let mut packed = Vec::with_capacity(chunks);
        let mut r0 = 0;
        for c in 0..chunks {
            let r = (rows - r0).div_ceil(chunks - c);
            let mut a = vec![0f32; inp * r];
            for (i, src) in x.chunks_exact(inp).skip(r0).take(r).enumerate() {
                for (k, &v) in src.iter().enumerate() {
                    a[k * r + i] = v;
                }
            }
            packed.push((r0, r, a));
            r0 += r;
        }
        let dst_ptr = SharedMut(dst.as_mut_ptr());
        let run = |p: usize, b: &[f32]| {
            let mut t = [0f32; WIDE_ROWS * TILE_R];
            let cols = (out - p * TILE_R).min(TILE_R);
            for &(first, r, ref a) in &packed {
                assert!(b.len() >= inp * TILE_R && a.len() >= inp * r && r <= WIDE_ROWS);
                // Safety: the CPU has AVX-512 F (the caller checked the level); the assert bounds the
                // loads.
                macro_rules! rows {
                    ($($n:literal)*) => {
                        match r {
                            $($n => unsafe {
                                rows_panel_avx512::<$n>(inp, a.as_ptr(), b.as_ptr(), t.as_mut_ptr())
                            },)*
                            _ => unreachable!("{r} rows in the wide product"),
                        }
                    };
                }
                rows!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24);
                // Safety: rows first..first+n of dst (rows x out); this task owns panel p.
                unsafe { add_tile(dst_ptr, out, p, cols, first, &t[..r * TILE_R]) };
            }
        };
        self.for_each_panel(run);
    }
}

/// `out[i * 16 + j] = sum_k a[k * R + i] * b[k * 16 + j]`, one 16-lane accumulator per row, FMAs in
/// order of k.
///
/// Safety: AVX-512 F; `a` holds `k * R` values, `b` `k * 16`, `out` `R * 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_panel_avx512<const R: usize>(k: usize, a: *const f32, b: *const f32, out: *mut f32) {
    use std::arch::x86_64::*;
    let mut c = [_mm512_setzero_ps(); R];
    for t in 0..k {
        // 8 KiB ahead in the panel (past its end is harmless: a prefetch does not fault).
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((t + 128) * TILE_R) as *const i8);
        let w = _mm512_loadu_ps(b.add(t * TILE_R));
        for (i, c) in c.iter_mut().enumerate() {
            *c = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(t * R + i)), w, *c);
        }
    }
    for (i, &c) in c.iter().enumerate() {
        _mm512_storeu_ps(out.add(i * TILE_R), c);
    }
}

/// Attention context from the fused QKV projection `(batch * seq, 3 * hidden)`.
pub struct FusedAttention<'a> {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Real tokens of each sequence (the rest is padding).
    pub lengths: &'a [usize],
    pub scale: f32,
    /// Only the first token's row of each sequence: the output is `(batch, hidden)`.
    pub first_token_only: bool,
}

impl CustomOp1 for FusedAttention<'_> {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(s, l, "fused-attention input")?;
        let (b, sq, nh, hd) = (self.batch, self.seq, self.heads, self.head_dim);
        let h = nh * hd;
        if qkv.len() != b * sq * 3 * h || self.lengths.len() != b {
            candle_core::bail!("fused-attention: shape mismatch");
        }
        if self.first_token_only {
            return Ok((CpuStorage::F32(self.first_rows(qkv)), Shape::from((b, h))));
        }
        // Every value is written once: the real rows by their (sequence, head) tasks, the padding
        // rows (zero) by each sequence's head-0 task.
        let mut ctx: Vec<f32> = Vec::with_capacity(b * sq * h);
        let out = SharedMut(ctx.as_mut_ptr());
        let tiles = super::attention::supported(hd);
        (0..b * nh).into_par_iter().for_each_init(
            Default::default,
            |(scores, scratch): &mut (Vec<f32>, super::attention::Scratch), task| {
                let (bi, head) = (task / nh, task % nh);
                let len = self.lengths[bi].min(sq);
                let row0 = bi * sq;
                if head == 0 {
                    // Safety: rows row0+len..row0+sq of ctx (b*sq x h) are this sequence's padding,
                    // written by no other task.
                    unsafe {
                        std::ptr::write_bytes(out.ptr().add((row0 + len) * h), 0, (sq - len) * h)
                    };
                }
                if len == 0 {
                    return;
                }
                let q = qkv[row0 * 3 * h + head * hd..].as_ptr();
                let k = qkv[row0 * 3 * h + h + head * hd..].as_ptr();
                let v = qkv[row0 * 3 * h + 2 * h + head * hd..].as_ptr();
                #[cfg(target_arch = "x86_64")]
                if tiles {
                    let io = super::attention::HeadIo {
                        q,
                        k,
                        v,
                        stride: 3 * h,
                        // Safety: row row0 of ctx (b*sq x h), this head's columns.
                        out: unsafe { out.ptr().add(row0 * h + head * hd) },
                        out_stride: h,
                    };
                    // Safety: the level and head size were checked (`tiles`); rows row0..row0+len of
                    // qkv and ctx, this head's columns, which no other task writes.
                    unsafe { super::attention::head(len, hd, self.scale, io, scratch) };
                    return;
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (tiles, &scratch);
                // The task's scores, len rows at stride ld, all written by the product (what an
                // earlier task left in the buffer, including the columns past len, is not used).
                let ld = score_stride(len);
                if scores.len() < len * ld {
                    scores.resize(len * ld, 0.0);
                }
                // Safety: every pointer stays inside its buffer: rows row0..row0+len of qkv (stride 3h)
                // and of ctx (stride h), columns head*hd..(head+1)*hd; tasks write disjoint (row, head)
                // blocks of ctx.
                unsafe {
                    // scores (len x len) = Q (len x hd) @ K^T (hd x len)
                    gemm_f32(
                        len,
                        len,
                        hd,
                        scores.as_mut_ptr(),
                        ld as isize,
                        false,
                        q,
                        3 * h as isize,
                        1,
                        k,
                        1,
                        3 * h as isize,
                        false,
                    );
                }
                for row in scores[..len * ld].chunks_mut(ld) {
                    softmax_padded(row, len, self.scale);
                }
                unsafe {
                    // ctx (len x hd) = P (len x len) @ V (len x hd)
                    let dst = out.ptr().add(row0 * h + head * hd);
                    gemm_f32(
                        len,
                        hd,
                        len,
                        dst,
                        h as isize,
                        false,
                        scores.as_ptr(),
                        ld as isize,
                        1,
                        v,
                        3 * h as isize,
                        1,
                        false,
                    );
                }
            },
        );
        // Safety: the tasks wrote every one of the b * sq * h values (see above).
        unsafe { ctx.set_len(b * sq * h) };
        Ok((CpuStorage::F32(ctx), Shape::from((b * sq, h))))
    }
}

impl FusedAttention<'_> {
    /// The attention context of each sequence's first token, `(batch, hidden)`: one query row against
    /// the sequence's real keys, per (sequence, head).
    fn first_rows(&self, qkv: &[f32]) -> Vec<f32> {
        let (sq, nh, hd) = (self.seq, self.heads, self.head_dim);
        let h = nh * hd;
        let mut ctx = vec![0f32; self.batch * h];
        ctx.par_chunks_mut(h)
            .enumerate()
            .for_each_init(Vec::new, |scores, (bi, out)| {
                let len = self.lengths[bi].min(sq);
                let row = |t: usize| &qkv[(bi * sq + t) * 3 * h..][..3 * h];
                for head in 0..nh {
                    let q = &row(0)[head * hd..][..hd];
                    scores.clear();
                    scores.extend((0..len).map(|t| {
                        let k = &row(t)[h + head * hd..][..hd];
                        q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>()
                    }));
                    softmax(scores, self.scale);
                    let o = &mut out[head * hd..][..hd];
                    for (t, &p) in scores.iter().enumerate() {
                        let v = &row(t)[2 * h + head * hd..][..hd];
                        for (o, v) in o.iter_mut().zip(v) {
                            *o += p * v;
                        }
                    }
                }
            });
        ctx
    }
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

    /// The embedding sums give the bits of candle's index_select and additions, split or not, and a
    /// token id past the vocabulary is an error that names the tokenizer.
    #[test]
    fn embedding_sums_match_candles_ops() {
        let dev = candle_core::Device::Cpu;
        let (vocab, h, types_n, max_pos) = (50, 24, 2, 16);
        let t = |n: usize, m: usize, d: f32| -> Tensor {
            let v: Vec<f32> = (0..n * h)
                .map(|i| ((i * m % 101) as f32 - 50.0) / d)
                .collect();
            Tensor::from_vec(v, (n, h), &dev).unwrap()
        };
        let (word, ty, pos) = (t(vocab, 7, 9.0), t(types_n, 3, 11.0), t(max_pos, 5, 13.0));
        let (b, s) = (3, 7);
        let ids: Vec<u32> = (0..b * s).map(|i| (i * 13 % vocab) as u32).collect();
        let types: Vec<u32> = (0..b * s).map(|i| (i % s > 3) as u32).collect();
        let idt = Tensor::from_vec(ids.clone(), b * s, &dev).unwrap();
        let tyt = Tensor::from_vec(types.clone(), b * s, &dev).unwrap();
        let want = (word
            .index_select(&idt, 0)
            .unwrap()
            .reshape((b, s, h))
            .unwrap()
            + ty.index_select(&tyt, 0)
                .unwrap()
                .reshape((b, s, h))
                .unwrap())
        .unwrap()
        .broadcast_add(&pos.narrow(0, 0, s).unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
        for split in [false, true] {
            let got = with_splitting(split, || embedding_sums(&word, &ty, &pos, &ids, &types, s))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "split {split}");
        }
        let empty = embedding_sums(&word, &ty, &pos, &[], &[], 0).unwrap();
        assert_eq!(empty.dims(), &[0, h]);
        let mut bad = ids.clone();
        bad[4] = vocab as u32;
        let e = embedding_sums(&word, &ty, &pos, &bad, &types, s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("token id 50") && e.contains("tokenizer"), "{e}");
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

    /// The one-pass AVX-512 product for a few rows gives the bits of the 6 x 16 tile kernel.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn wide_rows_match_the_tile_kernel() {
        if crate::simd::level() != crate::simd::Level::Avx512 {
            return;
        }
        let (inp, out) = (70, 40);
        let w: Vec<f32> = (0..inp * out)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 31.0)
            .collect();
        let packed =
            PackedWeight::of(&Tensor::from_vec(w, (inp, out), &candle_core::Device::Cpu).unwrap())
                .unwrap();
        for rows in 1..=SMALL_ROWS + 3 {
            let x: Vec<f32> = (0..rows * inp)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0)
                .collect();
            let mut a = vec![0.5f32; rows * out];
            let mut b = a.clone();
            packed.add_product_wide(&x, rows, &mut a);
            packed.add_product_tiles(&x, rows, &mut b);
            assert!(
                a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{rows} rows"
            );
        }
    }

    /// A batch's projection followed by GELU or LayerNorm adds its bias and residual in that pass
    /// (the GEMM writes the product alone): the same bits as filling the output with `residual +
    /// bias`, adding the product (the path without a following pass), then GELU or LayerNorm, for a
    /// width the GEMM sums in one step; serial and split.
    #[test]
    fn bias_and_residual_in_the_following_pass_match_fill_then_add() {
        let dev = candle_core::Device::Cpu;
        let (rows, inp, out) = (SMALL_ROWS + 37, 48, 40);
        let val = |n: usize, m: usize, d: f32| -> Vec<f32> {
            (0..n).map(|i| ((i * m % 97) as f32 - 48.0) / d).collect()
        };
        let t = |v: Vec<f32>, shape: &[usize]| Tensor::from_vec(v, shape, &dev).unwrap();
        let weight = t(val(inp * out, 37, 40.0), &[inp, out]);
        let bias = t(val(out, 11, 30.0), &[out]);
        let residual = t(val(rows * out, 13, 20.0), &[rows, out]);
        let (nw, nb) = (t(val(out, 7, 50.0), &[out]), t(val(out, 5, 60.0), &[out]));
        let x = t(val(rows * inp, 17, 25.0), &[rows, inp]);
        let linear = |with_residual: bool, gelu: bool, norm: bool| FusedLinear {
            weight: Some(&weight),
            packed: None,
            quant: None,
            bias: &bias,
            residual: with_residual.then_some(&residual),
            gelu,
            norm: norm.then_some((&nw, &nb, 1e-12)),
        };
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        for split in [false, true] {
            with_splitting(split, || {
                for res in [false, true] {
                    // Fill, then add the product (no pass follows), then the pass by hand.
                    let plain = x.apply_op1_no_bwd(&linear(res, false, false)).unwrap();
                    let mut want = plain.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    gelu_slice(&mut want);
                    let got = x.apply_op1_no_bwd(&linear(res, true, false)).unwrap();
                    let want: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(bits(&got), want, "GELU, residual {res}");
                    let mut want = plain.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let (w, b) = (nw.to_vec1::<f32>().unwrap(), nb.to_vec1::<f32>().unwrap());
                    want.chunks_mut(out)
                        .for_each(|row| layer_norm(row, &w, &b, 1e-12));
                    let got = x.apply_op1_no_bwd(&linear(res, false, true)).unwrap();
                    let want: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(bits(&got), want, "LayerNorm, residual {res}");
                }
            })
        }
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
