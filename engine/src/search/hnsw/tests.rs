//! The graph's build, file and walk, on pseudo-random unit vectors.

use std::io::Write;
use std::path::Path;

use super::format::{pad4, HEADER_LEN};
use super::*;
use crate::search::{sort_hits, Hit};
use crate::store::layout::GRAPH as GRAPH_FILE;
use crate::store::npy::{self, Dtype};

/// `n` pseudo-random unit vectors of `dim` (a fixed LCG: the same every run).
fn unit_vectors(n: usize, dim: usize) -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut v: Vec<f32> = (0..n * dim)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    for row in v.chunks_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

fn brute_force(data: &[f32], dim: usize, q: &[f32], k: usize) -> Vec<usize> {
    let mut all: Vec<Hit> = data
        .chunks(dim)
        .enumerate()
        .map(|(row, v)| Hit {
            row,
            score: v.iter().zip(q).map(|(a, b)| a * b).sum(),
        })
        .collect();
    sort_hits(&mut all);
    all.iter().take(k).map(|h| h.row).collect()
}

fn setup(n: usize, dim: usize, dtype: Dtype) -> (tempfile::TempDir, Vec<f32>) {
    let dir = tempfile::tempdir().unwrap();
    let data = unit_vectors(n, dim);
    let p = dir.path().join("vectors.npy");
    crate::store::atomic_write(&p, |w| {
        w.write_all(&npy::header(dtype, n, Some(dim)))?;
        npy::write_rows(w, dtype, &data)
    })
    .unwrap();
    let m = NpyMatrix::open(&p).unwrap();
    let params = HnswParams {
        m: 8,
        ef_construction: 64,
    };
    build(&m, params, &|_| {})
        .unwrap()
        .save(&dir.path().join(GRAPH_FILE))
        .unwrap();
    (dir, data)
}

#[test]
fn finds_every_row_first_and_agrees_with_brute_force() {
    let (n, dim) = (2000, 24);
    let (dir, data) = setup(n, dim, Dtype::F32);
    let m = NpyMatrix::open(&dir.path().join("vectors.npy")).unwrap();
    let g = open(dir.path()).unwrap();
    assert_eq!((g.len(), g.dim()), (n, dim));
    let mut overlap = 0;
    for r in 0..n {
        let q = &data[r * dim..(r + 1) * dim];
        let hits = g.search(&m, q, 10, DEFAULT_EF).unwrap();
        assert_eq!(hits[0].row, r, "row {r}: {:?}", &hits[..3]);
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        let truth = brute_force(&data, dim, q, 10);
        overlap += hits.iter().filter(|h| truth.contains(&h.row)).count();
        // Scores are the rows' exact inner products.
        for h in &hits {
            let want: f32 = data[h.row * dim..(h.row + 1) * dim]
                .iter()
                .zip(q)
                .map(|(a, b)| a * b)
                .sum();
            assert!((h.score - want).abs() < 1e-5);
        }
    }
    let recall = overlap as f64 / (10 * n) as f64;
    assert!(recall >= 0.99, "recall@10 {recall}");
    // New queries: recall against brute force; k above ef; k = 0.
    let queries = unit_vectors(n + 200, dim);
    let mut overlap = 0;
    for q in queries[n * dim..].chunks(dim) {
        let hits = g.search(&m, q, 10, DEFAULT_EF).unwrap();
        let truth = brute_force(&data, dim, q, 10);
        overlap += hits.iter().filter(|h| truth.contains(&h.row)).count();
    }
    let recall = overlap as f64 / 2000.0;
    assert!(recall >= 0.95, "recall@10 of new queries {recall}");
    assert_eq!(g.search(&m, &queries[..dim], 50, 10).unwrap().len(), 50);
    assert!(g.search(&m, &queries[..dim], 0, 10).unwrap().is_empty());
}

