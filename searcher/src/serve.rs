//! `simlm-search serve`: the index and its model loaded once, behind HTTP (axum on tokio, each
//! connection served by hyper with a header read timeout).
//!
//! Requests put their work on one queue; a worker thread takes everything queued (up to a batch
//! limit, waiting at most `batch_wait` for more after the first job), encodes all the batch's texts of
//! one kind in one call (the encoder cuts them into forward passes by its token budget), searches each
//! group of queries with the same `k` and mode in one call (exact search streams the matrix once per
//! batch), and answers every request. A batch that fails is run again one request at a time, so that
//! a request's failure is its own. The async side only reads, parses, checks limits and formats.
//!
//! Memory is bounded: each request's work (queries x k) and answer size, and the bytes of requests and
//! answers in flight together (503 beyond; freed memory is handed back to the system after large
//! answers). A housekeeping thread watches the index's manifest and switches to a newly committed
//! generation between batches, opened whole first; SIGHUP asks for that check at once.

// Handlers' helpers fail with the `Response` the handler returns as it is.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine::index::{SearchMode, Searcher};
use engine::search::Hit;
use engine::store::layout::MANIFEST;
use engine::{Doc, Kind};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;

/// The service's limits, timeouts and batching.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// Largest request body in bytes (413 beyond).
    pub max_body: usize,
    /// Most queries (or texts to embed) in one request (413 beyond).
    pub max_queries: usize,
    /// Largest `k` (422 beyond).
    pub max_k: usize,
    /// Most hits one request may ask for, queries x k (413 beyond).
    pub max_hits: usize,
    /// Largest answer in bytes, passages' text included (413 beyond).
    pub max_answer: usize,
    /// Bytes of requests and answers in flight, all requests together: a request that would pass it
    /// is answered 503 with `Retry-After` (one request alone is always taken).
    pub max_inflight: usize,
    /// Most queries the worker takes into one batch.
    pub max_batch: usize,
    /// How long the worker waits for more requests after the first of a batch.
    pub batch_wait: Duration,
    /// How long a client may take to send a request's header (the connection is closed after it);
    /// also how long an idle connection is kept.
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body (408 after it).
    pub body_timeout: Duration,
    /// How long SIGTERM waits for the requests in flight before the service exits anyway.
    pub shutdown_timeout: Duration,
    /// How often the manifest is checked for a new commit (zero: never; SIGHUP still checks).
    pub reload_interval: Duration,
    /// A file to write the service's address into once it listens (`http://HOST:PORT`), for scripts
    /// that start it with port 0.
    pub addr_file: Option<std::path::PathBuf>,
}

/// A request's queries: texts to encode, or vectors (row-major, the index's dimension each).
#[derive(Debug)]
pub enum Queries {
    Texts(Vec<String>),
    Vectors(Vec<f32>),
}

impl Queries {
    fn len(&self, dim: usize) -> usize {
        match self {
            Queries::Texts(t) => t.len(),
            Queries::Vectors(v) => v.len() / dim.max(1),
        }
    }
}

/// A search request, parsed and checked against the limits and the index it will search.
#[derive(Debug)]
pub struct SearchAsk {
    pub queries: Queries,
    pub k: usize,
    pub mode: SearchMode,
    /// `queries` or `vectors` was given: the answer is a list of lists.
    pub several: bool,
    /// Include each passage's title and text.
    pub text: bool,
}

/// An embedding request, parsed and checked.
#[derive(Debug)]
pub struct EmbedAsk {
    pub kind: Kind,
    pub texts: Vec<String>,
}

/// What a request asks the worker to do.
enum Work {
    Search(SearchAsk),
    Embed(EmbedAsk),
}

impl Work {
    fn size(&self, dim: usize) -> usize {
        match self {
            Work::Search(a) => a.queries.len(dim),
            Work::Embed(a) => a.texts.len(),
        }
    }
}

struct Job {
    work: Work,
    queued: Instant,
    reply: oneshot::Sender<Result<Done, Failure>>,
}

/// A job's answer, with the batch's timings and the index generation that answered it.
struct Done {
    served: Arc<Served>,
    /// Search: one list per query. Embed: empty.
    hits: Vec<Vec<Hit>>,
    /// Embed: one vector per text.
    vectors: Vec<Vec<f32>>,
    queue_ms: f64,
    encode_ms: f64,
    search_ms: f64,
    batch: usize,
}

/// Why a job failed: the status it answers.
struct Failure {
    status: StatusCode,
    msg: String,
}

/// One opened generation of the index, as served.
struct Served {
    searcher: Searcher,
    /// The longest passage id, in bytes: bounds a hit's size in an answer.
    max_id: usize,
}

impl Served {
    fn new(searcher: Searcher) -> Self {
        let max_id = searcher
            .index
            .ids
            .iter()
            .map(|i| i.len())
            .max()
            .unwrap_or(0);
        Served { searcher, max_id }
    }

    /// An upper bound of one hit's bytes in an answer without text: `{"docid":"…","score":…,"rank":…},`
    /// with an id escaped at worst 6 bytes a byte.
    fn hit_bytes(&self) -> usize {
        64 + 6 * self.max_id
    }
}

