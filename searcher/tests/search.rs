//! `simlm-search` on an index of Medline (1,033 docs) built with the tiny BERT fixture.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use engine::corpus::ReadOptions;
use engine::index::{self, BuildOptions, Index, Quiet, SearchMode};
use engine::search::hnsw::{HnswParams, DEFAULT_EF};
use engine::store::npy::Dtype;
use engine::{Doc, Encoder, EncoderOptions, Kind};

use testkit::{shared, stderr, with_stdin};

fn tiny() -> PathBuf {
    shared().join("fixtures/tiny-bert")
}

/// One index for all tests of this binary.
fn med_index() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let enc = Encoder::load(tiny().to_str().unwrap(), &EncoderOptions::default()).unwrap();
        let opts = BuildOptions {
            collection: shared().join("data/classic/med/docs.jsonl"),
            read: ReadOptions::default(),
            out: dir.path().join("med"),
            dtype: Dtype::F32,
            hnsw: Some(HnswParams::default()),
            shard: None,
            force: false,
            chunk_rows: 4096,
        };
        index::build(&enc, &opts, &Quiet).unwrap();
        dir
    })
    .path()
    .join("med")
    .leak()
}

fn queries() -> Vec<(String, String)> {
    testkit::medline_queries()
}

fn search(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simlm-search"))
        .args(args)
        .output()
        .unwrap()
}

