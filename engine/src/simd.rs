//! The crate's SIMD kernels, chosen once per process by one rule: the CPU's [`Level`] is detected
//! once, and every kernel family picks its implementation by matching on it.
//!
//! | kernel | AVX-512F | AVX2 + FMA | portable | used by |
//! |---|---|---|---|---|
//! | `dot_u8` (f32 . u8 codes) | intrinsics | intrinsics | 8-lane loop | graph build |
//! | `dot_u8_i16` (i16 . u8 codes, exact integer sums) | intrinsics (BW) | intrinsics | scalar loop | graph walk |
//! | GELU, softmax, LayerNorm | generic code compiled for the level ([`simd_dispatch!`]) | same | same | `model::cpu::elementwise` |
//! | `score_tile` (6 queries x 16 rows, with the top-k test) | intrinsics | intrinsics | 16-lane loop | exact search, small-batch projections |
//! | `score_rows` (1 query x 16 rows read in place, `score_tile`'s arithmetic) | the AVX2 code | intrinsics | scalar loop | graph re-scoring |
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

/// Whether the CPU has AVX-512 VNNI (`vpdpbusd`) with the F and BW instructions beside it: the int8
/// products' tiles and the int8 pre-scan's.
pub(crate) fn has_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
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

/// An inner-product kernel between f32 weights and u8 codes of equal length.
pub type DotU8Fn = fn(&[f32], &[u8]) -> f32;

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

/// An integer inner-product kernel between i16 weights and u8 codes of equal length (at most
/// [`DOT_U8_I16_MAX_LEN`]: below that no 32-bit lane sum can overflow; the lanes are added in 64
/// bits).
pub type DotU8I16Fn = fn(&[i16], &[u8]) -> i64;

/// The longest vectors [`DotU8I16Fn`] takes: every 32-bit lane sum of the kernels holds at most
/// `len / 16` products of at most `255 x 32,767`, which stays below `2^31` up to this length.
pub const DOT_U8_I16_MAX_LEN: usize = 4096;

/// The `sum(w[i] * c[i])` kernel over u8 codes and i16 weights for this CPU: a walk step scores a
/// code in a third of the instructions of [`dot_u8_kernel`]'s (a multiply-add of 32 pairs to 16 lane
/// sums where the f32 kernel widens each code to f32 first).
pub fn dot_u8_i16_kernel() -> DotU8I16Fn {
    match level() {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 if std::is_x86_feature_detected!("avx512bw") => {
            // Safety: the CPU has AVX-512F and BW (checked above).
            |w, c| unsafe { dot_u8_i16_avx512(w, c) }
        }
        // Safety: AVX-512F and AVX2 + FMA CPUs run AVX2.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 | Level::Avx2Fma => |w, c| unsafe { dot_u8_i16_avx2(w, c) },
        _ => dot_u8_i16_portable,
    }
}

