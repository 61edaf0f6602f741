//! The write lock of an index folder: an advisory lock (`flock`) on `simlm-index.lock`, held for
//! the life of the command that writes the folder. The kernel releases it when the process ends, however
//! it ends, so a killed build never leaves a stale lock that blocks its resume. The file holds the
//! holder's PID, for the message the next writer prints.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::layout::LOCK;
use crate::error::{Error, IoContext, Result};

/// Held while a command writes an index folder; released on drop or process exit.
#[derive(Debug)]
pub struct WriteLock {
    _file: File,
    dir: PathBuf,
}

impl WriteLock {
    /// Takes the lock of `dir` (creating the folder if needed), or fails at once with
    /// [`Error::Locked`] naming the holder's PID.
    pub fn acquire(dir: &Path) -> Result<WriteLock> {
        std::fs::create_dir_all(dir).at(dir)?;
        let path = dir.join(LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(Error::Locked {
                    dir: dir.to_path_buf(),
                    pid: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid.to_string()
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        file.set_len(0).at(&path)?;
        file.seek(SeekFrom::Start(0)).at(&path)?;
        writeln!(file, "{}", std::process::id()).at(&path)?;
        Ok(WriteLock {
            _file: file,
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_until_the_first_is_done() {
        let tmp = tempfile::tempdir().unwrap();
        let first = WriteLock::acquire(tmp.path()).unwrap();
        let err = WriteLock::acquire(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("PID {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains(&tmp.path().display().to_string()), "{err}");
        drop(first);
        WriteLock::acquire(tmp.path()).unwrap();
    }
}
