//! `simlm-search`: answer queries against an index built by `simlm-index`: one query, a batch run
//! file, an interactive loop, or an HTTP service (`serve.rs`).

use searcher::{front, serve};

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use engine::index::{SearchMode, Searcher, SearcherOptions};
use engine::search::hnsw::DEFAULT_EF;
use engine::search::Hit;
use engine::store::output::Output;
use engine::{Doc, Kind};
use eval::{write_run_line, RunFormat};

#[derive(Parser)]
#[command(
    name = "simlm-search",
    version,
    about = "Search a dense-retrieval index"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one query: ranked ids, scores and passages.
    Query {
        #[command(flatten)]
        common: Common,
        /// The query.
        text: String,
        /// How many results (at least 1).
        #[arg(long, default_value_t = 10, value_parser = at_least_one)]
        k: usize,
    },
    /// Run a query file (or pre-encoded query vectors) and write a run file for simlm-eval.
    Batch {
        #[command(flatten)]
        common: Common,
        /// Queries: `qid<TAB>text` TSV or BEIR queries.jsonl (`_id`, `text`).
        #[arg(
            long,
            required_unless_present = "query_vectors",
            conflicts_with = "query_vectors"
        )]
        queries: Option<PathBuf>,
        /// Pre-encoded queries instead: an f32 or f16 .npy (queries x dimensions, C order), as
        /// Pyserini's --encoded-queries; no model is loaded.
        #[arg(long)]
        query_vectors: Option<PathBuf>,
        /// The ids of the --query-vectors rows, one a line (default: the row numbers 0..n-1).
        #[arg(long, requires = "query_vectors")]
        query_ids: Option<PathBuf>,
        /// How many results per query (at least 1).
        #[arg(long, default_value_t = 1000, value_parser = at_least_one)]
        k: usize,
        /// The run file to write.
        #[arg(long)]
        out: PathBuf,
        /// trec (6 columns) or msmarco (qid, pid, rank).
        #[arg(long, default_value_t = RunFormat::Trec)]
        run_format: RunFormat,
        /// The run's tag (TREC format).
        #[arg(long, default_value = "simlm")]
        tag: String,
    },
    /// An HTTP service: POST /search and /embed, GET / (a search page), /health, /info, /metrics.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on (port 0: any free port, printed at start).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        /// Largest request body, in bytes.
        #[arg(long, default_value_t = 1 << 20)]
        max_body: usize,
        /// Most queries (or texts to embed) in one request.
        #[arg(long, default_value_t = 256)]
        max_queries: usize,
        /// Largest k.
        #[arg(long, default_value_t = 1000)]
        max_k: usize,
        /// Most hits one request may ask for: its queries x k.
        #[arg(long, default_value_t = 100_000)]
        max_hits: usize,
        /// Largest answer, in MiB (the passages' text included).
        #[arg(long, default_value_t = 32)]
        max_answer_mb: usize,
        /// MiB of requests and answers in flight, all together; beyond, 503 with Retry-After.
        #[arg(long, default_value_t = 256)]
        max_inflight_mb: usize,
        /// Most queries encoded and searched together in one batch.
        #[arg(long, default_value_t = 256)]
        max_batch: usize,
        /// Milliseconds the batcher waits for more requests after the first of a batch (0: it takes
        /// what is queued; requests that arrive while a batch runs form the next one).
        #[arg(long, default_value_t = 0)]
        batch_wait_ms: u64,
        /// Seconds a client may take to send a request's header (then the connection is closed);
        /// also how long an idle connection is kept.
        #[arg(long, default_value_t = 30.0)]
        header_timeout: f64,
        /// Seconds a client may take to send a request's body (then 408).
        #[arg(long, default_value_t = 30.0)]
        body_timeout: f64,
        /// Seconds SIGTERM waits for the requests in flight before exiting anyway.
        #[arg(long, default_value_t = 10.0)]
        shutdown_timeout: f64,
        /// Seconds between checks of the index's manifest for a new commit (0: never; SIGHUP checks
        /// at once either way).
        #[arg(long, default_value_t = 1.0)]
        reload_interval: f64,
        /// Write the service's address (`http://HOST:PORT`) into this file once it listens.
        #[arg(long)]
        addr_file: Option<PathBuf>,
        /// (front) Answer from the shards that answered when one is down, naming the missing rows
        /// (default: 503 naming the shard).
        #[arg(long, requires = "shard")]
        allow_partial: bool,
        /// (front) Seconds a shard server may take to answer one request (then its next replica is
        /// tried).
        #[arg(long, default_value_t = 10.0)]
        shard_timeout: f64,
        /// (front) Seconds to wait at start for shard servers that do not answer yet.
        #[arg(long, default_value_t = 60.0)]
        shard_wait: f64,
    },
    /// An interactive loop (one query a line when stdin is not a terminal).
    Repl {
        #[command(flatten)]
        common: Common,
        /// How many results (at least 1).
        #[arg(long, default_value_t = 10, value_parser = at_least_one)]
        k: usize,
    },
}