fn dot_u8_i16_portable(w: &[i16], c: &[u8]) -> i64 {
    w.iter().zip(c).map(|(&w, &c)| w as i64 * c as i64).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_u8_i16_avx2(w: &[i16], c: &[u8]) -> i64 {
    use std::arch::x86_64::*;
    let n = w.len().min(c.len());
    let (pw, pc) = (w.as_ptr(), c.as_ptr());
    let mut acc = [_mm256_setzero_si256(); 2];
    let mut i = 0;
    while i + 32 <= n {
        for (j, a) in acc.iter_mut().enumerate() {
            let codes = _mm256_cvtepu8_epi16(_mm_loadu_si128(pc.add(i + 16 * j) as *const __m128i));
            let weights = _mm256_loadu_si256(pw.add(i + 16 * j) as *const __m256i);
            *a = _mm256_add_epi32(*a, _mm256_madd_epi16(codes, weights));
        }
        i += 32;
    }
    // Each lane of each sum holds up to `len / 16` products; the two are added in 64 bits.
    let mut lanes = [0i32; 16];
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc[0]);
    _mm256_storeu_si256(lanes.as_mut_ptr().add(8) as *mut __m256i, acc[1]);
    let mut s: i64 = lanes.iter().map(|&x| x as i64).sum();
    while i < n {
        s += *pw.add(i) as i64 * *pc.add(i) as i64;
        i += 1;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn dot_u8_i16_avx512(w: &[i16], c: &[u8]) -> i64 {
    use std::arch::x86_64::*;
    let n = w.len().min(c.len());
    let (pw, pc) = (w.as_ptr(), c.as_ptr());
    let mut acc0 = _mm512_setzero_si512();
    let mut acc1 = _mm512_setzero_si512();
    let mut i = 0;
    while i + 64 <= n {
        let c0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(pc.add(i) as *const __m256i));
        let c1 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(pc.add(i + 32) as *const __m256i));
        acc0 = _mm512_add_epi32(
            acc0,
            _mm512_madd_epi16(c0, _mm512_loadu_si512(pw.add(i) as *const _)),
        );
        acc1 = _mm512_add_epi32(
            acc1,
            _mm512_madd_epi16(c1, _mm512_loadu_si512(pw.add(i + 32) as *const _)),
        );
        i += 64;
    }
    if i + 32 <= n {
        let c0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(pc.add(i) as *const __m256i));
        acc0 = _mm512_add_epi32(
            acc0,
            _mm512_madd_epi16(c0, _mm512_loadu_si512(pw.add(i) as *const _)),
        );
        i += 32;
    }
    // acc0 and acc1 each hold at most half of a lane's products: their sum fits in 32 bits.
    let acc = _mm512_add_epi32(acc0, acc1);
    let wide = _mm512_add_epi64(
        _mm512_cvtepi32_epi64(_mm512_castsi512_si256(acc)),
        _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64::<1>(acc)),
    );
    let mut s = _mm512_reduce_add_epi64(wide);
    while i < n {
        s += *pw.add(i) as i64 * *pc.add(i) as i64;
        i += 1;
    }
    s
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
///
/// Each score is its own lane, summed in one chain over k from +0 with no horizontal reduction, so it
/// depends only on its query and its row (not on the other queries or rows of the tile, nor on where
/// in the tile they are): `s = fma(a_k, b_k, s)` with one rounding per step on AVX2 and AVX-512 (the
/// same bits on both), `s = s + a_k * b_k` with two on the portable kernel ([`tile_score`] computes
/// the same one score at a time, and the graph's re-scoring kernel, [`RowsFn`], the same scores).
pub type TileFn = fn(
    dim: usize,
    a: &[f32],
    b: &[f32],
    thr: &[f32; TILE_Q],
    out: &mut [f32; TILE_Q * TILE_R],
) -> TileHits;

/// The tile kernel for this CPU's [`level`].
pub fn score_tile_kernel() -> TileFn {
    tile_kernel_for(level()).unwrap_or(score_tile_portable)
}

/// The tile kernel of `level`, where this CPU runs it (the portable one always).
pub fn tile_kernel_for(level: Level) -> Option<TileFn> {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 if std::is_x86_feature_detected!("avx512f") => {
            Some(|dim, a, b, thr, out| {
                assert!(a.len() >= dim * TILE_Q && b.len() >= dim * TILE_R);
                // Safety: the CPU has AVX-512 F (checked when the kernel was chosen), and the assert
                // bounds every load to the two slices.
                unsafe { score_tile_avx512(dim, a.as_ptr(), b.as_ptr(), thr, out) }
            })
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx2Fma
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") =>
        {
            Some(|dim, a, b, thr, out| {
                assert!(a.len() >= dim * TILE_Q && b.len() >= dim * TILE_R);
                // Safety: the CPU has AVX2 and FMA (checked when the kernel was chosen), and the
                // assert bounds every load to the two slices.
                unsafe { score_tile_avx2(dim, a.as_ptr(), b.as_ptr(), thr, out) }
            })
        }
        Level::Portable => Some(score_tile_portable),
        _ => None,
    }
}

