//! The int8 projection's rate on one thread, in-process: `rows x inp` activations quantised and
//! multiplied by an `inp x out` weight (`QuantWeight::product_into`, epilogue and bias included),
//! for MiniLM's four shapes at a forward pass of 1,024 rows; best of `REPS` passes after one to warm
//! up; prints G products/s per shape and the CPU's int8 kernel.
//! Usage: int8_rate [ROWS (default 1024)] [REPS (default 20)]

use std::time::Instant;

use engine::model::cpu::int8::{kernel_name, QuantWeight};
use engine::model::cpu::parallel::with_splitting;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let number = |i: usize, default: usize| -> usize {
        args.get(i).map_or(default, |s| {
            s.parse().unwrap_or_else(|_| {
                eprintln!(
                    "int8_rate: {s:?} is not a whole number (usage: int8_rate [ROWS] [REPS])"
                );
                std::process::exit(2)
            })
        })
    };
    let (rows, reps) = (number(1, 1024).max(1), number(2, 20).max(1));
    let mut seed = 1u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    println!(
        "int8 kernel: {}; {rows} rows, one thread, best of {reps}",
        kernel_name()
    );
    for (name, inp, out) in [
        ("qkv", 384, 1152),
        ("attn_out", 384, 384),
        ("ffn_up", 384, 1536),
        ("ffn_down", 1536, 384),
    ] {
        let w: Vec<Vec<f32>> = (0..out)
            .map(|_| (0..inp).map(|_| next() * 0.1).collect())
            .collect();
        let rows_of: Vec<&[f32]> = w.iter().map(|r| &r[..]).collect();
        let q = QuantWeight::from_rows(&rows_of, inp).expect("finite weights");
        let x: Vec<f32> = (0..rows * inp).map(|_| next()).collect();
        let bias = vec![0.5f32; out];
        let mut dst = vec![std::mem::MaybeUninit::<f32>::uninit(); rows * out];
        let mut best = f64::INFINITY;
        with_splitting(false, || {
            for i in 0..=reps {
                let t = Instant::now();
                q.product_into(&x, rows, &bias, None, &mut dst, false);
                if i > 0 {
                    best = best.min(t.elapsed().as_secs_f64());
                }
            }
        });
        let products = (rows * inp * out) as f64;
        println!(
            "{name:>9} {inp:>5} x {out:<5} {:7.1} G products/s",
            products / best / 1e9
        );
    }
}