struct App {
    current: RwLock<Arc<Served>>,
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    metrics: Arc<Metrics>,
    opts: ServeOptions,
    budget: Arc<Budget>,
    /// Why the last reload failed, while the generation it tried is the manifest's.
    reload_error: Mutex<Option<String>>,
    /// SIGHUP: check the manifest now.
    check_now: AtomicBool,
    stop: AtomicBool,
}

impl App {
    /// The generation served now.
    fn served(&self) -> Arc<Served> {
        self.current.read().unwrap().clone()
    }
}

/// Runs the service until SIGTERM or Ctrl-C, then answers the requests in flight (for at most
/// `shutdown_timeout`) and returns.
pub fn serve(searcher: Searcher, opts: ServeOptions) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<Job>();
    let app = Arc::new(App {
        current: RwLock::new(Arc::new(Served::new(searcher))),
        queue: Mutex::new(Some(tx)),
        metrics: Arc::new(Metrics::default()),
        budget: Budget::new(opts.max_inflight),
        opts: opts.clone(),
        reload_error: Mutex::new(None),
        check_now: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let worker = {
        let app = app.clone();
        std::thread::Builder::new()
            .name("batcher".into())
            .spawn(move || run_worker(&app, rx))?
    };
    let keeper = {
        let app = app.clone();
        std::thread::Builder::new()
            .name("housekeeping".into())
            .spawn(move || housekeeping(&app))?
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let drained = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(opts.addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", opts.addr))?;
        let addr = listener.local_addr()?;
        let url = write_addr_file(addr, opts.addr_file.as_deref())?;
        {
            let served = app.served();
            let s = &served.searcher;
            let m = &s.index.manifest;
            eprintln!(
                "serving {} ({} passages, dim {}, {}) on {url}/  (POST /search /embed; GET /health /info /metrics)",
                s.index.dir.display(),
                m.count,
                m.dim,
                s.mode
            );
        }
        let router = Router::new()
            .route("/", get(page).post(embed))
            .route("/search", post(search))
            .route("/embed", post(embed))
            .route("/v1/embeddings", post(openai_embeddings))
            .route("/health", get(health))
            .route("/info", get(info))
            .route("/metrics", get(metrics))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(opts.max_body))
            .layer(middleware::from_fn_with_state(app.metrics.clone(), track))
            .with_state(app.clone());
        let hup = {
            let app = app.clone();
            tokio::spawn(async move {
                use tokio::signal::unix::{signal, SignalKind};
                if let Ok(mut s) = signal(SignalKind::hangup()) {
                    while s.recv().await.is_some() {
                        app.check_now.store(true, Ordering::Relaxed);
                    }
                }
            })
        };
        let drained = accept_loop(listener, router, &opts).await;
        hup.abort();
        anyhow::Ok(drained)
    })?;
    // Tasks still running after the bound (a connection cut, a passage read) are not waited for.
    rt.shutdown_timeout(Duration::from_millis(100));
    // Close the queue: the worker ends after its batch.
    app.queue.lock().unwrap().take();
    app.stop.store(true, Ordering::Relaxed);
    let _ = keeper.join();
    if drained {
        let _ = worker.join();
    }
    eprintln!("stopped");
    Ok(())
}

/// The service's URL (`http://HOST:PORT`, the machine's host name when it listens on every
/// address), written into `path` if given (whole or not at all: a temporary file renamed).
pub(crate) fn write_addr_file(addr: SocketAddr, path: Option<&Path>) -> anyhow::Result<String> {
    let host = if addr.ip().is_unspecified() {
        host_name()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    let url = format!("http://{host}:{}", addr.port());
    if let Some(path) = path {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, format!("{url}\n"))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| anyhow::anyhow!("cannot write --addr-file {}: {e}", path.display()))?;
    }
    Ok(url)
}

/// This machine's host name (`localhost` when it has none).
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // Safety: gethostname writes at most `buf.len()` bytes into the buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(h) if rc == 0 && !h.is_empty() => h.to_string(),
        _ => "localhost".to_string(),
    }
}

/// Accepts connections until SIGTERM or Ctrl-C, then lets each finish the request it is on, for at
/// most `shutdown_timeout`. True when every connection ended in time.
pub(crate) async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    opts: &ServeOptions,
) -> bool {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors or the like: wait a little instead of spinning.
                        eprintln!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(router.clone());
                let mut stop = stop_rx.clone();
                let header_timeout = opts.header_timeout;
                conns.spawn(async move {
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    let stopped = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stopped => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let wait = async { while conns.join_next().await.is_some() {} };
    match tokio::time::timeout(opts.shutdown_timeout, wait).await {
        Ok(()) => true,
        Err(_) => {
            eprintln!(
                "{} connection(s) still open after {:.1} s (--shutdown-timeout): closing them",
                conns.len(),
                opts.shutdown_timeout.as_secs_f64()
            );
            conns.abort_all();
            false
        }
    }
}

pub(crate) async fn shutdown_signal() {
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
// Memory in flight

/// The bytes of requests and answers in flight, against `max`.
pub(crate) struct Budget {
    pub(crate) used: AtomicUsize,
    pub(crate) max: usize,
    /// A large hold was released since the last trim.
    freed: AtomicBool,
}

/// A hold of `bytes` of the budget, released when dropped (with the answer it belongs to, once sent).
pub(crate) struct Hold {
    budget: Arc<Budget>,
    pub(crate) bytes: usize,
}

/// Releasing a hold this large asks the housekeeping thread to hand freed memory back.
const TRIM_AFTER: usize = 4 << 20;

impl Budget {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            max,
            freed: AtomicBool::new(false),
        })
    }

    /// Holds `bytes`, if they fit beside what is held (or nothing is).
    pub(crate) fn take(self: &Arc<Self>, bytes: usize) -> Option<Hold> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u == 0 || u.saturating_add(bytes) <= self.max).then_some(u + bytes)
            })
            .ok()
            .map(|_| Hold {
                budget: self.clone(),
                bytes,
            })
    }
}

