//! `simlm-search serve`: the index and its model loaded once, behind HTTP (axum on tokio).
//!
//! Requests put their work on one queue; a worker thread takes everything queued (up to a batch
//! limit, waiting at most `batch_wait` for more after the first job), encodes all the batch's texts of
//! one kind in one call (the encoder cuts them into forward passes by its token budget), searches each
//! group of queries with the same `k` and mode in one call (exact search streams the matrix once per
//! batch), and answers every request. The async side only parses, checks limits and formats.

// Handlers' helpers fail with the `Response` the handler returns as it is.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine::index::{SearchMode, Searcher};
use engine::search::Hit;
use engine::{Doc, Kind};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// The service's limits and batching.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// Largest request body in bytes (413 beyond).
    pub max_body: usize,
    /// Most queries (or texts to embed) in one request (413 beyond).
    pub max_queries: usize,
    /// Largest `k` (422 beyond).
    pub max_k: usize,
    /// Most queries the worker takes into one batch.
    pub max_batch: usize,
    /// How long the worker waits for more requests after the first of a batch.
    pub batch_wait: Duration,
}

/// What a request asks the worker to do.
enum Work {
    Search {
        queries: Vec<QueryIn>,
        k: usize,
        mode: SearchMode,
    },
    Embed {
        kind: Kind,
        texts: Vec<String>,
    },
}

enum QueryIn {
    Text(String),
    Vector(Vec<f32>),
}

struct Job {
    work: Work,
    queued: Instant,
    reply: oneshot::Sender<Result<Done, String>>,
}

/// A job's answer, with the batch's timings.
struct Done {
    /// Search: one list per query. Embed: empty.
    hits: Vec<Vec<Hit>>,
    /// Embed: one vector per text.
    vectors: Vec<Vec<f32>>,
    queue_ms: f64,
    encode_ms: f64,
    search_ms: f64,
    batch: usize,
}

struct App {
    searcher: Arc<Searcher>,
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    metrics: Metrics,
    opts: ServeOptions,
}

/// Runs the service until SIGTERM or Ctrl-C, then answers the requests in flight and returns.
pub fn serve(searcher: Searcher, opts: ServeOptions) -> anyhow::Result<()> {
    let searcher = Arc::new(searcher);
    let (tx, rx) = mpsc::channel::<Job>();
    let app = Arc::new(App {
        searcher: searcher.clone(),
        queue: Mutex::new(Some(tx)),
        metrics: Metrics::default(),
        opts: opts.clone(),
    });
    let worker = {
        let app = app.clone();
        std::thread::Builder::new()
            .name("batcher".into())
            .spawn(move || run_worker(&app, rx))?
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(opts.addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", opts.addr))?;
        let addr = listener.local_addr()?;
        let m = &searcher.index.manifest;
        eprintln!(
            "serving {} ({} passages, dim {}, {}) on http://{addr}/  (POST /search /embed; GET /health /info /metrics)",
            searcher.index.dir.display(),
            m.count,
            m.dim,
            searcher.mode
        );
        let router = Router::new()
            .route("/", get(page))
            .route("/search", post(search))
            .route("/embed", post(embed))
            .route("/health", get(health))
            .route("/info", get(info))
            .route("/metrics", get(metrics))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(opts.max_body))
            .layer(middleware::from_fn_with_state(app.clone(), track))
            .with_state(app.clone());
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        anyhow::Ok(())
    })?;
    // Every request has been answered: close the queue, and the worker ends.
    app.queue.lock().unwrap().take();
    let _ = worker.join();
    eprintln!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down: answering the requests in flight");
}

// ---------------------------------------------------------------------------------------------
// The worker

fn run_worker(app: &App, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut size = jobs[0].work.size();
        let deadline = Instant::now() + app.opts.batch_wait;
        while size < app.opts.max_batch {
            let next = match rx.try_recv() {
                Ok(j) => Some(j),
                Err(mpsc::TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        None
                    } else {
                        rx.recv_timeout(left).ok()
                    }
                }
                Err(mpsc::TryRecvError::Disconnected) => None,
            };
            match next {
                Some(j) => {
                    size += j.work.size();
                    jobs.push(j);
                }
                None => break,
            }
        }
        app.metrics
            .queue_depth
            .fetch_sub(jobs.len() as i64, Ordering::Relaxed);
        app.metrics.batch_sizes.lock().unwrap().observe(size as f64);
        run_batch(&app.searcher, jobs);
    }
}

