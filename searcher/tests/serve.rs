//! `simlm-search serve` over real HTTP on an ephemeral loopback port: answers equal the batch mode's
//! and `simlm-index embed`'s, concurrent clients get their own answers, bad requests get their
//! statuses, and SIGTERM drains and exits.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use testkit::http::{request as http, Server};
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

fn start(index: &Path, extra: &[&str]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_simlm-search"));
    cmd.args(["serve", "--index", &s(index), "--addr", "127.0.0.1:0"])
        .args(extra);
    Server::start(cmd)
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

fn get(addr: &str, path: &str) -> Value {
    let (status, body) = http(addr, "GET", path, b"");
    assert_eq!(status, 200, "{path}");
    serde_json::from_slice(&body).unwrap()
}

/// The first `n` vectors of the index, as JSON arrays.
fn index_vectors(index: &Path, n: usize) -> Vec<Vec<f32>> {
    let m = engine::store::manifest::Manifest::read(index).unwrap();
    let v = engine::store::npy::NpyMatrix::open(&m.data_dir(index).join("vectors.npy")).unwrap();
    v.rows_f32(0, n)
        .chunks(v.cols())
        .map(<[f32]>::to_vec)
        .collect()
}

/// Posts every body at once (each on its own connection, released together); their statuses and
/// answers, in order.
fn all_at_once(addr: &str, bodies: &[String]) -> Vec<(u16, Value)> {
    let gate = std::sync::Barrier::new(bodies.len());
    std::thread::scope(|sc| {
        let hs: Vec<_> = bodies
            .iter()
            .map(|b| {
                let gate = &gate;
                sc.spawn(move || {
                    gate.wait();
                    let (status, body) = http(addr, "POST", "/search", b.as_bytes());
                    (status, serde_json::from_slice(&body).unwrap())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_bad_request_fails_alone_not_its_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let index = build_index(tmp.path());
    let vecs = index_vectors(&index, 8);
    let dim = vecs[0].len();
    // Requests that arrive within 300 ms of each other are searched as one batch.
    let server = start(&index, &["--batch-wait-ms", "300", "--exact"]);
    let mut bodies: Vec<String> = vecs
        .iter()
        .map(|v| json!({"vector": v, "k": 3}).to_string())
        .collect();
    // A value past f32's range (read as infinity), finite values whose scores overflow, zeros.
    let mut inf = format!("{:?}", vecs[0]);
    inf = inf.replacen(&format!("{:?}", vecs[0][0]), "1e39", 1);
    bodies.push(format!(r#"{{"vector": {inf}, "k": 3}}"#));
    bodies.push(json!({"vector": vec![3e38f32; dim], "k": 3}).to_string());
    bodies.push(json!({"vector": vec![0f32; dim], "k": 3}).to_string());
    let answers = all_at_once(&server.addr, &bodies);
    for (i, (status, v)) in answers[..8].iter().enumerate() {
        assert_eq!(*status, 200, "{v}");
        assert_eq!(v["hits"][0]["rank"], 1);
        assert_eq!(v["hits"].as_array().unwrap().len(), 3, "{i}: {v}");
    }
    for ((status, v), want) in
        answers[8..]
            .iter()
            .zip(["not a finite number", "has length", "all zeros"])
    {
        assert_eq!(*status, 422, "{v}");
        let e = v["error"].as_str().unwrap();
        assert!(e.contains("query 0") && e.contains(want), "{e}");
        assert!(!e.contains("verify"), "{e}");
    }

    // A failure inside the batch (a graph whose links are damaged) is the graph requests' only: the
    // exact searches batched with them are answered.
    let damaged = tmp.path().join("damaged");
    testkit::copy_tree(&index, &damaged);
    let m = engine::store::manifest::Manifest::read(&damaged).unwrap();
    let p = m.data_dir(&damaged).join("graph.hnsw");
    let mut g = std::fs::read(&p).unwrap();
    let m0 = u32::from_le_bytes(g[12..16].try_into().unwrap()) as usize;
    let layer0 = 64 + m.count.div_ceil(4) * 4;
    for row in 0..m.count {
        let at = layer0 + 4 * row * (m0 + 1);
        g[at + 4..at + 8].copy_from_slice(&0xfff0_0000u32.to_le_bytes());
    }
    std::fs::write(&p, &g).unwrap();
    let server = start(&damaged, &["--batch-wait-ms", "300", "--exact"]);
    let bodies: Vec<String> = vecs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if i < 2 {
                json!({"vector": v, "k": 3, "ef": 64}).to_string()
            } else {
                json!({"vector": v, "k": 3}).to_string()
            }
        })
        .collect();
    let answers = all_at_once(&server.addr, &bodies);
    for (i, (status, v)) in answers.iter().enumerate() {
        if i < 2 {
            assert_eq!(*status, 500, "{v}");
            assert!(v["error"].as_str().unwrap().contains("damaged"), "{v}");
        } else {
            assert_eq!(*status, 200, "{v}");
            assert_eq!(v["hits"][0]["rank"], 1);
        }
    }
    // They were one batch (its size is counted once, then each request alone).
    let (_, metrics) = http(&server.addr, "GET", "/metrics", b"");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("simlm_batch_size_bucket{le=\"4\"} 0"),
        "{metrics}"
    );
}

/// The server's resident memory in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn the_work_a_request_asks_and_the_memory_in_flight_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let index = build_index(tmp.path());
    let vecs = index_vectors(&index, 256);
    let server = start(&index, &[]);
    let addr = server.addr.clone();

    // 256 queries x k 1000: past --max-hits (100,000).
    let (status, v) = post(&addr, "/search", &json!({"vectors": vecs, "k": 1000}));
    assert_eq!(status, 413, "{}", v["error"]);
    assert!(v["error"].as_str().unwrap().contains("--max-hits"), "{v}");

    // Bursts of the largest requests allowed: memory is handed back after them.
    let before = rss_mib(server.child.id());
    let body = json!({"vectors": vecs[..100], "k": 1000, "exact": true, "text": false}).to_string();
    for _ in 0..2 {
        let answers = all_at_once(&addr, &vec![body.clone(); 8]);
        for (status, v) in &answers {
            assert_eq!(*status, 200, "{}", v["error"]);
            assert_eq!(v["hits"].as_array().unwrap().len(), 100);
        }
    }
    let mut after = rss_mib(server.child.id());
    for _ in 0..50 {
        if after <= before + 32 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        after = rss_mib(server.child.id());
    }
    assert!(
        after <= before + 32,
        "RSS {before} MiB before, {after} MiB after"
    );

    // An answer past --max-answer-mb with the passages' text: 413; without the text it fits.
    let small = start(&index, &["--max-answer-mb", "1", "--max-inflight-mb", "1"]);
    let ask = |text: bool| json!({"vector": vecs[0], "k": 1000, "exact": true, "text": text});
    let (status, v) = post(&small.addr, "/search", &ask(true));
    assert_eq!(status, 413, "{}", v["error"]);
    assert!(
        v["error"].as_str().unwrap().contains("--max-answer-mb"),
        "{v}"
    );
    let (status, v) = post(&small.addr, "/search", &ask(false));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["hits"].as_array().unwrap().len(), 1000);

    // A request whose body is still coming holds its bytes: another that does not fit beside it is
    // told to come back (503, Retry-After), and is answered once the first is gone.
    let mut slow = TcpStream::connect(&small.addr).unwrap();
    write!(
        slow,
        "POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 900000\r\n\r\n{{"
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let padded = format!(
        "{}{}",
        json!({"vector": vecs[0], "k": 3}),
        " ".repeat(300_000)
    );
    let mut c = TcpStream::connect(&small.addr).unwrap();
    write!(
        c,
        "POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{padded}",
        padded.len()
    )
    .unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 503"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("retry-after: 1"), "{raw}");
    drop(slow);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (status, body) = http(&small.addr, "POST", "/search", padded.as_bytes());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// Connects and sends `bytes`, leaving the connection open.
fn send_part(addr: &str, bytes: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(bytes.as_bytes()).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    c
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn slow_clients_are_timed_out_and_do_not_hold_shutdown() {
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let index = build_index(tmp.path());
    let server = start(&index, &["--header-timeout", "1", "--body-timeout", "1"]);
    let half_header = "POST /search HTTP/1.1\r\nHost: x\r\nContent-Le";
    let short_body =
        "POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"query\": \"cancer";
    // Half a header: the connection is closed after the header timeout, with no answer but an error.
    let t = Instant::now();
    let mut c = send_part(&server.addr, half_header);
    let mut raw = String::new();
    let _ = c.read_to_string(&mut raw);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(!raw.starts_with("HTTP/1.1 2"), "{raw}");
    // Less body than its Content-Length: 408 after the body timeout.
    let t = Instant::now();
    let mut c = send_part(&server.addr, short_body);
    let mut raw = String::new();
    let _ = c.read_to_string(&mut raw);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw}");
    // The service still answers.
    let (status, _) = post(&server.addr, "/search", &json!({"query": "cancer"}));
    assert_eq!(status, 200);

    // Clients that never finish do not hold SIGTERM's exit past --shutdown-timeout.
    let mut server = start(
        &index,
        &[
            "--header-timeout",
            "60",
            "--body-timeout",
            "60",
            "--shutdown-timeout",
            "1",
        ],
    );
    let held = [
        send_part(&server.addr, half_header),
        send_part(&server.addr, short_body),
    ];
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let code = loop {
        if let Some(code) = server.child.try_wait().unwrap() {
            break code;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "still running {:?} after SIGTERM",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "{code:?}");
    drop(held);
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_new_commit_of_the_index_is_served_without_a_restart() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let index = build_index(tmp.path());
    let vecs = index_vectors(&index, 4);
    let server = start(&index, &["--reload-interval", "0.2"]);
    let addr = server.addr.clone();
    let first = get(&addr, "/info");
    assert_eq!(first["count"], 1033);
    let gen1 = first["generation"].as_str().unwrap().to_string();
    assert_eq!(get(&addr, "/health")["generation"], gen1.as_str());

    // Searches through the graph and exactly, text and vectors, all the while.
    let stop = AtomicBool::new(false);
    let statuses = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for t in 0..2 {
            let (addr, stop, statuses, vecs) = (&addr, &stop, &statuses, &vecs);
            sc.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = match (t + i) % 3 {
                        0 => json!({"vector": vecs[i % 4], "k": 5}),
                        1 => json!({"query": "kidney disease", "k": 5}),
                        _ => json!({"query": "lung cancer", "k": 5, "exact": true}),
                    };
                    let (status, v) = post(addr, "/search", &body);
                    statuses.lock().unwrap().push((status, v["error"].clone()));
                    i += 1;
                }
            });
        }
        std::thread::sleep(Duration::from_millis(500));
        // A forced rebuild of other passages into the served folder: it commits and removes the
        // generation being served.
        let other = testkit::write(
            tmp.path(),
            "other.tsv",
            "x1\tkidney stones\nx2\tlung function\nx3\tbone density\n",
        );
        let index_bin =
            PathBuf::from(env!("CARGO_BIN_EXE_simlm-search")).with_file_name("simlm-index");
        ok(Command::new(&index_bin)
            .args(["build", "--model", &s(&tiny()), "--collection", &s(&other)])
            .args(["--out", &s(&index), "--force"])
            .output()
            .unwrap());
        assert!(!index.join(&gen1).exists());
        let t = Instant::now();
        let info = loop {
            let info = get(&addr, "/info");
            if info["generation"] != gen1.as_str() {
                break info;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "not reloaded: {info}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(info["count"], 3);
        assert_eq!(info["reloads"], 1);
        let m = engine::store::manifest::Manifest::read(&index).unwrap();
        assert_eq!(info["generation"], m.data.as_str());
        assert_eq!(info["manifest_checksum"], m.checksum.as_str());
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
    });
    let statuses = statuses.into_inner().unwrap();
    assert!(statuses.len() > 10, "{} searches", statuses.len());
    assert!(
        statuses.iter().all(|(s, _)| *s == 200),
        "{:?}",
        statuses
            .iter()
            .filter(|(s, _)| *s != 200)
            .collect::<Vec<_>>()
    );
    let (_, v) = post(&addr, "/search", &json!({"query": "kidney", "k": 5}));
    let ids: Vec<&str> = v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["docid"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{v}");
    assert!(ids.iter().all(|i| i.starts_with('x')), "{v}");

    // A commit that cannot be opened (its matrix cut short) leaves the served generation answering,
    // and says why in /health and /info; a good commit after it is served.
    let mut m = engine::store::manifest::Manifest::read(&index).unwrap();
    let good = m.data.clone();
    testkit::copy_tree(&index.join(&good), &index.join("gen000099"));
    let vp = index.join("gen000099/vectors.npy");
    let len = std::fs::metadata(&vp).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&vp)
        .unwrap()
        .set_len(len - 4)
        .unwrap();
    m.data = "gen000099".into();
    m.write(&index).unwrap();
    let t = Instant::now();
    let health = loop {
        let h = get(&addr, "/health");
        if !h["reload_error"].is_null() {
            break h;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no reload error: {h}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(health["generation"], good.as_str());
    assert!(
        health["reload_error"]
            .as_str()
            .unwrap()
            .contains("vectors.npy"),
        "{health}"
    );
    let (status, _) = post(&addr, "/search", &json!({"query": "kidney", "k": 2}));
    assert_eq!(status, 200);
    m.data = good.clone();
    m.write(&index).unwrap();
    let t = Instant::now();
    while !get(&addr, "/info")["reload_error"].is_null() {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, metrics) = http(&addr, "GET", "/metrics", b"");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("simlm_reload_failures_total 1"),
        "{metrics}"
    );
}
