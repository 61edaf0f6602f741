//! `simlm-search serve` over real HTTP on an ephemeral loopback port: answers equal the batch mode's
//! and `simlm-index embed`'s, concurrent clients get their own answers, bad requests get their
//! statuses, and SIGTERM drains and exits.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};
use testkit::{ok, s, shared};

fn tiny() -> PathBuf {
    shared().join("fixtures/tiny-bert")
}

fn build_index(dir: &Path) -> PathBuf {
    let out = dir.join("med");
    let index_bin = PathBuf::from(env!("CARGO_BIN_EXE_simlm-search")).with_file_name("simlm-index");
    ok(Command::new(&index_bin)
        .args([
            "build",
            "--model",
            &s(&tiny()),
            "--collection",
            &s(&shared().join("data/classic/med/docs.jsonl")),
            "--out",
            &s(&out),
        ])
        .output()
        .unwrap());
    out
}

/// A running server and its address; killed if the test ends early.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(index: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_simlm-search"))
        .args(["serve", "--index", &s(index), "--addr", "127.0.0.1:0"])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    Server { child, addr }
}

/// One HTTP/1.1 request; the status and the body.
fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut c = TcpStream::connect(addr).unwrap();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    c.write_all(body).unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
}

fn post(addr: &str, path: &str, v: &Value) -> (u16, Value) {
    let (status, body) = http(addr, "POST", path, v.to_string().as_bytes());
    (status, serde_json::from_slice(&body).unwrap())
}