impl Hold {
    /// Grows the hold to `bytes`, if they fit beside the others' (or this hold is alone).
    pub(crate) fn grow_to(&mut self, bytes: usize) -> bool {
        if bytes <= self.bytes {
            return true;
        }
        let more = bytes - self.bytes;
        let mine = self.bytes;
        let max = self.budget.max;
        let ok = self
            .budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u == mine || u.saturating_add(more) <= max).then_some(u + more)
            })
            .is_ok();
        if ok {
            self.bytes = bytes;
        }
        ok
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        if self.bytes >= TRIM_AFTER {
            self.budget.freed.store(true, Ordering::Relaxed);
        }
    }
}

/// An answer's bytes, written into an anonymous memory map: its pages are taken as they are written
/// and all given back to the system when the answer is dropped (the heap would keep most of what a
/// large answer freed). Holds its share of the budget until then.
pub(crate) struct Answer {
    map: memmap2::MmapMut,
    len: usize,
    /// A write did not fit the map.
    overflow: bool,
    hold: Hold,
}

impl Answer {
    /// A buffer for at most `cap` bytes.
    pub(crate) fn new(cap: usize, hold: Hold) -> Result<Self, Response> {
        let map = memmap2::MmapMut::map_anon(cap.max(1)).map_err(|e| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot map {cap} bytes for the answer: {e}"),
            )
        })?;
        Ok(Answer {
            map,
            len: 0,
            overflow: false,
            hold,
        })
    }

    /// Counts the pages written in the hold: false when they no longer fit the budget.
    pub(crate) fn account(&mut self) -> bool {
        self.hold.grow_to(self.len.next_multiple_of(4096))
    }

    pub(crate) fn into_response(self) -> Response {
        // The hold has grown with every check; what the last bytes add is within one page.
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            Body::from(Bytes::from_owner(self)),
        )
            .into_response()
    }
}

impl std::io::Write for Answer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let end = self.len + buf.len();
        if end > self.map.len() {
            self.overflow = true;
            return Err(std::io::Error::other("the answer is larger than its limit"));
        }
        self.map[self.len..end].copy_from_slice(buf);
        self.len = end;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl AsRef<[u8]> for Answer {
    fn as_ref(&self) -> &[u8] {
        &self.map[..self.len]
    }
}

/// Hands memory freed by large answers back to the system (glibc keeps freed heap memory
/// otherwise: the binaries ask it to, for the encoder's sake).
pub(crate) fn trim_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // Safety: malloc_trim only returns free memory of malloc's arenas to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

// ---------------------------------------------------------------------------------------------
// Housekeeping: new commits of the index, freed memory

/// What identifies the manifest file on disk: a commit replaces it (a rename: a new inode).
fn manifest_stamp(dir: &Path) -> Option<(u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir.join(MANIFEST)).ok()?;
    Some((m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

fn housekeeping(app: &App) {
    const TICK: Duration = Duration::from_millis(100);
    let dir = app.served().searcher.index.dir.clone();
    let mut seen = manifest_stamp(&dir);
    let mut last_check = Instant::now();
    while !app.stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        if app.budget.freed.swap(false, Ordering::Relaxed) {
            trim_memory();
        }
        let forced = app.check_now.swap(false, Ordering::Relaxed);
        let interval = app.opts.reload_interval;
        if !forced && (interval.is_zero() || last_check.elapsed() < interval) {
            continue;
        }
        last_check = Instant::now();
        let stamp = manifest_stamp(&dir);
        if stamp == seen && !forced {
            continue;
        }
        seen = stamp;
        reload(app);
    }
}

/// Opens the generation the manifest names now, whole, and serves it from the next batch on; if it
/// cannot be opened, the one served stays and the failure is reported.
fn reload(app: &App) {
    let old = app.served();
    let dir = &old.searcher.index.dir;
    let now = match engine::store::manifest::Manifest::read(dir) {
        Ok(m) => m,
        Err(e) => return reload_failed(app, e.to_string()),
    };
    if now.checksum == old.searcher.index.manifest.checksum {
        *app.reload_error.lock().unwrap() = None;
        return;
    }
    match old.searcher.reopen() {
        Ok(s) => {
            let m = &s.index.manifest;
            eprintln!(
                "serving {} generation {} ({} passages, dim {}, {}) from the next batch on",
                dir.display(),
                m.data,
                m.count,
                m.dim,
                s.mode
            );
            *app.current.write().unwrap() = Arc::new(Served::new(s));
            *app.reload_error.lock().unwrap() = None;
            app.metrics.reloads.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => reload_failed(app, e.to_string()),
    }
}

fn reload_failed(app: &App, msg: String) {
    let served = app.served();
    let msg = format!(
        "the index's new commit cannot be opened ({msg}); still serving generation {}",
        served.searcher.index.manifest.data
    );
    eprintln!("{msg}");
    app.metrics.reload_failures.fetch_add(1, Ordering::Relaxed);
    *app.reload_error.lock().unwrap() = Some(msg);
}

// ---------------------------------------------------------------------------------------------
// The worker

fn run_worker(app: &App, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        // The generation this batch runs on: a reload takes effect between batches.
        let served = app.served();
        let dim = served.searcher.index.manifest.dim;
        let mut jobs = vec![first];
        let mut size = jobs[0].work.size(dim);
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
                    size += j.work.size(dim);
                    jobs.push(j);
                }
                None => break,
            }
        }
        app.metrics
            .queue_depth
            .fetch_sub(jobs.len() as i64, Ordering::Relaxed);
        app.metrics.batch_sizes.lock().unwrap().observe(size as f64);
        run_isolated(&served, jobs);
    }
}

