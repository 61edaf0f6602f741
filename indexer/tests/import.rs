//! `simlm-index import` and `simlm-search batch --query-vectors`, as a user meets them: vectors made
//! elsewhere (written here as numpy writes them), real binaries, temporary folders.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use engine::index::{Index, SearchMode};
use engine::store::npy;

use testkit::{ok, s, stderr, with_stdin, write};

fn index_cmd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simlm-index"))
        .args(args)
        .env_remove("SIMLM_FAILPOINT")
        .output()
        .unwrap()
}

/// `simlm-search`, built beside this crate's binary by the workspace build.
fn search_cmd(args: &[&str]) -> Output {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_simlm-index")).with_file_name("simlm-search");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace",
        bin.display()
    );
    Command::new(bin).args(args).output().unwrap()
}

fn fails(o: Output) -> String {
    assert!(!o.status.success(), "succeeded: {}", stderr(&o));
    let e = stderr(&o);
    assert!(!e.contains("panicked"), "{e}");
    e
}

/// `n` distinct pseudo-random vectors (a fixed xorshift sequence).
fn vectors(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n * dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// An `.npy` as numpy writes it (format 1.0, its own header padding), f32 or f16.
fn save_npy(path: &Path, data: &[f32], rows: usize, cols: usize, f16: bool) {
    let (descr, body): (&str, Vec<u8>) = if f16 {
        (
            "<f2",
            data.iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect(),
        )
    } else {
        ("<f4", data.iter().flat_map(|x| x.to_le_bytes()).collect())
    };
    let mut bytes = npy_header(&format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}"
    ));
    bytes.extend(body);
    std::fs::write(path, bytes).unwrap();
}

/// An `.npy` header holding `dict`, padded as numpy pads it (data at a multiple of 64 bytes).
fn npy_header(dict: &str) -> Vec<u8> {
    let mut d = dict.to_string();
    while !(10 + d.len() + 1).is_multiple_of(64) {
        d.push(' ');
    }
    d.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((d.len() as u16).to_le_bytes());
    b.extend(d.as_bytes());
    b
}

/// The exact top `k` rows of `base` for query `q` (inner product), the reference.
fn brute_force(base: &[f32], dim: usize, q: &[f32], k: usize) -> Vec<usize> {
    let mut scored: Vec<(f32, usize)> = base
        .chunks(dim)
        .enumerate()
        .map(|(i, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>(), i))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.iter().take(k).map(|x| x.1).collect()
}

