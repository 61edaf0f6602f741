//! The `simlm-eval` binary on good and bad input.

use std::path::Path;
use std::process::{Command, Output};

use testkit::{shared, stderr};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_simlm-eval"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    testkit::s(&testkit::write(dir, name, text))
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn json_output_has_the_documented_fields() {
    let d = shared().join("data/msmarco");
    let o = run(&[
        "--qrels",
        d.join("dl19.qrels.txt").to_str().unwrap(),
        "--run",
        d.join("runs/bm25.dl19.top100.trec").to_str().unwrap(),
        "--rel-level",
        "2",
        "--json",
        "--per-query",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["queries"], 43);
    assert_eq!(v["missing"], 0);
    // Anserini's published BM25 (k1=0.9, b=0.4) nDCG@10 on DL19 is 0.5058.
    let ndcg = v["metrics"]["nDCG@10"].as_f64().unwrap();
    assert!((ndcg - 0.5058).abs() < 5e-5, "{ndcg}");
    assert_eq!(v["per_query"].as_object().unwrap().len(), 43);
    for m in ["MRR@10", "R@50", "R@1000", "nDCG@10"] {
        assert!(v["metrics"][m].is_number(), "{m}");
    }
}

#[test]
fn compare_mode_reports_differences_and_a_test() {
    let dir = tempfile::tempdir().unwrap();
    let q = write(dir.path(), "q", "1 0 a 1\n2 0 b 1\n3 0 c 1\n");
    let a = write(
        dir.path(),
        "a",
        "1 Q0 x 1 2 t\n1 Q0 a 2 1 t\n2 Q0 b 1 1 t\n3 Q0 y 1 2 t\n3 Q0 c 2 1 t\n",
    );
    let b = write(
        dir.path(),
        "b",
        "1 Q0 a 1 2 t\n2 Q0 b 1 1 t\n3 Q0 c 1 2 t\n",
    );
    let o = run(&[
        "--qrels",
        &q,
        "--run",
        &a,
        "--compare",
        &b,
        "--metric",
        "MRR@10",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = &v["metrics"]["MRR@10"];
    assert!((m["a"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(m["b"].as_f64().unwrap(), 1.0);
    assert_eq!(m["up"], 2);
    assert_eq!(m["down"], 0);
    let p = m["p_value"].as_f64().unwrap();
    assert!(p > 0.0 && p <= 1.0);
}

#[test]
fn bad_input_names_file_and_line_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let q = write(dir.path(), "qrels.txt", "1 0 a 1\n");
    let cases: Vec<(String, String, &str)> = vec![
        (
            q.clone(),
            write(dir.path(), "malformed.trec", "1 Q0 a 1 1.0 t\n1 Q0 b 2\n"),
            "malformed.trec, line 2",
        ),
        (
            q.clone(),
            write(dir.path(), "score.trec", "1 Q0 a 1 high t\n"),
            "score.trec, line 1",
        ),
        (
            write(dir.path(), "label.txt", "1 0 a 1\n1 0 b yes\n"),
            write(dir.path(), "ok.trec", "1 Q0 a 1 1 t\n"),
            "label.txt, line 2",
        ),
        (
            q.clone(),
            write(dir.path(), "empty.trec", ""),
            "empty.trec: the run file holds no results",
        ),
        (
            write(dir.path(), "empty.qrels", "\n"),
            write(dir.path(), "ok2.trec", "1 Q0 a 1 1 t\n"),
            "empty.qrels: the qrels file holds no judgments",
        ),
        (
            q.clone(),
            dir.path().join("nope.trec").to_str().unwrap().to_string(),
            "nope.trec",
        ),
        (
            q.clone(),
            write(dir.path(), "dup.trec", "1 Q0 a 1 1 t\n1 Q0 a 2 0.5 t\n"),
            "dup.trec, line 2",
        ),
    ];
    for (qrels, run_file, want) in cases {
        let o = run(&["--qrels", &qrels, "--run", &run_file]);
        assert!(!o.status.success(), "{run_file} was accepted");
        let e = stderr(&o);
        assert!(e.contains(want), "expected `{want}` in: {e}");
        assert!(!e.contains("panicked"), "{e}");
    }
}

/// `--metric` takes lists (comma-separated, or several values after one flag) as well as repeated
/// flags, and trec_eval's names for the same measures; an unknown name lists the known ones.
#[test]
fn metric_lists_and_trec_eval_names_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let q = write(dir.path(), "q", "1 0 a 1\n1 0 b 2\n2 0 c 1\n");
    let r = write(
        dir.path(),
        "r",
        "1 Q0 x 1 3 t\n1 Q0 a 2 2 t\n1 Q0 b 3 1 t\n2 Q0 c 1 1 t\n",
    );
    let keys = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["--qrels", &q, "--run", &r, "--json"];
        all.extend_from_slice(args);
        let o = run(&all);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["metrics"].clone()
    };
    let ours = keys(&[
        "--metric",
        "nDCG@10,R@100",
        "--metric",
        "MRR@10",
        "P@10",
        "MAP",
    ]);
    let names: Vec<&String> = ours.as_object().unwrap().keys().collect();
    assert_eq!(names.len(), 5, "{ours}");
    let spaced = keys(&["--metric", "nDCG@10", "R@100", "MRR@10", "P@10", "MAP"]);
    assert_eq!(spaced, ours);
    let trec = keys(&[
        "--metric",
        "ndcg_cut_10,recall_100",
        "--metric",
        "recip_rank",
        "P_10",
        "map",
    ]);
    for (a, b) in [
        ("nDCG@10", "nDCG@10"),
        ("R@100", "R@100"),
        ("P@10", "P@10"),
        ("MAP", "MAP"),
        // recip_rank is the whole ranking's; here the first relevant is within 10.
        ("MRR@10", "MRR"),
    ] {
        assert_eq!(ours[a], trec[b], "{a} vs {b}: {ours} {trec}");
    }
    // One measure named twice is printed once.
    let twice = keys(&["--metric", "nDCG@10,ndcg_cut_10"]);
    assert_eq!(twice.as_object().unwrap().len(), 1, "{twice}");
    let o = run(&["--qrels", &q, "--run", &r, "--metric", "ndcg@10,bleu"]);
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains("unknown metric `bleu`") && e.contains("nDCG@k") && e.contains("ndcg_cut_k"),
        "{e}"
    );
    let help = run(&["--help"]);
    let h = String::from_utf8_lossy(&help.stdout);
    assert!(
        h.contains("recip_rank") && h.contains("nDCG@10,R@100"),
        "{h}"
    );
}
