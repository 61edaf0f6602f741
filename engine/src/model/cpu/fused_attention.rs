//! Attention as a candle custom op: from the fused QKV projection to the attention context, per
//! (sequence, head) in parallel: scores for the sequence's real tokens only, softmax, times `V`.
//! The sequences lie one after another, each in its own span of rows: padded to one length, or
//! packed (a span is the sequence's real tokens, no padding rows at all). Padding keys are left out
//! exactly (not down-weighted), so a sequence's result does not depend on its batch; padding rows of
//! the output are zero. A head runs on the AVX-512 register tiles of
//! [`super::attention`] where the CPU and the head size allow, else on the general GEMM and the
//! element-wise softmax. [`FirstRowAttention`] is the attention of each sequence's first row alone
//! ([CLS] pooling's last layer), straight from the layer's input rows. The top of the kernels.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;

use super::attention;
use super::elementwise::{add_scaled_rows, score_stride, softmax, softmax_padded};
use super::linear::gemm_f32;
use super::parallel::may_split;
use super::parallel::SharedMut;
use super::tensor::f32_slice;

/// Attention context from the fused QKV projection `(rows, 3 * hidden)`.
pub struct FusedAttention<'a> {
    /// Where each sequence's span of rows begins, and after the last, the rows in all: sequence `i`
    /// holds rows `starts[i]..starts[i + 1]`, its first `lengths[i]` real.
    pub starts: &'a [usize],
    pub heads: usize,
    pub head_dim: usize,
    /// Real tokens of each sequence (the rest is padding).
    pub lengths: &'a [usize],
    pub scale: f32,
}

impl CustomOp1 for FusedAttention<'_> {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(s, l, "fused-attention input")?;
        let (nh, hd) = (self.heads, self.head_dim);
        let h = nh * hd;
        let b = self.lengths.len();
        let rows = self.starts.last().copied().unwrap_or(0);
        if self.starts.len() != b + 1
            || self.starts.windows(2).any(|w| w[0] > w[1])
            || qkv.len() != rows * 3 * h
        {
            candle_core::bail!("fused-attention: shape mismatch");
        }
        // Every value is written once: the real rows by their (sequence, head) tasks, the padding
        // rows (zero) by each sequence's head-0 task.
        let mut ctx: Vec<f32> = Vec::with_capacity(rows * h);
        let out = SharedMut(ctx.as_mut_ptr());
        let tiles = attention::supported(hd);
        // A task's sequence and head: its first row, its span of rows, its real tokens, its head.
        let place = |task: usize| {
            let (bi, head) = (task / nh, task % nh);
            let (row0, span) = (self.starts[bi], self.starts[bi + 1] - self.starts[bi]);
            (row0, span, self.lengths[bi].min(span), head)
        };
        // Where a head's queries, keys and values begin in row `row0` of qkv.
        let starts_of =
            |row0: usize, head: usize| [0, 1, 2].map(|part| row0 * 3 * h + part * h + head * hd);
        (0..b * nh).into_par_iter().for_each_init(
            Default::default,
            |(scores, scratch): &mut (Vec<f32>, attention::Scratch), task| {
                let (row0, span, len, head) = place(task);
                if head == 0 {
                    // Safety: rows row0+len..row0+span of ctx (rows x h) are this sequence's
                    // padding, written by no other task.
                    unsafe {
                        std::ptr::write_bytes(out.ptr().add((row0 + len) * h), 0, (span - len) * h)
                    };
                }
                if len == 0 {
                    return;
                }
                let [q, k, v] = starts_of(row0, head).map(|i| qkv[i..].as_ptr());
                // The next task's rows (most often this thread's next), asked for while this one runs.
                if task + 1 < b * nh {
                    let (row0, _, len, head) = place(task + 1);
                    let rows = starts_of(row0, head).map(|i| qkv.as_ptr().wrapping_add(i));
                    attention::prefetch_head(len, hd, rows, 3 * h);
                }
                #[cfg(target_arch = "x86_64")]
                if tiles {
                    let io = attention::HeadIo {
                        q,
                        k,
                        v,
                        stride: 3 * h,
                        // Safety: row row0 of ctx (rows x h), this head's columns.
                        out: unsafe { out.ptr().add(row0 * h + head * hd) },
                        out_stride: h,
                    };
                    // Safety: the level and head size were checked (`tiles`); rows row0..row0+len of
                    // qkv and ctx, this head's columns, which no other task writes.
                    unsafe { attention::head(len, hd, self.scale, io, scratch) };
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
        // Safety: the tasks wrote every one of the rows * h values (see above).
        unsafe { ctx.set_len(rows * h) };
        Ok((CpuStorage::F32(ctx), Shape::from((rows, h))))
    }
}

/// The attention context of each sequence's first row, `(sequences, hidden)`, from the layer's
/// input rows and its QKV weight: what the last layer needs under [CLS] pooling, without the other
/// rows' queries, keys and values. Per head, with the first row's query `q`, row `t`'s score is
/// `q . (x_t W_K + b_K) = x_t . (W_K q) + q . b_K`, where the constant `q . b_K` leaves the softmax
/// as it is, and the context is `sum_t p_t (x_t W_V + b_V) = (sum_t p_t x_t) W_V + b_V`, the
/// weights summing to one. A sequence of `n` rows then costs its first row's query, `W_K q` and
/// `W_V`'s product with the weighted row sum (`3 inp h` products in all) and two passes over its
/// rows (`2 n inp` products a head), where projecting every row's Q, K and V took `3 n inp h`: for
/// the 384-wide MiniLM's 12 heads, 4,608 products a row and pass against 442,368.
pub struct FirstRowAttention<'a> {
    /// As [`FusedAttention::starts`].
    pub starts: &'a [usize],
    pub heads: usize,
    pub head_dim: usize,
    /// Real tokens of each sequence (the rest is padding).
    pub lengths: &'a [usize],
    pub scale: f32,
    /// The layer's QKV weight `(in, 3 * hidden)`, row-major: Q, K and V side by side.
    pub weight: &'a [f32],
    /// Its K block transposed, `(hidden, in)` ([`keys_transposed`]).
    pub keys_t: &'a [f32],
    /// Its bias, `3 * hidden`.
    pub bias: &'a [f32],
}