/// Every level whose tile kernel this CPU runs, with the kernel.
pub fn tile_kernels() -> Vec<(Level, TileFn)> {
    [Level::Avx512, Level::Avx2Fma, Level::Portable]
        .into_iter()
        .filter_map(|l| Some((l, tile_kernel_for(l)?)))
        .collect()
}

/// Rows scored at a time by a [`RowsFn`].
pub const ROWS: usize = 16;

/// The graph's re-scoring kernel: `out[j] = q . rows[j]` for up to [`ROWS`] rows (each at least
/// `q.len()` long, read in place), every score the same chain over k as in the [`TileFn`] of the same
/// level, so the same bits as exact search. It reads the rows as they lie (no packing) and turns
/// blocks of them around in registers, so that each lane again holds one row's chain.
pub type RowsFn = fn(q: &[f32], rows: &[&[f32]], out: &mut [f32; ROWS]);

/// The re-scoring kernel for this CPU's [`level`].
pub fn score_rows_kernel() -> RowsFn {
    rows_kernel_for(level()).unwrap_or(score_rows_portable)
}

/// The re-scoring kernel of `level`, where this CPU runs it (the portable one always).
pub fn rows_kernel_for(level: Level) -> Option<RowsFn> {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 if std::is_x86_feature_detected!("avx512f") => Some(|q, rows, out| {
            let rows = row_pointers(q, rows);
            // Safety: the CPU has AVX-512 F (checked when the kernel was chosen), and every row
            // holds at least q.len() values (checked by row_pointers).
            unsafe { score_rows_avx512(q, &rows, out) }
        }),
        #[cfg(target_arch = "x86_64")]
        Level::Avx2Fma
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") =>
        {
            Some(|q, rows, out| {
                let rows = row_pointers(q, rows);
                // Safety: the CPU has AVX2 and FMA (checked when the kernel was chosen), and every
                // row holds at least q.len() values (checked by row_pointers).
                unsafe { score_rows_avx2(q, &rows, out) }
            })
        }
        Level::Portable => Some(score_rows_portable),
        _ => None,
    }
}

/// The start of each of the (1 to [`ROWS`]) rows, the first repeated in the places past the last;
/// panics on a row shorter than the query.
#[cfg(target_arch = "x86_64")]
fn row_pointers(q: &[f32], rows: &[&[f32]]) -> [*const f32; ROWS] {
    assert!(!rows.is_empty() && rows.len() <= ROWS);
    assert!(rows.iter().all(|r| r.len() >= q.len()));
    std::array::from_fn(|j| rows.get(j).unwrap_or(&rows[0]).as_ptr())
}

fn score_rows_portable(q: &[f32], rows: &[&[f32]], out: &mut [f32; ROWS]) {
    assert!(rows.len() <= ROWS);
    for (o, r) in out.iter_mut().zip(rows) {
        *o = q
            .iter()
            .zip(&r[..q.len()])
            .fold(0.0, |s, (&x, &y)| s + x * y);
    }
}

