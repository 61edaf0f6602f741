//! The on-disk index: the folder's layout and write lock, vectors (`.npy`), document ids and text
//! offsets, the manifest; atomic writes and outputs.

pub mod ids;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod npy;
pub mod output;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The temporary name a file is written under before it is renamed into place.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `path` atomically: into a temporary file beside it, flushed and synced, then renamed. A
/// failed write (a full disk, say) is an error and leaves any earlier `path` as it was.
pub fn atomic_write(
    path: &Path,
    f: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = temp_path(path);
    let res = (|| -> std::io::Result<()> {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        f(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        // A test can make this write fail as a full disk would (`SIMLM_FAILPOINT="write graph.hnsw=error"`).
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        crate::failpoint::hit(&format!("write {name}"))?;
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    std::fs::rename(&tmp, path).at(path)?;
    sync_dir(path);
    Ok(())
}

/// Makes a rename durable (best effort: not every platform lets a directory be opened).
pub fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            let _ = d.sync_all();
        }
    }
}

/// Writes a whole text file atomically.
pub fn atomic_write_str(path: &Path, text: &str) -> Result<()> {
    atomic_write(path, |w| w.write_all(text.as_bytes()))
}
