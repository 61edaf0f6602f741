//! `simlm.Index`: an index folder opened read-only; searches with numpy arrays in and out, like faiss.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use numpy::ndarray::ArrayView2;
use numpy::{PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::encoder::to_array;
use crate::errors::OrRaise as _;
use crate::work::{self, OnInterrupt};
use engine::index::{SearchMode, Searcher, SearcherOptions};
use engine::search::Hit;
use engine::store::npy::Dtype;
use engine::{Doc, Kind};

/// Below this many multiply-adds, an exact search runs on the calling thread (with the GIL
/// released) instead of a worker thread that can be interrupted: a thread's start costs more.
const QUICK_EXACT: usize = 1 << 22;
/// Graph searches of up to this many queries run on the calling thread.
const QUICK_GRAPH: usize = 8;

/// An index folder (built by `simlm-index build` / `simlm.build_index`, or imported), opened
/// read-only for search.
///
/// Index(path, model=None, device="cpu", threads=None)
///
/// model: the model folder for `search_text` when the one the manifest names has moved (it must be
/// the same model: its fingerprint is checked). device: where `search_text` encodes. threads: worker
/// threads for this index's calls (default: all cores).
///
/// The index answers from the generation it opened, even when a writer commits a new one meanwhile.
/// Several Python threads may search the same Index at once (the GIL is released while searching).
#[pyclass(module = "simlm._simlm", frozen)]
pub struct Index {
    searcher: Arc<Searcher>,
    pool: Option<Arc<rayon::ThreadPool>>,
    text_opts: SearcherOptions,
    /// The index's encoder, loaded on the first `search_text`.
    encoder: Mutex<Option<Arc<engine::Encoder>>>,
}

impl Index {
    fn index(&self) -> &engine::index::Index {
        &self.searcher.index
    }

    fn mode(&self, exact: bool, ef: Option<usize>) -> PyResult<SearchMode> {
        match (exact, ef) {
            (true, Some(_)) => Err(PyValueError::new_err(
                "exact=True searches every vector; ef sets the graph search: give one of them",
            )),
            (true, None) => Ok(SearchMode::Exact),
            (false, Some(ef)) => self.searcher.graph_mode(ef).map_err(PyValueError::new_err),
            (false, None) => Ok(self.searcher.mode),
        }
    }

    fn check_k(&self, k: usize) -> PyResult<usize> {
        if k == 0 {
            return Err(PyValueError::new_err("k must be at least 1"));
        }
        Ok(k.min(self.index().manifest.count))
    }

    /// Searches `n` row-major queries at `ptr`, kept alive by `keep`: on the calling thread when
    /// the search is small, else on a worker that Ctrl-C abandons.
    fn run_search(
        &self,
        py: Python<'_>,
        queries: Arc<dyn AsF32>,
        k: usize,
        mode: SearchMode,
    ) -> PyResult<Vec<Vec<Hit>>> {
        let n = queries.as_f32().len() / self.index().manifest.dim.max(1);
        let small = match mode {
            SearchMode::Exact => {
                n.saturating_mul(self.index().manifest.count)
                    .saturating_mul(self.index().manifest.dim)
                    <= QUICK_EXACT
            }
            SearchMode::Hnsw { .. } => n <= QUICK_GRAPH,
        };
        let searcher = self.searcher.clone();
        let job = move || searcher.index.search(queries.as_f32(), k, mode).or_raise();
        if small {
            work::quick(py, self.pool.as_deref(), job)
        } else {
            work::interruptible(py, self.pool.clone(), OnInterrupt::Abandon, job)
        }
    }

    /// The index's encoder, loaded on the first call. The lock is taken with the GIL released (a
    /// thread waiting for it while holding the GIL would block the loading thread's return).
    fn text_encoder(&self, py: Python<'_>) -> PyResult<Arc<engine::Encoder>> {
        py.allow_threads(|| {
            let mut slot = self.encoder.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = slot.as_ref() {
                return Ok(e.clone());
            }
            let enc = Searcher::load_index_encoder(&self.searcher.index, &self.text_opts);
            let enc = Arc::new(enc.or_raise()?);
            *slot = Some(enc.clone());
            Ok(enc)
        })
    }

    fn check_row(&self, row: i64) -> PyResult<usize> {
        let count = self.index().manifest.count;
        if row < 0 || row as u64 >= count as u64 {
            return Err(PyIndexError::new_err(format!(
                "row {row} is outside the index's rows 0..{count}"
            )));
        }
        Ok(row as usize)
    }
}

/// Query vectors the worker reads: a numpy array's buffer (kept alive with it) or owned vectors.
trait AsF32: Send + Sync {
    fn as_f32(&self) -> &[f32];
}

impl AsF32 for Vec<f32> {
    fn as_f32(&self) -> &[f32] {
        self
    }
}

/// A C-contiguous float32 array's data, read in place; the reference keeps the array alive.
struct Borrowed {
    _array: Py<PyArray2<f32>>,
    ptr: *const f32,
    len: usize,
}

// Safety: the buffer belongs to `_array`, which this value keeps alive; it is only read. (Another
// Python thread writing into the same array during the search would race, as it would with any
// library that releases the GIL while reading an array.)
unsafe impl Send for Borrowed {}
unsafe impl Sync for Borrowed {}

impl AsF32 for Borrowed {
    fn as_f32(&self) -> &[f32] {
        if self.len == 0 {
            return &[];
        }
        // Safety: see above; `ptr` and `len` describe the array's contiguous data.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Query vectors as a C-contiguous float32 (n, dim) array: the array itself when it is one (read in
/// place, no copy), else converted once by numpy (other float or integer dtypes, other orders,
/// lists). Refuses other shapes and dtypes with a ValueError saying what is wrong.
fn query_array<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    dim: usize,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let a = match q.downcast::<PyArray2<f32>>() {
        Ok(a) if a.is_c_contiguous() => a.clone(),
        _ => {
            let np = py.import("numpy")?;
            let arr = np.call_method1("asarray", (q,))?;
            let ndim: usize = arr.getattr("ndim")?.extract()?;
            let shape = arr.getattr("shape")?.repr()?.to_string();
            if ndim != 2 {
                return Err(PyValueError::new_err(format!(
                    "query vectors must be a 2-d array of shape (n, {dim}); got shape {shape} \
                     (one query: q.reshape(1, -1))"
                )));
            }
            let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
            if !matches!(kind.as_str(), "f" | "i" | "u") {
                let dt = arr.getattr("dtype")?.str()?.to_string();
                return Err(PyValueError::new_err(format!(
                    "query vectors must be numbers (float32, or another float or integer type \
                     converted to float32); got dtype {dt}"
                )));
            }
            let kw = PyDict::new(py);
            kw.set_item("dtype", np.getattr("float32")?)?;
            np.call_method("ascontiguousarray", (arr,), Some(&kw))?
                .downcast_into::<PyArray2<f32>>()?
        }
    };
    let shape = a.shape();
    if shape[1] != dim {
        return Err(PyValueError::new_err(format!(
            "query vectors of {} dimensions (shape ({}, {})); the index's vectors have {dim}",
            shape[1], shape[0], shape[1]
        )));
    }
    Ok(a)
}

/// What `search` returns: scores and rows, (n, k) each.
type Found<'py> = (Bound<'py, PyArray2<f32>>, Bound<'py, PyArray2<i64>>);

/// Hits as faiss returns them: (n, k) scores and rows, padded with -inf and -1 past the hits found
/// (a k larger than the index).
fn pack(hits: &[Vec<Hit>], k: usize) -> (Vec<f32>, Vec<i64>) {
    let mut scores = vec![f32::NEG_INFINITY; hits.len() * k];
    let mut rows = vec![-1i64; hits.len() * k];
    for (i, list) in hits.iter().enumerate() {
        for (j, h) in list.iter().take(k).enumerate() {
            scores[i * k + j] = h.score;
            rows[i * k + j] = h.row as i64;
        }
    }
    (scores, rows)
}

fn array_i64(
    py: Python<'_>,
    v: Vec<i64>,
    n: usize,
    k: usize,
) -> PyResult<Bound<'_, PyArray2<i64>>> {
    use numpy::IntoPyArray;
    let a = numpy::ndarray::Array2::from_shape_vec((n, k), v)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py))
}

