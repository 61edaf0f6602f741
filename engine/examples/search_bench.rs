//! Search benchmark driver: exact search (k 10 and 1000) and HNSW at several ef over an index folder, with queries
//! from an `.npy` file. Prints queries/s, recall@10 against exact, and the time to the first answer
//! (open + map + graph load + one query); each setting's speed is the best of three passes. Usage: search_bench INDEX_DIR QUERIES.npy EF[,EF...]

use std::time::Instant;

use engine::index::{Index, SearchMode};
use engine::store::npy::NpyMatrix;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: search_bench INDEX_DIR QUERIES.npy EF[,EF...]");
        std::process::exit(2);
    }
    let dir = std::path::Path::new(&args[1]);
    let q = NpyMatrix::open(std::path::Path::new(&args[2])).unwrap();
    let queries = q.rows_f32(0, q.rows()).into_owned();
    let efs: Vec<usize> = args[3].split(',').map(|s| s.parse().unwrap()).collect();
    let d = q.cols();

    let t = Instant::now();
    let index = Index::open(dir).unwrap();
    let _ = index.search(&queries[..d], 10, SearchMode::Exact).unwrap();
    println!(
        "first_answer_exact_ms {:.1}",
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let _ = index.graph().unwrap();
    let _ = index
        .search(&queries[..d], 10, SearchMode::Hnsw { ef: efs[0] })
        .unwrap();
    println!(
        "first_answer_hnsw_extra_ms {:.1}",
        t.elapsed().as_secs_f64() * 1e3
    );

    // Every indexed vector searched for itself at the default ef: is its own row first (or tied with
    // the first, as exact duplicates are)? SELF_MISSES=1 lists the rows that are not.
    let n = index.vectors.rows();
    let selves = index
        .search(
            &index.vectors.rows_f32(0, n),
            10,
            SearchMode::Hnsw {
                ef: engine::search::hnsw::DEFAULT_EF,
            },
        )
        .unwrap();
    let misses: Vec<(usize, &Vec<engine::search::Hit>)> = selves
        .iter()
        .enumerate()
        .filter(|(r, hits)| {
            !hits
                .iter()
                .take_while(|h| h.score >= hits[0].score)
                .any(|h| h.row == *r)
        })
        .collect();
    println!("self_first {} of {n}", n - misses.len());
    if std::env::var_os("SELF_MISSES").is_some() {
        for (r, hits) in &misses {
            println!("miss {r} top {} {}", hits[0].row, hits[0].score);
        }
    }

    let nq = q.rows();
    let (secs, exact) = best_of_three(|| index.search(&queries, 10, SearchMode::Exact).unwrap());
    println!("exact qps {:.1}", nq as f64 / secs);
    let (secs, _) = best_of_three(|| index.search(&queries, 1000, SearchMode::Exact).unwrap());
    println!("exact1000 qps {:.1}", nq as f64 / secs);
    for ef in efs {
        let (secs, approx) =
            best_of_three(|| index.search(&queries, 10, SearchMode::Hnsw { ef }).unwrap());
        let mut hit = 0usize;
        for (e, a) in exact.iter().zip(&approx) {
            hit += a
                .iter()
                .filter(|h| e.iter().any(|x| x.row == h.row))
                .count();
        }
        println!(
            "hnsw ef {ef} qps {:.1} recall10 {:.4}",
            nq as f64 / secs,
            hit as f64 / (nq * 10) as f64
        );
    }
}

/// The fastest of three runs of `f` (the same work each time: timing noise only slows a run), in
/// seconds, with the last run's result.
fn best_of_three<T>(f: impl Fn() -> T) -> (f64, T) {
    let mut secs = f64::INFINITY;
    let mut out = None;
    for _ in 0..3 {
        let t = Instant::now();
        out = Some(f());
        secs = secs.min(t.elapsed().as_secs_f64());
    }
    (secs, out.expect("three runs"))
}
