//! `simlm-search serve --shard ...`: a front over shard servers answers exactly what one server on the
//! unsplit index answers (ids, scores to the bit, order, rows), checks its shards at start, fails
//! over to a replica, and answers 503 (or, with `--allow-partial`, without them) when a shard is down.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use testkit::http::{request, Server};
use testkit::{medline, medline_queries, ok, s, shared, stderr, tiny_bert};

const SHARDS: usize = 3;

fn index_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_simlm-search")).with_file_name("simlm-index")
}

/// Builds `out` from Medline with `model`, as shard `shard` if given.
fn build(out: &Path, model: &Path, shard: Option<&str>) {
    let mut cmd = Command::new(index_bin());
    cmd.args([
        "build",
        "--model",
        &s(model),
        "--collection",
        &s(&medline()),
    ])
    .args(["--out", &s(out), "--chunk-rows", "128", "--no-hnsw"]);
    if let Some(sh) = shard {
        cmd.args(["--shard", sh]);
    }
    ok(cmd.output().unwrap());
}

fn serve(args: &[&str]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_simlm-search"));
    cmd.args(["serve", "--addr", "127.0.0.1:0"]).args(args);
    Server::start(cmd)
}

fn serve_index(index: &Path) -> Server {
    serve(&["--index", &s(index), "--exact"])
}

fn post(addr: &str, path: &str, v: &Value) -> (u16, Value) {
    let (status, body) = request(addr, "POST", path, v.to_string().as_bytes());
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
    (status, v)
}

