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
    // Node count and dimension both at u64::MAX: n x dim alone passes 2^128.
    let mut overflow = huge.clone();
    overflow[48..56].copy_from_slice(&u64::MAX.to_le_bytes());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..good.len() - 4].to_vec(), "truncated or damaged"),
        (huge, "truncated or damaged"),
        (overflow, "truncated or damaged"),
        (vec![b'x'; 100], "not a graph file"),
        (version, "format version 9"),
        (Vec::new(), "not a graph file"),
    ];
    for (bytes, want) in cases {
        std::fs::write(&p, &bytes).unwrap();
        for read in [false, true] {
            let err = Graph::open_as(&p, dir.path(), Some(read))
                .err()
                .expect("an error")
                .to_string();
            assert!(err.contains(want) && err.contains("graph.hnsw"), "{err}");
            assert!(err.contains("simlm-index hnsw"), "{err}");
        }
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
    for read in [false, true] {
        let err = match Graph::open_as(&p, dir.path(), Some(read)) {
            Ok(g) => g.search(&m, &q, 10, 20).unwrap_err(),
            Err(e) => e,
        }
        .to_string();
        assert!(
            err.contains("damaged") && err.contains("simlm-index hnsw"),
            "{err}"
        );
    }
    std::fs::remove_file(&p).unwrap();
    let err = open(dir.path()).err().unwrap().to_string();
    assert!(err.contains("missing"), "{err}");
}

fn open(dir: &Path) -> crate::Result<Graph> {
    Graph::open(&dir.join(GRAPH_FILE), dir)
}

/// A matrix of `n` unit vectors of `dim` in `dir` (no graph).
fn matrix_in(dir: &Path, n: usize, dim: usize) -> NpyMatrix {
    let p = dir.join("vectors.npy");
    npy::write_f32(&p, &unit_vectors(n, dim), n, dim).unwrap();
    NpyMatrix::open(&p).unwrap()
}

/// The bytes of the graph file of `g`.
fn graph_bytes(g: &GraphParts, dir: &Path) -> Vec<u8> {
    let p = dir.join("g.hnsw");
    g.save(&p).unwrap();
    std::fs::read(&p).unwrap()
}

#[test]
fn a_code_book_is_finite_or_the_graph_is_refused() {
    // Fitted: a matrix with a value that is not finite is refused, naming the row; the widest finite
    // range gives finite steps.
    let tmp = tempfile::tempdir().unwrap();
    let mut v = unit_vectors(4, 3);
    v[7] = f32::INFINITY;
    assert!(CodeBook::fit_rows(&v, 3).unwrap_err().contains("row 2"));
    let p = tmp.path().join("inf.npy");
    npy::write_f32(&p, &v, 4, 3).unwrap();
    let e = CodeBook::fit(&NpyMatrix::open(&p).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("inf.npy") && e.contains("row 2"), "{e}");
    let book = CodeBook::fit_rows(&[f32::MAX, -f32::MAX, f32::MIN, f32::MAX], 2).unwrap();
    assert!(
        book.steps.iter().all(|s| s.is_finite() && *s > 0.0),
        "{book:?}"
    );

    // Written: a graph whose code book holds a NaN (one damaged byte of the file) is refused at open,
    // before any search could score on it.
    let (n, dim) = (300, 8);
    let (dir, data) = setup(n, dim, Dtype::F32);
    let g = open(dir.path()).unwrap();
    let m = NpyMatrix::open(&dir.path().join("vectors.npy")).unwrap();
    assert_eq!(g.search(&m, &data[..dim], 1, 16).unwrap()[0].row, 0);
    let p = dir.path().join(GRAPH_FILE);
    let bytes = std::fs::read(&p).unwrap();
    let book_at = g.book_at;
    drop(g);
    for (at, value) in [
        (book_at + 4 * 3, f32::NAN),
        (book_at + 4 * (dim + 1), f32::INFINITY),
    ] {
        let mut bad = bytes.clone();
        bad[at..at + 4].copy_from_slice(&value.to_le_bytes());
        std::fs::write(&p, &bad).unwrap();
        let e = open(dir.path()).err().expect("refused").to_string();
        assert!(
            e.contains("code book") && e.contains("graph.hnsw") && e.contains("simlm-index hnsw"),
            "{e}"
        );
    }
    // Nor can one be written.
    let mut parts = build(
        &m,
        HnswParams {
            m: 4,
            ef_construction: 16,
        },
        &|_| {},
    )
    .unwrap();
    parts.book.mins[0] = f32::NAN;
    let e = parts.save(&p).unwrap_err().to_string();
    assert!(e.contains("code book"), "{e}");
}