#[test]
fn imported_vectors_search_like_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let (n, dim, nq) = (2000, 48, 40);
    let base = vectors(n, dim, 1);
    let queries = vectors(nq, dim, 2);
    let v = tmp.path().join("v.npy");
    save_npy(&v, &base, n, dim, false);
    let q = tmp.path().join("q.npy");
    save_npy(&q, &queries, nq, dim, false);
    let ids: String = (0..n).map(|i| format!("doc-{i}\n")).collect();
    let ids_file = write(tmp.path(), "ids.txt", &ids);
    let qids: String = (0..nq).map(|i| format!("q{i}\n")).collect();
    let qids_file = write(tmp.path(), "qids.txt", &qids);
    let dir = tmp.path().join("idx");
    ok(index_cmd(&[
        "import",
        "--vectors",
        &s(&v),
        "--ids",
        &s(&ids_file),
        "--out",
        &s(&dir),
        "--m",
        "16",
        "--threads",
        "2",
    ]));
    ok(index_cmd(&["verify", &s(&dir)]));

    // The matrix is the file's rows, bit for bit; the ids are the file's.
    let index = Index::open(&dir).unwrap();
    assert!(index.manifest.model.is_none());
    assert_eq!(&index.vectors.rows_f32(0, n)[..], &base[..]);
    assert_eq!(index.ids[7], "doc-7");

    // Exact search through the CLI equals brute force; the graph's recall@10 is high.
    let run = tmp.path().join("exact.tsv");
    ok(search_cmd(&[
        "batch",
        "--index",
        &s(&dir),
        "--query-vectors",
        &s(&q),
        "--query-ids",
        &s(&qids_file),
        "--exact",
        "--k",
        "10",
        "--out",
        &s(&run),
        "--run-format",
        "msmarco",
    ]));
    let text = std::fs::read_to_string(&run).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), nq * 10);
    for (qi, qv) in queries.chunks(dim).enumerate() {
        let want: Vec<String> = brute_force(&base, dim, qv, 10)
            .iter()
            .map(|r| format!("doc-{r}"))
            .collect();
        let got: Vec<String> = lines[qi * 10..qi * 10 + 10]
            .iter()
            .map(|l| {
                assert_eq!(l[0], format!("q{qi}"));
                l[1].to_string()
            })
            .collect();
        assert_eq!(got, want, "query {qi}");
    }
    let hits = index
        .search(&queries, 10, SearchMode::Hnsw { ef: 128 })
        .unwrap();
    let found: usize = hits
        .iter()
        .zip(queries.chunks(dim))
        .map(|(h, qv)| {
            let want = brute_force(&base, dim, qv, 10);
            h.iter().filter(|x| want.contains(&x.row)).count()
        })
        .sum();
    let recall = found as f64 / (nq * 10) as f64;
    assert!(recall >= 0.95, "recall@10 {recall}");

    // Without --query-ids the query ids are the row numbers; the graph is the default mode.
    let out = ok(search_cmd(&[
        "batch",
        "--index",
        &s(&dir),
        "--query-vectors",
        &s(&q),
        "--k",
        "3",
        "--out",
        "-",
    ]));
    let first = String::from_utf8(out.stdout).unwrap();
    assert!(first.starts_with("0 Q0 doc-"), "{first}");
    assert_eq!(first.lines().count(), nq * 3);

    // Text queries need a model: refused, saying what the index answers.
    for args in [
        vec!["query", "--index", &s(&dir), "hello"],
        vec![
            "batch",
            "--index",
            &s(&dir),
            "--queries",
            &s(&qids_file),
            "--out",
            &s(&tmp.path().join("r")),
        ],
    ] {
        let e = fails(search_cmd(&args));
        assert!(e.contains("--query-vectors"), "{e}");
    }

    // Query vectors of another dimension, non-finite ones, and a wrong id count are refused.
    let q2 = tmp.path().join("q2.npy");
    save_npy(&q2, &vectors(3, dim + 1, 3), 3, dim + 1, false);
    let mut nan = queries.clone();
    nan[dim + 5] = f32::NAN;
    let q3 = tmp.path().join("q3.npy");
    save_npy(&q3, &nan, nq, dim, false);
    let short = write(tmp.path(), "short.txt", "a\nb\n");
    for (args, want) in [
        (
            vec!["--query-vectors", &s(&q2)][..].to_vec(),
            "dimension 49",
        ),
        (vec!["--query-vectors", &s(&q3)], "row 1 (0-based)"),
        (
            vec!["--query-vectors", &s(&q), "--query-ids", &s(&short)],
            "2 ids for the 40 rows",
        ),
    ] {
        let d = s(&dir);
        let mut a = vec!["batch", "--index", &d, "--out", "-"];
        a.extend(args);
        let e = fails(search_cmd(&a));
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn f16_vectors_and_row_number_ids_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let (n, dim) = (300, 16);
    let base = vectors(n, dim, 5);
    let v = tmp.path().join("v16.npy");
    save_npy(&v, &base, n, dim, true);
    let dir = tmp.path().join("idx");
    ok(index_cmd(&[
        "import",
        "--vectors",
        &s(&v),
        "--out",
        &s(&dir),
        "--no-hnsw",
    ]));
    ok(index_cmd(&["verify", &s(&dir)]));
    let index = Index::open(&dir).unwrap();
    assert_eq!(index.manifest.dtype, npy::Dtype::F16);
    assert!(index.manifest.hnsw.is_none());
    assert_eq!(index.ids[0], "0");
    assert_eq!(index.ids[n - 1], (n - 1).to_string());
    let want: Vec<f32> = base
        .iter()
        .map(|x| half::f16::from_f32(*x).to_f32())
        .collect();
    assert_eq!(&index.vectors.rows_f32(0, n)[..], &want[..]);
    // The graph can be added afterwards.
    ok(index_cmd(&["hnsw", &s(&dir), "--m", "8", "--threads", "1"]));
    ok(index_cmd(&["verify", &s(&dir)]));
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_collection_gives_ids_and_passage_text() {
    let tmp = tempfile::tempdir().unwrap();
    let med = testkit::medline();
    let n = 1033;
    let dim = 8;
    let base = vectors(n, dim, 9);
    let v = tmp.path().join("v.npy");
    save_npy(&v, &base, n, dim, false);
    let dir = tmp.path().join("idx");
    ok(index_cmd(&[
        "import",
        "--vectors",
        &s(&v),
        "--collection",
        &s(&med),
        "--out",
        &s(&dir),
        "--no-hnsw",
    ]));
    let index = Index::open(&dir).unwrap();
    let first_line = std::fs::read_to_string(&med).unwrap();
    let first: serde_json::Value =
        serde_json::from_str(first_line.lines().next().unwrap()).unwrap();
    let first_id = first
        .get("_id")
        .or_else(|| first.get("id"))
        .and_then(|x| x.as_str())
        .unwrap();
    assert_eq!(index.ids[0], first_id);
    let p = index.passage(0).unwrap();
    assert_eq!(p.id, first_id);
    assert!(!p.text.is_empty());

    // Ids that disagree with the collection's order are refused, naming the line.
    let mut ids: Vec<String> = index.ids.clone();
    ids.swap(3, 4);
    let ids_file = write(tmp.path(), "ids.txt", ids.join("\n") + "\n");
    let e = fails(index_cmd(&[
        "import",
        "--vectors",
        &s(&v),
        "--collection",
        &s(&med),
        "--ids",
        &s(&ids_file),
        "--out",
        &s(&tmp.path().join("other")),
    ]));
    assert!(
        e.contains("ids.txt, line 4") && e.contains("same order"),
        "{e}"
    );
    assert!(!tmp.path().join("other").exists());
}

#[test]
fn bad_npy_files_are_refused_and_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let (n, dim) = (50, 8);
    let base = vectors(n, dim, 7);
    let good = tmp.path().join("good.npy");
    save_npy(&good, &base, n, dim, false);
    let dir = tmp.path().join("idx");
    ok(index_cmd(&[
        "import",
        "--vectors",
        &s(&good),
        "--out",
        &s(&dir),
        "--no-hnsw",
    ]));
    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();

    let header = npy_header;
    let body: Vec<u8> = base.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut nan = base.clone();
    nan[3 * dim + 2] = f32::INFINITY;
    let nan_body: Vec<u8> = nan.iter().flat_map(|x| x.to_le_bytes()).collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "f64.npy",
            [
                header("{'descr': '<f8', 'fortran_order': False, 'shape': (25, 8), }"),
                body.clone(),
            ]
            .concat(),
            "astype(np.float32)",
        ),
        (
            "fortran.npy",
            [
                header("{'descr': '<f4', 'fortran_order': True, 'shape': (50, 8), }"),
                body.clone(),
            ]
            .concat(),
            "ascontiguousarray",
        ),
        (
            "flat.npy",
            [
                header("{'descr': '<f4', 'fortran_order': False, 'shape': (400,), }"),
                body.clone(),
            ]
            .concat(),
            "2-D array",
        ),
        (
            "cube.npy",
            [
                header("{'descr': '<f4', 'fortran_order': False, 'shape': (5, 10, 8), }"),
                body.clone(),
            ]
            .concat(),
            "2-D array",
        ),
        (
            "empty.npy",
            header("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 8), }"),
            "at least one",
        ),
        (
            "short.npy",
            [
                header("{'descr': '<f4', 'fortran_order': False, 'shape': (50, 8), }"),
                body[..body.len() - 4].to_vec(),
            ]
            .concat(),
            "truncated",
        ),
        (
            "inf.npy",
            [
                header("{'descr': '<f4', 'fortran_order': False, 'shape': (50, 8), }"),
                nan_body,
            ]
            .concat(),
            "row 3 (0-based)",
        ),
        ("text.npy", b"id,x\n1,2\n".to_vec(), "not a usable .npy"),
    ];
    for (name, bytes, want) in cases {
        let p = write(tmp.path(), name, bytes);
        // Into a new folder: an error, and no folder left behind.
        let fresh = tmp.path().join(format!("new-{name}"));
        let e = fails(index_cmd(&[
            "import",
            "--vectors",
            &s(&p),
            "--out",
            &s(&fresh),
        ]));
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
        assert!(!fresh.exists(), "{name}: left {}", fresh.display());
        // Over a finished index with --force: an error, and the index as it was.
        fails(index_cmd(&[
            "import",
            "--vectors",
            &s(&p),
            "--out",
            &s(&dir),
            "--force",
        ]));
        assert_eq!(std::fs::read(dir.join("manifest.json")).unwrap(), manifest);
        ok(index_cmd(&["verify", &s(&dir)]));
    }

    // Ids: a wrong count, a repeated id, an id with a space, each named with its line.
    for (content, want) in [
        ("a\nb\n", "2 ids for the 50 rows"),
        (
            &*(0..50)
                .map(|i| {
                    if i == 9 {
                        "x0\n".into()
                    } else {
                        format!("x{i}\n")
                    }
                })
                .collect::<String>(),
            "line 10",
        ),
        (
            &*(0..50)
                .map(|i| {
                    if i == 2 {
                        "a b\n".into()
                    } else {
                        format!("x{i}\n")
                    }
                })
                .collect::<String>(),
            "line 3",
        ),
    ] {
        let ids = write(tmp.path(), "ids.txt", content);
        let e = fails(index_cmd(&[
            "import",
            "--vectors",
            &s(&good),
            "--ids",
            &s(&ids),
            "--out",
            &s(&tmp.path().join("x")),
        ]));
        assert!(e.contains("ids.txt") && e.contains(want), "{e}");
    }
}

