//! The construction alone: determinism, reachability, odd data.

use super::build::{build, Links};
use super::{CodeBook, HnswParams, NONE};

const PARAMS: HnswParams = HnswParams {
    m: 16,
    ef_construction: 100,
};

/// Gaussian-ish numbers from a seeded xorshift (the sum of four uniforms).
struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.uniform()).sum::<f32>() - 2.0
    }
}

fn normalize(v: &mut [f32], dim: usize) {
    for row in v.chunks_exact_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= norm);
    }
}

fn unit_vectors(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    let mut v: Vec<f32> = (0..n * dim).map(|_| rng.normal()).collect();
    normalize(&mut v, dim);
    v
}

/// `groups` random directions, each repeated `copies` times with noise of `noise`.
fn near_duplicates(groups: usize, copies: usize, dim: usize, noise: f32, seed: u64) -> Vec<f32> {
    let base = unit_vectors(groups, dim, seed);
    let mut rng = Rng(seed ^ 0xABCD);
    let mut v = Vec::new();
    for c in 0..copies {
        for row in base.chunks_exact(dim) {
            v.extend(
                row.iter()
                    .map(|x| x + if c == 0 { 0.0 } else { noise * rng.normal() }),
            );
        }
    }
    normalize(&mut v, dim);
    v
}

fn build_in(threads: usize, vectors: &[f32], dim: usize, params: HnswParams) -> Links {
    let book = CodeBook::fit_rows(vectors, dim).unwrap();
    let mut codes = Vec::new();
    book.encode_into(vectors, &mut codes);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        build(
            &codes,
            vectors.len() / dim,
            dim,
            &book,
            params,
            &|_| {},
            None,
            1 << 16,
            &|_, _, _| Ok(()),
        )
        .unwrap()
    })
}

/// The arrays agree with the file format, and every node (n >= 2) has an incoming layer-0 link.
fn check(links: &Links, n: usize) {
    assert_eq!(links.levels.len(), n);
    assert_eq!(links.layer0.len(), n * (1 + links.m0));
    assert_eq!(links.upper_at.len(), n);
    let mut incoming = vec![0usize; n];
    let mut words = 0;
    for u in 0..n {
        let level = links.levels[u] as usize;
        assert!(level <= links.top);
        let mut lists = vec![&links.layer0[u * (1 + links.m0)..(u + 1) * (1 + links.m0)]];
        if level == 0 {
            assert_eq!(links.upper_at[u], NONE);
        } else {
            assert_eq!(links.upper_at[u] as usize, words);
            for l in 0..level {
                lists
                    .push(&links.upper[words + l * (1 + links.m)..words + (l + 1) * (1 + links.m)]);
            }
            words += level * (1 + links.m);
        }
        for (layer, list) in lists.iter().enumerate() {
            let ids = &list[1..=list[0] as usize];
            let mut sorted = ids.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), ids.len(), "node {u}: duplicate links");
            for &v in ids {
                assert!(
                    (v as usize) < n && v as usize != u,
                    "node {u}: bad link {v}"
                );
                assert!(
                    links.levels[v as usize] as usize >= layer,
                    "link above the target's level"
                );
                if layer == 0 {
                    incoming[v as usize] += 1;
                }
            }
        }
    }
    assert_eq!(words, links.upper.len());
    if n > 0 {
        assert_eq!(links.levels[links.entry] as usize, links.top);
    }
    if n >= 2 {
        let orphans = (0..n).filter(|&u| incoming[u] == 0).count();
        assert_eq!(orphans, 0, "nodes without an incoming link");
    }
}

#[test]
fn one_thread_builds_are_identical() {
    let dim = 32;
    let vectors = unit_vectors(3_000, dim, 7);
    let a = build_in(1, &vectors, dim, PARAMS);
    let b = build_in(1, &vectors, dim, PARAMS);
    assert!(a == b, "two one-thread builds differ");
    check(&a, 3_000);
}

