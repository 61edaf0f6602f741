//! Parity with PyTorch + transformers: every line of the shared expected-output fixtures.

mod common;

use std::path::Path;

use common::*;
use engine::{Doc, Encoder, EncoderOptions, InputFormat, Kind, Pooling};
use serde_json::Value;

struct Expected {
    kind: Kind,
    doc: Doc,
    input_ids: Vec<u32>,
    token_type_ids: Vec<u32>,
    cls: Vec<f32>,
    mean: Vec<f32>,
}

fn load_expected(path: &Path) -> Vec<Expected> {
    let text = std::fs::read_to_string(path).unwrap();
    let nums = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            Expected {
                kind: v["kind"].as_str().unwrap().parse().unwrap(),
                doc: Doc::new(
                    v.get("title").and_then(|t| t.as_str()),
                    v["text"].as_str().unwrap(),
                ),
                input_ids: nums(&v["input_ids"])
                    .into_iter()
                    .map(|x| x as u32)
                    .collect(),
                token_type_ids: nums(&v["token_type_ids"])
                    .into_iter()
                    .map(|x| x as u32)
                    .collect(),
                cls: nums(&v["cls"]).into_iter().map(|x| x as f32).collect(),
                mean: nums(&v["mean"]).into_iter().map(|x| x as f32).collect(),
            }
        })
        .collect()
}

fn check(model: &Path, expected: &Path) {
    let exp = load_expected(expected);
    assert!(exp.len() >= 10, "{} has too few lines", expected.display());
    for pooling in [Pooling::Cls, Pooling::Mean] {
        let opts = EncoderOptions {
            format: InputFormat::Simlm,
            pooling: Some(pooling),
            ..Default::default()
        };
        let enc = Encoder::load(model.to_str().unwrap(), &opts).unwrap();
        for kind in [Kind::Query, Kind::Passage] {
            let lines: Vec<&Expected> = exp.iter().filter(|e| e.kind == kind).collect();
            let docs: Vec<Doc> = lines.iter().map(|e| e.doc.clone()).collect();
            let toks = enc.tokenize(kind, &docs).unwrap();
            let vecs = enc.encode(kind, &docs).unwrap();
            let dim = enc.dim();
            for (i, e) in lines.iter().enumerate() {
                assert_eq!(toks[i].ids, e.input_ids, "input_ids of {:?}", e.doc);
                assert_eq!(
                    toks[i].type_ids, e.token_type_ids,
                    "token_type_ids of {:?}",
                    e.doc
                );
                let want = match pooling {
                    Pooling::Cls => &e.cls,
                    Pooling::Mean => &e.mean,
                };
                let got = &vecs[i * dim..(i + 1) * dim];
                let cos = cosine(got, want);
                let diff = max_abs_diff(got, want);
                assert!(cos >= 0.99999, "{pooling} {:?}: cosine {cos}", e.doc);
                assert!(diff <= 1e-4, "{pooling} {:?}: max abs diff {diff}", e.doc);
            }
        }
    }
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn tiny_bert_safetensors_matches_pytorch() {
    check(
        &fixtures().join("tiny-bert"),
        &fixtures().join("tiny-bert.expected.jsonl"),
    );
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn tiny_bert_pytorch_bin_matches_pytorch() {
    check(
        &fixtures().join("tiny-bert-bin"),
        &fixtures().join("tiny-bert.expected.jsonl"),
    );
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn minilm_real_weights_match_pytorch() {
    check(
        &minilm(),
        &fixtures().join("all-MiniLM-L6-v2.expected.jsonl"),
    );
}

/// SimLM's model card example: `what is qa` prefers the QA passage over the Super Bowl one.
#[test]
fn model_card_example_ranks_the_qa_passage_first() {
    let opts = EncoderOptions {
        format: InputFormat::Simlm,
        ..Default::default()
    };
    let enc = Encoder::load(minilm().to_str().unwrap(), &opts).unwrap();
    let q = enc
        .encode(Kind::Query, &[Doc::query("what is qa")])
        .unwrap();
    let passages = [
        Doc::new(
            Some("Question answering"),
            "Question answering (QA) is a computer science discipline within the fields of information \
             retrieval and natural language processing (NLP), which is concerned with building systems \
             that automatically answer questions posed by humans in a natural language.",
        ),
        Doc::new(
            Some("Super Bowl"),
            "The Super Bowl is the annual final playoff game of the National Football League (NFL) to \
             determine the league champion. It has been held since 1967.",
        ),
    ];
    let p = enc.encode(Kind::Passage, &passages).unwrap();
    let d = enc.dim();
    let s_qa: f32 = q.iter().zip(&p[..d]).map(|(a, b)| a * b).sum();
    let s_sb: f32 = q.iter().zip(&p[d..]).map(|(a, b)| a * b).sum();
    println!("what is qa: QA passage {s_qa:.4}, Super Bowl passage {s_sb:.4}");
    assert!(s_qa > s_sb, "QA {s_qa} <= Super Bowl {s_sb}");
}
