//! The engine's errors as Python exceptions: a missing file is a `FileNotFoundError`, a bad argument
//! or input a `ValueError`, a damaged index a `CorruptIndexError`, an index another process is writing
//! a `LockedIndexError` (both `simlm.IndexError`s), each with the engine's message.

use pyo3::create_exception;
use pyo3::exceptions::{
    PyException, PyFileNotFoundError, PyKeyboardInterrupt, PyOSError, PyPermissionError,
    PyRuntimeError, PyValueError,
};
use pyo3::PyErr;

create_exception!(
    simlm,
    IndexError,
    PyException,
    "An index folder that cannot be used as it is (the base of CorruptIndexError and \
     LockedIndexError). Not Python's built-in IndexError, which out-of-range rows raise."
);
create_exception!(
    simlm,
    CorruptIndexError,
    IndexError,
    "A file of the index is damaged or disagrees with the manifest: run `simlm-index verify` on \
     the folder and rebuild it."
);
create_exception!(
    simlm,
    LockedIndexError,
    IndexError,
    "Another process (or another call in this one) is writing the index folder."
);

/// The Python exception for an engine error.
pub fn to_py(e: engine::Error) -> PyErr {
    use engine::Error as E;
    let msg = e.to_string();
    match e {
        E::Io { err, .. } => match err.kind() {
            std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
            std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(msg),
            _ => PyOSError::new_err(msg),
        },
        E::ModelNotFound(_) => PyFileNotFoundError::new_err(msg),
        E::DataCorruption { .. } => CorruptIndexError::new_err(msg),
        E::Locked { .. } => LockedIndexError::new_err(msg),
        E::Cancelled(_) => PyKeyboardInterrupt::new_err(msg),
        E::Candle(_) => PyRuntimeError::new_err(msg),
        E::Invalid { .. }
        | E::Unsupported { .. }
        | E::Device(_)
        | E::Tokenizer(_)
        | E::Usage(_) => PyValueError::new_err(msg),
    }
}

/// An evaluation input error (a run or qrels file).
pub fn eval_to_py(e: eval::InputError) -> PyErr {
    let msg = e.to_string();
    match e {
        eval::InputError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(msg)
        }
        eval::InputError::Io { .. } => PyOSError::new_err(msg),
        _ => PyValueError::new_err(msg),
    }
}

pub trait OrRaise<T> {
    /// The engine's result as a Python one.
    fn or_raise(self) -> pyo3::PyResult<T>;
}

impl<T> OrRaise<T> for engine::Result<T> {
    fn or_raise(self) -> pyo3::PyResult<T> {
        self.map_err(to_py)
    }
}
