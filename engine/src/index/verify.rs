//! `verify`: the full check of an index, every byte read. `Index::open` checks what is cheap (the
//! manifest's own checksum, sizes and headers against the manifest, the ids' checksums); this reads
//! the matrix and the graph whole too.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::search::hnsw::Graph;
use crate::store::layout::{DOCIDS, GRAPH, OFFSETS, VECTORS};
use crate::store::manifest::{sha256_file, Manifest};
use crate::store::npy::NpyMatrix;

/// Something wrong with one file of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file at fault (the index folder for what the manifest lacks).
    pub file: PathBuf,
    /// What is wrong, naming the file.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Problem {
    /// How many files `problems` are about, each counted once.
    pub fn files(problems: &[Problem]) -> usize {
        let mut files: Vec<&Path> = problems.iter().map(|p| p.file.as_path()).collect();
        files.sort_unstable();
        files.dedup();
        files.len()
    }
}

/// Checks every file of an index against the manifest (checksums, sizes, and that each file holds
/// `count` rows of `dim` in `dtype`); returns the problems found, one file possibly more than once
/// (a truncated matrix has the wrong size and the wrong length for its header). A manifest that is
/// damaged or edited is an error.
pub fn verify(dir: &Path) -> Result<Vec<Problem>> {
    let manifest = Manifest::read(dir)?;
    let data = manifest.data_dir(dir);
    let mut problems = Problems(Vec::new());
    let mut required = vec![VECTORS, DOCIDS, OFFSETS];
    if manifest.hnsw.is_some() {
        required.push(GRAPH);
    }
    for name in &required {
        if manifest.file(name).is_none() {
            problems.add(
                dir,
                format!("{}: the manifest does not list {name}", dir.display()),
            );
        }
    }
    for f in &manifest.files {
        let p = data.join(&f.path);
        if !p.is_file() {
            problems.add(&p, format!("{}: missing", p.display()));
            continue;
        }
        let (size, sum) = sha256_file(&p)?;
        if size != f.size {
            problems.add(
                &p,
                format!(
                    "{}: {size} bytes, the manifest says {}",
                    p.display(),
                    f.size
                ),
            );
        } else if sum != f.sha256 {
            problems.add(
                &p,
                format!(
                    "{}: checksum differs from the manifest (the file is damaged)",
                    p.display()
                ),
            );
        }
    }
    let (count, dim) = (manifest.count, manifest.dim);
    let vectors = data.join(VECTORS);
    match NpyMatrix::open(&vectors) {
        Ok(m) if (m.rows(), m.cols(), m.header.dtype) != (count, dim, manifest.dtype) => problems
            .add(
                &vectors,
                format!(
                    "{}: holds {} x {} {:?}, the manifest says {count} x {dim} {:?}",
                    m.path().display(),
                    m.rows(),
                    m.cols(),
                    m.header.dtype,
                    manifest.dtype
                ),
            ),
        Ok(_) => {}
        Err(e) => problems.add(path_of(&e).unwrap_or(&vectors), e.to_string()),
    }
    let (ids, offsets) = (data.join(DOCIDS), data.join(OFFSETS));
    match crate::store::ids::read(&data, None) {
        Ok((read, _)) if read.len() != count => problems.add(
            &ids,
            format!(
                "{}: {} ids, the manifest says {count} passages",
                ids.display(),
                read.len()
            ),
        ),
        Ok(_) => {}
        Err(e) => {
            // The two files disagree: the one whose size or checksum is wrong is the damaged one.
            let file = [&ids, &offsets]
                .into_iter()
                .find(|p| problems.about(p))
                .map(|p| p.as_path())
                .or(path_of(&e))
                .unwrap_or(&ids)
                .to_path_buf();
            problems.add(&file, e.to_string())
        }
    }
    if manifest.hnsw.is_some() {
        let graph = data.join(GRAPH);
        match Graph::open(&graph, dir) {
            Ok(g) if (g.len(), g.dim()) != (count, dim) => problems.add(
                &graph,
                format!(
                    "{}: a graph of {} x {}, the manifest says {count} x {dim}",
                    graph.display(),
                    g.len(),
                    g.dim()
                ),
            ),
            Ok(_) => {}
            Err(e) => problems.add(path_of(&e).unwrap_or(&graph), e.to_string()),
        }
    }
    Ok(problems.0)
}

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, file: &Path, message: String) {
        self.0.push(Problem {
            file: file.to_path_buf(),
            message,
        });
    }

    /// Whether a problem was found with `file`.
    fn about(&self, file: &Path) -> bool {
        self.0.iter().any(|p| p.file == file)
    }
}

/// The file an error is about, where it names one.
fn path_of(e: &Error) -> Option<&Path> {
    match e {
        Error::Io { path, .. }
        | Error::Invalid { path, .. }
        | Error::DataCorruption { path, .. }
        | Error::Unsupported { path, .. } => Some(path),
        _ => None,
    }
}
