//! What every command that writes an index folder shares: the write lock, the generation it writes,
//! the graph step, and the commit (the manifest's atomic replacement, then the removal of what the new
//! manifest no longer names). See `store::layout` for the folder.

use std::path::{Path, PathBuf};

use super::Progress;
use crate::error::{Error, IoContext, Result};
use crate::failpoint;
use crate::search::hnsw::{self, HnswParams};
use crate::store::layout::{self, GRAPH, MANIFEST, PROGRESS};
use crate::store::lock::WriteLock;
use crate::store::manifest::{FileSum, Manifest};
use crate::store::npy::NpyMatrix;

/// An index folder opened for writing: locked for the life of the value.
pub(crate) struct Writer {
    dir: PathBuf,
    /// The folder did not exist before this writer: a command that fails before writing anything
    /// removes it again rather than leave an empty folder behind.
    created: bool,
    _lock: WriteLock,
}

impl Writer {
    /// Locks `dir` (created if needed; a folder holding other things is refused) and removes what an
    /// interrupted command left behind: the temporary files of atomic writes (`NAME.tmpPID`) of the
    /// index's files, and generations that the manifest does not name and that are not a resumable
    /// build. With a damaged manifest no generation is removed.
    pub fn open(dir: &Path) -> Result<Writer> {
        layout::check_out_dir(dir)?;
        let created = !dir.exists();
        let lock = WriteLock::acquire(dir)?;
        let w = Writer {
            dir: dir.to_path_buf(),
            created,
            _lock: lock,
        };
        // Every command that writes the index's files holds the lock now held here, so any
        // temporary one is a killed command's, whatever its PID (a PID says nothing once reused, or
        // when the folder is written from another PID namespace or host). In the folder itself only
        // the manifest's are the index's; a generation folder holds only what writers put there.
        crate::store::remove_temp_files(dir, |of| of == MANIFEST)?;
        for g in layout::generations(dir)? {
            crate::store::remove_temp_files(&dir.join(layout::generation_name(g)), |_| true)?;
        }
        let current = match w.current() {
            Ok(m) => m.map(|m| m.generation()),
            // A manifest there that cannot be read names no generation: its index may be any of
            // them, so none is removed. The command reports the damage (or replaces the index under
            // --force, whose commit removes the rest).
            Err(_) => return Ok(w),
        };
        let mut keep: Vec<u64> = current.into_iter().collect();
        for g in layout::generations(dir)? {
            let gen_dir = dir.join(layout::generation_name(g));
            if Some(g) == current {
                // A build that stopped after its commit left its record behind.
                layout::remove_if_exists(&gen_dir.join(PROGRESS))?;
            } else if gen_dir.join(PROGRESS).is_file() {
                keep.push(g);
            }
        }
        layout::remove_generations_except(dir, &keep)?;
        Ok(w)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The finished index in the folder, if there is one.
    pub fn current(&self) -> Result<Option<Manifest>> {
        if self.dir.join(MANIFEST).is_file() {
            Manifest::read(&self.dir).map(Some)
        } else {
            Ok(None)
        }
    }

    fn current_generation(&self) -> Option<u64> {
        self.current().ok().flatten().map(|m| m.generation())
    }

    /// A new, empty generation folder.
    pub fn new_generation(&self) -> Result<(u64, PathBuf)> {
        layout::new_generation(&self.dir, self.current_generation())
    }

    /// Makes `manifest` (naming its generation) the index: writes it with its checksums, then
    /// removes every other generation but unfinished builds. Once the manifest is written the command
    /// has succeeded: what is left to remove is removed by the next writer if this one cannot.
    pub fn commit(&self, manifest: &mut Manifest) -> Result<()> {
        let path = self.dir.join(MANIFEST);
        failpoint::hit("manifest").at(&path)?;
        manifest.write(&self.dir)?;
        let _ = failpoint::hit("committed");
        let gen_dir = manifest.data_dir(&self.dir);
        let _ = layout::remove_if_exists(&gen_dir.join(PROGRESS));
        let mut keep = vec![manifest.generation()];
        for g in layout::generations(&self.dir).unwrap_or_default() {
            if self
                .dir
                .join(layout::generation_name(g))
                .join(PROGRESS)
                .is_file()
            {
                keep.push(g);
            }
        }
        let _ = layout::remove_generations_except(&self.dir, &keep);
        // A committed index supersedes any graph build in progress.
        hnsw::checkpoint::remove(&self.dir);
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let nothing_written = !self.dir.join(MANIFEST).exists()
            && layout::generations(&self.dir).is_ok_and(|g| g.is_empty());
        if self.created && nothing_written {
            let _ = std::fs::remove_file(self.dir.join(layout::LOCK));
            // Not recursive: only an empty folder goes.
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// Runs the rest of a command that writes generation `gen_dir`; if it fails, the generation is
/// removed (it is not resumable), and the index stays as it was.
pub(crate) fn discard_on_error<T>(gen_dir: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let r = f();
    if r.is_err() {
        let _ = std::fs::remove_dir_all(gen_dir);
    }
    r
}

/// Builds the graph of the matrix in `gen_dir` and writes it there (atomically); returns the file's
/// size and SHA-256, as written.
pub(crate) fn build_graph(
    gen_dir: &Path,
    params: HnswParams,
    progress: &dyn Progress,
) -> Result<FileSum> {
    let matrix = NpyMatrix::open(&gen_dir.join(layout::VECTORS))?;
    progress.stage("graph", Some(matrix.rows() as u64));
    // Checkpoints go beside the generations: a stopped build's generation is removed by the next
    // writer, its checkpoint is not.
    let index_dir = gen_dir.parent().unwrap_or(gen_dir);
    let note = |m: &str| progress.message(m);
    let g = hnsw::build_resumable(
        &matrix,
        params,
        &|n| progress.set(n as u64),
        Some(hnsw::CheckpointsIn::new(index_dir, &note)),
    )?;
    progress.finish_stage();
    let (size, sha256) = g.save(&gen_dir.join(GRAPH))?;
    failpoint::hit("graph-saved").at(gen_dir.join(GRAPH))?;
    Ok(FileSum {
        path: GRAPH.to_string(),
        size,
        sha256,
    })
}

/// Checksums of the named files of `gen_dir`, reusing `known` ones (files shared, unchanged, with
/// an earlier generation).
pub(crate) fn checksum_files(
    gen_dir: &Path,
    names: &[&str],
    known: &[FileSum],
) -> Result<Vec<FileSum>> {
    names
        .iter()
        .map(|&n| match known.iter().find(|f| f.path == n) {
            Some(f) => Ok(f.clone()),
            None => FileSum::of(&gen_dir.join(n), n),
        })
        .collect()
}

/// The files of an index, with or without its graph.
pub(crate) fn index_files(graph: bool) -> Vec<&'static str> {
    let mut names = vec![layout::VECTORS, layout::DOCIDS, layout::OFFSETS];
    if graph {
        names.push(GRAPH);
    }
    names
}

/// The error for a finished index in the way of a command without `--force`.
pub(crate) fn finished_index_there(dir: &Path) -> Error {
    Error::invalid(
        dir,
        None,
        "a finished index is already there; pass --force to replace it \
         (it keeps answering searches until the new one is complete)",
    )
}