/// `simlm-index hnsw` with a checkpoint every chunk, killed right after its first checkpoint (the
/// failpoint aborts, as `kill -9` would): the index is as it was, and the next run resumes from the
/// checkpoint (and says so) to the very graph of a run that never stopped (one thread).
#[test]
fn a_killed_graph_build_resumes_from_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (n, dim) = (3_000, 16);
    let v = tmp.path().join("v.npy");
    save_npy(&v, &vectors(n, dim, 11), n, dim, false);
    let dir = tmp.path().join("idx");
    ok(index_cmd(&[
        "import",
        "--vectors",
        &s(&v),
        "--out",
        &s(&dir),
        "--no-hnsw",
    ]));
    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
    let hnsw = |failpoint: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_simlm-index"));
        c.args(["hnsw", &s(&dir), "--m", "8", "--threads", "1"])
            .env("SIMLM_GRAPH_CHUNK", "500")
            .env("SIMLM_GRAPH_CHECKPOINT_SECS", "0")
            .env_remove("SIMLM_FAILPOINT");
        if let Some(p) = failpoint {
            c.env("SIMLM_FAILPOINT", p);
        }
        c.output().unwrap()
    };
    let e = fails(hnsw(Some("graph-checkpoint")));
    assert!(e.contains("failpoint graph-checkpoint"), "{e}");
    assert_eq!(std::fs::read(dir.join("manifest.json")).unwrap(), manifest);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("graph.partial/state.json")).unwrap())
            .unwrap();
    let before = state["build_seconds"].as_f64().unwrap();
    assert!(before > 0.0, "{state}");
    ok(index_cmd(&["verify", &s(&dir)]));
    let o = hnsw(None);
    ok(o.clone());
    assert!(
        stderr(&o).contains(&format!(
            "resuming the graph after 1500 of 3000 nodes, {before:.1} s of building so far"
        )),
        "{}",
        stderr(&o)
    );
    assert!(
        !dir.join("graph.partial").exists(),
        "the commit removes the checkpoint"
    );
    let graph_of = |d: &Path| {
        let m = Index::open(d).unwrap().manifest;
        std::fs::read(d.join(&m.data).join("graph.hnsw")).unwrap()
    };
    let resumed = graph_of(&dir);
    // The same graph built in one go, in a second index of the same vectors.
    let dir2 = tmp.path().join("idx2");
    ok(index_cmd(&[
        "import",
        "--vectors",
        &s(&v),
        "--out",
        &s(&dir2),
        "--m",
        "8",
        "--threads",
        "1",
    ]));
    assert!(
        resumed == graph_of(&dir2),
        "a resumed build made another graph"
    );
}

