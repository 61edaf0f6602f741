//! Builds the HNSW graph over an `.npy` matrix and reports the time (benchmark driver; peak memory is
//! measured by the caller). Usage: hnsw_build VECTORS.npy M EF_CONSTRUCTION [OUT_DIR]

use std::time::Instant;

use engine::search::hnsw::{self, HnswParams};
use engine::store::npy::NpyMatrix;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: hnsw_build VECTORS.npy M EF_CONSTRUCTION [OUT_DIR]");
        std::process::exit(2);
    }
    let m = NpyMatrix::open(std::path::Path::new(&args[1])).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let params = HnswParams {
        m: args[2].parse().unwrap(),
        ef_construction: args[3].parse().unwrap(),
    };
    let t = Instant::now();
    let g = hnsw::build(&m, params, &|_| {}).unwrap();
    let secs = t.elapsed().as_secs_f64();
    if let Some(out) = args.get(4) {
        std::fs::create_dir_all(out).unwrap();
        g.save(&std::path::Path::new(out).join(engine::store::layout::GRAPH))
            .unwrap();
    }
    println!("build_seconds {secs:.3} rows {} dim {}", m.rows(), m.cols());
}
