//! The index folder's layout: every file name of an index, once.
//!
//! ```text
//! DIR/manifest.json        what the index holds, which generation is current; its own checksum
//! DIR/simlm-index.lock     the write lock (see `lock`)
//! DIR/gen000003/           the current generation, named by the manifest:
//!     vectors.npy            f32 or f16 matrix, row i = passage i (numpy opens it)
//!     docids.txt             one id a line
//!     offsets.bin            little-endian u64 per passage: where its line starts in the collection
//!     graph.hnsw             the HNSW graph (links and 8-bit codes), when built
//! DIR/gen000004/           a build in progress (`build.progress.json`, `vectors.npy.partial`), if any
//! ```
//!
//! A generation's files never change once a manifest names it. Every command that writes an index
//! writes a new generation beside the current one and then replaces `manifest.json` (an atomic rename):
//! that rename is the commit. Until it, searches answer from the old generation; after it, from the
//! new one, whole. Older generations are removed after the commit (a search that still has their files
//! open keeps reading them; the kernel frees them when it closes them).

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

pub const MANIFEST: &str = "manifest.json";
pub const LOCK: &str = "simlm-index.lock";
pub const VECTORS: &str = "vectors.npy";
pub const DOCIDS: &str = "docids.txt";
pub const OFFSETS: &str = "offsets.bin";
pub const GRAPH: &str = "graph.hnsw";
/// A build's record of what is done (in the generation being built).
pub const PROGRESS: &str = "build.progress.json";
/// The matrix while it is being appended to.
pub const PARTIAL: &str = "vectors.npy.partial";

const GEN_PREFIX: &str = "gen";

/// The folder name of generation `n`.
pub fn generation_name(n: u64) -> String {
    format!("{GEN_PREFIX}{n:06}")
}

/// The generation number of a folder name, if it is one.
pub fn parse_generation(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(GEN_PREFIX)?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The generation folders present in `dir`, ascending.
pub fn generations(dir: &Path) -> Result<Vec<u64>> {
    let mut gens = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(gens),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for e in entries {
        let e = e.at(dir)?;
        if let Some(g) = e.file_name().to_str().and_then(parse_generation) {
            if e.path().is_dir() {
                gens.push(g);
            }
        }
    }
    gens.sort_unstable();
    Ok(gens)
}

/// Whether `dir` looks like an index folder (finished, or being built).
pub fn is_index_dir(dir: &Path) -> bool {
    dir.join(MANIFEST).is_file()
        || dir.join(LOCK).is_file()
        || generations(dir).map(|g| !g.is_empty()).unwrap_or(false)
}

/// Refuses to write an index into a folder that holds other things (`--out ~`, say): the folder must
/// be new, empty, or an index folder.
pub fn check_out_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::invalid(
            dir,
            None,
            "exists and is not a folder; give a new or empty folder for the index",
        ));
    }
    if !dir.is_dir() || is_index_dir(dir) {
        return Ok(());
    }
    let mut entries = std::fs::read_dir(dir).at(dir)?;
    if entries.next().is_some() {
        return Err(Error::invalid(
            dir,
            None,
            "the folder holds files that are not an index; give a new or empty folder for the index",
        ));
    }
    Ok(())
}

/// Removes a file; a file that is not there is fine.
pub fn remove_if_exists(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(p, e)),
    }
}

/// Removes every generation folder of `dir` but those in `keep`.
pub fn remove_generations_except(dir: &Path, keep: &[u64]) -> Result<()> {
    for g in generations(dir)? {
        if !keep.contains(&g) {
            let p = dir.join(generation_name(g));
            match std::fs::remove_dir_all(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&p, e)),
            }
        }
    }
    Ok(())
}

/// A new, empty generation folder, numbered after every generation present and `current`.
pub fn new_generation(dir: &Path, current: Option<u64>) -> Result<(u64, PathBuf)> {
    let last = generations(dir)?.last().copied().unwrap_or(0);
    let g = last.max(current.unwrap_or(0)) + 1;
    let p = dir.join(generation_name(g));
    std::fs::create_dir(&p).at(&p)?;
    super::sync_dir(&p);
    Ok((g, p))
}

/// Links (or, where the file system cannot, copies) `name` of generation folder `from` into `to`:
/// a new generation that changes only some files shares the others' bytes.
pub fn share_file(from: &Path, to: &Path, name: &str) -> Result<()> {
    let (src, dst) = (from.join(name), to.join(name));
    remove_if_exists(&dst)?;
    if std::fs::hard_link(&src, &dst).is_err() {
        std::fs::copy(&src, &dst).at(&dst)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_names_round_trip() {
        assert_eq!(generation_name(3), "gen000003");
        assert_eq!(parse_generation("gen000003"), Some(3));
        assert_eq!(parse_generation("gen1234567"), Some(1_234_567));
        assert_eq!(parse_generation("gen12"), None);
        assert_eq!(parse_generation("gen00000x"), None);
        assert_eq!(parse_generation("vectors.npy"), None);
    }

    #[test]
    fn foreign_folders_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        check_out_dir(&tmp.path().join("new")).unwrap();
        check_out_dir(tmp.path()).unwrap();
        std::fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
        let e = check_out_dir(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("not an index"), "{e}");
        let e = check_out_dir(&tmp.path().join("notes.txt"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a folder"), "{e}");
    }
}