/// `--vectors -`: the .npy arrives on standard input (a pipe, no seeking). The index equals the one
/// imported from the file; a stream that ends early or runs long is refused, and nothing is left.
#[test]
fn vectors_stream_in_through_standard_input() {
    let tmp = tempfile::tempdir().unwrap();
    let (n, dim) = (700, 12);
    let v = tmp.path().join("v.npy");
    save_npy(&v, &vectors(n, dim, 3), n, dim, false);
    let bytes = std::fs::read(&v).unwrap();
    let piped = |input: Vec<u8>, out: &Path| import_piped(input, &["--out", &s(out), "--no-hnsw"]);
    let a = tmp.path().join("from-stdin");
    ok(piped(bytes.clone(), &a));
    ok(index_cmd(&["verify", &s(&a)]));
    let b = tmp.path().join("from-file");
    ok(index_cmd(&[
        "import",
        "--vectors",
        &s(&v),
        "--out",
        &s(&b),
        "--no-hnsw",
    ]));
    let (ia, ib) = (Index::open(&a).unwrap(), Index::open(&b).unwrap());
    assert_eq!(
        &ia.vectors.rows_f32(0, n)[..],
        &ib.vectors.rows_f32(0, n)[..]
    );
    assert_eq!(ia.ids, ib.ids);

    let short = tmp.path().join("short");
    let e = fails(piped(bytes[..bytes.len() - 100].to_vec(), &short));
    assert!(
        e.contains("standard input") && e.contains("ended within rows"),
        "{e}"
    );
    assert!(!short.exists(), "a refused stream leaves no folder");
    let mut long = bytes.clone();
    long.extend_from_slice(&[0u8; 48]);
    let e = fails(piped(long, &short));
    assert!(e.contains("more data follows"), "{e}");
    assert!(!short.exists());
}

