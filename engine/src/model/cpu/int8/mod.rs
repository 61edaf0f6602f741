//! Dynamic int8 quantisation of the encoder's linear layers (`--precision int8`, CPU only).
//!
//! * Weights: per output column, symmetric, 7-bit (`-63..=63`), quantised once at load. Seven bits,
//!   not eight, because AVX2's `vpmaddubsw` (u8 x i8) adds each pair of products into a *saturating*
//!   i16: `2 * 255 * 63 = 32,130` stays below 32,767, where 8-bit weights could overflow silently.
//! * Activations: per row, asymmetric u8 (`0..=255`) over the row's range widened to hold zero,
//!   quantised as each projection runs (dynamic), so no calibration data is needed.
//! * Product: `y[r, j] = sa[r] * sw[j] * (sum_k qa[r, k] qw[k, j] - za[r] * sum_k qw[k, j])`. The sums
//!   are exact in i32 (at most 255 * 63 * width), so the AVX-512 VNNI kernel (`vpdpbusd`, where the
//!   CPU has it), the AVX2 kernel and the portable loop give the same bits.
//!
//! Everything else of the forward (attention, softmax, GELU, LayerNorm, residuals) stays f32.
//!
//! Here the weights and the products' drivers (tasks over row blocks and column panels, the epilogue
//! into bias and residual, the GELU codes for the next product); `rows` quantises the activations,
//! `tiles` holds the micro-kernels (AVX-512 VNNI, AVX2, portable).

mod rows;
mod tiles;

pub use rows::QuantRows;

/// The int8 product kernel this CPU runs (AVX-512 VNNI, AVX2 or portable).
pub fn kernel_name() -> &'static str {
    tiles::tile_kernel_name()
}

use std::mem::MaybeUninit;

use rayon::prelude::*;

use self::rows::{quantize_row, round_half_away};
use self::tiles::{tile_kernel, Out, TileFn, MR, NP, NR};
use super::elementwise::gelu_slice;
use super::parallel::{may_split, SharedConst, SharedMut};

/// Largest weight magnitude after quantisation (7 bits; see the module notes).
const W_MAX: f32 = 63.0;
/// Micro-tiles of rows per task.
const ROW_TILES: usize = 8;

/// A weight that cannot be quantised: `value` (not finite) at `[row, col]` of the `(out, inp)` matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NonFinite {
    pub row: usize,
    pub col: usize,
    pub value: f32,
}

/// A `(inp, out)` f32 weight as 7-bit integers, per-column scales and column sums.
///
/// Layout: `out.div_ceil(16)` panels of 16 columns; in a panel, for each group of four input rows
/// `t`, 64 bytes: column `c`'s four weights `w[4t..4t+4, c]` at bytes `4c..4c+4`. The input width is
/// padded to a multiple of four and the last panel to 16 columns, with zeros.
pub struct QuantWeight {
    inp: usize,
    /// `inp` rounded up to a multiple of four.
    kp: usize,
    out: usize,
    panels: Vec<i8>,
    /// Per column (padded to whole panels).
    scale: Vec<f32>,
    /// `sum_k qw[k, j]` per column (padded to whole panels).
    colsum: Vec<i32>,
}

/// `dst[..src.len()] = src`: a whole array by value where `src` fills it (moves the compiler writes
/// in place), else the slice copy (a `memcpy` call, about 1% of an int8 pass when it was made for
/// every tile's few row scales).
#[inline(always)]
fn fill<T: Copy, const N: usize>(dst: &mut [T; N], src: &[T]) {
    match <&[T; N]>::try_from(src) {
        Ok(whole) => *dst = *whole,
        Err(_) => dst[..src.len()].copy_from_slice(src),
    }
}