fn query_vectors(index: &Index) -> Vec<f32> {
    let enc = Encoder::load(tiny().to_str().unwrap(), &EncoderOptions::default()).unwrap();
    assert_eq!(
        enc.files().fingerprint().unwrap(),
        index.manifest.model.as_ref().unwrap().fingerprint
    );
    let docs: Vec<Doc> = queries().iter().map(|(_, t)| Doc::query(t)).collect();
    enc.encode(Kind::Query, &docs).unwrap()
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn exact_search_equals_a_brute_force_scan() {
    let index = Index::open(med_index()).unwrap();
    let qv = query_vectors(&index);
    let d = index.manifest.dim;
    let n = index.vectors.rows();
    let all = index.vectors.rows_f32(0, n);
    let k = 25;
    let got = index.search(&qv, k, SearchMode::Exact).unwrap();
    for (qi, hits) in got.iter().enumerate() {
        let q = &qv[qi * d..(qi + 1) * d];
        // Brute force in f64: every row's score, sorted by score then row.
        let mut scan: Vec<(f64, usize)> = (0..n)
            .map(|r| {
                (
                    all[r * d..(r + 1) * d]
                        .iter()
                        .zip(q)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum(),
                    r,
                )
            })
            .collect();
        scan.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        assert_eq!(hits.len(), k);
        // Scores agree with the scan's to f32 rounding, the list is sorted, and nothing left out
        // scores above the k-th hit.
        for h in hits {
            assert!((h.score as f64 - scan.iter().find(|s| s.1 == h.row).unwrap().0).abs() < 1e-6);
        }
        for w in hits.windows(2) {
            assert!(w[0].score > w[1].score || (w[0].score == w[1].score && w[0].row < w[1].row));
        }
        let kth = hits[k - 1].score as f64;
        let returned: std::collections::HashSet<usize> = hits.iter().map(|h| h.row).collect();
        for (s, r) in &scan {
            if !returned.contains(r) {
                assert!(
                    *s <= kth + 1e-6,
                    "query {qi}: row {r} ({s}) left out above the k-th score {kth}"
                );
            }
        }
    }
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn hnsw_top10_overlaps_exact_at_the_default_ef() {
    let index = Index::open(med_index()).unwrap();
    let qv = query_vectors(&index);
    let exact = index.search(&qv, 10, SearchMode::Exact).unwrap();
    let approx = index
        .search(&qv, 10, SearchMode::Hnsw { ef: DEFAULT_EF })
        .unwrap();
    let mut overlap = 0.0;
    for (e, a) in exact.iter().zip(&approx) {
        let es: std::collections::HashSet<usize> = e.iter().map(|h| h.row).collect();
        // A hit tied with exact's 10th score (to f32 rounding) is as correct as the row exact kept:
        // the random-weight fixture has many near-identical vectors.
        let kth = e[9].score;
        overlap += a
            .iter()
            .filter(|h| es.contains(&h.row) || h.score >= kth - 1e-6)
            .count() as f64
            / 10.0;
    }
    overlap /= exact.len() as f64;
    println!("HNSW (ef={DEFAULT_EF}) top-10 overlap with exact: {overlap:.4}");
    assert!(overlap >= 0.99 - 1e-12, "{overlap}");
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_batch_run_evaluates_with_simlm_eval() {
    let tmp = tempfile::tempdir().unwrap();
    for (fmt, exact) in [("trec", true), ("msmarco", false)] {
        let run = tmp.path().join(format!("run.{fmt}"));
        let mut args = vec![
            "batch",
            "--index",
            med_index().to_str().unwrap(),
            "--queries",
            shared()
                .join("data/classic/med/queries.tsv")
                .to_str()
                .unwrap()
                .to_string()
                .leak(),
            "--k",
            "100",
            "--out",
            run.to_str().unwrap(),
            "--run-format",
            fmt,
        ];
        if exact {
            args.push("--exact");
        }
        let o = search(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let qrels = eval::Qrels::read(&shared().join("data/classic/med/qrels.txt")).unwrap();
        let r = eval::Run::read(&run).unwrap();
        assert_eq!(r.queries.len(), 30);
        assert!(r.queries.values().all(|h| h.len() == 100));
        let e = eval::evaluate(&qrels, &r, &eval::DEFAULT_METRICS, 1);
        assert_eq!((e.queries, e.missing), (30, 0));
        println!("{fmt}: {:?}", e.means);
    }
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn the_repl_answers_piped_queries() {
    let mut repl = Command::new(env!("CARGO_BIN_EXE_simlm-search"));
    repl.args(["repl", "--index", med_index().to_str().unwrap(), "--k", "3"]);
    let o = with_stdin(
        repl,
        b"cancer in children\n\n:k 2\n:exact\nheart valve surgery\n:quit\nnever read\n".to_vec(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches("  1. ").count(), 2, "{out}");
    assert_eq!(out.matches("  3. ").count(), 1, "{out}");
    assert!(out.contains("(empty query)"), "{out}");
    assert!(out.contains("k=2, exact"), "{out}");
    assert!(out.contains("encode") && out.contains("search"), "{out}");
    // Piped, each line is echoed before its answer.
    let first = out.find("> cancer in children\n").expect(&out);
    let second = out.find("> heart valve surgery\n").expect(&out);
    assert!(
        first < out.find("  1. ").unwrap() && second > first,
        "{out}"
    );
    assert!(out.contains("> :k 2\nk=2, "), "{out}");
}

/// `:ef N` while exact says the search stays exact (no silent switch to the graph), `:hnsw` then
/// uses that ef, and an unknown command is named with the list of commands, the loop going on.
#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn the_repl_keeps_ef_across_modes_and_names_unknown_commands() {
    let mut repl = Command::new(env!("CARGO_BIN_EXE_simlm-search"));
    repl.args(["repl", "--index", med_index().to_str().unwrap(), "--k", "2"]);
    let o = with_stdin(
        repl,
        b":exact\n:ef 50\nblood pressure\n:hnsw\n:foo 3\n:ef 70\n:ef\nheart\n".to_vec(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let after = |cmd: &str| -> String {
        let at = out.find(&format!("> {cmd}\n")).expect(&out) + cmd.len() + 3;
        out[at..]
            .lines()
            .take_while(|l| !l.starts_with("> "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(after(":exact"), "k=2, exact", "{out}");
    let ef = after(":ef 50");
    assert!(
        ef.contains("ef=50 kept for the graph; the search is still exact")
            && ef.ends_with("k=2, exact"),
        "{out}"
    );
    assert_eq!(after(":hnsw"), "k=2, hnsw ef=50", "{out}");
    let foo = after(":foo 3");
    assert!(
        foo.contains("unknown command `:foo`") && foo.contains(":k N") && foo.contains(":quit"),
        "{out}"
    );
    assert_eq!(after(":ef 70"), "k=2, hnsw ef=70", "{out}");
    assert!(
        after(":ef").contains(":ef needs a positive number"),
        "{out}"
    );
    // Both queries answered, the second after the unknown command.
    assert_eq!(out.matches("  1. ").count(), 2, "{out}");
    assert!(after("heart").contains("  1. "), "{out}");
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn query_prints_ids_scores_and_text() {
    let o = search(&[
        "query",
        "--index",
        med_index().to_str().unwrap(),
        "--k",
        "2",
        "--exact",
        "blood pressure",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("  1. ") && out.contains("  2. ") && !out.contains("  3. "),
        "{out}"
    );
    let o = search(&["query", "--index", med_index().to_str().unwrap(), "  "]);
    assert!(
        !o.status.success() && stderr(&o).contains("empty"),
        "{}",
        stderr(&o)
    );
}

/// A copy of the Medline index; returns the folder of its files.
fn copy_index(to: &Path) -> PathBuf {
    testkit::copy_tree(med_index(), to);
    engine::store::manifest::Manifest::read(to)
        .unwrap()
        .data_dir(to)
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn damaged_indexes_and_bad_queries_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |dir: &Path, want: &str| {
        let o = search(&["query", "--index", dir.to_str().unwrap(), "what"]);
        let e = stderr(&o);
        assert!(!o.status.success(), "accepted {}", dir.display());
        assert!(e.contains(want), "expected `{want}` in: {e}");
        assert!(!e.contains("panicked"), "{e}");
    };
    // Truncated vectors.
    let d = tmp.path().join("trunc");
    let files = copy_index(&d);
    let v = std::fs::read(files.join("vectors.npy")).unwrap();
    std::fs::write(files.join("vectors.npy"), &v[..v.len() - 100]).unwrap();
    check(&d, "truncated");
    // Missing manifest.
    let d = tmp.path().join("nomanifest");
    copy_index(&d);
    std::fs::remove_file(d.join("manifest.json")).unwrap();
    check(&d, "no manifest.json");
    // Wrong format version.
    let d = tmp.path().join("version");
    copy_index(&d);
    let m = std::fs::read_to_string(d.join("manifest.json")).unwrap();
    std::fs::write(
        d.join("manifest.json"),
        m.replace("\"format_version\": 2", "\"format_version\": 99"),
    )
    .unwrap();
    check(&d, "format_version 99 is not supported");
    // Another model than the index's.
    let o = search(&[
        "query",
        "--index",
        med_index().to_str().unwrap(),
        "--model",
        shared()
            .join("fixtures/tiny-bert-bin")
            .to_str()
            .unwrap()
            .to_string()
            .leak(),
        "what",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("is not the one"),
        "{}",
        stderr(&o)
    );
    // A queries file with a malformed line.
    let q = tmp.path().join("q.tsv");
    std::fs::write(&q, "1\tfine\nno tab on this line\n").unwrap();
    let o = search(&[
        "batch",
        "--index",
        med_index().to_str().unwrap(),
        "--queries",
        q.to_str().unwrap(),
        "--out",
        tmp.path().join("run").to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("q.tsv, line 2"), "{e}");
    assert!(!tmp.path().join("run").exists());
}

#[test]
fn k_of_zero_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    for args in [
        vec!["batch", "--index", "idx", "--queries", "q.tsv", "--k", "0"],
        vec!["query", "--index", "idx", "--k", "0", "what"],
        vec!["repl", "--index", "idx", "--k", "0"],
    ] {
        let mut args = args;
        if args[0] == "batch" {
            args.extend(["--out", run.to_str().unwrap()]);
        }
        let o = search(&args);
        let e = stderr(&o);
        assert!(!o.status.success(), "{args:?} accepted");
        assert!(e.contains("--k") && e.contains("at least 1"), "{e}");
    }
    assert!(!run.exists());
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn passages_are_printed_without_their_control_characters() {
    let tmp = tempfile::tempdir().unwrap();
    let coll = tmp.path().join("c.tsv");
    std::fs::write(
        &coll,
        "p1\tclear \u{1b}[2J\u{1b}[31mred\u{7} \u{202e}txet\n2\tanother passage\n",
    )
    .unwrap();
    let enc = Encoder::load(tiny().to_str().unwrap(), &EncoderOptions::default()).unwrap();
    let out = tmp.path().join("idx");
    let opts = BuildOptions {
        collection: coll,
        read: ReadOptions::default(),
        out: out.clone(),
        dtype: Dtype::F32,
        hnsw: None,
        shard: None,
        force: false,
        chunk_rows: 4096,
    };
    index::build(&enc, &opts, &Quiet).unwrap();
    let o = search(&["query", "--index", out.to_str().unwrap(), "--k", "2", "red"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\u{202e}'),
        "{text:?}"
    );
    assert!(
        text.contains("clear \\u{1b}[2J\\u{1b}[31mred\\u{7} \\u{202e}txet"),
        "{text:?}"
    );
}
