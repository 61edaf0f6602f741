//! `verify`: the full check of an index, every byte read. `Index::open` checks what is cheap (the
//! manifest's own checksum, sizes and headers against the manifest, the ids' checksums); this reads
//! the matrix and the graph whole too.

use std::path::Path;

use crate::error::Result;
use crate::search::hnsw::Graph;
use crate::store::layout::{DOCIDS, GRAPH, OFFSETS, VECTORS};
use crate::store::manifest::{sha256_file, Manifest};
use crate::store::npy::NpyMatrix;

/// Checks every file of an index against the manifest (checksums, sizes, and that each file holds
/// `count` rows of `dim` in `dtype`); returns the problems found. A manifest that is damaged or
/// edited is an error.
pub fn verify(dir: &Path) -> Result<Vec<String>> {
    let manifest = Manifest::read(dir)?;
    let data = manifest.data_dir(dir);
    let mut problems = Vec::new();
    let mut required = vec![VECTORS, DOCIDS, OFFSETS];
    if manifest.hnsw.is_some() {
        required.push(GRAPH);
    }
    for name in &required {
        if manifest.file(name).is_none() {
            problems.push(format!(
                "{}: the manifest does not list {name}",
                dir.display()
            ));
        }
    }
    for f in &manifest.files {
        let p = data.join(&f.path);
        if !p.is_file() {
            problems.push(format!("{}: missing", p.display()));
            continue;
        }
        let (size, sum) = sha256_file(&p)?;
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
    let (count, dim) = (manifest.count, manifest.dim);
    match NpyMatrix::open(&data.join(VECTORS)) {
        Ok(m) if (m.rows(), m.cols(), m.header.dtype) != (count, dim, manifest.dtype) => problems
            .push(format!(
                "{}: holds {} x {} {:?}, the manifest says {count} x {dim} {:?}",
                m.path().display(),
                m.rows(),
                m.cols(),
                m.header.dtype,
                manifest.dtype
            )),
        Ok(_) => {}
        Err(e) => problems.push(e.to_string()),
    }
    match crate::store::ids::read(&data, None) {
        Ok((ids, _)) if ids.len() != count => problems.push(format!(
            "{}: {} ids, the manifest says {count} passages",
            data.join(DOCIDS).display(),
            ids.len()
        )),
        Ok(_) => {}
        Err(e) => problems.push(e.to_string()),
    }
    if manifest.hnsw.is_some() {
        match Graph::open(&data.join(GRAPH), dir) {
            Ok(g) if (g.len(), g.dim()) != (count, dim) => problems.push(format!(
                "{}: a graph of {} x {}, the manifest says {count} x {dim}",
                data.join(GRAPH).display(),
                g.len(),
                g.dim()
            )),
            Ok(_) => {}
            Err(e) => problems.push(e.to_string()),
        }
    }
    Ok(problems)
}