#[derive(Args)]
struct Common {
    /// The index folder.
    #[arg(long, required_unless_present = "shard")]
    index: Option<PathBuf>,
    /// (serve) A shard server's URL: serve, as a front, the index split over these servers
    /// (`URL|URL` for replicas of one shard; once per shard).
    #[arg(long, value_name = "URL[|URL...]", conflicts_with = "index")]
    shard: Vec<String>,
    /// Search every vector instead of the HNSW graph.
    #[arg(long, conflicts_with = "ef")]
    exact: bool,
    /// HNSW search-time ef.
    #[arg(long)]
    ef: Option<usize>,
    /// Model folder or hub id, overriding the manifest's (it must be the same model).
    #[arg(long)]
    model: Option<String>,
    /// cpu | cuda | cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// Whether a command needs the index's encoder.
#[derive(Clone, Copy, PartialEq)]
enum Encoder {
    /// Text queries: an index without a model is refused.
    Required,
    /// Loaded when the index has a model (the service answers vectors either way).
    IfAny,
    /// Pre-encoded queries only: no model is loaded.
    No,
}

/// A count of at least 1 (`--k 0` would ask for an empty answer).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

fn open(c: &Common, encoder: Encoder) -> anyhow::Result<Searcher> {
    if let Some(t) = c.threads {
        // candle and rayon both read RAYON_NUM_THREADS; set before either starts its pool.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let opts = SearcherOptions {
        model: c.model.clone(),
        device: engine::parse_device(&c.device)?,
        exact: c.exact,
        ef: c.ef,
        encoder: encoder != Encoder::No,
    };
    let Some(index) = &c.index else {
        bail!("--shard is for `serve` only; give the index with --index");
    };
    let s = Searcher::open(index, &opts)?;
    if encoder == Encoder::Required {
        s.encoder()?;
    }
    Ok(s)
}

/// Answers one query: ranked results with their text, then the encode and search latencies.
fn answer(
    s: &Searcher,
    text: &str,
    k: usize,
    mode: SearchMode,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (hits, enc, search) = s.search(&[Doc::query(text)], k, mode)?;
    print_hits(s, &hits[0], out)?;
    writeln!(
        out,
        "     [encode {:.1} ms, search {:.1} ms]",
        enc * 1e3,
        search * 1e3
    )?;
    Ok(())
}

/// Prints ranked results with the passages' text; ids and scores alone (and one warning) when the
/// collection cannot be read.
fn print_hits(s: &Searcher, hits: &[Hit], out: &mut impl Write) -> anyhow::Result<()> {
    let mut warned = false;
    for (rank, h) in hits.iter().enumerate() {
        let id = printable(&s.index.ids[h.row]);
        writeln!(out, "{:>3}. {:<12} {:.4}", rank + 1, id, h.score)?;
        if warned {
            continue;
        }
        match s.index.passage(h.row) {
            Ok(rec) => {
                if let Some(t) = rec.title.as_deref().filter(|t| !t.is_empty()) {
                    writeln!(out, "     {}", trim(t, 100))?;
                }
                writeln!(out, "     {}", trim(&rec.text, 240))?;
            }
            Err(e) => {
                eprintln!("warning: passage text unavailable ({e}); showing ids and scores");
                warned = true;
            }
        }
    }
    Ok(())
}
/// At most `max` characters of `s`, made safe to print (see `printable`).
fn trim(s: &str, max: usize) -> String {
    let s = printable(s.trim());
    if s.chars().count() <= max {
        return s;
    }
    let cut: String = s.chars().take(max).collect();
    format!("{}...", cut.trim_end())
}

/// `s` with what a terminal would act on instead of showing written out: line breaks and tabs as
/// spaces, other control characters (escape sequences, bells, backspaces) and the bidirectional
/// overrides as `\u{..}`. A passage's text cannot then move the cursor, recolour the terminal or
/// reorder what is printed after it.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\t' | '\n' | '\r' => out.push(' '),
            c if c.is_control()
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&c.escape_unicode().to_string())
            }
            c => out.push(c),
        }
    }
    out
}

