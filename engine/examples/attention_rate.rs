//! The attention's rate on one thread, in-process: `attention::head` (keys transposed, values
//! packed, scores, softmax, context) for every head of sequences of a given length, at
//! MiniLM's shape (12 heads of 32 values) or BERT-base's (12 of 64); best of `REPS` passes after one
//! to warm up; prints G products/s (the scores' and the context's multiply-adds, `2 len^2 head_dim`
//! a head) per length, each head asking for the next one's rows as `FusedAttention` does. AVX-512
//! only (the register tiles' path).
//! Usage: attention_rate [HEAD_DIM (default 32)] [REPS (default 20)]

use std::time::Instant;

use engine::model::cpu::attention::{self, HeadIo, Scratch};

mod common;

fn main() {
    let usage = "attention_rate [HEAD_DIM] [REPS]";
    let hd = common::whole_number(1, 32, usage);
    let reps = common::whole_number(2, 20, usage).max(1);
    if !attention::supported(hd) {
        eprintln!("attention_rate: the register tiles do not run here for heads of {hd} values (AVX-512 and a multiple of 16 up to 128)");
        std::process::exit(2)
    }
    let heads = 12;
    let h = heads * hd;
    let mut next = common::values();
    for len in [16usize, 32, 64, 83, 128, 200] {
        // A forward pass's worth of rows: sequences of `len` tokens packed one after another.
        let seqs = (1024 / len).max(1);
        let rows = seqs * len;
        let qkv: Vec<f32> = (0..rows * 3 * h).map(|_| next()).collect();
        let mut ctx = vec![0f32; rows * h];
        let mut scratch = Scratch::default();
        // Where head `a` of sequence `s` begins: its queries, keys and values in qkv.
        let starts_of =
            |s: usize, a: usize| [0, 1, 2].map(|part| s * len * 3 * h + part * h + a * hd);
        let mut best = f64::INFINITY;
        for rep in 0..=reps {
            let t = Instant::now();
            for s in 0..seqs {
                for a in 0..heads {
                    let [q, k, v] = starts_of(s, a).map(|i| qkv[i..].as_ptr());
                    let io = HeadIo {
                        q,
                        k,
                        v,
                        stride: 3 * h,
                        out: ctx[s * len * h + a * hd..].as_mut_ptr(),
                        out_stride: h,
                    };
                    // The next head's rows asked for while this one runs, as FusedAttention does.
                    let (s2, a2) = if a + 1 < heads {
                        (s, a + 1)
                    } else {
                        (s + 1, 0)
                    };
                    let next = starts_of(s2, a2).map(|i| qkv.as_ptr().wrapping_add(i));
                    attention::prefetch_head(len, hd, next, 3 * h);
                    // Safety: supported(hd) was checked; the pointers cover `len` rows at their strides.
                    unsafe { attention::head(len, hd, 0.125, io, &mut scratch) };
                }
            }
            let e = t.elapsed().as_secs_f64();
            if rep > 0 {
                best = best.min(e);
            }
        }
        let products = (seqs * heads * 2 * len * len * hd) as f64;
        println!(
            "len {len:4}: {:6.1} G products/s ({:.3} ms a pass of {seqs} sequences, checksum {:.3})",
            products / best / 1e9,
            best * 1e3,
            ctx.iter().map(|&x| x as f64).sum::<f64>()
        );
    }
}