/// Runs `simlm-index import --vectors - ...` with `input` on standard input (the importer may stop
/// reading early, on an error).
fn import_piped(input: Vec<u8>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_simlm-index"));
    c.args(["import", "--vectors", "-"])
        .args(args)
        .env_remove("SIMLM_FAILPOINT");
    with_stdin(c, input)
}

/// The names in a folder and its generation folders, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() {
            for f in std::fs::read_dir(e.path()).unwrap() {
                names.push(format!(
                    "{name}/{}",
                    f.unwrap().file_name().to_string_lossy()
                ));
            }
        }
        names.push(name);
    }
    names.sort();
    names
}

/// Headers that lie about the size of their data: a shape whose bytes overflow, a file far shorter
/// than its shape, and on standard input a row of a terabyte or a count of rows that never come.
/// Each is refused with a message and exit code 1 (no panic, no abort), before anything is
/// allocated for it, and leaves no folder, generation or lock behind.
#[test]
fn headers_that_lie_about_their_size_are_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let dict =
        |shape: &str| format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    let small: Vec<u8> = vectors(4, 8, 1)
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let files = [
        // 2^62 x 4 x 4 bytes wraps to 0 in 64 bits: the header "needs" no data at all.
        (
            "wrap.npy",
            npy_header(&dict("(4611686018427387904, 4)")),
            "more bytes than any file holds",
        ),
        (
            "huge.npy",
            [npy_header(&dict("(1000000000000, 8)")), small.clone()].concat(),
            "truncated",
        ),
        (
            "wide.npy",
            [npy_header(&dict("(1, 1099511627776)")), small.clone()].concat(),
            "truncated",
        ),
    ];
    for (name, bytes, want) in files {
        let p = write(tmp.path(), name, bytes);
        let out = tmp.path().join(format!("out-{name}"));
        let o = index_cmd(&["import", "--vectors", &s(&p), "--out", &s(&out)]);
        assert_eq!(o.status.code(), Some(1), "{name}: {}", stderr(&o));
        let e = fails(o);
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
        assert!(!out.exists(), "{name}: left {}", out.display());
    }

    // Streamed: nothing to check the header against but the data as it comes.
    let existing = tmp.path().join("idx");
    let good = tmp.path().join("good.npy");
    save_npy(&good, &vectors(4, 8, 1), 4, 8, false);
    ok(index_cmd(&[
        "import",
        "--vectors",
        &s(&good),
        "--out",
        &s(&existing),
        "--no-hnsw",
    ]));
    let before = tree(&existing);
    let streams = [
        (dict("(1, 1099511627776)"), "more than the 65536"),
        (dict("(2, 65537)"), "more than the 65536"),
        (dict("(1000000000000000, 8)"), "ended within rows 0.."),
        (
            dict("(4611686018427387904, 4)"),
            "more bytes than any file holds",
        ),
    ];
    for (i, (d, want)) in streams.iter().enumerate() {
        let input = [npy_header(d), small.clone()].concat();
        let fresh = tmp.path().join(format!("stream{i}"));
        let o = import_piped(input.clone(), &["--out", &s(&fresh)]);
        assert_eq!(o.status.code(), Some(1), "{d}: {}", stderr(&o));
        let e = fails(o);
        assert!(e.contains("standard input") && e.contains(want), "{d}: {e}");
        assert!(!fresh.exists(), "{d}: left {}", fresh.display());
        // Over an index with --force: the folder exactly as it was.
        let e = fails(import_piped(input, &["--out", &s(&existing), "--force"]));
        assert!(e.contains(want), "{d}: {e}");
        assert_eq!(tree(&existing), before, "{d}");
    }
    ok(index_cmd(&["verify", &s(&existing)]));
}

