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

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::cpu_ops::{SharedConst, SharedMut};
use crate::simd::{level, simd_dispatch, Level};

/// Output columns per weight panel.
const NR: usize = 16;
/// Weight panels per micro-tile: a tile covers `NP * NR` = 32 output columns.
const NP: usize = 2;
/// Rows per micro-tile.
const MR: usize = 8;
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
        let a = QuantRows::of(x, rows, self.inp, self.kp, !super::cpu_ops::may_split());
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
        let a = QuantRows::of(x, rows, self.inp, self.kp, !super::cpu_ops::may_split());
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
        let serial = !super::cpu_ops::may_split();
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
        let serial = !super::cpu_ops::may_split();
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
            out.sw[..used].copy_from_slice(&self.scale[c0..c0 + used]);
            out.cs[..used].copy_from_slice(&self.colsum[c0..c0 + used]);
            if let Some(bias) = bias {
                out.bias[..cols].copy_from_slice(&bias[c0..c0 + cols]);
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
                out.sa[..n].copy_from_slice(&a.scale[r0..r0 + n]);
                out.za[..n].copy_from_slice(&a.zero[r0..r0 + n]);
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
                super::cpu_ops::gelu_slice(std::slice::from_raw_parts_mut(
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

/// `x.round() as i32` (halves away from zero) for finite `x` of magnitude below 2^31, without a call
/// to libm: adding the largest float below one half, with `x`'s sign, then truncating gives the same
/// integer for every such `x` (at exactly a half the sum rounds up to the next integer; just below a
/// half it stays below it).
#[inline(always)]
fn round_half_away(x: f32) -> i32 {
    (x + 0.5f32.next_down().copysign(x)) as i32
}

/// Rows quantised to u8: `x[r, k] ~ scale[r] * (q[r * kp + k] - zero[r])`. Rows are `kp` bytes (zero
/// padded) and their count is padded to a whole micro-tile with zero rows.
pub struct QuantRows {
    q: Vec<u8>,
    scale: Vec<f32>,
    zero: Vec<i32>,
    /// The codes' row length.
    kp: usize,
}

/// One row's codes, input, scale and zero point, as the quantiser's iterators hand them out.
type RowItem<'a> = (
    (&'a mut [MaybeUninit<u8>], &'a [f32]),
    (&'a mut f32, &'a mut i32),
);

impl QuantRows {
    fn of(x: &[f32], rows: usize, inp: usize, kp: usize, serial: bool) -> QuantRows {
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
    fn unwritten(rows: usize, kp: usize) -> QuantRows {
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
    unsafe fn finish_padding(&mut self, rows: usize) {
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
fn quantize_row(x: &[f32], q: &mut [MaybeUninit<u8>]) -> (f32, i32) {
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

/// Where a micro-tile's products go: `dst[r * stride + c] = (res[r * stride + c] + bias[c]) + sa[r]
/// * sw[c] * (acc[r][c] - za[r] * cs[c])` for the first `rows` rows and `cols` columns (`bias[c]`
/// alone where `res` is null; `res` may be `dst`).
struct Out {
    rows: usize,
    cols: usize,
    sa: [f32; MR],
    za: [i32; MR],
    sw: [f32; NP * NR],
    cs: [i32; NP * NR],
    bias: [f32; NP * NR],
    dst: *mut f32,
    res: *const f32,
    stride: usize,
}

impl Out {
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
type TileFn = unsafe fn(usize, &[u8], &[i8], &Out);

fn tile_kernel() -> TileFn {
    match level() {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 if has_vnni() => tile_vnni_checked,
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 | Level::Avx2Fma => tile_avx2_checked,
        _ => tile_portable,
    }
}

/// Whether the CPU has AVX-512 VNNI (`vpdpbusd`) with the byte/word instructions beside it.
#[cfg(target_arch = "x86_64")]
fn has_vnni() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vnni")
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
unsafe fn tile_portable(kp: usize, a: &[u8], b: &[i8], out: &Out) {
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

/// Four rows by sixteen columns at a time (eight accumulators: AVX2 has sixteen registers), into an
/// accumulator array, then the scalar epilogue's operations.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tile_avx2(kp: usize, a: &[u8], b: &[i8], out: &Out) {
    use std::arch::x86_64::*;
    let panels = out.cols.div_ceil(NR);
    assert!(a.len() >= MR * kp && b.len() >= panels * kp * NR && kp.is_multiple_of(4));
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[0i32; NP * NR]; MR];
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
                let row = acc[4 * h + r][p * NR..].as_mut_ptr();
                _mm256_storeu_si256(row as *mut __m256i, c[2 * r]);
                _mm256_storeu_si256(row.add(8) as *mut __m256i, c[2 * r + 1]);
            }
        }
    }
    if out.rows < MR || out.cols < NP * NR {
        return out.write(&acc);
    }
    // The whole tile: Out::write's operations, eight columns at a time (no FMA, so the bits match the
    // scalar epilogue).
    for (r, acc) in acc.iter().enumerate() {
        let sa = _mm256_set1_ps(out.sa[r]);
        let za = _mm256_set1_epi32(out.za[r]);
        for c in (0..NP * NR).step_by(8) {
            let sw = _mm256_loadu_ps(out.sw.as_ptr().add(c));
            let cs = _mm256_loadu_si256(out.cs.as_ptr().add(c) as *const __m256i);
            let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(
                _mm256_loadu_si256(acc.as_ptr().add(c) as *const __m256i),
                _mm256_mullo_epi32(za, cs),
            ));
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
    }
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
    // The epilogue's lines of dst (and of the residual) are asked for now, so that they arrive
    // while the products run: the outputs are fresh memory, and waiting for them at the end was
    // about a third of this kernel's time.
    for r in 0..out.rows {
        for p in 0..P {
            let i = r * out.stride + p * NR;
            _mm_prefetch::<_MM_HINT_ET0>(out.dst.add(i) as *const i8);
            if !out.res.is_null() {
                _mm_prefetch::<_MM_HINT_T0>(out.res.add(i) as *const i8);
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    /// The vector kernels this CPU can run, by name (the dispatch picks one of them).
    fn cpu_kernels() -> Vec<(&'static str, TileFn)> {
        #[allow(unused_mut)]
        let mut k: Vec<(&'static str, TileFn)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                k.push(("AVX2", tile_avx2_checked));
            }
            if has_vnni() {
                k.push(("AVX-512 VNNI", tile_vnni_checked));
            }
        }
        k
    }

    /// The product against f64 arithmetic on the dequantised values (exact up to f32 rounding), and
    /// the kernel for this CPU against the portable one, bit for bit, on shapes with ragged edges.
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
                super::super::cpu_ops::gelu_slice(&mut want_gelu);
                for (gelu, want) in [(false, &want), (true, &want_gelu)] {
                    for split in [false, true] {
                        let mut got = Vec::with_capacity(rows * out);
                        super::super::cpu_ops::with_splitting(split, || {
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
                super::super::cpu_ops::with_splitting(split, || {
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
