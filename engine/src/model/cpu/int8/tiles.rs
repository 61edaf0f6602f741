//! The int8 micro-kernels: an `MR x (NP * NR)` tile of `u8 x i8` sums exact in i32, and its epilogue
//! (scales, zero points, bias, residual) into f32, on AVX-512 VNNI (`vpdpbusd`), AVX2
//! (`vpmaddubsw` + `vpmaddwd`) or portable code: all give the same bits.

use crate::simd::{has_avx512_vnni, level, Level};

/// Output columns per weight panel.
pub(super) const NR: usize = 16;
/// Weight panels per micro-tile: a tile covers `NP * NR` = 32 output columns.
pub(super) const NP: usize = 2;
/// Rows per micro-tile.
pub(super) const MR: usize = 8;

/// Where a micro-tile's products go: `dst[r * stride + c] = (res[r * stride + c] + bias[c]) + sa[r]
/// * sw[c] * (acc[r][c] - za[r] * cs[c])` for the first `rows` rows and `cols` columns (`bias[c]`
/// alone where `res` is null; `res` may be `dst`).
pub(super) struct Out {
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) sa: [f32; MR],
    pub(super) za: [i32; MR],
    pub(super) sw: [f32; NP * NR],
    pub(super) cs: [i32; NP * NR],
    pub(super) bias: [f32; NP * NR],
    pub(super) dst: *mut f32,
    pub(super) res: *const f32,
    pub(super) stride: usize,
}

impl Out {
    /// Asks for the epilogue's lines of dst (and of the residual) of the first `panels` panels, so
    /// that they arrive while the products run: the outputs are fresh memory, and waiting for them at
    /// the end was about a third of the VNNI kernel's time.
    ///
    /// Safety: as [`Out::write`] (a prefetch reads nothing, but the addresses are computed in bounds).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn prefetch(&self, panels: usize) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0, _MM_HINT_T0};
        for r in 0..self.rows {
            for p in 0..panels {
                let i = r * self.stride + p * NR;
                _mm_prefetch::<_MM_HINT_ET0>(self.dst.add(i) as *const i8);
                if !self.res.is_null() {
                    _mm_prefetch::<_MM_HINT_T0>(self.res.add(i) as *const i8);
                }
            }
        }
    }

    /// The epilogue in scalar code (edge tiles, and the portable kernel): the same operations in the
    /// same order as the vector epilogues, so all give the same bits.
    ///
    /// Safety: `dst` (and `res`, unless null) must be valid for the `rows x cols` region at `stride`.
    unsafe fn write(&self, acc: &[[i32; NP * NR]; MR]) {
        for (r, acc) in acc.iter().enumerate().take(self.rows) {
            for (c, &acc) in acc.iter().enumerate().take(self.cols) {
                let i = r * self.stride + c;
                let base = if self.res.is_null() {
                    self.bias[c]
                } else {
                    *self.res.add(i) + self.bias[c]
                };
                let v = self.sa[r] * self.sw[c] * (acc - self.za[r] * self.cs[c]) as f32;
                self.dst.add(i).write(base + v);
            }
        }
    }
}

/// Sums `a[r * kp + k] * panel(k, c)` for the micro-tile's rows (`a`: [`MR`] rows of `kp` bytes) and its columns (`b`: `out.cols.div_ceil(NR)` consecutive panels), and writes them
/// through `out`.
pub(super) type TileFn = unsafe fn(usize, &[u8], &[i8], &Out);

pub(super) fn tile_kernel() -> TileFn {
    match level() {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 if has_avx512_vnni() => tile_vnni_checked,
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 | Level::Avx2Fma => tile_avx2_checked,
        _ => tile_portable,
    }
}

/// The name of [`tile_kernel`]'s choice on this CPU.
pub(super) fn tile_kernel_name() -> &'static str {
    match level() {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 if has_avx512_vnni() => "AVX-512 VNNI",
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 | Level::Avx2Fma => "AVX2",
        _ => "portable",
    }
}

/// Safety: as [`TileFn`]; the CPU must have AVX-512 F, BW and VNNI (checked by [`tile_kernel`]).
#[cfg(target_arch = "x86_64")]
unsafe fn tile_vnni_checked(kp: usize, a: &[u8], b: &[i8], out: &Out) {
    // Four row counts and one or two panels: each shape its own fully unrolled body, so that a
    // query's last rows do not pay for a whole 8-row tile.
    match (out.rows.div_ceil(2), out.cols > NR) {
        (4, true) => tile_vnni::<8, 2>(kp, a, b, out),
        (4, false) => tile_vnni::<8, 1>(kp, a, b, out),
        (3, true) => tile_vnni::<6, 2>(kp, a, b, out),
        (3, false) => tile_vnni::<6, 1>(kp, a, b, out),
        (2, true) => tile_vnni::<4, 2>(kp, a, b, out),
        (2, false) => tile_vnni::<4, 1>(kp, a, b, out),
        (_, true) => tile_vnni::<2, 2>(kp, a, b, out),
        (_, false) => tile_vnni::<2, 1>(kp, a, b, out),
    }
}