/// Headers as numpy and other writers lay them out: keys in any order, any spacing, with or without
/// the trailing comma, double quotes, format 2.0; a `True` without a space before it is still
/// Fortran order, and refused.
#[test]
fn npy_headers_are_read_whatever_their_spacing() {
    let tmp = tempfile::tempdir().unwrap();
    let (n, dim) = (6, 4);
    let base = vectors(n, dim, 2);
    let body: Vec<u8> = base.iter().flat_map(|x| x.to_le_bytes()).collect();
    let v2 = |dict: &str| {
        let mut d = dict.to_string();
        while !(12 + d.len() + 1).is_multiple_of(64) {
            d.push(' ');
        }
        d.push('\n');
        let mut b = b"\x93NUMPY\x02\x00".to_vec();
        b.extend((d.len() as u32).to_le_bytes());
        b.extend(d.as_bytes());
        b
    };
    let good = [
        npy_header("{'shape': (6, 4), 'fortran_order': False, 'descr': '<f4'}"),
        npy_header("{'descr':'<f4','fortran_order':False,'shape':(6,4)}"),
        npy_header(
            "{ \"descr\" : \"<f4\" ,\n\t'fortran_order' : False , 'shape' : ( 6 , 4 , ) , }",
        ),
        npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (6L, 4L), }"),
        v2("{'descr': '<f4', 'fortran_order': False, 'shape': (6, 4), }"),
    ];
    for (i, h) in good.into_iter().enumerate() {
        let p = write(
            tmp.path(),
            &format!("good{i}.npy"),
            [h, body.clone()].concat(),
        );
        let out = tmp.path().join(format!("idx{i}"));
        ok(index_cmd(&[
            "import",
            "--vectors",
            &s(&p),
            "--out",
            &s(&out),
            "--no-hnsw",
        ]));
        let index = Index::open(&out).unwrap();
        assert_eq!(&index.vectors.rows_f32(0, n)[..], &base[..], "good{i}");
    }
    let bad = [
        (
            "{'descr':'<f4','fortran_order':True,'shape':(6,4)}",
            "ascontiguousarray",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (6, 4), 'extra': 1}",
            "'extra'",
        ),
        ("{'descr': '<f4', 'shape': (6, 4)}", "no 'fortran_order'"),
        (
            "{'descr': '>f4', 'fortran_order': False, 'shape': (6, 4)}",
            "astype(np.float32)",
        ),
        (
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (6, 4)}",
            "astype(np.float32)",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (6, -4)}",
            "not a string, a number",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': [6, 4]}",
            "not a tuple",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (24)}",
            "not a tuple",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': ()}",
            "2-D array",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (6, 4)",
            "expected '}'",
        ),
    ];
    for (i, (dict, want)) in bad.into_iter().enumerate() {
        let name = format!("bad{i}.npy");
        let p = write(tmp.path(), &name, [npy_header(dict), body.clone()].concat());
        let out = tmp.path().join(format!("out-bad{i}"));
        let e = fails(index_cmd(&[
            "import",
            "--vectors",
            &s(&p),
            "--out",
            &s(&out),
        ]));
        assert!(e.contains(&name) && e.contains(want), "{dict}: {e}");
        assert!(!out.exists());
    }
}

