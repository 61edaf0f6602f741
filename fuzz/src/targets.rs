//! The fuzz targets: each takes one input's bytes, hands them to the readers of one kind of file the
//! way a user would (written to a file in a scratch folder, plain or gzip-compressed), and panics when
//! a property fails. The properties: a reader never panics, never allocates more than the input
//! could need (see `guard`), and refuses bad input with an error that starts with the file's path
//! (and, where it gives a line, a line the file has). Where a reader accepts an input, its result is
//! checked against a second way of reading the same bytes where one exists.
//!
//! Each target returns a short description of what the readers did (`ok ...` or the refusal with its
//! numbers and quoted parts blanked): the driver keeps inputs that show a new one as parents for
//! further mutation.

use std::path::{Path, PathBuf};

use engine::corpus::{self, CorpusReader, ReadOptions};
use engine::store::manifest::{self, Manifest};
use engine::store::{layout, npy};

/// A fuzz target.
pub struct Target {
    /// The name of its test and of its folders under `fuzz/corpus/` and `fuzz/artifacts/`.
    pub name: &'static str,
    /// Runs one input; panics when a property fails.
    pub run: fn(&Scratch, &[u8]) -> String,
    /// Keywords of the format, for the mutations.
    pub tokens: &'static [&'static [u8]],
}

/// The targets, one per kind of file a user hands over.
pub const TARGETS: &[Target] = &[
    Target {
        name: "npy",
        run: npy_file,
        tokens: NPY_TOKENS,
    },
    Target {
        name: "collection",
        run: collection,
        tokens: COLLECTION_TOKENS,
    },
    Target {
        name: "queries",
        run: queries,
        tokens: QUERY_TOKENS,
    },
    Target {
        name: "query_vectors",
        run: query_vectors,
        tokens: NPY_TOKENS,
    },
    Target {
        name: "qrels",
        run: qrels,
        tokens: RUN_TOKENS,
    },
    Target {
        name: "run",
        run: run_file,
        tokens: RUN_TOKENS,
    },
    Target {
        name: "manifest",
        run: manifest_folder,
        tokens: MANIFEST_TOKENS,
    },
    Target {
        name: "request_body",
        run: request_body,
        tokens: REQUEST_TOKENS,
    },
    Target {
        name: "graph",
        run: graph_file,
        tokens: GRAPH_TOKENS,
    },
];

/// The target called `name`.
pub fn find(name: &str) -> &'static Target {
    TARGETS
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no fuzz target `{name}`"))
}

/// Separates the files of one input where a target reads two (a collection and its titles, query
/// vectors and their ids). Without it the whole input is the first file.
pub const SEPARATOR: &[u8] = b"\n--8<--\n";

const NPY_TOKENS: &[&[u8]] = &[
    b"\x93NUMPY\x01\x00",
    b"\x93NUMPY\x02\x00",
    b"\x93NUMPY\x03\x00",
    b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }",
    b"'descr':",
    b"'<f4'",
    b"'<f2'",
    b"'<f8'",
    b"'>f4'",
    b"'|u1'",
    b"'fortran_order': True",
    b"'fortran_order': False",
    b"'shape':",
    b"(",
    b")",
    b"()",
    b"(0,)",
    b"(1, 0)",
    b"(0, 4)",
    b"(3, 4, 5)",
    b", ",
    SEPARATOR,
];

const COLLECTION_TOKENS: &[&[u8]] = &[
    b"\t",
    b"\n",
    b"{\"_id\": \"1\", \"title\": \"t\", \"text\": \"x\"}\n",
    b"\"_id\"",
    b"\"id\"",
    b"\"docid\"",
    b"\"doc_id\"",
    b"\"title\"",
    b"\"text\"",
    b"\"contents\"",
    b"\"body\"",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b"\"\"",
    b"\\u0000",
    b"\\ud800",
    b"\\n",
    b"\\t",
    b"\xc3\x83\xc2\xa9",
    b"\xc3\x8b\xc2\x88",
    SEPARATOR,
];

const QUERY_TOKENS: &[&[u8]] = &[
    b"\t",
    b"\n",
    b"{\"_id\": \"q1\", \"text\": \"what\"}\n",
    b"\"_id\"",
    b"\"id\"",
    b"\"qid\"",
    b"\"text\"",
    b"\"query\"",
    b"null",
    b"[]",
    b"\"\"",
    b"\\u0000",
    b"\\u00a0",
];

