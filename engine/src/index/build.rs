//! Building an index from a collection, in one straight line: scan, plan, resume, encode, append,
//! finish, ids, graph, manifest.
//!
//! A build is resumable at every step. It writes a new generation folder (see `store::layout`) and
//! records there, in `build.progress.json`, the settings its vectors depend on and what is done: rows
//! are appended to `vectors.npy.partial` in fixed chunks, each synced before the record counts it
//! with the SHA-256 of its bytes; the finished matrix is renamed to `vectors.npy`; the graph, once
//! saved, is recorded with its SHA-256. Running the same command again continues from the record,
//! and reuses nothing it has not checked against it: every recorded chunk is read back (finite, the
//! recorded checksum), and the build continues after the last good one; a finished matrix or graph
//! is kept only if it matches too. A record of an earlier version, which holds no checksums, is not
//! trusted: the vectors are encoded again. Chunks are the same in every run, so the finished matrix
//! is byte-identical to an uninterrupted build. Only the commit (the manifest) makes the new
//! generation the index; until then an index already in the folder answers searches, whole.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use super::writer::{self, Writer};
use super::Progress;
use crate::corpus::{CorpusReader, ReadOptions};
use crate::error::{Error, IoContext, Result};
use crate::failpoint;
use crate::search::hnsw::HnswParams;
use crate::store::layout::{self, GRAPH, PARTIAL, PROGRESS, VECTORS};
use crate::store::manifest::{
    sha256_file, FileSum, Manifest, ModelInfo, Shard, Sources, FORMAT_VERSION,
};
use crate::store::npy::{self, Dtype, NpyAppender};
use crate::text::{Doc, Kind};
use crate::Encoder;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub collection: PathBuf,
    pub read: ReadOptions,
    pub out: PathBuf,
    pub dtype: Dtype,
    /// `None`: no graph.
    pub hnsw: Option<HnswParams>,
    /// `(i, n)`: encode only the i-th (0-based) of n equal row ranges.
    pub shard: Option<(usize, usize)>,
    /// Replace a finished index, and discard an unfinished build made with other settings.
    pub force: bool,
    /// Rows per resumable chunk.
    pub chunk_rows: usize,
}

/// What a build has done, as recorded in its generation folder.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct BuildProgress {
    /// A hash of everything the vectors depend on: a build resumes only with the same.
    settings: String,
    /// Rows appended to the partial matrix and synced.
    rows_done: usize,
    /// The SHA-256 (hex) of each chunk counted in `rows_done`, as appended: chunk `i` holds rows
    /// `[i c, min((i + 1) c, rows_done))` for `c` the chunk rows. `None` in a record of an earlier
    /// version, which kept none.
    #[serde(default)]
    chunk_sha256: Option<Vec<String>>,
    /// The parameters of the saved graph, once it is saved.
    #[serde(default)]
    graph: Option<HnswParams>,
    /// The SHA-256 (hex) of `graph.hnsw` as it was written.
    #[serde(default)]
    graph_sha256: Option<String>,
    /// For following a run (`simlm-index info` on the folder): the rows this build encodes in all,
    /// the collection's rows `[start, end)` of `total` it holds, and when the current attempt began
    /// (Unix seconds) with how many rows were done then, and when the record was last written.
    #[serde(default)]
    rows: Option<usize>,
    #[serde(default)]
    range: Option<(usize, usize, usize)>,
    #[serde(default)]
    attempt_began: Option<f64>,
    #[serde(default)]
    attempt_rows: Option<usize>,
    #[serde(default)]
    updated: Option<f64>,
}

/// How far an unfinished build has come, from the progress record it keeps in its folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Unfinished {
    /// The generation folder the build writes.
    pub gen_dir: PathBuf,
    /// Rows encoded and synced.
    pub rows_done: usize,
    /// Rows it encodes in all, and the collection's rows `[start, end)` of `total` (recorded by
    /// this version from the start of encoding; `None` in an older record).
    pub rows: Option<usize>,
    pub range: Option<(usize, usize, usize)>,
    /// The vectors are all encoded (a graph may still be building).
    pub encoded: bool,
    /// When the current attempt began (Unix seconds), the rows done then, and when the record was
    /// last written.
    pub attempt_began: Option<f64>,
    pub attempt_rows: Option<usize>,
    pub updated: Option<f64>,
}

