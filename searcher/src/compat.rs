//! The embedding APIs that existing clients speak, on the single server and the front alike:
//!
//! - text-embeddings-inference's: `POST /` and `POST /embed` take `{"inputs": str | [str],
//!   "normalize", "truncate", "truncation_direction", "prompt_name"}` and answer `[[f32, ...], ...]`.
//!   `normalize: false`, `truncation_direction: "left"` and `prompt_name` are refused (422): the vectors
//!   are always L2-normalised and cut on the right. Without `truncate` (or with `true`) a long input is
//!   cut to the format's limit; `"truncate": false` makes a long input a 413, as TEI does.
//! - OpenAI's: `POST /v1/embeddings` takes `{"input": str | [str], "model", "encoding_format": "float" |
//!   "base64", "user"}` and answers `{"object": "list", "data": [{"object": "embedding", "index",
//!   "embedding"}], "model", "usage": {"prompt_tokens", "total_tokens"}}`; errors are OpenAI's shape
//!   (`{"error": {"message", "type", "param", "code"}}`). Inputs are encoded as queries unless
//!   `"input_type": "passage"` (or `"document"`) is given, the field NVIDIA's and others' OpenAI-shaped
//!   retrieval embedders take; token-id inputs and `dimensions` are refused with a 400.

// Parsers fail with the `Response` the handler returns as it is.
#![allow(clippy::result_large_err)]

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use engine::{Doc, Encoder, Kind};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::serve::error;

/// Texts to embed, checked.
#[derive(Debug)]
pub struct EmbedTexts {
    pub kind: Kind,
    pub texts: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Inputs {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TeiRequest {
    inputs: Inputs,
    /// `query` (default) or `passage`: this engine's own field.
    kind: Option<String>,
    normalize: Option<bool>,
    truncate: Option<bool>,
    truncation_direction: Option<String>,
    prompt_name: Option<String>,
}

fn kind_of(name: Option<&str>, field: &str) -> Result<Kind, String> {
    match name {
        None | Some("query") => Ok(Kind::Query),
        Some("passage") | Some("document") => Ok(Kind::Passage),
        Some(other) => Err(format!("{field} `{other}`: expected `query` or `passage`")),
    }
}

/// Parses and checks a TEI embedding request (`POST /`, `POST /embed`): the texts, or the error
/// response (400 malformed, 413 too many inputs or, with `"truncate": false`, one too long, 422 an
/// option this engine does not offer or no model).
pub fn parse_tei(
    body: &[u8],
    max_inputs: usize,
    enc: Result<&Encoder, String>,
) -> Result<EmbedTexts, Response> {
    let req: TeiRequest = serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("malformed request: {e}")))?;
    let enc = enc.map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let kind = kind_of(req.kind.as_deref(), "kind")
        .map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    if req.normalize == Some(false) {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "\"normalize\": false is not offered: this engine's vectors are always L2-normalised",
        ));
    }
    if let Some(d) = &req.truncation_direction {
        if !d.eq_ignore_ascii_case("right") {
            return Err(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "\"truncation_direction\": {d:?} is not offered: long inputs are cut on the right"
                ),
            ));
        }
    }
    if req.prompt_name.is_some() {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "\"prompt_name\" is not offered: the model's input format adds what it needs",
        ));
    }
    let texts = match req.inputs {
        Inputs::One(t) => vec![t],
        Inputs::Many(ts) => ts,
    };
    check_count(texts.len(), max_inputs)?;
    if req.truncate == Some(false) {
        let docs: Vec<Doc> = texts.iter().map(|t| Doc::new(None, t)).collect();
        let counts = enc
            .token_counts(kind, &docs)
            .map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
        if let Some(i) = counts.iter().position(|c| c.1) {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "input {i} is longer than the {} tokens the model takes; send \"truncate\": true \
                     to have it cut",
                    enc.max_tokens(kind)
                ),
            ));
        }
    }
    Ok(EmbedTexts { kind, texts })
}

fn check_count(n: usize, max_inputs: usize) -> Result<(), Response> {
    if n == 0 {
        return Err(error(StatusCode::UNPROCESSABLE_ENTITY, "no inputs given"));
    }
    if n > max_inputs {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{n} inputs in one request; at most {max_inputs} (--max-queries)"),
        ));
    }
    Ok(())
}

/// An OpenAI embeddings request, checked.
#[derive(Debug)]
pub struct OpenAiAsk {
    pub texts: EmbedTexts,
    /// The model named in the request (echoed in the answer).
    pub model: Option<String>,
    pub base64: bool,
    /// Tokens of every input once truncated (`usage.prompt_tokens`).
    pub tokens: usize,
}

