//! `simlm.evaluate`: the eval crate's measures, with pytrec_eval's names and result shape.

use std::path::{Path, PathBuf};

use eval::{Metric, Qrels, Run};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::errors::eval_to_py;
use crate::work::{self, OnInterrupt};

/// A measure named as pytrec_eval names it (`recip_rank`, `ndcg_cut_10` or `ndcg_cut.10`,
/// `recall_1000`, `P_10`, `map`, `ndcg`) or as `simlm-eval` does (`MRR@10`, `R@1k`, `nDCG@10`...):
/// the metric and the key of its values in the result.
fn measure(name: &str) -> PyResult<(Metric, String)> {
    let all = usize::MAX;
    let cut = |prefix: &str| -> Option<usize> {
        let rest = name
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('_').or_else(|| r.strip_prefix('.')))?;
        rest.parse::<usize>().ok().filter(|&k| k > 0)
    };
    let m = match name {
        "recip_rank" => Some((Metric::Mrr(all), name.to_string())),
        "map" => Some((Metric::Map, name.to_string())),
        "ndcg" => Some((Metric::Ndcg(all), name.to_string())),
        _ => None,
    };
    if let Some(m) = m {
        return Ok(m);
    }
    for (prefix, f) in [
        ("ndcg_cut", Metric::Ndcg as fn(usize) -> Metric),
        ("recall", Metric::Recall),
        ("P", Metric::Precision),
    ] {
        if let Some(k) = cut(prefix) {
            return Ok((f(k), format!("{prefix}_{k}")));
        }
    }
    name.parse::<Metric>()
        .map(|m| (m, name.to_string()))
        .map_err(|e| {
            PyValueError::new_err(format!(
                "{e}; pytrec_eval's names recip_rank, map, ndcg, ndcg_cut_K, recall_K and P_K are \
                 understood too"
            ))
        })
}

fn is_path(x: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(x.is_instance_of::<PyString>() || x.hasattr("__fspath__")?)
}

/// Qrels from a path (TREC or BEIR) or a dict {qid: {docid: label}}.
fn qrels_arg(x: &Bound<'_, PyAny>) -> PyResult<Result<PathBuf, Qrels>> {
    if is_path(x)? {
        return Ok(Ok(x.extract()?));
    }
    let d = x.downcast::<PyDict>().map_err(|_| {
        PyValueError::new_err("qrels: a path, or a dict {qid: {docid: relevance label (int)}}")
    })?;
    let mut q = Qrels::default();
    for (qid, docs) in d.iter() {
        let qid: String = qid.extract()?;
        let docs = docs
            .downcast::<PyDict>()
            .map_err(|_| PyValueError::new_err(format!("qrels[{qid:?}]: not a dict")))?;
        let judged = q.queries.entry(qid.clone()).or_default();
        for (doc, label) in docs.iter() {
            let label: i32 = label.extract().map_err(|_| {
                PyValueError::new_err(format!(
                    "qrels[{qid:?}]: the label of {doc} is not an integer"
                ))
            })?;
            judged.insert(doc.extract()?, label);
        }
    }
    Ok(Err(q))
}

