//! Attention as a candle custom op: from the fused QKV projection to the attention context, per
//! (sequence, head) in parallel: scores for the sequence's real tokens only, softmax, times `V`.
//! The sequences lie one after another, each in its own span of rows: padded to one length, or
//! packed (a span is the sequence's real tokens, no padding rows at all). Padding keys are left out
//! exactly (not down-weighted), so a sequence's result does not depend on its batch; padding rows of
//! the output are zero. A head runs on the AVX-512 register tiles of
//! [`super::attention`] where the CPU and the head size allow, else on the general GEMM and the
//! element-wise softmax. The top of the kernels.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;

use super::attention;
use super::elementwise::{score_stride, softmax, softmax_padded};
use super::linear::gemm_f32;
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
    /// Only the first token's row of each sequence: the output is `(sequences, hidden)`.
    pub first_token_only: bool,
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
        if self.first_token_only {
            return Ok((CpuStorage::F32(self.first_rows(qkv)), Shape::from((b, h))));
        }
        // Every value is written once: the real rows by their (sequence, head) tasks, the padding
        // rows (zero) by each sequence's head-0 task.
        let mut ctx: Vec<f32> = Vec::with_capacity(rows * h);
        let out = SharedMut(ctx.as_mut_ptr());
        let tiles = attention::supported(hd);
        (0..b * nh).into_par_iter().for_each_init(
            Default::default,
            |(scores, scratch): &mut (Vec<f32>, attention::Scratch), task| {
                let (bi, head) = (task / nh, task % nh);
                let (row0, span) = (self.starts[bi], self.starts[bi + 1] - self.starts[bi]);
                let len = self.lengths[bi].min(span);
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
                let q = qkv[row0 * 3 * h + head * hd..].as_ptr();
                let k = qkv[row0 * 3 * h + h + head * hd..].as_ptr();
                let v = qkv[row0 * 3 * h + 2 * h + head * hd..].as_ptr();
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

impl FusedAttention<'_> {
    /// The attention context of each sequence's first token, `(batch, hidden)`: one query row against
    /// the sequence's real keys, per (sequence, head).
    fn first_rows(&self, qkv: &[f32]) -> Vec<f32> {
        let (nh, hd) = (self.heads, self.head_dim);
        let h = nh * hd;
        let mut ctx = vec![0f32; self.lengths.len() * h];
        ctx.par_chunks_mut(h)
            .enumerate()
            .for_each_init(Vec::new, |scores, (bi, out)| {
                let row0 = self.starts[bi];
                let len = self.lengths[bi].min(self.starts[bi + 1] - row0);
                let row = |t: usize| &qkv[(row0 + t) * 3 * h..][..3 * h];
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
