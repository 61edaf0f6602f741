//! Encoder behaviour beyond parity: batch independence, half precision, bad checkpoints.

mod common;

use common::*;
use engine::{Doc, Encoder, EncoderOptions, InputFormat, Kind, Pooling, Precision};

fn passages() -> Vec<Doc> {
    let text = std::fs::read_to_string(shared().join("data/msmarco/pool/collection.tsv")).unwrap();
    text.lines()
        .take(60)
        .map(|l| Doc::new(None, l.split_once('\t').unwrap().1))
        .collect()
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_vector_does_not_depend_on_its_batch() {
    let docs = passages();
    // A small token budget forces many batches of mixed composition.
    for budget in [600, 4096] {
        let opts = EncoderOptions {
            batch_tokens: Some(budget),
            ..Default::default()
        };
        let enc = Encoder::load(minilm().to_str().unwrap(), &opts).unwrap();
        let all = enc.encode(Kind::Passage, &docs).unwrap();
        let d = enc.dim();
        for (i, doc) in docs.iter().enumerate().step_by(7) {
            let alone = enc
                .encode(Kind::Passage, std::slice::from_ref(doc))
                .unwrap();
            let diff = max_abs_diff(&all[i * d..(i + 1) * d], &alone);
            assert!(diff <= 1e-5, "passage {i}, budget {budget}: {diff}");
        }
    }
}

/// Queries of 3 to 30-odd tokens in one forward pass run packed (the projections on their real
/// tokens only, attention on each one's span): each vector is the query's alone, for mean and [CLS]
/// pooling, f32 and int8.
#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_packed_batch_of_mixed_lengths_gives_each_query_alone() {
    let queries: Vec<Doc> = [
        "a",
        "what is paula deen's brother",
        "how long does it take for a broken collarbone to heal in an adult who is otherwise healthy and active",
        "androgen receptor define",
        "the names of the planets of the solar system in order of their distance from the sun, with their moons",
        "ww2",
    ]
    .iter()
    .map(|q| Doc::query(q))
    .collect();
    for precision in [Precision::F32, Precision::Int8] {
        for format in [InputFormat::SentenceTransformers, InputFormat::Simlm] {
            let opts = EncoderOptions {
                precision,
                format,
                ..Default::default()
            };
            let enc = Encoder::load(minilm().to_str().unwrap(), &opts).unwrap();
            let lens: Vec<usize> = enc
                .tokenize(Kind::Query, &queries)
                .unwrap()
                .iter()
                .map(|t| t.ids.len())
                .collect();
            assert!(lens.iter().min() < lens.iter().max());
            // One batch: the default budget holds all six at the longest's length.
            assert!(lens.iter().max().unwrap() * lens.len() <= enc.batch_tokens());
            let all = enc.encode(Kind::Query, &queries).unwrap();
            let d = enc.dim();
            for (i, q) in queries.iter().enumerate() {
                let alone = enc.encode(Kind::Query, std::slice::from_ref(q)).unwrap();
                let diff = max_abs_diff(&all[i * d..(i + 1) * d], &alone);
                assert!(
                    diff <= 1e-6,
                    "{precision:?} {format:?} query {i} ({} tokens): {diff} between the batch and alone",
                    lens[i]
                );
            }
        }
    }
}

