//! Input files as users hand them over: byte-order marks, broken ids, truncated gzip files, query
//! files.

use std::path::Path;

use engine::corpus::{read_docs_jsonl, read_queries, read_record_at, CorpusReader, ReadOptions};

use testkit::{gzip, write};

const BOM: &str = "\u{feff}";

fn read_all(path: &Path, opts: ReadOptions) -> engine::Result<Vec<engine::corpus::Record>> {
    CorpusReader::open(path, opts)?.collect()
}

fn first_error(path: &Path, opts: ReadOptions) -> String {
    CorpusReader::open(path, opts)
        .unwrap()
        .find_map(|r| r.err())
        .expect("an error")
        .to_string()
}

#[test]
fn a_byte_order_mark_is_not_part_of_the_first_id() {
    let d = tempfile::tempdir().unwrap();
    let tsv = format!("{BOM}421\tfirst passage\n422\tsecond\n");
    let titles = write(d.path(), "titles.tsv", format!("{BOM}421\tT1\n422\tT2\n"));
    let jsonl = format!("{BOM}{{\"_id\":\"421\",\"title\":\"T\",\"text\":\"first\"}}\n{{\"_id\":\"422\",\"text\":\"second\"}}\n");
    let cases = [
        write(d.path(), "c.tsv", &tsv),
        write(d.path(), "c.tsv.gz", gzip(tsv.as_bytes())),
        write(d.path(), "c.jsonl", &jsonl),
        write(d.path(), "c.jsonl.gz", gzip(jsonl.as_bytes())),
    ];
    for c in &cases {
        let recs = read_all(c, ReadOptions::default()).unwrap();
        let ids: Vec<&str> = recs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["421", "422"], "{}", c.display());
        // Offsets stay byte offsets of the file, so a stored offset finds its record again.
        for r in &recs {
            let back = read_record_at(c, r.offset, false).unwrap();
            assert_eq!(
                (back.id, back.text),
                (r.id.clone(), r.text.clone()),
                "{}",
                c.display()
            );
        }
        // An offset of 0 (the start of the file) skips the mark too.
        assert_eq!(read_record_at(c, 0, false).unwrap().id, "421");
    }
    let recs = read_all(
        &cases[0],
        ReadOptions {
            titles: Some(titles),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(recs[0].title.as_deref(), Some("T1"));

    let q = write(d.path(), "q.tsv", format!("{BOM}7\twhat is a bom\n"));
    assert_eq!(read_queries(&q).unwrap()[0].id, "7");
    let q = write(
        d.path(),
        "q.jsonl",
        format!("{BOM}{{\"_id\":\"7\",\"text\":\"x\"}}\n"),
    );
    assert_eq!(read_queries(&q).unwrap()[0].id, "7");
    let e = write(d.path(), "e.jsonl", format!("{BOM}{{\"text\":\"x\"}}\n"));
    assert_eq!(read_docs_jsonl(&e).unwrap()[0].text, "x");
}

#[test]
fn collection_ids_that_would_break_run_files_are_refused_or_skipped() {
    let d = tempfile::tempdir().unwrap();
    let tsv = write(
        d.path(),
        "c.tsv",
        "1\tok\n2 b\tspace in id\n3\tok\n4\0\tnul\n5\tok\n",
    );
    let e = first_error(&tsv, ReadOptions::default());
    assert!(
        e.contains("c.tsv, line 2") && e.contains("whitespace") && e.contains("--skip-bad"),
        "{e}"
    );
    let mut r = CorpusReader::open(
        &tsv,
        ReadOptions {
            skip_bad: true,
            ..Default::default()
        },
    )
    .unwrap();
    let ids: Vec<String> = r.by_ref().map(|x| x.unwrap().id).collect();
    assert_eq!(ids, ["1", "3", "5"]);
    assert_eq!(r.skipped, 2);

    let jsonl = write(
        d.path(),
        "c.jsonl",
        "{\"_id\":\"a\",\"text\":\"x\"}\n{\"_id\":\"b\\u0001\",\"text\":\"x\"}\n{\"_id\":\"c d\",\"text\":\"x\"}\n",
    );
    let e = first_error(&jsonl, ReadOptions::default());
    assert!(
        e.contains("c.jsonl, line 2") && e.contains("control character U+0001"),
        "{e}"
    );
    let mut r = CorpusReader::open(
        &jsonl,
        ReadOptions {
            skip_bad: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.by_ref().count(), 1);
    assert_eq!(r.skipped, 2);
}

/// A gzip file cut in the middle, as an interrupted download leaves it.
fn truncated_gzip(text: &str) -> Vec<u8> {
    let gz = gzip(text.as_bytes());
    gz[..gz.len() / 2].to_vec()
}

/// Lines of text that do not compress to nothing, so that half the gzip file is half the lines.
fn noisy_lines(n: usize, f: impl Fn(usize, u64) -> String) -> String {
    let mut v: u64 = 0x9e3779b97f4a7c15;
    (0..n)
        .map(|i| {
            v = v
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            f(i, v)
        })
        .collect()
}

#[test]
fn a_truncated_gzip_file_names_the_file_the_line_and_the_cause() {
    let d = tempfile::tempdir().unwrap();
    let text = noisy_lines(20_000, |i, v| {
        format!("{i}\tpassage {v:x} {:x}\n", v.rotate_left(17))
    });
    let c = write(d.path(), "collection.tsv.gz", truncated_gzip(&text));
    let mut read = 0;
    let mut err = None;
    for r in CorpusReader::open(&c, ReadOptions::default()).unwrap() {
        match r {
            Ok(_) => read += 1,
            Err(e) => {
                err = Some(e.to_string());
                break;
            }
        }
    }
    let e = err.expect("a truncated file must not read as complete");
    assert!(read > 0 && read < 20_000, "{read}");
    assert!(
        e.contains("collection.tsv.gz")
            && e.contains(&format!("line {}", read + 1))
            && e.contains("truncated"),
        "{e}"
    );

    let q = write(
        d.path(),
        "queries.tsv.gz",
        truncated_gzip(&noisy_lines(20_000, |i, v| {
            format!("q{i}\twhat is {v:x}\n")
        })),
    );
    let e = read_queries(&q).unwrap_err().to_string();
    assert!(
        e.contains("queries.tsv.gz, line ") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn queries_are_read_from_tsv_jsonl_and_gzip() {
    let d = tempfile::tempdir().unwrap();
    let tsv = "1\tfirst query\n\n 2 \tsecond\r\n";
    for p in [
        write(d.path(), "q.tsv", tsv),
        write(d.path(), "q.tsv.gz", gzip(tsv.as_bytes())),
    ] {
        let qs = read_queries(&p).unwrap();
        let got: Vec<(&str, &str, usize)> = qs
            .iter()
            .map(|q| (q.id.as_str(), q.text.as_str(), q.line))
            .collect();
        assert_eq!(got, [("1", "first query", 1), ("2", "second", 3)]);
    }
    let p = write(
        d.path(),
        "q.jsonl",
        "{\"_id\":\"a\",\"text\":\"x\"}\n{\"id\":5,\"query\":\"y\"}\n{\"qid\":\"c\",\"text\":\"z\",\"metadata\":{}}\n",
    );
    let ids: Vec<String> = read_queries(&p)
        .unwrap()
        .into_iter()
        .map(|q| q.id)
        .collect();
    assert_eq!(ids, ["a", "5", "c"]);
}

#[test]
fn bad_query_ids_are_refused_with_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let err = |name: &str, text: &str| {
        read_queries(&write(d.path(), name, text))
            .unwrap_err()
            .to_string()
    };
    let e = err("space.tsv", "1\tok\nq 2\twhat\n");
    assert!(
        e.contains("space.tsv, line 2") && e.contains("whitespace"),
        "{e}"
    );
    let e = err("space.jsonl", "{\"_id\":\"q 2\",\"text\":\"what\"}\n");
    assert!(
        e.contains("space.jsonl, line 1") && e.contains("whitespace"),
        "{e}"
    );
    let e = err("nul.tsv", "1\tok\n2\0\twhat\n");
    assert!(
        e.contains("nul.tsv, line 2") && e.contains("control character U+0000"),
        "{e}"
    );
    let e = err("empty.tsv", "\twhat\n");
    assert!(
        e.contains("empty.tsv, line 1") && e.contains("missing query id"),
        "{e}"
    );
    let e = err("empty.jsonl", "{\"_id\":\"\",\"text\":\"what\"}\n");
    assert!(
        e.contains("empty.jsonl, line 1") && e.contains("missing query id"),
        "{e}"
    );
    let e = err("dup.tsv", "1\ta\n2\tb\n\n1\tc\n");
    assert!(
        e.contains("dup.tsv, line 4") && e.contains("lines 1 and 4") && e.contains("`1`"),
        "{e}"
    );
    let e = err("none.tsv", "\n\n");
    assert!(e.contains("none.tsv") && e.contains("no queries"), "{e}");
    let e = err("notab.tsv", "just text\n");
    assert!(
        e.contains("notab.tsv, line 1") && e.contains("qid<TAB>text"),
        "{e}"
    );
}

#[test]
fn texts_to_embed_are_read_with_file_and_line_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "in.jsonl",
        "{\"text\":\"a\"}\n\n{\"title\":\"T\",\"text\":\"b\"}\n",
    );
    let docs = read_docs_jsonl(&p).unwrap();
    assert_eq!((docs.len(), docs[1].title.as_deref()), (2, Some("T")));
    let p = write(
        d.path(),
        "bad.jsonl",
        "{\"text\":\"a\"}\n{\"title\":\"T\"}\n",
    );
    let e = read_docs_jsonl(&p).unwrap_err().to_string();
    assert!(
        e.contains("bad.jsonl, line 2") && e.contains("expected {\"text\""),
        "{e}"
    );
}

/// Graph parameters beyond their bounds are refused by the engine itself, whichever command (or
/// library user) passes them: before an import writes anything, and before a graph build allocates
/// its link arrays (an `m` of 2^64-1 would overflow them, 2^32-1 ask for a terabyte).
#[test]
fn graph_parameters_beyond_their_bounds_are_refused_by_the_engine() {
    use engine::index::{import, ImportOptions, Quiet};
    use engine::search::hnsw::{self, HnswParams};
    use engine::store::npy::{self, NpyMatrix};

    let d = tempfile::tempdir().unwrap();
    let v = d.path().join("v.npy");
    let data: Vec<f32> = (0..40).map(|i| (i as f32 * 0.37).sin()).collect();
    npy::write_f32(&v, &data, 10, 4).unwrap();
    let fine = HnswParams::default();
    fine.validate().unwrap();
    HnswParams {
        m: HnswParams::MAX_M,
        ef_construction: HnswParams::MAX_EF_CONSTRUCTION,
    }
    .validate()
    .unwrap();
    let bad = [
        (
            usize::MAX,
            200,
            "--hnsw-m 18446744073709551615: must be at most 512",
        ),
        (
            u32::MAX as usize,
            200,
            "--hnsw-m 4294967295: must be at most 512",
        ),
        (100_000, 200, "--hnsw-m 100000: must be at most 512"),
        (0, 200, "--hnsw-m 0: must be at least 1"),
        (
            16,
            usize::MAX,
            "--ef-construction 18446744073709551615: must be at most 16384",
        ),
        (16, 0, "--ef-construction 0: must be at least 1"),
    ];
    let matrix = NpyMatrix::open(&v).unwrap();
    for (m, ef_construction, want) in bad {
        let params = HnswParams { m, ef_construction };
        let e = params.validate().unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
        let e = hnsw::build(&matrix, params, &|_| {})
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(want), "{e}");
        let out = d.path().join("idx");
        let opts = ImportOptions {
            vectors: v.clone(),
            ids: None,
            collection: None,
            out: out.clone(),
            hnsw: Some(params),
            force: false,
        };
        let e = import(&opts, &Quiet).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
        assert!(!out.exists(), "{want}: left {}", out.display());
    }
}
