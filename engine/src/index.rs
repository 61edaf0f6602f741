//! Building, merging, checking and opening index folders.
//!
//! An index folder holds `vectors.npy` (row i = passage i), `docids.txt` (one id a line),
//! `offsets.bin` (little-endian u64 per passage: where its line starts in the collection), the HNSW
//! graph (`graph.hnsw`: links and 8-bit codes of the vectors) and `manifest.json`, written last.
//!
//! A build is resumable: vectors are appended to `vectors.npy.partial` in fixed chunks of rows, and
//! `build.progress.json` records, after each chunk is synced to disk, how many rows are done and the
//! settings they were made with. Running the same command again truncates the partial file to the
//! recorded rows and continues; chunks are the same in both runs, so the finished matrix is
//! byte-identical to an uninterrupted build.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::corpus::{CorpusReader, ReadOptions};
use crate::error::{Error, IoContext, Result};
use crate::search::hnsw::{Graph, HnswParams, GRAPH_FILE};
use crate::store::manifest::{
    FileSum, Manifest, ModelInfo, Shard, Sources, FORMAT_VERSION, MANIFEST,
};
use crate::store::npy::{self, Dtype, NpyMatrix};
use crate::text::{Doc, Kind};
use crate::Encoder;

pub const VECTORS: &str = "vectors.npy";
pub const DOCIDS: &str = "docids.txt";
pub const OFFSETS: &str = "offsets.bin";
pub const PROGRESS: &str = "build.progress.json";
const PARTIAL: &str = "vectors.npy.partial";

/// What the caller sees of a long build.
pub trait Progress: Sync {
    /// A new stage (`reading`, `encoding`, `graph`), with its total when known.
    fn stage(&self, name: &str, total: Option<u64>);
    /// The current stage's position.
    fn set(&self, pos: u64);
    fn finish_stage(&self);
    fn message(&self, msg: &str);
}

/// A progress sink that prints nothing.
pub struct Quiet;
impl Progress for Quiet {
    fn stage(&self, _: &str, _: Option<u64>) {}
    fn set(&self, _: u64) {}
    fn finish_stage(&self) {}
    fn message(&self, _: &str) {}
}

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
    pub force: bool,
    /// Rows per resumable chunk.
    pub chunk_rows: usize,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct BuildProgress {
    settings: String,
    rows_done: usize,
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

fn remove_if_exists(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(p, e)),
    }
}

fn index_files(dir: &Path) -> Vec<PathBuf> {
    [VECTORS, DOCIDS, OFFSETS, PARTIAL, PROGRESS]
        .iter()
        .map(|f| dir.join(f))
        .chain([dir.join(GRAPH_FILE)])
        .collect()
}

