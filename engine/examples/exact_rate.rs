//! Exact search's rate on one setting: every query of an `.npy` file against an index folder's
//! matrix at top `K`, in-process (no start-up, no output), best of `REPS` passes after one to warm
//! up; prints queries/s. The engine picks the f32 scan or a pre-scan as it would in a search;
//! `SIMLM_EXACT_PRESCAN=0` keeps the f32 scan, `SIMLM_EXACT_PRESCAN=force` takes the CPU's first
//! pre-scan wherever it runs, and `int8` or `bf16` that one, so runs side by side compare them.
//! Usage: exact_rate INDEX_DIR QUERIES.npy K [REPS (default 5)]

use std::time::Instant;

use engine::index::{Index, SearchMode};
use engine::store::npy::NpyMatrix;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: exact_rate INDEX_DIR QUERIES.npy K [REPS]");
        std::process::exit(2);
    }
    let index = Index::open(std::path::Path::new(&args[1])).unwrap_or_else(|e| fail(&e));
    let q = NpyMatrix::open(std::path::Path::new(&args[2])).unwrap_or_else(|e| fail(&e));
    let queries = q.rows_f32(0, q.rows()).into_owned();
    let number = |s: &str, what: &str| -> usize {
        s.parse()
            .unwrap_or_else(|_| fail(&format!("{what} must be a whole number, not {s:?}")))
    };
    let k = number(&args[3], "K");
    let reps = args.get(4).map_or(5, |s| number(s, "REPS")).max(1);
    let search = || {
        index
            .search(&queries, k, SearchMode::Exact)
            .unwrap_or_else(|e| fail(&e))
    };
    search();
    let mut best = 0f64;
    for _ in 0..reps {
        let t = Instant::now();
        search();
        best = best.max(q.rows() as f64 / t.elapsed().as_secs_f64());
    }
    println!("{best:.0}");
}

fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("exact_rate: {e}");
    std::process::exit(1)
}