/// Safety: as [`TileFn`]; the CPU must have AVX2 (checked by the caller, [`tile_kernel`]).
#[cfg(target_arch = "x86_64")]
unsafe fn tile_avx2_checked(kp: usize, a: &[u8], b: &[i8], out: &Out) {
    tile_avx2(kp, a, b, out)
}

/// Safety: `out.dst` valid for its region.
pub(super) unsafe fn tile_portable(kp: usize, a: &[u8], b: &[i8], out: &Out) {
    let mut acc = [[0i32; NP * NR]; MR];
    let panels = out.cols.div_ceil(NR);
    for (r, acc) in acc.iter_mut().enumerate().take(out.rows) {
        for t in 0..kp / 4 {
            let x = &a[r * kp + 4 * t..][..4];
            for p in 0..panels {
                let quad = &b[p * kp * NR + t * 4 * NR..][..4 * NR];
                for (c, w) in quad.chunks_exact(4).enumerate() {
                    acc[p * NR + c] += (0..4).map(|i| x[i] as i32 * w[i] as i32).sum::<i32>();
                }
            }
        }
    }
    out.write(&acc)
}

/// Four rows by sixteen columns at a time (eight accumulators: AVX2 has sixteen registers). A whole
/// tile's sums go from the registers through the scalar epilogue's operations, eight columns at a
/// time; an edge tile's go into an accumulator array for the scalar epilogue (a whole tile used to
/// take that path too, and zeroing and re-reading the array was about 3% of an int8 encode).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tile_avx2(kp: usize, a: &[u8], b: &[i8], out: &Out) {
    use std::arch::x86_64::*;
    let panels = out.cols.div_ceil(NR);
    assert!(a.len() >= MR * kp && b.len() >= panels * kp * NR && kp.is_multiple_of(4));
    let whole = out.rows == MR && out.cols == NP * NR;
    out.prefetch(panels);
    let ones = _mm256_set1_epi16(1);
    let mut acc = if whole {
        None
    } else {
        Some([[0i32; NP * NR]; MR])
    };
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    for h in 0..out.rows.div_ceil(4) {
        for p in 0..panels {
            let mut c = [_mm256_setzero_si256(); 8];
            let pb = pb.add(p * kp * NR);
            for t in 0..kp / 4 {
                // Safety: t * 64 + 64 <= kp * NR, inside panel p; (4h + r) * kp + 4t + 4 <= MR * kp.
                let b0 = _mm256_loadu_si256(pb.add(t * 4 * NR) as *const __m256i);
                let b1 = _mm256_loadu_si256(pb.add(t * 4 * NR + 32) as *const __m256i);
                for r in 0..4 {
                    let x = _mm256_set1_epi32(std::ptr::read_unaligned(
                        pa.add((4 * h + r) * kp + 4 * t) as *const i32,
                    ));
                    // u8 x i8 pairs into i16 (no saturation with 7-bit weights), then pairs into i32.
                    c[2 * r] = _mm256_add_epi32(
                        c[2 * r],
                        _mm256_madd_epi16(_mm256_maddubs_epi16(x, b0), ones),
                    );
                    c[2 * r + 1] = _mm256_add_epi32(
                        c[2 * r + 1],
                        _mm256_madd_epi16(_mm256_maddubs_epi16(x, b1), ones),
                    );
                }
            }
            for r in 0..4 {
                for half in 0..2 {
                    let (row, col) = (4 * h + r, p * NR + 8 * half);
                    match acc.as_mut() {
                        Some(acc) => _mm256_storeu_si256(
                            acc[row][col..].as_mut_ptr() as *mut __m256i,
                            c[2 * r + half],
                        ),
                        None => write8_avx2(out, row, col, c[2 * r + half]),
                    }
                }
            }
        }
    }
    if let Some(acc) = acc {
        out.write(&acc);
    }
}

