//! The projections as candle custom ops, each one pass over its output where candle would make
//! several: [`FusedLinear`] is `x @ W + b (+ residual)`, optionally followed by GELU or LayerNorm (one
//! GEMM writing into a buffer that already holds the bias and residual, or, when GELU or LayerNorm
//! follows a batch's GEMM, that pass adding them as it goes), on the f32 products or the int8 ones;
//! [`FeedForwardInt8`] is the whole int8 feed-forward block, whose intermediate activations go from
//! the first product's tiles straight to the codes of the second. The top of the kernels: it calls
//! the products (`linear`, `int8`) and the element-wise kernels.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::elementwise::{add_gelu, add_row, gelu_slice, layer_norm};
use super::int8::QuantWeight;
use super::linear::{gemm_f32, PackedWeight, SMALL_ROWS};
use super::parallel::{may_split, SERIAL_ELEMENTS};
use super::tensor::{f32_slice, with_f32};

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
    pub quant: Option<&'a QuantWeight>,
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
/// reads ([`QuantWeight::gelu_codes`]): the same bits as two [`FusedLinear`]s, without
/// the `rows x intermediate` f32 output in memory.
pub struct FeedForwardInt8<'a> {
    pub intermediate: &'a QuantWeight,
    pub intermediate_bias: &'a Tensor,
    pub output: &'a QuantWeight,
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

/// A pass over one output row, given the residual's row (if any).
type RowFn<'a> = dyn Fn(&mut [f32], Option<&[f32]>) + Sync + 'a;

#[cfg(test)]
mod tests {
    use super::super::parallel::with_splitting;
    use super::*;

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
}
