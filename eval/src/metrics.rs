//! The measures, as trec_eval and the official MS MARCO script define them.
//!
//! * Binary relevance: a document is relevant when its label is at least the relevance level
//!   (`rel_level`, default 1; the TREC DL papers use 2 for binary measures).
//! * `MRR@k`: the reciprocal rank of the first relevant document in the top k, 0 if none (the MS MARCO
//!   script's MRR@10).
//! * `R@k`: relevant documents in the top k divided by all relevant documents of the query (trec_eval
//!   `recall_k`, SimLM's definition); not the share of queries with a hit.
//! * `P@k`: relevant documents in the top k divided by k (trec_eval `P_k`).
//! * `MAP`: mean over the relevant documents of the precision at each one's rank, unretrieved ones
//!   counting 0 (trec_eval `map`).
//! * `nDCG@k`: gain = the graded label (labels <= 0 give nothing), discount 1/log2(rank + 1); the
//!   ideal ranking sorts every judged document with a positive label (trec_eval `ndcg_cut`). Not
//!   affected by the relevance level.
//!
//! Which queries are averaged: every query of the qrels with at least one relevant document. A query
//! missing from the run scores 0 on every measure and is counted as missing (trec_eval `-c`, and the MS
//! MARCO script). Run queries that have no qrels are ignored and counted.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use crate::input::{Qrels, Run};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    Mrr(usize),
    Recall(usize),
    Precision(usize),
    Ndcg(usize),
    Map,
}

/// The names `--metric` accepts, for help and error messages.
pub const METRIC_NAMES: &str = "MRR@k, R@k, P@k, nDCG@k, MAP (k a number; 1k = 1000), MRR (whole \
     ranking), or trec_eval's names: recip_rank, recall_k, P_k, ndcg_cut_k, map";

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("unknown metric `{s}`; the known ones: {METRIC_NAMES}");
        let lower = s.to_ascii_lowercase();
        match lower.as_str() {
            "map" => return Ok(Metric::Map),
            // trec_eval's recip_rank: the first relevant document anywhere in the ranking.
            "recip_rank" | "mrr" | "rr" => return Ok(Metric::Mrr(usize::MAX)),
            _ => {}
        }
        let cut = |k: &str| -> Result<usize, String> {
            let k: usize = match k.to_ascii_lowercase().strip_suffix('k') {
                Some(thousands) => thousands.parse::<usize>().map(|x| x * 1000),
                None => k.parse(),
            }
            .map_err(|_| bad())?;
            if k == 0 {
                return Err(format!("metric `{s}`: the cut-off must be at least 1"));
            }
            Ok(k)
        };
        // trec_eval's names: ndcg_cut_10, recall_100, P_10.
        for (prefix, metric) in [
            ("ndcg_cut_", Metric::Ndcg as fn(usize) -> Metric),
            ("recall_", Metric::Recall),
            ("p_", Metric::Precision),
        ] {
            if let Some(k) = lower.strip_prefix(prefix) {
                return Ok(metric(cut(k)?));
            }
        }
        let (name, k) = s.split_once('@').ok_or_else(bad)?;
        let k = cut(k)?;
        match name.to_ascii_lowercase().as_str() {
            "mrr" | "rr" => Ok(Metric::Mrr(k)),
            "r" | "recall" => Ok(Metric::Recall(k)),
            "p" | "precision" => Ok(Metric::Precision(k)),
            "ndcg" => Ok(Metric::Ndcg(k)),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Metric::Mrr(usize::MAX) => write!(f, "MRR"),
            Metric::Mrr(k) => write!(f, "MRR@{k}"),
            Metric::Recall(k) => write!(f, "R@{k}"),
            Metric::Precision(k) => write!(f, "P@{k}"),
            Metric::Ndcg(k) => write!(f, "nDCG@{k}"),
            Metric::Map => write!(f, "MAP"),
        }
    }
}