impl Work {
    fn size(&self) -> usize {
        match self {
            Work::Search { queries, .. } => queries.len(),
            Work::Embed { texts, .. } => texts.len(),
        }
    }
}

/// Encodes every text of the batch (one call per kind), searches each (k, mode) group in one call,
/// and answers each job.
fn run_batch(s: &Searcher, jobs: Vec<Job>) {
    let started = Instant::now();
    let batch = jobs.iter().map(|j| j.work.size()).sum();
    type Lists = (Vec<Vec<Vec<Hit>>>, Vec<Vec<Vec<f32>>>);
    let result = (|| -> engine::Result<(Lists, f64, f64)> {
        let dim = s.index.manifest.dim;
        // Texts to encode, by kind: (job, position in job).
        let mut texts: [Vec<Doc>; 2] = [Vec::new(), Vec::new()];
        let mut at: [Vec<(usize, usize)>; 2] = [Vec::new(), Vec::new()];
        for (ji, j) in jobs.iter().enumerate() {
            match &j.work {
                Work::Search { queries, .. } => {
                    for (qi, q) in queries.iter().enumerate() {
                        if let QueryIn::Text(t) = q {
                            texts[0].push(Doc::query(t));
                            at[0].push((ji, qi));
                        }
                    }
                }
                Work::Embed { kind, texts: ts } => {
                    let slot = if *kind == Kind::Query { 0 } else { 1 };
                    for (qi, t) in ts.iter().enumerate() {
                        texts[slot].push(Doc::new(None, t));
                        at[slot].push((ji, qi));
                    }
                }
            }
        }
        let t = Instant::now();
        let mut vecs: Vec<Vec<Vec<f32>>> = jobs
            .iter()
            .map(|j| vec![Vec::new(); j.work.size()])
            .collect();
        for (slot, kind) in [(0, Kind::Query), (1, Kind::Passage)] {
            if texts[slot].is_empty() {
                continue;
            }
            let flat = s.encoder()?.encode(kind, &texts[slot])?;
            for (&(ji, qi), v) in at[slot].iter().zip(flat.chunks(dim)) {
                vecs[ji][qi] = v.to_vec();
            }
        }
        let encode_ms = t.elapsed().as_secs_f64() * 1e3;
        for (ji, j) in jobs.iter().enumerate() {
            if let Work::Search { queries, .. } = &j.work {
                for (qi, q) in queries.iter().enumerate() {
                    if let QueryIn::Vector(v) = q {
                        vecs[ji][qi] = v.clone();
                    }
                }
            }
        }
        // Searches: the jobs' queries grouped by (k, mode).
        let t = Instant::now();
        let mut hits: Vec<Vec<Vec<Hit>>> = jobs.iter().map(|_| Vec::new()).collect();
        let mut groups: BTreeMap<(usize, String), Vec<usize>> = BTreeMap::new();
        for (ji, j) in jobs.iter().enumerate() {
            if let Work::Search { k, mode, .. } = &j.work {
                groups.entry((*k, mode.to_string())).or_default().push(ji);
            }
        }
        for ((k, _), members) in groups {
            let Work::Search { mode, .. } = &jobs[members[0]].work else {
                unreachable!("groups hold search jobs")
            };
            let flat: Vec<f32> = members
                .iter()
                .flat_map(|&ji| vecs[ji].iter().flatten().copied())
                .collect();
            let mut found = s.index.search(&flat, k, *mode)?.into_iter();
            for &ji in &members {
                hits[ji] = found.by_ref().take(vecs[ji].len()).collect();
            }
        }
        let search_ms = t.elapsed().as_secs_f64() * 1e3;
        Ok(((hits, vecs), encode_ms, search_ms))
    })();
    match result {
        Ok(((hits, vecs), encode_ms, search_ms)) => {
            for ((j, h), v) in jobs.into_iter().zip(hits).zip(vecs) {
                let done = Done {
                    vectors: if matches!(j.work, Work::Embed { .. }) {
                        v
                    } else {
                        Vec::new()
                    },
                    hits: h,
                    queue_ms: (started - j.queued).as_secs_f64() * 1e3,
                    encode_ms,
                    search_ms,
                    batch,
                };
                let _ = j.reply.send(Ok(done));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for j in jobs {
                let _ = j.reply.send(Err(msg.clone()));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// A JSON error response.
fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    let msg = msg.into();
    (
        status,
        Json(json!({"error": msg, "status": status.as_u16()})),
    )
        .into_response()
}

/// Parses a JSON body: 413 past the size limit, 400 for anything that is not the expected JSON.
fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    max: usize,
) -> Result<T, Response> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {max} bytes (--max-body)"),
            )
        } else {
            error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {}", e.body_text()),
            )
        }
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("malformed request: {e}")))
}

