//! The crate's SIMD kernels, chosen once per process by one rule: the CPU's [`Level`] is detected
//! once, and every kernel family picks its implementation by matching on it.
//!
//! | kernel | AVX-512F | AVX2 + FMA | portable | used by |
//! |---|---|---|---|---|
//! | `dot` (f32 . f32) | intrinsics | intrinsics | 8-lane loop | graph walk re-scoring |
//! | `dot_u8` (f32 . u8 codes) | intrinsics | intrinsics | 8-lane loop | graph build and walk |
//! | GELU, softmax, LayerNorm | generic code compiled for the level ([`simd_dispatch!`]) | same | same | `model::cpu_ops` |
//! | `score_tile` (6 queries x 16 rows, with the top-k test) | the AVX2 kernel | intrinsics | 16-lane loop | exact search |
//!
//! The encoder's matrix products go through the `gemm` crate, which makes its own choice of kernel.

use std::sync::OnceLock;

/// The widest instruction set this CPU runs that the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Avx512,
    Avx2Fma,
    Portable,
}

/// The CPU's level, detected on first use.
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                return Level::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Level::Avx2Fma;
            }
        }
        Level::Portable
    })
}

/// Defines `fn $name(args)`, which runs the `#[inline(always)]` function `$generic` compiled for
/// the CPU's [`Level`] (plain arithmetic loops that the compiler vectorises for the wider registers).
macro_rules! simd_dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident = $generic:ident($($arg:ident: $ty:ty),*)) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $generic($($arg),*)
                }
                match $crate::simd::level() {
                    // Safety: the CPU has the features the function is compiled for.
                    $crate::simd::Level::Avx512 => return unsafe { avx512($($arg),*) },
                    // Safety: as above.
                    $crate::simd::Level::Avx2Fma => return unsafe { avx2($($arg),*) },
                    $crate::simd::Level::Portable => {}
                }
            }
            $generic($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;

/// An inner-product kernel for equal-length slices.
pub type DotFn = fn(&[f32], &[f32]) -> f32;

/// An inner-product kernel between f32 weights and u8 codes of equal length.
pub type DotU8Fn = fn(&[f32], &[u8]) -> f32;

/// The inner-product kernel for this CPU (taken once by the caller, so hot loops pay no dispatch per
/// call).
pub fn dot_kernel() -> DotFn {
    match level() {
        // Safety (both): the level says the CPU has the features the kernel is compiled for.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => |a, b| unsafe { dot_avx512(a, b) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2Fma => |a, b| unsafe { dot_avx2(a, b) },
        _ => dot_portable,
    }
}

/// The `sum(w[i] * c[i])` kernel over u8 codes for this CPU.
pub fn dot_u8_kernel() -> DotU8Fn {
    match level() {
        // Safety (both): the level says the CPU has the features the kernel is compiled for.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => |w, c| unsafe { dot_u8_avx512(w, c) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2Fma => |w, c| unsafe { dot_u8_avx2(w, c) },
        _ => dot_u8_portable,
    }
}

fn dot_u8_portable(w: &[f32], c: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = w.len().min(c.len()) / 8;
    for i in 0..chunks {
        for j in 0..8 {
            acc[j] += w[i * 8 + j] * c[i * 8 + j] as f32;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..w.len().min(c.len()) {
        s += w[i] * c[i] as f32;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_u8_avx2(w: &[f32], c: &[u8]) -> f32 {
    use std::arch::x86_64::*;
    let n = w.len().min(c.len());
    let (pw, pc) = (w.as_ptr(), c.as_ptr());
    // Eight codes widened to f32 lanes.
    let widen = |i: usize| {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
            pc.add(i) as *const __m128i
        )))
    };
    // Four independent sums, so that the FMA latency does not serialize the loop.
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(_mm256_loadu_ps(pw.add(i + 8 * j)), widen(i + 8 * j), *a);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pw.add(i)), widen(i), acc[0]);
        i += 8;
    }
    let acc = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    let mut s: f32 = lanes.iter().sum();
    while i < n {
        s += *pw.add(i) * *pc.add(i) as f32;
        i += 1;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_u8_avx512(w: &[f32], c: &[u8]) -> f32 {
    use std::arch::x86_64::*;
    let n = w.len().min(c.len());
    let (pw, pc) = (w.as_ptr(), c.as_ptr());
    let mut acc0 = _mm512_setzero_ps();
    let mut acc1 = _mm512_setzero_ps();
    let mut i = 0;
    while i + 32 <= n {
        let c0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(
            pc.add(i) as *const __m128i
        )));
        let c1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(
            pc.add(i + 16) as *const __m128i
        )));
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pw.add(i)), c0, acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(pw.add(i + 16)), c1, acc1);
        i += 32;
    }
    if i + 16 <= n {
        let c0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(
            pc.add(i) as *const __m128i
        )));
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pw.add(i)), c0, acc0);
        i += 16;
    }
    let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    while i < n {
        s += *pw.add(i) * *pc.add(i) as f32;
        i += 1;
    }
    s
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for i in 0..chunks {
        for j in 0..8 {
            acc[j] += a[i * 8 + j] * b[i * 8 + j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 8)),
            _mm256_loadu_ps(pb.add(i + 8)),
            acc1,
        );
        i += 16;
    }
    if i + 8 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        i += 8;
    }
    let acc = _mm256_add_ps(acc0, acc1);
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    let mut s: f32 = lanes.iter().sum();
    while i < n {
        s += *pa.add(i) * *pb.add(i);
        i += 1;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm512_setzero_ps();
    let mut acc1 = _mm512_setzero_ps();
    let mut i = 0;
    while i + 32 <= n {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm512_fmadd_ps(
            _mm512_loadu_ps(pa.add(i + 16)),
            _mm512_loadu_ps(pb.add(i + 16)),
            acc1,
        );
        i += 32;
    }
    if i + 16 <= n {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
        i += 16;
    }
    if i < n {
        // The tail, masked: lanes past the end load as zero.
        let m: __mmask16 = ((1u32 << (n - i)) - 1) as u16;
        acc1 = _mm512_fmadd_ps(
            _mm512_maskz_loadu_ps(m, pa.add(i)),
            _mm512_maskz_loadu_ps(m, pb.add(i)),
            acc1,
        );
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
}

/// Asks for the `len` bytes at `p` ahead of their use.
#[inline(always)]
pub(crate) fn prefetch(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut o = 0;
        while o < len {
            // Safety: prefetching is a hint and never faults; the address is only computed.
            unsafe { _mm_prefetch(p.wrapping_add(o) as *const i8, _MM_HINT_T0) };
            o += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// Queries in one tile (the broadcast side of [`score_tile_kernel`]).
pub const TILE_Q: usize = 6;
/// Rows in one tile (two 8-lane registers).
pub const TILE_R: usize = 16;

/// What one tile reports: for each of its queries, the bits of the rows that scored at or above the
/// query's threshold, and whether any score was not finite (NaN or infinite).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileHits {
    pub at_or_above: [u16; TILE_Q],
    pub non_finite: bool,
}

/// The exact-search tile kernel: `out[i * TILE_R + j] = a_i . b_j` for a panel of [`TILE_Q`] queries
/// and one of [`TILE_R`] rows, both packed k-major (`a[k * TILE_Q + i]`, `b[k * TILE_R + j]`, `dim`
/// steps of k), and each score compared with its query's threshold `thr[i]` while still in registers.
pub type TileFn = fn(
    dim: usize,
    a: &[f32],
    b: &[f32],
    thr: &[f32; TILE_Q],
    out: &mut [f32; TILE_Q * TILE_R],
) -> TileHits;

/// The tile kernel for this CPU: AVX-512 where the CPU has it, else AVX2 + FMA, else portable.
pub fn score_tile_kernel() -> TileFn {
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 {
        return |dim, a, b, thr, out| {
            assert!(a.len() >= dim * TILE_Q && b.len() >= dim * TILE_R);
            // Safety: the CPU has AVX-512 F (the level), and the assert bounds every load.
            unsafe { score_tile_avx512(dim, a.as_ptr(), b.as_ptr(), thr, out) }
        };
    }
    if level() != Level::Portable {
        if let Some(avx2) = avx2_tile() {
            return avx2;
        }
    }
    score_tile_portable
}

/// The AVX2 + FMA tile kernel, where the CPU has both (the dispatch's choice below AVX-512, and the
/// twin the tests compare the AVX-512 kernel with).
pub(crate) fn avx2_tile() -> Option<TileFn> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        return Some(|dim, a, b, thr, out| {
            assert!(a.len() >= dim * TILE_Q && b.len() >= dim * TILE_R);
            // Safety: the CPU has AVX2 and FMA (checked when the kernel was chosen), and the assert
            // bounds every load to the two slices.
            unsafe { score_tile_avx2(dim, a.as_ptr(), b.as_ptr(), thr, out) }
        });
    }
    None
}