/// The measures of SimLM's table.
pub const DEFAULT_METRICS: [Metric; 4] = [
    Metric::Mrr(10),
    Metric::Recall(50),
    Metric::Recall(1000),
    Metric::Ndcg(10),
];

/// The value of every metric for one query's ranking. `judged` maps docid -> label.
pub fn score_query(
    hits: &[&str],
    judged: &FxHashMap<String, i32>,
    metrics: &[Metric],
    rel_level: i32,
) -> Vec<f64> {
    let num_rel = judged.values().filter(|&&l| l >= rel_level).count();
    // Labels of the ranking, looked up once.
    let labels: Vec<Option<i32>> = hits.iter().map(|h| judged.get(*h).copied()).collect();
    let is_rel = |i: usize| labels[i].is_some_and(|l| l >= rel_level);
    metrics
        .iter()
        .map(|m| match *m {
            Metric::Mrr(k) => (0..hits.len().min(k))
                .find(|&i| is_rel(i))
                .map(|i| 1.0 / (i + 1) as f64)
                .unwrap_or(0.0),
            Metric::Recall(k) => {
                if num_rel == 0 {
                    0.0
                } else {
                    (0..hits.len().min(k)).filter(|&i| is_rel(i)).count() as f64 / num_rel as f64
                }
            }
            Metric::Precision(k) => {
                (0..hits.len().min(k)).filter(|&i| is_rel(i)).count() as f64 / k as f64
            }
            Metric::Map => {
                if num_rel == 0 {
                    return 0.0;
                }
                let mut found = 0usize;
                let mut sum = 0.0;
                for i in 0..hits.len() {
                    if is_rel(i) {
                        found += 1;
                        sum += found as f64 / (i + 1) as f64;
                    }
                }
                sum / num_rel as f64
            }
            Metric::Ndcg(k) => {
                let gain = |l: i32| if l > 0 { l as f64 } else { 0.0 };
                let dcg: f64 = (0..hits.len().min(k))
                    .map(|i| labels[i].map(gain).unwrap_or(0.0) / ((i + 2) as f64).log2())
                    .sum();
                let mut ideal: Vec<i32> = judged.values().copied().filter(|&l| l > 0).collect();
                ideal.sort_unstable_by(|a, b| b.cmp(a));
                let idcg: f64 = ideal
                    .iter()
                    .take(k)
                    .enumerate()
                    .map(|(i, &l)| gain(l) / ((i + 2) as f64).log2())
                    .sum();
                if idcg > 0.0 {
                    dcg / idcg
                } else {
                    0.0
                }
            }
        })
        .collect()
}

/// The result of evaluating one run.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub metrics: Vec<Metric>,
    /// Queries averaged: qrels queries with at least one relevant document.
    pub queries: usize,
    /// Of those, how many the run does not contain (each scored 0).
    pub missing: usize,
    /// Run queries without any qrels (ignored).
    pub ignored: usize,
    /// Mean of each metric, in `metrics` order.
    pub means: Vec<f64>,
    /// Per-query values, in `metrics` order.
    pub per_query: BTreeMap<String, Vec<f64>>,
}

impl Evaluation {
    pub fn mean(&self, m: Metric) -> Option<f64> {
        self.metrics
            .iter()
            .position(|x| *x == m)
            .map(|i| self.means[i])
    }
}

