//! The int8 projection's rate on one thread, in-process: `rows x inp` activations quantised and
//! multiplied by an `inp x out` weight (`QuantWeight::product_into`, epilogue and bias included),
//! for MiniLM's four shapes at a forward pass of 1,024 rows; best of `REPS` passes after one to warm
//! up; prints G products/s per shape and the CPU's int8 kernel.
//! Usage: int8_rate [ROWS (default 1024)] [REPS (default 20)]

use std::time::Instant;

use engine::model::cpu::int8::{kernel_name, QuantWeight};
use engine::model::cpu::parallel::with_splitting;

mod common;

fn main() {
    let usage = "int8_rate [ROWS] [REPS]";
    let rows = common::whole_number(1, 1024, usage).max(1);
    let reps = common::whole_number(2, 20, usage).max(1);
    let mut next = common::values();
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