/// Nothing on standard input: the error says so and what to do, not "failed to fill whole buffer";
/// a stream that stops within its header says that.
#[test]
fn an_empty_standard_input_is_named_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("idx");
    let e = fails(import_piped(Vec::new(), &["--out", &s(&out)]));
    assert!(
        e.contains("standard input") && e.contains("no .npy data") && e.contains("np.save"),
        "{e}"
    );
    let e = fails(import_piped(
        b"\x93NUMPY\x01\x00\x76".to_vec(),
        &["--out", &s(&out)],
    ));
    assert!(e.contains("ended within the header, after 9 bytes"), "{e}");
    let e = fails(import_piped(b"id,x\n1,2\n".to_vec(), &["--out", &s(&out)]));
    assert!(e.contains("magic"), "{e}");
    assert!(!out.exists());
}

/// `--hnsw-m` and `--ef-construction` beyond their bounds are refused as the arguments are read,
/// before anything is read or allocated.
#[test]
fn graph_parameters_beyond_their_bounds_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let v = tmp.path().join("v.npy");
    save_npy(&v, &vectors(20, 4, 1), 20, 4, false);
    let out = tmp.path().join("idx");
    for (flag, value, want) in [
        ("--hnsw-m", "18446744073709551615", "at most 512"),
        ("--hnsw-m", "18446744073709551616", "at most 512"),
        ("--hnsw-m", "4294967295", "at most 512"),
        ("--hnsw-m", "100000", "at most 512"),
        ("--ef-construction", "4294967295", "at most 16384"),
        ("--hnsw-m", "0", "at least 1"),
    ] {
        let o = index_cmd(&[
            "import",
            "--vectors",
            &s(&v),
            "--out",
            &s(&out),
            flag,
            value,
        ]);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {}", stderr(&o));
        let e = fails(o);
        assert!(e.contains(flag) && e.contains(want), "{flag} {value}: {e}");
        assert!(!out.exists());
    }
    // The largest values are taken.
    ok(index_cmd(&[
        "import",
        "--vectors",
        &s(&v),
        "--out",
        &s(&out),
        "--hnsw-m",
        "512",
        "--ef-construction",
        "16384",
    ]));
    ok(index_cmd(&["verify", &s(&out)]));
}