#[pymethods]
impl Index {
    #[new]
    #[pyo3(signature = (path, model=None, device="cpu", threads=None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        model: Option<PathBuf>,
        device: &str,
        threads: Option<usize>,
    ) -> PyResult<Self> {
        if !path.exists() {
            return Err(pyo3::exceptions::PyFileNotFoundError::new_err(format!(
                "{}: no such index folder",
                path.display()
            )));
        }
        let pool = work::pool(threads)?;
        let text_opts = SearcherOptions {
            model: model.map(|m| m.to_string_lossy().into_owned()),
            device: engine::parse_device(device).or_raise()?,
            ..Default::default()
        };
        let opts = SearcherOptions {
            encoder: false,
            ..text_opts.clone()
        };
        let searcher = py.allow_threads(|| Searcher::open(&path, &opts).or_raise())?;
        Ok(Index {
            searcher: Arc::new(searcher),
            pool,
            text_opts,
            encoder: Mutex::new(None),
        })
    }

    /// search(queries, k=10, exact=False, ef=None) -> (scores, rows)
    ///
    /// The top k rows for each query vector, as faiss's `search`: `scores` a (n, k) float32 array
    /// (inner products, best first), `rows` a (n, k) int64 array. When k is larger than the index,
    /// each list is padded with score -inf and row -1. `queries`: a (n, dim) array; C-contiguous
    /// float32 is read in place, other float or integer dtypes and orders are converted once.
    /// Refused with ValueError: another shape or dimension, values that are not finite, all-zero
    /// queries. The search is exact with exact=True, or when the index has no graph; otherwise it
    /// walks the HNSW graph with `ef` (default 128). The GIL is released while searching.
    #[pyo3(signature = (queries, k=10, exact=false, ef=None))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        k: usize,
        exact: bool,
        ef: Option<usize>,
    ) -> PyResult<Found<'py>> {
        let mode = self.mode(exact, ef)?;
        let kk = self.check_k(k)?;
        let a = query_array(py, queries, self.index().manifest.dim)?;
        let n = a.shape()[0];
        let q: Arc<dyn AsF32> = Arc::new(Borrowed {
            ptr: a.data() as *const f32,
            len: a.len(),
            _array: a.unbind(),
        });
        let hits = if n == 0 {
            Vec::new()
        } else {
            self.run_search(py, q, kk, mode)?
        };
        let (scores, rows) = pack(&hits, k);
        Ok((to_array(py, scores, n, k)?, array_i64(py, rows, n, k)?))
    }

    /// search_text(queries, k=10, exact=False, ef=None) -> list of lists of dicts
    ///
    /// Encodes the query texts with the index's model (the one its manifest names, loaded on the
    /// first call; an imported index has none) and searches them. Each hit is a dict with "docid",
    /// "score", "rank" (1-based) and "row".
    #[pyo3(signature = (queries, k=10, exact=false, ef=None))]
    fn search_text<'py>(
        &self,
        py: Python<'py>,
        queries: Vec<String>,
        k: usize,
        exact: bool,
        ef: Option<usize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let mode = self.mode(exact, ef)?;
        let kk = self.check_k(k)?;
        if queries.iter().any(|q| q.trim().is_empty()) {
            return Err(PyValueError::new_err("a query text is empty"));
        }
        let out = PyList::empty(py);
        if queries.is_empty() {
            return Ok(out);
        }
        let enc = self.text_encoder(py)?;
        let docs: Vec<Doc> = queries
            .into_iter()
            .map(|text| Doc { title: None, text })
            .collect();
        let vecs = work::interruptible(py, self.pool.clone(), OnInterrupt::Abandon, move || {
            enc.encode(Kind::Query, &docs).or_raise()
        })?;
        let hits = self.run_search(py, Arc::new(vecs), kk, mode)?;
        for list in hits {
            let l = PyList::empty(py);
            for (i, h) in list.iter().enumerate() {
                let d = PyDict::new(py);
                d.set_item("docid", &self.index().ids[h.row])?;
                d.set_item("score", h.score)?;
                d.set_item("rank", i + 1)?;
                d.set_item("row", h.row)?;
                l.append(d)?;
            }
            out.append(l)?;
        }
        Ok(out)
    }

    /// docid(row) -> str: the passage id of a row.
    fn docid(&self, row: i64) -> PyResult<String> {
        let r = self.check_row(row)?;
        Ok(self.index().ids[r].clone())
    }

    /// passage(row) -> dict with "id", "title" (None when the collection has none) and "text",
    /// read from the collection the index was built from (or imported with).
    fn passage<'py>(&self, py: Python<'py>, row: i64) -> PyResult<Bound<'py, PyDict>> {
        let r = self.check_row(row)?;
        let rec = py.allow_threads(|| self.index().passage(r).or_raise())?;
        let d = PyDict::new(py);
        d.set_item("id", rec.id)?;
        d.set_item("title", rec.title)?;
        d.set_item("text", rec.text)?;
        Ok(d)
    }

    /// The index's vectors: a read-only numpy array (count, dim) over the memory-mapped matrix,
    /// float32 or float16 as stored, without a copy. It keeps this Index alive.
    #[getter]
    fn vectors<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let m = &this.index().vectors;
        let (rows, cols) = (m.rows(), m.cols());
        let bytes = m.bytes();
        let container = slf.clone().into_any();
        let size = m.header.dtype.size();
        if !(bytes.as_ptr() as usize).is_multiple_of(size) || bytes.len() < rows * cols * size {
            return Err(PyValueError::new_err(
                "the matrix's data is not aligned for a view; read it with numpy.load",
            ));
        }
        // Safety: the map holds rows x cols values of the dtype from the data offset (checked when
        // the index was opened), aligned (checked above); `container` (this Index, which owns the
        // map) is the array's base, so the map outlives the array. The array is made read-only.
        let arr = unsafe {
            match m.header.dtype {
                Dtype::F32 => {
                    let v = ArrayView2::from_shape_ptr((rows, cols), bytes.as_ptr() as *const f32);
                    PyArray2::borrow_from_array(&v, container).into_any()
                }
                Dtype::F16 => {
                    let v = ArrayView2::from_shape_ptr(
                        (rows, cols),
                        bytes.as_ptr() as *const half::f16,
                    );
                    PyArray2::borrow_from_array(&v, container).into_any()
                }
            }
        };
        let kw = PyDict::new(py);
        kw.set_item("write", false)?;
        arr.call_method("setflags", (), Some(&kw))?;
        Ok(arr)
    }

    /// The number of passages.
    fn __len__(&self) -> usize {
        self.index().manifest.count
    }

    /// The number of passages.
    #[getter]
    fn count(&self) -> usize {
        self.index().manifest.count
    }

    /// The vectors' dimension.
    #[getter]
    fn dim(&self) -> usize {
        self.index().manifest.dim
    }

    /// The stored vectors' dtype: "float32" or "float16".
    #[getter]
    fn dtype(&self) -> &'static str {
        match self.index().manifest.dtype {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
        }
    }

    /// Whether the index has an HNSW graph (searches use it unless exact=True).
    #[getter]
    fn has_graph(&self) -> bool {
        self.index().manifest.hnsw.is_some()
    }

    /// The index folder.
    #[getter]
    fn path(&self) -> PathBuf {
        self.index().dir.clone()
    }

    /// The manifest (model, format, counts, graph parameters, files and checksums) as a dict.
    #[getter]
    fn manifest<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = serde_json::to_string(&self.index().manifest)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        py.import("json")?.call_method1("loads", (text,))
    }

    fn __repr__(&self) -> String {
        format!(
            "simlm.Index({:?}, count={}, dim={}, dtype={:?}, graph={})",
            self.index().dir.display().to_string(),
            self.count(),
            self.dim(),
            self.dtype(),
            if self.has_graph() { "True" } else { "False" }
        )
    }
}
