//! `simlm-search serve --shard URL --shard URL ...`: one service over an index split across machines.
//!
//! Each shard of the collection (an index built with `simlm-index build --shard i/N`) is served by its
//! own `simlm-search serve`; the front encodes each query once, sends the vectors to every shard, and
//! merges their top-k in the single index's order (score, then row), so that exact search through the
//! front returns exactly what one unsplit index returns: every shard scores its rows with the same
//! kernel, a score travels as the shortest decimal that reads back as the same `f32`, and each row is
//! numbered in the whole collection.
//!
//! At start the front reads every shard server's `/info` and refuses to serve unless they agree on
//! the model (fingerprint), input format, pooling, precision, dimension and vector type, and their row
//! ranges cover the collection exactly once. A shard given as `URL|URL` has replicas: a request that
//! fails or times out on one is sent to the next. With none left, the answer is 503 naming the shard,
//! or, with `--allow-partial`, the other shards' hits with the missing rows named.
//!
//! The front keeps the single server's API (`/search`, `/embed`, `/health`, `/info`, `/metrics`, the
//! page) and its bounds (body, queries, k, hits, answer size, bytes in flight, timeouts).

#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine::{Doc, Encoder, EncoderOptions, InputFormat, Kind, ModelFiles, Pooling, Precision};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::serve::{
    accept_loop, busy_with, check_search, error, not_found, page, read_body_within, retry_soon,
    round, track, write_addr_file, Budget, Histogram, Metrics, Queries, ServeOptions, SECONDS,
};

/// The front's options: the service's own, and its shards.
#[derive(Debug, Clone)]
pub struct FrontOptions {
    pub serve: ServeOptions,
    /// One entry per shard: its replicas' base URLs, tried in turn.
    pub shards: Vec<Vec<String>>,
    /// A model folder or hub id for encoding queries (default: the one the shards name); it must be
    /// the shards' model.
    pub model: Option<String>,
    /// cpu | cuda | cuda:N, for the query encoder.
    pub device: String,
    /// The search mode sent when a request names none: exact, or the graph with this ef (neither:
    /// each shard's own default).
    pub exact: bool,
    pub ef: Option<usize>,
    /// Answer from the shards that answered when one has no replica left (else 503).
    pub allow_partial: bool,
    /// How long one shard server may take to answer one request.
    pub shard_timeout: Duration,
    /// How long the front waits at start for a shard server that does not answer yet.
    pub shard_wait: Duration,
}