/// Where a batch's queries come from.
enum BatchQueries<'a> {
    Text(&'a Path),
    Vectors {
        path: &'a Path,
        ids: Option<&'a Path>,
    },
}

/// Encodes text queries, with a progress bar on a terminal.
fn encode_queries(s: &Searcher, qs: &[engine::corpus::Query]) -> anyhow::Result<Vec<f32>> {
    let enc = s.encoder()?;
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(qs.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "  queries [{bar:40}] {human_pos}/{human_len} ({per_sec}, eta {eta})",
            )
            .unwrap()
            .progress_chars("=> "),
        );
        Some(b)
    } else {
        None
    };
    // Every query is encoded first, then all are searched together, so that exact search streams
    // the matrix once per block of queries.
    let mut vecs: Vec<f32> = Vec::with_capacity(qs.len() * enc.dim());
    for block in qs.chunks(256) {
        let docs: Vec<Doc> = block.iter().map(|q| Doc::query(&q.text)).collect();
        vecs.extend(enc.encode(Kind::Query, &docs)?);
        if let Some(b) = &bar {
            b.set_position((vecs.len() / enc.dim()) as u64);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(vecs)
}

fn batch(
    s: &Searcher,
    queries: BatchQueries,
    k: usize,
    out: &Path,
    fmt: RunFormat,
    tag: &str,
) -> anyhow::Result<()> {
    let m = &s.index.manifest;
    // Every file the command reads is protected from --out.
    let mut inputs: Vec<PathBuf> = Vec::new();
    match &queries {
        BatchQueries::Text(p) => inputs.push(p.to_path_buf()),
        BatchQueries::Vectors { path, ids } => {
            inputs.push(path.to_path_buf());
            inputs.extend(ids.map(Path::to_path_buf));
        }
    }
    if let Some(src) = &m.sources {
        inputs.push(PathBuf::from(&src.collection.path));
        inputs.extend(src.titles.as_ref().map(|t| PathBuf::from(&t.path)));
    }
    if let Ok(enc) = s.encoder() {
        inputs.push(enc.files().weights.clone());
    }
    let input_refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    let out = Output::resolve(out, &input_refs)?;
    // Timed: the encoding of text queries and the search (for vectors, the search alone).
    let (qids, vecs, t) = match queries {
        BatchQueries::Vectors { path, ids } => {
            let (qids, vecs) = engine::corpus::read_query_vectors(path, ids, m.dim)?;
            (qids, vecs, Instant::now())
        }
        BatchQueries::Text(path) => {
            let qs = engine::corpus::read_queries(path)?;
            let t = Instant::now();
            let vecs = encode_queries(s, &qs)?;
            (qs.into_iter().map(|q| q.id).collect(), vecs, t)
        }
    };
    let mode = match s.mode {
        SearchMode::Hnsw { ef } if ef < k => {
            eprintln!("note: ef {ef} is below k {k}: the graph search keeps k = {k} candidates");
            SearchMode::Hnsw { ef: k }
        }
        m => m,
    };
    let results = s.index.search(&vecs, k, mode)?;
    let secs = t.elapsed().as_secs_f64();
    out.write(|w| {
        for (qid, hits) in qids.iter().zip(&results) {
            for (rank, h) in hits.iter().enumerate() {
                write_run_line(w, fmt, qid, &s.index.ids[h.row], rank + 1, h.score, tag)?;
            }
        }
        Ok(())
    })?;
    eprintln!(
        "{} queries ({}, k={k}) in {secs:.2} s ({:.1} queries/s); run written to {}",
        qids.len(),
        mode,
        qids.len() as f64 / secs.max(1e-9),
        out
    );
    Ok(())
}

const REPL_COMMANDS: &str = ":k N   :exact   :hnsw   :ef N   :help   :quit";
const REPL_HELP: &str = "type a query, or:  :k N   :exact   :hnsw   :ef N   :help   :quit";

/// The loop's settings: k, the search mode, and the graph's ef (kept while the search is exact, so
/// that `:hnsw` goes back to it).
struct ReplState {
    k: usize,
    mode: SearchMode,
    ef: usize,
}

/// One line of the interactive loop; returns false to stop. `echo`: write the line first (`> text`),
/// so that piped answers can be matched to their queries.
fn repl_line(
    s: &Searcher,
    line: &str,
    st: &mut ReplState,
    echo: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let line = line.trim();
    if echo {
        writeln!(out, "> {line}")?;
    }
    if line.is_empty() {
        writeln!(out, "(empty query) {REPL_HELP}")?;
        return Ok(true);
    }
    if let Some(cmd) = line.strip_prefix(':') {
        let mut parts = cmd.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("q" | "quit" | "exit"), _) => return Ok(false),
            (Some("help" | "h" | "?"), _) => writeln!(out, "{REPL_HELP}")?,
            (Some("k"), n) => match n.map(str::parse::<usize>) {
                Some(Ok(n)) if n > 0 => st.k = n,
                _ => writeln!(out, "error: :k needs a positive number (:k 10)")?,
            },
            (Some("exact"), _) => st.mode = SearchMode::Exact,
            (Some("hnsw"), _) => match s.graph_mode(st.ef) {
                Ok(m) => st.mode = m,
                Err(why) => writeln!(out, "error: {why}")?,
            },
            (Some("ef"), n) => match n.map(str::parse::<usize>) {
                Some(Ok(n)) => match s.graph_mode(n) {
                    Ok(m) => {
                        st.ef = n;
                        if st.mode == SearchMode::Exact {
                            // Not a silent switch: the search stays exact until :hnsw.
                            writeln!(
                                out,
                                "ef={n} kept for the graph; the search is still exact \
                                 (:hnsw searches the graph with ef={n})"
                            )?;
                        } else {
                            st.mode = m;
                        }
                    }
                    Err(why) => writeln!(out, "error: {why}")?,
                },
                _ => writeln!(out, "error: :ef needs a positive number (:ef 128)")?,
            },
            (name, _) => writeln!(
                out,
                "error: unknown command `:{}`; the commands: {REPL_COMMANDS}",
                name.unwrap_or("")
            )?,
        }
        writeln!(out, "k={}, {}", st.k, st.mode)?;
        return Ok(true);
    }
    answer(s, line, st.k, st.mode, out)?;
    Ok(true)
}