/// Builds (or resumes building) an index.
pub fn build(encoder: &Encoder, opts: &BuildOptions, progress: &dyn Progress) -> Result<Manifest> {
    let out = &opts.out;
    std::fs::create_dir_all(out).at(out)?;
    if out.join(MANIFEST).is_file() {
        if !opts.force {
            return Err(Error::Msg(format!(
                "{}: a finished index is already there; pass --force to rebuild it",
                out.display()
            )));
        }
        // The manifest goes first: a crash from here on leaves no folder that looks finished.
        remove_if_exists(&out.join(MANIFEST))?;
    }
    if opts.force {
        for p in index_files(out) {
            remove_if_exists(&p)?;
        }
    }

    let scan = scan(&opts.collection, &opts.read, progress)?;
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
    let collection_sum = FileSum::of(&opts.collection, &absolute(&opts.collection))?;
    let titles_sum = match &opts.read.titles {
        Some(t) => Some(FileSum::of(t, &absolute(t))?),
        None => None,
    };
    let model = ModelInfo {
        spec: encoder.files().spec.clone(),
        fingerprint: encoder.files().fingerprint()?,
    };
    let precision = encoder_precision(encoder);
    let dim = encoder.dim();

    // Everything the vectors depend on: a partial build is resumed only when these match.
    let settings = {
        let key = serde_json::json!({
            "model": model.fingerprint, "format": encoder.format(), "pooling": encoder.pooling(),
            "precision": precision, "dtype": opts.dtype, "collection": collection_sum.sha256,
            "titles": titles_sum.as_ref().map(|t| t.sha256.clone()), "fix_encoding": opts.read.fix_encoding,
            "skip_bad": opts.read.skip_bad, "rows": [start, end], "chunk_rows": opts.chunk_rows,
            // The batches, and so the last bits of each vector, depend on the token budget.
            "batch_tokens": encoder.batch_tokens(),
        });
        format!("{:x}", Sha256::digest(key.to_string().as_bytes()))
    };
    let progress_path = out.join(PROGRESS);
    let partial_path = out.join(PARTIAL);
    let mut rows_done = 0usize;
    if progress_path.is_file() {
        let text = std::fs::read_to_string(&progress_path).at(&progress_path)?;
        let p: BuildProgress = serde_json::from_str(&text).map_err(|e| {
            Error::invalid(
                &progress_path,
                None,
                format!("damaged ({e}); pass --force to start over"),
            )
        })?;
        if p.settings != settings {
            return Err(Error::Msg(format!(
                "{}: holds an unfinished build made with other settings (model, format, pooling, sources, shard, \
                 dtype, chunk rows or batch tokens); \
                 pass --force to discard it, or use another --out folder",
                out.display()
            )));
        }
        rows_done = p.rows_done.min(end - start);
        if rows_done > 0 {
            progress.message(&format!(
                "resuming after {rows_done} of {} rows",
                end - start
            ));
        }
    }
    let row_bytes = dim * opts.dtype.size();
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&partial_path)
        .at(&partial_path)?;
    // Anything past the last recorded chunk is from an interrupted write: cut it off.
    file.set_len((npy::HEADER_LEN + rows_done * row_bytes) as u64)
        .at(&partial_path)?;
    file.seek(SeekFrom::Start(0)).at(&partial_path)?;
    file.write_all(&npy::header(opts.dtype, rows_done, Some(dim)))
        .at(&partial_path)?;
    file.seek(SeekFrom::End(0)).at(&partial_path)?;

    progress.stage("encoding", Some((end - start) as u64));
    progress.set(rows_done as u64);
    if start + rows_done < end {
        let mut reader = CorpusReader::open(&opts.collection, opts.read.clone())?;
        let mut row = 0usize;
        let first = start + rows_done;
        let mut chunk: Vec<Doc> = Vec::with_capacity(opts.chunk_rows);
        while row < end {
            let rec = match reader.next() {
                Some(r) => r?,
                None => break,
            };
            if row >= first {
                chunk.push(Doc {
                    title: rec.title,
                    text: rec.text,
                });
            }
            row += 1;
            if chunk.len() == opts.chunk_rows || (row == end && !chunk.is_empty()) {
                let vecs = encoder.encode(Kind::Passage, &chunk)?;
                let mut w = BufWriter::with_capacity(1 << 20, &mut file);
                npy::write_rows(&mut w, opts.dtype, &vecs).at(&partial_path)?;
                w.flush().at(&partial_path)?;
                drop(w);
                file.sync_data().at(&partial_path)?;
                rows_done += chunk.len();
                chunk.clear();
                let p = BuildProgress {
                    settings: settings.clone(),
                    rows_done,
                };
                crate::store::atomic_write_str(
                    &progress_path,
                    &serde_json::to_string(&p).unwrap(),
                )?;
                progress.set(rows_done as u64);
            }
        }
        if rows_done != end - start {
            return Err(Error::invalid(
                &opts.collection,
                None,
                format!(
                    "the collection changed while it was read: {rows_done} of {} rows encoded",
                    end - start
                ),
            ));
        }
    }
    progress.finish_stage();
    npy::finish_header(&mut file, opts.dtype, rows_done, dim).at(&partial_path)?;
    file.sync_all().at(&partial_path)?;
    drop(file);
    std::fs::rename(&partial_path, out.join(VECTORS)).at(out.join(VECTORS))?;
    crate::store::sync_dir(&out.join(VECTORS));

    write_ids(out, &scan.ids[start..end], &scan.offsets[start..end])?;
    let shard = opts.shard.map(|(i, n)| Shard {
        index: i,
        count: n,
        start,
        end,
        total,
        chunk_rows: opts.chunk_rows,
    });
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        model,
        input_format: encoder.format(),
        pooling: encoder.pooling(),
        precision,
        dim,
        dtype: opts.dtype,
        count: end - start,
        shard,
        hnsw: None,
        sources: Sources {
            collection: collection_sum,
            titles: titles_sum,
            fix_encoding: opts.read.fix_encoding,
            skipped_lines: scan.skipped,
        },
        files: Vec::new(),
    };
    if let Some(params) = opts.hnsw {
        build_graph(out, params, progress)?;
        manifest.hnsw = Some(params);
    }
    manifest.files = checksum_files(out, manifest.hnsw.is_some())?;
    manifest.write(out)?;
    remove_if_exists(&progress_path)?;
    Ok(manifest)
}