/// What a shard server says of itself in `/info`.
#[derive(Debug, Clone, Deserialize)]
struct ShardInfo {
    model: Option<String>,
    model_fingerprint: Option<String>,
    input_format: Option<InputFormat>,
    pooling: Option<Pooling>,
    precision: Option<Precision>,
    dim: usize,
    dtype: Value,
    count: usize,
    rows: Option<Rows>,
    hnsw: Option<Value>,
    limits: Option<Limits>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
struct Rows {
    start: usize,
    end: usize,
    total: usize,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct Limits {
    max_queries: usize,
    max_k: usize,
    max_hits: usize,
}

/// One shard: its rows and its replicas.
struct Shard {
    rows: Rows,
    urls: Vec<String>,
    /// Each replica answered `/info` and agrees with the others: only these are sent requests.
    verified: Vec<AtomicBool>,
    /// The replica the next request starts with (requests are spread over the replicas).
    next: AtomicUsize,
}

/// A hit as a shard server answers it, and as the front answers it (ranked again).
#[derive(Debug, Deserialize, Serialize)]
struct ShardHit {
    docid: String,
    score: f32,
    #[serde(default)]
    rank: usize,
    row: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

/// The front's search answer: the single server's shape, and the missing shards when partial.
#[derive(Serialize)]
struct FrontAnswer {
    hits: Lists,
    mode: String,
    took_ms: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    missing: Option<Vec<Value>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Lists {
    One(Vec<ShardHit>),
    Many(Vec<Vec<ShardHit>>),
}

#[derive(Debug, Deserialize)]
struct ShardAnswer {
    hits: Vec<Vec<ShardHit>>,
    mode: String,
}

/// Why a shard gave no answer.
enum ShardError {
    /// The request's own fault (a 4xx), passed on as it is: another replica would say the same.
    Request(StatusCode, String),
    /// Every replica failed or timed out: why, replica by replica.
    Down(String),
}

struct FrontMetrics {
    /// Latency of each replica's answers, by (shard, url).
    latency: Mutex<BTreeMap<(usize, String), Histogram>>,
    /// Failed or timed-out requests, by (shard, url).
    failures: Mutex<BTreeMap<(usize, String), u64>>,
    partial: AtomicU64,
}

struct Front {
    opts: FrontOptions,
    shards: Vec<Shard>,
    /// What every shard agreed on (for `/info`).
    info: ShardInfo,
    total: usize,
    client: Client<HttpConnector, Full<Bytes>>,
    /// The encoder's queue (none when the shards have no model).
    encode: Mutex<Option<mpsc::Sender<EncodeJob>>>,
    /// The query encoder (none when the shards have no model): encodes on its own thread; read here
    /// for token counts.
    encoder: Option<Arc<Encoder>>,
    budget: Arc<Budget>,
    metrics: Arc<Metrics>,
    shard_metrics: FrontMetrics,
}

struct EncodeJob {
    kind: Kind,
    texts: Vec<String>,
    queued: Instant,
    reply: oneshot::Sender<Result<Encoded, String>>,
}

struct Encoded {
    vectors: Vec<f32>,
    queue_ms: f64,
    encode_ms: f64,
}

/// Runs the front until SIGTERM or Ctrl-C, then answers the requests in flight and returns.
pub fn serve(mut opts: FrontOptions) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client: Client<HttpConnector, Full<Bytes>> = {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(opts.shard_timeout));
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(http)
    };
    let (shards, agreed) = rt.block_on(check_shards(&client, &opts))?;
    // The front's limits are within every shard's: a request it takes, each shard takes.
    if let Some(l) = &agreed.limits {
        opts.serve.max_queries = opts.serve.max_queries.min(l.max_queries);
        opts.serve.max_k = opts.serve.max_k.min(l.max_k);
        opts.serve.max_hits = opts.serve.max_hits.min(l.max_hits);
    }
    let encoder = load_encoder(&agreed, &opts)?.map(Arc::new);
    let total = shards.last().map_or(0, |s| s.rows.end);
    let (tx, rx) = mpsc::channel::<EncodeJob>();
    let has_encoder = encoder.is_some();
    let front = Arc::new(Front {
        budget: Budget::new(opts.serve.max_inflight),
        opts: opts.clone(),
        shards,
        info: agreed,
        total,
        client,
        encode: Mutex::new(has_encoder.then_some(tx)),
        encoder: encoder.clone(),
        metrics: Arc::new(Metrics::default()),
        shard_metrics: FrontMetrics {
            latency: Mutex::new(BTreeMap::new()),
            failures: Mutex::new(BTreeMap::new()),
            partial: AtomicU64::new(0),
        },
    });
    let worker = match encoder {
        Some(enc) => {
            let front = front.clone();
            Some(
                std::thread::Builder::new()
                    .name("encoder".into())
                    .spawn(move || run_encoder(&front, &enc, rx))?,
            )
        }
        None => None,
    };
    let serve_opts = opts.serve.clone();
    rt.block_on(async {
        if front.shards.iter().any(|s| s.verified.iter().any(|v| !v.load(Ordering::Relaxed))) {
            tokio::spawn(verify_later(front.clone()));
        }
        let listener = tokio::net::TcpListener::bind(serve_opts.addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", serve_opts.addr))?;
        let url = write_addr_file(listener.local_addr()?, serve_opts.addr_file.as_deref())?;
        eprintln!(
            "serving {} shards ({} passages, dim {}) on {url}/  (POST /search /embed; GET /health /info /metrics)",
            front.shards.len(),
            front.total,
            front.info.dim,
        );
        let router = Router::new()
            .route("/", get(page).post(embed))
            .route("/search", post(search))
            .route("/embed", post(embed))
            .route("/v1/embeddings", post(openai_embeddings))
            .route("/health", get(health))
            .route("/info", get(info))
            .route("/metrics", get(metrics))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(serve_opts.max_body))
            .layer(middleware::from_fn_with_state(front.metrics.clone(), track))
            .with_state(front.clone());
        accept_loop(listener, router, &serve_opts).await;
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(Duration::from_millis(100));
    front.encode.lock().unwrap().take();
    if let Some(w) = worker {
        let _ = w.join();
    }
    eprintln!("stopped");
    Ok(())
}

/// A base URL as given (`http://host:port`, or `host:port`), without a trailing slash.
fn base_url(given: &str) -> anyhow::Result<String> {
    let url = if given.contains("://") {
        given.to_string()
    } else {
        format!("http://{given}")
    };
    let url = url.trim_end_matches('/').to_string();
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("--shard {given}: not a URL ({e})"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        anyhow::bail!("--shard {given}: expected http://HOST:PORT (the front speaks plain HTTP)");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        anyhow::bail!("--shard {given}: expected http://HOST:PORT, without a path");
    }
    Ok(url)
}

/// GET `url` within `timeout`: the body, or why not.
async fn get_json(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    timeout: Duration,
) -> Result<Value, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let req = hyper::Request::get(uri)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let fetch = async {
        let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        serde_json::from_slice(&body).map_err(|e| format!("not JSON ({e})"))
    };
    match tokio::time::timeout(timeout, fetch).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:.1} s", timeout.as_secs_f64())),
    }
}

/// An error and its sources, as one line ("connection refused" lies a few levels down).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// Reads a shard server's `/info`: what it says of itself, checked for its rows.
async fn read_info(
    client: &Client<HttpConnector, Full<Bytes>>,
    i: usize,
    url: &str,
    timeout: Duration,
) -> Result<ShardInfo, Trouble> {
    let v = get_json(client, &format!("{url}/info"), timeout)
        .await
        .map_err(Trouble::Unreachable)?;
    let si: ShardInfo = serde_json::from_value(v).map_err(|e| {
        Trouble::Wrong(format!(
            "shard {i} ({url}): its /info is not a simlm-search server's ({e})"
        ))
    })?;
    let Some(r) = si.rows else {
        return Err(Trouble::Wrong(format!(
            "shard {i} ({url}) does not say which rows it holds: serve it with this version of simlm-search"
        )));
    };
    if r.end < r.start || r.end - r.start != si.count {
        return Err(Trouble::Wrong(format!(
            "shard {i} ({url}) says it holds rows {}..{} but {} passages",
            r.start, r.end, si.count
        )));
    }
    Ok(si)
}

/// Why a shard server's `/info` was not taken.
enum Trouble {
    /// No answer (yet): it may still be starting.
    Unreachable(String),
    /// It answered, and cannot be served with the others.
    Wrong(String),
}

/// Whether a replica answers as shard `i` with the rows `rows`, agreeing with `first`: the reason
/// it does not, if so.
fn fits(
    si: &ShardInfo,
    first: &(String, ShardInfo),
    i: usize,
    url: &str,
    rows: Option<Rows>,
) -> Result<(), String> {
    let (url0, f) = first;
    agree(f, si).map_err(|what| {
        format!(
            "shard {i} ({url}) differs from {url0} in its {what}: every shard must be of one \
             collection, encoded by one model the same way"
        )
    })?;
    let r = si.rows.expect("checked by read_info");
    match rows {
        Some(r0) if r0 != r => Err(format!(
            "shard {i}: replica {url} holds rows {}..{}, another replica rows {}..{}: replicas of a \
             shard (URL|URL) must hold the same rows",
            r.start, r.end, r0.start, r0.end
        )),
        _ => Ok(()),
    }
}

/// Reads every shard server's `/info` and checks that they agree and cover the collection once:
/// the shards in row order, and what they agreed on. A shard none of whose replicas answers yet is
/// waited for (up to `shard_wait`); a replica that does not answer while another of its shard does
/// is left out until it answers and agrees (`verify_later`). One that answers and disagrees is an
/// error.
async fn check_shards(
    client: &Client<HttpConnector, Full<Bytes>>,
    opts: &FrontOptions,
) -> anyhow::Result<(Vec<Shard>, ShardInfo)> {
    if opts.shards.is_empty() {
        anyhow::bail!("no --shard given");
    }
    let urls: Vec<Vec<String>> = opts
        .shards
        .iter()
        .map(|g| {
            g.iter()
                .map(|u| base_url(u))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .collect::<anyhow::Result<_>>()?;
    let deadline = Instant::now() + opts.shard_wait;
    let mut first: Option<(String, ShardInfo)> = None;
    let mut found: Vec<Vec<Option<ShardInfo>>> = urls.iter().map(|g| vec![None; g.len()]).collect();
    let mut why: Vec<Vec<String>> = urls.iter().map(|g| vec![String::new(); g.len()]).collect();
    loop {
        for (i, group) in urls.iter().enumerate() {
            // A shard with a replica that answered is complete: the replicas that did not were
            // tried once, and are verified later.
            if found[i].iter().any(Option::is_some) {
                continue;
            }
            for (j, url) in group.iter().enumerate() {
                if found[i][j].is_some() {
                    continue;
                }
                match read_info(client, i, url, opts.shard_timeout).await {
                    Ok(si) => {
                        if first.is_none() {
                            first = Some((url.clone(), si.clone()));
                        }
                        let rows = found[i].iter().flatten().next().and_then(|f| f.rows);
                        fits(&si, first.as_ref().unwrap(), i, url, rows)
                            .map_err(anyhow::Error::msg)?;
                        found[i][j] = Some(si);
                    }
                    Err(Trouble::Wrong(msg)) => anyhow::bail!(msg),
                    Err(Trouble::Unreachable(e)) => why[i][j] = e,
                }
            }
        }
        let waiting: Vec<usize> = (0..urls.len())
            .filter(|&i| found[i].iter().all(Option::is_none))
            .collect();
        if waiting.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let i = waiting[0];
            anyhow::bail!(
                "shard {i} ({}) does not answer /info: {} (waited {:.0} s, --shard-wait)",
                urls[i].join("|"),
                why[i].join("; "),
                opts.shard_wait.as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut shards: Vec<Shard> = Vec::new();
    for (i, group) in urls.into_iter().enumerate() {
        let rows = found[i]
            .iter()
            .flatten()
            .next()
            .and_then(|f| f.rows)
            .expect("a shard answered");
        for (j, url) in group.iter().enumerate() {
            if found[i][j].is_none() {
                eprintln!(
                    "shard {i}: replica {url} does not answer ({}): left out until it answers and agrees",
                    why[i][j]
                );
            }
        }
        shards.push(Shard {
            rows,
            verified: found[i]
                .iter()
                .map(|f| AtomicBool::new(f.is_some()))
                .collect(),
            urls: group,
            next: AtomicUsize::new(0),
        });
    }
    // The shards may be given in any order; they must tile 0..total.
    let mut order: Vec<usize> = (0..shards.len()).collect();
    order.sort_by_key(|&i| (shards[i].rows.start, shards[i].rows.end));
    let total = shards[0].rows.total;
    let mut at = 0;
    let name = |i: usize| format!("shard {i} ({})", shards[i].urls.join("|"));
    for &i in &order {
        let r = shards[i].rows;
        if r.total != total {
            anyhow::bail!(
                "{} is a shard of a collection of {} passages, {} of one of {total}",
                name(i),
                r.total,
                name(0)
            );
        }
        if r.start > at {
            anyhow::bail!(
                "rows {at}..{} of the {total} are held by no shard (the next, {}, starts at {})",
                r.start,
                name(i),
                r.start
            );
        }
        if r.start < at {
            anyhow::bail!(
                "{} holds rows {}..{}, which overlap the rows before {at} held by another shard: \
                 each row must be served once",
                name(i),
                r.start,
                r.end
            );
        }
        at = r.end;
    }
    if at != total {
        anyhow::bail!("rows {at}..{total} of the {total} are held by no shard");
    }
    let mut sorted: Vec<Option<Shard>> = shards.into_iter().map(Some).collect();
    let shards = order.iter().map(|&i| sorted[i].take().unwrap()).collect();
    let (_, mut info) = first.expect("at least one shard");
    info.count = total;
    Ok((shards, info))
}

/// Asks the replicas left out at start for their `/info` every 2 s, and takes each into use once it
/// answers as its shard and agrees with the others.
async fn verify_later(front: Arc<Front>) {
    let first = (
        String::from("the shards checked at start"),
        front.info.clone(),
    );
    let mut told: Vec<Vec<bool>> = front
        .shards
        .iter()
        .map(|s| vec![false; s.urls.len()])
        .collect();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut left = 0;
        for (i, shard) in front.shards.iter().enumerate() {
            for (j, url) in shard.urls.iter().enumerate() {
                if shard.verified[j].load(Ordering::Relaxed) {
                    continue;
                }
                left += 1;
                let checked = match read_info(&front.client, i, url, front.opts.shard_timeout).await
                {
                    Ok(si) => fits(&si, &first, i, url, Some(shard.rows)),
                    Err(Trouble::Wrong(msg)) => Err(msg),
                    Err(Trouble::Unreachable(_)) => continue,
                };
                match checked {
                    Ok(()) => {
                        shard.verified[j].store(true, Ordering::Relaxed);
                        eprintln!("shard {i}: replica {url} answers and agrees: in use");
                        left -= 1;
                    }
                    Err(msg) if !told[i][j] => {
                        told[i][j] = true;
                        eprintln!("{msg}: replica left out");
                    }
                    Err(_) => {}
                }
            }
        }
        if left == 0 {
            return;
        }
    }
}

/// The first field in which two shards differ, if any.
fn agree(a: &ShardInfo, b: &ShardInfo) -> Result<(), &'static str> {
    if a.model_fingerprint != b.model_fingerprint {
        return Err("model (fingerprint)");
    }
    if a.input_format != b.input_format {
        return Err("input format");
    }
    if a.pooling != b.pooling {
        return Err("pooling");
    }
    if a.precision != b.precision {
        return Err("precision");
    }
    if a.dim != b.dim {
        return Err("dimension");
    }
    if a.dtype != b.dtype {
        return Err("vector type (dtype)");
    }
    Ok(())
}

/// The shards' encoder, loaded from `--model` or the folder they name (it must be the same model).
fn load_encoder(info: &ShardInfo, opts: &FrontOptions) -> anyhow::Result<Option<Encoder>> {
    let Some(fingerprint) = &info.model_fingerprint else {
        if let Some(m) = &opts.model {
            anyhow::bail!(
                "--model {m}: the shards were imported from vectors and have no model; they answer vectors only"
            );
        }
        return Ok(None);
    };
    let spec = opts
        .model
        .clone()
        .or_else(|| info.model.clone())
        .ok_or_else(|| anyhow::anyhow!("the shards name no model: give --model"))?;
    let files = ModelFiles::resolve(&spec)?;
    if &files.fingerprint()? != fingerprint {
        anyhow::bail!(
            "model {spec} is not the one the shards were built with (its fingerprint differs): give \
             their model with --model"
        );
    }
    let (Some(format), Some(pooling), Some(precision)) =
        (info.input_format, info.pooling, info.precision)
    else {
        anyhow::bail!("the shards name a model but not its input format, pooling and precision");
    };
    let enc = Encoder::from_files(
        files,
        &EncoderOptions {
            format,
            pooling: Some(pooling),
            precision,
            device: engine::parse_device(&opts.device)?,
            ..Default::default()
        },
    )?;
    if enc.dim() != info.dim {
        anyhow::bail!(
            "model {spec} gives vectors of dimension {}, the shards hold {}",
            enc.dim(),
            info.dim
        );
    }
    Ok(Some(enc))
}

/// The encoder's thread: takes every job queued (up to the batch limit), encodes the texts of one
/// kind in one call, and answers each job; a batch that fails is encoded again job by job, so that
/// a job's failure is its own.
fn run_encoder(front: &Front, enc: &Encoder, rx: mpsc::Receiver<EncodeJob>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut size = jobs[0].texts.len();
        if !front.opts.serve.batch_wait.is_zero() {
            let until = Instant::now() + front.opts.serve.batch_wait;
            while size < front.opts.serve.max_batch {
                let left = until.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(j) => {
                        size += j.texts.len();
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
        }
        while size < front.opts.serve.max_batch {
            match rx.try_recv() {
                Ok(j) => {
                    size += j.texts.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        front
            .metrics
            .queue_depth
            .fetch_sub(jobs.len() as i64, Ordering::Relaxed);
        front
            .metrics
            .batch_sizes
            .lock()
            .unwrap()
            .observe(size as f64);
        for kind in [Kind::Query, Kind::Passage] {
            let group: Vec<EncodeJob> = {
                let (mine, rest): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|j| j.kind == kind);
                jobs = rest;
                mine
            };
            if group.is_empty() {
                continue;
            }
            let docs: Vec<Doc> = group
                .iter()
                .flat_map(|j| j.texts.iter().map(|t| Doc::new(None, t)))
                .collect();
            let t = Instant::now();
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| enc.encode(kind, &docs)));
            let encode_ms = t.elapsed().as_secs_f64() * 1e3;
            match result {
                Ok(Ok(vectors)) => {
                    let dim = enc.dim();
                    let mut at = 0;
                    for j in group {
                        let n = j.texts.len() * dim;
                        let _ = j.reply.send(Ok(Encoded {
                            vectors: vectors[at..at + n].to_vec(),
                            queue_ms: (t - j.queued).as_secs_f64() * 1e3,
                            encode_ms,
                        }));
                        at += n;
                    }
                }
                _ if group.len() > 1 => {
                    for j in group {
                        let docs: Vec<Doc> = j.texts.iter().map(|t| Doc::new(None, t)).collect();
                        let t = Instant::now();
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            enc.encode(kind, &docs)
                        }));
                        let _ = j.reply.send(match r {
                            Ok(Ok(vectors)) => Ok(Encoded {
                                vectors,
                                queue_ms: (t - j.queued).as_secs_f64() * 1e3,
                                encode_ms: t.elapsed().as_secs_f64() * 1e3,
                            }),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err("encoding failed (a panic)".into()),
                        });
                    }
                }
                Ok(Err(e)) => {
                    for j in group {
                        let _ = j.reply.send(Err(e.to_string()));
                    }
                }
                Err(_) => {
                    for j in group {
                        let _ = j.reply.send(Err("encoding failed (a panic)".into()));
                    }
                }
            }
        }
    }
}

/// Encodes texts on the encoder's thread.
async fn encode(front: &Front, kind: Kind, texts: Vec<String>) -> Result<Encoded, Response> {
    let (reply, answer) = oneshot::channel();
    {
        let q = front.encode.lock().unwrap();
        let Some(tx) = q.as_ref() else {
            return Err(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "the shards were imported from vectors made elsewhere and have no model: send \
                 `vector` or `vectors`",
            ));
        };
        front.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        let job = EncodeJob {
            kind,
            texts,
            queued: Instant::now(),
            reply,
        };
        if tx.send(job).is_err() {
            front.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is shutting down",
            ));
        }
    }
    match answer.await {
        Ok(Ok(e)) => Ok(e),
        Ok(Err(msg)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, msg)),
        Err(_) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the encoder stopped",
        )),
    }
}