impl QuantWeight {
    /// Quantises a weight given as its rows in PyTorch's `nn.Linear` layout: `rows[j]` holds the
    /// `inp` weights of output column `j`. Each column is then one contiguous row, read once by the
    /// task that fills its panel. `Err` gives the first non-finite weight.
    pub fn from_rows(rows: &[&[f32]], inp: usize) -> Result<QuantWeight, NonFinite> {
        let out = rows.len();
        assert!(rows.iter().all(|r| r.len() == inp), "weight shape");
        for (j, row) in rows.iter().enumerate() {
            if let Some(k) = row.iter().position(|v| !v.is_finite()) {
                return Err(NonFinite {
                    row: j,
                    col: k,
                    value: row[k],
                });
            }
        }
        let kp = inp.div_ceil(4) * 4;
        let np = out.div_ceil(NR);
        // Padding columns keep scale 0 and column sum 0.
        let mut scale = vec![0f32; np * NR];
        let mut colsum = vec![0i32; np * NR];
        let mut panels = vec![0i8; np * kp * NR];
        panels
            .par_chunks_mut(kp * NR)
            .zip(colsum.par_chunks_mut(NR))
            .zip(scale.par_chunks_mut(NR))
            .enumerate()
            .for_each(|(p, ((panel, colsum), scale))| {
                let c0 = p * NR;
                for c in 0..(out - c0).min(NR) {
                    let row = rows[c0 + c];
                    let m = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let s = if m > 0.0 { m / W_MAX } else { 1.0 };
                    let mut sum = 0;
                    for (k, &v) in row.iter().enumerate() {
                        let q = round_half_away(v / s).clamp(-W_MAX as i32, W_MAX as i32);
                        panel[(k / 4) * 4 * NR + c * 4 + k % 4] = q as i8;
                        sum += q;
                    }
                    scale[c] = s;
                    colsum[c] = sum;
                }
            });
        Ok(QuantWeight {
            inp,
            kp,
            out,
            panels,
            scale,
            colsum,
        })
    }

    /// [`QuantWeight::from_rows`] of `w` given as `(inp, out)` row-major (the tests' form).
    #[cfg(test)]
    pub fn of(w: &[f32], inp: usize, out: usize) -> Result<QuantWeight, NonFinite> {
        assert_eq!(w.len(), inp * out, "weight shape");
        let mut t = vec![0f32; inp * out];
        for k in 0..inp {
            for j in 0..out {
                t[j * inp + k] = w[k * out + j];
            }
        }
        let rows: Vec<&[f32]> = t.chunks_exact(inp.max(1)).collect();
        QuantWeight::from_rows(&rows[..out], inp)
    }

