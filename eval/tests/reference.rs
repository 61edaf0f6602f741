//! Per-query agreement with pytrec_eval (trec_eval's C code) within 1e-9, on the real BM25 runs and
//! NIST qrels of TREC DL19 and DL20 and on runs written here to exercise the edge cases.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use eval::{evaluate, Metric, Qrels, Run};

use testkit::{python, shared};

const METRICS: &[&str] = &[
    "MRR@10",
    "R@50",
    "R@100",
    "R@1000",
    "nDCG@10",
    "P@10",
    "MAP",
    "nDCG@1000",
];

fn reference(qrels: &Path, run: &Path, rel_level: i32) -> HashMap<String, HashMap<String, f64>> {
    let out = Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/pytrec_reference.py"))
        .arg(qrels)
        .arg(run)
        .arg(rel_level.to_string())
        .args(METRICS)
        .output()
        .expect("python3 with pytrec_eval (scripts/setup-python.sh installs it)");
    assert!(
        out.status.success(),
        "pytrec_reference.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Compares every per-query value; returns how many values were compared.
fn agree(qrels_path: &Path, run_path: &Path, rel_level: i32) -> usize {
    let metrics: Vec<Metric> = METRICS.iter().map(|m| m.parse().unwrap()).collect();
    let qrels = Qrels::read(qrels_path).unwrap();
    let run = Run::read(run_path).unwrap();
    let ours = evaluate(&qrels, &run, &metrics, rel_level);
    let theirs = reference(qrels_path, run_path, rel_level);
    let mut compared = 0;
    for (q, vals) in &ours.per_query {
        if !run.queries.contains_key(q) {
            // pytrec_eval skips queries missing from the run; ours scores them 0.
            assert!(vals.iter().all(|v| *v == 0.0));
            continue;
        }
        let t = theirs
            .get(q)
            .unwrap_or_else(|| panic!("pytrec_eval has no query {q}"));
        for (m, v) in METRICS.iter().zip(vals) {
            let r = t[*m];
            assert!(
                (v - r).abs() <= 1e-9,
                "{}: query {q} {m}: ours {v}, pytrec_eval {r}",
                run_path.display()
            );
            compared += 1;
        }
    }
    compared
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn real_bm25_runs_on_trec_dl() {
    let d = shared().join("data/msmarco");
    for (qrels, run) in [
        ("dl19.qrels.txt", "runs/bm25.dl19.top100.trec"),
        ("dl20.qrels.txt", "runs/bm25.dl20.top100.trec"),
    ] {
        for rel in [1, 2] {
            let n = agree(&d.join(qrels), &d.join(run), rel);
            assert!(n >= 43 * METRICS.len(), "{n}");
        }
    }
}

use testkit::write;

/// A small deterministic generator for synthetic runs.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn edge_cases_ties_unjudged_missing_graded_both_formats_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Lcg(7);
    let mut qrels = String::new();
    let mut trec = String::new();
    let mut msmarco = String::new();
    for q in 0..40 {
        // Queries 35.. are in the qrels only (missing from the run).
        for d in 0..30 {
            if rng.next().is_multiple_of(3) {
                qrels += &format!("q{q} 0 d{d} {}\n", rng.next() % 4);
            }
        }
        if q >= 35 {
            continue;
        }
        let n = 5 + (rng.next() % 60) as usize;
        let mut docs: Vec<usize> = (0..80).collect();
        for i in 0..n {
            let j = i + (rng.next() as usize) % (80 - i);
            docs.swap(i, j);
        }
        for (rank, d) in docs[..n].iter().enumerate() {
            // Coarse scores: many ties, broken by docid descending.
            let score = (rng.next() % 5) as f64 * 0.5;
            trec += &format!("q{q} Q0 d{d} {} {score} tag\n", rank + 1);
            msmarco += &format!("q{q}\td{d}\t{}\n", rank + 1);
        }
    }
    // Run queries without qrels.
    trec += "zz Q0 d1 1 3.0 tag\nzz Q0 d2 2 2.0 tag\n";
    msmarco += "zz\td1\t1\n";
    let qrels_p = write(dir.path(), "qrels.txt", &qrels);
    let trec_p = write(dir.path(), "run.trec", &trec);
    let ms_p = write(dir.path(), "run.tsv", &msmarco);
    let gz_p = dir.path().join("run.trec.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz_p).unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(trec.as_bytes()).unwrap();
    gz.finish().unwrap();
    for rel in [1, 2, 3] {
        for run in [&trec_p, &ms_p, &gz_p] {
            assert!(agree(&qrels_p, run, rel) > 0);
        }
    }
    let metrics: Vec<Metric> = vec!["MRR@10".parse().unwrap()];
    let e = evaluate(
        &Qrels::read(&qrels_p).unwrap(),
        &Run::read(&trec_p).unwrap(),
        &metrics,
        1,
    );
    assert_eq!(e.missing, 5);
    assert_eq!(e.ignored, 1);
}