/// Runs the jobs as one batch; if the batch fails (or panics), runs each job alone, so that one
/// request's failure is its answer only.
fn run_isolated(served: &Arc<Served>, jobs: Vec<Job>) {
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run_batch(served, &jobs)));
    let failure = match outcome {
        Ok(Ok(answers)) => {
            let batch = jobs
                .iter()
                .map(|j| j.work.size(served.searcher.index.manifest.dim))
                .sum();
            let (lists, encode_ms, search_ms) = answers;
            for (j, (hits, vectors)) in jobs.into_iter().zip(lists) {
                let _ = j.reply.send(Ok(Done {
                    served: served.clone(),
                    hits,
                    vectors,
                    queue_ms: (started - j.queued).as_secs_f64() * 1e3,
                    encode_ms,
                    search_ms,
                    batch,
                }));
            }
            return;
        }
        Ok(Err(e)) => Failure {
            status: match e {
                engine::Error::Usage(_) => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            msg: e.to_string(),
        },
        Err(panic) => Failure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            msg: format!(
                "the search failed unexpectedly: {}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic")
            ),
        },
    };
    if jobs.len() > 1 {
        for j in jobs {
            run_isolated(served, vec![j]);
        }
    } else {
        for j in jobs {
            let _ = j.reply.send(Err(Failure {
                status: failure.status,
                msg: failure.msg.clone(),
            }));
        }
    }
}

/// Each job's hits and vectors, with the batch's encode and search times.
type BatchAnswers = (Vec<(Vec<Vec<Hit>>, Vec<Vec<f32>>)>, f64, f64);

/// Encodes every text of the batch (one call per kind), searches each (k, mode) group in one call.
fn run_batch(served: &Served, jobs: &[Job]) -> engine::Result<BatchAnswers> {
    let s = &served.searcher;
    let dim = s.index.manifest.dim;
    // Texts to encode, by kind: (job, position in job).
    let mut texts: [Vec<Doc>; 2] = [Vec::new(), Vec::new()];
    let mut at: [Vec<(usize, usize)>; 2] = [Vec::new(), Vec::new()];
    for (ji, j) in jobs.iter().enumerate() {
        match &j.work {
            Work::Search(a) => {
                if let Queries::Texts(ts) = &a.queries {
                    for (qi, t) in ts.iter().enumerate() {
                        texts[0].push(Doc::query(t));
                        at[0].push((ji, qi));
                    }
                }
            }
            Work::Embed(a) => {
                let slot = if a.kind == Kind::Query { 0 } else { 1 };
                for (qi, t) in a.texts.iter().enumerate() {
                    texts[slot].push(Doc::new(None, t));
                    at[slot].push((ji, qi));
                }
            }
        }
    }
    let t = Instant::now();
    // Encoded texts, by job: one row-major block each.
    let mut encoded: Vec<Vec<f32>> = jobs
        .iter()
        .map(|j| match &j.work {
            Work::Search(SearchAsk {
                queries: Queries::Texts(ts),
                ..
            }) => vec![0.0; ts.len() * dim],
            Work::Embed(a) => vec![0.0; a.texts.len() * dim],
            _ => Vec::new(),
        })
        .collect();
    for (slot, kind) in [(0, Kind::Query), (1, Kind::Passage)] {
        if texts[slot].is_empty() {
            continue;
        }
        let flat = s.encoder()?.encode(kind, &texts[slot])?;
        for (&(ji, qi), v) in at[slot].iter().zip(flat.chunks(dim)) {
            encoded[ji][qi * dim..(qi + 1) * dim].copy_from_slice(v);
        }
    }
    let encode_ms = t.elapsed().as_secs_f64() * 1e3;
    // Searches: the jobs' queries grouped by (k, mode).
    let t = Instant::now();
    let mut hits: Vec<Vec<Vec<Hit>>> = jobs.iter().map(|_| Vec::new()).collect();
    let mut groups: BTreeMap<(usize, String), Vec<usize>> = BTreeMap::new();
    for (ji, j) in jobs.iter().enumerate() {
        if let Work::Search(a) = &j.work {
            groups
                .entry((a.k, a.mode.to_string()))
                .or_default()
                .push(ji);
        }
    }
    let queries_of = |ji: usize| -> &[f32] {
        match &jobs[ji].work {
            Work::Search(SearchAsk {
                queries: Queries::Vectors(v),
                ..
            }) => v,
            _ => &encoded[ji],
        }
    };
    for ((k, _), members) in groups {
        let Work::Search(first) = &jobs[members[0]].work else {
            unreachable!("groups hold search jobs")
        };
        let flat: Vec<f32> = if members.len() == 1 {
            queries_of(members[0]).to_vec()
        } else {
            members
                .iter()
                .flat_map(|&ji| queries_of(ji).iter().copied())
                .collect()
        };
        let mut found = s.index.search(&flat, k, first.mode)?.into_iter();
        for &ji in &members {
            let n = queries_of(ji).len() / dim.max(1);
            hits[ji] = found.by_ref().take(n).collect();
        }
    }
    let search_ms = t.elapsed().as_secs_f64() * 1e3;
    let lists = jobs
        .iter()
        .zip(hits)
        .zip(encoded)
        .map(|((j, h), e)| match &j.work {
            Work::Embed(_) => (h, e.chunks(dim.max(1)).map(<[f32]>::to_vec).collect()),
            Work::Search(_) => (h, Vec::new()),
        })
        .collect();
    Ok((lists, encode_ms, search_ms))
}

