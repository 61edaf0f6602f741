//! One-query encoding latency, as a REPL or a service pays it: loads a model, encodes each query of a
//! TSV file (`id<TAB>text`) alone, in SimLM's query format, and prints the latency percentiles as one
//! JSON line. The first 10 queries warm up and are not counted.
//! Usage: encode_latency MODEL_DIR QUERIES.tsv N [THREADS [PRECISION]]   (PRECISION: f32 | int8 | ...)

use std::time::Instant;

use engine::{Doc, Encoder, EncoderOptions, Kind, Precision};

fn main() {
    engine::memory::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: encode_latency MODEL_DIR QUERIES.tsv N [THREADS [PRECISION]]");
        std::process::exit(2);
    }
    let n: usize = args[3].parse().expect("N: a number of queries");
    if let Some(t) = args.get(4) {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t.parse().expect("THREADS: a number"))
            .build_global()
            .expect("thread pool");
    }
    let precision: Precision = match args.get(5) {
        Some(p) => p.parse().unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(2)
        }),
        None => Precision::F32,
    };
    let opts = EncoderOptions {
        precision,
        ..Default::default()
    };
    let enc = Encoder::load(&args[1], &opts).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let text = std::fs::read_to_string(&args[2]).unwrap_or_else(|e| {
        eprintln!("{}: {e}", args[2]);
        std::process::exit(1)
    });
    let queries: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once('\t').map(|(_, q)| q))
        .take(n + 10)
        .collect();
    let mut ms = Vec::with_capacity(n);
    for (i, q) in queries.iter().enumerate() {
        let t = Instant::now();
        let v = enc.encode(Kind::Query, &[Doc::query(q)]).unwrap();
        let dt = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(v.len(), enc.dim());
        if i >= 10 {
            ms.push(dt);
        }
    }
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    println!(
        "{{\"queries\": {}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"mean_ms\": {:.3}}}",
        ms.len(),
        pct(0.5),
        pct(0.99),
        ms.iter().sum::<f64>() / ms.len() as f64
    );
}