/// A search request, checked: texts or flat vectors, and what to send the shards.
struct FrontAsk {
    texts: Option<Vec<String>>,
    vectors: Vec<f32>,
    count: usize,
    k: usize,
    several: bool,
    text: bool,
    exact: Option<bool>,
    ef: Option<usize>,
}

fn parse_search(front: &Front, body: &[u8]) -> Result<FrontAsk, Response> {
    let c = check_search(body, &front.opts.serve, front.info.dim, ", and the shards'")?;
    if c.ef == Some(0) {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ef must be positive",
        ));
    }
    let (texts, vectors) = match c.queries {
        Queries::Texts(ts) => (Some(ts), Vec::new()),
        Queries::Vectors(flat) => (None, flat),
    };
    let (exact, ef) = match (c.exact, c.ef) {
        (Some(true), _) => (Some(true), None),
        (_, Some(ef)) => (None, Some(ef)),
        (Some(false), None) => (Some(false), front.opts.ef),
        (None, None) if front.opts.exact => (Some(true), None),
        (None, None) => (None, front.opts.ef),
    };
    Ok(FrontAsk {
        texts,
        vectors,
        count: c.count,
        k: c.k,
        several: c.several,
        text: c.text,
        exact,
        ef,
    })
}

/// Sends one request to a shard, trying its replicas in turn: its answer, or why none came.
async fn ask_shard(
    front: &Front,
    i: usize,
    body: Bytes,
    max_answer: usize,
) -> Result<(ShardAnswer, usize), ShardError> {
    let shard = &front.shards[i];
    let n = shard.urls.len();
    let start = shard.next.fetch_add(1, Ordering::Relaxed);
    let mut why = Vec::new();
    for attempt in 0..n {
        let r = (start + attempt) % n;
        if !shard.verified[r].load(Ordering::Relaxed) {
            continue;
        }
        let url = &shard.urls[r];
        let t = Instant::now();
        let result = tokio::time::timeout(
            front.opts.shard_timeout,
            post_once(&front.client, url, body.clone(), max_answer),
        )
        .await;
        let secs = t.elapsed().as_secs_f64();
        let failed = match result {
            Ok(Ok((status, bytes))) if status.is_success() => {
                match serde_json::from_slice::<ShardAnswer>(&bytes) {
                    Ok(a) => {
                        front.shard_metrics.observe(i, url, secs);
                        return Ok((a, bytes.len()));
                    }
                    Err(e) => format!("{url}: an answer that is not a search answer ({e})"),
                }
            }
            Ok(Ok((status, bytes))) if status.is_client_error() => {
                front.shard_metrics.observe(i, url, secs);
                let msg = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
                return Err(ShardError::Request(status, format!("shard {i}: {msg}")));
            }
            Ok(Ok((status, bytes))) => {
                format!("{url}: {status} {}", String::from_utf8_lossy(&bytes))
            }
            Ok(Err(e)) => format!("{url}: {e}"),
            Err(_) => format!(
                "{url}: no answer within {:.1} s (--shard-timeout)",
                front.opts.shard_timeout.as_secs_f64()
            ),
        };
        front.shard_metrics.failed(i, url);
        why.push(failed);
    }
    Err(ShardError::Down(why.join("; ")))
}