// ---------------------------------------------------------------------------------------------
// Requests

/// A JSON error response.
pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    let msg = msg.into();
    (
        status,
        Json(json!({"error": msg, "status": status.as_u16()})),
    )
        .into_response()
}

/// 503: the requests in flight hold the memory the service may use.
fn busy(app: &App) -> Response {
    busy_with(&app.budget)
}

pub(crate) fn busy_with(budget: &Budget) -> Response {
    retry_soon(format!(
        "the service is busy: the requests in flight hold {} MiB of the {} MiB it may use (--max-inflight-mb); retry shortly",
        budget.used.load(Ordering::Relaxed) >> 20,
        budget.max >> 20
    ))
}

/// A 503 that tells the client to come back in a second (`Retry-After: 1`).
pub(crate) fn retry_soon(msg: impl Into<String>) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, msg);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Reads a request's body, within `--body-timeout` (408) and `--max-body` (413), holding its bytes
/// of the budget first (503 when they do not fit).
async fn read_body(app: &Arc<App>, req: Request) -> Result<(Bytes, Hold), Response> {
    read_body_within(&app.budget, &app.opts, req).await
}

pub(crate) async fn read_body_within(
    budget: &Arc<Budget>,
    opts: &ServeOptions,
    req: Request,
) -> Result<(Bytes, Hold), Response> {
    let max = opts.max_body;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {max} bytes (--max-body)"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    // A body past the limit is read up to it before the 413 (a client still sending it would
    // otherwise see its connection reset instead of the answer).
    let Some(hold) = budget.take(declared.unwrap_or(max).min(max)) else {
        return Err(busy_with(budget));
    };
    let read = tokio::time::timeout(opts.body_timeout, Bytes::from_request(req, &())).await;
    let body = match read {
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:.1} s (--body-timeout)",
                    opts.body_timeout.as_secs_f64()
                ),
            ))
        }
        Ok(Err(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
        Ok(Err(e)) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {}", e.body_text()),
            ))
        }
        Ok(Ok(b)) => b,
    };
    Ok((body, hold))
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
        Ok(Err(f)) => Err(error(f.status, f.msg)),
        Err(_) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the search worker stopped",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchRequest {
    pub(crate) query: Option<String>,
    pub(crate) queries: Option<Vec<String>>,
    pub(crate) vector: Option<Vec<f32>>,
    pub(crate) vectors: Option<Vec<Vec<f32>>>,
    pub(crate) k: Option<usize>,
    pub(crate) exact: Option<bool>,
    pub(crate) ef: Option<usize>,
    /// Include each passage's title and text (default true).
    pub(crate) text: Option<bool>,
}

/// A `/search` body parsed and checked against the limits and the vectors' dimension: what the
/// single server and the front over shards check alike, before the search mode and the encoder.
pub(crate) struct CheckedSearch {
    pub(crate) queries: Queries,
    pub(crate) count: usize,
    pub(crate) k: usize,
    /// `queries` or `vectors` was given: the answer is a list of lists.
    pub(crate) several: bool,
    pub(crate) text: bool,
    pub(crate) exact: Option<bool>,
    pub(crate) ef: Option<usize>,
}

