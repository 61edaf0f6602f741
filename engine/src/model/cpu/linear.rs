//! The f32 matrix products: the general GEMM (the `gemm` crate, which picks its own kernels per CPU)
//! and, for a few rows (a query), weights packed once into panels and multiplied by the search's tile
//! kernel (`simd::score_tile_kernel`) or, on AVX-512, by a one-pass kernel that reads each weight once
//! for up to 24 rows. Above the leaves (`parallel`, `tensor`); below the fused ops.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::parallel::{may_split, SharedMut};
use super::tensor::with_f32;
use crate::simd::{TILE_Q, TILE_R};

/// `dst (m x n) = lhs (m x k) @ rhs (k x n) + read_dst * dst`, all with explicit strides.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_f32(
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

/// Up to this many rows (a query or a few), a projection runs on weights packed once, with the tile
/// kernel: the general GEMM packs the whole weight matrix on every call, which for a handful of rows
/// costs more than the products.
pub const SMALL_ROWS: usize = 64;

/// A `(inp, out)` weight packed into panels of [`TILE_R`] output columns, k-major
/// (`panel[k * TILE_R + j]`), the last panel padded with zero columns.
pub struct PackedWeight {
    pub(crate) inp: usize,
    pub(crate) out: usize,
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
    pub(crate) fn add_product(&self, x: &[f32], rows: usize, dst: &mut [f32]) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
