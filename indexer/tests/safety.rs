//! Crash safety and the write lock, as a user meets them: real binaries, temporary folders, the
//! Medline collection (1,033 docs) and the tiny BERT fixture. Every phase boundary of a build is a
//! stop (`SIMLM_FAILPOINT` aborts the process there, as `kill -9` would); the same command run again
//! must end with the index an uninterrupted build makes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use engine::index::{Index, SearchMode};
use engine::store::manifest::Manifest;

use testkit::{ok, s, shared, stderr};

fn index_cmd(args: &[String], failpoint: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_simlm-index"));
    c.args(args);
    match failpoint {
        Some(f) => c.env("SIMLM_FAILPOINT", f),
        None => c.env_remove("SIMLM_FAILPOINT"),
    };
    c.output().unwrap()
}

fn build_args(collection: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "build",
        "--model",
        &s(&shared().join("fixtures/tiny-bert")),
        "--collection",
        &s(collection),
        "--out",
        &s(out),
        "--chunk-rows",
        "256",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

fn med() -> PathBuf {
    testkit::medline()
}

fn files(dir: &Path) -> PathBuf {
    Manifest::read(dir).unwrap().data_dir(dir)
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The index answers, every list full, and the vectors are the reference's bytes.
fn check_whole(dir: &Path, reference: &Path) {
    ok(index_cmd(&["verify".into(), s(dir)], None));
    for f in ["vectors.npy", "docids.txt", "offsets.bin"] {
        assert_eq!(
            bytes(&files(dir).join(f)),
            bytes(&files(reference).join(f)),
            "{f} of {}",
            dir.display()
        );
    }
    let index = Index::open(dir).unwrap();
    let q = index.vectors.rows_f32(7, 8).to_vec();
    for mode in [SearchMode::Exact, SearchMode::Hnsw { ef: 64 }] {
        let hits = index.search(&q, 10, mode).unwrap();
        assert_eq!(hits[0].len(), 10, "{mode}");
        assert!(hits[0][0].score > 0.5, "{mode}: {:?}", hits[0][0]);
    }
    // Nothing of an interrupted command is left beside the index.
    let gens: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("gen"))
        .collect();
    assert_eq!(gens.len(), 1, "{gens:?}");
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_build_stopped_at_any_phase_resumes_to_the_same_index() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    ok(index_cmd(&build_args(&med(), &clean, &[]), None));
    let points = [
        "scan",
        "encode",
        "matrix-finish",
        "matrix-renamed",
        "ids",
        "offsets",
        "graph",
        "codes",
        "graph-saved",
        "manifest",
        "committed",
    ];
    for point in points {
        let dir = tmp.path().join(point);
        let args = build_args(&med(), &dir, &[]);
        let o = index_cmd(&args, Some(point));
        assert!(!o.status.success(), "{point}: the build did not stop");
        assert!(
            stderr(&o).contains(&format!("failpoint {point}")),
            "{point}: {}",
            stderr(&o)
        );
        if point != "committed" {
            assert!(
                Index::open(&dir).is_err(),
                "{point}: an index before the commit"
            );
        }
        // `info` on the folder follows the unfinished build: rows encoded of the whole.
        if point == "encode" || point == "graph" {
            let o = ok(index_cmd(&["info".to_string(), s(&dir)], None));
            let out = String::from_utf8_lossy(&o.stdout).to_string();
            assert!(
                out.contains("no index yet") && out.contains("unfinished build in"),
                "{point}: {out}"
            );
            assert!(out.contains(" of 1033 passages encoded"), "{point}: {out}");
            assert_eq!(
                out.contains("the vectors are all encoded"),
                point == "graph",
                "{point}: {out}"
            );
        }
        let o = ok(index_cmd(&args, None));
        if point == "committed" {
            assert!(stderr(&o).contains("already complete"), "{}", stderr(&o));
        }
        check_whole(&dir, &clean);
    }
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_failed_write_keeps_what_was_there() {
    // A full disk while the graph is written: an error naming the file, and the build resumes.
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    ok(index_cmd(&build_args(&med(), &clean, &[]), None));
    let dir = tmp.path().join("full");
    let args = build_args(&med(), &dir, &[]);
    let o = index_cmd(&args, Some("write graph.hnsw=error"));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("graph.hnsw") && e.contains("no space left"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
    ok(index_cmd(&args, None));
    check_whole(&dir, &clean);
    // The same for a graph rebuild on a finished index: the index stays as it was.
    let before = bytes(&dir.join("manifest.json"));
    let hnsw = vec!["hnsw".to_string(), s(&dir), "--hnsw-m".into(), "8".into()];
    let o = index_cmd(&hnsw, Some("write graph.hnsw=error"));
    assert!(!o.status.success());
    assert_eq!(bytes(&dir.join("manifest.json")), before);
    check_whole(&dir, &clean);
    for point in ["graph", "manifest"] {
        assert!(!index_cmd(&hnsw, Some(point)).status.success());
        assert_eq!(bytes(&dir.join("manifest.json")), before, "{point}");
        Index::open(&dir).unwrap();
    }
    ok(index_cmd(&hnsw, None));
    let m = Manifest::read(&dir).unwrap();
    assert_eq!(m.hnsw.unwrap().m, 8);
    check_whole(&dir, &clean);
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_forced_rebuild_replaces_the_index_only_when_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let coll = tmp.path().join("a.tsv");
    let other = tmp.path().join("b.tsv");
    std::fs::write(
        &coll,
        "1\tcancer cells grow\n2\tthe heart pumps blood\n3\tbones and joints\n",
    )
    .unwrap();
    std::fs::write(&other, "x1\tkidney stones\nx2\tlung function\n").unwrap();
    let dir = tmp.path().join("idx");
    ok(index_cmd(&build_args(&coll, &dir, &["--no-hnsw"]), None));
    let old = Index::open(&dir).unwrap();
    assert_eq!(old.ids, ["1", "2", "3"]);
    // Stopped rebuilds leave the old index answering, whole.
    let args = build_args(&other, &dir, &["--no-hnsw", "--force"]);
    for point in ["encode", "ids", "manifest"] {
        assert!(!index_cmd(&args, Some(point)).status.success());
        let now = Index::open(&dir).unwrap();
        assert_eq!(now.ids, ["1", "2", "3"], "{point}");
        ok(index_cmd(&["verify".into(), s(&dir)], None));
    }
    // Without --force, neither the finished index nor the unfinished rebuild is touched.
    let o = index_cmd(&build_args(&other, &dir, &["--no-hnsw"]), None);
    assert!(
        !o.status.success() && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    ok(index_cmd(&args, None));
    let new = Index::open(&dir).unwrap();
    assert_eq!(new.ids, ["x1", "x2"]);
    // An index opened before the swap keeps answering from its own files.
    let q = old.vectors.rows_f32(0, 1).to_vec();
    let hits = old.search(&q, 3, SearchMode::Exact).unwrap();
    assert_eq!(old.ids[hits[0][0].row], "1");
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_second_writer_is_refused_with_the_holders_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("idx");
    ok(index_cmd(&build_args(&med(), &dir, &["--no-hnsw"]), None));
    let lock = engine::store::lock::WriteLock::acquire(&dir).unwrap();
    let pid = std::process::id().to_string();
    let commands: Vec<Vec<String>> = vec![
        build_args(&med(), &dir, &["--force"]),
        vec!["hnsw".into(), s(&dir)],
        vec![
            "merge".into(),
            s(&dir),
            "--out".into(),
            s(&dir),
            "--force".into(),
        ],
    ];
    for args in &commands {
        let t = std::time::Instant::now();
        let o = index_cmd(args, None);
        let e = stderr(&o);
        assert!(!o.status.success(), "{args:?}");
        assert!(
            e.contains(&format!("PID {pid}")) && e.contains(&s(&dir)),
            "{e}"
        );
        assert!(t.elapsed().as_secs() < 10, "it waited");
    }
    drop(lock);
    ok(index_cmd(&["hnsw".into(), s(&dir)], None));
    ok(index_cmd(&["verify".into(), s(&dir)], None));
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn damaged_and_edited_indexes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("idx");
    ok(index_cmd(&build_args(&med(), &dir, &[]), None));
    let verify = || index_cmd(&["verify".into(), s(&dir)], None);
    ok(verify());
    let manifest = dir.join("manifest.json");
    let good = std::fs::read_to_string(&manifest).unwrap();
    for (from, to) in [
        ("\"pooling\": \"cls\"", "\"pooling\": \"mean\""),
        ("\"dtype\": \"f32\"", "\"dtype\": \"f16\""),
        ("\"count\": 1033", "\"count\": 1032"),
    ] {
        assert!(good.contains(from), "{from}");
        std::fs::write(&manifest, good.replace(from, to)).unwrap();
        let o = verify();
        assert!(!o.status.success(), "{to}");
        assert!(
            stderr(&o).contains("checksum does not match"),
            "{}",
            stderr(&o)
        );
        let e = Index::open(&dir).err().unwrap().to_string();
        assert!(e.contains("manifest.json"), "{e}");
    }
    std::fs::write(&manifest, &good).unwrap();
    // A changed id: opening the index (so every search) refuses it, not only verify.
    let ids = files(&dir).join("docids.txt");
    let text = std::fs::read_to_string(&ids).unwrap();
    std::fs::write(&ids, text.replacen("\n", "9\n", 1)).unwrap();
    let e = Index::open(&dir).err().unwrap().to_string();
    assert!(e.contains("docids.txt") && e.contains("checksum"), "{e}");
    assert!(!verify().status.success());
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn out_folders_holding_other_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("thesis.tex"), "mine").unwrap();
    let o = index_cmd(&build_args(&med(), tmp.path(), &[]), None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not an index"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("thesis.tex")).unwrap(),
        "mine"
    );
}

/// The command with environment variables set (and no failpoint unless given).
fn index_cmd_with(args: &[String], env: &[(&str, &str)], failpoint: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_simlm-index"));
    c.args(args).envs(env.iter().copied());
    match failpoint {
        Some(f) => c.env("SIMLM_FAILPOINT", f),
        None => c.env_remove("SIMLM_FAILPOINT"),
    };
    c.output().unwrap()
}

/// The generation folder of the build in `dir` that has not committed.
fn unfinished(dir: &Path) -> PathBuf {
    let gens: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("build.progress.json").is_file())
        .collect();
    assert_eq!(gens.len(), 1, "{gens:?}");
    gens[0].clone()
}

/// Flips one bit of the byte at `at` (from the end when negative).
fn flip(path: &Path, at: i64) {
    let mut b = bytes(path);
    let i = if at < 0 {
        b.len() - (-at) as usize
    } else {
        at as usize
    };
    b[i] ^= 0x10;
    std::fs::write(path, b).unwrap();
}

/// A build stopped at a phase boundary, then what the stop left DAMAGED (a flipped byte, a link word
/// out of range), then run again: the damage is named, the part discarded, and the build ends with
/// the bytes of one that never stopped (one thread, so that the graph is the same too), without a
/// panic. Checkpoints are written every 10 insertions, so that a stop finds one.
#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_build_stopped_and_damaged_resumes_to_the_same_index() {
    let env = [
        ("RAYON_NUM_THREADS", "1"),
        ("SIMLM_GRAPH_CHUNK", "10"),
        ("SIMLM_GRAPH_CHECKPOINT_SECS", "0"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    ok(index_cmd_with(&build_args(&med(), &clean, &[]), &env, None));
    // (where it stops, what it damages there, what the run after says); rows are 128 bytes (tiny
    // BERT's 32 dimensions, f32) after a 128-byte header, in chunks of 256.
    type Damage = fn(&Path);
    let cases: [(&str, Damage, &str); 4] = [
        (
            "matrix-finish",
            |dir| {
                flip(
                    &unfinished(dir).join("vectors.npy.partial"),
                    128 + 600 * 128,
                )
            },
            "vectors.npy.partial: chunk 3 (rows 512..768) does not match the checksum",
        ),
        (
            "matrix-renamed",
            |dir| flip(&unfinished(dir).join("vectors.npy"), 128 + 1000 * 128 + 3),
            "vectors.npy: chunk 4 (rows 768..1024) does not match the checksum",
        ),
        (
            // The graph saved and recorded, the commit not made.
            "manifest",
            |dir| flip(&unfinished(dir).join("graph.hnsw"), -100),
            "graph.hnsw: does not match the checksum recorded when it was written",
        ),
        (
            "graph-checkpoint",
            |dir| {
                // The first link of node 0 on layer 0, out of range.
                let p = dir.join("graph.partial/layer0.bin");
                let mut b = bytes(&p);
                b[4..8].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
                std::fs::write(&p, b).unwrap();
            },
            "graph.partial is not used: its layer0.bin does not match the checksum",
        ),
    ];
    for (point, damage, want) in cases {
        let dir = tmp.path().join(point);
        let args = build_args(&med(), &dir, &[]);
        let o = index_cmd_with(&args, &env, Some(point));
        assert!(
            stderr(&o).contains(&format!("failpoint {point}")),
            "{point}: {}",
            stderr(&o)
        );
        damage(&dir);
        let o = index_cmd_with(&args, &env, None);
        let e = stderr(&o);
        assert!(
            o.status.success() && !e.contains("panicked"),
            "{point}: {e}"
        );
        assert!(e.contains(want), "{point}: {e}");
        check_whole(&dir, &clean);
        assert!(
            bytes(&files(&dir).join("graph.hnsw")) == bytes(&files(&clean).join("graph.hnsw")),
            "{point}: another graph"
        );
    }
}
