//! `simlm-index`: encode a collection into an index folder (vectors, ids, HNSW graph, manifest), and
//! export raw vectors.

mod progress;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use engine::corpus::ReadOptions;
use engine::index::{self, BuildOptions};
use engine::search::hnsw::HnswParams;
use engine::store::manifest::Manifest;
use engine::store::npy::{self, Dtype};
use engine::store::output::Output;
use engine::{Encoder, EncoderOptions, InputFormat, Kind, Pooling, Precision};

#[derive(Parser)]
#[command(
    name = "simlm-index",
    version,
    about = "Encode passage collections into dense-retrieval indexes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Encode a collection into an index folder: vectors, ids, HNSW graph, manifest.
    Build(BuildArgs),
    /// Encode JSON lines {"text": ..., "title": ...} into a float32 .npy (lines x dim).
    Embed(EmbedArgs),
    /// Make an index from vectors encoded elsewhere (an f32 or f16 .npy, rows x dimensions, C order).
    /// It has no model: it answers pre-encoded queries (`simlm-search batch --query-vectors`).
    Import(ImportArgs),
    /// Build (or rebuild) the HNSW graph of an existing index.
    Hnsw {
        dir: PathBuf,
        #[command(flatten)]
        graph: GraphArgs,
        /// Worker threads (default: all cores).
        #[arg(long, value_parser = at_least_one)]
        threads: Option<usize>,
    },
    /// Print an index's manifest and the size of each part.
    Info { dir: PathBuf },
    /// Check an index's files against the manifest's checksums.
    Verify { dir: PathBuf },
    /// Join shard folders (built with --shard i/N) into one index.
    Merge {
        /// The shard folders, in any order.
        #[arg(required = true)]
        shards: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        graph: GraphArgs,
        /// Skip the HNSW graph.
        #[arg(long)]
        no_hnsw: bool,
        /// Replace a finished index at --out.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Clone)]
struct EncoderArgs {
    /// Model folder (Hugging Face layout) or hub id.
    #[arg(long, default_value = engine::DEFAULT_MODEL)]
    model: String,
    /// Input format: simlm | sentence-transformers. Default: sentence-transformers for a
    /// sentence-transformers model folder (sentence_bert_config.json, modules.json or
    /// 1_Pooling/config.json), simlm for any other model.
    #[arg(long)]
    format: Option<InputFormat>,
    /// Pooling: cls | mean (default: cls for simlm, the model folder's setting for sentence-transformers).
    #[arg(long)]
    pooling: Option<Pooling>,
    /// cpu | cuda | cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Forward precision: f32 | f16 | bf16 | int8 (default: f32 on cpu, f16 on cuda). int8: the
    /// linear layers on 8-bit integers (CPU only; faster, vectors within a small cosine of f32).
    #[arg(long)]
    precision: Option<Precision>,
    /// Token budget of one forward pass (batch size x longest sequence). Default: 1024 on cpu,
    /// 4096 on cuda; an unfinished build begun with 4096 (the earlier default) continues with it.
    #[arg(long, value_parser = at_least_one)]
    batch_tokens: Option<usize>,
    /// Worker threads (default: all cores).
    #[arg(long, value_parser = at_least_one)]
    threads: Option<usize>,
}

#[derive(Args, Clone, Copy)]
struct GraphArgs {
    /// HNSW neighbours per node (M), 1 to 512.
    #[arg(long, visible_alias = "m", default_value_t = HnswParams::default().m, value_parser = hnsw_m)]
    hnsw_m: usize,
    /// HNSW ef at construction, 1 to 16384.
    #[arg(long, default_value_t = HnswParams::default().ef_construction, value_parser = ef_construction)]
    ef_construction: usize,
}

impl GraphArgs {
    fn params(self) -> HnswParams {
        HnswParams {
            m: self.hnsw_m,
            ef_construction: self.ef_construction,
        }
    }
}

#[derive(Args)]
struct BuildArgs {
    #[command(flatten)]
    enc: EncoderArgs,
    /// The collection: MS MARCO TSV (pid<TAB>text) or JSONL (id/_id, title, text/contents); .gz allowed.
    #[arg(long)]
    collection: PathBuf,
    /// Titles file `pid<TAB>title`, in the collection's order (RocketQA para.title.txt).
    #[arg(long)]
    titles: Option<PathBuf>,
    /// Repair the latin-1/UTF-8 mojibake of the raw MS MARCO text.
    #[arg(long)]
    fix_encoding: bool,
    /// Skip and count malformed lines instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// The index folder.
    #[arg(long)]
    out: PathBuf,
    /// Vector type on disk: f32 | f16.
    #[arg(long, default_value = "f32")]
    dtype: Dtype,
    #[command(flatten)]
    graph: GraphArgs,
    /// Skip the HNSW graph (exact search only).
    #[arg(long)]
    no_hnsw: bool,
    /// Encode only shard i of N (0-based), e.g. --shard 0/4; join shards with `simlm-index merge`.
    #[arg(long)]
    shard: Option<String>,
    /// Rebuild even if a finished index (or an unfinished build with other settings) is there.
    #[arg(long)]
    force: bool,
    /// Passages per resumable chunk.
    #[arg(long, default_value_t = 4096, value_parser = at_least_one)]
    chunk_rows: usize,
}

#[derive(Args)]
struct ImportArgs {
    /// The vectors: .npy, f32 or f16, one row per passage, C order; `-` reads them from standard
    /// input (as does a named pipe): an encoder's output is then never stored twice.
    #[arg(long)]
    vectors: PathBuf,
    /// Passage ids, one a line, in row order (default: the collection's ids, or the row numbers).
    #[arg(long)]
    ids: Option<PathBuf>,
    /// The collection the rows encode, in row order (TSV or JSONL): results show its passages.
    #[arg(long)]
    collection: Option<PathBuf>,
    /// The index folder.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    graph: GraphArgs,
    /// Skip the HNSW graph (exact search only).
    #[arg(long)]
    no_hnsw: bool,
    /// Worker threads for the graph (default: all cores).
    #[arg(long, value_parser = at_least_one)]
    threads: Option<usize>,
    /// Replace a finished index at --out.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct EmbedArgs {
    #[command(flatten)]
    enc: EncoderArgs,
    /// query | passage.
    #[arg(long)]
    kind: Kind,
    /// JSON lines with "text" and optional "title".
    #[arg(long)]
    input: PathBuf,
    /// Output .npy (float32, lines x dim).
    #[arg(long)]
    out: PathBuf,
}

fn set_threads(threads: Option<usize>) {
    if let Some(t) = threads {
        // candle and rayon both read RAYON_NUM_THREADS; set before either starts its pool.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
}

fn load_encoder(a: &EncoderArgs) -> anyhow::Result<Encoder> {
    set_threads(a.threads);
    let device = engine::parse_device(&a.device)?;
    let precision = a
        .precision
        .unwrap_or_else(|| Precision::default_for(&device));
    let files = engine::ModelFiles::resolve(&a.model)?;
    // Unless told, the format (and pooling) a sentence-transformers folder declares.
    let (format, pooling, notes) = engine::encoder::choose_format(&files, a.format, a.pooling)?;
    for n in notes {
        eprintln!("{n}");
    }
    let opts = EncoderOptions {
        format,
        pooling,
        precision,
        device,
        batch_tokens: a.batch_tokens,
        ..Default::default()
    };
    Ok(Encoder::from_files(files, &opts)?)
}

/// A count that must be 1 or more (threads, tokens, rows, neighbours).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

/// `--hnsw-m`: the engine's bounds (`HnswParams::validate`), said when the arguments are read.
fn hnsw_m(s: &str) -> Result<usize, String> {
    graph_param(s, |m| HnswParams {
        m,
        ..HnswParams::default()
    })
}

/// `--ef-construction`, as `--hnsw-m`.
fn ef_construction(s: &str) -> Result<usize, String> {
    graph_param(s, |ef_construction| HnswParams {
        ef_construction,
        ..HnswParams::default()
    })
}

fn graph_param(s: &str, params: impl Fn(usize) -> HnswParams) -> Result<usize, String> {
    let n = match s.parse::<usize>() {
        Ok(n) => n,
        // Too many digits for a usize: beyond any bound.
        Err(_) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => usize::MAX,
        Err(_) => return Err(format!("`{s}` is not a whole number")),
    };
    params(n).validate().map_err(|e| {
        // The engine's message names the flag and value; clap names them already.
        let e = e.to_string();
        e.split_once(": ").map_or(e.clone(), |(_, m)| m.to_string())
    })?;
    Ok(n)
}

fn parse_shard(s: &str) -> anyhow::Result<(usize, usize)> {
    let bad = || anyhow::anyhow!("--shard {s}: expected i/N with 0 <= i < N, e.g. 0/4");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.1} kB", b / 1e3)
    }
}

