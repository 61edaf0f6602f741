//! The attention's rate on one thread, in-process: `attention::head` (keys transposed, queries and
//! values packed, scores, softmax, context) for every head of sequences of a given length, at
//! MiniLM's shape (12 heads of 32 values) or BERT-base's (12 of 64); best of `REPS` passes after one
//! to warm up; prints G products/s (the scores' and the context's multiply-adds, `2 len^2 head_dim`
//! a head) per length, each head asking for the next one's rows as `FusedAttention` does. AVX-512
//! only (the register tiles' path).
//! Usage: attention_rate [HEAD_DIM (default 32)] [REPS (default 20)]

use std::time::Instant;

use engine::model::cpu::attention::{self, HeadIo, Scratch};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let number = |i: usize, default: usize| -> usize {
        args.get(i).map_or(default, |s| {
            s.parse().unwrap_or_else(|_| {
                eprintln!("attention_rate: {s:?} is not a whole number (usage: attention_rate [HEAD_DIM] [REPS])");
                std::process::exit(2)
            })
        })
    };
    let (hd, reps) = (number(1, 32), number(2, 20).max(1));
    if !attention::supported(hd) {
        eprintln!("attention_rate: the register tiles do not run here for heads of {hd} values (AVX-512 and a multiple of 16 up to 128)");
        std::process::exit(2)
    }
    let heads = 12;
    let h = heads * hd;
    let mut seed = 1u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    for len in [16usize, 32, 64, 83, 128, 200] {
        // A forward pass's worth of rows: sequences of `len` tokens packed one after another.
        let seqs = (1024 / len).max(1);
        let rows = seqs * len;
        let qkv: Vec<f32> = (0..rows * 3 * h).map(|_| next()).collect();
        let mut ctx = vec![0f32; rows * h];
        let mut scratch = Scratch::default();
        let mut best = f64::INFINITY;
        for rep in 0..=reps {
            let t = Instant::now();
            for s in 0..seqs {
                for a in 0..heads {
                    let row0 = s * len;
                    let io = HeadIo {
                        q: qkv[row0 * 3 * h + a * hd..].as_ptr(),
                        k: qkv[row0 * 3 * h + h + a * hd..].as_ptr(),
                        v: qkv[row0 * 3 * h + 2 * h + a * hd..].as_ptr(),
                        stride: 3 * h,
                        out: ctx[row0 * h + a * hd..].as_mut_ptr(),
                        out_stride: h,
                    };
                    // The next head's rows asked for while this one runs, as FusedAttention does.
                    {
                        let (s2, a2) = if a + 1 < heads {
                            (s, a + 1)
                        } else {
                            (s + 1, 0)
                        };
                        let r2 = s2 * len;
                        let next = HeadIo {
                            q: qkv.as_ptr().wrapping_add(r2 * 3 * h + a2 * hd),
                            k: qkv.as_ptr().wrapping_add(r2 * 3 * h + h + a2 * hd),
                            v: qkv.as_ptr().wrapping_add(r2 * 3 * h + 2 * h + a2 * hd),
                            ..io
                        };
                        attention::prefetch_head(len, hd, &next);
                    }
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
