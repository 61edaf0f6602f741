//! `simlm-eval`: MRR@10, R@50, R@1k and nDCG@10 (or any `--metric`) of a run against qrels.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use eval::{compare, evaluate, Evaluation, Metric, Qrels, Run, DEFAULT_METRICS};

/// Evaluate a retrieval run against relevance judgments, as trec_eval and the MS MARCO script do.
#[derive(Parser, Debug)]
#[command(name = "simlm-eval", version, about, long_about = None)]
struct Args {
    /// Qrels: TREC `qid iter docid rel` or BEIR `query-id corpus-id score` (gzip allowed).
    #[arg(long)]
    qrels: PathBuf,
    /// Run: TREC `qid Q0 docid rank score tag` or MS MARCO `qid pid rank` (gzip allowed).
    #[arg(long)]
    run: PathBuf,
    /// A second run to compare with the first (means, differences, wins/losses, randomisation test).
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Metrics: MRR@k, R@k, P@k, nDCG@k, MAP (k a number; 1k = 1000), MRR (whole ranking), or
    /// trec_eval's names: recip_rank, recall_k, P_k, ndcg_cut_k, map. Several in one flag
    /// (`--metric nDCG@10,R@100` or `--metric nDCG@10 R@100`) or repeated flags. Default: MRR@10
    /// R@50 R@1000 nDCG@10.
    #[arg(long = "metric", value_name = "METRIC", num_args = 1.., value_delimiter = ',')]
    metrics: Vec<Metric>,
    /// Lowest label that counts as relevant for binary measures (DL papers use 2).
    #[arg(long, default_value_t = 1)]
    rel_level: i32,
    /// Print every query's values too.
    #[arg(long)]
    per_query: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Permutations of the randomisation test (with --compare).
    #[arg(long, default_value_t = 10_000)]
    trials: usize,
}

fn json_metrics(metrics: &[Metric], values: &[f64]) -> serde_json::Value {
    serde_json::Value::Object(
        metrics
            .iter()
            .zip(values)
            .map(|(m, v)| (m.to_string(), serde_json::json!(v)))
            .collect(),
    )
}

fn run(args: Args) -> anyhow::Result<()> {
    let metrics: Vec<Metric> = if args.metrics.is_empty() {
        DEFAULT_METRICS.to_vec()
    } else {
        // Each once, in the order first given (`nDCG@10` and `ndcg_cut_10` are one measure).
        let mut seen = Vec::new();
        for m in &args.metrics {
            if !seen.contains(m) {
                seen.push(*m);
            }
        }
        seen
    };
    let qrels = Qrels::read(&args.qrels)?;
    let run_a = Run::read(&args.run)?;
    let eval_a = evaluate(&qrels, &run_a, &metrics, args.rel_level);
    match &args.compare {
        Some(b) => {
            let eval_b = evaluate(&qrels, &Run::read(b)?, &metrics, args.rel_level);
            print_comparison(&eval_a, &eval_b, &args, b)
        }
        None => print_eval(&eval_a, &args),
    }
}

fn print_comparison(
    a: &Evaluation,
    b: &Evaluation,
    args: &Args,
    b_path: &std::path::Path,
) -> anyhow::Result<()> {
    let c = compare(a, b, args.trials, 0x5eed);
    if args.json {
        let m: serde_json::Map<String, serde_json::Value> = c
            .metrics
            .iter()
            .map(|m| {
                let v = serde_json::json!({"a": m.a, "b": m.b, "diff": m.diff, "up": m.up,
                                           "down": m.down, "p_value": m.p_value});
                (m.metric.to_string(), v)
            })
            .collect();
        let v = serde_json::json!({"queries": c.queries, "test": "paired two-sided randomisation",
                                   "trials": c.trials, "metrics": m});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("a: {}\nb: {}", args.run.display(), b_path.display());
    println!(
        "{} queries; paired two-sided randomisation test, {} permutations",
        c.queries, c.trials
    );
    println!(
        "{:<10} {:>8} {:>8} {:>9} {:>5} {:>5} {:>8}",
        "metric", "a", "b", "b-a", "up", "down", "p"
    );
    for m in &c.metrics {
        println!(
            "{:<10} {:>8.4} {:>8.4} {:>+9.4} {:>5} {:>5} {:>8.4}",
            m.metric.to_string(),
            m.a,
            m.b,
            m.diff,
            m.up,
            m.down,
            m.p_value
        );
    }
    Ok(())
}

fn print_eval(e: &Evaluation, args: &Args) -> anyhow::Result<()> {
    if args.json {
        let mut v = serde_json::json!({"queries": e.queries, "missing": e.missing, "ignored": e.ignored,
                                       "metrics": json_metrics(&e.metrics, &e.means)});
        if args.per_query {
            let pq: serde_json::Map<String, serde_json::Value> = e
                .per_query
                .iter()
                .map(|(q, vals)| (q.clone(), json_metrics(&e.metrics, vals)))
                .collect();
            v["per_query"] = serde_json::Value::Object(pq);
        }
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    if args.per_query {
        let header: Vec<String> = e
            .metrics
            .iter()
            .map(|m| format!("{:>9}", m.to_string()))
            .collect();
        println!("{:<12} {}", "query", header.join(" "));
        for (q, vals) in &e.per_query {
            let cells: Vec<String> = vals.iter().map(|v| format!("{v:>9.4}")).collect();
            println!("{q:<12} {}", cells.join(" "));
        }
        println!();
    }
    let width = e
        .metrics
        .iter()
        .map(|m| m.to_string().len())
        .max()
        .unwrap_or(6)
        .max(7);
    for (m, v) in e.metrics.iter().zip(&e.means) {
        println!("{:<width$}  {v:.4}", m.to_string());
    }
    println!("{:<width$}  {}", "queries", e.queries);
    if e.missing > 0 {
        println!(
            "{:<width$}  {} (in the qrels, not in the run: scored 0)",
            "missing", e.missing
        );
    }
    if e.ignored > 0 {
        println!(
            "{:<width$}  {} (run queries without qrels: ignored)",
            "ignored", e.ignored
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simlm-eval: error: {e}");
            ExitCode::FAILURE
        }
    }
}