/// The progress of an unfinished build in the folder, as lines for `info`.
fn unfinished_lines(u: &engine::index::Unfinished) -> Vec<String> {
    let mut lines = Vec::new();
    let of = match u.rows {
        Some(n) => format!(
            "{} of {n} passages encoded ({:.1}%)",
            u.rows_done,
            100.0 * u.rows_done as f64 / n.max(1) as f64
        ),
        None => format!("{} passages encoded", u.rows_done),
    };
    let range = match u.range {
        Some((start, end, total)) if end - start != total => {
            format!("; rows {start}..{end} of the collection's {total}")
        }
        _ => String::new(),
    };
    lines.push(format!(
        "unfinished build in {}: {of}{range}",
        u.gen_dir.display()
    ));
    if u.encoded {
        lines.push("the vectors are all encoded; the graph is next (or being built)".into());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    if let (Some(rate), Some(n)) = (u.rate(), u.rows) {
        let left = n.saturating_sub(u.rows_done) as f64 / rate;
        lines.push(format!(
            "this attempt: {} passages in {:.0} s, {rate:.1} passages/s; about {left:.0} s left at that rate",
            u.rows_done - u.attempt_rows.unwrap_or(0),
            u.updated.unwrap_or(now) - u.attempt_began.unwrap_or(now),
        ));
    }
    if let Some(upd) = u.updated {
        lines.push(format!(
            "last progress record written {:.0} s ago",
            (now - upd).max(0.0)
        ));
    }
    lines
}

/// The token limits the index's input format applies (not in the manifest: they follow from the
/// format and, for sentence-transformers, the model folder's `max_seq_length`), as a line for `info`;
/// none for an index without a model (imported vectors).
fn token_limits_line(m: &Manifest) -> Option<String> {
    let format = m.input_format?;
    if format == InputFormat::Simlm {
        return Some(format!(
            "token limits: queries {}, passages {} (fixed by the {format} input format)",
            engine::text::SIMLM_QUERY_MAX_LEN,
            engine::text::SIMLM_PASSAGE_MAX_LEN
        ));
    }
    let model = m.model.as_ref()?;
    let limits = engine::ModelFiles::resolve_cached(&model.spec).and_then(|files| {
        let config = engine::model::config::BertConfig::from_file(&files.config)?;
        let (q, p) = engine::encoder::token_limits(format, &files, &config)?;
        let from = match &files.sentence_bert_config {
            Some(p) => format!("max_seq_length of {}", p.display()),
            None => format!("max_position_embeddings of {}", files.config.display()),
        };
        Ok((q, p, from))
    });
    Some(match limits {
        Ok((q, p, from)) => {
            format!("token limits: queries {q}, passages {p} ({format} input format: {from})")
        }
        Err(e) => format!(
            "token limits: unknown ({format} input format: the model's max_seq_length, and the \
             model {} cannot be read here: {e})",
            model.spec
        ),
    })
}

fn info(dir: &Path) -> anyhow::Result<()> {
    let building = engine::index::unfinished(dir).ok().flatten();
    let m = match Manifest::read(dir) {
        Ok(m) => m,
        Err(e) => {
            // A folder whose first build is under way (a shard of a cluster run, say): its progress.
            let Some(u) = &building else {
                return Err(e.into());
            };
            println!("{}: no index yet (no manifest.json)", dir.display());
            for l in unfinished_lines(u) {
                println!("{l}");
            }
            return Ok(());
        }
    };
    println!("{}", serde_json::to_string_pretty(&m)?);
    println!();
    if let Some(line) = token_limits_line(&m) {
        println!("{line}");
    }
    let n = m.count.max(1) as f64;
    println!("files in {}:", m.data_dir(dir).display());
    println!("{:<20} {:>12} {:>16}", "file", "size", "bytes/passage");
    let mut total = 0;
    for f in &m.files {
        total += f.size;
        println!(
            "{:<20} {:>12} {:>16.1}",
            f.path,
            human(f.size),
            f.size as f64 / n
        );
    }
    println!(
        "{:<20} {:>12} {:>16.1}",
        "total",
        human(total),
        total as f64 / n
    );
    if let Some(u) = &building {
        println!();
        for l in unfinished_lines(u) {
            println!("{l}");
        }
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let progress = progress::Bars::new();
    match cli.command {
        Command::Embed(a) => {
            let docs = engine::corpus::read_docs_jsonl(&a.input)?;
            if docs.is_empty() {
                bail!("{}: no lines to encode", a.input.display());
            }
            let enc = load_encoder(&a.enc)?;
            let t = std::time::Instant::now();
            let vecs = enc.encode(a.kind, &docs)?;
            let secs = t.elapsed().as_secs_f64();
            let inputs = [a.input.as_path(), enc.files().weights.as_path()];
            let out = Output::resolve(&a.out, &inputs)?;
            let header = npy::header(Dtype::F32, docs.len(), Some(enc.dim()));
            out.write(|w| {
                w.write_all(&header)?;
                npy::write_rows(w, Dtype::F32, &vecs)
            })?;
            eprintln!(
                "encoded {} texts in {secs:.2} s ({:.1} texts/s); wrote {} x {} vectors to {}",
                docs.len(),
                docs.len() as f64 / secs.max(1e-9),
                docs.len(),
                enc.dim(),
                out
            );
        }
        Command::Build(a) => {
            let shard = a.shard.as_deref().map(parse_shard).transpose()?;
            let enc = load_encoder(&a.enc)?;
            let opts = BuildOptions {
                collection: a.collection,
                read: ReadOptions {
                    titles: a.titles,
                    fix_encoding: a.fix_encoding,
                    skip_bad: a.skip_bad,
                },
                out: a.out.clone(),
                dtype: a.dtype,
                // A shard's graph is built after the merge.
                hnsw: (!a.no_hnsw && shard.is_none()).then_some(a.graph.params()),
                shard,
                force: a.force,
                chunk_rows: a.chunk_rows,
            };
            let m = index::build(&enc, &opts, &progress)?;
            let skipped = m.sources.as_ref().map_or(0, |s| s.skipped_lines);
            if skipped > 0 {
                eprintln!("skipped {skipped} malformed lines (--skip-bad)");
            }
            eprintln!(
                "index of {} passages ({} x {} {:?}) ready in {}",
                m.count,
                m.count,
                m.dim,
                m.dtype,
                a.out.display()
            );
        }
        Command::Import(a) => {
            set_threads(a.threads);
            let opts = index::ImportOptions {
                vectors: a.vectors,
                ids: a.ids,
                collection: a.collection,
                out: a.out.clone(),
                hnsw: (!a.no_hnsw).then_some(a.graph.params()),
                force: a.force,
            };
            let m = index::import(&opts, &progress)?;
            eprintln!(
                "index of {} imported vectors ({} x {} {:?}{}) written to {}",
                m.count,
                m.count,
                m.dim,
                m.dtype,
                if m.hnsw.is_some() { ", HNSW graph" } else { "" },
                a.out.display()
            );
        }
        Command::Hnsw {
            dir,
            graph,
            threads,
        } => {
            set_threads(threads);
            index::rebuild_graph(&dir, graph.params(), &progress)?;
            eprintln!("HNSW graph written to {}", dir.display());
        }
        Command::Info { dir } => info(&dir)?,
        Command::Verify { dir } => {
            let problems = index::verify(&dir)?;
            if !problems.is_empty() {
                for p in &problems {
                    eprintln!("{p}");
                }
                let files = index::Problem::files(&problems);
                bail!(
                    "{}: {files} file{} fail{} verification",
                    dir.display(),
                    if files == 1 { "" } else { "s" },
                    if files == 1 { "s" } else { "" },
                );
            }
            println!("{}: all files match the manifest", dir.display());
        }
        Command::Merge {
            shards,
            out,
            graph,
            no_hnsw,
            force,
        } => {
            let params = (!no_hnsw).then_some(graph.params());
            let m = index::merge(&shards, &out, params, force, &progress)?;
            eprintln!(
                "merged {} shards: {} passages in {}",
                shards.len(),
                m.count,
                out.display()
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    engine::memory::keep_freed_memory();
    match run(parse_cli()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simlm-index: error: {e:#}");
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