fn queries() -> Vec<(String, String)> {
    testkit::medline_queries()
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn the_service_answers_like_the_batch_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let index = build_index(tmp.path());
    let server = start(&index, &["--max-queries", "16"]);
    let addr = server.addr.clone();

    // The batch mode's exact top 10 for every query, the reference.
    let qs = queries();
    let run = tmp.path().join("run.tsv");
    let qfile = shared().join("data/classic/med/queries.tsv");
    ok(Command::new(env!("CARGO_BIN_EXE_simlm-search"))
        .args(["batch", "--index", &s(&index), "--queries", &s(&qfile)])
        .args(["--exact", "--k", "10", "--run-format", "trec", "--out"])
        .arg(&run)
        .output()
        .unwrap());
    let text = std::fs::read_to_string(&run).unwrap();
    let want = |qid: &str| -> Vec<(String, f32)> {
        text.lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .filter(|f| f[0] == qid)
            .map(|f| (f[2].to_string(), f[4].parse().unwrap()))
            .collect()
    };
    // A query encoded in a batch with others may differ from the batch mode's in its last bits (the
    // GEMMs block differently), and the fixture's passages score within 1e-5 of each other: the
    // scores must agree rank by rank to 1e-4, and the ids wherever the scores are that far apart.
    let same = |got: &[(String, f32)], want: &[(String, f32)], what: &str| {
        assert_eq!(got.len(), want.len(), "{what}");
        let boundary = want.last().unwrap().1;
        for (g, w) in got.iter().zip(want) {
            assert!((g.1 - w.1).abs() < 1e-4, "{what}: {got:?} vs {want:?}");
        }
        let clear = |l: &[(String, f32)]| -> Vec<String> {
            let mut v: Vec<String> = l
                .iter()
                .filter(|h| h.1 > boundary + 1e-4)
                .map(|h| h.0.clone())
                .collect();
            v.sort();
            v
        };
        assert_eq!(clear(got), clear(want), "{what}");
    };
    let hits = |v: &Value| -> Vec<(String, f32)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["docid"].as_str().unwrap().to_string(),
                    h["score"].as_f64().unwrap() as f32,
                )
            })
            .collect()
    };

    // Concurrent clients, each its own queries, one or several a request.
    std::thread::scope(|sc| {
        for t in 0..8 {
            let (addr, qs, want, same, hits) = (&addr, &qs, &want, &same, &hits);
            sc.spawn(move || {
                for (i, (qid, q)) in qs.iter().enumerate().filter(|(i, _)| i % 8 == t) {
                    let (status, v) = post(
                        addr,
                        "/search",
                        &json!({"query": q, "k": 10, "exact": true, "text": i % 2 == 0}),
                    );
                    assert_eq!(status, 200, "{v}");
                    same(&hits(&v["hits"]), &want(qid), qid);
                    assert_eq!(v["hits"][0]["rank"], 1);
                    assert_eq!(i % 2 == 0, v["hits"][0].get("text").is_some());
                }
            });
        }
    });
    let (status, v) = post(
        &addr,
        "/search",
        &json!({"queries": [qs[0].1, qs[1].1], "k": 10, "exact": true}),
    );
    assert_eq!(status, 200, "{v}");
    for (j, (qid, _)) in qs[..2].iter().enumerate() {
        same(&hits(&v["hits"][j]), &want(qid), qid);
    }
    // The graph by default: the index's default mode.
    let (status, v) = post(&addr, "/search", &json!({"query": qs[0].1}));
    assert_eq!((status, v["mode"].as_str()), (200, Some("hnsw ef=128")));
    assert_eq!(v["hits"].as_array().unwrap().len(), 10);
    // `serve --exact` and `serve --ef N` set the default of a request that names neither.
    for (flags, mode) in [
        (&["--exact"][..], "exact"),
        (&["--ef", "64"][..], "hnsw ef=64"),
    ] {
        let other = start(&index, flags);
        let (status, v) = post(&other.addr, "/search", &json!({"query": qs[0].1}));
        assert_eq!((status, v["mode"].as_str()), (200, Some(mode)), "{flags:?}");
        let (status, info) = http(&other.addr, "GET", "/info", b"");
        let info: Value = serde_json::from_slice(&info).unwrap();
        assert_eq!((status, info["default_mode"].as_str()), (200, Some(mode)));
        if mode == "exact" {
            same(&hits(&v["hits"]), &want(&qs[0].0), &qs[0].0);
        }
    }

    // /embed equals simlm-index embed.
    let texts: Vec<&str> = qs[..3].iter().map(|(_, t)| t.as_str()).collect();
    let jsonl: String = texts
        .iter()
        .map(|t| format!("{}\n", json!({ "text": t })))
        .collect();
    let input = testkit::write(tmp.path(), "q.jsonl", jsonl);
    let npy = tmp.path().join("q.npy");
    let index_bin = PathBuf::from(env!("CARGO_BIN_EXE_simlm-search")).with_file_name("simlm-index");
    ok(Command::new(index_bin)
        .args(["embed", "--model", &s(&tiny()), "--kind", "query"])
        .args(["--input", &s(&input), "--out", &s(&npy)])
        .output()
        .unwrap());
    let m = engine::store::npy::NpyMatrix::open(&npy).unwrap();
    let want_vecs = m.rows_f32(0, m.rows()).into_owned();
    let (status, v) = post(&addr, "/embed", &json!({ "inputs": texts }));
    assert_eq!(status, 200, "{v}");
    let got: Vec<f32> = v
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    assert_eq!(got, want_vecs);
    let (_, one) = post(&addr, "/embed", &json!({ "inputs": texts[0] }));
    assert_eq!(one.as_array().unwrap().len(), 1);

    // Bad requests: their statuses, JSON errors, and the service still answers.
    let big = vec![b'a'; (1 << 20) + 10];
    let many: Vec<&str> = vec!["q"; 17];
    for (body, status) in [
        (b"{not json".to_vec(), 400),
        (br#"{"query": 5}"#.to_vec(), 400),
        (br#"{"qurey": "x"}"#.to_vec(), 400),
        (br#"{"query": "x", "queries": ["y"]}"#.to_vec(), 400),
        (big, 413),
        (json!({ "queries": many }).to_string().into_bytes(), 413),
        (br#"{"query": "x", "k": 0}"#.to_vec(), 422),
        (br#"{"query": "x", "k": 5000}"#.to_vec(), 422),
        (br#"{"query": "   "}"#.to_vec(), 422),
        (br#"{"vector": [1.0, 2.0]}"#.to_vec(), 422),
    ] {
        let (got, b) = http(&addr, "POST", "/search", &body);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(got, status, "{v}");
        assert_eq!(v["status"], status);
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    assert_eq!(http(&addr, "GET", "/nope", b"").0, 404);
    assert_eq!(http(&addr, "GET", "/health", b"").0, 200);
    let (_, page) = http(&addr, "GET", "/", b"");
    assert!(String::from_utf8_lossy(&page).contains("<form"));
    let (_, info) = http(&addr, "GET", "/info", b"");
    let info: Value = serde_json::from_slice(&info).unwrap();
    assert_eq!(info["count"], 1033);
    let (_, metrics) = http(&addr, "GET", "/metrics", b"");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("simlm_requests_total{route=\"/search\",status=\"422\"} 4"),
        "{metrics}"
    );
    assert!(metrics.contains("simlm_batch_size_count"));

    // SIGTERM: a request already sent is answered, then the server exits cleanly.
    let mut server = server;
    let body = json!({"query": qs[2].1, "k": 1000, "exact": true}).to_string();
    let mut c = TcpStream::connect(&addr).unwrap();
    write!(
        c,
        "POST /search HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let code = server.child.wait().unwrap();
    assert!(code.success(), "{code:?}");
}