/// Parses `body` and checks it (400 malformed, 413 over a limit, 422 k, an empty query, a vector of
/// another dimension or one that cannot be scored). `whose` follows each limit's flag in the
/// messages (the front's limits are also its shards').
pub(crate) fn check_search(
    body: &[u8],
    opts: &ServeOptions,
    dim: usize,
    whose: &str,
) -> Result<CheckedSearch, Response> {
    let req: SearchRequest = serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("malformed request: {e}")))?;
    let given = [
        req.query.is_some(),
        req.queries.is_some(),
        req.vector.is_some(),
        req.vectors.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "give exactly one of `query`, `queries`, `vector` or `vectors`",
        ));
    }
    let several = req.queries.is_some() || req.vectors.is_some();
    let count = if let Some(q) = &req.queries {
        q.len()
    } else if let Some(v) = &req.vectors {
        v.len()
    } else {
        1
    };
    if count == 0 {
        return Err(error(StatusCode::UNPROCESSABLE_ENTITY, "no queries given"));
    }
    if count > opts.max_queries {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{count} queries in one request; at most {} (--max-queries{whose})",
                opts.max_queries
            ),
        ));
    }
    let k = req.k.unwrap_or(10);
    if k == 0 || k > opts.max_k {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "k must be between 1 and {} (--max-k{whose}); got {k}",
                opts.max_k
            ),
        ));
    }
    if count.saturating_mul(k) > opts.max_hits {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{count} queries x k {k} = {} hits in one request; at most {} (--max-hits{whose}): \
                 send fewer queries a request or a smaller k",
                count * k,
                opts.max_hits
            ),
        ));
    }
    let queries = if let Some(t) = req.query {
        Queries::Texts(vec![t])
    } else if let Some(ts) = req.queries {
        Queries::Texts(ts)
    } else {
        let vs = match (req.vector, req.vectors) {
            (Some(v), _) => vec![v],
            (None, vs) => vs.unwrap_or_default(),
        };
        let mut flat = Vec::with_capacity(vs.len() * dim);
        for (i, v) in vs.iter().enumerate() {
            if v.len() != dim {
                return Err(error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "vector {i} has {} values; the index holds dimension {dim}",
                        v.len()
                    ),
                ));
            }
            flat.extend_from_slice(v);
        }
        // Non-finite values, all zeros, lengths whose scores could overflow: the query's fault.
        engine::index::check_query_vectors(&flat, dim)
            .map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
        Queries::Vectors(flat)
    };
    if let Queries::Texts(ts) = &queries {
        if let Some(i) = ts.iter().position(|t| t.trim().is_empty()) {
            return Err(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("query {i} is empty"),
            ));
        }
    }
    Ok(CheckedSearch {
        queries,
        count,
        k,
        several,
        text: req.text.unwrap_or(true),
        exact: req.exact,
        ef: req.ef,
    })
}

/// Parses and checks a `/search` body against the limits and the index `s`: the request, or the
/// error response it gets (400 malformed, 413 over a limit, 422 not searchable as asked).
pub fn parse_search(body: &[u8], opts: &ServeOptions, s: &Searcher) -> Result<SearchAsk, Response> {
    let c = check_search(body, opts, s.index.manifest.dim, "")?;
    if let Queries::Texts(_) = &c.queries {
        if let Err(e) = s.encoder() {
            return Err(error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()));
        }
    }
    let mode = if c.exact.unwrap_or(false) {
        SearchMode::Exact
    } else if let Some(ef) = c.ef {
        s.graph_mode(ef)
            .map_err(|why| error(StatusCode::UNPROCESSABLE_ENTITY, why))?
    } else {
        // The service's own default: `--exact`, `--ef N`, or the graph at its default ef.
        s.mode
    };
    if matches!(mode, SearchMode::Hnsw { .. }) {
        if let Err(e) = s.index.graph() {
            return Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
        }
    }
    Ok(SearchAsk {
        queries: c.queries,
        k: c.k,
        mode,
        several: c.several,
        text: c.text,
    })
}

async fn search(State(app): State<Arc<App>>, req: Request) -> Response {
    let t = Instant::now();
    let (body, mut hold) = match read_body(&app, req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let served = app.served();
    let ask = match parse_search(&body, &app.opts, &served.searcher) {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    drop(body);
    // The answer's size without text is bounded before any work; text is counted as it is read.
    let m = &served.searcher.index.manifest;
    let hits = ask.queries.len(m.dim) * ask.k.min(m.count);
    let least = hits.saturating_mul(served.hit_bytes()).saturating_add(256);
    if least > app.opts.max_answer {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "an answer of {hits} hits could take {least} bytes; at most {} (--max-answer-mb): \
                 send fewer queries a request or a smaller k",
                app.opts.max_answer
            ),
        );
    }
    if !hold.grow_to(hold.bytes.saturating_add(least)) {
        return busy(&app);
    }
    let (several, with_text, mode) = (ask.several, ask.text, ask.mode);
    let done = match submit(&app, Work::Search(ask)).await {
        Ok(d) => d,
        Err(resp) => return resp,
    };
    let max_answer = app.opts.max_answer;
    let format = move || {
        let mut out = Answer::new(max_answer.saturating_add(1), hold)?;
        write_answer(&mut out, &done, several, with_text, mode, t, max_answer).map(|()| out)
    };
    // Passage text is read from the collection: blocking file reads, off the async threads. Without
    // it the answer is ids and scores from memory, written here (a hand-off to the blocking pool
    // cost two thread wake-ups a request).
    let formatted = if with_text {
        tokio::task::spawn_blocking(format).await
    } else {
        Ok(format())
    };
    match formatted {
        Ok(Ok(out)) => out.into_response(),
        Ok(Err(resp)) => resp,
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "formatting the answer failed",
        ),
    }
}