/// Builds with checkpoints in `dir` (one every `chunk` insertions, none after a stop), on one thread;
/// returns the graph and what the build said.
fn build_checkpointed(
    m: &NpyMatrix,
    dir: &Path,
    params: HnswParams,
    every: std::time::Duration,
) -> (crate::Result<GraphParts>, Vec<String>) {
    let said = std::sync::Mutex::new(Vec::new());
    let note = |s: &str| said.lock().unwrap().push(s.to_string());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let g = pool.install(|| {
        build_resumable(
            m,
            params,
            &|_| {},
            Some(CheckpointsIn {
                dir,
                note: &note,
                every,
                chunk: 400,
            }),
        )
    });
    (g, said.into_inner().unwrap())
}

/// A stopped graph build's checkpoint, damaged in each way a disk or an edit can, is never used as
/// it is: the build says which folder it passes over and why, starts from the other folder or the
/// beginning, and ends with the graph of a build that never stopped; it never panics.
#[test]
fn damaged_checkpoints_are_not_used() {
    use crate::failpoint::stopped_at;
    use std::time::Duration;
    let tmp = tempfile::tempdir().unwrap();
    let (n, dim) = (2_000, 16);
    let m = matrix_in(tmp.path(), n, dim);
    let params = HnswParams {
        m: 8,
        ef_construction: 40,
    };
    let never = Duration::from_secs(3600);
    let whole = {
        let dir = tmp.path().join("whole");
        std::fs::create_dir(&dir).unwrap();
        graph_bytes(
            &build_checkpointed(&m, &dir, params, never).0.unwrap(),
            &dir,
        )
    };
    // The stop: right after the first checkpoint, 1,400 nodes in (1,000 one by one, then 400).
    let dir = tmp.path().join("idx");
    std::fs::create_dir(&dir).unwrap();
    let (stopped, _) = stopped_at("graph-checkpoint", || {
        build_checkpointed(&m, &dir, params, Duration::ZERO)
    });
    assert!(stopped.is_err());
    let ck = dir.join(checkpoint::FOLDER);
    let read = |name: &str| std::fs::read(ck.join(name)).unwrap();
    let (state, layer0, upper) = (read("state.json"), read("layer0.bin"), read("upper.bin"));
    let json: serde_json::Value = serde_json::from_slice(&state).unwrap();
    assert_eq!(json["inserted"], 1_400);
    let sha = |b: &[u8]| format!("{:x}", sha2::Sha256::digest(b));
    use sha2::Digest;
    // A word of node `u`'s layer-0 list (0: the count).
    let m0 = 2 * params.m;
    let word = |u: usize, i: usize| 4 * (u * (1 + m0) + i);
    let put = |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let node = 5; // inserted early, with a full list by now
    let count = u32::from_le_bytes(layer0[word(node, 0)..word(node, 0) + 4].try_into().unwrap());
    assert!(count >= 2, "{count}");
    let with = |key: &str, value: serde_json::Value| {
        let mut j = json.clone();
        j[key] = value;
        serde_json::to_vec(&j).unwrap()
    };
    // (what is damaged: state.json, layer0.bin, upper.bin; whether the checksum is made to match, so
    // that the check behind it is the one that answers; what the note must say)
    type Case = (&'static str, Vec<u8>, Vec<u8>, Vec<u8>, bool, &'static str);
    let mut cases: Vec<Case> = Vec::new();
    let mut l = layer0.clone();
    put(&mut l, word(node, 1), 0xffff_fff0);
    cases.push((
        "a link word out of range",
        state.clone(),
        l.clone(),
        upper.clone(),
        false,
        "layer0.bin does not match the checksum",
    ));
    cases.push((
        "the same, checksum matching",
        state.clone(),
        l,
        upper.clone(),
        true,
        "links to node 4294967280, past the 2000 nodes",
    ));
    let mut l = layer0.clone();
    put(&mut l, word(node, 1), 1_999);
    cases.push((
        "an in-range wrong link",
        state.clone(),
        l.clone(),
        upper.clone(),
        false,
        "layer0.bin does not match the checksum",
    ));
    cases.push((
        "the same, checksum matching",
        state.clone(),
        l,
        upper.clone(),
        true,
        "links to node 1999, not among the 1400 inserted",
    ));
    let mut l = layer0.clone();
    put(&mut l, word(node, 0), m0 as u32 + 1);
    cases.push((
        "a count above the list",
        state.clone(),
        l,
        upper.clone(),
        true,
        "claims 17 links, more than the 16 it holds",
    ));
    let mut u = upper.clone();
    u[9] ^= 0x40;
    cases.push((
        "a flipped upper-layer byte",
        state.clone(),
        layer0.clone(),
        u,
        false,
        "upper.bin does not match the checksum",
    ));
    cases.push((
        "inserted raised",
        with("inserted", 1_450.into()),
        layer0.clone(),
        upper.clone(),
        false,
        "is empty, but the node is among the 1450 inserted",
    ));
    cases.push((
        "inserted lowered",
        with("inserted", 1_300.into()),
        layer0.clone(),
        upper.clone(),
        false,
        "not among the 1300 inserted",
    ));
    cases.push((
        "inserted past the rows",
        with("inserted", 5_000.into()),
        layer0.clone(),
        upper.clone(),
        false,
        "counts 5000 nodes inserted, more than the graph's 2000",
    ));
    cases.push((
        "state.json cut short",
        state[..state.len() / 2].to_vec(),
        layer0.clone(),
        upper.clone(),
        false,
        "state.json is damaged",
    ));
    let mut old = json.clone();
    old["format"] = 1.into();
    old.as_object_mut().unwrap().remove("layer0_sha256");
    old.as_object_mut().unwrap().remove("upper_sha256");
    cases.push((
        "a checkpoint of the earlier format",
        serde_json::to_vec(&old).unwrap(),
        layer0.clone(),
        upper.clone(),
        false,
        "earlier version (format 1), without checksums",
    ));
    cases.push((
        "layer0.bin cut short",
        state.clone(),
        layer0[..layer0.len() - 4].to_vec(),
        upper.clone(),
        false,
        "layer0.bin holds",
    ));
    for (what, s, l, u, matching, want) in cases {
        let s = if matching {
            let mut j: serde_json::Value = serde_json::from_slice(&s).unwrap();
            j["layer0_sha256"] = sha(&l).into();
            j["upper_sha256"] = sha(&u).into();
            serde_json::to_vec(&j).unwrap()
        } else {
            s
        };
        for (name, bytes) in [("state.json", &s), ("layer0.bin", &l), ("upper.bin", &u)] {
            std::fs::write(ck.join(name), bytes).unwrap();
        }
        let (g, said) = build_checkpointed(&m, &dir, params, never);
        let said = said.join("\n");
        assert!(
            said.contains(&format!(
                "the graph checkpoint in {} is not used",
                ck.display()
            )) && said.contains(want)
                && !said.contains("resuming"),
            "{what}: {said}"
        );
        assert!(
            graph_bytes(&g.unwrap(), &dir) == whole,
            "{what}: another graph"
        );
    }
    // Damaged in graph.partial, whole in graph.partial.new (a stop between writing the one and
    // replacing the other): the build resumes from graph.partial.new, and names it.
    let new = dir.join(checkpoint::NEW);
    std::fs::create_dir(&new).unwrap();
    for (name, bytes) in [
        ("state.json", &state),
        ("layer0.bin", &layer0),
        ("upper.bin", &upper),
    ] {
        std::fs::write(new.join(name), bytes).unwrap();
    }
    let (g, said) = build_checkpointed(&m, &dir, params, never);
    let said = said.join("\n");
    assert!(
        said.contains(&format!("the graph checkpoint in {} is not used", ck.display()))
            && said.contains(&format!(
                "resuming the graph after 1400 of 2000 nodes, {:.1} s of building so far (checkpoint in {})",
                json["build_seconds"].as_f64().unwrap(),
                new.display()
            )),
        "{said}"
    );
    assert!(
        graph_bytes(&g.unwrap(), &dir) == whole,
        "resumed from graph.partial.new"
    );
    // Whole, it is used, and the graph is the same.
    std::fs::remove_dir_all(&new).unwrap();
    for (name, bytes) in [
        ("state.json", &state),
        ("layer0.bin", &layer0),
        ("upper.bin", &upper),
    ] {
        std::fs::write(ck.join(name), bytes).unwrap();
    }
    let (g, said) = build_checkpointed(&m, &dir, params, never);
    let said = said.join("\n");
    assert!(
        said.contains("after 1400 of 2000 nodes")
            && said.contains(&ck.display().to_string())
            && !said.contains("not used"),
        "{said}"
    );
    assert!(
        graph_bytes(&g.unwrap(), &dir) == whole,
        "resumed from graph.partial"
    );
}