/// A run from a path (TREC or MS MARCO) or a dict {qid: {docid: score}}, the latter written as
/// TREC lines for the eval crate's parser (scores in Rust's shortest exact notation), which orders
/// each query's documents as trec_eval does.
fn run_text(x: &Bound<'_, PyAny>) -> PyResult<Result<PathBuf, Vec<u8>>> {
    use std::io::Write;
    if is_path(x)? {
        return Ok(Ok(x.extract()?));
    }
    let d = x.downcast::<PyDict>().map_err(|_| {
        PyValueError::new_err("run: a path, or a dict {qid: {docid: score (float)}}")
    })?;
    let bad_id = |id: &str| id.is_empty() || id.chars().any(char::is_whitespace);
    let mut text = Vec::new();
    for (qid, docs) in d.iter() {
        let qid: String = qid.extract()?;
        if bad_id(&qid) {
            return Err(PyValueError::new_err(format!(
                "run: query id {qid:?} is empty or holds white space"
            )));
        }
        let docs = docs
            .downcast::<PyDict>()
            .map_err(|_| PyValueError::new_err(format!("run[{qid:?}]: not a dict")))?;
        for (doc, score) in docs.iter() {
            let doc: String = doc.extract()?;
            let score: f64 = score.extract()?;
            if bad_id(&doc) || !score.is_finite() {
                return Err(PyValueError::new_err(format!(
                    "run[{qid:?}][{doc:?}]: an id that is empty or holds white space, or a score \
                     that is not a finite number ({score})"
                )));
            }
            writeln!(text, "{qid} Q0 {doc} 0 {score} py").expect("writing to memory");
        }
    }
    Ok(Err(text))
}

/// evaluate(qrels, run, measures=("recip_rank", "ndcg_cut_10", "recall_50", "recall_1000"),
///          rel_level=1) -> {qid: {measure: value}}
///
/// Per-query measures of a run against relevance judgments, with the values and the result shape
/// of pytrec_eval's `RelevanceEvaluator(qrels, measures).evaluate(run)`. `qrels` and `run` are
/// paths (TREC or BEIR qrels; TREC or MS MARCO runs; gzip or not) or dicts in pytrec_eval's shape
/// ({qid: {docid: label}}, {qid: {docid: score}}). Documents are ordered by score, ties by docid
/// descending, as trec_eval. Measures: pytrec_eval's names recip_rank, map, ndcg, ndcg_cut_K,
/// recall_K, P_K, or simlm-eval's (MRR@10, R@1k...). `rel_level`: the least label counted as
/// relevant (nDCG uses the labels themselves). As pytrec_eval, the result holds the run's queries
/// that have judgments; queries without any relevant document are left out.
#[pyfunction]
#[pyo3(signature = (qrels, run, measures=None, rel_level=1))]
pub fn evaluate<'py>(
    py: Python<'py>,
    qrels: &Bound<'py, PyAny>,
    run: &Bound<'py, PyAny>,
    measures: Option<Vec<String>>,
    rel_level: i32,
) -> PyResult<Bound<'py, PyDict>> {
    let names = measures.unwrap_or_else(|| {
        ["recip_rank", "ndcg_cut_10", "recall_50", "recall_1000"]
            .map(String::from)
            .to_vec()
    });
    if names.is_empty() {
        return Err(PyValueError::new_err("no measures asked for"));
    }
    let (metrics, keys): (Vec<Metric>, Vec<String>) = names
        .iter()
        .map(|n| measure(n))
        .collect::<PyResult<Vec<_>>>()?
        .into_iter()
        .unzip();
    let qrels = qrels_arg(qrels)?;
    let run = run_text(run)?;
    let ev = work::interruptible(py, None, OnInterrupt::Abandon, move || {
        let qrels = match qrels {
            Ok(path) => Qrels::read(&path).map_err(eval_to_py)?,
            Err(q) => q,
        };
        let run = match run {
            Ok(path) => Run::read(&path).map_err(eval_to_py)?,
            Err(text) => Run::parse(text, Path::new("<run dict>")).map_err(eval_to_py)?,
        };
        let ev = eval::evaluate(&qrels, &run, &metrics, rel_level);
        let kept: Vec<(String, Vec<f64>)> = ev
            .per_query
            .into_iter()
            .filter(|(q, _)| run.queries.contains_key(q))
            .collect();
        Ok(kept)
    })?;
    let out = PyDict::new(py);
    for (q, values) in ev {
        let d = PyDict::new(py);
        for (k, v) in keys.iter().zip(values) {
            d.set_item(k, v)?;
        }
        out.set_item(q, d)?;
    }
    Ok(out)
}