#[test]
fn every_node_has_an_incoming_link() {
    let dim = 32;
    let sets = [
        ("random", unit_vectors(3_000, dim, 11)),
        ("near-duplicates", near_duplicates(60, 50, dim, 1e-3, 12)),
        (
            "exact and near duplicates",
            near_duplicates(20, 150, dim, 1e-5, 13),
        ),
        ("two dimensions", unit_vectors(2_000, 2, 14)),
    ];
    for (name, vectors) in &sets {
        let dim = if *name == "two dimensions" { 2 } else { dim };
        for threads in [1, 2] {
            let links = build_in(
                threads,
                vectors,
                dim,
                HnswParams {
                    m: 4,
                    ef_construction: 40,
                },
            );
            check(&links, vectors.len() / dim);
        }
    }
}

#[test]
fn tiny_and_identical_sets_are_well_formed() {
    for n in 0..=3 {
        check(&build_in(2, &unit_vectors(n, 8, 3), 8, PARAMS), n);
    }
    let row = unit_vectors(1, 16, 5);
    let vectors: Vec<f32> = row.iter().copied().cycle().take(1_500 * 16).collect();
    for threads in [1, 2] {
        check(&build_in(threads, &vectors, 16, PARAMS), 1_500);
    }
}

#[test]
fn progress_counts_every_insertion() {
    let dim = 8;
    let vectors = unit_vectors(40_000, dim, 9);
    let book = CodeBook::fit_rows(&vectors, dim).unwrap();
    let mut codes = Vec::new();
    book.encode_into(&vectors, &mut codes);
    let seen = std::sync::Mutex::new(Vec::new());
    build(
        &codes,
        40_000,
        dim,
        &book,
        HnswParams {
            m: 4,
            ef_construction: 16,
        },
        &|d| seen.lock().unwrap().push(d),
        None,
        1 << 16,
        &|_, _, _| Ok(()),
    )
    .unwrap();
    let mut seen = seen.into_inner().unwrap();
    seen.sort_unstable();
    assert_eq!(seen, vec![16_384, 32_768, 40_000]);
}

/// A one-thread build stopped at a chunk boundary and resumed from the words it had then gives the
/// same graph as one that never stopped, whichever boundary it stopped at.
#[test]
fn a_resumed_build_equals_an_uninterrupted_one() {
    use super::checkpoint::Saved;
    use std::sync::atomic::Ordering::Relaxed;
    let dim = 16;
    let n = 4_000;
    let vectors = unit_vectors(n, dim, 5);
    let params = HnswParams {
        m: 6,
        ef_construction: 40,
    };
    let book = CodeBook::fit_rows(&vectors, dim).unwrap();
    let mut codes = Vec::new();
    book.encode_into(&vectors, &mut codes);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let chunk = 700;
    let whole = pool.install(|| {
        build(
            &codes,
            n,
            dim,
            &book,
            params,
            &|_| {},
            None,
            chunk,
            &|_, _, _| Ok(()),
        )
        .unwrap()
    });
    assert_eq!(
        super::build::array_words(n, params.m),
        (whole.layer0.len(), whole.upper.len())
    );
    for stop_at in [1_700, 3_800] {
        // The stop: the chunk callback saves the words, then fails.
        let saved = std::sync::Mutex::new(None::<Saved>);
        let stopped = pool.install(|| {
            build(
                &codes,
                n,
                dim,
                &book,
                params,
                &|_| {},
                None,
                chunk,
                &|done, l0, up| {
                    if done == stop_at {
                        *saved.lock().unwrap() = Some(Saved {
                            inserted: done,
                            build_seconds: 0.0,
                            layer0: l0.iter().map(|w| w.load(Relaxed)).collect(),
                            upper: up.iter().map(|w| w.load(Relaxed)).collect(),
                        });
                        return Err(std::io::Error::other("stopped"));
                    }
                    Ok(())
                },
            )
        });
        assert!(stopped.is_err());
        let saved = saved
            .into_inner()
            .unwrap()
            .expect("a chunk boundary at stop_at");
        let resumed = pool.install(|| {
            build(
                &codes,
                n,
                dim,
                &book,
                params,
                &|_| {},
                Some(saved),
                chunk,
                &|_, _, _| Ok(()),
            )
            .unwrap()
        });
        assert!(resumed == whole, "resumed after {stop_at}: another graph");
    }
}