pub fn evaluate(qrels: &Qrels, run: &Run, metrics: &[Metric], rel_level: i32) -> Evaluation {
    use rayon::prelude::*;
    let judged: Vec<(&String, &FxHashMap<String, i32>)> = qrels
        .queries
        .iter()
        .filter(|(_, j)| j.values().any(|&l| l >= rel_level))
        .collect();
    let per_query: BTreeMap<String, Vec<f64>> = judged
        .par_iter()
        .map(|(q, j)| {
            let hits = run.ranking(q).unwrap_or_default();
            ((*q).clone(), score_query(&hits, j, metrics, rel_level))
        })
        .collect();
    let missing = judged
        .iter()
        .filter(|(q, _)| !run.queries.contains_key(*q))
        .count();
    let ignored = run
        .queries
        .keys()
        .filter(|q| !qrels.queries.contains_key(*q))
        .count();
    let n = per_query.len();
    let means = (0..metrics.len())
        .map(|i| {
            if n == 0 {
                0.0
            } else {
                per_query.values().map(|v| v[i]).sum::<f64>() / n as f64
            }
        })
        .collect();
    Evaluation {
        metrics: metrics.to_vec(),
        queries: n,
        missing,
        ignored,
        means,
        per_query,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits<'a>(ids: &[&'a str]) -> Vec<&'a str> {
        ids.to_vec()
    }

    fn judged(pairs: &[(&str, i32)]) -> FxHashMap<String, i32> {
        pairs.iter().map(|(d, l)| (d.to_string(), *l)).collect()
    }

    #[test]
    fn metric_names_parse_and_print() {
        for s in ["MRR@10", "R@50", "R@1000", "nDCG@10", "P@5", "MAP"] {
            assert_eq!(s.parse::<Metric>().unwrap().to_string(), s);
        }
        assert_eq!("R@1k".parse::<Metric>().unwrap(), Metric::Recall(1000));
        assert!("X@3".parse::<Metric>().is_err());
        assert!("R@0".parse::<Metric>().is_err());
    }

    /// trec_eval's names give the same measures as ours.
    #[test]
    fn trec_eval_names_parse_to_the_same_measures() {
        let m = |s: &str| s.parse::<Metric>().unwrap();
        assert_eq!(m("ndcg_cut_10"), Metric::Ndcg(10));
        assert_eq!(m("recall_100"), Metric::Recall(100));
        assert_eq!(m("recall_1000"), m("R@1k"));
        assert_eq!(m("P_10"), Metric::Precision(10));
        assert_eq!(m("map"), Metric::Map);
        // recip_rank has no cut-off: the whole ranking.
        assert_eq!(m("recip_rank"), Metric::Mrr(usize::MAX));
        assert_eq!(m("recip_rank").to_string(), "MRR");
        assert_eq!(m("MRR"), m("recip_rank"));
        let h = hits(&["a", "b", "c"]);
        let j = judged(&[("c", 1)]);
        let v = score_query(&h, &j, &[m("recip_rank"), m("MRR@2")], 1);
        assert_eq!(v, vec![1.0 / 3.0, 0.0]);
        for bad in ["ndcg_cut_", "recall_x", "P_0", "bleu", "success_10"] {
            let e = bad.parse::<Metric>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        let e = "bleu".parse::<Metric>().unwrap_err();
        assert!(e.contains("nDCG@k") && e.contains("ndcg_cut_k"), "{e}");
    }

    #[test]
    fn hand_computed_values() {
        let h = hits(&["a", "b", "c", "d"]);
        let j = judged(&[("b", 1), ("d", 3), ("z", 2), ("n", 0)]);
        let m = [
            Metric::Mrr(10),
            Metric::Mrr(1),
            Metric::Recall(2),
            Metric::Recall(4),
            Metric::Precision(4),
            Metric::Map,
        ];
        let v = score_query(&h, &j, &m, 1);
        assert_eq!(v[0], 0.5);
        assert_eq!(v[1], 0.0);
        assert!((v[2] - 1.0 / 3.0).abs() < 1e-15);
        assert!((v[3] - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(v[4], 0.5);
        assert!((v[5] - (0.5 + 0.5) / 3.0).abs() < 1e-15);
        // At relevance level 2 only d and z count.
        let v = score_query(&h, &j, &[Metric::Mrr(10)], 2);
        assert_eq!(v[0], 0.25);
        // nDCG@3: dcg = 1/log2(3); ideal = 3, 2, 1.
        let v = score_query(&h, &j, &[Metric::Ndcg(3)], 1);
        let idcg = 3.0 + 2.0 / 3f64.log2() + 1.0 / 2.0;
        assert!((v[0] - (1.0 / 3f64.log2()) / idcg).abs() < 1e-15);
    }
}
