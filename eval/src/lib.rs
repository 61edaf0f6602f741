//! Retrieval evaluation that agrees with trec_eval and the official MS MARCO script: MRR@k, R@k, P@k,
//! MAP and nDCG@k from a run and qrels. See [`metrics`] for the exact definitions and [`input`] for
//! the file formats and the ordering rule.

pub mod compare;
pub mod input;
pub mod metrics;

pub use compare::{compare, Comparison};
pub use input::{write_run_line, InputError, Qrels, Run, RunFormat};
pub use metrics::{evaluate, Evaluation, Metric, DEFAULT_METRICS, METRIC_NAMES};
