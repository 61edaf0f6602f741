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

/// The name of the file that `name` is the temporary name of (`NAME.tmpPID`, see [`temp_path`]).
pub fn temp_of(name: &str) -> Option<&str> {
    let (of, pid) = name.rsplit_once(".tmp")?;
    (!of.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(of)
}

/// Removes the temporary files in `dir` (`NAME.tmpPID`) of the files whose names `of` accepts: an
/// atomic write stopped between its start and its rename (a killed process) leaves one behind. A
/// missing folder has none. Only for a folder whose writers hold a lock the caller now holds: no
/// one else's write is in flight there.
pub fn remove_temp_files(dir: &Path, of: impl Fn(&str) -> bool) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for e in entries {
        let e = e.at(dir)?;
        let name = e.file_name();
        let stale = name.to_str().and_then(temp_of).is_some_and(&of);
        if stale && e.file_type().is_ok_and(|t| t.is_file()) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(Error::io(e.path(), err)),
            }
        }
    }
    Ok(())
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