fn encoder_precision(encoder: &Encoder) -> crate::Precision {
    match encoder.model().dtype() {
        candle_core::DType::F16 => crate::Precision::F16,
        candle_core::DType::BF16 => crate::Precision::Bf16,
        _ => crate::Precision::F32,
    }
}

fn write_ids(out: &Path, ids: &[String], offsets: &[u64]) -> Result<()> {
    for id in ids {
        if id.contains('\n') || id.contains('\r') {
            return Err(Error::Msg(format!(
                "document id {id:?} contains a line break"
            )));
        }
    }
    crate::store::atomic_write(&out.join(DOCIDS), |w| {
        for id in ids {
            w.write_all(id.as_bytes())?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })?;
    crate::store::atomic_write(&out.join(OFFSETS), |w| {
        for o in offsets {
            w.write_all(&o.to_le_bytes())?;
        }
        Ok(())
    })
}

fn checksum_files(dir: &Path, graph: bool) -> Result<Vec<FileSum>> {
    let mut names = vec![VECTORS.to_string(), DOCIDS.to_string(), OFFSETS.to_string()];
    if graph {
        names.push(GRAPH_FILE.to_string());
    }
    names.iter().map(|n| FileSum::of(&dir.join(n), n)).collect()
}

fn build_graph(dir: &Path, params: HnswParams, progress: &dyn Progress) -> Result<()> {
    let matrix = NpyMatrix::open(&dir.join(VECTORS))?;
    progress.stage("graph", Some(matrix.rows() as u64));
    let g = crate::search::hnsw::build(&matrix, params, &|n| progress.set(n as u64))?;
    progress.finish_stage();
    g.save(&dir.join(GRAPH_FILE))?;
    // Earlier versions of the engine stored hnsw_rs's own dump, with a second copy of the vectors.
    for old in ["graph.hnsw.graph", "graph.hnsw.data"] {
        remove_if_exists(&dir.join(old))?;
    }
    Ok(())
}

/// Builds (or rebuilds) the graph of a finished index and records it in the manifest.
pub fn rebuild_graph(dir: &Path, params: HnswParams, progress: &dyn Progress) -> Result<Manifest> {
    let mut manifest = Manifest::read(dir)?;
    build_graph(dir, params, progress)?;
    manifest.hnsw = Some(params);
    manifest.files = checksum_files(dir, true)?;
    manifest.write(dir)?;
    Ok(manifest)
}

/// Checks every file of an index against the manifest's checksums; returns the problems found.
pub fn verify(dir: &Path) -> Result<Vec<String>> {
    let manifest = Manifest::read(dir)?;
    let mut problems = Vec::new();
    for f in &manifest.files {
        let p = dir.join(&f.path);
        if !p.is_file() {
            problems.push(format!("{}: missing", p.display()));
            continue;
        }
        let (size, sum) = crate::store::manifest::sha256_file(&p)?;
        if size != f.size {
            problems.push(format!(
                "{}: {size} bytes, the manifest says {}",
                p.display(),
                f.size
            ));
        } else if sum != f.sha256 {
            problems.push(format!(
                "{}: checksum differs from the manifest (the file is damaged)",
                p.display()
            ));
        }
    }
    Ok(problems)
}

/// Joins shard folders (any order) into one index at `out`, refusing shards of different models,
/// formats, sources or settings, and incomplete or overlapping sets.
pub fn merge(
    shards: &[PathBuf],
    out: &Path,
    hnsw: Option<HnswParams>,
    force: bool,
    progress: &dyn Progress,
) -> Result<Manifest> {
    let mut ms: Vec<(PathBuf, Manifest)> = shards
        .iter()
        .map(|d| Manifest::read(d).map(|m| (d.clone(), m)))
        .collect::<Result<_>>()?;
    if ms.is_empty() {
        return Err(Error::Msg("merge needs at least one shard folder".into()));
    }
    for (d, m) in &ms {
        if m.shard.is_none() {
            return Err(Error::Msg(format!(
                "{}: not a shard (built without --shard)",
                d.display()
            )));
        }
    }
    ms.sort_by_key(|(_, m)| m.shard.as_ref().unwrap().index);
    let (d0, m0) = &ms[0];
    let s0 = m0.shard.clone().unwrap();
    for (d, m) in &ms[1..] {
        let s = m.shard.as_ref().unwrap();
        let differ = |what: &str| {
            Err(Error::Msg(format!(
                "{} and {} differ in {what}: shards of one index must share model, input format, pooling, dtype and sources",
                d0.display(),
                d.display()
            )))
        };
        if m.model.fingerprint != m0.model.fingerprint {
            return differ("model");
        }
        if m.input_format != m0.input_format {
            return differ("input format");
        }
        if m.pooling != m0.pooling {
            return differ("pooling");
        }
        if m.dtype != m0.dtype || m.dim != m0.dim || m.precision != m0.precision {
            return differ("vector type");
        }
        if m.sources.collection.sha256 != m0.sources.collection.sha256
            || m.sources.titles.as_ref().map(|t| &t.sha256)
                != m0.sources.titles.as_ref().map(|t| &t.sha256)
            || m.sources.fix_encoding != m0.sources.fix_encoding
        {
            return differ("sources");
        }
        if s.count != s0.count || s.total != s0.total || s.chunk_rows != s0.chunk_rows {
            return differ("shard count");
        }
    }
    let idx: Vec<usize> = ms
        .iter()
        .map(|(_, m)| m.shard.as_ref().unwrap().index)
        .collect();
    if idx != (0..s0.count).collect::<Vec<_>>() {
        return Err(Error::Msg(format!(
            "merge needs every shard 0..{} exactly once; got shards {idx:?}",
            s0.count
        )));
    }
    std::fs::create_dir_all(out).at(out)?;
    if out.join(MANIFEST).is_file() {
        if !force {
            return Err(Error::Msg(format!(
                "{}: a finished index is already there; pass --force to replace it",
                out.display()
            )));
        }
        remove_if_exists(&out.join(MANIFEST))?;
    }
    let dim = m0.dim;
    let total = s0.total;
    progress.stage("merging", Some(total as u64));
    crate::store::atomic_write(&out.join(VECTORS), |w| {
        w.write_all(&npy::header(m0.dtype, total, Some(dim)))?;
        let mut done = 0u64;
        for (d, _) in &ms {
            let m = NpyMatrix::open(&d.join(VECTORS)).map_err(std::io::Error::other)?;
            w.write_all(m.bytes())?;
            done += m.rows() as u64;
            progress.set(done);
        }
        Ok(())
    })?;
    progress.finish_stage();
    let mut ids = Vec::with_capacity(total);
    let mut offsets = Vec::with_capacity(total);
    for (d, _) in &ms {
        let (i, o) = read_ids(d)?;
        ids.extend(i);
        offsets.extend(o);
    }
    write_ids(out, &ids, &offsets)?;
    let mut manifest = m0.clone();
    manifest.shard = None;
    manifest.count = total;
    manifest.hnsw = None;
    if let Some(params) = hnsw {
        build_graph(out, params, progress)?;
        manifest.hnsw = Some(params);
    }
    manifest.files = checksum_files(out, manifest.hnsw.is_some())?;
    manifest.write(out)?;
    Ok(manifest)
}

/// The ids and text offsets of an index folder.
pub fn read_ids(dir: &Path) -> Result<(Vec<String>, Vec<u64>)> {
    let p = dir.join(DOCIDS);
    let ids: Vec<String> = std::fs::read_to_string(&p)
        .at(&p)?
        .lines()
        .map(str::to_string)
        .collect();
    let p = dir.join(OFFSETS);
    let raw = std::fs::read(&p).at(&p)?;
    if raw.len() % 8 != 0 {
        return Err(Error::invalid(
            &p,
            None,
            "length is not a multiple of 8: the file is damaged",
        ));
    }
    let offsets: Vec<u64> = raw
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    if offsets.len() != ids.len() {
        return Err(Error::invalid(
            &p,
            None,
            format!(
                "{} offsets for {} ids: the index is damaged",
                offsets.len(),
                ids.len()
            ),
        ));
    }
    Ok((ids, offsets))
}

/// How to search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchMode {
    /// Every vector: the reference.
    Exact,
    /// The HNSW graph with this search-time `ef`.
    Hnsw { ef: usize },
}