/// The portable tile kernel, for tests that compare it with the one the CPU runs.
#[cfg(test)]
pub(crate) fn tests_portable_tile() -> TileFn {
    score_tile_portable
}

fn score_tile_portable(
    dim: usize,
    a: &[f32],
    b: &[f32],
    thr: &[f32; TILE_Q],
    out: &mut [f32; TILE_Q * TILE_R],
) -> TileHits {
    let mut acc = [[0f32; TILE_R]; TILE_Q];
    for (ak, bk) in a[..dim * TILE_Q]
        .chunks_exact(TILE_Q)
        .zip(b[..dim * TILE_R].chunks_exact(TILE_R))
    {
        for (row, &x) in acc.iter_mut().zip(ak) {
            for (c, &y) in row.iter_mut().zip(bk) {
                *c += x * y;
            }
        }
    }
    let mut hits = TileHits {
        at_or_above: [0; TILE_Q],
        non_finite: false,
    };
    for (i, row) in acc.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            out[i * TILE_R + j] = v;
            hits.non_finite |= !v.is_finite();
            if v >= thr[i] {
                hits.at_or_above[i] |= 1 << j;
            }
        }
    }
    hits
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn score_tile_avx2(
    dim: usize,
    a: *const f32,
    b: *const f32,
    thr: &[f32; TILE_Q],
    out: &mut [f32; TILE_Q * TILE_R],
) -> TileHits {
    use std::arch::x86_64::*;
    // Twelve accumulators (6 queries x 2 halves of 8 rows), two row registers and one broadcast:
    // 15 of the 16 registers, the classic 6 x 16 shape.
    let mut c = [[_mm256_setzero_ps(); 2]; TILE_Q];
    let (mut pa, mut pb) = (a, b);
    for _ in 0..dim {
        let b0 = _mm256_loadu_ps(pb);
        let b1 = _mm256_loadu_ps(pb.add(8));
        for (i, ci) in c.iter_mut().enumerate() {
            let x = _mm256_broadcast_ss(&*pa.add(i));
            ci[0] = _mm256_fmadd_ps(x, b0, ci[0]);
            ci[1] = _mm256_fmadd_ps(x, b1, ci[1]);
        }
        pa = pa.add(TILE_Q);
        pb = pb.add(TILE_R);
    }
    // x * 0 is 0 for a finite x and NaN otherwise: the sum is 0 exactly when every score is finite.
    let zero = _mm256_setzero_ps();
    let mut nf = zero;
    let mut hits = TileHits {
        at_or_above: [0; TILE_Q],
        non_finite: false,
    };
    for (i, ci) in c.iter().enumerate() {
        let o = out.as_mut_ptr().add(i * TILE_R);
        _mm256_storeu_ps(o, ci[0]);
        _mm256_storeu_ps(o.add(8), ci[1]);
        nf = _mm256_add_ps(
            nf,
            _mm256_add_ps(_mm256_mul_ps(ci[0], zero), _mm256_mul_ps(ci[1], zero)),
        );
        let t = _mm256_set1_ps(thr[i]);
        let lo = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(ci[0], t)) as u16;
        let hi = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(ci[1], t)) as u16;
        hits.at_or_above[i] = lo | hi << 8;
    }
    hits.non_finite = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NEQ_UQ>(nf, zero)) != 0;
    hits
}