/// Puts work on the queue and waits for its answer.
async fn submit(app: &App, work: Work) -> Result<Done, Response> {
    let (reply, answer) = oneshot::channel();
    let job = Job {
        work,
        queued: Instant::now(),
        reply,
    };
    {
        let q = app.queue.lock().unwrap();
        let Some(tx) = q.as_ref() else {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is shutting down",
            ));
        };
        app.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        if tx.send(job).is_err() {
            app.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is shutting down",
            ));
        }
    }
    match answer.await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(msg)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, msg)),
        Err(_) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the search worker stopped",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchRequest {
    query: Option<String>,
    queries: Option<Vec<String>>,
    vector: Option<Vec<f32>>,
    vectors: Option<Vec<Vec<f32>>>,
    k: Option<usize>,
    exact: Option<bool>,
    ef: Option<usize>,
    /// Include each passage's title and text (default true).
    text: Option<bool>,
}

async fn search(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let req: SearchRequest = match parse_body(body, app.opts.max_body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let t = Instant::now();
    let s = &app.searcher;
    let given = [
        req.query.is_some(),
        req.queries.is_some(),
        req.vector.is_some(),
        req.vectors.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return error(
            StatusCode::BAD_REQUEST,
            "give exactly one of `query`, `queries`, `vector` or `vectors`",
        );
    }
    let several = req.queries.is_some() || req.vectors.is_some();
    let dim = s.index.manifest.dim;
    let queries: Vec<QueryIn> = if let Some(q) = req.query {
        vec![QueryIn::Text(q)]
    } else if let Some(qs) = req.queries {
        qs.into_iter().map(QueryIn::Text).collect()
    } else if let Some(v) = req.vector {
        vec![QueryIn::Vector(v)]
    } else {
        req.vectors
            .unwrap_or_default()
            .into_iter()
            .map(QueryIn::Vector)
            .collect()
    };
    if queries.is_empty() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "no queries given");
    }
    if queries.len() > app.opts.max_queries {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} queries in one request; at most {} (--max-queries)",
                queries.len(),
                app.opts.max_queries
            ),
        );
    }
    for (i, q) in queries.iter().enumerate() {
        match q {
            QueryIn::Text(t) if t.trim().is_empty() => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("query {i} is empty"),
                )
            }
            QueryIn::Text(_) => {
                if let Err(e) = s.encoder() {
                    return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
                }
            }
            QueryIn::Vector(v) if v.len() != dim => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "vector {i} has {} values; the index holds dimension {dim}",
                        v.len()
                    ),
                )
            }
            QueryIn::Vector(_) => {}
        }
    }
    let k = req.k.unwrap_or(10);
    if k == 0 || k > app.opts.max_k {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "k must be between 1 and {} (--max-k); got {k}",
                app.opts.max_k
            ),
        );
    }
    let mode = if req.exact.unwrap_or(false) {
        SearchMode::Exact
    } else if let Some(ef) = req.ef {
        match s.graph_mode(ef) {
            Ok(m) => m,
            Err(why) => return error(StatusCode::UNPROCESSABLE_ENTITY, why),
        }
    } else {
        // The service's own default: `--exact`, `--ef N`, or the graph at its default ef.
        s.mode
    };
    let done = match submit(&app, Work::Search { queries, k, mode }).await {
        Ok(d) => d,
        Err(resp) => return resp,
    };
    let with_text = req.text.unwrap_or(true);
    let app2 = app.clone();
    let hits = done.hits;
    // Passage text is read from the collection: blocking file reads, off the async threads.
    let lists = tokio::task::spawn_blocking(move || {
        hits.iter()
            .map(|list| hit_list(&app2.searcher, list, with_text))
            .collect::<Vec<Value>>()
    })
    .await
    .unwrap_or_default();
    let took = json!({
        "queue": round(done.queue_ms),
        "encode": round(done.encode_ms),
        "search": round(done.search_ms),
        "total": round(t.elapsed().as_secs_f64() * 1e3),
        "batch": done.batch,
    });
    let hits = if several {
        Value::Array(lists)
    } else {
        lists.into_iter().next().unwrap_or(Value::Array(Vec::new()))
    };
    Json(json!({"hits": hits, "mode": mode.to_string(), "took_ms": took})).into_response()
}

fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