/// A sequence without a single token in a batch of real ones (forward_batch takes any tokens) keeps
/// the padded layout: every vector is finite, and the real ones are what they are alone.
#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn an_empty_sequence_beside_real_ones_is_finite_and_changes_nothing() {
    for pooling in [Pooling::Mean, Pooling::Cls] {
        let opts = EncoderOptions {
            pooling: Some(pooling),
            ..Default::default()
        };
        let enc = Encoder::load(minilm().to_str().unwrap(), &opts).unwrap();
        let toks = enc
            .tokenize(
                Kind::Query,
                &[Doc::query("androgen receptor define"), Doc::query("ww2")],
            )
            .unwrap();
        let empty = engine::Tokens {
            ids: Vec::new(),
            type_ids: Vec::new(),
        };
        let d = enc.dim();
        for batch in [
            vec![&toks[0], &empty, &toks[1]],
            vec![&toks[0], &toks[1], &empty],
        ] {
            let got = enc.forward_batch(&batch).unwrap();
            assert_eq!(got.len(), 3 * d);
            assert!(got.iter().all(|v| v.is_finite()), "{pooling}: not finite");
            for (row, t) in batch.iter().enumerate() {
                if t.ids.is_empty() {
                    continue;
                }
                let alone = enc.forward_batch(&[t]).unwrap();
                let diff = max_abs_diff(&got[row * d..(row + 1) * d], &alone);
                assert!(diff <= 1e-5, "{pooling} row {row}: {diff}");
            }
        }
    }
}

/// A query encoded alone (its operations split across the pool from a pool worker) gives the same bits
/// from the main thread, from inside a rayon pool, and from several threads at once (a service), in
/// f32 and int8.
#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_query_is_the_same_from_any_thread() {
    let queries: Vec<Doc> = [
        "what is paula deen's brother",
        "treating tension headaches without medication",
        "how long is a flight from chicago to tokyo and what airlines fly the route nonstop",
    ]
    .iter()
    .map(|q| Doc::query(q))
    .collect();
    for precision in [Precision::F32, Precision::Int8] {
        let opts = EncoderOptions {
            precision,
            ..Default::default()
        };
        let enc = Encoder::load(minilm().to_str().unwrap(), &opts).unwrap();
        let one = |q: &Doc| enc.encode(Kind::Query, std::slice::from_ref(q)).unwrap();
        let want: Vec<Vec<f32>> = queries.iter().map(one).collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let in_pool: Vec<Vec<f32>> = pool.install(|| queries.iter().map(one).collect());
        assert_eq!(in_pool, want, "{precision:?}: inside a rayon pool");
        let together: Vec<Vec<Vec<f32>>> = std::thread::scope(|s| {
            let runs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| queries.iter().map(one).collect::<Vec<_>>()))
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        for got in together {
            assert_eq!(got, want, "{precision:?}: four threads at once");
        }
    }
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn half_precision_is_finite_and_close_to_f32() {
    let docs = passages();
    let f32_enc = Encoder::load(minilm().to_str().unwrap(), &EncoderOptions::default()).unwrap();
    let want = f32_enc.encode(Kind::Passage, &docs).unwrap();
    let d = f32_enc.dim();
    for precision in [Precision::F16, Precision::Bf16] {
        let opts = EncoderOptions {
            precision,
            ..Default::default()
        };
        let enc = Encoder::load(minilm().to_str().unwrap(), &opts).unwrap();
        let got = enc.encode(Kind::Passage, &docs).unwrap();
        assert!(
            got.iter().all(|x| x.is_finite()),
            "{precision:?} produced a non-finite value"
        );
        let worst = (0..docs.len())
            .map(|i| cosine(&got[i * d..(i + 1) * d], &want[i * d..(i + 1) * d]))
            .fold(1.0, f64::min);
        println!(
            "{precision:?}: worst cosine to f32 over {} passages = {worst:.6}",
            docs.len()
        );
        assert!(worst >= 0.999, "{precision:?}: cosine {worst}");
    }
}