/// Writes a search answer as JSON into `out`: 413 past `max_answer` bytes, 503 when its pages no
/// longer fit the budget beside the other requests'.
fn write_answer(
    out: &mut Answer,
    done: &Done,
    several: bool,
    with_text: bool,
    mode: SearchMode,
    t: Instant,
    max_answer: usize,
) -> Result<(), Response> {
    let s = &done.served.searcher;
    // Rows are numbered in the whole collection (a shard's start added), as the front merges them.
    let first_row = s.index.manifest.shard.as_ref().map_or(0, |sh| sh.start);
    let check = |out: &mut Answer| -> Result<(), Response> {
        if out.overflow || out.len > max_answer {
            Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the answer with the passages' text passes {max_answer} bytes (--max-answer-mb): \
                     ask for fewer hits, or `\"text\": false`"
                ),
            ))
        } else if !out.account() {
            Err(retry_soon(
                "the service is busy: the answers in flight hold the memory it may use \
                 (--max-inflight-mb); retry shortly",
            ))
        } else {
            Ok(())
        }
    };
    let _ = out.write_all(b"{\"hits\":");
    if several {
        let _ = out.write_all(b"[");
    }
    for (li, list) in done.hits.iter().enumerate() {
        let _ = out.write_all(if li > 0 { b",[" } else { b"[" });
        for (rank, h) in list.iter().enumerate() {
            if rank > 0 {
                let _ = out.write_all(b",");
            }
            let _ = out.write_all(b"{\"docid\":");
            let _ = serde_json::to_writer(&mut *out, &s.index.ids[h.row]);
            let _ = out.write_all(b",\"score\":");
            let _ = serde_json::to_writer(&mut *out, &h.score);
            let _ = write!(out, ",\"rank\":{},\"row\":{}", rank + 1, first_row + h.row);
            if with_text {
                if let Ok(rec) = s.index.passage(h.row) {
                    let _ = out.write_all(b",\"title\":");
                    let _ = serde_json::to_writer(&mut *out, &rec.title);
                    let _ = out.write_all(b",\"text\":");
                    let _ = serde_json::to_writer(&mut *out, &rec.text);
                }
            }
            let _ = out.write_all(b"}");
            check(out)?;
        }
        let _ = out.write_all(b"]");
    }
    if several {
        let _ = out.write_all(b"]");
    }
    let took = json!({
        "queue": round(done.queue_ms),
        "encode": round(done.encode_ms),
        "search": round(done.search_ms),
        "total": round(t.elapsed().as_secs_f64() * 1e3),
        "batch": done.batch,
    });
    let _ = out.write_all(b",\"mode\":");
    let _ = serde_json::to_writer(&mut *out, &mode.to_string());
    let _ = out.write_all(b",\"took_ms\":");
    let _ = serde_json::to_writer(&mut *out, &took);
    let _ = out.write_all(b"}");
    check(out)
}

pub(crate) fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// Parses and checks an `/embed` (or TEI `POST /`) body: the request, or the error response it
/// gets (see `compat::parse_tei`).
pub fn parse_embed(body: &[u8], opts: &ServeOptions, s: &Searcher) -> Result<EmbedAsk, Response> {
    let t = crate::compat::parse_tei(
        body,
        opts.max_queries,
        s.encoder().map_err(|e| e.to_string()),
    )?;
    Ok(EmbedAsk {
        kind: t.kind,
        texts: t.texts,
    })
}