fn get(addr: &str, path: &str) -> (u16, Value) {
    let (status, body) = request(addr, "GET", path, b"");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A hit as compared: id, score bits, rank, row.
fn hits(v: &Value) -> Vec<(String, u32, u64, u64)> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list of hits: {v}"))
        .iter()
        .map(|h| {
            (
                h["docid"].as_str().unwrap().to_string(),
                (h["score"].as_f64().unwrap() as f32).to_bits(),
                h["rank"].as_u64().unwrap(),
                h["row"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The scores of an answer as printed (the text after each `"score":`).
fn score_texts(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    text.split("\"score\":")
        .skip(1)
        .map(|r| r.split([',', '}']).next().unwrap().to_string())
        .collect()
}

/// Runs the front with `args` expecting it to refuse to start: its error message.
fn refused(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_simlm-search"))
        .args(["serve", "--addr", "127.0.0.1:0", "--shard-wait", "1"])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "started: {args:?}");
    stderr(&out)
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_front_over_shards_answers_as_the_unsplit_index() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    build(&whole, &tiny_bert(), None);
    let parts: Vec<PathBuf> = (0..SHARDS)
        .map(|i| {
            let p = tmp.path().join(format!("shard{i}"));
            build(&p, &tiny_bert(), Some(&format!("{i}/{SHARDS}")));
            p
        })
        .collect();
    let single = serve_index(&whole);
    let mut servers: Vec<Server> = parts.iter().map(|p| serve_index(p)).collect();
    // The shards in another order than their rows'; shard 1 with three replicas: one down from the
    // start (a port that was just free), and two servers of its folder, one of which is stopped
    // half-way through the queries.
    let mut second = serve_index(&parts[1]);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let shard_args = [
        format!("http://{}", servers[2].addr),
        format!("{dead}|{}|{}", servers[1].addr, second.addr),
        servers[0].addr.clone(),
    ];
    let mut args = vec!["--max-queries", "16"];
    for a in &shard_args {
        args.extend(["--shard", a.as_str()]);
    }
    let front = serve(&args);

    let (status, info) = get(&front.addr, "/info");
    assert_eq!(status, 200);
    let (_, whole_info) = get(&single.addr, "/info");
    assert_eq!(info["count"], 1033);
    for key in [
        "model_fingerprint",
        "dim",
        "pooling",
        "input_format",
        "precision",
    ] {
        assert_eq!(info[key], whole_info[key], "{key}");
    }
    assert_eq!(info["shards"].as_array().unwrap().len(), SHARDS);
    assert_eq!(info["shards"][0]["rows"][0], 0);
    // The replica that did not answer at start is left out until it does.
    let in_use: Vec<bool> = info["shards"][1]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["in_use"].as_bool().unwrap())
        .collect();
    assert_eq!(in_use, [false, true, true], "{info}");

    // Every Medline query, one a request (so that each service encodes it alone, as the other
    // does), exact search at k = 10 and k = 100: the same ids, score bits, ranks and rows.
    let qs = medline_queries();
    for (n, (qid, q)) in qs.iter().enumerate() {
        if n == qs.len() / 2 {
            second.kill();
        }
        for k in [10, 100] {
            let ask = json!({"query": q, "k": k, "exact": true, "text": false}).to_string();
            let (s1, raw1) = request(&single.addr, "POST", "/search", ask.as_bytes());
            let (s2, raw2) = request(&front.addr, "POST", "/search", ask.as_bytes());
            let want: Value = serde_json::from_slice(&raw1).unwrap();
            let got: Value = serde_json::from_slice(&raw2).unwrap();
            assert_eq!((s1, s2), (200, 200), "{want} {got}");
            // The scores as printed, too: a client reads the same numbers.
            assert_eq!(score_texts(&raw2), score_texts(&raw1), "query {qid}, k {k}");
            assert_eq!(
                hits(&got["hits"]),
                hits(&want["hits"]),
                "query {qid}, k {k}"
            );
            assert_eq!(got["mode"], "exact");
        }
    }
    // Several queries a request, with text; vectors as queries.
    let several: Vec<&str> = qs[..4].iter().map(|(_, q)| q.as_str()).collect();
    let ask = json!({"queries": several, "k": 20, "exact": true});
    let (_, want) = post(&single.addr, "/search", &ask);
    let (status, got) = post(&front.addr, "/search", &ask);
    assert_eq!(status, 200, "{got}");
    for j in 0..several.len() {
        assert_eq!(hits(&got["hits"][j]), hits(&want["hits"][j]));
        assert_eq!(got["hits"][j][0]["text"], want["hits"][j][0]["text"]);
        assert!(got["hits"][j][0]["text"].as_str().is_some());
    }
    let (_, emb) = post(&single.addr, "/embed", &json!({"inputs": several}));
    let (_, emb_front) = post(&front.addr, "/embed", &json!({"inputs": several}));
    assert_eq!(emb, emb_front, "/embed");
    // The clients' APIs through the front: TEI's POST / and OpenAI's /v1/embeddings.
    let (_, tei) = post(&front.addr, "/", &json!({ "inputs": several }));
    assert_eq!(tei, emb, "POST /");
    let ask = json!({"input": several, "model": "m"});
    let (s1, want) = post(&single.addr, "/v1/embeddings", &ask);
    let (s2, got) = post(&front.addr, "/v1/embeddings", &ask);
    assert_eq!((s1, s2), (200, 200), "{got}");
    assert_eq!(got, want, "/v1/embeddings");
    let (status, v) = post(&front.addr, "/v1/embeddings", &json!({"input": [1, 2]}));
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some("input")));
    let ask = json!({"vectors": emb, "k": 1000, "exact": true, "text": false});
    let (_, want) = post(&single.addr, "/search", &ask);
    let (status, got) = post(&front.addr, "/search", &ask);
    assert_eq!(status, 200, "{got}");
    for j in 0..several.len() {
        let g = hits(&got["hits"][j]);
        assert_eq!(g.len(), 1000);
        assert_eq!(g, hits(&want["hits"][j]));
    }

    // The request's own faults are answered as the single server answers them.
    for body in [
        json!({"query": "x", "k": 0}),
        json!({"vector": [1.0, 2.0]}),
        json!({"query": "  "}),
        json!({"query": "x", "ef": 16}),
    ] {
        let (s1, _) = post(&single.addr, "/search", &body);
        let (s2, v) = post(&front.addr, "/search", &body);
        assert_eq!(s1, s2, "{body}: {v}");
        assert!(v["error"].as_str().is_some(), "{v}");
    }
    let (status, v) = post(&front.addr, "/search", &json!({"queries": vec!["q"; 17]}));
    assert_eq!(status, 413, "{v}");

    // The replica stopped half-way was tried, failed and counted; each shard's latency is in
    // /metrics.
    let (_, m) = request(&front.addr, "GET", "/metrics", b"");
    let m = String::from_utf8(m).unwrap();
    for i in 0..SHARDS {
        assert!(
            m.contains(&format!("simlm_shard_request_seconds_count{{shard=\"{i}\"")),
            "{m}"
        );
    }
    assert!(
        m.contains(&format!(
            "simlm_shard_failures_total{{shard=\"1\",url=\"http://{}\"}}",
            second.addr
        )),
        "{m}"
    );
    let (status, h) = get(&front.addr, "/health");
    assert_eq!((status, h["status"].as_str()), (200, Some("ok")), "{h}");
    let up = |h: &Value| -> Vec<bool> {
        h["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["up"].as_bool().unwrap())
            .collect()
    };
    assert_eq!(up(&h), [true, false, true, false, true], "{h}");

    // A shard with no replica left: 503 naming it; with --allow-partial, the other shards' hits
    // and the missing rows named.
    let partial = serve(&[
        "--allow-partial",
        "--shard",
        &servers[0].addr,
        "--shard",
        &servers[1].addr,
        "--shard",
        &servers[2].addr,
    ]);
    let rows2 = (
        info["shards"][2]["rows"][0].as_u64().unwrap(),
        info["shards"][2]["rows"][1].as_u64().unwrap(),
    );
    servers[2].kill();
    let ask = json!({"query": qs[0].1, "k": 50, "exact": true, "text": false});
    let (status, v) = post(&front.addr, "/search", &ask);
    assert_eq!(status, 503, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("shard 2") && msg.contains("--allow-partial"),
        "{msg}"
    );
    let (status, v) = post(&partial.addr, "/search", &ask);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["missing"][0]["shard"], 2, "{v}");
    assert_eq!(v["missing"][0]["rows"], json!([rows2.0, rows2.1]));
    // The rest is the unsplit index's ranking without shard 2's rows.
    let (_, all) = post(
        &single.addr,
        "/search",
        &json!({"query": qs[0].1, "k": 1000, "exact": true, "text": false}),
    );
    let want: Vec<(String, u32, u64)> = hits(&all["hits"])
        .into_iter()
        .filter(|h| !(rows2.0..rows2.1).contains(&h.3))
        .take(50)
        .map(|h| (h.0, h.1, h.3))
        .collect();
    let got: Vec<(String, u32, u64)> = hits(&v["hits"])
        .into_iter()
        .map(|h| (h.0, h.1, h.3))
        .collect();
    assert_eq!(got, want);
    let (status, h) = get(&front.addr, "/health");
    assert_eq!((status, &h["shards_down"]), (503, &json!([2])), "{h}");
    let (status, h) = get(&partial.addr, "/health");
    assert_eq!(
        (status, h["status"].as_str()),
        (200, Some("partial")),
        "{h}"
    );
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn shards_that_disagree_or_do_not_cover_the_collection_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let parts: Vec<PathBuf> = (0..2)
        .map(|i| {
            let p = tmp.path().join(format!("shard{i}"));
            build(&p, &tiny_bert(), Some(&format!("{i}/2")));
            p
        })
        .collect();
    let other = tmp.path().join("other-model");
    build(
        &other,
        &shared().join("fixtures/tiny-bert-bin"),
        Some("1/2"),
    );
    let whole = tmp.path().join("whole");
    build(&whole, &tiny_bert(), None);
    let a = serve_index(&parts[0]);
    let b = serve_index(&parts[1]);
    let c = serve_index(&other);
    let w = serve_index(&whole);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![a.addr.clone()], "held by no shard"),
        (vec![b.addr.clone()], "held by no shard"),
        (
            vec![a.addr.clone(), a.addr.clone(), b.addr.clone()],
            "overlap",
        ),
        (vec![w.addr.clone(), a.addr.clone()], "overlap"),
        (vec![a.addr.clone(), c.addr.clone()], "model"),
        (
            vec![format!("{}|{}", a.addr, b.addr)],
            "must hold the same rows",
        ),
        (vec!["ftp://x:1".into()], "expected http://HOST:PORT"),
    ];
    for (shards, want) in cases {
        let mut args: Vec<&str> = Vec::new();
        for sh in &shards {
            args.extend(["--shard", sh.as_str()]);
        }
        let msg = refused(&args);
        assert!(msg.contains(want), "{shards:?}: {msg}");
    }
    // A server that is not there: named, after --shard-wait.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let msg = refused(&["--shard", &a.addr, "--shard", &dead]);
    assert!(
        msg.contains(&format!("shard 1 (http://{dead})")) && msg.contains("--shard-wait"),
        "{msg}"
    );
    // The model given to the front must be the shards'.
    let msg = refused(&[
        "--model",
        &s(&shared().join("fixtures/tiny-bert-bin")),
        "--shard",
        &a.addr,
        "--shard",
        &b.addr,
    ]);
    assert!(msg.contains("fingerprint"), "{msg}");
}
