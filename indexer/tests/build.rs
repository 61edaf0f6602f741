//! `simlm-index` end to end on the Medline collection (1,033 docs) with the tiny BERT fixture.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use engine::index::Index;
use engine::store::npy::NpyMatrix;

use testkit::{ok, python, shared};

fn tiny() -> String {
    testkit::s(&testkit::tiny_bert())
}

fn med() -> String {
    testkit::s(&testkit::medline())
}

fn index_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_simlm-index"));
    c.args(args);
    c
}

fn build(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "build",
        "--model",
        &tiny_s(),
        "--collection",
        &med_s(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    index_cmd(&args).output().unwrap()
}

// Owned strings leaked for argument lists (tests only).
fn tiny_s() -> &'static str {
    Box::leak(tiny().into_boxed_str())
}
fn med_s() -> &'static str {
    Box::leak(med().into_boxed_str())
}

/// The folder holding an index's files (its current generation).
fn data(dir: &Path) -> PathBuf {
    engine::store::manifest::Manifest::read(dir)
        .unwrap()
        .data_dir(dir)
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn index_vectors_equal_embed_and_numpy_opens_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("med");
    let o = ok(build(&dir, &[]));
    // Each stage's line gives its time, and a rate only in units people read ("569 MB/s", not
    // "596176324.7 bytes/s") and only where there was time to measure one.
    let e = String::from_utf8_lossy(&o.stderr);
    let done: Vec<&str> = e.lines().filter(|l| l.contains(": done in ")).collect();
    assert!(
        ["reading", "encoding", "graph"].iter().all(|s| done
            .iter()
            .any(|l| l.starts_with(&format!("{s}: done in ")))),
        "{e}"
    );
    for l in done {
        assert!(!l.contains("bytes/s") && !l.contains("(0.0 "), "{l}");
    }
    // scripts/slurm/index.sh reads the total from this line: plain digits.
    assert!(e.contains("encoding: started (1033 passages)"), "{e}");
    let npy = tmp.path().join("embed.npy");
    ok(index_cmd(&[
        "embed",
        "--model",
        tiny_s(),
        "--kind",
        "passage",
        "--input",
        med_s(),
        "--out",
        npy.to_str().unwrap(),
    ])
    .output()
    .unwrap());
    let a = NpyMatrix::open(&data(&dir).join("vectors.npy")).unwrap();
    let b = NpyMatrix::open(&npy).unwrap();
    assert_eq!((a.rows(), a.cols()), (1033, 32));
    assert_eq!((b.rows(), b.cols()), (1033, 32));
    let (va, vb) = (a.rows_f32(0, 1033), b.rows_f32(0, 1033));
    let worst = va
        .iter()
        .zip(vb.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-5, "index vs embed: {worst}");

    // numpy reads the file as it is, memory-mapped.
    let o = ok(Command::new(python())
        .args(["-c", "import sys, numpy; a = numpy.load(sys.argv[1], mmap_mode='r'); print(a.shape, a.dtype, float(a[5, 3]))"])
        .arg(data(&dir).join("vectors.npy"))
        .output()
        .unwrap());
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.starts_with("(1033, 32) float32"), "{s}");
    let v: f32 = s.split_whitespace().last().unwrap().parse().unwrap();
    assert_eq!(v, va[5 * 32 + 3]);

    // The same command again finds the index complete; other settings need --force.
    let before = bytes(&dir.join("manifest.json"));
    let o = ok(build(&dir, &[]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already complete"));
    assert_eq!(bytes(&dir.join("manifest.json")), before);
    let o = build(&dir, &["--dtype", "f16"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    ok(index_cmd(&["verify", dir.to_str().unwrap()])
        .output()
        .unwrap());
    let info = ok(index_cmd(&["info", dir.to_str().unwrap()])
        .output()
        .unwrap());
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("bytes/passage"), "{text}");
    // The sequence lengths the index was encoded with (not in the manifest; from the format).
    assert!(
        text.contains("token limits: queries 32, passages 144 (fixed by the simlm input format)"),
        "{text}"
    );
}

/// `--precision int8`: the manifest says so (queries are then encoded the same way), the vectors
/// stay near the f32 index's, and switching precision on a finished index needs --force.
#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn an_int8_index_records_its_precision_and_stays_near_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, q) = (tmp.path().join("f32"), tmp.path().join("int8"));
    ok(build(&f, &[]));
    ok(build(&q, &["--precision", "int8"]));
    let m = engine::store::manifest::Manifest::read(&q).unwrap();
    assert_eq!(m.precision, Some(engine::Precision::Int8));
    let o = build(&f, &["--precision", "int8"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    let a = NpyMatrix::open(&data(&f).join("vectors.npy")).unwrap();
    let b = NpyMatrix::open(&data(&q).join("vectors.npy")).unwrap();
    let (va, vb) = (a.rows_f32(0, 1033), b.rows_f32(0, 1033));
    let worst = va
        .chunks(32)
        .zip(vb.chunks(32))
        .map(|(x, y)| x.iter().zip(y).map(|(x, y)| x * y).sum::<f32>())
        .fold(1f32, f32::min);
    assert!(worst >= 0.98 && va != vb, "int8 vs f32 cosine {worst}");
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_killed_build_resumes_to_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    ok(build(&whole, &["--no-hnsw", "--chunk-rows", "32"]));
    let killed = tmp.path().join("killed");
    let mut child = index_cmd(&[
        "build",
        "--model",
        tiny_s(),
        "--collection",
        med_s(),
        "--out",
        killed.to_str().unwrap(),
        "--no-hnsw",
        "--chunk-rows",
        "32",
    ])
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    // Kill it (SIGKILL) once some chunks, but not all, are on disk.
    let progress = killed.join("gen000001/build.progress.json");
    let t = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&progress) {
            if text.contains("\"rows_done\":") && !text.contains("\"rows_done\":0") {
                break;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !killed.join("manifest.json").exists(),
        "the build finished before it was killed"
    );
    assert!(Index::open(&killed).is_err());
    ok(build(&killed, &["--no-hnsw", "--chunk-rows", "32"]));
    assert_eq!(
        bytes(&data(&whole).join("vectors.npy")),
        bytes(&data(&killed).join("vectors.npy"))
    );
    assert_eq!(
        bytes(&data(&whole).join("docids.txt")),
        bytes(&data(&killed).join("docids.txt"))
    );
    assert!(!data(&killed).join("build.progress.json").exists());
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn merged_shards_equal_an_unsharded_build() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    ok(build(&whole, &["--no-hnsw", "--chunk-rows", "100"]));
    let s0 = tmp.path().join("s0");
    let s1 = tmp.path().join("s1");
    ok(build(&s1, &["--shard", "1/2", "--chunk-rows", "100"]));
    ok(build(&s0, &["--shard", "0/2", "--chunk-rows", "100"]));
    let merged = tmp.path().join("merged");
    ok(index_cmd(&[
        "merge",
        s1.to_str().unwrap(),
        s0.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
        "--no-hnsw",
    ])
    .output()
    .unwrap());
    for f in ["vectors.npy", "docids.txt", "offsets.bin"] {
        assert_eq!(
            bytes(&data(&whole).join(f)),
            bytes(&data(&merged).join(f)),
            "{f}"
        );
    }
    // Shards of another model are refused.
    let other = tmp.path().join("other");
    let bin = shared().join("fixtures/tiny-bert-bin");
    ok(index_cmd(&[
        "build",
        "--model",
        bin.to_str().unwrap(),
        "--collection",
        med_s(),
        "--out",
        other.to_str().unwrap(),
        "--shard",
        "1/2",
        "--chunk-rows",
        "100",
    ])
    .output()
    .unwrap());
    let o = index_cmd(&[
        "merge",
        s0.to_str().unwrap(),
        other.to_str().unwrap(),
        "--out",
        tmp.path().join("bad").to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("differ in model"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn graph_results_match_brute_force_up_to_rounding() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("med");
    ok(build(&dir, &[]));
    let index = Index::open(&dir).unwrap();
    let g = index.graph().unwrap();
    let n = index.vectors.rows();
    let all = index.vectors.rows_f32(0, n);
    let d = index.vectors.cols();
    // The random-weight fixture maps most passages into large groups of near-identical vectors
    // (cosine 1 - 1e-7), where f32 rounding decides the order and a group fills the top 10 without
    // the passage itself; the strict self-search runs on distinct vectors in the engine's tests.
    // Here, against brute force: hits score at least the 10th exact score (up to rounding), and the
    // best hit the best exact score.
    let (mut selves, mut good, mut best_gap) = (0, 0, 0f32);
    for r in 0..n {
        let q = &all[r * d..(r + 1) * d];
        let hits = g
            .search(&index.vectors, q, 10, engine::search::hnsw::DEFAULT_EF)
            .unwrap();
        assert_eq!(hits.len(), 10);
        let mut exact: Vec<f32> = (0..n)
            .map(|o| {
                q.iter()
                    .zip(&all[o * d..(o + 1) * d])
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect();
        exact.sort_by(|a, b| b.total_cmp(a));
        best_gap = best_gap.max(exact[0] - hits[0].score);
        good += hits.iter().filter(|h| h.score >= exact[9] - 1e-6).count();
        selves += usize::from(hits.iter().any(|h| h.row == r));
    }
    let recall = good as f64 / (10 * n) as f64;
    println!(
        "{n} passages: tie-aware recall@10 {recall:.4}; {selves} among their own top 10; \
         largest shortfall of the best hit {best_gap:e}"
    );
    assert!(recall >= 0.99, "{recall}");
    assert!(best_gap <= 1e-5, "{best_gap}");
}

fn write(dir: &Path, name: &str, content: &[u8]) -> String {
    testkit::s(&testkit::write(dir, name, content))
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn bad_collections_are_reported_and_leave_no_finished_index() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(String, Vec<&str>, &str)> = vec![
        (
            write(tmp.path(), "notab.tsv", b"1\tok\n2 missing tab\n"),
            vec![],
            "notab.tsv, line 2",
        ),
        (
            write(tmp.path(), "dup.tsv", b"1\ta\n2\tb\n1\tc\n"),
            vec![],
            "dup.tsv, line 3: duplicate id `1`",
        ),
        (
            write(
                tmp.path(),
                "bad.jsonl",
                b"{\"id\":\"1\",\"text\":\"a\"}\n{\"id\":\n",
            ),
            vec![],
            "bad.jsonl, line 2",
        ),
        (
            write(tmp.path(), "noid.jsonl", b"{\"text\":\"a\"}\n"),
            vec![],
            "noid.jsonl, line 1: missing id",
        ),
        (
            write(tmp.path(), "latin1.tsv", b"1\tok\n2\tcaf\xe9\n"),
            vec![],
            "latin1.tsv, line 2: not valid UTF-8",
        ),
        (
            write(tmp.path(), "empty.tsv", b""),
            vec![],
            "empty.tsv: the collection is empty",
        ),
    ];
    // Counts of zero are refused before anything is read.
    let good = write(tmp.path(), "good.tsv", b"1\ta\n2\tb\n");
    let mut cases = cases;
    for flag in [
        "--batch-tokens",
        "--chunk-rows",
        "--hnsw-m",
        "--ef-construction",
        "--threads",
    ] {
        cases.push((good.clone(), vec![flag, "0"], "must be at least 1"));
    }
    // Graph parameters past their bounds, refused before the collection is read.
    for (flag, value, want) in [
        ("--hnsw-m", "18446744073709551615", "must be at most 512"),
        ("--hnsw-m", "4294967295", "must be at most 512"),
        ("--m", "100000", "must be at most 512"),
        ("--ef-construction", "1000000", "must be at most 16384"),
    ] {
        cases.push((good.clone(), vec![flag, value], want));
    }
    for (i, (coll, extra, want)) in cases.into_iter().enumerate() {
        let out = tmp.path().join(format!("out{i}"));
        let mut args = vec![
            "build",
            "--model",
            tiny_s(),
            "--collection",
            &coll,
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = index_cmd(&args).output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{coll} accepted");
        assert!(e.contains(want), "expected `{want}` in: {e}");
        assert!(!e.contains("panicked"), "{e}");
        assert!(!out.join("manifest.json").exists());
    }
    // Titles whose ids do not match.
    let coll = write(tmp.path(), "c.tsv", b"1\ta\n2\tb\n");
    let titles = write(tmp.path(), "t.tsv", b"1\tA\n3\tB\n");
    let out = tmp.path().join("titles");
    let o = index_cmd(&[
        "build",
        "--model",
        tiny_s(),
        "--collection",
        &coll,
        "--titles",
        &titles,
        "--out",
        out.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("t.tsv, line 2"), "{e}");
    // --skip-bad skips and counts.
    let coll = write(tmp.path(), "skip.tsv", b"1\ta\nbroken\n3\tc\n");
    let out = tmp.path().join("skip");
    let o = ok(index_cmd(&[
        "build",
        "--model",
        tiny_s(),
        "--collection",
        &coll,
        "--out",
        out.to_str().unwrap(),
        "--skip-bad",
    ])
    .output()
    .unwrap());
    assert!(String::from_utf8_lossy(&o.stderr).contains("skipped 1 malformed"));
    assert_eq!(
        std::fs::read_to_string(data(&out).join("docids.txt")).unwrap(),
        "1\n3\n"
    );
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn embed_rejects_bad_lines_with_their_number() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.npy");
    let embed = |model: &str, input: &str| {
        index_cmd(&[
            "embed",
            "--model",
            model,
            "--kind",
            "query",
            "--input",
            input,
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap()
    };
    let cases = [
        (
            tiny_s(),
            write(
                tmp.path(),
                "in.jsonl",
                b"{\"text\":\"ok\"}\n{\"title\":\"no text\"}\n",
            ),
            "in.jsonl, line 2",
        ),
        (
            tiny_s(),
            write(tmp.path(), "bin.jsonl", b"{\"text\":\"\xff\"}\n"),
            "bin.jsonl, line 1: not valid UTF-8",
        ),
        (
            "/no/such/model",
            write(tmp.path(), "good.jsonl", b"{\"text\":\"ok\"}\n"),
            "/no/such/model",
        ),
    ];
    for (model, input, want) in cases {
        let o = embed(model, &input);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && e.contains(want),
            "expected `{want}` in: {e}"
        );
        assert!(!e.contains("panicked"), "{e}");
        assert!(!out.exists());
    }
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn fix_encoding_repairs_passage_421() {
    let coll = shared().join("data/msmarco/pool/collection.tsv");
    let rec = engine::corpus::CorpusReader::open(
        &coll,
        engine::corpus::ReadOptions {
            fix_encoding: true,
            ..Default::default()
        },
    )
    .unwrap()
    .map(|r| r.unwrap())
    .find(|r| r.id == "421")
    .unwrap();
    assert!(rec.text.contains("/ˈwaɪ faɪ/"), "{}", rec.text);
}

/// The real all-MiniLM-L6-v2 folder (scripts/fetch-minilm.sh; SIMLM_MINILM elsewhere).
fn minilm() -> PathBuf {
    let p = std::env::var_os("SIMLM_MINILM")
        .map(PathBuf::from)
        .unwrap_or_else(|| testkit::repo_root().join("models/all-MiniLM-L6-v2"));
    assert!(
        p.join("sentence_bert_config.json").is_file(),
        "{} is missing: run scripts/fetch-minilm.sh first",
        p.display()
    );
    p
}

/// A few passages of a collection, as JSONL, for quick builds with the real model.
fn few_passages(dir: &Path) -> PathBuf {
    let lines: String = (0..6)
        .map(|i| {
            format!(
                "{{\"_id\":\"d{i}\",\"title\":\"Title {i}\",\"text\":\"passage number {i} about retrieval and proteins\"}}\n"
            )
        })
        .collect();
    testkit::write(dir, "few.jsonl", lines)
}

/// `info` shows the token limits of a sentence-transformers index: the folder's max_seq_length.
#[test]
fn info_shows_the_token_limits_of_a_sentence_transformers_index() {
    let tmp = tempfile::tempdir().unwrap();
    let coll = few_passages(tmp.path());
    let dir = tmp.path().join("st");
    let model = minilm();
    ok(index_cmd(&[
        "build",
        "--model",
        model.to_str().unwrap(),
        "--format",
        "sentence-transformers",
        "--collection",
        coll.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
        "--no-hnsw",
    ])
    .output()
    .unwrap());
    let info = ok(index_cmd(&["info", dir.to_str().unwrap()])
        .output()
        .unwrap());
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        text.contains("token limits: queries 256, passages 256 (sentence-transformers input format: max_seq_length of ")
            && text.contains("sentence_bert_config.json"),
        "{text}"
    );
}

/// A sentence-transformers folder indexed without --format gets that format and the folder's pooling
/// (one line says so), the same bytes as with --format sentence-transformers; a format or pooling
/// that contradicts the folder's pooling is kept, with a warning; any other model keeps simlm.
#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_sentence_transformers_folder_gives_its_format_and_pooling_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let coll = few_passages(tmp.path());
    let model = minilm();
    let build_with = |name: &str, model: &Path, extra: &[&str]| -> (PathBuf, String) {
        let dir = tmp.path().join(name);
        let mut args = vec![
            "build",
            "--model",
            model.to_str().unwrap(),
            "--collection",
            coll.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
            "--no-hnsw",
        ];
        args.extend_from_slice(extra);
        let o = ok(index_cmd(&args).output().unwrap());
        (dir, String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let manifest = |dir: &Path| engine::store::manifest::Manifest::read(dir).unwrap();
    let (told, e) = build_with("told", &model, &["--format", "sentence-transformers"]);
    assert!(
        !e.contains("sentence-transformers model (") && !e.contains("warning"),
        "{e}"
    );
    let (default, e) = build_with("default", &model, &[]);
    let notes: Vec<&str> = e
        .lines()
        .filter(|l| l.contains("is a sentence-transformers model ("))
        .collect();
    assert_eq!(notes.len(), 1, "{e}");
    assert!(
        notes[0].contains("using --format sentence-transformers and its mean pooling"),
        "{e}"
    );
    assert!(!e.contains("warning"), "{e}");
    let m = manifest(&default);
    assert_eq!(
        (m.input_format, m.pooling),
        (
            Some(engine::InputFormat::SentenceTransformers),
            Some(engine::Pooling::Mean)
        )
    );
    assert_eq!(
        bytes(&data(&default).join("vectors.npy")),
        bytes(&data(&told).join("vectors.npy"))
    );
    // The user's format is kept, with a warning that its pooling is not the folder's.
    let (simlm, e) = build_with("simlm", &model, &["--format", "simlm"]);
    assert!(
        e.contains("warning: ")
            && e.contains("1_Pooling/config.json declares mean pooling")
            && e.contains("but --format simlm pools with cls: kept as asked"),
        "{e}"
    );
    let m = manifest(&simlm);
    assert_eq!(
        (m.input_format, m.pooling),
        (Some(engine::InputFormat::Simlm), Some(engine::Pooling::Cls))
    );
    let (_, e) = build_with("cls", &model, &["--pooling", "cls"]);
    assert!(
        e.contains("warning: ") && e.contains("but --pooling cls was asked for: kept as asked"),
        "{e}"
    );
    let (_, e) = build_with("agree", &model, &["--format", "simlm", "--pooling", "mean"]);
    assert!(!e.contains("warning"), "{e}");
    // A plain BERT folder: simlm, as before, and nothing said.
    let (tiny_dir, e) = build_with("tiny", Path::new(tiny_s()), &[]);
    assert!(
        !e.contains("sentence-transformers") && !e.contains("warning"),
        "{e}"
    );
    let m = manifest(&tiny_dir);
    assert_eq!(
        (m.input_format, m.pooling),
        (Some(engine::InputFormat::Simlm), Some(engine::Pooling::Cls))
    );
}