fn hit_list(s: &Searcher, hits: &[Hit], with_text: bool) -> Value {
    Value::Array(
        hits.iter()
            .enumerate()
            .map(|(rank, h)| {
                let mut o = json!({
                    "docid": s.index.ids[h.row],
                    "score": h.score,
                    "rank": rank + 1,
                });
                if with_text {
                    if let Ok(rec) = s.index.passage(h.row) {
                        o["title"] = rec.title.map(Value::String).unwrap_or(Value::Null);
                        o["text"] = Value::String(rec.text);
                    }
                }
                o
            })
            .collect(),
    )
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Inputs {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedRequest {
    inputs: Inputs,
    /// `query` (default) or `passage`.
    kind: Option<String>,
    /// Accepted for compatibility; the vectors are always L2-normalised.
    #[allow(dead_code)]
    normalize: Option<bool>,
    /// Accepted for compatibility; inputs are always truncated to the format's length.
    #[allow(dead_code)]
    truncate: Option<bool>,
}

async fn embed(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let req: EmbedRequest = match parse_body(body, app.opts.max_body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if let Err(e) = app.searcher.encoder() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
    }
    let kind = match req.kind.as_deref() {
        None | Some("query") => Kind::Query,
        Some("passage") => Kind::Passage,
        Some(other) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("kind `{other}`: expected `query` or `passage`"),
            )
        }
    };
    let texts = match req.inputs {
        Inputs::One(t) => vec![t],
        Inputs::Many(ts) => ts,
    };
    if texts.is_empty() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "no inputs given");
    }
    if texts.len() > app.opts.max_queries {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} inputs in one request; at most {} (--max-queries)",
                texts.len(),
                app.opts.max_queries
            ),
        );
    }
    match submit(&app, Work::Embed { kind, texts }).await {
        Ok(done) => Json(done.vectors).into_response(),
        Err(resp) => resp,
    }
}

async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn info(State(app): State<Arc<App>>) -> Response {
    let s = &app.searcher;
    let m = &s.index.manifest;
    Json(json!({
        "index": s.index.dir.display().to_string(),
        "model": m.model.as_ref().map(|x| x.spec.clone()),
        "model_fingerprint": m.model.as_ref().map(|x| x.fingerprint.clone()),
        "input_format": m.input_format,
        "pooling": m.pooling,
        "count": m.count,
        "dim": m.dim,
        "dtype": m.dtype,
        "hnsw": m.hnsw,
        "default_mode": s.mode.to_string(),
        "limits": {
            "max_body": app.opts.max_body,
            "max_queries": app.opts.max_queries,
            "max_k": app.opts.max_k,
        },
    }))
    .into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such route: POST /search /embed; GET / /health /info /metrics",
    )
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// Counts and latencies by route and status, the queue's depth, and batch sizes, for `/metrics`.
#[derive(Default)]
struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    queue_depth: AtomicI64,
    batch_sizes: Mutex<Histogram>,
}

struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(SIZES)
    }
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        use std::fmt::Write;
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

impl Metrics {
    fn record(&self, route: &str, status: u16, secs: f64) {
        *self
            .requests
            .lock()
            .unwrap()
            .entry((route.to_string(), status))
            .or_default() += 1;
        self.latency
            .lock()
            .unwrap()
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(SECONDS))
            .observe(secs);
    }

    fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        out.push_str("# HELP simlm_requests_total Requests answered, by route and status.\n");
        out.push_str("# TYPE simlm_requests_total counter\n");
        for ((route, status), n) in self.requests.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "simlm_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP simlm_request_seconds Request latency, by route.\n");
        out.push_str("# TYPE simlm_request_seconds histogram\n");
        for (route, h) in self.latency.lock().unwrap().iter() {
            h.render(
                &mut out,
                "simlm_request_seconds",
                &format!("route=\"{route}\""),
            );
        }
        out.push_str("# HELP simlm_queue_depth Requests waiting for the batch worker.\n");
        out.push_str("# TYPE simlm_queue_depth gauge\n");
        let _ = writeln!(
            out,
            "simlm_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed).max(0)
        );
        out.push_str("# HELP simlm_batch_size Queries (or texts) per batch the worker ran.\n");
        out.push_str("# TYPE simlm_batch_size histogram\n");
        self.batch_sizes
            .lock()
            .unwrap()
            .render(&mut out, "simlm_batch_size", "");
        out
    }
}

/// Records every response's route, status and latency.
async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "other".to_string());
    let t = Instant::now();
    let resp = next.run(req).await;
    app.metrics
        .record(&route, resp.status().as_u16(), t.elapsed().as_secs_f64());
    resp
}