fn repl(s: &Searcher, k: usize) -> anyhow::Result<()> {
    let mut st = ReplState {
        k,
        mode: s.mode,
        ef: match s.mode {
            SearchMode::Hnsw { ef } => ef,
            SearchMode::Exact => DEFAULT_EF,
        },
    };
    let mut stdout = std::io::stdout();
    if !std::io::stdin().is_terminal() {
        // Piped lines: each is echoed before its answer. A line that is not UTF-8, or whose query
        // fails, is reported and the next line answered; the exit status says whether any failed.
        let mut failed = 0usize;
        for (no, line) in std::io::stdin().lock().split(b'\n').enumerate() {
            let line = line.context("standard input")?;
            let Ok(line) = String::from_utf8(line) else {
                eprintln!(
                    "error: standard input, line {}: not valid UTF-8; skipped",
                    no + 1
                );
                failed += 1;
                continue;
            };
            match repl_line(s, line.trim_end_matches('\r'), &mut st, true, &mut stdout) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    eprintln!("error: standard input, line {}: {e:#}", no + 1);
                    failed += 1;
                }
            }
        }
        if failed > 0 {
            bail!("{failed} line(s) of standard input could not be answered");
        }
        return Ok(());
    }
    let mut rl = rustyline::DefaultEditor::new()?;
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".simlm_search_history"));
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    println!(
        "{} passages in {}; {REPL_HELP}",
        s.index.manifest.count,
        s.index.dir.display()
    );
    loop {
        match rl.readline("query> ") {
            Ok(line) => {
                let _ = rl.add_history_entry(line.as_str());
                match repl_line(s, &line, &mut st, false, &mut stdout) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => eprintln!("error: {e:#}"),
                }
            }
            Err(
                rustyline::error::ReadlineError::Interrupted | rustyline::error::ReadlineError::Eof,
            ) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(h) = &history {
        let _ = rl.save_history(h);
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Query { common, text, k } => {
            if text.trim().is_empty() {
                bail!("the query is empty: give some text to search for");
            }
            let s = open(&common, Encoder::Required)?;
            answer(&s, &text, k, s.mode, &mut std::io::stdout().lock())?;
        }
        Command::Batch {
            common,
            queries,
            query_vectors,
            query_ids,
            k,
            out,
            run_format,
            tag,
        } => {
            let source = match (&queries, &query_vectors) {
                (Some(q), _) => BatchQueries::Text(q),
                (None, Some(v)) => BatchQueries::Vectors {
                    path: v,
                    ids: query_ids.as_deref(),
                },
                (None, None) => bail!("give --queries or --query-vectors"),
            };
            let need = if queries.is_some() {
                Encoder::Required
            } else {
                Encoder::No
            };
            let s = open(&common, need)?;
            batch(&s, source, k, &out, run_format, &tag)?;
        }
        Command::Serve {
            common,
            addr,
            max_body,
            max_queries,
            max_k,
            max_hits,
            max_answer_mb,
            max_inflight_mb,
            max_batch,
            batch_wait_ms,
            header_timeout,
            body_timeout,
            shutdown_timeout,
            reload_interval,
            addr_file,
            allow_partial,
            shard_timeout,
            shard_wait,
        } => {
            let secs = |v: f64, flag: &str| {
                std::time::Duration::try_from_secs_f64(v)
                    .map_err(|_| anyhow::anyhow!("{flag} {v}: expected seconds, 0 or more"))
            };
            for (v, flag) in [
                (header_timeout, "--header-timeout"),
                (body_timeout, "--body-timeout"),
                (shard_timeout, "--shard-timeout"),
            ] {
                if v.is_nan() || v <= 0.0 {
                    bail!("{flag} {v}: expected seconds, more than 0");
                }
            }
            let opts = serve::ServeOptions {
                addr,
                max_body,
                max_queries: max_queries.max(1),
                max_k: max_k.max(1),
                max_hits: max_hits.max(1),
                max_answer: max_answer_mb.max(1).saturating_mul(1 << 20),
                max_inflight: max_inflight_mb.max(1).saturating_mul(1 << 20),
                max_batch: max_batch.max(1),
                batch_wait: std::time::Duration::from_millis(batch_wait_ms),
                header_timeout: secs(header_timeout, "--header-timeout")?,
                body_timeout: secs(body_timeout, "--body-timeout")?,
                shutdown_timeout: secs(shutdown_timeout, "--shutdown-timeout")?,
                reload_interval: secs(reload_interval, "--reload-interval")?,
                addr_file,
            };
            if !common.shard.is_empty() {
                if let Some(t) = common.threads {
                    std::env::set_var("RAYON_NUM_THREADS", t.to_string());
                }
                let mut shards = Vec::new();
                for given in &common.shard {
                    let urls: Vec<String> = given
                        .split('|')
                        .map(|u| u.trim().to_string())
                        .filter(|u| !u.is_empty())
                        .collect();
                    if urls.is_empty() {
                        bail!("--shard {given:?}: expected URL or URL|URL");
                    }
                    shards.push(urls);
                }
                return front::serve(front::FrontOptions {
                    serve: opts,
                    shards,
                    model: common.model.clone(),
                    device: common.device.clone(),
                    exact: common.exact,
                    ef: common.ef,
                    allow_partial,
                    shard_timeout: secs(shard_timeout, "--shard-timeout")?,
                    shard_wait: secs(shard_wait, "--shard-wait")?,
                });
            }
            // An index without a model still serves pre-encoded queries.
            let s = open(&common, Encoder::IfAny)?;
            serve::serve(s, opts)?;
        }
        Command::Repl { common, k } => {
            let s = open(&common, Encoder::Required)?;
            repl(&s, k)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    engine::memory::keep_freed_memory();
    match run(parse_cli()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simlm-search: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The arguments; `--version` also names the kernels this CPU runs (`-V`: the version alone).
fn parse_cli() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command()
        .long_version(engine::long_version(env!("CARGO_PKG_VERSION")))
        .get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use super::{at_least_one, printable, trim};

    #[test]
    fn printable_writes_out_what_a_terminal_would_act_on() {
        assert_eq!(printable("plain text, ünïcode"), "plain text, ünïcode");
        assert_eq!(printable("a\tb\nc\rd"), "a b c d");
        assert_eq!(printable("\x1b[2Jred\x07"), "\\u{1b}[2Jred\\u{7}");
        assert_eq!(printable("x\u{202e}y\u{2066}"), "x\\u{202e}y\\u{2066}");
        assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m");
        // Trimming counts what is printed, escapes included.
        assert_eq!(trim("\x1b\x1b\x1b", 8), "\\u{1b}\\u...");
    }

    #[test]
    fn k_of_zero_is_refused() {
        assert_eq!(at_least_one("0"), Err("must be at least 1".into()));
        assert_eq!(at_least_one("10"), Ok(10));
        assert!(at_least_one("-1").is_err());
    }
}
