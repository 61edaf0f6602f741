//! Comparing two runs on the same qrels: means, differences, wins and losses, and a paired
//! two-sided randomisation (permutation) test on the per-query differences.

use crate::metrics::{Evaluation, Metric};

#[derive(Debug, Clone)]
pub struct MetricComparison {
    pub metric: Metric,
    pub a: f64,
    pub b: f64,
    /// `b - a`.
    pub diff: f64,
    /// Queries where b scores higher / lower than a.
    pub up: usize,
    pub down: usize,
    /// Two-sided p-value of the paired randomisation test.
    pub p_value: f64,
}

#[derive(Debug, Clone)]
pub struct Comparison {
    pub queries: usize,
    pub trials: usize,
    pub metrics: Vec<MetricComparison>,
}

/// SplitMix64: a small, seeded generator, so that p-values are reproducible.
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Compares two evaluations over the same queries (both from `evaluate` with the same qrels and metrics).
pub fn compare(a: &Evaluation, b: &Evaluation, trials: usize, seed: u64) -> Comparison {
    let qids: Vec<&String> = a
        .per_query
        .keys()
        .filter(|q| b.per_query.contains_key(*q))
        .collect();
    let metrics = a
        .metrics
        .iter()
        .enumerate()
        .map(|(mi, &metric)| {
            let diffs: Vec<f64> = qids
                .iter()
                .map(|q| b.per_query[*q][mi] - a.per_query[*q][mi])
                .collect();
            let n = diffs.len().max(1) as f64;
            let mean_a = qids.iter().map(|q| a.per_query[*q][mi]).sum::<f64>() / n;
            let mean_b = qids.iter().map(|q| b.per_query[*q][mi]).sum::<f64>() / n;
            let observed = diffs.iter().sum::<f64>().abs();
            let mut rng = SplitMix(seed ^ mi as u64);
            let mut extreme = 0usize;
            for _ in 0..trials {
                let mut s = 0.0;
                let mut bits = 0u64;
                for (i, d) in diffs.iter().enumerate() {
                    if i % 64 == 0 {
                        bits = rng.next();
                    }
                    s += if bits & 1 == 1 { *d } else { -*d };
                    bits >>= 1;
                }
                if s.abs() >= observed - 1e-12 {
                    extreme += 1;
                }
            }
            MetricComparison {
                metric,
                a: mean_a,
                b: mean_b,
                diff: mean_b - mean_a,
                up: diffs.iter().filter(|d| **d > 0.0).count(),
                down: diffs.iter().filter(|d| **d < 0.0).count(),
                p_value: (extreme + 1) as f64 / (trials + 1) as f64,
            }
        })
        .collect();
    Comparison {
        queries: qids.len(),
        trials,
        metrics,
    }
}