/// `--precision int8`: the real MiniLM's passage vectors stay within a cosine of 0.99 of f32 (the
/// worst and the mean are printed), a vector does not depend on its batch, and the tiny fixture
/// checkpoints (random weights, so the hardest case for a fixed number of levels) stay finite and
/// close.
#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn int8_vectors_stay_close_to_f32() {
    let docs = passages();
    let int8 = EncoderOptions {
        precision: Precision::Int8,
        ..Default::default()
    };
    let mut models = vec![(minilm(), 0.99)];
    models.push((fixtures().join("tiny-bert"), 0.98));
    for (model, floor) in models {
        let spec = model.to_str().unwrap();
        let want = Encoder::load(spec, &EncoderOptions::default())
            .unwrap()
            .encode(Kind::Passage, &docs)
            .unwrap();
        let enc = Encoder::load(spec, &int8).unwrap();
        let got = enc.encode(Kind::Passage, &docs).unwrap();
        let d = enc.dim();
        let cos: Vec<f64> = (0..docs.len())
            .map(|i| cosine(&got[i * d..(i + 1) * d], &want[i * d..(i + 1) * d]))
            .collect();
        let worst = cos.iter().cloned().fold(1.0, f64::min);
        let mean = cos.iter().sum::<f64>() / cos.len() as f64;
        println!(
            "int8 {}: cosine to f32 over {} passages: worst {worst:.5}, mean {mean:.5}",
            model.display(),
            docs.len()
        );
        assert!(worst >= floor, "{}: worst cosine {worst}", model.display());
        assert!(
            got != want,
            "int8 gave the f32 vectors: the integer path did not run"
        );
        for (i, doc) in docs.iter().enumerate().step_by(11) {
            let alone = enc
                .encode(Kind::Passage, std::slice::from_ref(doc))
                .unwrap();
            let diff = max_abs_diff(&got[i * d..(i + 1) * d], &alone);
            assert!(
                diff <= 1e-5,
                "int8 passage {i}: {diff} between batch and alone"
            );
        }
    }
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn sentence_transformers_format_reads_the_folder_settings() {
    let opts = EncoderOptions {
        format: InputFormat::SentenceTransformers,
        ..Default::default()
    };
    let enc = Encoder::load(minilm().to_str().unwrap(), &opts).unwrap();
    assert_eq!(enc.pooling(), engine::Pooling::Mean);
    // One segment (title + " " + text).strip(), for queries and documents alike.
    let t = enc
        .tokenize(Kind::Passage, &[Doc::new(Some("Title"), "body text")])
        .unwrap();
    let q = enc
        .tokenize(Kind::Query, &[Doc::query("Title body text")])
        .unwrap();
    assert_eq!(t[0].ids, q[0].ids);
    assert!(t[0].type_ids.iter().all(|&x| x == 0));
    let long = Doc::query(&"word ".repeat(400));
    assert_eq!(
        enc.tokenize(Kind::Query, &[long]).unwrap()[0].ids.len(),
        256
    );
}

fn copy_model(dir: &std::path::Path) {
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(fixtures().join("tiny-bert").join(f), dir.join(f)).unwrap();
    }
}

