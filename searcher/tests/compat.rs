//! The embedding APIs clients already speak: text-embeddings-inference's `POST /` and its `/embed`
//! fields, and OpenAI's `POST /v1/embeddings` (floats and base64, usage, its error shape), against
//! the service's own `/embed`; then the official Python clients (huggingface_hub's InferenceClient and
//! the openai package) pointed at a running server.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use engine::index::{Searcher, SearcherOptions};
use engine::{Doc, Kind};
use serde_json::{json, Value};
use testkit::http::{request, Server};
use testkit::{medline, medline_queries, ok, python, s, stderr, tiny_bert};

fn build(dir: &Path) -> PathBuf {
    let out = dir.join("med");
    let index_bin = PathBuf::from(env!("CARGO_BIN_EXE_simlm-search")).with_file_name("simlm-index");
    ok(Command::new(index_bin)
        .args([
            "build",
            "--model",
            &s(&tiny_bert()),
            "--collection",
            &s(&medline()),
        ])
        .args(["--out", &s(&out), "--no-hnsw"])
        .output()
        .unwrap());
    out
}

fn serve(index: &Path) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_simlm-search"));
    cmd.args([
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--exact",
        "--index",
        &s(index),
    ]);
    Server::start(cmd)
}

fn post(addr: &str, path: &str, v: &Value) -> (u16, Value) {
    let (status, body) = request(addr, "POST", path, v.to_string().as_bytes());
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
    (status, v)
}

/// Vectors of a JSON list of lists, as f32.
fn floats(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn tei_and_openai_requests_get_the_embed_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    let index = build(tmp.path());
    let server = serve(&index);
    let addr = &server.addr;
    let qs = medline_queries();
    let texts: Vec<&str> = qs[..3].iter().map(|(_, t)| t.as_str()).collect();
    let (status, want) = post(addr, "/embed", &json!({ "inputs": texts }));
    assert_eq!(status, 200, "{want}");
    let want = floats(&want);

    // TEI: POST / is /embed; its fields are honoured or refused with a reason.
    let (status, got) = post(
        addr,
        "/",
        &json!({"inputs": texts, "normalize": true, "truncate": true, "truncation_direction": "Right"}),
    );
    assert_eq!(status, 200, "{got}");
    assert_eq!(floats(&got), want);
    let (status, one) = post(addr, "/", &json!({"inputs": texts[0], "truncate": false}));
    assert_eq!((status, floats(&one)), (200, vec![want[0].clone()]));
    let long = "retrieval ".repeat(2000);
    for (body, status, says) in [
        (
            json!({"inputs": "x", "normalize": false}),
            422,
            "normalised",
        ),
        (
            json!({"inputs": "x", "truncation_direction": "Left"}),
            422,
            "right",
        ),
        (
            json!({"inputs": "x", "prompt_name": "query"}),
            422,
            "prompt_name",
        ),
        (
            json!({"inputs": long, "truncate": false}),
            413,
            "\"truncate\": true",
        ),
        (
            json!({"inputs": "x", "dimensions": 8}),
            400,
            "unknown field",
        ),
        (json!({"inputs": []}), 422, "no inputs"),
    ] {
        for path in ["/", "/embed"] {
            let (got, v) = post(addr, path, &body);
            assert_eq!(got, status, "{path} {body}: {v}");
            let msg = v["error"].as_str().unwrap();
            assert!(msg.contains(says), "{path} {body}: {msg}");
        }
    }
    let (status, _) = post(addr, "/", &json!({"inputs": long}));
    assert_eq!(status, 200, "without truncate: false a long input is cut");

    // OpenAI: floats, base64, passages, usage, the model echoed.
    let (status, v) = post(
        addr,
        "/v1/embeddings",
        &json!({"input": texts, "model": "any-name"}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["object"].as_str(), v["model"].as_str()),
        (Some("list"), Some("any-name"))
    );
    let data = v["data"].as_array().unwrap();
    for (i, d) in data.iter().enumerate() {
        assert_eq!(
            (d["object"].as_str(), d["index"].as_u64()),
            (Some("embedding"), Some(i as u64))
        );
    }
    let got: Vec<Value> = data.iter().map(|d| d["embedding"].clone()).collect();
    assert_eq!(floats(&Value::Array(got)), want);
    let s = Searcher::open(&index, &SearcherOptions::default()).unwrap();
    let docs: Vec<Doc> = texts.iter().map(|t| Doc::query(t)).collect();
    let tokens: usize = s
        .encoder()
        .unwrap()
        .token_counts(Kind::Query, &docs)
        .unwrap()
        .iter()
        .map(|c| c.0)
        .sum();
    assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(tokens as u64));
    assert_eq!(v["usage"]["total_tokens"].as_u64(), Some(tokens as u64));
    let (_, v) = post(
        addr,
        "/v1/embeddings",
        &json!({"input": texts, "encoding_format": "base64"}),
    );
    for (i, d) in v["data"].as_array().unwrap().iter().enumerate() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(d["embedding"].as_str().unwrap())
            .unwrap();
        let vec: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(vec, want[i], "base64 input {i}");
    }
    let (_, passages) = post(addr, "/embed", &json!({"inputs": texts, "kind": "passage"}));
    let (_, v) = post(
        addr,
        "/v1/embeddings",
        &json!({"input": texts, "input_type": "passage"}),
    );
    let got: Vec<Value> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["embedding"].clone())
        .collect();
    assert_eq!(floats(&Value::Array(got)), floats(&passages));
    assert_ne!(
        floats(&passages),
        want,
        "passages and queries differ in this format"
    );

    // OpenAI's error shape: 400 with message, type and param.
    for (body, param) in [
        (json!({"input": [101, 2054, 102]}), Some("input")),
        (json!({"input": [[101, 2054, 102]]}), Some("input")),
        (json!({"input": "x", "dimensions": 16}), Some("dimensions")),
        (
            json!({"input": "x", "encoding_format": "int8"}),
            Some("encoding_format"),
        ),
        (
            json!({"input": "x", "input_type": "code"}),
            Some("input_type"),
        ),
        (json!({"input": "x", "temperature": 1}), Some("temperature")),
        (json!({"input": []}), Some("input")),
        (json!({"model": "m"}), Some("input")),
    ] {
        let (status, v) = post(addr, "/v1/embeddings", &body);
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert_eq!(v["error"]["param"].as_str(), param, "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let (status, v) = post(addr, "/v1/embeddings", &json!({"input": vec!["q"; 300]}));
    assert_eq!(status, 400, "{v}");
    let (status, body) = request(addr, "POST", "/v1/embeddings", b"{not json");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, v["error"]["type"].as_str()),
        (400, Some("invalid_request_error"))
    );
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn the_official_python_clients_get_the_embed_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    let index = build(tmp.path());
    let server = serve(&index);
    let script = r#"