/// `Out::write`'s operations for row `r`, columns `c..c + 8` of a whole tile, from their sums `acc`
/// (no FMA, so the bits match the scalar epilogue).
///
/// Safety: as [`TileFn`]'s `out`; `r < MR`, `c + 8 <= NP * NR`; the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn write8_avx2(out: &Out, r: usize, c: usize, acc: std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    let sa = _mm256_set1_ps(out.sa[r]);
    let za = _mm256_set1_epi32(out.za[r]);
    let sw = _mm256_loadu_ps(out.sw.as_ptr().add(c));
    let cs = _mm256_loadu_si256(out.cs.as_ptr().add(c) as *const __m256i);
    let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc, _mm256_mullo_epi32(za, cs)));
    let i = r * out.stride + c;
    let bias = _mm256_loadu_ps(out.bias.as_ptr().add(c));
    let base = if out.res.is_null() {
        bias
    } else {
        _mm256_add_ps(_mm256_loadu_ps(out.res.add(i)), bias)
    };
    _mm256_storeu_ps(
        out.dst.add(i),
        _mm256_add_ps(base, _mm256_mul_ps(_mm256_mul_ps(sa, sw), v)),
    );
}

/// `R` rows by `P` panels with one `vpdpbusd` per row, panel and step: sixteen columns' four u8 x i8
/// products added straight into i32 lanes (no i16 step, so nothing can saturate), the same integers
/// as the other kernels. Up to 8 x 2 = 16 accumulators, so that the loads (two panel vectors and one
/// broadcast per row) and the latency of each `vpdpbusd` hide behind independent products. The
/// epilogue is the scalar one's operations, sixteen columns at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_vnni<const R: usize, const P: usize>(kp: usize, a: &[u8], b: &[i8], out: &Out) {
    use std::arch::x86_64::*;
    assert!(R <= MR && P <= NP && out.rows <= R && (out.cols > NR) == (P == 2));
    assert!(a.len() >= MR * kp && b.len() >= P * kp * NR && kp.is_multiple_of(4));
    out.prefetch(P);
    let mut c = [[_mm512_setzero_si512(); P]; R];
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    for t in 0..kp / 4 {
        // Safety: t * 64 + 64 <= kp * NR inside each of the P panels; r * kp + 4t + 4 <= MR * kp.
        let mut w = [_mm512_setzero_si512(); P];
        for (p, w) in w.iter_mut().enumerate() {
            *w = _mm512_loadu_si512(pb.add(p * kp * NR + t * 4 * NR) as *const __m512i);
        }
        for (r, c) in c.iter_mut().enumerate() {
            let x = _mm512_set1_epi32(std::ptr::read_unaligned(
                pa.add(r * kp + 4 * t) as *const i32
            ));
            for (c, w) in c.iter_mut().zip(&w) {
                *c = _mm512_dpbusd_epi32(*c, x, *w);
            }
        }
    }
    if out.rows < R || out.cols < P * NR {
        let mut acc = [[0i32; NP * NR]; MR];
        for (acc, c) in acc.iter_mut().zip(&c) {
            for (p, c) in c.iter().enumerate() {
                _mm512_storeu_si512(acc[p * NR..].as_mut_ptr() as *mut __m512i, *c);
            }
        }
        return out.write(&acc);
    }
    for (r, c) in c.iter().enumerate() {
        let sa = _mm512_set1_ps(out.sa[r]);
        let za = _mm512_set1_epi32(out.za[r]);
        for (p, &c) in c.iter().enumerate() {
            let sw = _mm512_loadu_ps(out.sw.as_ptr().add(p * NR));
            let cs = _mm512_loadu_si512(out.cs.as_ptr().add(p * NR) as *const __m512i);
            let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(c, _mm512_mullo_epi32(za, cs)));
            let i = r * out.stride + p * NR;
            let bias = _mm512_loadu_ps(out.bias.as_ptr().add(p * NR));
            let base = if out.res.is_null() {
                bias
            } else {
                _mm512_add_ps(_mm512_loadu_ps(out.res.add(i)), bias)
            };
            _mm512_storeu_ps(
                out.dst.add(i),
                _mm512_add_ps(base, _mm512_mul_ps(_mm512_mul_ps(sa, sw), v)),
            );
        }
    }
}

/// The vector kernels this CPU can run, by name (the dispatch picks one of them).
#[cfg(test)]
pub(super) fn cpu_kernels() -> Vec<(&'static str, TileFn)> {
    #[allow(unused_mut)]
    let mut k: Vec<(&'static str, TileFn)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            k.push(("AVX2", tile_avx2_checked));
        }
        if has_avx512_vnni() {
            k.push(("AVX-512 VNNI", tile_vnni_checked));
        }
    }
    k
}