impl std::fmt::Display for SearchMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SearchMode::Exact => f.write_str("exact"),
            SearchMode::Hnsw { ef } => write!(f, "hnsw ef={ef}"),
        }
    }
}

/// A finished index, opened for search.
pub struct Index {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub vectors: NpyMatrix,
    pub ids: Vec<String>,
    pub offsets: Vec<u64>,
    graph: std::sync::OnceLock<Graph>,
}

impl Index {
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = Manifest::read(dir)?;
        let vectors = NpyMatrix::open(&dir.join(VECTORS))?;
        let vp = dir.join(VECTORS);
        if vectors.rows() != manifest.count || vectors.cols() != manifest.dim {
            return Err(Error::invalid(
                &vp,
                None,
                format!(
                    "holds {} x {} vectors, the manifest says {} x {}: the index is damaged; rebuild it",
                    vectors.rows(),
                    vectors.cols(),
                    manifest.count,
                    manifest.dim
                ),
            ));
        }
        let (ids, offsets) = read_ids(dir)?;
        if ids.len() != manifest.count {
            return Err(Error::invalid(
                dir.join(DOCIDS),
                None,
                format!(
                    "{} ids for {} vectors: the index is damaged",
                    ids.len(),
                    manifest.count
                ),
            ));
        }
        Ok(Index {
            dir: dir.to_path_buf(),
            manifest,
            vectors,
            ids,
            offsets,
            graph: std::sync::OnceLock::new(),
        })
    }

    /// The HNSW graph, loaded on first use.
    pub fn graph(&self) -> Result<&Graph> {
        if let Some(g) = self.graph.get() {
            return Ok(g);
        }
        let g = Graph::open(&self.dir)?;
        if g.len() != self.vectors.rows() || g.dim() != self.vectors.cols() {
            return Err(Error::invalid(
                self.dir.join(GRAPH_FILE),
                None,
                format!(
                    "a graph of {} x {} vectors for a matrix of {} x {}: rebuild it with `simlm-index hnsw {}`",
                    g.len(),
                    g.dim(),
                    self.vectors.rows(),
                    self.vectors.cols(),
                    self.dir.display()
                ),
            ));
        }
        Ok(self.graph.get_or_init(|| g))
    }

    /// The top `k` rows for each query (row-major `nq x dim`), exactly or through the graph.
    pub fn search(
        &self,
        queries: &[f32],
        k: usize,
        mode: SearchMode,
    ) -> Result<Vec<Vec<crate::search::Hit>>> {
        use rayon::prelude::*;
        let dim = self.manifest.dim;
        if queries.len() % dim != 0 {
            return Err(Error::Msg(format!(
                "query vectors of width {} do not fit dimension {dim}",
                queries.len()
            )));
        }
        match mode {
            SearchMode::Exact => {
                // Bounded query blocks keep the score buffers small; each block streams the matrix once.
                let mut out = Vec::with_capacity(queries.len() / dim);
                for block in queries.chunks(1024 * dim) {
                    out.extend(crate::search::exact::search(&self.vectors, block, k));
                }
                Ok(out)
            }
            SearchMode::Hnsw { ef } => {
                let g = self.graph()?;
                Ok(queries
                    .par_chunks(dim)
                    .map(|q| g.search(&self.vectors, q, k, ef))
                    .collect())
            }
        }
    }

    /// The passage behind row `row`, read from the collection through its stored offset.
    pub fn passage(&self, row: usize) -> Result<crate::corpus::Record> {
        let src = &self.manifest.sources.collection;
        let path = Path::new(&src.path);
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.len() != src.size {
            return Err(Error::Msg(format!(
                "{}: the collection has changed since the index was built ({} bytes, was {})",
                path.display(),
                meta.len(),
                src.size
            )));
        }
        let rec = crate::corpus::read_record_at(
            path,
            self.offsets[row],
            self.manifest.sources.fix_encoding,
        )?;
        if rec.id != self.ids[row] {
            return Err(Error::Msg(format!(
                "{}: the collection has changed since the index was built",
                path.display()
            )));
        }
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_all_rows_once() {
        for total in [1, 7, 1033] {
            for chunk in [1, 4, 64] {
                for n in 1..5 {
                    let mut next = 0;
                    for i in 0..n {
                        let (a, b) = shard_range(i, n, total, chunk);
                        assert_eq!(a, next);
                        assert!(a % chunk == 0 || a == total);
                        next = b;
                    }
                    assert_eq!(next, total);
                }
            }
        }
    }
}