async fn embed(State(app): State<Arc<App>>, req: Request) -> Response {
    let (body, mut hold) = match read_body(&app, req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let served = app.served();
    let ask = match parse_embed(&body, &app.opts, &served.searcher) {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    drop(body);
    // Each value takes at most ~16 bytes of JSON.
    let size = ask.texts.len() * (served.searcher.index.manifest.dim * 16 + 2) + 2;
    if size > app.opts.max_answer {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} vectors could take {size} bytes; at most {} (--max-answer-mb)",
                ask.texts.len(),
                app.opts.max_answer
            ),
        );
    }
    if !hold.grow_to(hold.bytes + size) {
        return busy(&app);
    }
    let done = match submit(&app, Work::Embed(ask)).await {
        Ok(d) => d,
        Err(resp) => return resp,
    };
    let mut out = match Answer::new(size, hold) {
        Ok(o) => o,
        Err(resp) => return resp,
    };
    match serde_json::to_writer(&mut out, &done.vectors) {
        Ok(()) => out.into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /v1/embeddings`: OpenAI's embeddings API (see `compat`), errors in its shape.
async fn openai_embeddings(State(app): State<Arc<App>>, req: Request) -> Response {
    crate::compat::as_openai(openai_inner(app, req).await).await
}

async fn openai_inner(app: Arc<App>, req: Request) -> Response {
    let (body, mut hold) = match read_body(&app, req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let served = app.served();
    let s = &served.searcher;
    let ask = match crate::compat::parse_openai(
        &body,
        app.opts.max_queries,
        s.encoder().map_err(|e| e.to_string()),
    ) {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    drop(body);
    let dim = s.index.manifest.dim;
    let size = ask.texts.texts.len() * (dim * 16 + 64) + 256;
    if size > app.opts.max_answer {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} vectors could take {size} bytes; at most {} (--max-answer-mb)",
                ask.texts.texts.len(),
                app.opts.max_answer
            ),
        );
    }
    if !hold.grow_to(hold.bytes + size) {
        return busy(&app);
    }
    let work = Work::Embed(EmbedAsk {
        kind: ask.texts.kind,
        texts: ask.texts.texts.clone(),
    });
    let done = match submit(&app, work).await {
        Ok(d) => d,
        Err(resp) => return resp,
    };
    let flat: Vec<f32> = done.vectors.concat();
    let model = s
        .index
        .manifest
        .model
        .as_ref()
        .map_or("", |m| m.spec.as_str());
    let resp = crate::compat::openai_answer(&ask, &flat, dim, model);
    drop(hold);
    resp
}

/// Which generation is served, and whether the manifest's newest commit could not be opened.
fn generation(app: &App) -> serde_json::Value {
    let served = app.served();
    let m = &served.searcher.index.manifest;
    json!({
        "generation": m.data,
        "manifest_checksum": m.checksum,
        "reload_error": *app.reload_error.lock().unwrap(),
    })
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let mut v = generation(&app);
    v["status"] = json!("ok");
    Json(v).into_response()
}

/// The rows of the whole collection an index holds: `{start, end, total}` (a shard's, or all).
pub(crate) fn rows_of(m: &engine::store::manifest::Manifest) -> serde_json::Value {
    match &m.shard {
        Some(sh) => json!({"start": sh.start, "end": sh.end, "total": sh.total}),
        None => json!({"start": 0, "end": m.count, "total": m.count}),
    }
}

async fn info(State(app): State<Arc<App>>) -> Response {
    let served = app.served();
    let s = &served.searcher;
    let m = &s.index.manifest;
    let mut v = json!({
        "index": s.index.dir.display().to_string(),
        "model": m.model.as_ref().map(|x| x.spec.clone()),
        "model_fingerprint": m.model.as_ref().map(|x| x.fingerprint.clone()),
        "input_format": m.input_format,
        "pooling": m.pooling,
        "precision": m.precision,
        "count": m.count,
        "rows": rows_of(m),
        "dim": m.dim,
        "dtype": m.dtype,
        "hnsw": m.hnsw,
        "default_mode": s.mode.to_string(),
        "reloads": app.metrics.reloads.load(Ordering::Relaxed),
        "limits": {
            "max_body": app.opts.max_body,
            "max_queries": app.opts.max_queries,
            "max_k": app.opts.max_k,
            "max_hits": app.opts.max_hits,
            "max_answer": app.opts.max_answer,
            "max_inflight": app.opts.max_inflight,
            "header_timeout_s": app.opts.header_timeout.as_secs_f64(),
            "body_timeout_s": app.opts.body_timeout.as_secs_f64(),
            "shutdown_timeout_s": app.opts.shutdown_timeout.as_secs_f64(),
        },
    });
    for (key, value) in generation(&app).as_object().unwrap() {
        v[key] = value.clone();
    }
    Json(v).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(app.budget.used.load(Ordering::Relaxed)),
    )
        .into_response()
}

pub(crate) async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such route: POST /search /embed / /v1/embeddings; GET / /health /info /metrics",
    )
}

pub(crate) async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// Counts and latencies by route and status, the queue's depth, batch sizes and reloads, for
/// `/metrics`.
#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub(crate) latency: Mutex<BTreeMap<String, Histogram>>,
    pub(crate) queue_depth: AtomicI64,
    pub(crate) batch_sizes: Mutex<Histogram>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

pub(crate) struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

pub(crate) const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(SIZES)
    }
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub(crate) fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    pub(crate) fn render(&self, out: &mut String, name: &str, labels: &str) {
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
    pub(crate) fn record(&self, route: &str, status: u16, secs: f64) {
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

    pub(crate) fn render(&self, inflight_bytes: usize) -> String {
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
        out.push_str("# HELP simlm_inflight_bytes Bytes of requests and answers in flight.\n");
        out.push_str("# TYPE simlm_inflight_bytes gauge\n");
        let _ = writeln!(out, "simlm_inflight_bytes {inflight_bytes}");
        out.push_str("# HELP simlm_reloads_total New commits of the index switched to.\n");
        out.push_str("# TYPE simlm_reloads_total counter\n");
        let _ = writeln!(
            out,
            "simlm_reloads_total {}",
            self.reloads.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP simlm_reload_failures_total New commits of the index that could not be opened.\n",
        );
        out.push_str("# TYPE simlm_reload_failures_total counter\n");
        let _ = writeln!(
            out,
            "simlm_reload_failures_total {}",
            self.reload_failures.load(Ordering::Relaxed)
        );
        out
    }
}

/// Records every response's route, status and latency.
pub(crate) async fn track(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "other".to_string());
    let t = Instant::now();
    let resp = next.run(req).await;
    metrics.record(&route, resp.status().as_u16(), t.elapsed().as_secs_f64());
    resp
}