const RUN_TOKENS: &[&[u8]] = &[
    b" Q0 ",
    b" 0 ",
    b"\t",
    b" ",
    b"\n",
    b"query-id\tcorpus-id\tscore\n",
    b"1 Q0 d1 1 2.5 tag\n",
    b"1\td1\t1\n",
    b"1 0 d1 1\n",
    b"-",
    b".",
    b"e",
];

const MANIFEST_TOKENS: &[&[u8]] = &[
    b"\"format_version\": 2",
    b"\"format_version\": 1",
    b"\"checksum\": \"\"",
    b"\"data\": \"gen000001\"",
    b"\"data\": \"../gen000001\"",
    b"\"data\": \"gen\"",
    b"\"dtype\": \"f16\"",
    b"\"dtype\": \"f64\"",
    b"\"pooling\": \"mean\"",
    b"\"precision\": \"int8\"",
    b"\"shard\": null",
    b"\"hnsw\": {\"m\": 0, \"ef_construction\": 0}",
    b"\"files\": []",
    b"null",
    b"[",
    b"]",
    b"{",
    b"}",
    b"\"\"",
    b"-1",
    b"1e400",
];

/// The scratch folder a target writes its inputs to (on tmpfs where there is one: the readers open
/// files, and the manifest's round trip syncs one).
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> std::io::Result<Self> {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("simlm-fuzz-")
                .tempdir_in(shm)
                .or_else(|_| tempfile::tempdir())?
        } else {
            tempfile::tempdir()?
        };
        Ok(Scratch { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `bytes` to the file `name` and returns its path.
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).expect("the scratch folder is writable");
        p
    }

    /// Blanks the scratch folder's path and the variable parts of a message (numbers, and whatever
    /// lies between the first and the last of each kind of quote), so that messages that differ only
    /// there count as one behaviour.
    fn shape(&self, msg: &str) -> String {
        let mut msg = msg.replace(&*self.dir.path().to_string_lossy(), "");
        for q in ['`', '"', '\''] {
            if let (Some(a), Some(b)) = (msg.find(q), msg.rfind(q)) {
                if b > a {
                    msg.replace_range(a + q.len_utf8()..b, "_");
                }
            }
        }
        let mut out = String::new();
        let mut last_digit = false;
        for c in msg.chars() {
            if c.is_ascii_digit() {
                if !last_digit {
                    out.push('N');
                }
                last_digit = true;
                continue;
            }
            last_digit = false;
            out.push(c);
        }
        out.chars().take(160).collect()
    }
}

/// A stable hash of the input (FNV-1a), from which each target draws its choices of file name,
/// compression and options: the same bytes always take the same path.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(data).expect("compression in memory");
    z.finish().expect("compression in memory")
}

/// The first file of an input and the second one, where the separator is there.
fn split(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    match data.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        Some(i) => (&data[..i], Some(&data[i + SEPARATOR.len()..])),
        None => (data, None),
    }
}

/// A file of a target's input: its path, and its text where it was written uncompressed (so that
/// a line number in a refusal can be checked against it).
struct File<'a> {
    path: PathBuf,
    text: Option<&'a [u8]>,
}

/// Checks a refusal: its message starts with the path of one of the input's files (followed by
/// `: ` or `, line N: ` with N at most one past the file's lines) and says something after it.
/// Returns the message's shape.
fn refused(s: &Scratch, e: &dyn std::fmt::Display, files: &[&File]) -> String {
    let msg = e.to_string();
    let named = files
        .iter()
        .filter(|f| msg.starts_with(&*f.path.to_string_lossy()))
        .max_by_key(|f| f.path.as_os_str().len());
    let Some(f) = named else {
        panic!("a refusal that does not start with the path of the file: {msg:?}");
    };
    let rest = &msg[f.path.to_string_lossy().len()..];
    let what = if let Some(r) = rest.strip_prefix(", line ") {
        let digits: String = r.chars().take_while(char::is_ascii_digit).collect();
        let line: usize = digits
            .parse()
            .unwrap_or_else(|_| panic!("a refusal with a line that is not a number: {msg:?}"));
        if let Some(text) = f.text {
            let lines = text.iter().filter(|b| **b == b'\n').count() + 1;
            assert!(
                line >= 1 && line <= lines,
                "a refusal names line {line} of a file of {lines} lines: {msg:?}"
            );
        }
        r[digits.len()..]
            .strip_prefix(": ")
            .unwrap_or_else(|| panic!("a refusal without `: ` after its line: {msg:?}"))
    } else {
        rest.strip_prefix(": ")
            .unwrap_or_else(|| panic!("a refusal without `: ` after its path: {msg:?}"))
    };
    assert!(
        !what.trim().is_empty(),
        "a refusal that says nothing: {msg:?}"
    );
    format!("err {}", s.shape(&msg))
}

