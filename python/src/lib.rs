//! `simlm._simlm`: the engine's encoder, index, builds and evaluation for Python, with numpy arrays in
//! and out. Every call that can take long runs on a worker thread with the GIL released, while the
//! calling thread waits in 100 ms steps and checks for signals, so Ctrl-C raises KeyboardInterrupt
//! (a build stops at its next chunk boundary and resumes as a stopped `simlm-index build` does).
//! The decisions (options, checks, formats) are the engine's: this crate converts and forwards.

mod build;
mod encoder;
mod errors;
mod evaluate;
mod index;
mod progress;
mod work;

use pyo3::prelude::*;

/// The native part of the `simlm` package; import `simlm` instead.
#[pymodule]
fn _simlm(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("IndexError", py.get_type::<errors::IndexError>())?;
    m.add(
        "CorruptIndexError",
        py.get_type::<errors::CorruptIndexError>(),
    )?;
    m.add(
        "LockedIndexError",
        py.get_type::<errors::LockedIndexError>(),
    )?;
    m.add_class::<encoder::Encoder>()?;
    m.add_class::<index::Index>()?;
    m.add_function(wrap_pyfunction!(build::build_index, m)?)?;
    m.add_function(wrap_pyfunction!(build::import_vectors, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate::evaluate, m)?)?;
    m.add("DEFAULT_MODEL", engine::DEFAULT_MODEL)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
