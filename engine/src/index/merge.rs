//! Joining shard indexes (built with `--shard i/N`) into one index, byte-identical to an unsharded
//! build; and rebuilding the graph of a finished index. Both write a new generation and commit it, so a
//! stop leaves the index as it was.

use std::path::{Path, PathBuf};

use super::writer::{self, Writer};
use super::Progress;
use crate::error::IoContext;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::search::hnsw::HnswParams;
use crate::store::layout::{self, DOCIDS, OFFSETS, PARTIAL, VECTORS};
use crate::store::manifest::Manifest;
use crate::store::npy::NpyAppender;

/// Joins shard folders (any order) into one index at `out`, refusing shards of different models,
/// formats, sources or settings, and incomplete or overlapping sets.
pub fn merge(
    shards: &[PathBuf],
    out: &Path,
    hnsw: Option<HnswParams>,
    force: bool,
    progress: &dyn Progress,
) -> Result<Manifest> {
    let w = Writer::open(out)?;
    match w.current() {
        Ok(Some(_)) if !force => return Err(writer::finished_index_there(out)),
        Err(e) if !force => return Err(e),
        _ => {}
    }
    let mut ms: Vec<(PathBuf, Manifest, crate::store::manifest::Shard)> = Vec::new();
    for d in shards {
        let m = Manifest::read(d)?;
        let Some(s) = m.shard.clone() else {
            return Err(Error::invalid(
                d,
                None,
                "not a shard (built without --shard)",
            ));
        };
        ms.push((d.clone(), m, s));
    }
    if ms.is_empty() {
        return Err(Error::Usage("merge needs at least one shard folder".into()));
    }
    ms.sort_by_key(|(_, _, s)| s.index);
    let (d0, m0, s0) = &ms[0];
    for (d, m, s) in &ms[1..] {
        let differ = |what: &str| {
            Err(Error::Usage(format!(
                "{} and {} differ in {what}: shards of one index must share model, input format, pooling, dtype and sources",
                d0.display(),
                d.display()
            )))
        };
        let fingerprint = |m: &Manifest| m.model.as_ref().map(|x| x.fingerprint.clone());
        if fingerprint(m) != fingerprint(m0) {
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
        let sources = |m: &Manifest| {
            m.sources.as_ref().map(|s| {
                (
                    s.collection.sha256.clone(),
                    s.titles.as_ref().map(|t| t.sha256.clone()),
                    s.fix_encoding,
                )
            })
        };
        if sources(m) != sources(m0) {
            return differ("sources");
        }
        if s.count != s0.count || s.total != s0.total || s.chunk_rows != s0.chunk_rows {
            return differ("shard count");
        }
    }
    let idx: Vec<usize> = ms.iter().map(|(_, _, s)| s.index).collect();
    if idx != (0..s0.count).collect::<Vec<_>>() {
        return Err(Error::Usage(format!(
            "merge needs every shard 0..{} exactly once; got shards {idx:?}",
            s0.count
        )));
    }
    let (gen, gen_dir) = w.new_generation()?;
    writer::discard_on_error(&gen_dir, || {
        join(&ms, s0.total, m0, hnsw, gen, &gen_dir, &w, progress)
    })
}

/// Writes the merged index into `gen_dir` and commits it.
#[allow(clippy::too_many_arguments)]
fn join(
    ms: &[(PathBuf, Manifest, crate::store::manifest::Shard)],
    total: usize,
    m0: &Manifest,
    hnsw: Option<HnswParams>,
    gen: u64,
    gen_dir: &Path,
    w: &Writer,
    progress: &dyn Progress,
) -> Result<Manifest> {
    progress.stage("merging", Some(total as u64));
    let mut vectors = NpyAppender::create(&gen_dir.join(PARTIAL), m0.dtype, m0.dim)?;
    let mut ids = Vec::with_capacity(total);
    let mut offsets = Vec::with_capacity(total);
    for (d, m, _) in ms {
        // Each shard is read through the checks a search makes at open (sizes, ids' checksums).
        let shard = super::Index::open(d)?;
        debug_assert_eq!(shard.manifest.count, m.count);
        vectors.append_bytes(shard.vectors.bytes())?;
        ids.extend(shard.ids);
        offsets.extend(shard.offsets);
        progress.set(vectors.rows() as u64);
    }
    progress.finish_stage();
    failpoint::hit("matrix-finish").at(gen_dir.join(PARTIAL))?;
    vectors.finish(&gen_dir.join(VECTORS))?;
    crate::store::ids::write(gen_dir, &ids, &offsets)?;
    if let Some(params) = hnsw {
        writer::build_graph(gen_dir, params, progress)?;
    }
    let mut manifest = m0.clone();
    manifest.shard = None;
    manifest.count = total;
    manifest.hnsw = hnsw;
    manifest.settings = String::new();
    manifest.data = layout::generation_name(gen);
    progress.message("checksumming the index");
    manifest.files = writer::checksum_files(gen_dir, &writer::index_files(hnsw.is_some()), &[])?;
    w.commit(&mut manifest)?;
    Ok(manifest)
}

/// Builds (or rebuilds) the graph of a finished index: a new generation shares the index's other
/// files (hard links) and holds the new graph; the commit makes it the index.
pub fn rebuild_graph(dir: &Path, params: HnswParams, progress: &dyn Progress) -> Result<Manifest> {
    let w = Writer::open(dir)?;
    let Some(mut manifest) = w.current()? else {
        return Err(Manifest::read(dir)
            .err()
            .unwrap_or_else(|| Error::invalid(dir, None, "no finished index here")));
    };
    // The graph is built from the matrix as it is: check what is cheap to check first.
    super::Index::open(dir)?;
    let old = manifest.data_dir(dir);
    let (gen, gen_dir) = w.new_generation()?;
    writer::discard_on_error(&gen_dir, || {
        for name in [VECTORS, DOCIDS, OFFSETS] {
            layout::share_file(&old, &gen_dir, name)?;
        }
        writer::build_graph(&gen_dir, params, progress)?;
        manifest.hnsw = Some(params);
        manifest.data = layout::generation_name(gen);
        // The shared files' checksums carry over; the graph's is new.
        let known: Vec<_> = manifest
            .files
            .iter()
            .filter(|f| f.path != layout::GRAPH)
            .cloned()
            .collect();
        manifest.files = writer::checksum_files(&gen_dir, &writer::index_files(true), &known)?;
        w.commit(&mut manifest)?;
        Ok(manifest)
    })
}