    /// The weight's values as the products see them, `scale[c] * code(k, c)`, as an `(inp, out)`
    /// row-major f32 matrix (for the one f32 product of an int8 model: the first-row attention).
    pub fn dequantized(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.inp * self.out];
        for (k, row) in w
            .chunks_exact_mut(self.out.max(1))
            .enumerate()
            .take(self.inp)
        {
            for (c, v) in row.iter_mut().enumerate() {
                let panel = &self.panels[(c / NR) * self.kp * NR..];
                *v = self.scale[c] * panel[(k / 4) * 4 * NR + (c % NR) * 4 + k % 4] as f32;
            }
        }
        w
    }

    pub fn inp(&self) -> usize {
        self.inp
    }

    pub fn out(&self) -> usize {
        self.out
    }

    /// `dst (rows x out) += x (rows x inp) @ W`, with `x` quantised per row on the way (the tests'
    /// form; the forward uses [`QuantWeight::product_into`]).
    #[cfg(test)]
    pub fn add_product(&self, x: &[f32], rows: usize, dst: &mut [f32]) {
        self.add_product_with(tile_kernel(), x, rows, dst)
    }

    #[cfg(test)]
    fn add_product_with(&self, kernel: TileFn, x: &[f32], rows: usize, dst: &mut [f32]) {
        assert!(dst.len() >= rows * self.out);
        let d = dst.as_mut_ptr();
        let a = QuantRows::of(x, rows, self.inp, self.kp, !may_split());
        // Safety: dst holds rows x out values, read (as the residual) and written in place.
        unsafe { self.product_with(kernel, &a, rows, None, d, d, false, None) }
    }

    /// `dst (rows x out) = residual + bias + x (rows x inp) @ W` (without a residual: `bias + x @ W`),
    /// every value of `dst` written once, in the tiles' epilogues: the same bits as filling `dst` with
    /// `residual + bias` and then adding the product. With `gelu`, GELU (erf) follows on each task's
    /// region as soon as it is done.
    pub fn product_into(
        &self,
        x: &[f32],
        rows: usize,
        bias: &[f32],
        residual: Option<&[f32]>,
        dst: &mut [std::mem::MaybeUninit<f32>],
        gelu: bool,
    ) {
        assert!(x.len() >= rows * self.inp);
        let a = QuantRows::of(x, rows, self.inp, self.kp, !may_split());
        self.codes_product_into(&a, rows, bias, residual, dst, gelu)
    }

    /// [`QuantWeight::product_into`] of rows already quantised for this weight (by
    /// [`QuantWeight::gelu_codes`] of the projection before it).
    pub fn codes_product_into(
        &self,
        a: &QuantRows,
        rows: usize,
        bias: &[f32],
        residual: Option<&[f32]>,
        dst: &mut [std::mem::MaybeUninit<f32>],
        gelu: bool,
    ) {
        assert!(bias.len() == self.out && dst.len() >= rows * self.out);
        assert!(a.kp == self.kp && a.scale.len() >= rows);
        let res = match residual {
            Some(r) => {
                assert!(r.len() >= rows * self.out);
                r.as_ptr()
            }
            None => std::ptr::null(),
        };
        // Safety: dst holds rows x out writable values, res (when not null) rows x out readable ones.
        unsafe {
            self.product_with(
                tile_kernel(),
                a,
                rows,
                Some(bias),
                res,
                dst.as_mut_ptr() as *mut f32,
                gelu,
                None,
            )
        }
    }

    /// `GELU(bias + x @ W)` quantised per row for `next`, the projection that reads it: the codes of
    /// `QuantRows::of` over [`QuantWeight::product_into`]'s output, bit for bit, without that
    /// output ever being written whole. When each task owns whole rows (a batch encoded on one
    /// thread, or enough rows that every thread gets whole-row tasks), a task's rows go through a
    /// scratch block of its thread that stays in cache: GELU, their range and their codes follow
    /// while the values are still there. With few rows (a query), the columns
    /// are split across tasks instead, and the codes are made from the whole output afterwards.
    pub fn gelu_codes(
        &self,
        x: &[f32],
        rows: usize,
        bias: &[f32],
        next: &QuantWeight,
    ) -> QuantRows {
        assert!(next.inp == self.out && bias.len() == self.out && x.len() >= rows * self.inp);
        let serial = !may_split();
        let a = QuantRows::of(x, rows, self.inp, self.kp, serial);
        if self.row_blocks_per_task(rows, serial) {
            let mut codes = QuantRows::unwritten(rows, next.kp);
            let sink = CodesSink {
                q: codes.q.spare_capacity_mut().as_mut_ptr(),
                scale: codes.scale.as_mut_ptr(),
                zero: codes.zero.as_mut_ptr(),
                kp: next.kp,
            };
            // Safety: with whole rows per task, product_with writes only the scratch blocks and
            // each task's own rows of the codes (sized above for rows x next.kp).
            unsafe {
                self.product_with(
                    tile_kernel(),
                    &a,
                    rows,
                    Some(bias),
                    std::ptr::null(),
                    std::ptr::null_mut(),
                    true,
                    Some(&sink),
                );
                // The tasks quantised every row.
                codes.finish_padding(rows);
            };
            return codes;
        }
        let mut y: Vec<f32> = Vec::with_capacity(rows * self.out);
        // Safety: product_with writes every one of the rows x out values.
        unsafe {
            self.product_with(
                tile_kernel(),
                &a,
                rows,
                Some(bias),
                std::ptr::null(),
                y.as_mut_ptr(),
                true,
                None,
            );
            y.set_len(rows * self.out);
        }
        QuantRows::of(&y, rows, next.inp, next.kp, serial)
    }

    /// Whether [`QuantWeight::product_with`] gives each task whole rows (all the columns of its
    /// row block), for `rows` rows.
    fn row_blocks_per_task(&self, rows: usize, serial: bool) -> bool {
        self.task_groups(rows, serial) == 1
    }

    /// Into how many groups of columns the product's tasks are cut, for `rows` rows: enough tasks to
    /// keep every thread busy, from row blocks and, when there are few rows (a query), from groups of
    /// panel pairs.
    fn task_groups(&self, rows: usize, serial: bool) -> usize {
        let pairs = self.out.div_ceil(NR).div_ceil(NP);
        let blocks = rows.div_ceil(MR).div_ceil(ROW_TILES);
        if serial {
            1
        } else {
            (4 * rayon::current_num_threads())
                .div_ceil(blocks.max(1))
                .clamp(1, pairs.max(1))
        }
    }

    /// Safety: `dst` must be valid for writes, and `res` (unless null) for reads, of rows x out values
    /// (they may be the same).
    ///
    /// With `sink`, which needs whole rows per task ([`QuantWeight::row_blocks_per_task`]), `dst`
    /// and `res` are not used: each task writes its rows into its thread's scratch block, applies
    /// GELU (when `gelu`), and quantises them into the sink.
    #[allow(clippy::too_many_arguments)]
    unsafe fn product_with(
        &self,
        kernel: TileFn,
        a: &QuantRows,
        rows: usize,
        bias: Option<&[f32]>,
        res: *const f32,
        dst: *mut f32,
        gelu: bool,
        sink: Option<&CodesSink>,
    ) {
        assert!(
            a.kp == self.kp
                && a.scale.len() >= rows
                && a.q.len() >= rows.div_ceil(MR) * MR * self.kp
        );
        if rows == 0 {
            return;
        }
        let serial = !may_split();
        let np = self.out.div_ceil(NR);
        let pairs = np.div_ceil(NP);
        let tiles = rows.div_ceil(MR);
        let blocks = tiles.div_ceil(ROW_TILES);
        let groups = self.task_groups(rows, serial);
        assert!(
            sink.is_none() || groups == 1,
            "a codes sink needs whole rows per task"
        );
        let per_group = pairs.div_ceil(groups);
        let dst_ptr = SharedMut(dst);
        let res_ptr = SharedConst(res);
        let task = |t: usize| {
            let (block, group) = (t / groups, t % groups);
            let pairs = (group * per_group)..((group + 1) * per_group).min(pairs);
            let tiles = (block * ROW_TILES)..((block + 1) * ROW_TILES).min(tiles);
            match sink {
                None => {
                    self.task_tiles(kernel, a, rows, bias, res_ptr, dst_ptr, pairs, tiles, gelu)
                }
                Some(sink) => SCRATCH.with(|scratch| {
                    let mut scratch = scratch.borrow_mut();
                    let r0 = tiles.start * MR;
                    let n = (tiles.end * MR).min(rows) - r0;
                    scratch.resize(ROW_TILES * MR * self.out, 0.0);
                    // The block's rows at the start of the scratch: row r of dst is row r - r0 there.
                    let base = SharedMut(scratch.as_mut_ptr().wrapping_sub(r0 * self.out));
                    let nothing = SharedConst(std::ptr::null());
                    self.task_tiles(kernel, a, rows, bias, nothing, base, pairs, tiles, gelu);
                    for (i, row) in scratch[..n * self.out].chunks_exact(self.out).enumerate() {
                        let r = r0 + i;
                        // Safety: rows r0..r0 + n are this task's; the sink holds rows x kp codes.
                        let q = std::slice::from_raw_parts_mut(sink.q.add(r * sink.kp), sink.kp);
                        let (s, z) = quantize_row(row, q);
                        *sink.scale.add(r) = s;
                        *sink.zero.add(r) = z;
                    }
                }),
            }
        };
        if serial || blocks * groups == 1 {
            (0..blocks * groups).for_each(task);
        } else {
            (0..blocks * groups).into_par_iter().for_each(task);
        }
    }

    /// One task of [`QuantWeight::product_with`]: the tiles of its row block and pair group, then
    /// GELU over that region.
    ///
    /// Safety: `dst` (and `res`, unless null) must be valid for rows `tiles` and the columns of
    /// `pairs` (at stride `out`), a region no other task touches.
    #[allow(clippy::too_many_arguments)]
    unsafe fn task_tiles(
        &self,
        kernel: TileFn,
        a: &QuantRows,
        rows: usize,
        bias: Option<&[f32]>,
        res_ptr: SharedConst,
        dst_ptr: SharedMut,
        pairs: std::ops::Range<usize>,
        tiles: std::ops::Range<usize>,
        gelu: bool,
    ) {
        let panel = self.kp * NR;
        for pair in pairs.clone() {
            let c0 = pair * NP * NR;
            let cols = (self.out - c0).min(NP * NR);
            let used = cols.div_ceil(NR) * NR;
            let b = &self.panels[pair * NP * panel..][..cols.div_ceil(NR) * panel];
            // One epilogue description per pair, its row fields updated per tile (a fresh one
            // per tile was a copy of half a KiB each time).
            let mut out = Out {
                rows: 0,
                cols,
                sa: [0.0; MR],
                za: [0; MR],
                sw: [0.0; NP * NR],
                cs: [0; NP * NR],
                bias: [0.0; NP * NR],
                dst: std::ptr::null_mut(),
                res: std::ptr::null(),
                stride: self.out,
            };
            fill(&mut out.sw, &self.scale[c0..c0 + used]);
            fill(&mut out.cs, &self.colsum[c0..c0 + used]);
            if let Some(bias) = bias {
                fill(&mut out.bias, &bias[c0..c0 + cols]);
            }
            for tile in tiles.clone() {
                let r0 = tile * MR;
                let n = (rows - r0).min(MR);
                out.rows = n;
                // Row r0 < rows and column c0 < out: inside dst (and res); wrapping, since a
                // scratch block's dst is offset back by its first row.
                out.dst = dst_ptr.ptr().wrapping_add(r0 * self.out + c0);
                if !res_ptr.ptr().is_null() {
                    out.res = res_ptr.ptr().add(r0 * self.out + c0);
                }
                fill(&mut out.sa, &a.scale[r0..r0 + n]);
                fill(&mut out.za, &a.zero[r0..r0 + n]);
                // Safety: `out` covers rows r0..r0+n and columns c0..c0+cols of dst (rows x out),
                // a region this task owns (its row block and pair group); `b` holds the
                // cols.div_ceil(NR) panels of those columns.
                kernel(
                    self.kp,
                    &a.q[tile * MR * self.kp..][..MR * self.kp],
                    b,
                    &out,
                );
            }
        }
        if gelu {
            // GELU over the task's finished region while it is still in cache (elementwise: the
            // same bits as a pass over the whole output afterwards).
            let c = (pairs.start * NP * NR).min(self.out)..(pairs.end * NP * NR).min(self.out);
            let r = (tiles.start * MR).min(rows)..(tiles.end * MR).min(rows);
            // Safety: rows r and columns c of dst (rows x out) are this task's, all written above.
            for row in r {
                gelu_slice(std::slice::from_raw_parts_mut(
                    dst_ptr.ptr().wrapping_add(row * self.out + c.start),
                    c.len(),
                ));
            }
        }
    }
}

