//! `simlm.build_index` and `simlm.import_vectors`: the engine's `index::build` and `index::import`
//! with `simlm-index build` / `import`'s options.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use numpy::{PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::encoder::{load, parse};
use crate::errors::OrRaise as _;
use crate::progress::Bar;
use crate::work::{self, OnInterrupt};
use engine::corpus::ReadOptions;
use engine::index::{BuildOptions, ImportOptions};
use engine::search::hnsw::HnswParams;
use engine::store::manifest::Manifest;
use engine::store::npy::{self, Dtype};

fn manifest_dict<'py>(py: Python<'py>, m: &Manifest) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(m).map_err(|e| PyValueError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// `(i, n)` from "i/N" or a pair.
fn shard_arg(s: &Bound<'_, PyAny>) -> PyResult<(usize, usize)> {
    let (i, n) = if let Ok(text) = s.extract::<String>() {
        let bad = || PyValueError::new_err(format!("shard {text:?}: expected \"i/N\" or (i, N)"));
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        (
            i.trim().parse::<usize>().map_err(|_| bad())?,
            n.trim().parse::<usize>().map_err(|_| bad())?,
        )
    } else {
        s.extract::<(usize, usize)>()?
    };
    if n == 0 || i >= n {
        return Err(PyValueError::new_err(format!(
            "shard ({i}, {n}): expected 0 <= i < N"
        )));
    }
    Ok((i, n))
}

fn graph(hnsw: bool, m: usize, ef_construction: usize) -> PyResult<Option<HnswParams>> {
    if !hnsw {
        return Ok(None);
    }
    let p = HnswParams { m, ef_construction };
    p.validate().or_raise()?;
    Ok(Some(p))
}

/// build_index(collection, out, model=DEFAULT_MODEL, *, format="simlm", pooling=None,
///             precision=None, device="cpu", batch_tokens=None, threads=None, titles=None,
///             fix_encoding=False, skip_bad=False, dtype="f32", hnsw=True, m=32,
///             ef_construction=200, shard=None, force=False, chunk_rows=4096, progress=False)
///     -> dict (the manifest)
///
/// Encodes a collection (MS MARCO TSV or JSONL, gzip or not) into an index folder, as
/// `simlm-index build` with the same options (hnsw=False is --no-hnsw; shard is "i/N" or (i, N)).
/// The build is resumable: it records its progress after each chunk of `chunk_rows` passages.
/// Ctrl-C stops it at the next chunk boundary and raises KeyboardInterrupt; the same call (or the
/// same `simlm-index build` command) resumes it. progress=True shows bars on standard error.
#[pyfunction]
#[pyo3(signature = (collection, out, model=PathBuf::from(engine::DEFAULT_MODEL), *, format="simlm", pooling=None, precision=None, device="cpu", batch_tokens=None, threads=None, titles=None, fix_encoding=false, skip_bad=false, dtype="f32", hnsw=true, m=32, ef_construction=200, shard=None, force=false, chunk_rows=4096, progress=false))]
#[allow(clippy::too_many_arguments)]
pub fn build_index<'py>(
    py: Python<'py>,
    collection: PathBuf,
    out: PathBuf,
    model: PathBuf,
    format: &str,
    pooling: Option<&str>,
    precision: Option<&str>,
    device: &str,
    batch_tokens: Option<usize>,
    threads: Option<usize>,
    titles: Option<PathBuf>,
    fix_encoding: bool,
    skip_bad: bool,
    dtype: &str,
    hnsw: bool,
    m: usize,
    ef_construction: usize,
    shard: Option<&Bound<'py, PyAny>>,
    force: bool,
    chunk_rows: usize,
    progress: bool,
) -> PyResult<Bound<'py, PyAny>> {
    if chunk_rows == 0 {
        return Err(PyValueError::new_err("chunk_rows must be at least 1"));
    }
    let shard = shard.map(shard_arg).transpose()?;
    let pool = work::pool(threads)?;
    let opts = BuildOptions {
        collection,
        read: ReadOptions {
            titles,
            fix_encoding,
            skip_bad,
        },
        out,
        dtype: parse::<Dtype>(dtype)?,
        // A shard's graph is built after the merge (as the command).
        hnsw: graph(hnsw, m, ef_construction)?.filter(|_| shard.is_none()),
        shard,
        force,
        chunk_rows,
    };
    let spec = model.to_string_lossy().into_owned();
    let (format, pooling, precision, device) = (
        format.to_string(),
        pooling.map(str::to_string),
        precision.map(str::to_string),
        device.to_string(),
    );
    let bar = Arc::new(Bar::new(progress));
    let cancel = bar.cancel.clone();
    let manifest = work::interruptible(py, pool, OnInterrupt::Cancel(cancel), move || {
        let enc = load(
            &spec,
            &format,
            pooling.as_deref(),
            precision.as_deref(),
            &device,
            batch_tokens,
        )?;
        if bar.cancelled_now() {
            return Err(pyo3::exceptions::PyKeyboardInterrupt::new_err("stopped"));
        }
        engine::index::build(&enc, &opts, &*bar).or_raise()
    })?;
    manifest_dict(py, &manifest)
}

