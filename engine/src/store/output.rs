//! Where a command's `--out` file goes, by the rules every tool follows: `-` is standard output; a
//! symlink is written through (its target is replaced atomically, the link stays); a device, FIFO or
//! socket (`/dev/stdout`, a named pipe) is written in place, never renamed over; a regular file is
//! written to a temporary file beside it and renamed into place; a path inside an index folder, or one
//! of the command's own inputs, is refused.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::layout;
use crate::error::{Error, IoContext, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout,
    /// Written in place (a device or a FIFO).
    Direct(PathBuf),
    /// Written beside, then renamed over (the real path, links followed).
    Atomic(PathBuf),
}

impl Output {
    /// Resolves `--out path` for a command that reads `inputs`.
    pub fn resolve(path: &Path, inputs: &[&Path]) -> Result<Output> {
        if path.as_os_str() == "-" {
            return Ok(Output::Stdout);
        }
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.is_dir() {
                return Err(Error::invalid(
                    path,
                    None,
                    "is a folder; give a file name for --out",
                ));
            }
            if !meta.is_file() {
                return Ok(Output::Direct(path.to_path_buf()));
            }
        }
        let target = follow_links(path)?;
        let name = target
            .file_name()
            .ok_or_else(|| {
                Error::invalid(path, None, "not a file name; give a file name for --out")
            })?
            .to_os_string();
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let parent = std::fs::canonicalize(&parent).map_err(|e| {
            Error::invalid(
                path,
                None,
                format!(
                    "its folder {} cannot be used ({e}); create it first",
                    parent.display()
                ),
            )
        })?;
        if parent.starts_with("/dev") || parent.starts_with("/proc") {
            return Ok(Output::Direct(path.to_path_buf()));
        }
        let real = parent.join(&name);
        for dir in [Some(parent.as_path()), parent.parent()]
            .into_iter()
            .flatten()
        {
            if layout::is_index_dir(dir) {
                return Err(Error::invalid(
                    path,
                    None,
                    format!(
                        "is inside the index folder {}; write the output somewhere else",
                        dir.display()
                    ),
                ));
            }
        }
        for input in inputs {
            if std::fs::canonicalize(input).is_ok_and(|i| i == real) {
                return Err(Error::invalid(
                    path,
                    None,
                    "is one of this command's inputs; write the output somewhere else",
                ));
            }
        }
        Ok(Output::Atomic(real))
    }

    /// Writes the output; for `Atomic`, a failure leaves any earlier file as it was.
    pub fn write(&self, f: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
        match self {
            Output::Stdout => {
                let stdout = std::io::stdout();
                let mut w = std::io::BufWriter::new(stdout.lock());
                f(&mut w).and_then(|()| w.flush()).at("standard output")
            }
            Output::Direct(p) => {
                let file = std::fs::OpenOptions::new().write(true).open(p).at(p)?;
                let mut w = std::io::BufWriter::new(file);
                f(&mut w).and_then(|()| w.flush()).at(p)
            }
            Output::Atomic(p) => super::atomic_write(p, |w| f(w)),
        }
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Stdout => f.write_str("standard output"),
            Output::Direct(p) | Output::Atomic(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The path a chain of symlinks ends at (which need not exist yet).
fn follow_links(path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = std::fs::read_link(&p).at(&p)?;
                p = match p.parent() {
                    Some(dir) if to.is_relative() => dir.join(to),
                    _ => to,
                };
            }
            _ => return Ok(p),
        }
    }
    Err(Error::invalid(
        path,
        None,
        "too many levels of symbolic links",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_follow_the_rules() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        assert_eq!(
            Output::resolve(Path::new("-"), &[]).unwrap(),
            Output::Stdout
        );
        let null = Output::resolve(Path::new("/dev/null"), &[]).unwrap();
        assert_eq!(null, Output::Direct("/dev/null".into()));
        null.write(|w: &mut dyn Write| w.write_all(b"x")).unwrap();
        // A symlink is written through; the link stays a link.
        std::fs::write(t.join("target.txt"), "old").unwrap();
        std::os::unix::fs::symlink("target.txt", t.join("link.txt")).unwrap();
        let o = Output::resolve(&t.join("link.txt"), &[]).unwrap();
        o.write(|w| w.write_all(b"new")).unwrap();
        assert_eq!(
            std::fs::read_to_string(t.join("target.txt")).unwrap(),
            "new"
        );
        assert!(std::fs::symlink_metadata(t.join("link.txt"))
            .unwrap()
            .file_type()
            .is_symlink());
        // Inputs and index folders are refused.
        let e = Output::resolve(&t.join("link.txt"), &[&t.join("target.txt")]).unwrap_err();
        assert!(e.to_string().contains("inputs"), "{e}");
        std::fs::create_dir(t.join("idx")).unwrap();
        std::fs::write(t.join("idx").join(layout::MANIFEST), "{}").unwrap();
        let e = Output::resolve(&t.join("idx/run.txt"), &[]).unwrap_err();
        assert!(e.to_string().contains("index folder"), "{e}");
        std::fs::create_dir(t.join("idx/gen000001")).unwrap();
        let e = Output::resolve(&t.join("idx/gen000001/vectors.npy"), &[]).unwrap_err();
        assert!(e.to_string().contains("index folder"), "{e}");
        let e = Output::resolve(&t.join("nowhere/run.txt"), &[]).unwrap_err();
        assert!(e.to_string().contains("create it first"), "{e}");
    }
}