/// An error in OpenAI's shape.
pub fn openai_error(status: StatusCode, msg: &str, param: Option<&str>) -> Response {
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    (
        status,
        axum::Json(json!({"error": {"message": msg, "type": kind, "param": param, "code": null}})),
    )
        .into_response()
}

/// Parses and checks `POST /v1/embeddings`: the request, or an OpenAI-shaped error (400).
pub fn parse_openai(
    body: &[u8],
    max_inputs: usize,
    enc: Result<&Encoder, String>,
) -> Result<OpenAiAsk, Response> {
    let bad = |msg: String, param: Option<&str>| openai_error(StatusCode::BAD_REQUEST, &msg, param);
    let req: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the request body is not a JSON object: {e}"), None))?;
    for key in req.keys() {
        match key.as_str() {
            "input" | "model" | "encoding_format" | "user" | "input_type" => {}
            "dimensions" => {
                return Err(bad(
                    "`dimensions` is not offered: the model's vectors have the dimension it was \
                     trained with"
                        .into(),
                    Some("dimensions"),
                ))
            }
            other => {
                return Err(bad(
                    format!("Unrecognized request argument supplied: {other}"),
                    Some(other),
                ))
            }
        }
    }
    let texts: Vec<String> = match req.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect(),
        Some(Value::Array(items)) if items.iter().all(|v| v.is_number() || v.is_array()) => {
            return Err(bad(
                "token-id inputs are not offered: send the texts (a string or a list of strings)"
                    .into(),
                Some("input"),
            ))
        }
        Some(_) => {
            return Err(bad(
                "`input` must be a string or a list of strings".into(),
                Some("input"),
            ))
        }
        None => return Err(bad("you must provide `input`".into(), Some("input"))),
    };
    if texts.is_empty() {
        return Err(bad("`input` is an empty list".into(), Some("input")));
    }
    if texts.len() > max_inputs {
        return Err(bad(
            format!(
                "{} inputs in one request; at most {max_inputs} (the server's --max-queries)",
                texts.len()
            ),
            Some("input"),
        ));
    }
    if let Some(i) = texts.iter().position(|t| t.is_empty()) {
        return Err(bad(format!("input {i} is empty"), Some("input")));
    }
    let base64 = match req.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(other) => {
            return Err(bad(
                format!("`encoding_format` {other}: expected \"float\" or \"base64\""),
                Some("encoding_format"),
            ))
        }
    };
    let model = match req.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => return Err(bad("`model` must be a string".into(), Some("model"))),
    };
    let kind = kind_of(req.get("input_type").and_then(Value::as_str), "input_type")
        .map_err(|e| bad(e, Some("input_type")))?;
    let enc = enc.map_err(|e| bad(e, None))?;
    let docs: Vec<Doc> = texts.iter().map(|t| Doc::new(None, t)).collect();
    let tokens = enc
        .token_counts(kind, &docs)
        .map_err(|e| bad(e.to_string(), Some("input")))?
        .iter()
        .map(|c| c.0)
        .sum();
    Ok(OpenAiAsk {
        texts: EmbedTexts { kind, texts },
        model,
        base64,
        tokens,
    })
}

#[derive(Serialize)]
struct OpenAiAnswer<'a> {
    object: &'static str,
    data: Vec<Datum<'a>>,
    model: &'a str,
    usage: Usage,
}

#[derive(Serialize)]
struct Datum<'a> {
    object: &'static str,
    index: usize,
    embedding: Embedding<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Embedding<'a> {
    /// Each value written as the f32 it is, as /embed writes it.
    Floats(&'a [f32]),
    /// The little-endian f32 bytes, base64.
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// The answer to an OpenAI embeddings request: `vectors` row-major, `dim` each.
pub fn openai_answer(ask: &OpenAiAsk, vectors: &[f32], dim: usize, model: &str) -> Response {
    let data = vectors
        .chunks(dim.max(1))
        .enumerate()
        .map(|(index, v)| Datum {
            object: "embedding",
            index,
            embedding: if ask.base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Embedding::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Embedding::Floats(v)
            },
        })
        .collect();
    let answer = OpenAiAnswer {
        object: "list",
        data,
        model: ask.model.as_deref().unwrap_or(model),
        usage: Usage {
            prompt_tokens: ask.tokens,
            total_tokens: ask.tokens,
        },
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&answer).expect("an answer serialises"),
    )
        .into_response()
}

/// A response of this service's error shape (`{"error", "status"}`) turned into OpenAI's; others as
/// they are.
pub async fn as_openai(resp: Response) -> Response {
    let status = resp.status();
    if status.is_success() {
        return resp;
    }
    let body: Bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) if v["error"].is_object() => (status, axum::Json(v)).into_response(),
        Ok(v) => openai_error(status, v["error"].as_str().unwrap_or("error"), None),
        Err(_) => openai_error(status, &String::from_utf8_lossy(&body), None),
    }
}