/// A command killed within an atomic write leaves `NAME.tmpPID` beside the file; the next command
/// that writes the folder removes such files of the index (and only those).
#[test]
fn temporary_files_of_a_killed_write_are_removed_by_the_next_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let v = tmp.path().join("v.npy");
    save_npy(&v, &vectors(30, 4, 1), 30, 4, false);
    let dir = tmp.path().join("idx");
    ok(index_cmd(&[
        "import",
        "--vectors",
        &s(&v),
        "--out",
        &s(&dir),
        "--no-hnsw",
    ]));
    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
    // Killed after the new manifest's temporary file is written, before its rename.
    let o = Command::new(env!("CARGO_BIN_EXE_simlm-index"))
        .args([
            "import",
            "--vectors",
            &s(&v),
            "--out",
            &s(&dir),
            "--no-hnsw",
            "--force",
        ])
        .env("SIMLM_FAILPOINT", "write manifest.json")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert_eq!(std::fs::read(dir.join("manifest.json")).unwrap(), manifest);
    let temps =
        |d: &Path| -> Vec<String> { tree(d).into_iter().filter(|n| n.contains(".tmp")).collect() };
    assert_eq!(temps(&dir).len(), 1, "{:?}", tree(&dir));
    assert!(
        temps(&dir)[0].starts_with("manifest.json.tmp"),
        "{:?}",
        temps(&dir)
    );
    // One in the current generation too (a kill during an earlier write of its ids), and a file
    // that is not the index's, which stays.
    let data = Index::open(&dir).unwrap().manifest.data;
    std::fs::write(dir.join(&data).join("docids.txt.tmp4242"), "partial").unwrap();
    std::fs::write(dir.join("notes.txt.tmp7"), "mine").unwrap();
    ok(index_cmd(&[
        "import",
        "--vectors",
        &s(&v),
        "--out",
        &s(&dir),
        "--no-hnsw",
        "--force",
    ]));
    assert_eq!(
        temps(&dir),
        vec!["notes.txt.tmp7".to_string()],
        "{:?}",
        tree(&dir)
    );
    ok(index_cmd(&["verify", &s(&dir)]));
}

/// One damaged file is one file failing, however many of its checks it fails.
#[test]
fn verify_counts_each_failing_file_once() {
    let tmp = tempfile::tempdir().unwrap();
    let v = tmp.path().join("v.npy");
    save_npy(&v, &vectors(30, 4, 1), 30, 4, false);
    let dir = tmp.path().join("idx");
    ok(index_cmd(&[
        "import",
        "--vectors",
        &s(&v),
        "--out",
        &s(&dir),
        "--no-hnsw",
    ]));
    let data = dir.join(Index::open(&dir).unwrap().manifest.data);
    let vectors_file = data.join("vectors.npy");
    let bytes = std::fs::read(&vectors_file).unwrap();
    std::fs::write(&vectors_file, &bytes[..bytes.len() - 4]).unwrap();
    let e = fails(index_cmd(&["verify", &s(&dir)]));
    assert!(e.contains("1 file fails verification"), "{e}");
    let ids = data.join("docids.txt");
    let text = std::fs::read_to_string(&ids).unwrap();
    std::fs::write(&ids, &text[..text.len() - 3]).unwrap();
    let e = fails(index_cmd(&["verify", &s(&dir)]));
    assert!(e.contains("2 files fail verification"), "{e}");
}

/// A stage over at once prints its time and no rate (no "0.0 vectors/s").
#[test]
fn a_tiny_import_prints_no_meaningless_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let v = tmp.path().join("v.npy");
    save_npy(&v, &vectors(50, 8, 1), 50, 8, false);
    let o = ok(index_cmd(&[
        "import",
        "--vectors",
        &s(&v),
        "--out",
        &s(&tmp.path().join("idx")),
        "--m",
        "8",
    ]));
    let e = stderr(&o);
    let done: Vec<&str> = e.lines().filter(|l| l.contains(": done in")).collect();
    assert!(done.iter().any(|l| l.starts_with("graph: done in")), "{e}");
    for l in done {
        assert!(!l.contains(" 0.0 ") && !l.contains("(0"), "{l}");
    }
}

/// `--version` of both binaries names the kernels this CPU runs (what the benchmarks print beside
/// their figures); `-V` is the version alone.
#[test]
fn version_names_the_kernels() {
    let level = engine::kernels();
    for out in [index_cmd(&["--version"]), search_cmd(&["--version"])] {
        let text = String::from_utf8_lossy(&ok(out).stdout).into_owned();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("kernels: "))
            .unwrap_or_else(|| panic!("no kernels line in {text:?}"));
        assert_eq!(line, level);
        assert!(
            ["AVX-512 (", "AVX2 + FMA (", "portable ("]
                .iter()
                .any(|p| line.starts_with(p)),
            "{line}"
        );
    }
    let short = String::from_utf8_lossy(&ok(index_cmd(&["-V"])).stdout).into_owned();
    assert_eq!(
        short.trim(),
        format!("simlm-index {}", env!("CARGO_PKG_VERSION"))
    );
}
