//! What `simlm-search` does with damaged indexes and odd `--out` paths, as a user meets them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use engine::store::manifest::Manifest;

use testkit::{s, shared, stderr, with_stdin};

fn search(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simlm-search"))
        .args(args)
        .output()
        .unwrap()
}

/// A small index (Medline's first 300 docs) shared by the tests, built once with the library.
fn base() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(shared().join("data/classic/med/docs.jsonl")).unwrap();
        let coll = dir.path().join("docs.jsonl");
        let head: Vec<&str> = text.lines().take(300).collect();
        std::fs::write(&coll, head.join("\n") + "\n").unwrap();
        let enc = engine::Encoder::load(
            shared().join("fixtures/tiny-bert").to_str().unwrap(),
            &Default::default(),
        )
        .unwrap();
        let opts = engine::index::BuildOptions {
            collection: coll,
            read: Default::default(),
            out: dir.path().join("idx"),
            dtype: engine::store::npy::Dtype::F32,
            hnsw: Some(engine::search::hnsw::HnswParams {
                m: 8,
                ef_construction: 64,
            }),
            shard: None,
            force: false,
            chunk_rows: 4096,
        };
        engine::index::build(&enc, &opts, &engine::index::Quiet).unwrap();
        dir
    })
    .path()
}

fn index() -> PathBuf {
    base().join("idx")
}

/// A copy of the index; returns it and the folder of its files.
fn copy_index(to: &Path) -> (PathBuf, PathBuf) {
    testkit::copy_tree(&index(), to);
    let data = Manifest::read(to).unwrap().data_dir(to);
    (to.to_path_buf(), data)
}

fn queries(dir: &Path) -> PathBuf {
    let q = dir.join("q.tsv");
    std::fs::write(&q, "1\tcancer treatment\n2\theart disease in children\n").unwrap();
    q
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_non_finite_vector_is_an_error_naming_its_row() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, data) = copy_index(&tmp.path().join("nan"));
    let p = data.join("vectors.npy");
    let mut v = std::fs::read(&p).unwrap();
    let dim = Manifest::read(&dir).unwrap().dim;
    let at = 128 + (5 * dim + 3) * 4;
    v[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&p, &v).unwrap();
    for extra in [&["--exact"][..], &[][..]] {
        let mut args = vec!["query", "--index", dir.to_str().unwrap(), "--k", "300"];
        args.extend_from_slice(extra);
        args.push("cancer");
        let o = search(&args);
        let e = stderr(&o);
        assert!(!o.status.success(), "{extra:?} answered");
        assert!(
            e.contains("row 5") && e.contains("verify"),
            "{extra:?}: {e}"
        );
        assert!(!e.contains("panicked"), "{e}");
    }
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn damaged_links_are_an_error_not_a_short_list() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, data) = copy_index(&tmp.path().join("links"));
    let p = data.join("graph.hnsw");
    let mut g = std::fs::read(&p).unwrap();
    let n = 300usize;
    let m0 = u32::from_le_bytes(g[12..16].try_into().unwrap()) as usize;
    let layer0 = 64 + n.div_ceil(4) * 4;
    // Every layer-0 list of nodes 100..300 links to a node past the end.
    for row in 100..n {
        let at = layer0 + 4 * row * (m0 + 1);
        g[at + 4..at + 8].copy_from_slice(&0xfff0_0000u32.to_le_bytes());
    }
    std::fs::write(&p, &g).unwrap();
    let o = search(&[
        "query",
        "--index",
        dir.to_str().unwrap(),
        "--k",
        "200",
        "cancer",
    ]);
    let e = stderr(&o);
    assert!(
        !o.status.success(),
        "answered: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(e.contains("graph.hnsw") && e.contains("damaged"), "{e}");
    assert!(e.contains("simlm-index hnsw"), "{e}");
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn out_paths_follow_the_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let q = queries(t);
    let idx = index();
    let batch = |out: &str| {
        search(&[
            "batch",
            "--index",
            idx.to_str().unwrap(),
            "--queries",
            q.to_str().unwrap(),
            "--k",
            "5",
            "--out",
            out,
        ])
    };
    // `-` is standard output.
    let o = batch("-");
    assert!(o.status.success(), "{}", stderr(&o));
    let run = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(run.lines().count(), 10, "{run}");
    assert!(!Path::new("-").exists());
    // A symlink is written through; the link stays.
    std::fs::write(t.join("target.txt"), "old").unwrap();
    std::os::unix::fs::symlink(t.join("target.txt"), t.join("link.txt")).unwrap();
    let o = batch(&s(&t.join("link.txt")));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(t.join("target.txt")).unwrap(), run);
    assert!(std::fs::symlink_metadata(t.join("link.txt"))
        .unwrap()
        .file_type()
        .is_symlink());
    // A device is written in place.
    let o = batch("/dev/null");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(Path::new("/dev/null")
        .metadata()
        .unwrap()
        .file_type()
        .is_char_device());
    // A FIFO is written in place, never replaced.
    let fifo = t.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let reader = std::thread::spawn({
        let fifo = fifo.clone();
        move || std::fs::read_to_string(fifo).unwrap()
    });
    let o = batch(&s(&fifo));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(reader.join().unwrap(), run);
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    // Index files, the index folder, and the inputs are refused; nothing is written.
    let data = Manifest::read(&idx).unwrap().data_dir(&idx);
    let vectors = data.join("vectors.npy");
    let before = std::fs::read(&vectors).unwrap();
    for (out, want) in [
        (s(&vectors), "index folder"),
        (s(&idx.join("run.txt")), "index folder"),
        (s(&q), "inputs"),
    ] {
        let o = batch(&out);
        assert!(!o.status.success(), "{out} accepted");
        assert!(stderr(&o).contains(want), "{out}: {}", stderr(&o));
    }
    assert_eq!(std::fs::read(&vectors).unwrap(), before);
    assert!(!idx.join("run.txt").exists());
}

