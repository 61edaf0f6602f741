//! The engine's one error type. Every variant says which file (and line, where there is one) is at
//! fault, so that the binaries can print it as it is and exit non-zero.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error while reading or writing `path`. The OS message is part of this
    /// one's, so it is not also a `source`: an error chain would print it twice.
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    /// A file whose content is wrong: `line` is 1-based where the file is line-oriented.
    #[error("{}{}: {msg}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        msg: String,
    },
    /// A file of an index that is damaged, or that disagrees with the manifest or the other files.
    #[error("{}: {msg}", path.display())]
    DataCorruption { path: PathBuf, msg: String },
    /// Another process holds an index folder's write lock.
    #[error("{}: another command (PID {pid}) is writing this index folder; wait for it to finish or stop it", dir.display())]
    Locked { dir: PathBuf, pid: String },
    /// A model configuration this engine cannot run.
    #[error("{path}: unsupported model configuration: {msg}")]
    Unsupported { path: PathBuf, msg: String },
    /// A model that cannot be found or fetched.
    #[error("{0}")]
    ModelNotFound(String),
    /// A failure inside the tensor library (its message without the backtrace candle appends when
    /// RUST_BACKTRACE is set).
    #[error("tensor error: {}", first_line(.0))]
    Candle(#[from] candle_core::Error),
    /// A compute device that cannot be used (unknown name, no CUDA in this build, no GPU).
    #[error("{0}")]
    Device(String),
    /// The tokenizer failed on a text.
    #[error("tokenisation failed: {0}")]
    Tokenizer(String),
    /// A request that cannot be done as asked: an option's value, inputs that do not go together
    /// (shards of different indexes, queries of another dimension, text for an index without a model).
    #[error("{0}")]
    Usage(String),
    /// The caller asked the command to stop (`Progress::cancelled`); what it had recorded is kept,
    /// and the same command resumes from there.
    #[error("{0}")]
    Cancelled(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The first line of an error's message.
pub fn first_line(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            err: source,
        }
    }

    pub fn corrupt(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::DataCorruption {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn invalid(path: impl AsRef<Path>, line: Option<usize>, msg: impl Into<String>) -> Self {
        Error::Invalid {
            path: path.as_ref().to_path_buf(),
            line,
            msg: msg.into(),
        }
    }
}

/// Adds the file name to an `io::Result`.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