// Graph search against exact search, bit for bit.

/// Writes `data` (`n x dim`) as the matrix in `dtype` and builds its graph, as `setup` does.
fn setup_from(data: &[f32], n: usize, dim: usize, dtype: Dtype) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vectors.npy");
    crate::store::atomic_write(&p, |w| {
        w.write_all(&npy::header(dtype, n, Some(dim)))?;
        npy::write_rows(w, dtype, data)
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
    dir
}

/// With `ef` = the collection's size (every row a candidate), the graph's hits for each query are
/// exact search's: the same rows in the same order with the same score bits, at k = 10 and k = all,
/// for every tile kernel this CPU runs; and each score is [`crate::simd::tile_score`] of that level.
/// Returns how many adjacent pairs of exact search's lists are tied or within 4 ulps.
fn assert_graph_is_exact(dir: &Path, queries: &[f32], what: &str) -> (usize, usize) {
    let m = NpyMatrix::open(&dir.join("vectors.npy")).unwrap();
    let g = open(dir).unwrap();
    let (n, dim) = (m.rows(), m.cols());
    let bits = |h: &[Hit]| {
        h.iter()
            .map(|h| (h.row, h.score.to_bits()))
            .collect::<Vec<_>>()
    };
    let (mut ties, mut near) = (0, 0);
    for (level, tile) in crate::simd::tile_kernels() {
        let rows_kernel = crate::simd::rows_kernel_for(level).unwrap();
        let exact =
            crate::search::exact::search_rows_with(tile, None, &m, 0, n, queries, n).unwrap();
        for (q, (query, want)) in queries.chunks(dim).zip(&exact).enumerate() {
            assert_eq!(want.len(), n);
            for k in [10, n] {
                let got = g.search_with(rows_kernel, &m, query, k, n).unwrap();
                assert_eq!(
                    bits(&got),
                    bits(&want[..k]),
                    "{what}, {level:?}, query {q}, k {k}"
                );
            }
            for h in want {
                let row = m.rows_f32(h.row, h.row + 1);
                let chain = crate::simd::tile_score(level, query, &row);
                assert_eq!(h.score.to_bits(), chain.to_bits(), "{what}, {level:?}");
            }
            for w in want.windows(2) {
                ties += usize::from(w[0].score == w[1].score);
                near += usize::from(w[0].score.to_bits().abs_diff(w[1].score.to_bits()) <= 4);
            }
        }
    }
    (ties, near)
}

#[test]
fn graph_scores_and_order_are_exact_search_s_bit_for_bit() {
    // Widths on and off the kernels' 8 and 16 lanes; an f16 matrix (converted rows, as exact search
    // reads them).
    for (n, dim, dtype) in [
        (300, 384, Dtype::F32),
        (200, 768, Dtype::F32),
        (400, 100, Dtype::F32),
        (500, 33, Dtype::F32),
        (300, 100, Dtype::F16),
    ] {
        let all = unit_vectors(n + 8, dim);
        let dir = setup_from(&all[..n * dim], n, dim, dtype);
        // New queries and three of the rows themselves.
        let mut queries = all[n * dim..].to_vec();
        queries.extend_from_slice(&all[5 * dim..8 * dim]);
        assert_graph_is_exact(dir.path(), &queries, &format!("{n} x {dim} {dtype:?}"));
    }
}

#[test]
fn near_identical_vectors_keep_exact_search_s_order() {
    // One vector with noise in the last bits of its values and a quarter of the rows exact copies of
    // others: most scores are ties or a few ulps apart, where any other summation order reorders them.
    for (n, dim) in [(400, 100), (300, 768), (300, 33)] {
        let base = unit_vectors(1, dim);
        let noise = unit_vectors(n + 4, dim);
        let mut data: Vec<f32> = (0..n * dim)
            .map(|i| base[i % dim] + noise[i] * 1e-6)
            .collect();
        for r in (0..n).step_by(4).skip(1) {
            data.copy_within((r - 1) * dim..r * dim, r * dim);
        }
        let dir = setup_from(&data, n, dim, Dtype::F32);
        let queries: Vec<f32> = (0..4 * dim)
            .map(|i| base[i % dim] + noise[n * dim + i] * 1e-3)
            .collect();
        let (ties, near) = assert_graph_is_exact(dir.path(), &queries, &format!("{n} x {dim}"));
        let pairs = crate::simd::tile_kernels().len() * 4 * (n - 1);
        assert!(ties >= pairs / 5, "{ties} ties of {pairs}");
        assert!(near >= pairs / 2, "{near} near-ties of {pairs}");
    }
}

/// The matrix of `n` unit vectors of `dim` in `dir` and its graph, built with `m` and
/// `ef_construction` (not saved).
fn built_in(
    dir: &Path,
    n: usize,
    dim: usize,
    m: usize,
    ef_construction: usize,
) -> (NpyMatrix, GraphParts) {
    let matrix = matrix_in(dir, n, dim);
    let params = HnswParams { m, ef_construction };
    let parts = build(&matrix, params, &|_| {}).unwrap();
    (matrix, parts)
}

/// Where the row table of a version-2 graph file of `n` nodes starts: after the header, the levels,
/// layer 0, the upper-layer offsets and the upper-layer table (its length read from the header).
fn row_table_at(file: &[u8], n: usize, m0: usize) -> usize {
    let upper_words = u64::from_le_bytes(file[40..48].try_into().unwrap()) as usize;
    HEADER_LEN + pad4(n) + 4 * n * (1 + m0) + 4 * n + 4 * upper_words
}

#[test]
fn nodes_are_stored_breadth_first_and_version_1_files_are_still_read() {
    let (n, dim) = (500, 16);
    let dir = tempfile::tempdir().unwrap();
    let (m, mut parts) = built_in(dir.path(), n, dim, 8, 64);
    // The file's node order: the entry first, every row once, and not the rows' order.
    assert_eq!(parts.order[0] as usize, parts.entry);
    let mut sorted = parts.order.clone();
    sorted.sort_unstable();
    assert!(sorted.iter().enumerate().all(|(i, &r)| i == r as usize));
    assert_ne!(sorted, parts.order);
    let reordered = graph_bytes(&parts, dir.path());
    // The same graph with nodes numbered by row, in version 1's layout: version 2's with the identity
    // order, less its row table.
    parts.order = (0..n as u32).collect();
    let v2 = graph_bytes(&parts, dir.path());
    let rows_at = row_table_at(&v2, n, parts.m0);
    let mut v1 = v2.clone();
    v1.drain(rows_at..rows_at + 4 * n);
    v1[8..12].copy_from_slice(&1u32.to_le_bytes());
    let p = dir.path().join(GRAPH_FILE);
    let queries = unit_vectors(40, dim);
    let hits = |bytes: &[u8]| {
        std::fs::write(&p, bytes).unwrap();
        let g = open(dir.path()).unwrap();
        queries
            .chunks(dim)
            .map(|q| {
                g.search(&m, q, 10, 32)
                    .unwrap()
                    .iter()
                    .map(|h| (h.row, h.score.to_bits()))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let (by_row_v1, by_row_v2, by_order) = (hits(&v1), hits(&v2), hits(&reordered));
    // Version 1 walks exactly as version 2 with nodes numbered by row.
    assert_eq!(by_row_v1, by_row_v2);
    // The reordered walk breaks ties between equal code scores by another numbering; its hits are
    // still exact search's rows and scores.
    let data = m.rows_f32(0, n).to_vec();
    let mut agree = 0;
    for (q, got) in queries.chunks(dim).zip(&by_order) {
        assert_eq!(got.len(), 10);
        let want = brute_force(&data, dim, q, 10);
        agree += got.iter().filter(|(r, _)| want.contains(r)).count();
    }
    assert!(agree >= 380, "{agree} of 400 true neighbours found");
}

#[test]
fn a_damaged_row_table_is_refused() {
    let (n, dim) = (200, 8);
    let dir = tempfile::tempdir().unwrap();
    let (_, parts) = built_in(dir.path(), n, dim, 4, 32);
    let good = graph_bytes(&parts, dir.path());
    let rows_at = row_table_at(&good, n, parts.m0);
    let p = dir.path().join(GRAPH_FILE);
    for (what, value) in [
        ("a row taken twice", None),
        ("a row past the matrix", Some(n as u32)),
    ] {
        let mut bad = good.clone();
        let v = value
            .unwrap_or_else(|| u32::from_le_bytes(bad[rows_at..rows_at + 4].try_into().unwrap()));
        bad[rows_at + 4 * 7..rows_at + 4 * 8].copy_from_slice(&v.to_le_bytes());
        std::fs::write(&p, &bad).unwrap();
        let err = open(dir.path()).err().expect(what).to_string();
        assert!(
            err.contains("row table is damaged") && err.contains("simlm-index hnsw"),
            "{what}: {err}"
        );
    }
}

#[test]
fn a_graph_read_into_memory_walks_as_the_mapped_file() {
    let (dir, _) = setup(2_000, 24, Dtype::F32);
    let p = dir.path().join(GRAPH_FILE);
    let m = NpyMatrix::open(&dir.path().join("vectors.npy")).unwrap();
    let (mapped, read) = (
        Graph::open_as(&p, dir.path(), Some(false)).unwrap(),
        Graph::open_as(&p, dir.path(), Some(true)).unwrap(),
    );
    assert!(!mapped.is_resident() && read.is_resident());
    let bits = |hits: Vec<Hit>| {
        hits.iter()
            .map(|h| (h.row, h.score.to_bits()))
            .collect::<Vec<_>>()
    };
    for q in unit_vectors(50, 24).chunks(24) {
        for (k, ef) in [(1, 1), (10, 16), (10, 100)] {
            let a = bits(mapped.search(&m, q, k, ef).unwrap());
            assert_eq!(a.len(), k);
            assert_eq!(a, bits(read.search(&m, q, k, ef).unwrap()));
        }
    }
}