/// One score `a . b` exactly as the tile kernel of `level` computes it (see [`TileFn`]), one
/// multiply-add at a time: the reference the kernels are tested against bit for bit.
pub fn tile_score(level: Level, a: &[f32], b: &[f32]) -> f32 {
    let fused = level != Level::Portable;
    a.iter().zip(b).fold(
        0.0,
        |s, (&x, &y)| {
            if fused {
                x.mul_add(y, s)
            } else {
                s + x * y
            }
        },
    )
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

/// Defines the re-scoring kernel of [`ROWS`] = 16 rows for the target features named, on 8-lane
/// registers: two groups of 8 rows with an accumulator each (two chains in flight). Four steps of k at
/// a time, register j of a group takes rows j and 4 + j (one 128-bit half each), and a 4 x 4
/// transpose within the halves gives the group's 8 rows at k .. k + 3, which its accumulator takes in
/// order of k, as the tile kernel's lanes do (an FMA gives the same bits at any width; wider
/// registers here only cost more shuffles).
macro_rules! score_rows_x86 {
    ($name:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(q: &[f32], rows: &[*const f32; ROWS], out: &mut [f32; ROWS]) {
            use std::arch::x86_64::*;
            let dim = q.len();
            let mut acc = [_mm256_setzero_ps(); 2];
            let mut k = 0;
            while k + 4 <= dim {
                for (g, a) in acc.iter_mut().enumerate() {
                    let p = |j: usize| rows[8 * g + j].add(k);
                    let mut x = [_mm256_setzero_ps(); 4];
                    for (j, xj) in x.iter_mut().enumerate() {
                        let v = _mm256_castps128_ps256(_mm_loadu_ps(p(j)));
                        *xj = _mm256_insertf128_ps::<1>(v, _mm_loadu_ps(p(4 + j)));
                    }
                    let t0 = _mm256_unpacklo_ps(x[0], x[1]);
                    let t1 = _mm256_unpackhi_ps(x[0], x[1]);
                    let t2 = _mm256_unpacklo_ps(x[2], x[3]);
                    let t3 = _mm256_unpackhi_ps(x[2], x[3]);
                    let cols = [
                        _mm256_shuffle_ps::<0x44>(t0, t2),
                        _mm256_shuffle_ps::<0xee>(t0, t2),
                        _mm256_shuffle_ps::<0x44>(t1, t3),
                        _mm256_shuffle_ps::<0xee>(t1, t3),
                    ];
                    for (i, &c) in cols.iter().enumerate() {
                        *a = _mm256_fmadd_ps(_mm256_set1_ps(q[k + i]), c, *a);
                    }
                }
                k += 4;
            }
            for k in k..dim {
                let x = _mm256_set1_ps(q[k]);
                for (a, rows) in acc.iter_mut().zip(rows.chunks_exact(8)) {
                    let mut col = [0f32; 8];
                    for (c, &p) in col.iter_mut().zip(rows) {
                        *c = *p.add(k);
                    }
                    *a = _mm256_fmadd_ps(x, _mm256_loadu_ps(col.as_ptr()), *a);
                }
            }
            for (o, a) in out.chunks_exact_mut(8).zip(acc) {
                _mm256_storeu_ps(o.as_mut_ptr(), a);
            }
        }
    };
}
score_rows_x86!(score_rows_avx2, "avx2,fma");
// AVX-512 F implies AVX2 and FMA.
score_rows_x86!(score_rows_avx512, "avx512f");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_plain_sum() {
        for n in [0, 1, 7, 8, 15, 16, 17, 384, 768, 1001] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0).collect();
            let c: Vec<u8> = (0..n).map(|i| (i * 97 % 256) as u8).collect();
            let want: f64 = a.iter().zip(&c).map(|(x, y)| *x as f64 * *y as f64).sum();
            for f in [dot_u8_kernel(), dot_u8_portable] {
                assert!(
                    (f(&a, &c) as f64 - want).abs() < 1e-2 + want.abs() * 1e-5,
                    "{n}"
                );
            }
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // Safety: the CPU supports AVX2 and FMA, checked above.
                let got = unsafe { dot_u8_avx2(&a, &c) };
                assert!((got as f64 - want).abs() < 1e-2 + want.abs() * 1e-5, "{n}");
            }
        }
    }

    #[test]
    fn integer_dot_products_are_exact_at_the_extremes() {
        for n in [
            0,
            1,
            15,
            16,
            31,
            32,
            33,
            63,
            64,
            65,
            100,
            384,
            768,
            1000,
            DOT_U8_I16_MAX_LEN,
        ] {
            // Mixed signs, and the largest magnitudes the kernels take everywhere.
            let mixed: Vec<i16> = (0..n)
                .map(|i| ((i * 7919 % 65_535) as i32 - 32_767) as i16)
                .collect();
            let codes: Vec<u8> = (0..n).map(|i| (i * 97 % 256) as u8).collect();
            for (w, c) in [
                (mixed, codes),
                (vec![i16::MAX; n], vec![255u8; n]),
                (vec![-i16::MAX; n], vec![255u8; n]),
            ] {
                let want: i64 = w.iter().zip(&c).map(|(&a, &b)| a as i64 * b as i64).sum();
                let mut kernels: Vec<DotU8I16Fn> = vec![dot_u8_i16_kernel(), dot_u8_i16_portable];
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") {
                    // Safety: the CPU runs AVX2, checked above.
                    kernels.push(|w, c| unsafe { dot_u8_i16_avx2(w, c) });
                }
                for f in kernels {
                    assert_eq!(f(&w, &c), want, "{n}");
                }
            }
        }
    }

    /// Every score of every tile kernel this CPU runs is, bit for bit, [`tile_score`] of its level on
    /// its query and row, whatever the other queries and rows of the tile and the widths; and so is
    /// every score of the level's re-scoring kernel.
    #[test]
    fn every_scoring_kernel_is_its_one_score_chain() {
        let kernels = tile_kernels();
        assert_eq!(kernels.last().map(|k| k.0), Some(Level::Portable));
        assert!(kernels.iter().any(|k| k.0 == level()));
        assert!(kernels.iter().all(|k| rows_kernel_for(k.0).is_some()));
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for dim in [1, 7, 8, 15, 16, 17, 33, 100, 384, 768] {
            let a: Vec<f32> = (0..dim * TILE_Q).map(|_| next()).collect();
            // Two panels of rows, for the re-scoring kernel's ROWS.
            let panels = ROWS.div_ceil(TILE_R);
            let b: Vec<f32> = (0..panels * dim * TILE_R).map(|_| next()).collect();
            // The same rows as they lie in a matrix, one past its width (a row longer than the query
            // is read only to the query's length).
            let rows: Vec<Vec<f32>> = (0..panels * TILE_R)
                .map(|j| {
                    let panel = &b[j / TILE_R * dim * TILE_R..][..dim * TILE_R];
                    let mut row: Vec<f32> =
                        (0..dim).map(|k| panel[k * TILE_R + j % TILE_R]).collect();
                    row.push(9.0);
                    row
                })
                .collect();
            let rows: Vec<&[f32]> = rows.iter().map(|r| &r[..]).collect();
            for &(l, tile) in &kernels {
                let mut out = vec![[0f32; TILE_Q * TILE_R]; panels];
                for (p, o) in out.iter_mut().enumerate() {
                    tile(dim, &a, &b[p * dim * TILE_R..], &[f32::INFINITY; TILE_Q], o);
                }
                let tile_out = |i: usize, j: usize| out[j / TILE_R][i * TILE_R + j % TILE_R];
                let rows_kernel = rows_kernel_for(l).unwrap();
                for i in 0..TILE_Q {
                    let q: Vec<f32> = (0..dim).map(|k| a[k * TILE_Q + i]).collect();
                    for (j, row) in rows.iter().enumerate() {
                        let want = tile_score(l, &q, &row[..dim]);
                        let got = tile_out(i, j);
                        assert_eq!(got.to_bits(), want.to_bits(), "{l:?} dim {dim} ({i}, {j})");
                    }
                    // The re-scoring kernel: a full group of rows, and fewer (a list's last group).
                    for take in [ROWS, 1, 7, 9, ROWS - 1] {
                        let mut got = [f32::NAN; ROWS];
                        rows_kernel(&q, &rows[ROWS - take..], &mut got);
                        for (j, g) in got[..take].iter().enumerate() {
                            let want = tile_out(i, ROWS - take + j);
                            assert_eq!(g.to_bits(), want.to_bits(), "{l:?} rows, dim {dim} {take}");
                        }
                    }
                }
            }
        }
    }
}