/// POST `body` to `url/search`: the status and at most `max_answer` bytes of the answer.
async fn post_once(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    body: Bytes,
    max_answer: usize,
) -> Result<(StatusCode, Bytes), String> {
    let uri: hyper::Uri = format!("{url}/search")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let req = hyper::Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), max_answer)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, bytes))
}

async fn search(State(front): State<Arc<Front>>, req: Request) -> Response {
    let t = Instant::now();
    let (body, mut hold) = match read_body_within(&front.budget, &front.opts.serve, req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let ask = match parse_search(&front, &body) {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    drop(body);
    let max_answer = front.opts.serve.max_answer;
    let (vectors, queue_ms, encode_ms) = match ask.texts {
        Some(texts) => match encode(&front, Kind::Query, texts).await {
            Ok(e) => (e.vectors, e.queue_ms, e.encode_ms),
            Err(resp) => return resp,
        },
        None => (ask.vectors, 0.0, 0.0),
    };
    // The body every shard gets: the vectors (each value the shortest decimal that reads back as the
    // same f32), k, the mode and whether to include text.
    let dim = front.info.dim;
    let rows: Vec<&[f32]> = vectors.chunks(dim).collect();
    let mut shard_req = json!({"vectors": rows, "k": ask.k, "text": ask.text});
    if let Some(e) = ask.exact {
        shard_req["exact"] = json!(e);
    }
    if let Some(ef) = ask.ef {
        shard_req["ef"] = json!(ef);
    }
    let shard_body = Bytes::from(shard_req.to_string());
    drop(vectors);
    let ts = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..front.shards.len() {
        let front = front.clone();
        let body = shard_body.clone();
        tasks.spawn(async move { (i, ask_shard(&front, i, body, max_answer).await) });
    }
    let mut answers: Vec<Option<ShardAnswer>> = (0..front.shards.len()).map(|_| None).collect();
    let mut missing = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let Ok((i, result)) = joined else {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "a shard request failed");
        };
        match result {
            Ok((a, bytes)) => {
                if a.hits.len() != ask.count {
                    missing.push((
                        i,
                        format!("answered {} lists for {} queries", a.hits.len(), ask.count),
                    ));
                    continue;
                }
                if !hold.grow_to(hold.bytes.saturating_add(bytes)) {
                    return busy_with(&front.budget);
                }
                answers[i] = Some(a);
            }
            Err(ShardError::Request(status, msg)) => return error(status, msg),
            Err(ShardError::Down(why)) => missing.push((i, why)),
        }
    }
    let search_ms = ts.elapsed().as_secs_f64() * 1e3;
    missing.sort();
    if !missing.is_empty() && !front.opts.allow_partial {
        let names: Vec<String> = missing
            .iter()
            .map(|(i, why)| {
                let r = front.shards[*i].rows;
                format!("shard {i} (rows {}..{}): {why}", r.start, r.end)
            })
            .collect();
        return retry_soon(format!(
            "{} of {} shards did not answer, so the answer would miss their rows: {} \
             (start the front with --allow-partial to answer without them)",
            missing.len(),
            front.shards.len(),
            names.join("; ")
        ));
    }
    if answers.iter().all(Option::is_none) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no shard answered: {}",
                missing
                    .iter()
                    .map(|(i, why)| format!("shard {i}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        );
    }
    if !missing.is_empty() {
        front.shard_metrics.partial.fetch_add(1, Ordering::Relaxed);
    }
    let mode = answers
        .iter()
        .flatten()
        .next()
        .map(|a| a.mode.clone())
        .unwrap_or_default();
    // Each query's hits from every shard, in the single index's order: score, then row.
    let mut lists: Vec<Vec<ShardHit>> = (0..ask.count).map(|_| Vec::new()).collect();
    for a in answers.into_iter().flatten() {
        for (q, hits) in a.hits.into_iter().enumerate() {
            lists[q].extend(hits);
        }
    }
    for hits in &mut lists {
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.row.cmp(&b.row)));
        hits.truncate(ask.k);
        for (rank, h) in hits.iter_mut().enumerate() {
            h.rank = rank + 1;
        }
    }
    // Written from the typed hits, so that each score is printed as the f32 it is, as the shard
    // servers (and one server on the unsplit index) print it.
    let answer = FrontAnswer {
        hits: if ask.several {
            Lists::Many(lists)
        } else {
            Lists::One(lists.into_iter().next().unwrap_or_default())
        },
        mode,
        took_ms: json!({
            "queue": round(queue_ms),
            "encode": round(encode_ms),
            "search": round(search_ms),
            "total": round(t.elapsed().as_secs_f64() * 1e3),
        }),
        missing: (!missing.is_empty()).then(|| {
            missing
                .iter()
                .map(|(i, why)| {
                    let r = front.shards[*i].rows;
                    json!({"shard": i, "rows": [r.start, r.end], "error": why})
                })
                .collect()
        }),
    };
    let bytes = serde_json::to_string(&answer).expect("an answer serialises");
    if bytes.len() > max_answer {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the answer passes {max_answer} bytes (--max-answer-mb): ask for fewer hits, or `\"text\": false`"
            ),
        );
    }
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// Why there is nothing to embed with, if so.
fn encoder_of(front: &Front) -> Result<&Encoder, String> {
    front.encoder.as_deref().ok_or_else(|| {
        "the shards were imported from vectors made elsewhere and have no model: there is nothing \
         to embed with"
            .to_string()
    })
}

