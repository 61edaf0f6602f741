//! `simlm.Encoder`: texts in, L2-normalised float32 vectors out, as `simlm-index embed` makes them.

use std::sync::Arc;

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::OrRaise as _;
use crate::work::{self, OnInterrupt};
use engine::{Doc, EncoderOptions, InputFormat, Kind, Pooling, Precision};

/// A value of one of the engine's option types (`f32`, `simlm`, `query`...), or a ValueError.
pub fn parse<T: std::str::FromStr<Err = String>>(value: &str) -> PyResult<T> {
    value.parse().map_err(PyValueError::new_err)
}

/// Loads the engine's encoder as `simlm-index` does from its options.
#[allow(clippy::too_many_arguments)]
pub fn load(
    model: &str,
    format: &str,
    pooling: Option<&str>,
    precision: Option<&str>,
    device: &str,
    batch_tokens: Option<usize>,
) -> PyResult<engine::Encoder> {
    let device = engine::parse_device(device).or_raise()?;
    let precision = match precision {
        Some(p) => parse::<Precision>(p)?,
        None => Precision::default_for(&device),
    };
    if batch_tokens == Some(0) {
        return Err(PyValueError::new_err("batch_tokens must be at least 1"));
    }
    let opts = EncoderOptions {
        format: parse::<InputFormat>(format)?,
        pooling: pooling.map(parse::<Pooling>).transpose()?,
        precision,
        device,
        batch_tokens,
        ..Default::default()
    };
    engine::Encoder::load(model, &opts).or_raise()
}

/// Texts as the engine's documents, with their titles when given.
pub fn docs(texts: Vec<String>, titles: Option<Vec<Option<String>>>) -> PyResult<Vec<Doc>> {
    match titles {
        None => Ok(texts
            .into_iter()
            .map(|text| Doc { title: None, text })
            .collect()),
        Some(t) if t.len() != texts.len() => Err(PyValueError::new_err(format!(
            "{} titles for {} texts: give one title (or None) per text",
            t.len(),
            texts.len()
        ))),
        Some(t) => Ok(texts
            .into_iter()
            .zip(t)
            .map(|(text, title)| Doc { title, text })
            .collect()),
    }
}

/// Row-major vectors as an (n, dim) float32 array, without copying them.
pub fn to_array(
    py: Python<'_>,
    v: Vec<f32>,
    n: usize,
    dim: usize,
) -> PyResult<Bound<'_, PyArray2<f32>>> {
    let a = Array2::from_shape_vec((n, dim), v)
        .map_err(|e| PyValueError::new_err(format!("vectors of the wrong size: {e}")))?;
    Ok(a.into_pyarray(py))
}

/// A BERT-family bi-encoder: texts in, L2-normalised float32 vectors out.
///
/// Encoder(model, format="simlm", pooling=None, precision=None, device="cpu",
///         batch_tokens=None, threads=None)
///
/// model: a model folder (Hugging Face layout) or a hub id (looked up in the Hugging Face cache).
/// format: "simlm" (SimLM's query and passage formats) or "sentence-transformers".
/// pooling: "cls" or "mean" (default: cls for simlm, the folder's setting for sentence-transformers).
/// precision: "f32", "f16", "bf16" or "int8" (default: f32 on the CPU, f16 on CUDA).
/// device: "cpu", "cuda" or "cuda:N" (CUDA needs a build with the engine's `cuda` feature).
/// batch_tokens: the token budget of one forward pass (default: the device's, as simlm-index).
/// threads: worker threads for this encoder's calls (default: all cores).
#[pyclass(module = "simlm._simlm", frozen)]
pub struct Encoder {
    inner: Arc<engine::Encoder>,
    pool: Option<Arc<rayon::ThreadPool>>,
    device: String,
}

#[pymethods]
impl Encoder {
    #[new]
    #[pyo3(signature = (model, format="simlm", pooling=None, precision=None, device="cpu", batch_tokens=None, threads=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: std::path::PathBuf,
        format: &str,
        pooling: Option<&str>,
        precision: Option<&str>,
        device: &str,
        batch_tokens: Option<usize>,
        threads: Option<usize>,
    ) -> PyResult<Self> {
        let pool = work::pool(threads)?;
        let spec = model.to_string_lossy().into_owned();
        let enc =
            py.allow_threads(|| load(&spec, format, pooling, precision, device, batch_tokens))?;
        Ok(Encoder {
            inner: Arc::new(enc),
            pool,
            device: device.to_string(),
        })
    }

    /// encode(texts, kind="query", titles=None) -> numpy.ndarray of shape (len(texts), dim), float32
    ///
    /// Encodes a list of texts as queries or passages ("query" | "passage"), each vector of unit
    /// length: the same vectors, bit for bit, as `simlm-index embed` with the same options. Passages
    /// may carry titles (a list of str or None, one per text). The GIL is released while encoding;
    /// Ctrl-C raises KeyboardInterrupt at once (the batch in progress finishes in the background).
    #[pyo3(signature = (texts, kind="query", titles=None))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        kind: &str,
        titles: Option<Vec<Option<String>>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let kind = parse::<Kind>(kind)?;
        let docs = docs(texts, titles)?;
        let n = docs.len();
        let dim = self.inner.dim();
        if n == 0 {
            return to_array(py, Vec::new(), 0, dim);
        }
        let enc = self.inner.clone();
        let v = work::interruptible(py, self.pool.clone(), OnInterrupt::Abandon, move || {
            enc.encode(kind, &docs).or_raise()
        })?;
        to_array(py, v, n, dim)
    }

    /// The vectors' dimension.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// The input format: "simlm" or "sentence-transformers".
    #[getter]
    fn format(&self) -> String {
        self.inner.format().to_string()
    }

    /// The pooling: "cls" or "mean".
    #[getter]
    fn pooling(&self) -> String {
        format!("{:?}", self.inner.pooling()).to_lowercase()
    }

    /// The forward's precision: "f32", "f16", "bf16" or "int8".
    #[getter]
    fn precision(&self) -> String {
        format!("{:?}", self.inner.precision()).to_lowercase()
    }

    /// The model's folder.
    #[getter]
    fn model(&self) -> String {
        self.inner.files().spec.clone()
    }

    /// The token budget of one forward pass.
    #[getter]
    fn batch_tokens(&self) -> usize {
        self.inner.batch_tokens()
    }

    fn __repr__(&self) -> String {
        format!(
            "simlm.Encoder({:?}, format={:?}, pooling={:?}, precision={:?}, device={:?}, dim={})",
            self.model(),
            self.format(),
            self.pooling(),
            self.precision(),
            self.device,
            self.dim()
        )
    }
}