thread_local! {
    /// A task's block of rows when its product goes on to be quantised (see
    /// [`QuantWeight::gelu_codes`]): kept per thread, so that it is allocated once and stays in cache.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where [`QuantWeight::product_with`]'s tasks put the codes of their rows.
struct CodesSink {
    q: *mut MaybeUninit<u8>,
    scale: *mut f32,
    zero: *mut i32,
    kp: usize,
}
// Safety: the tasks write disjoint rows through it.
unsafe impl Sync for CodesSink {}

/// A small deterministic source of values for the tests.
#[cfg(test)]
fn lcg(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::tiles::{cpu_kernels, tile_portable};
    use super::*;

    /// The product against f64 arithmetic on the dequantised values (exact up to f32 rounding), and
    /// the kernel for this CPU against the portable one, bit for bit, on shapes with ragged edges.
    #[test]
    fn int8_product_matches_its_definition_and_the_portable_kernel() {
        let mut r = lcg(7);
        for (rows, inp, out) in [(1, 5, 3), (7, 33, 17), (13, 64, 48), (70, 130, 40)] {
            let w: Vec<f32> = (0..inp * out).map(|_| r()).collect();
            let mut x: Vec<f32> = (0..rows * inp).map(|_| 3.0 * r() + 0.5).collect();
            x[..inp].fill(0.0); // an all-zero row
            let qw = QuantWeight::of(&w, inp, out).unwrap();
            let mut dst = vec![1f32; rows * out];
            qw.add_product(&x, rows, &mut dst);
            // The definition: dequantised rows times dequantised weights.
            let a = QuantRows::of(&x, rows, inp, qw.kp, true);
            for i in 0..rows {
                for j in 0..out {
                    let (p, c) = (j / NR, j % NR);
                    let mut want = 0f64;
                    for k in 0..inp {
                        let qwk = qw.panels[p * qw.kp * NR + (k / 4) * 4 * NR + c * 4 + k % 4];
                        let xa = a.scale[i] as f64 * (a.q[i * qw.kp + k] as f64 - a.zero[i] as f64);
                        want += xa * qw.scale[j] as f64 * qwk as f64;
                    }
                    let got = dst[i * out + j] as f64 - 1.0;
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{rows}x{inp}x{out} [{i},{j}]: {got} vs {want}"
                    );
                    // And close to the f32 product (quantisation error only).
                    let exact: f64 = (0..inp)
                        .map(|k| x[i * inp + k] as f64 * w[k * out + j] as f64)
                        .sum();
                    assert!(
                        (got - exact).abs() <= 0.05 * (1.0 + exact.abs()) + 0.02 * inp as f64,
                        "{got} vs f32 {exact}"
                    );
                }
            }
            // The CPU's kernel against the portable one, bit for bit.
            let mut d2 = vec![1f32; rows * out];
            qw.add_product_with(tile_portable, &x, rows, &mut d2);
            assert!(
                dst.iter().zip(&d2).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{rows}x{inp}x{out}: the kernels differ"
            );
            // And every other kernel this CPU can run.
            for (name, kernel) in cpu_kernels() {
                let mut d3 = vec![1f32; rows * out];
                qw.add_product_with(kernel, &x, rows, &mut d3);
                assert!(
                    d3.iter().zip(&d2).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{rows}x{inp}x{out}: the {name} kernel differs from the portable one"
                );
            }
        }
    }

    /// `product_into` (bias, with and without a residual, written into uninitialised memory) gives
    /// the bits of filling the output with `residual + bias` and adding the product, on every kernel;
    /// with GELU, those of a GELU pass afterwards, whether the product is split across the pool or not.
    #[test]
    fn product_into_matches_fill_then_add() {
        let mut r = lcg(11);
        for (rows, inp, out) in [(1, 8, 16), (9, 40, 33), (21, 64, 96), (150, 24, 200)] {
            let w: Vec<f32> = (0..inp * out).map(|_| r()).collect();
            let x: Vec<f32> = (0..rows * inp).map(|_| 2.0 * r()).collect();
            let bias: Vec<f32> = (0..out).map(|_| r()).collect();
            let res: Vec<f32> = (0..rows * out).map(|_| r()).collect();
            let qw = QuantWeight::of(&w, inp, out).unwrap();
            for residual in [None, Some(&res[..])] {
                let mut want: Vec<f32> = (0..rows * out)
                    .map(|i| residual.map_or(bias[i % out], |r| r[i] + bias[i % out]))
                    .collect();
                qw.add_product_with(tile_portable, &x, rows, &mut want);
                let mut want_gelu = want.clone();
                super::gelu_slice(&mut want_gelu);
                for (gelu, want) in [(false, &want), (true, &want_gelu)] {
                    for split in [false, true] {
                        let mut got = Vec::with_capacity(rows * out);
                        crate::model::cpu::parallel::with_splitting(split, || {
                            qw.product_into(
                                &x,
                                rows,
                                &bias,
                                residual,
                                got.spare_capacity_mut(),
                                gelu,
                            )
                        });
                        // Safety: product_into wrote all rows * out values.
                        unsafe { got.set_len(rows * out) };
                        assert!(
                            got.iter()
                                .zip(want)
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{rows}x{inp}x{out}, residual {}, gelu {gelu}, split {split}",
                            residual.is_some()
                        );
                    }
                }
            }
        }
    }

    /// `gelu_codes` gives the codes of quantising `product_into`'s GELU output, bit for bit, on the
    /// path where tasks own whole rows (one thread, or many rows) and on the one that splits the
    /// columns of few rows across the pool; padding rows and columns are zero.
    #[test]
    fn gelu_codes_match_quantising_the_product() {
        let mut r = lcg(13);
        // (rows, inp, out, next kp): out 30 pads the next weight's rows to 32 codes.
        for (rows, inp, out) in [(1, 8, 16), (5, 24, 30), (13, 40, 64), (700, 16, 40)] {
            let w: Vec<f32> = (0..inp * out).map(|_| r()).collect();
            let w2: Vec<f32> = (0..out * 8).map(|_| r()).collect();
            let mut x: Vec<f32> = (0..rows * inp).map(|_| 2.0 * r()).collect();
            x[..inp].fill(0.0);
            let bias: Vec<f32> = (0..out).map(|_| r()).collect();
            let (qw, next) = (
                QuantWeight::of(&w, inp, out).unwrap(),
                QuantWeight::of(&w2, out, 8).unwrap(),
            );
            for split in [false, true] {
                crate::model::cpu::parallel::with_splitting(split, || {
                    let mut y = Vec::with_capacity(rows * out);
                    qw.product_into(&x, rows, &bias, None, y.spare_capacity_mut(), true);
                    // Safety: product_into wrote all rows * out values.
                    unsafe { y.set_len(rows * out) };
                    let want = QuantRows::of(&y, rows, out, next.kp, true);
                    let got = qw.gelu_codes(&x, rows, &bias, &next);
                    let whole = qw.row_blocks_per_task(rows, !split);
                    let what = format!("{rows}x{inp}x{out}, split {split}, whole rows {whole}");
                    assert_eq!(got.q, want.q, "{what}: codes");
                    assert_eq!(got.zero, want.zero, "{what}: zero points");
                    let bits = |v: &[f32]| v.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got.scale), bits(&want.scale), "{what}: scales");
                    assert_eq!(got.q.len(), rows.div_ceil(MR) * MR * next.kp);
                });
            }
        }
    }

    /// `dequantized` is each column's code times its scale: every value within half a step of the
    /// weight and on a whole number of steps (the step being the column's largest weight over 63).
    #[test]
    fn dequantized_values_are_the_products_weights() {
        let mut r = lcg(11);
        let (inp, out) = (13, 37);
        let w: Vec<f32> = (0..inp * out).map(|_| r()).collect();
        let q = QuantWeight::of(&w, inp, out).unwrap();
        let d = q.dequantized();
        assert_eq!(d.len(), inp * out);
        for c in 0..out {
            let m = (0..inp).fold(0f32, |m, k| m.max(w[k * out + c].abs()));
            let step = m / W_MAX;
            for k in 0..inp {
                let (v, x) = (d[k * out + c], w[k * out + c]);
                assert!(
                    (v - x).abs() <= step * 0.5001,
                    "[{k}, {c}]: {v} against {x}"
                );
                let codes = v / step;
                assert!(
                    (codes - codes.round()).abs() < 1e-3,
                    "[{k}, {c}]: {codes} steps"
                );
            }
        }
    }

    /// Extreme codes: activations at 0 and 255 and every weight at +-63, the largest pair sums the
    /// kernel sees, stay exact (no i16 saturation).
    #[test]
    fn largest_codes_do_not_saturate() {
        let (rows, inp, out) = (8, 768, 32);
        let w: Vec<f32> = (0..inp * out)
            .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        let qw = QuantWeight::of(&w, inp, out).unwrap();
        // Rows of -1 and +1 in runs: codes 0 and 255 (zero point 128), weights -63 and +63.
        let x: Vec<f32> = (0..rows * inp)
            .map(|i| if (i / 7) % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let mut d1 = vec![0f32; rows * out];
        let mut d2 = vec![0f32; rows * out];
        qw.add_product(&x, rows, &mut d1);
        qw.add_product_with(tile_portable, &x, rows, &mut d2);
        assert_eq!(d1, d2);
        for (name, kernel) in cpu_kernels() {
            let mut d3 = vec![0f32; rows * out];
            qw.add_product_with(kernel, &x, rows, &mut d3);
            assert_eq!(d3, d2, "{name}");
        }
        for i in 0..rows {
            for j in 0..out {
                let exact: f32 = (0..inp).map(|k| x[i * inp + k] * w[k * out + j]).sum();
                assert!(
                    (d1[i * out + j] - exact).abs() <= 0.02 * inp as f32,
                    "{} vs {exact}",
                    d1[i * out + j]
                );
            }
        }
    }

    #[test]
    fn non_finite_inputs_are_reported_or_propagate() {
        // (inp, out) = (2, 2): the NaN is input 0 of output 1, at [1, 0] of the (out, inp) rows.
        let e = QuantWeight::of(&[1.0, f32::NAN, 0.0, 2.0], 2, 2)
            .err()
            .unwrap();
        assert_eq!((e.row, e.col), (1, 0), "{e:?}");
        assert!(e.value.is_nan());
        let qw = QuantWeight::of(&[1.0, 0.5, 0.0, 2.0], 2, 2).unwrap();
        let mut dst = vec![0f32; 4];
        qw.add_product(&[1.0, f32::INFINITY, 1.0, 1.0], 2, &mut dst);
        assert!(dst[0].is_nan() && dst[1].is_nan() && dst[2].is_finite() && dst[3].is_finite());
    }
}