import json, sys
import numpy as np
from huggingface_hub import InferenceClient
from openai import OpenAI
base, texts = sys.argv[1], json.loads(sys.argv[2])
hf = InferenceClient(base_url=base)
tei = [np.asarray(hf.feature_extraction(t), dtype=np.float32).reshape(-1).tolist() for t in texts]
oa = OpenAI(base_url=base + "/v1", api_key="unused")
floats = oa.embeddings.create(input=texts, model="m", encoding_format="float")
default = oa.embeddings.create(input=texts, model="m")  # the client asks for base64 and decodes it
print(json.dumps({
    "tei": tei,
    "openai_float": [d.embedding for d in floats.data],
    "openai_default": [list(map(float, d.embedding)) for d in default.data],
    "tokens": floats.usage.prompt_tokens,
}))
"#;
    let qs = medline_queries();
    let texts: Vec<&str> = qs[..4].iter().map(|(_, t)| t.as_str()).collect();
    let base = format!("http://{}", server.addr);
    let out = Command::new(python())
        .args(["-c", script, &base, &json!(texts).to_string()])
        // The client posts to the URL given (HF_HUB_OFFLINE would refuse even that); nothing else.
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .output()
        .expect("the project's Python (scripts/setup-python.sh)");
    assert!(
        out.status.success(),
        "the clients failed (scripts/setup-python.sh installs huggingface_hub and openai into .venv): {}",
        stderr(&out)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (_, want) = post(&server.addr, "/embed", &json!({ "inputs": texts }));
    let want = floats(&want);
    for key in ["tei", "openai_float", "openai_default"] {
        assert_eq!(floats(&got[key]), want, "{key}");
    }
    assert!(got["tokens"].as_u64().unwrap() > texts.len() as u64);
}