#[test]
fn a_matrix_beyond_memory_gives_the_same_hits() {
    // Larger than memory, the re-scored rows are asked for ahead and the exact pass releases each
    // block it has read: hints that must not change a single hit.
    let (n, dim) = (1500, 32);
    let (dir, data) = setup(n, dim, Dtype::F32);
    let path = dir.path().join("vectors.npy");
    let (in_memory, on_disk) = (
        NpyMatrix::open(&path).unwrap(),
        NpyMatrix::open(&path).unwrap(),
    );
    on_disk.assume_beyond_memory();
    assert!(on_disk.exceeds_half_of_memory() && !in_memory.exceeds_half_of_memory());
    let g = open(dir.path()).unwrap();
    let queries = unit_vectors(n + 50, dim);
    let queries = &queries[n * dim..];
    for q in queries.chunks(dim) {
        let a = g.search(&in_memory, q, 10, 40).unwrap();
        let b = g.search(&on_disk, q, 10, 40).unwrap();
        assert_eq!(a, b);
    }
    let a = crate::search::exact::search(&in_memory, queries, 100).unwrap();
    let b = crate::search::exact::search(&on_disk, queries, 100).unwrap();
    assert_eq!(a, b);
    assert_eq!(b[0][0].row, brute_force(&data, dim, &queries[..dim], 1)[0]);
}

#[test]
fn searches_half_precision_matrices() {
    let (n, dim) = (500, 16);
    let (dir, data) = setup(n, dim, Dtype::F16);
    let m = NpyMatrix::open(&dir.path().join("vectors.npy")).unwrap();
    let g = open(dir.path()).unwrap();
    let mut first = 0;
    for r in 0..n {
        let hits = g
            .search(&m, &data[r * dim..(r + 1) * dim], 5, DEFAULT_EF)
            .unwrap();
        first += usize::from(hits[0].row == r);
    }
    assert!(first >= n * 99 / 100, "{first} of {n} rows first");
}

#[test]
fn tiny_graphs_work() {
    for n in [1, 2, 3] {
        let (dir, data) = setup(n, 8, Dtype::F32);
        let m = NpyMatrix::open(&dir.path().join("vectors.npy")).unwrap();
        let g = open(dir.path()).unwrap();
        let hits = g.search(&m, &data[..8], 10, 4).unwrap();
        assert_eq!(hits.len(), n);
        assert_eq!(hits[0].row, 0);
    }
}

#[test]
fn damaged_files_are_errors() {
    let (dir, _) = setup(300, 8, Dtype::F32);
    let p = dir.path().join(GRAPH_FILE);
    let good = std::fs::read(&p).unwrap();
    let mut huge = good.clone();
    huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut version = good.clone();
    version[8] = 9;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..good.len() - 4].to_vec(), "truncated or damaged"),
        (huge, "truncated or damaged"),
        (vec![b'x'; 100], "not a graph file"),
        (version, "format version 9"),
        (Vec::new(), "not a graph file"),
    ];
    for (bytes, want) in cases {
        std::fs::write(&p, &bytes).unwrap();
        let err = open(dir.path()).err().expect("an error").to_string();
        assert!(err.contains(want) && err.contains("graph.hnsw"), "{err}");
        assert!(err.contains("simlm-index hnsw"), "{err}");
    }
    // Damaged links (rows out of range, counts past the list) are errors, never followed.
    let mut bad = good.clone();
    let at = HEADER_LEN + pad4(300);
    for w in bad[at..at + 4 * 300 * 5].chunks_exact_mut(4) {
        w.copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    }
    std::fs::write(&p, &bad).unwrap();
    let m = NpyMatrix::open(&dir.path().join("vectors.npy")).unwrap();
    let q = unit_vectors(1, 8);
    let err = match open(dir.path()) {
        Ok(g) => g.search(&m, &q, 10, 20).unwrap_err(),
        Err(e) => e,
    }
    .to_string();
    assert!(
        err.contains("damaged") && err.contains("simlm-index hnsw"),
        "{err}"
    );
    std::fs::remove_file(&p).unwrap();
    let err = open(dir.path()).err().unwrap().to_string();
    assert!(err.contains("missing"), "{err}");
}

fn open(dir: &Path) -> crate::Result<Graph> {
    Graph::open(&dir.join(GRAPH_FILE), dir)
}