/// The K block of a QKV weight `(inp, 3 * h)`, transposed to `(h, inp)`: [`FirstRowAttention`]'s
/// `W_K q` as a sum of rows.
pub fn keys_transposed(weight: &[f32], inp: usize, h: usize) -> Vec<f32> {
    let mut t = vec![0f32; h * inp];
    for (k, row) in weight.chunks_exact(3 * h).enumerate().take(inp) {
        for (c, &v) in row[h..2 * h].iter().enumerate() {
            t[c * inp + k] = v;
        }
    }
    t
}

impl CustomOp1 for FirstRowAttention<'_> {
    fn name(&self) -> &'static str {
        "first-row-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "first-row attention input")?;
        let (rows, inp) = l.shape().dims2()?;
        let (nh, hd) = (self.heads, self.head_dim);
        let h = nh * hd;
        let b = self.lengths.len();
        if self.starts.len() != b + 1
            || self.starts.windows(2).any(|w| w[0] > w[1])
            || self.starts[b] != rows
            || self.weight.len() != inp * 3 * h
            || self.keys_t.len() != h * inp
            || self.bias.len() != 3 * h
        {
            candle_core::bail!("first-row attention: shape mismatch");
        }
        let len = |bi: usize| self.lengths[bi].min(self.starts[bi + 1] - self.starts[bi]);
        // Each sequence's query, `W_K q` and context come from loops whose order of operations does
        // not depend on the other sequences of the batch (a product over the batch's rows could take
        // other kernels for other row counts), so that a vector does not depend on its batch.
        // The first rows' queries, (b, h): bias, then x0[k] W_Q[k] for k in order. A sequence
        // without a real row keeps a zero row here and a zero context below.
        let w = self.weight;
        let mut q = vec![0f32; b * h];
        for bi in (0..b).filter(|&bi| len(bi) > 0) {
            let (x0, q) = (&x[self.starts[bi] * inp..][..inp], &mut q[bi * h..][..h]);
            q.copy_from_slice(&self.bias[..h]);
            add_scaled_rows(q, x0, w, 3 * h);
        }
        // u[bi][a] = W_K^a q_a (inp values): q_a[d] times row a hd + d of W_K^T, for d in order.
        let mut u = vec![0f32; b * nh * inp];
        for bi in (0..b).filter(|&bi| len(bi) > 0) {
            for a in 0..nh {
                let u = &mut u[(bi * nh + a) * inp..][..inp];
                add_scaled_rows(
                    u,
                    &q[bi * h + a * hd..][..hd],
                    &self.keys_t[a * hd * inp..],
                    inp,
                );
            }
        }
        // g[bi][a] = sum_t p_t x_t over the sequence's real rows, p the softmax of its scores.
        let mut g = vec![0f32; b * nh * inp];
        let sequence = |scratch: &mut (Vec<f32>, Vec<f32>), bi: usize, g: &mut [f32]| {
            let n = len(bi);
            if n == 0 {
                return;
            }
            let (scores, p) = scratch;
            scores.resize(n * nh, 0.0);
            p.resize(n * nh, 0.0);
            let xs = x[self.starts[bi] * inp..].as_ptr();
            // Safety: rows starts[bi]..starts[bi] + n of x (rows x inp), u's block bi, the
            // scratch buffers (n x nh and nh x n), g's block bi (nh x inp).
            unsafe {
                // scores (n x nh) = X (n x inp) @ U_bi^T (inp x nh)
                gemm_f32(
                    n,
                    nh,
                    inp,
                    scores.as_mut_ptr(),
                    nh as isize,
                    false,
                    xs,
                    inp as isize,
                    1,
                    u.as_ptr().add(bi * nh * inp),
                    1,
                    inp as isize,
                    false,
                );
            }
            for a in 0..nh {
                let row = &mut p[a * n..][..n];
                for (t, v) in row.iter_mut().enumerate() {
                    *v = scores[t * nh + a];
                }
                softmax(row, self.scale);
            }
            unsafe {
                // g_bi (nh x inp) = P (nh x n) @ X (n x inp)
                gemm_f32(
                    nh,
                    inp,
                    n,
                    g.as_mut_ptr(),
                    inp as isize,
                    false,
                    p.as_ptr(),
                    n as isize,
                    1,
                    xs,
                    inp as isize,
                    1,
                    false,
                );
            }
        };
        if may_split() {
            g.par_chunks_mut(nh * inp)
                .enumerate()
                .for_each_init(Default::default, |scratch, (bi, g)| {
                    sequence(scratch, bi, g)
                });
        } else {
            let mut scratch = Default::default();
            for (bi, g) in g.chunks_mut(nh * inp).enumerate() {
                sequence(&mut scratch, bi, g);
            }
        }
        // ctx (b x h): b_V, then per head, for k in order, g_a[k] times its block of W_V's row k.
        let mut ctx = vec![0f32; b * h];
        for bi in (0..b).filter(|&bi| len(bi) > 0) {
            let (ctx, g) = (&mut ctx[bi * h..][..h], &g[bi * nh * inp..][..nh * inp]);
            ctx.copy_from_slice(&self.bias[2 * h..]);
            for a in 0..nh {
                let v = &w[2 * h + a * hd..];
                add_scaled_rows(&mut ctx[a * hd..][..hd], &g[a * inp..][..inp], v, 3 * h);
            }
        }
        Ok((CpuStorage::F32(ctx), Shape::from((b, h))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Uniform values in [-1, 1) from a fixed seed.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The first row's attention as the layer defines it, in f64: every real row's Q, K and V
    /// projected, the first row's scores against the real keys, softmax, times V; zero for a
    /// sequence without a real row.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[f32],
        inp: usize,
        w: &[f32],
        bias: &[f32],
        starts: &[usize],
        lengths: &[usize],
        heads: usize,
        hd: usize,
        scale: f32,
    ) -> Vec<f64> {
        let h = heads * hd;
        let proj = |r: usize, c: usize| -> f64 {
            bias[c] as f64
                + (0..inp)
                    .map(|k| x[r * inp + k] as f64 * w[k * 3 * h + c] as f64)
                    .sum::<f64>()
        };
        let mut out = vec![0f64; lengths.len() * h];
        for (bi, &n) in lengths.iter().enumerate() {
            let r0 = starts[bi];
            for a in 0..heads {
                let q: Vec<f64> = (0..hd).map(|d| proj(r0, a * hd + d)).collect();
                let s: Vec<f64> = (0..n)
                    .map(|t| {
                        scale as f64
                            * (0..hd)
                                .map(|d| q[d] * proj(r0 + t, h + a * hd + d))
                                .sum::<f64>()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    out[bi * h + a * hd + d] = (0..n)
                        .map(|t| e[t] / z * proj(r0 + t, 2 * h + a * hd + d))
                        .sum();
                }
            }
        }
        out
    }

    #[test]
    fn first_row_attention_matches_projecting_every_row() {
        // (heads, head size, input width, sequence spans, real lengths): packed spans, padded spans
        // with a sequence that has no real row, a single sequence, and a head size no vector divides.
        let cases = [
            (4, 16, 64, &[9, 1, 30, 17][..], &[9, 1, 30, 17][..]),
            (3, 5, 7, &[6, 6, 6], &[4, 0, 6]),
            (12, 32, 384, &[23], &[23]),
            (2, 8, 33, &[40, 40], &[40, 3]),
        ];
        for (ci, (heads, hd, inp, spans, lengths)) in cases.into_iter().enumerate() {
            let (spans, lengths): (&[usize], &[usize]) = (spans, lengths);
            let h = heads * hd;
            let starts: Vec<usize> = std::iter::once(0)
                .chain(spans.iter().scan(0, |at, &n| {
                    *at += n;
                    Some(*at)
                }))
                .collect();
            let rows = starts[spans.len()];
            let x = values(rows * inp, 1 + ci as u64);
            // Weights of about the size the rows' products stay near one with.
            let w: Vec<f32> = values(inp * 3 * h, 100 + ci as u64)
                .into_iter()
                .map(|v| v * 2.0 / (inp as f32).sqrt())
                .collect();
            let bias = values(3 * h, 200 + ci as u64);
            let scale = 1.0 / (hd as f32).sqrt();
            let want = reference(&x, inp, &w, &bias, &starts, lengths, heads, hd, scale);
            let keys_t = keys_transposed(&w, inp, h);
            // The op over `rows` (spans `starts`, real lengths `lengths`), its `(sequences, h)`
            // output flattened.
            let run = |rows: &[f32], starts: &[usize], lengths: &[usize], split: bool| {
                let xt = Tensor::from_vec(rows.to_vec(), (rows.len() / inp, inp), &Device::Cpu);
                let got = super::super::parallel::with_splitting(split, || {
                    xt.unwrap().apply_op1_no_bwd(&FirstRowAttention {
                        starts,
                        heads,
                        head_dim: hd,
                        lengths,
                        scale,
                        weight: &w,
                        keys_t: &keys_t,
                        bias: &bias,
                    })
                })
                .unwrap();
                assert_eq!(got.dims(), &[lengths.len(), h]);
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            };
            for split in [false, true] {
                let got = run(&x, &starts, lengths, split);
                for (i, (&g, &e)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - e).abs() <= 2e-5 * (1.0 + e.abs()),
                        "case {ci}, value {i}: {g} against {e}"
                    );
                }
                // A sequence without a real row: a zero context, as in the layer's attention.
                for (bi, _) in lengths.iter().enumerate().filter(|(_, &n)| n == 0) {
                    assert!(got[bi * h..][..h].iter().all(|&v| v == 0.0));
                }
                // Each sequence alone gives the same bits as in its batch.
                for (bi, &n) in lengths.iter().enumerate() {
                    let span = starts[bi + 1] - starts[bi];
                    let alone = run(
                        &x[starts[bi] * inp..][..span * inp],
                        &[0, span],
                        &[n],
                        split,
                    );
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&alone),
                        bits(&got[bi * h..][..h]),
                        "case {ci}, sequence {bi}"
                    );
                }
            }
        }
    }

    #[test]
    fn first_row_attention_refuses_mismatched_shapes() {
        let x = Tensor::zeros((5, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let (w, keys_t, bias) = (vec![0f32; 8 * 3 * 4], vec![0f32; 4 * 8], vec![0f32; 3 * 4]);
        let op = |starts: &[usize], w: &[f32]| {
            x.apply_op1_no_bwd(&FirstRowAttention {
                starts,
                heads: 2,
                head_dim: 2,
                lengths: &[2, 3],
                scale: 1.0,
                weight: w,
                keys_t: &keys_t,
                bias: &bias,
            })
            .map(|_| ())
        };
        assert!(op(&[0, 2, 5], &w).is_ok());
        assert!(op(&[0, 2, 4], &w).is_err(), "spans short of the rows");
        assert!(op(&[0, 3, 2], &w).is_err(), "spans out of order");
        assert!(op(&[0, 2, 5], &w[1..]).is_err(), "weight of the wrong size");
    }
}