/// Writes the input's file as it is, or gzip-compressed when `gz`.
fn put<'a>(s: &Scratch, name: &str, bytes: &'a [u8], gz: bool) -> File<'a> {
    if gz {
        File {
            path: s.write(name, &gzip(bytes)),
            text: None,
        }
    } else {
        // A file that starts with the gzip magic is read decompressed: its lines are not the input's.
        let text = (!bytes.starts_with(&[0x1f, 0x8b])).then_some(bytes);
        File {
            path: s.write(name, bytes),
            text,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// .npy

/// An `.npy` file: the header parsed from bytes, from a stream, and the file opened as a matrix (the
/// way the searcher's query vectors and `simlm-index import` read one), its rows read when accepted.
fn npy_file(s: &Scratch, data: &[u8]) -> String {
    let f = File {
        path: s.path("v.npy"),
        text: None,
    };
    // The header parser over bytes: the entry point of any new header parser.
    let by_bytes = npy::parse_header(data, &f.path);
    let mut out = match &by_bytes {
        Ok(h) => format!("header {:?} ndim {}", h.dtype, h.ndim),
        Err(e) => refused(s, e, &[&f]),
    };
    let by_stream = npy::read_stream_header(&mut &data[..], &f.path);
    if let Err(e) = &by_stream {
        refused(s, e, &[&f]);
    }
    s.write("v.npy", data);
    match npy::NpyMatrix::open(&f.path) {
        Ok(m) => {
            let h = by_bytes.expect("a file that opens has a header that parses");
            assert_eq!(
                m.header, h,
                "the matrix's header differs from the parsed one"
            );
            let need = m.header.data_offset as u128
                + m.rows() as u128 * m.cols() as u128 * m.header.dtype.size() as u128;
            assert_eq!(
                need,
                data.len() as u128,
                "an opened matrix whose header does not account for the file's bytes"
            );
            let rows = m.rows_f32(0, m.rows());
            assert_eq!(rows.len() as u128, m.rows() as u128 * m.cols() as u128);
            out.push_str(" opened");
        }
        Err(e) => {
            out.push_str(" / ");
            out.push_str(&refused(s, &e, &[&f]));
        }
    }
    out
}

/// Words the graph file's header and tables hold: the magic, the two versions, counts and ids at
/// the edges of their ranges.
const GRAPH_TOKENS: &[&[u8]] = &[
    b"SIMLMHNS",
    b"\x01\x00\x00\x00",
    b"\x02\x00\x00\x00",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"\xfe\xff\xff\xff",
    b"\x00\x00\x80\x7f",
    b"\x00\x00\xc0\x7f",
    b"\x00\x00\x00\x00\x00\x00\x00\x00",
    b"\xff\xff\xff\xff\xff\xff\xff\xff",
];

/// A graph file (`graph.hnsw`), opened as a search opens it and, where it opens, searched against a
/// matrix of its own shape: every search returns `min(k, nodes)` distinct rows of the matrix with
/// finite scores in exact search's order, or a refusal naming the graph file.
fn graph_file(s: &Scratch, data: &[u8]) -> String {
    use engine::search::hnsw::Graph;
    let f = File {
        path: s.write("graph.hnsw", data),
        text: None,
    };
    let g = match Graph::open(&f.path, &s.path("")) {
        Ok(g) => g,
        Err(e) => return refused(s, &e, &[&f]),
    };
    let (n, dim) = (g.len(), g.dim());
    // The header accounts for every byte (n x dim codes among them), so the matrix is small.
    assert!(
        (n as u128) * (dim as u128) <= data.len() as u128,
        "a graph of {n} x {dim} opened from {} bytes",
        data.len()
    );
    let values: Vec<f32> = (0..n * dim)
        .map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0)
        .collect();
    let m_path = s.path("vectors.npy");
    npy::write_f32(&m_path, &values, n, dim).expect("the scratch folder is writable");
    let m = npy::NpyMatrix::open(&m_path).expect("a matrix this target wrote opens");
    let query: Vec<f32> = (0..dim)
        .map(|i| ((i * 13 % 7) as f32 - 3.0) / 3.0)
        .collect();
    let mut out = format!("opened {} x {}", n.min(2), dim.min(2));
    for (k, ef) in [(1, 1), (3, 8), (10, 64)] {
        match g.search(&m, &query, k, ef) {
            Ok(hits) => {
                assert_eq!(
                    hits.len(),
                    k.min(n),
                    "a search of k {k} returned {}",
                    hits.len()
                );
                let mut rows: Vec<usize> = hits.iter().map(|h| h.row).collect();
                assert!(rows.iter().all(|&r| r < n), "a row past the matrix");
                assert!(
                    hits.iter().all(|h| h.score.is_finite()),
                    "a score that is not finite"
                );
                // Exact search's order: score descending, ties to the lower row.
                assert!(
                    hits.windows(2).all(|w| w[0]
                        .score
                        .total_cmp(&w[1].score)
                        .then(w[1].row.cmp(&w[0].row))
                        .is_gt()),
                    "hits out of exact search's order"
                );
                rows.sort_unstable();
                rows.dedup();
                assert_eq!(rows.len(), hits.len(), "a row returned twice");
                out.push_str(" found");
            }
            Err(e) => {
                out.push_str(" / ");
                out.push_str(&refused(s, &e, &[&f]));
            }
        }
    }
    out
}

/// Pre-encoded queries: an `.npy` and, after the separator, their ids (the searcher's
/// `--query-vectors` and `--query-ids`), for an index of the file's own dimension.
fn query_vectors(s: &Scratch, data: &[u8]) -> String {
    let (vectors, ids) = split(data);
    let v = put(s, "qv.npy", vectors, false);
    let i = ids.map(|ids| put(s, "qv.ids", ids, fnv(data) & 3 == 0));
    let dim = npy::parse_header(vectors, &v.path).map_or(4, |h| h.cols);
    match corpus::read_query_vectors(&v.path, i.as_ref().map(|i| i.path.as_path()), dim) {
        Ok((qids, vecs)) => {
            assert!(dim > 0 && !qids.is_empty(), "query vectors without a value");
            assert_eq!(
                qids.len() * dim,
                vecs.len(),
                "ids and rows differ in number"
            );
            assert!(
                vecs.iter().all(|x| x.is_finite()),
                "a value that is not finite"
            );
            format!("ok ids {}", i.is_some())
        }
        Err(e) => {
            let mut files = vec![&v];
            files.extend(i.as_ref());
            refused(s, &e, &files)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Collections and queries

/// A collection: read as `c.tsv`, `c.jsonl` and `c` (whose format is detected), with a titles file
/// where the input has a second part, plain or gzip-compressed, with or without `--skip-bad` and
/// `--fix-encoding`. Every accepted record has a usable id, and reading it back by its offset (as the
/// searcher does) gives the same record. The same bytes are also read as texts to encode (JSONL).
fn collection(s: &Scratch, data: &[u8]) -> String {
    let h = fnv(data);
    let gz = h & 3 == 0;
    let (text, titles) = split(data);
    let t = titles.map(|t| put(s, "titles.tsv", t, h & 4 != 0));
    let opts = ReadOptions {
        titles: t.as_ref().map(|t| t.path.clone()),
        skip_bad: h & 8 != 0,
        fix_encoding: h & 16 != 0,
    };
    let mut out = String::new();
    for name in ["c.tsv", "c.jsonl", "c"] {
        let c = put(s, name, text, gz);
        let mut files = vec![&c];
        files.extend(t.as_ref());
        let mut reader = match CorpusReader::open(&c.path, opts.clone()) {
            Ok(r) => r,
            Err(e) => {
                out.push_str(&refused(s, &e, &files));
                continue;
            }
        };
        let mut n = 0usize;
        let mut last_line = 0;
        let mut failed = None;
        for rec in reader.by_ref() {
            match rec {
                Ok(rec) => {
                    if let Err(m) = corpus::check_id(&rec.id) {
                        panic!("a record with an unusable id was accepted: {m}");
                    }
                    assert!(rec.line > last_line, "record lines do not increase");
                    last_line = rec.line;
                    if let Some(text) = c.text {
                        let lines = text.iter().filter(|b| **b == b'\n').count() + 1;
                        assert!(rec.line <= lines, "record on line {} of {lines}", rec.line);
                    }
                    if n < 8 {
                        same_by_offset(&c.path, &rec, &opts);
                    }
                    n += 1;
                }
                Err(e) => {
                    failed = Some(refused(s, &e, &files));
                    break;
                }
            }
        }
        out.push_str(&format!(
            "{name}: {} records{} skipped {}; ",
            n.min(3),
            if n > 3 { "+" } else { "" },
            reader.skipped.min(1)
        ));
        if let Some(f) = failed {
            out.push_str(&f);
        }
    }
    let d = put(s, "docs.jsonl", text, gz);
    match corpus::read_docs_jsonl(&d.path) {
        Ok(docs) => out.push_str(&format!(" docs {}", docs.len().min(2))),
        Err(e) => out.push_str(&refused(s, &e, &[&d])),
    }
    out
}

/// A record read again by its offset is the record read in order (its title too, unless it came
/// from a titles file, which reading by offset does not look up).
fn same_by_offset(path: &Path, rec: &corpus::Record, opts: &ReadOptions) {
    let back = corpus::read_record_at(path, rec.offset, opts.fix_encoding).unwrap_or_else(|e| {
        panic!(
            "record `{}` (line {}) cannot be read again at its offset {}: {e}",
            rec.id, rec.line, rec.offset
        )
    });
    assert_eq!(
        (&back.id, &back.text),
        (&rec.id, &rec.text),
        "the record read again at offset {} differs",
        rec.offset
    );
    if opts.titles.is_none() {
        assert_eq!(back.title, rec.title, "the title read again differs");
    }
}

/// A queries file (`qid<TAB>text` or JSON lines), and the same bytes as an ids file.
fn queries(s: &Scratch, data: &[u8]) -> String {
    let gz = fnv(data) & 3 == 0;
    let q = put(s, "queries.tsv", data, gz);
    let mut out = match corpus::read_queries(&q.path) {
        Ok(qs) => {
            let mut seen = std::collections::HashSet::new();
            let mut last = 0;
            for x in &qs {
                if let Err(m) = corpus::check_id(&x.id) {
                    panic!("a query with an unusable id was accepted: {m}");
                }
                assert!(seen.insert(&x.id), "query id `{}` accepted twice", x.id);
                assert!(x.line > last, "query lines do not increase");
                last = x.line;
            }
            format!("ok {}", qs.len().min(3))
        }
        Err(e) => refused(s, &e, &[&q]),
    };
    let i = put(s, "ids.txt", data, gz);
    match corpus::read_ids(&i.path, "query") {
        Ok(ids) => {
            let mut seen = std::collections::HashSet::new();
            for id in &ids {
                if let Err(m) = corpus::check_id(id) {
                    panic!("an unusable id was accepted: {m}");
                }
                assert!(seen.insert(id), "id `{id}` accepted twice");
            }
            out.push_str(&format!(" / ids {}", ids.len().min(3)));
        }
        Err(e) => {
            out.push_str(" / ");
            out.push_str(&refused(s, &e, &[&i]));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Qrels and runs

/// A qrels file, read from disk (plain or gzip-compressed) and parsed from bytes: both agree.
fn qrels(s: &Scratch, data: &[u8]) -> String {
    let gz = fnv(data) & 3 == 0;
    let f = put(s, "qrels.txt", data, gz);
    let read = eval::Qrels::read(&f.path);
    let out = match &read {
        Ok(q) => {
            assert!(
                q.queries.values().any(|d| !d.is_empty()),
                "qrels accepted without a judgment"
            );
            format!("ok {}", q.queries.len().min(3))
        }
        Err(e) => refused(s, e, &[&f]),
    };
    if let Some(text) = f.text {
        let parsed = eval::Qrels::parse(text, &f.path);
        match (&read, &parsed) {
            (Ok(a), Ok(b)) => assert_eq!(a.queries, b.queries, "read and parse differ"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            _ => panic!("read and parse differ: one accepts, the other refuses"),
        }
    }
    out
}

/// A run file, read from disk (plain or gzip-compressed) and parsed from bytes: both agree, and an
/// accepted run lists usable document ids, each once per query.
fn run_file(s: &Scratch, data: &[u8]) -> String {
    let gz = fnv(data) & 3 == 0;
    let f = put(s, "run.txt", data, gz);
    let read = eval::Run::read(&f.path);
    let out = match &read {
        Ok(r) => {
            assert!(!r.queries.is_empty(), "a run accepted without a result");
            for q in r.queries.keys() {
                let ids = r.ranking(q).expect("a query of the run has a ranking");
                assert!(!ids.is_empty(), "query `{q}` without results");
                let mut seen = std::collections::HashSet::new();
                for d in ids {
                    assert!(
                        !d.is_empty() && !d.contains([' ', '\t', '\n']),
                        "document id {d:?}"
                    );
                    assert!(seen.insert(d), "document `{d}` listed twice for `{q}`");
                }
            }
            format!("ok {}", r.queries.len().min(3))
        }
        Err(e) => refused(s, e, &[&f]),
    };
    if let Some(text) = f.text {
        let parsed = eval::Run::parse(text.to_vec(), &f.path);
        match (&read, &parsed) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.queries.len(), b.queries.len(), "read and parse differ");
                for q in a.queries.keys() {
                    assert_eq!(a.ranking(q), b.ranking(q), "read and parse differ on `{q}`");
                }
            }
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            _ => panic!("read and parse differ: one accepts, the other refuses"),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The manifest

/// An index folder's `manifest.json`. Its checksum makes almost every change a refusal, so a second
/// check gets past it: where the bytes are a manifest's JSON, that manifest is written (with its
/// checksum) and read back, which must give it unchanged (or refuse a `data` that is not a
/// generation folder).
fn manifest_folder(s: &Scratch, data: &[u8]) -> String {
    let dir = s.path("index");
    std::fs::create_dir_all(&dir).expect("the scratch folder is writable");
    let f = File {
        path: dir.join(layout::MANIFEST),
        text: None,
    };
    std::fs::write(&f.path, data).expect("the scratch folder is writable");
    let mut out = match Manifest::read(&dir) {
        Ok(m) => format!("ok {}", m.count.min(1)),
        Err(e) => refused(s, &e, &[&f]),
    };
    if let Ok(mut m) = serde_json::from_slice::<Manifest>(data) {
        let dir2 = s.path("rewritten");
        std::fs::create_dir_all(&dir2).expect("the scratch folder is writable");
        let f2 = File {
            path: dir2.join(layout::MANIFEST),
            text: None,
        };
        m.write(&dir2).expect("a manifest is written");
        match Manifest::read(&dir2) {
            Ok(back) => {
                assert_eq!(back, m, "a manifest read back differs from the one written");
                out.push_str(" / rewritten ok");
            }
            Err(e) => {
                let shape = refused(s, &e, &[&f2]);
                let usable = m.format_version == manifest::FORMAT_VERSION
                    && layout::parse_generation(&m.data).is_some();
                assert!(
                    !usable,
                    "a manifest written by this build is refused when read back: {e}"
                );
                out.push_str(" / rewritten ");
                out.push_str(&shape);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------------
// The body of a `simlm-search serve` request

const REQUEST_TOKENS: &[&[u8]] = &[
    b"\"query\"",
    b"\"queries\"",
    b"\"vector\"",
    b"\"vectors\"",
    b"\"k\"",
    b"\"ef\"",
    b"\"exact\"",
    b"\"text\"",
    b"\"inputs\"",
    b"\"kind\"",
    b"\"passage\"",
    b"1e39",
    b"-0.0",
    b"4294967297",
    b"18446744073709551615",
    b"null",
    b"[[",
    b"]]",
];

/// The service's limits in the fuzz runs: small, so that mutated counts cross them.
fn serve_options() -> searcher::serve::ServeOptions {
    use std::time::Duration;
    searcher::serve::ServeOptions {
        addr: ([127, 0, 0, 1], 0).into(),
        max_body: 1 << 20,
        max_queries: 8,
        max_k: 50,
        max_hits: 100,
        max_answer: 1 << 20,
        max_inflight: 1 << 24,
        max_batch: 8,
        batch_wait: Duration::ZERO,
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        shutdown_timeout: Duration::from_secs(1),
        reload_interval: Duration::ZERO,
        addr_file: None,
    }
}

/// The dimension of the index the request bodies are checked against.
const REQUEST_DIM: usize = 4;

thread_local! {
    /// An index of 3 rows of dimension 4, with its graph and no model, imported once per thread.
    static SERVED: (tempfile::TempDir, engine::index::Searcher) = {
        use engine::index::{import, ImportOptions, Quiet, Searcher, SearcherOptions};
        let dir = tempfile::tempdir().expect("a scratch folder");
        let rows = [1.0f32, 0., 0., 0., 0., 1., 0., 0., 0.6, 0.8, 0., 0.];
        let mut matrix = npy::header(npy::Dtype::F32, 3, Some(REQUEST_DIM));
        npy::write_rows(&mut matrix, npy::Dtype::F32, &rows).expect("rows into memory");
        let vectors = dir.path().join("v.npy");
        std::fs::write(&vectors, matrix).expect("the matrix written");
        let out = dir.path().join("idx");
        let opts = ImportOptions {
            vectors,
            ids: None,
            collection: None,
            out: out.clone(),
            hnsw: Some(engine::search::hnsw::HnswParams::default()),
            force: false,
        };
        import(&opts, &Quiet).expect("the index imported");
        let searcher = Searcher::open(
            &out,
            &SearcherOptions {
                encoder: false,
                ..SearcherOptions::default()
            },
        )
        .expect("the index opened");
        (dir, searcher)
    };
}

/// A request body, as `/search` and as `/embed` (the index has no model, so texts are refused and
/// vectors are checked): an accepted request is within every limit it was given, a refused one is a
/// 4xx with a JSON error.
fn request_body(_: &Scratch, data: &[u8]) -> String {
    use searcher::serve::{parse_embed, parse_search, Queries};
    let opts = serve_options();
    SERVED.with(|(_, s)| {
        let search = match parse_search(data, &opts, s) {
            Ok(ask) => {
                let n = match &ask.queries {
                    Queries::Texts(t) => {
                        assert!(
                            t.iter().all(|q| !q.trim().is_empty()),
                            "an empty query accepted"
                        );
                        t.len()
                    }
                    Queries::Vectors(v) => {
                        assert!(
                            !v.is_empty() && v.len() % REQUEST_DIM == 0,
                            "{} values accepted for dimension {REQUEST_DIM}",
                            v.len()
                        );
                        assert!(
                            v.iter().all(|x| x.is_finite()),
                            "a non-finite value accepted"
                        );
                        v.len() / REQUEST_DIM
                    }
                };
                assert!(
                    (1..=opts.max_queries).contains(&n),
                    "{n} queries accepted (at most {})",
                    opts.max_queries
                );
                assert!(
                    (1..=opts.max_k).contains(&ask.k),
                    "k {} accepted (at most {})",
                    ask.k,
                    opts.max_k
                );
                assert!(n * ask.k <= opts.max_hits, "{n} x {} hits accepted", ask.k);
                format!("search ok {} {}", n.min(3), ask.several)
            }
            Err(r) => status_of("search", r),
        };
        let embed = match parse_embed(data, &opts, s) {
            Ok(_) => panic!("an embedding request accepted by an index without a model"),
            Err(r) => status_of("embed", r),
        };
        format!("{search}; {embed}")
    })
}

/// A refusal's status, which must be a client error.
fn status_of(route: &str, r: axum::response::Response) -> String {
    let status = r.status();
    assert!(
        status.is_client_error(),
        "{route}: a refusal with status {status}"
    );
    format!("{route} {}", status.as_u16())
}
