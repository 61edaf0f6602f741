//! Running the engine's long calls off the Python thread: the GIL is released, Ctrl-C is noticed
//! within ~100 ms, and no panic crosses into Python.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// How often the waiting Python thread looks for signals.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// What to do with the worker when Ctrl-C arrives.
pub enum OnInterrupt {
    /// Raise at once; the worker finishes in the background and its result is dropped (searches,
    /// encoding, evaluation: they hold their inputs themselves and write nothing).
    Abandon,
    /// Set the flag and wait for the worker to return (a build, which stops at its next chunk
    /// boundary with its progress record saved, and releases the index folder's lock).
    Cancel(Arc<AtomicBool>),
}

/// A rayon pool of `threads` workers, or `None` (rayon's global pool: all cores).
pub fn pool(threads: Option<usize>) -> PyResult<Option<Arc<rayon::ThreadPool>>> {
    match threads {
        None => Ok(None),
        Some(0) => Err(pyo3::exceptions::PyValueError::new_err(
            "threads must be at least 1 (None: all cores)",
        )),
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("simlm-{i}"))
            .build()
            .map(|p| Some(Arc::new(p)))
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start {n} threads: {e}"))),
    }
}

/// Runs `job` in `pool` (or rayon's global pool), catching a panic as a RuntimeError.
pub fn in_pool<T: Send>(
    pool: Option<&rayon::ThreadPool>,
    job: impl FnOnce() -> PyResult<T> + Send,
) -> PyResult<T> {
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| match pool {
        Some(p) => p.install(job),
        None => job(),
    }));
    r.unwrap_or_else(|payload| Err(panic_error(payload)))
}

fn panic_error(payload: Box<dyn std::any::Any + Send>) -> PyErr {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    PyRuntimeError::new_err(format!(
        "internal error in the simlm engine (a bug; please report it): {what}"
    ))
}

/// Runs `job` with the GIL released and no signal check: for calls short enough not to need one.
pub fn quick<T: Send>(
    py: Python<'_>,
    pool: Option<&rayon::ThreadPool>,
    job: impl FnOnce() -> PyResult<T> + Send,
) -> PyResult<T> {
    py.allow_threads(|| in_pool(pool, job))
}

/// Runs `job` on a new thread (inside `pool` when given) with the GIL released, and waits for it,
/// checking for signals every 100 ms. A KeyboardInterrupt (or another exception a signal handler
/// raises) is returned as the call's error, after `on_interrupt`.
pub fn interruptible<T: Send + 'static>(
    py: Python<'_>,
    pool: Option<Arc<rayon::ThreadPool>>,
    on_interrupt: OnInterrupt,
    job: impl FnOnce() -> PyResult<T> + Send + 'static,
) -> PyResult<T> {
    let (tx, rx) = mpsc::channel();
    // The receiver is used with the GIL released: a `&Receiver` is not `Send`, a `&Mutex` of one is.
    let rx = std::sync::Mutex::new(rx);
    let recv = |timeout: Option<Duration>| {
        let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
        match timeout {
            Some(t) => rx.recv_timeout(t),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        }
    };
    std::thread::Builder::new()
        .name("simlm-call".into())
        .spawn(move || {
            let r = in_pool(pool.as_deref(), job);
            let _ = tx.send(r);
        })
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start a worker thread: {e}")))?;
    loop {
        match py.allow_threads(|| recv(Some(SIGNAL_POLL))) {
            Ok(r) => return r,
            Err(RecvTimeoutError::Disconnected) => {
                return Err(PyRuntimeError::new_err(
                    "the simlm worker thread ended without a result",
                ))
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Err(signal) = py.check_signals() {
                    if let OnInterrupt::Cancel(flag) = &on_interrupt {
                        flag.store(true, Ordering::SeqCst);
                        // The worker returns at its next chunk boundary; what it returns (done, or
                        // stopped) is dropped: the interrupt is the answer.
                        let _ = py.allow_threads(|| recv(None));
                    }
                    return Err(signal);
                }
            }
        }
    }
}
