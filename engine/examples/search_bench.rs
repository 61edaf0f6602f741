//! Search benchmark driver: exact search and HNSW at several ef over an index folder, with queries
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
    // the first, as exact duplicates are)?
    let n = index.vectors.rows();
    let all = index.vectors.rows_f32(0, n).into_owned();
    let selves = index
        .search(
            &all,
            10,
            SearchMode::Hnsw {
                ef: engine::search::hnsw::DEFAULT_EF,
            },
        )
        .unwrap();
    let first = selves
        .iter()
        .enumerate()
        .filter(|(r, hits)| {
            hits.iter()
                .take_while(|h| h.score >= hits[0].score)
                .any(|h| h.row == *r)
        })
        .count();
    println!("self_first {first} of {n}");
    if std::env::var_os("SELF_MISSES").is_some() {
        for (r, hits) in selves.iter().enumerate() {
            if !hits
                .iter()
                .take_while(|h| h.score >= hits[0].score)
                .any(|h| h.row == r)
            {
                println!("miss {r} top {} {}", hits[0].row, hits[0].score);
            }
        }
    }

    let nq = q.rows();
    let mut secs = f64::INFINITY;
    let mut exact = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        exact = index.search(&queries, 10, SearchMode::Exact).unwrap();
        secs = secs.min(t.elapsed().as_secs_f64());
    }
    println!("exact qps {:.1}", nq as f64 / secs);
    for ef in efs {
        // The best of three passes (the same queries each time): timing noise only slows a pass.
        let mut secs = f64::INFINITY;
        let mut approx = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            approx = index.search(&queries, 10, SearchMode::Hnsw { ef }).unwrap();
            secs = secs.min(t.elapsed().as_secs_f64());
        }
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