use std::os::unix::fs::FileTypeExt;

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn the_repl_reports_a_bad_line_and_answers_the_next() {
    let mut repl = Command::new(env!("CARGO_BIN_EXE_simlm-search"));
    repl.args(["repl", "--index", index().to_str().unwrap(), "--k", "2"]);
    let o = with_stdin(repl, b"cancer\ncaf\xe9 au lait\nheart disease\n".to_vec());
    let out = String::from_utf8_lossy(&o.stdout);
    let e = stderr(&o);
    assert!(e.contains("line 2: not valid UTF-8"), "{e}");
    assert_eq!(out.matches("  1. ").count(), 2, "{out}");
    // The lines answered are echoed before their answers; the skipped one is not.
    assert_eq!(
        out.matches("\n> ").count() + usize::from(out.starts_with("> ")),
        2,
        "{out}"
    );
    assert!(
        out.starts_with("> cancer\n") && out.contains("\n> heart disease\n"),
        "{out}"
    );
    assert!(!o.status.success());
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn query_ids_that_would_break_a_run_are_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = index();
    for (name, text, want) in [
        ("dup.tsv", "7\tcancer\n8\theart\n7\tlungs\n", "line 3"),
        ("space.tsv", "7\tcancer\nq 8\theart\n", "line 2"),
        ("nul.tsv", "7\tcancer\n8\0\theart\n", "line 2"),
        ("bom.tsv", "\u{feff}7\tcancer\n", ""),
    ] {
        let q = testkit::write(tmp.path(), name, text);
        let out = tmp.path().join(format!("{name}.run"));
        let o = search(&[
            "batch",
            "--index",
            idx.to_str().unwrap(),
            "--queries",
            q.to_str().unwrap(),
            "--k",
            "3",
            "--out",
            out.to_str().unwrap(),
        ]);
        if want.is_empty() {
            assert!(o.status.success(), "{name}: {}", stderr(&o));
            let run = std::fs::read_to_string(&out).unwrap();
            assert!(run.starts_with("7 Q0 "), "{name}: {run}");
        } else {
            let e = stderr(&o);
            assert!(!o.status.success(), "{name} accepted");
            assert!(e.contains(name) && e.contains(want), "{name}: {e}");
            assert!(!out.exists(), "{name}: a run was written");
        }
    }
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn an_open_index_answers_from_its_generation_after_a_forced_rebuild() {
    use engine::index::{Index, SearchMode};
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = copy_index(&tmp.path().join("idx"));
    let old = Index::open(&dir).unwrap();
    // A rebuild of other passages replaces the index and removes the generation `old` was opened on.
    let other = testkit::write(
        tmp.path(),
        "other.tsv",
        "x1\tkidney stones\nx2\tlung function\nx3\tbone density\n",
    );
    let enc = engine::Encoder::load(
        shared().join("fixtures/tiny-bert").to_str().unwrap(),
        &Default::default(),
    )
    .unwrap();
    let opts = engine::index::BuildOptions {
        collection: other,
        read: Default::default(),
        out: dir.clone(),
        dtype: engine::store::npy::Dtype::F32,
        hnsw: Some(engine::search::hnsw::HnswParams {
            m: 8,
            ef_construction: 64,
        }),
        shard: None,
        force: true,
        chunk_rows: 4096,
    };
    engine::index::build(&enc, &opts, &engine::index::Quiet).unwrap();
    assert!(!old.data.exists(), "the old generation was kept");
    assert_eq!(Index::open(&dir).unwrap().ids, ["x1", "x2", "x3"]);
    // The index opened before answers from its own generation, through the graph as exactly.
    let q = old.vectors.rows_f32(7, 8).to_vec();
    for mode in [SearchMode::Hnsw { ef: 64 }, SearchMode::Exact] {
        let hits = old.search(&q, 5, mode).unwrap();
        assert_eq!(hits[0].len(), 5, "{mode}");
        assert_eq!(hits[0][0].row, 7, "{mode}");
    }
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_query_vector_that_cannot_be_scored_is_the_querys_fault() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = index();
    let m = engine::store::npy::NpyMatrix::open(
        &Manifest::read(&idx)
            .unwrap()
            .data_dir(&idx)
            .join("vectors.npy"),
    )
    .unwrap();
    let dim = m.cols();
    let good = m.rows_f32(0, 1).to_vec();
    // Finite values whose scores overflow f32 (against row 0 at least), a vector of zeros and one of
    // subnormals whose scores underflow to zero, each after a good query.
    let huge: Vec<f32> = good.iter().map(|x| 3e38 * x.signum()).collect();
    for (name, bad, want) in [
        ("huge", huge, "query 1 has length"),
        ("zero", vec![0f32; dim], "query 1 is all zeros"),
        ("tiny", vec![1e-45f32; dim], "less than 1e-18"),
    ] {
        let q = tmp.path().join(format!("{name}.npy"));
        let rows: Vec<f32> = good.iter().chain(&bad).copied().collect();
        engine::store::npy::write_f32(&q, &rows, 2, dim).unwrap();
        for extra in [&["--exact"][..], &[][..]] {
            let out = tmp.path().join(format!("{name}.run"));
            let mut args = vec!["batch", "--index", idx.to_str().unwrap(), "--k", "5"];
            args.extend_from_slice(&["--query-vectors", q.to_str().unwrap()]);
            args.extend_from_slice(&["--out", out.to_str().unwrap()]);
            args.extend_from_slice(extra);
            let o = search(&args);
            let e = stderr(&o);
            assert!(!o.status.success(), "{name} {extra:?} answered");
            assert!(e.contains(want), "{name} {extra:?}: {e}");
            assert!(!e.contains("verify") && !e.contains("damaged"), "{e}");
            assert!(!out.exists(), "{name}: a run was written");
        }
    }
}