impl Bar {
    fn cancelled_now(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

/// A named pipe in a new temporary folder, removed with it.
fn fifo(dir: &tempfile::TempDir) -> PyResult<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let path = dir.path().join("array.npy");
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    // Safety: a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(PyOSError::new_err(format!(
            "{}: cannot make a named pipe: {}",
            path.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(path)
}

/// An array's bytes, kept alive by the reference, written into the pipe by a feeder thread.
struct ArrayBytes {
    _array: Py<PyAny>,
    ptr: *const u8,
    len: usize,
}

// Safety: the buffer belongs to `_array`, kept alive by this value, and is only read.
unsafe impl Send for ArrayBytes {}
unsafe impl Sync for ArrayBytes {}

impl ArrayBytes {
    fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // Safety: see above.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Writes the header and the array into the pipe once the engine opens it for reading. Gives up
/// when `done` is set before that (the import failed before reading its input). A write error (the
/// engine stopped reading: its own error says why) ends the feeding quietly.
fn feed(path: &Path, header: &[u8], data: &ArrayBytes, done: &AtomicBool) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let mut file = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => break f,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(_) => return,
        }
    };
    // Safety: fcntl on an open descriptor; back to blocking writes.
    unsafe {
        let fd = file.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    let _ = file
        .write_all(header)
        .and_then(|_| file.write_all(data.bytes()));
}