/// The AVX2 kernel's tile with one 16-lane register per query (a panel's sixteen rows at one k): six
/// accumulators, one row load and six broadcasts a step, the same FMAs in the same order (the same
/// bits), and the threshold compare straight into a 16-bit mask.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn score_tile_avx512(
    dim: usize,
    a: *const f32,
    b: *const f32,
    thr: &[f32; TILE_Q],
    out: &mut [f32; TILE_Q * TILE_R],
) -> TileHits {
    use std::arch::x86_64::*;
    let mut c = [_mm512_setzero_ps(); TILE_Q];
    let (mut pa, mut pb) = (a, b);
    for _ in 0..dim {
        let r = _mm512_loadu_ps(pb);
        for (i, ci) in c.iter_mut().enumerate() {
            *ci = _mm512_fmadd_ps(_mm512_set1_ps(*pa.add(i)), r, *ci);
        }
        pa = pa.add(TILE_Q);
        pb = pb.add(TILE_R);
    }
    // x * 0 is 0 for a finite x and NaN otherwise: the sum is 0 exactly when every score is finite.
    let zero = _mm512_setzero_ps();
    let mut nf = zero;
    let mut hits = TileHits {
        at_or_above: [0; TILE_Q],
        non_finite: false,
    };
    for (i, &ci) in c.iter().enumerate() {
        _mm512_storeu_ps(out.as_mut_ptr().add(i * TILE_R), ci);
        nf = _mm512_add_ps(nf, _mm512_mul_ps(ci, zero));
        hits.at_or_above[i] = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(ci, _mm512_set1_ps(thr[i]));
    }
    hits.non_finite = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(nf, zero) != 0;
    hits
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_the_plain_sum() {
        for n in [0, 1, 7, 8, 15, 16, 17, 384, 768, 1001] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 13 % 7) as f32 - 3.0) / 5.0).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            // The AVX2 kernels directly: dot_kernel picks AVX-512 where the CPU has it.
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // Safety: the CPU supports AVX2 and FMA, checked above.
                let got = unsafe { super::dot_avx2(&a, &b) };
                assert!((got as f64 - want).abs() < 1e-4, "{n}");
            }
            assert!(
                (super::dot_kernel()(&a, &b) as f64 - want).abs() < 1e-4,
                "{n}"
            );
            assert!(
                (super::dot_portable(&a, &b) as f64 - want).abs() < 1e-4,
                "{n}"
            );
            let c: Vec<u8> = (0..n).map(|i| (i * 97 % 256) as u8).collect();
            let want: f64 = a.iter().zip(&c).map(|(x, y)| *x as f64 * *y as f64).sum();
            for f in [super::dot_u8_kernel(), super::dot_u8_portable] {
                assert!(
                    (f(&a, &c) as f64 - want).abs() < 1e-2 + want.abs() * 1e-5,
                    "{n}"
                );
            }
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // Safety: the CPU supports AVX2 and FMA, checked above.
                let got = unsafe { super::dot_u8_avx2(&a, &c) };
                assert!((got as f64 - want).abs() < 1e-2 + want.abs() * 1e-5, "{n}");
            }
        }
    }
}