/// Checks that `n` vectors fit the answer limit and the budget beside `hold`.
fn hold_for(front: &Front, hold: &mut crate::serve::Hold, n: usize) -> Result<(), Response> {
    let size = n * (front.info.dim * 16 + 64) + 256;
    if size > front.opts.serve.max_answer {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{n} vectors could take {size} bytes; at most {} (--max-answer-mb)",
                front.opts.serve.max_answer
            ),
        ));
    }
    if !hold.grow_to(hold.bytes + size) {
        return Err(busy_with(&front.budget));
    }
    Ok(())
}

/// `POST /embed` and TEI's `POST /`.
async fn embed(State(front): State<Arc<Front>>, req: Request) -> Response {
    let (body, mut hold) = match read_body_within(&front.budget, &front.opts.serve, req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let ask =
        match crate::compat::parse_tei(&body, front.opts.serve.max_queries, encoder_of(&front)) {
            Ok(a) => a,
            Err(resp) => return resp,
        };
    drop(body);
    if let Err(resp) = hold_for(&front, &mut hold, ask.texts.len()) {
        return resp;
    }
    let n = ask.texts.len();
    let enc = match encode(&front, ask.kind, ask.texts).await {
        Ok(e) => e,
        Err(resp) => return resp,
    };
    let dim = front.info.dim.max(1);
    let rows: Vec<&[f32]> = enc.vectors.chunks(dim).take(n).collect();
    Json(rows).into_response()
}

/// `POST /v1/embeddings`: OpenAI's embeddings API, errors in its shape.
async fn openai_embeddings(State(front): State<Arc<Front>>, req: Request) -> Response {
    crate::compat::as_openai(openai_inner(front, req).await).await
}

async fn openai_inner(front: Arc<Front>, req: Request) -> Response {
    let (body, mut hold) = match read_body_within(&front.budget, &front.opts.serve, req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let ask = match crate::compat::parse_openai(
        &body,
        front.opts.serve.max_queries,
        encoder_of(&front),
    ) {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    drop(body);
    if let Err(resp) = hold_for(&front, &mut hold, ask.texts.texts.len()) {
        return resp;
    }
    let enc = match encode(&front, ask.texts.kind, ask.texts.texts.clone()).await {
        Ok(e) => e,
        Err(resp) => return resp,
    };
    let model = front.info.model.clone().unwrap_or_default();
    crate::compat::openai_answer(&ask, &enc.vectors, front.info.dim, &model)
}

/// Each replica's `/health`, asked now: 200 while every shard has a replica that answers (or, with
/// `--allow-partial`, while any does), else 503.
async fn health(State(front): State<Arc<Front>>) -> Response {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, s) in front.shards.iter().enumerate() {
        for (j, url) in s.urls.iter().enumerate() {
            let (front, url) = (front.clone(), url.clone());
            let in_use = s.verified[j].load(Ordering::Relaxed);
            tasks.spawn(async move {
                let r = get_json(
                    &front.client,
                    &format!("{url}/health"),
                    front.opts.shard_timeout.min(Duration::from_secs(2)),
                )
                .await;
                (i, j, url, in_use, r)
            });
        }
    }
    let mut up = vec![0usize; front.shards.len()];
    let mut replicas = Vec::new();
    while let Some(Ok((i, j, url, in_use, r))) = tasks.join_next().await {
        let ok = r.is_ok();
        // A shard is up while a replica in use answers (one left out at start is not sent requests
        // until it has been checked).
        up[i] += (ok && in_use) as usize;
        replicas.push((
            (i, j),
            json!({"shard": i, "url": url, "up": ok, "in_use": in_use, "error": r.err()}),
        ));
    }
    replicas.sort_by_key(|(at, _)| *at);
    let replicas: Vec<Value> = replicas.into_iter().map(|(_, v)| v).collect();
    let down: Vec<usize> = (0..up.len()).filter(|&i| up[i] == 0).collect();
    let (status, word) = if down.is_empty() {
        (StatusCode::OK, "ok")
    } else if front.opts.allow_partial && down.len() < up.len() {
        (StatusCode::OK, "partial")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shards down")
    };
    (
        status,
        Json(json!({"status": word, "shards_down": down, "replicas": replicas})),
    )
        .into_response()
}

async fn info(State(front): State<Arc<Front>>) -> Response {
    let i = &front.info;
    let o = &front.opts.serve;
    Json(json!({
        "front": true,
        "model": i.model,
        "model_fingerprint": i.model_fingerprint,
        "input_format": i.input_format,
        "pooling": i.pooling,
        "precision": i.precision,
        "count": front.total,
        "rows": {"start": 0, "end": front.total, "total": front.total},
        "dim": i.dim,
        "dtype": i.dtype,
        "hnsw": i.hnsw,
        "allow_partial": front.opts.allow_partial,
        "shards": front.shards.iter().enumerate().map(|(n, s)| json!({
            "shard": n,
            "rows": [s.rows.start, s.rows.end],
            "replicas": s.urls.iter().zip(&s.verified).map(|(u, v)| json!({
                "url": u,
                "in_use": v.load(Ordering::Relaxed),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "limits": {
            "max_body": o.max_body,
            "max_queries": o.max_queries,
            "max_k": o.max_k,
            "max_hits": o.max_hits,
            "max_answer": o.max_answer,
            "max_inflight": o.max_inflight,
            "header_timeout_s": o.header_timeout.as_secs_f64(),
            "body_timeout_s": o.body_timeout.as_secs_f64(),
            "shutdown_timeout_s": o.shutdown_timeout.as_secs_f64(),
            "shard_timeout_s": front.opts.shard_timeout.as_secs_f64(),
        },
    }))
    .into_response()
}

async fn metrics(State(front): State<Arc<Front>>) -> Response {
    let mut out = front
        .metrics
        .render(front.budget.used.load(Ordering::Relaxed));
    front.shard_metrics.render(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

impl FrontMetrics {
    fn observe(&self, shard: usize, url: &str, secs: f64) {
        self.latency
            .lock()
            .unwrap()
            .entry((shard, url.to_string()))
            .or_insert_with(|| Histogram::new(SECONDS))
            .observe(secs);
    }

    fn failed(&self, shard: usize, url: &str) {
        *self
            .failures
            .lock()
            .unwrap()
            .entry((shard, url.to_string()))
            .or_default() += 1;
    }

    fn render(&self, out: &mut String) {
        use std::fmt::Write;
        out.push_str(
            "# HELP simlm_shard_request_seconds Latency of each shard replica's answers.\n",
        );
        out.push_str("# TYPE simlm_shard_request_seconds histogram\n");
        for ((shard, url), h) in self.latency.lock().unwrap().iter() {
            h.render(
                out,
                "simlm_shard_request_seconds",
                &format!("shard=\"{shard}\",url=\"{url}\""),
            );
        }
        out.push_str(
            "# HELP simlm_shard_failures_total Requests to a shard replica that failed or timed out.\n",
        );
        out.push_str("# TYPE simlm_shard_failures_total counter\n");
        for ((shard, url), n) in self.failures.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "simlm_shard_failures_total{{shard=\"{shard}\",url=\"{url}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP simlm_partial_answers_total Answers given without a shard (--allow-partial).\n",
        );
        out.push_str("# TYPE simlm_partial_answers_total counter\n");
        let _ = writeln!(
            out,
            "simlm_partial_answers_total {}",
            self.partial.load(Ordering::Relaxed)
        );
    }
}