impl Unfinished {
    /// Passages a second over the current attempt, from its start to the last record.
    pub fn rate(&self) -> Option<f64> {
        let (began, from, upd) = (self.attempt_began?, self.attempt_rows?, self.updated?);
        (upd > began && self.rows_done > from)
            .then(|| (self.rows_done - from) as f64 / (upd - began))
    }
}

/// The newest unfinished build in `dir` (a generation folder that is not the manifest's and holds a
/// progress record), if any.
pub fn unfinished(dir: &Path) -> Result<Option<Unfinished>> {
    let current = crate::store::manifest::Manifest::read(dir)
        .ok()
        .map(|m| m.generation());
    for g in layout::generations(dir)?.into_iter().rev() {
        if Some(g) == current {
            continue;
        }
        let gen_dir = dir.join(layout::generation_name(g));
        if !gen_dir.join(PROGRESS).is_file() {
            continue;
        }
        let p = BuildProgress::read(&gen_dir)?;
        return Ok(Some(Unfinished {
            encoded: gen_dir.join(VECTORS).is_file(),
            gen_dir,
            rows_done: p.rows_done,
            rows: p.rows,
            range: p.range,
            attempt_began: p.attempt_began,
            attempt_rows: p.attempt_rows,
            updated: p.updated,
        }));
    }
    Ok(None)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl BuildProgress {
    fn read(gen_dir: &Path) -> Result<BuildProgress> {
        let p = gen_dir.join(PROGRESS);
        let text = std::fs::read_to_string(&p).at(&p)?;
        serde_json::from_str(&text)
            .map_err(|e| Error::corrupt(&p, format!("damaged ({e}); pass --force to start over")))
    }

    fn save(&self, gen_dir: &Path) -> Result<()> {
        let text = serde_json::to_string(self).expect("progress serialises");
        crate::store::atomic_write_str(&gen_dir.join(PROGRESS), &text)
    }
}

/// Ids and line offsets of a collection, checked for duplicates.
pub struct Scan {
    pub ids: Vec<String>,
    pub offsets: Vec<u64>,
    pub skipped: usize,
}

/// Reads the whole collection once (streamed) for its ids and offsets.
pub fn scan(collection: &Path, read: &ReadOptions, progress: &dyn Progress) -> Result<Scan> {
    let size = std::fs::metadata(collection).at(collection)?.len();
    progress.stage("reading", Some(size));
    let mut reader = CorpusReader::open(collection, read.clone())?;
    let mut ids = Vec::new();
    let mut offsets = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for rec in reader.by_ref() {
        let rec = rec?;
        if let Some(first) = seen.insert(rec.id.clone(), rec.line) {
            return Err(Error::invalid(
                collection,
                Some(rec.line),
                format!(
                    "duplicate id `{}` (first on line {first}); every passage needs its own id",
                    rec.id
                ),
            ));
        }
        if ids.len() % 65_536 == 0 {
            progress.set(rec.offset.min(size));
        }
        ids.push(rec.id);
        offsets.push(rec.offset);
    }
    progress.finish_stage();
    if ids.is_empty() {
        return Err(Error::invalid(
            collection,
            None,
            "the collection is empty: no passages to index",
        ));
    }
    Ok(Scan {
        ids,
        offsets,
        skipped: reader.skipped,
    })
}

/// Rows `[start, end)` of shard `i` of `n` over `total` rows. Shards are cut at multiples of
/// `chunk_rows`, so each shard encodes exactly the chunks an unsharded build would, and merged shards
/// are byte-identical to an unsharded build.
pub fn shard_range(i: usize, n: usize, total: usize, chunk_rows: usize) -> (usize, usize) {
    let chunks = total.div_ceil(chunk_rows);
    let at = |c: usize| (c * chunk_rows).min(total);
    (at(i * chunks / n), at((i + 1) * chunks / n))
}

/// Everything about a build that follows from its inputs, before anything is written.
struct Plan {
    start: usize,
    end: usize,
    total: usize,
    dim: usize,
    model: ModelInfo,
    precision: crate::Precision,
    collection: FileSum,
    titles: Option<FileSum>,
    /// Everything the vectors depend on but the token budget.
    key: serde_json::Value,
    /// The token budget of a forward pass.
    batch_tokens: usize,
    settings: String,
}

impl Plan {
    /// The hash of the key with `batch_tokens` added: what a build records and resumes by.
    fn settings_with(key: &serde_json::Value, batch_tokens: usize) -> String {
        let mut key = key.clone();
        key["batch_tokens"] = batch_tokens.into();
        format!("{:x}", Sha256::digest(key.to_string().as_bytes()))
    }

    /// Takes the default budget of earlier versions when a build made with it is there (finished,
    /// or unfinished and so to be resumed) and none with this budget is: the same command as before
    /// continues that build, with the batches, and so the bits, it began with. `--force` starts over
    /// with this budget.
    fn keep_earlier_budget(
        &mut self,
        w: &Writer,
        encoder: &Encoder,
        force: bool,
        progress: &dyn Progress,
    ) {
        let Some(earlier) = encoder.earlier_default_batch_tokens() else {
            return;
        };
        if force {
            return;
        }
        let there = builds_there(w);
        let settings = Plan::settings_with(&self.key, earlier);
        if !there.contains(&self.settings) && there.contains(&settings) {
            progress.message(&format!(
                "the build here was made with {earlier} batch tokens (the earlier default): keeping them"
            ));
            self.batch_tokens = earlier;
            self.settings = settings;
        }
    }
}

/// The settings of the finished index and of the unfinished builds in the folder.
fn builds_there(w: &Writer) -> Vec<String> {
    let current = w.current().ok().flatten();
    let mut there: Vec<String> = current.iter().map(|m| m.settings.clone()).collect();
    let current = current.map(|m| m.generation());
    for g in layout::generations(w.dir()).unwrap_or_default() {
        let gen_dir = w.dir().join(layout::generation_name(g));
        if Some(g) != current {
            if let Ok(p) = BuildProgress::read(&gen_dir) {
                there.push(p.settings);
            }
        }
    }
    there
}

fn plan(
    encoder: &Encoder,
    opts: &BuildOptions,
    scan: &Scan,
    progress: &dyn Progress,
) -> Result<Plan> {
    let total = scan.ids.len();
    let (start, end) = match opts.shard {
        Some((i, n)) => shard_range(i, n, total, opts.chunk_rows),
        None => (0, total),
    };
    progress.message("checksumming the sources");
    // Absolute paths, so that the searcher finds the text from any working directory.
    let absolute = |p: &Path| {
        std::fs::canonicalize(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    let collection = FileSum::of(&opts.collection, &absolute(&opts.collection))?;
    let titles = match &opts.read.titles {
        Some(t) => Some(FileSum::of(t, &absolute(t))?),
        None => None,
    };
    let model = ModelInfo {
        spec: encoder.files().spec.clone(),
        fingerprint: encoder.files().fingerprint()?,
    };
    let precision = encoder.precision();
    // Everything the vectors depend on: a partial build is resumed only when these match.
    let key = serde_json::json!({
        "model": model.fingerprint, "format": encoder.format(), "pooling": encoder.pooling(),
        "precision": precision, "dtype": opts.dtype, "collection": collection.sha256,
        "titles": titles.as_ref().map(|t| t.sha256.clone()), "fix_encoding": opts.read.fix_encoding,
        "skip_bad": opts.read.skip_bad, "rows": [start, end], "chunk_rows": opts.chunk_rows,
    });
    // The batches, and so the last bits of each vector, depend on the token budget too.
    let batch_tokens = encoder.batch_tokens();
    Ok(Plan {
        start,
        end,
        total,
        dim: encoder.dim(),
        model,
        precision,
        collection,
        titles,
        settings: Plan::settings_with(&key, batch_tokens),
        key,
        batch_tokens,
    })
}

/// Builds (or resumes building) an index.
pub fn build(encoder: &Encoder, opts: &BuildOptions, progress: &dyn Progress) -> Result<Manifest> {
    let w = Writer::open(&opts.out)?;
    let current = match w.current() {
        // A damaged manifest is reported, unless --force replaces the index anyway.
        Err(e) if !opts.force => return Err(e),
        c => c.ok().flatten(),
    };
    let scan = scan(&opts.collection, &opts.read, progress)?;
    failpoint::hit("scan").at(&opts.collection)?;
    let mut plan = plan(encoder, opts, &scan, progress)?;
    plan.keep_earlier_budget(&w, encoder, opts.force, progress);
    if let Some(m) = current.filter(|_| !opts.force) {
        // The same command run again after it finished (or after a stop just past its commit).
        if m.settings == plan.settings && m.hnsw == opts.hnsw {
            progress
                .message("the index is already complete, built with these settings: nothing to do");
            return Ok(m);
        }
        if m.settings == plan.settings {
            // The vectors are the ones this command would encode; only the graph differs.
            let what = match opts.hnsw {
                Some(p) => format!(
                    "without the graph this command asks for: `simlm-index hnsw {} --hnsw-m {} \
                     --ef-construction {}` builds it without encoding again",
                    opts.out.display(),
                    p.m,
                    p.ef_construction,
                ),
                None => "with a graph, which this command leaves out: searches with --exact \
                         do not use it"
                    .to_string(),
            };
            return Err(Error::invalid(
                &opts.out,
                None,
                format!(
                    "a finished index with these vectors is already there, {what}; \
                     --force encodes everything again"
                ),
            ));
        }
        return Err(writer::finished_index_there(&opts.out));
    }
    let (gen, gen_dir, mut state) = staging(&w, &plan.settings, opts.force)?;

    // Checksums of files this build has just written or checked whole, for the manifest.
    let mut known: Vec<FileSum> = Vec::new();
    known.extend(encode(
        encoder, opts, &plan, &gen_dir, &mut state, progress,
    )?);
    crate::store::ids::write(
        &gen_dir,
        &scan.ids[plan.start..plan.end],
        &scan.offsets[plan.start..plan.end],
    )?;
    if opts.hnsw.is_some() && progress.cancelled() {
        return Err(stopped(
            &opts.out,
            plan.end - plan.start,
            plan.end - plan.start,
        ));
    }
    if let Some(params) = opts.hnsw {
        match saved_graph(&gen_dir, &state, params, progress)? {
            Some(sum) => known.push(sum),
            None => {
                if state.graph.is_some() {
                    state.graph = None;
                    state.graph_sha256 = None;
                    state.save(&gen_dir)?;
                }
                let sum = writer::build_graph(&gen_dir, params, progress)?;
                state.graph = Some(params);
                state.graph_sha256 = Some(sum.sha256.clone());
                state.save(&gen_dir)?;
                known.push(sum);
            }
        }
    }
    let shard = opts.shard.map(|(i, n)| Shard {
        index: i,
        count: n,
        start: plan.start,
        end: plan.end,
        total: plan.total,
        chunk_rows: opts.chunk_rows,
    });
    progress.message("checksumming the index");
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        model: Some(plan.model),
        input_format: Some(encoder.format()),
        pooling: Some(encoder.pooling()),
        precision: Some(plan.precision),
        dim: plan.dim,
        dtype: opts.dtype,
        count: plan.end - plan.start,
        shard,
        hnsw: opts.hnsw,
        sources: Some(Sources {
            collection: plan.collection,
            titles: plan.titles,
            fix_encoding: opts.read.fix_encoding,
            skipped_lines: scan.skipped,
        }),
        imported: None,
        settings: plan.settings,
        data: layout::generation_name(gen),
        files: writer::checksum_files(&gen_dir, &writer::index_files(opts.hnsw.is_some()), &known)?,
        checksum: String::new(),
    };
    w.commit(&mut manifest)?;
    Ok(manifest)
}

/// The error of a build stopped on the caller's request (`Progress::cancelled`), at a chunk boundary.
fn stopped(out: &Path, done: usize, rows: usize) -> Error {
    Error::Cancelled(format!(
        "{}: build stopped on request after {done} of {rows} passages were encoded and recorded; \
         the same build resumes from there",
        out.display()
    ))
}

/// The generation this build writes: an unfinished build with the same settings (resumed), or a new
/// one. An unfinished build with other settings is an error, or discarded under `--force`.
fn staging(w: &Writer, settings: &str, force: bool) -> Result<(u64, PathBuf, BuildProgress)> {
    let current = w.current().ok().flatten().map(|m| m.generation());
    for g in layout::generations(w.dir())? {
        let gen_dir = w.dir().join(layout::generation_name(g));
        if Some(g) == current || !gen_dir.join(PROGRESS).is_file() {
            continue;
        }
        match BuildProgress::read(&gen_dir) {
            Ok(p) if p.settings == settings => return Ok((g, gen_dir, p)),
            Ok(_) | Err(_) if force => {
                std::fs::remove_dir_all(&gen_dir).at(&gen_dir)?;
            }
            Ok(_) => {
                return Err(Error::invalid(
                    w.dir(),
                    None,
                    "holds an unfinished build made with other settings (model, format, pooling, \
                     sources, shard, dtype, chunk rows or batch tokens); pass --force to discard it, \
                     or use another --out folder",
                ))
            }
            Err(e) => return Err(e),
        }
    }
    let (g, gen_dir) = w.new_generation()?;
    let p = BuildProgress {
        settings: settings.to_string(),
        rows_done: 0,
        chunk_sha256: Some(Vec::new()),
        graph: None,
        graph_sha256: None,
        rows: None,
        range: None,
        attempt_began: None,
        attempt_rows: None,
        updated: None,
    };
    p.save(&gen_dir)?;
    Ok((g, gen_dir, p))
}

/// The graph a stopped run of this build saved, if it has these parameters and its bytes are the
/// ones recorded when it was written: its checksum for the manifest. A graph that does not match is
/// built again, with a message.
fn saved_graph(
    gen_dir: &Path,
    state: &BuildProgress,
    params: HnswParams,
    progress: &dyn Progress,
) -> Result<Option<FileSum>> {
    let path = gen_dir.join(GRAPH);
    if state.graph != Some(params) || !path.is_file() {
        return Ok(None);
    }
    let Some(recorded) = &state.graph_sha256 else {
        progress.message(&format!(
            "{}: recorded by an earlier version, without its checksum: building the graph again",
            path.display()
        ));
        return Ok(None);
    };
    let (size, sha256) = sha256_file(&path)?;
    if sha256 != *recorded {
        progress.message(&format!(
            "{}: does not match the checksum recorded when it was written: building the graph again",
            path.display()
        ));
        return Ok(None);
    }
    Ok(Some(FileSum {
        path: GRAPH.to_string(),
        size,
        sha256,
    }))
}

/// Encodes the rows not yet done into the partial matrix, chunk by chunk, then finishes it as
/// `vectors.npy`. What a stopped run left is checked against the record first: a finished matrix
/// whose every chunk matches is kept (its checksum is returned, for the manifest); otherwise the
/// chunks are kept up to the last good one, with a message naming the first bad one, and encoding
/// continues from there.
fn encode(
    encoder: &Encoder,
    opts: &BuildOptions,
    plan: &Plan,
    gen_dir: &Path,
    state: &mut BuildProgress,
    progress: &dyn Progress,
) -> Result<Option<FileSum>> {
    let rows = plan.end - plan.start;
    let done = gen_dir.join(VECTORS);
    let partial = gen_dir.join(PARTIAL);
    let mut sums = match state.chunk_sha256.take() {
        Some(sums) => sums,
        None => {
            if state.rows_done > 0 || done.is_file() {
                progress.message(&format!(
                    "{}: recorded by an earlier version, without checksums of the vectors: \
                     encoding them again",
                    gen_dir.join(PROGRESS).display()
                ));
            }
            layout::remove_if_exists(&done)?;
            state.rows_done = 0;
            Vec::new()
        }
    };
    let check = |path: &Path, rows: usize, sums: &[String], whole: bool| {
        npy::check_chunks(
            path,
            opts.dtype,
            plan.dim,
            opts.chunk_rows,
            rows,
            sums,
            whole,
        )
    };
    let checked = if done.is_file() {
        let c = check(&done, rows, &sums, true)?;
        if let (None, Some((size, sha256))) = (&c.problem, &c.whole) {
            state.chunk_sha256 = Some(sums);
            return Ok(Some(FileSum {
                path: VECTORS.to_string(),
                size: *size,
                sha256: sha256.clone(),
            }));
        }
        let why = c.problem.clone().unwrap_or_else(|| {
            format!(
                "its header or size is not that of {rows} rows of {}",
                plan.dim
            )
        });
        progress.message(&format!(
            "{}: {why}; the rows from {} on are encoded again",
            done.display(),
            c.rows
        ));
        // Back to a partial matrix, continued after its good chunks.
        std::fs::rename(&done, &partial).at(&partial)?;
        c
    } else if state.rows_done > 0 && !partial.is_file() {
        progress.message(&format!(
            "{} is missing: encoding the {} rows it held again",
            partial.display(),
            state.rows_done
        ));
        npy::Checked::default()
    } else if state.rows_done > 0 {
        let c = check(&partial, state.rows_done, &sums, false)?;
        if let Some(why) = &c.problem {
            progress.message(&format!(
                "{}: {why}; the rows from {} on are encoded again",
                partial.display(),
                c.rows
            ));
        }
        c
    } else {
        npy::Checked::default()
    };
    // The graph follows from the finished matrix: one made before any rows were encoded again is
    // not kept.
    if state.graph.is_some() {
        state.graph = None;
        state.graph_sha256 = None;
    }
    sums.truncate(checked.chunks);
    state.rows_done = checked.rows;
    state.chunk_sha256 = Some(sums);
    state.rows = Some(rows);
    state.range = Some((plan.start, plan.end, plan.total));
    state.attempt_began = Some(unix_now());
    state.attempt_rows = Some(state.rows_done);
    state.updated = state.attempt_began;
    state.save(gen_dir)?;
    let mut out = NpyAppender::continue_after(&partial, opts.dtype, plan.dim, state.rows_done)?;
    if state.rows_done > 0 {
        progress.message(&format!(
            "resuming after {} of {rows} rows",
            state.rows_done
        ));
    }
    progress.stage("encoding", Some(rows as u64));
    progress.set(state.rows_done as u64);
    if state.rows_done < rows {
        let mut reader = CorpusReader::open(&opts.collection, opts.read.clone())?;
        let first = plan.start + state.rows_done;
        let mut row = 0usize;
        let mut chunk: Vec<Doc> = Vec::with_capacity(opts.chunk_rows);
        while row < plan.end {
            let Some(rec) = reader.next() else { break };
            let rec = rec?;
            if row >= first {
                chunk.push(Doc {
                    title: rec.title,
                    text: rec.text,
                });
            }
            row += 1;
            if chunk.len() == opts.chunk_rows || (row == plan.end && !chunk.is_empty()) {
                // Positions within the chunk as its forward passes finish: a chunk can take
                // minutes on a CPU, and the display shows movement meanwhile.
                let (before, in_chunk) = (state.rows_done, AtomicUsize::new(0));
                let vecs = encoder.encode_within_reporting(
                    Kind::Passage,
                    &chunk,
                    plan.batch_tokens,
                    &|n| {
                        let d = in_chunk.fetch_add(n, Ordering::Relaxed) + n;
                        progress.set((before + d) as u64);
                    },
                )?;
                let sum = out.append_f32(&vecs)?;
                state.rows_done += chunk.len();
                if let Some(sums) = &mut state.chunk_sha256 {
                    sums.push(sum);
                }
                chunk.clear();
                state.updated = Some(unix_now());
                state.save(gen_dir)?;
                progress.set(state.rows_done as u64);
                failpoint::hit("encode").at(&partial)?;
                if progress.cancelled() && state.rows_done < rows {
                    return Err(stopped(&opts.out, state.rows_done, rows));
                }
            }
        }
        if state.rows_done != rows {
            return Err(Error::invalid(
                &opts.collection,
                None,
                format!(
                    "the collection changed while it was read: {} of {rows} rows encoded",
                    state.rows_done
                ),
            ));
        }
    }
    progress.finish_stage();
    failpoint::hit("matrix-finish").at(&partial)?;
    out.finish(&done)?;
    failpoint::hit("matrix-renamed").at(&done)?;
    Ok(None)
}