/// import_vectors(vectors, out, *, ids=None, collection=None, hnsw=True, m=32,
///                ef_construction=200, force=False, threads=None, progress=False)
///     -> dict (the manifest)
///
/// Makes an index from vectors encoded elsewhere, as `simlm-index import`. `vectors`: a path to an
/// f32 or f16 .npy (rows x dim, C order), or a 2-d numpy array (float16 kept as float16, any other
/// number type converted to float32): an array is streamed to the engine through a named pipe,
/// never written to a temporary file. `ids`: a path (one id a line) or a sequence of str, one per
/// row (default: the collection's ids, or the row numbers). `collection`: the passages the rows
/// encode, in row order, for `Index.passage`. The index has no model: it answers vector queries.
#[pyfunction]
#[pyo3(signature = (vectors, out, *, ids=None, collection=None, hnsw=true, m=32, ef_construction=200, force=false, threads=None, progress=false))]
#[allow(clippy::too_many_arguments)]
pub fn import_vectors<'py>(
    py: Python<'py>,
    vectors: &Bound<'py, PyAny>,
    out: PathBuf,
    ids: Option<&Bound<'py, PyAny>>,
    collection: Option<PathBuf>,
    hnsw: bool,
    m: usize,
    ef_construction: usize,
    force: bool,
    threads: Option<usize>,
    progress: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let pool = work::pool(threads)?;
    let tmp = tempfile::Builder::new()
        .prefix("simlm-import-")
        .tempdir()
        .map_err(|e| PyOSError::new_err(format!("cannot make a temporary folder: {e}")))?;
    let ids = match ids {
        None => None,
        Some(x) if x.is_instance_of::<PyString>() || x.hasattr("__fspath__")? => {
            Some(x.extract::<PathBuf>()?)
        }
        Some(x) => {
            let list: Vec<String> = x.extract().map_err(|_| {
                PyValueError::new_err("ids: a path, or a sequence of str (one per row)")
            })?;
            if let Some(bad) = list.iter().find(|s| s.contains(['\n', '\r'])) {
                return Err(PyValueError::new_err(format!(
                    "ids: {bad:?} holds a line break"
                )));
            }
            let p = tmp.path().join("ids.txt");
            let mut text = list.join("\n");
            text.push('\n');
            std::fs::write(&p, text)
                .map_err(|e| PyOSError::new_err(format!("{}: {e}", p.display())))?;
            Some(p)
        }
    };
    // A path, or an array to stream.
    let (path, feeder) = if vectors.is_instance_of::<PyString>() || vectors.hasattr("__fspath__")? {
        (vectors.extract::<PathBuf>()?, None)
    } else {
        let np = py.import("numpy")?;
        let arr = np.call_method1("asarray", (vectors,))?;
        let ndim: usize = arr.getattr("ndim")?.extract()?;
        if ndim != 2 {
            let shape = arr.getattr("shape")?.repr()?.to_string();
            return Err(PyValueError::new_err(format!(
                "vectors must be a 2-d array (rows, dim); got shape {shape}"
            )));
        }
        let is_f16 = arr.getattr("dtype")?.eq(np.getattr("float16")?)?;
        let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
        if !matches!(kind.as_str(), "f" | "i" | "u") {
            return Err(PyValueError::new_err(format!(
                "vectors must be numbers; got dtype {}",
                arr.getattr("dtype")?.str()?
            )));
        }
        let kw = PyDict::new(py);
        kw.set_item(
            "dtype",
            np.getattr(if is_f16 { "float16" } else { "float32" })?,
        )?;
        // Little-endian, C order (a no-op for such an array: no copy).
        let arr = np.call_method("ascontiguousarray", (arr,), Some(&kw))?;
        let arr = arr.call_method1("astype", (if is_f16 { "<f2" } else { "<f4" },))?;
        let a = arr.downcast::<PyUntypedArray>()?;
        let shape = a.shape().to_vec();
        let dtype = if is_f16 { Dtype::F16 } else { Dtype::F32 };
        let header = npy::header(dtype, shape[0], Some(shape[1]));
        let len = shape[0] * shape[1] * dtype.size();
        // Safety: a C-contiguous array of `len` bytes from its data pointer.
        let ptr = unsafe { (*a.as_array_ptr()).data as *const u8 };
        let data = ArrayBytes {
            _array: arr.clone().unbind(),
            ptr,
            len,
        };
        let pipe = fifo(&tmp)?;
        (pipe.clone(), Some((pipe, header, data)))
    };
    let opts = ImportOptions {
        vectors: path,
        ids,
        collection,
        out,
        hnsw: graph(hnsw, m, ef_construction)?,
        force,
    };
    let bar = Arc::new(Bar::new(progress));
    let cancel = bar.cancel.clone();
    let manifest = work::interruptible(py, pool, OnInterrupt::Cancel(cancel), move || {
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            if let Some((pipe, header, data)) = &feeder {
                let done = &done;
                s.spawn(move || feed(pipe, header, data, done));
            }
            let r = engine::index::import(&opts, &*bar).or_raise();
            done.store(true, Ordering::SeqCst);
            // A feeder still blocked in a write is released by the reader side closing: the
            // engine's file is closed by now.
            r
        })
    });
    drop(tmp);
    manifest_dict(py, &manifest?)
}