fn load_err(dir: &std::path::Path) -> String {
    match Encoder::load(dir.to_str().unwrap(), &EncoderOptions::default()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// `model.safetensors` with its header widened by `pad` spaces (valid JSON whitespace): every
/// tensor then starts `pad` bytes further on, off the 4-byte boundary when `pad` is odd. With
/// `nan_at`, that f32 weight's value `i` (row-major) is set to NaN. Returns the file's bytes.
fn rewritten_safetensors(pad: usize, nan_at: Option<(&str, usize)>) -> Vec<u8> {
    let b = std::fs::read(fixtures().join("tiny-bert/model.safetensors")).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let mut data = b[8 + n..].to_vec();
    if let Some((name, i)) = nan_at {
        let begin = header[name]["data_offsets"][0].as_u64().unwrap() as usize;
        data[begin + 4 * i..][..4].copy_from_slice(&f32::NAN.to_le_bytes());
    }
    let mut out = ((n + pad) as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&b[8..8 + n]);
    out.extend(std::iter::repeat_n(b' ', pad));
    out.extend(data);
    out
}

/// The weights read in place from the mapped safetensors file, copied out of a misaligned one, and
/// read from the PyTorch pickle of the same checkpoint give the same vectors, bit for bit, in f32
/// and int8.
#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn weights_read_in_place_or_copied_give_the_same_vectors() {
    let docs = passages();
    let tmp = tempfile::tempdir().unwrap();
    let odd = tmp.path();
    copy_model(odd);
    std::fs::write(
        odd.join("model.safetensors"),
        rewritten_safetensors(1, None),
    )
    .unwrap();
    for precision in [Precision::F32, Precision::Int8] {
        let opts = EncoderOptions {
            precision,
            ..Default::default()
        };
        let encode = |dir: &std::path::Path| {
            let enc = Encoder::load(dir.to_str().unwrap(), &opts).unwrap();
            let mut v = enc.encode(Kind::Passage, &docs).unwrap();
            v.extend(
                enc.encode(Kind::Query, &[Doc::query("tension headaches")])
                    .unwrap(),
            );
            v
        };
        let want = encode(&fixtures().join("tiny-bert"));
        assert!(want.iter().all(|x| x.is_finite()));
        assert_eq!(encode(odd), want, "{precision:?}: misaligned safetensors");
        assert_eq!(
            encode(&fixtures().join("tiny-bert-bin")),
            want,
            "{precision:?}: pytorch_model.bin"
        );
    }
}

/// A NaN in a projection's weight: int8 refuses to quantise it, naming the weight, its position and
/// what to do.
#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn int8_names_a_non_finite_weight() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_model(dir);
    // Value 37 of the key projection's (out, inp) = (32, 32) weight: row 1, column 5.
    let bytes = rewritten_safetensors(0, Some(("encoder.layer.1.attention.self.key.weight", 37)));
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    let opts = EncoderOptions {
        precision: Precision::Int8,
        ..Default::default()
    };
    let e = match Encoder::load(dir.to_str().unwrap(), &opts) {
        Ok(_) => panic!("a NaN weight was quantised"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("model.safetensors")
            && e.contains("encoder.layer.1.attention.self.key.weight")
            && e.contains("[1, 5]")
            && e.contains("--precision f32"),
        "{e}"
    );
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn damaged_checkpoints_give_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_model(dir);
    // Truncated weights.
    let w = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    let e = load_err(dir);
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
    copy_model(dir);
    // A tokenizer.json that does not parse.
    std::fs::write(dir.join("tokenizer.json"), "{ not json").unwrap();
    let e = load_err(dir);
    assert!(
        e.contains("tokenizer.json") && e.contains("does not parse"),
        "{e}"
    );
    copy_model(dir);
    // A config without a field.
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"num_hidden_layers\"", "\"layers\""),
    )
    .unwrap();
    let e = load_err(dir);
    assert!(
        e.contains("config.json") && e.contains("num_hidden_layers"),
        "{e}"
    );
    copy_model(dir);
    // An unsupported activation.
    std::fs::write(dir.join("config.json"), cfg.replace("\"gelu\"", "\"silu\"")).unwrap();
    let e = load_err(dir);
    assert!(e.contains("hidden_act") && e.contains("silu"), "{e}");
    // A missing folder.
    let e = load_err(&dir.join("nope"));
    assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_vocab_txt_checkpoint_tokenizes_like_its_tokenizer_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer_config.json",
        "vocab.txt",
    ] {
        std::fs::copy(minilm().join(f), dir.join(f)).unwrap();
    }
    let a = Encoder::load(minilm().to_str().unwrap(), &EncoderOptions::default()).unwrap();
    let b = Encoder::load(dir.to_str().unwrap(), &EncoderOptions::default()).unwrap();
    let docs = passages();
    assert_eq!(
        a.tokenize(Kind::Passage, &docs).unwrap(),
        b.tokenize(Kind::Passage, &docs).unwrap()
    );
    let q = [Doc::query("Crème brûlée ΑΒΓ 東京 what is qa 🙂")];
    assert_eq!(
        a.tokenize(Kind::Query, &q).unwrap(),
        b.tokenize(Kind::Query, &q).unwrap()
    );
}
