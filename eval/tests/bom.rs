//! Qrels and runs saved by editors that start files with a UTF-8 byte-order mark, and gzip files cut
//! short by an interrupted download.

use std::path::Path;
use std::process::Command;

use eval::{evaluate, Qrels, Run, DEFAULT_METRICS};

use testkit::{gzip, write};

const BOM: &str = "\u{feff}";

const QRELS: &str = "421 0 d1 1\n421 0 d2 0\n7 0 d3 1\n";
const TREC_RUN: &str = "421 Q0 d1 1 2.0 t\n421 Q0 d2 2 1.0 t\n7 Q0 d3 1 1.0 t\n";
const MSMARCO_RUN: &str = "421\td1\t1\n421\td2\t2\n7\td3\t1\n";

#[test]
fn a_byte_order_mark_does_not_change_the_first_query_id_or_the_scores() {
    let d = tempfile::tempdir().unwrap();
    let plain_q = Qrels::read(&write(d.path(), "q.txt", QRELS)).unwrap();
    let plain_r = Run::read(&write(d.path(), "r.trec", TREC_RUN)).unwrap();
    let want = evaluate(&plain_q, &plain_r, &DEFAULT_METRICS, 1);

    let qrels = [
        write(d.path(), "bom.qrels", format!("{BOM}{QRELS}")),
        write(
            d.path(),
            "bom.qrels.gz",
            gzip(format!("{BOM}{QRELS}").as_bytes()),
        ),
        write(
            d.path(),
            "beir.tsv",
            format!("{BOM}query-id\tcorpus-id\tscore\n421\td1\t1\n421\td2\t0\n7\td3\t1\n"),
        ),
    ];
    let runs = [
        write(d.path(), "bom.trec", format!("{BOM}{TREC_RUN}")),
        write(
            d.path(),
            "bom.trec.gz",
            gzip(format!("{BOM}{TREC_RUN}").as_bytes()),
        ),
        write(d.path(), "bom.msmarco.tsv", format!("{BOM}{MSMARCO_RUN}")),
    ];
    for q in &qrels {
        let q = Qrels::read(q).unwrap();
        assert!(q.queries.contains_key("421"), "{:?}", q.queries.keys());
        for r in &runs {
            let run = Run::read(r).unwrap();
            assert!(run.queries.contains_key("421"), "{}", r.display());
            assert_eq!(run.ranking("421").unwrap(), ["d1", "d2"]);
            let got = evaluate(&q, &run, &DEFAULT_METRICS, 1);
            assert_eq!(
                (&got.means, &got.per_query),
                (&want.means, &want.per_query),
                "{}",
                r.display()
            );
        }
    }
}

#[test]
fn the_binary_scores_bom_files_like_plain_ones() {
    let d = tempfile::tempdir().unwrap();
    let run = |q: &Path, r: &Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_simlm-eval"))
            .args(["--qrels", q.to_str().unwrap(), "--run", r.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let plain = run(
        &write(d.path(), "q", QRELS),
        &write(d.path(), "r", TREC_RUN),
    );
    let bom = run(
        &write(d.path(), "bq", format!("{BOM}{QRELS}")),
        &write(d.path(), "br", format!("{BOM}{TREC_RUN}")),
    );
    assert_eq!(plain, bom);
}

#[test]
fn a_truncated_gzip_run_names_the_file_the_line_and_the_cause() {
    let d = tempfile::tempdir().unwrap();
    let mut text = String::new();
    let mut v: u64 = 1;
    for i in 0..20_000 {
        v = v
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        text.push_str(&format!(
            "{} Q0 d{v:x} {} {}.{} t\n",
            i / 100,
            i % 100 + 1,
            v >> 40,
            v % 1000
        ));
    }
    let gz = gzip(text.as_bytes());
    let p = write(d.path(), "run.trec.gz", &gz[..gz.len() / 2]);
    let e = Run::read(&p).unwrap_err().to_string();
    assert!(
        e.contains("run.trec.gz, line ") && e.contains("truncated"),
        "{e}"
    );
}
