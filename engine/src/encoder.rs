//! The encoder: texts in, unit vectors out, batched by a token budget.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::bert::{pool, BertModel};
use crate::model::checkpoint::ModelFiles;
use crate::model::config::BertConfig;
use crate::model::read_json;
use crate::text::{
    load_tokenizer, Doc, InputFormat, Kind, TextEncoder, Tokens, SIMLM_PASSAGE_MAX_LEN,
    SIMLM_QUERY_MAX_LEN,
};

pub use crate::model::bert::Pooling;

/// Float type of the forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F16,
    Bf16,
    /// f32 with the linear layers' products on int8 (dynamic quantisation; CPU only).
    Int8,
}

impl Precision {
    /// The default on a device: f16 on CUDA (tensor cores; SimLM's scores move by ~1e-3), f32 on the
    /// CPU (the reference).
    pub fn default_for(device: &Device) -> Precision {
        if device.is_cuda() {
            Precision::F16
        } else {
            Precision::F32
        }
    }

    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
            Precision::Int8 => DType::F32,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "fp32" => Ok(Precision::F32),
            "f16" | "fp16" => Ok(Precision::F16),
            "bf16" => Ok(Precision::Bf16),
            "int8" => Ok(Precision::Int8),
            _ => Err(format!("unknown precision `{s}` (f32 | f16 | bf16 | int8)")),
        }
    }
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ => {
            let ordinal = match s.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| {
                        Error::Device(format!("unknown device `{s}` (cpu | cuda | cuda:N)"))
                    })?,
                None => {
                    return Err(Error::Device(format!(
                        "unknown device `{s}` (cpu | cuda | cuda:N)"
                    )))
                }
            };
            cuda_device(ordinal)
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| {
        Error::Device(format!(
            "cannot open CUDA device {ordinal}: {} (is an NVIDIA GPU and its driver present?)",
            crate::error::first_line(&e)
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_ordinal: usize) -> Result<Device> {
    Err(Error::Device(
        "this binary was built without CUDA support: rebuild with `--features cuda` \
         (scripts/build-cuda.sh), or use --device cpu"
            .into(),
    ))
}

/// Everything that decides an encoder besides its checkpoint.
#[derive(Debug, Clone)]
pub struct EncoderOptions {
    pub format: InputFormat,
    /// `None`: the format's default (simlm: cls; sentence-transformers: the folder's pooling config).
    pub pooling: Option<Pooling>,
    pub precision: Precision,
    pub device: Device,
    /// Upper bound on `batch size x longest sequence` of one forward pass; `None`: the device's
    /// default ([`Encoder::default_batch_tokens`]).
    pub batch_tokens: Option<usize>,
    /// Upper bound on the number of sequences of one forward pass.
    pub max_batch: usize,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        EncoderOptions {
            format: InputFormat::Simlm,
            pooling: None,
            precision: Precision::F32,
            device: Device::Cpu,
            batch_tokens: None,
            max_batch: 512,
        }
    }
}

pub struct Encoder {
    model: BertModel,
    text: TextEncoder,
    pooling: Pooling,
    files: ModelFiles,
    precision: Precision,
    batch_tokens: usize,
    /// Whether `batch_tokens` was given rather than the device's default.
    batch_tokens_chosen: bool,
    max_batch: usize,
}

/// The file that marks a sentence-transformers model folder (`sentence_bert_config.json`,
/// `modules.json` or `1_Pooling/config.json`), if the model has one.
pub fn sentence_transformers_marker(files: &ModelFiles) -> Option<std::path::PathBuf> {
    files
        .sentence_bert_config
        .clone()
        .or_else(|| {
            let modules = files.config.parent()?.join("modules.json");
            modules.is_file().then_some(modules)
        })
        .or_else(|| files.pooling_config.clone())
}

/// The input format and pooling of an encoder: the user's where given; otherwise what the model folder
/// says: a sentence-transformers folder gets that format (and then its own pooling), any other model
/// SimLM's. Returns the lines to show the user: one saying the format was taken from the folder, and
/// a warning where the pooling that will be used contradicts the folder's `1_Pooling/config.json`.
pub fn choose_format(
    files: &ModelFiles,
    format: Option<InputFormat>,
    pooling: Option<Pooling>,
) -> Result<(InputFormat, Option<Pooling>, Vec<String>)> {
    let marker = sentence_transformers_marker(files);
    let declared = folder_pooling(files)?;
    let mut notes = Vec::new();
    let format = match (format, &marker) {
        (Some(f), _) => f,
        (None, None) => InputFormat::Simlm,
        (None, Some(m)) => {
            notes.push(format!(
                "{} is a sentence-transformers model ({}): using --format sentence-transformers{} \
                 (--format simlm for SimLM's)",
                files.spec,
                m.display(),
                match (pooling, declared) {
                    (None, Some(p)) => format!(" and its {p} pooling"),
                    _ => String::new(),
                }
            ));
            InputFormat::SentenceTransformers
        }
    };
    let used = pooling.unwrap_or(match format {
        InputFormat::Simlm => Pooling::Cls,
        InputFormat::SentenceTransformers => declared.unwrap_or(Pooling::Mean),
    });
    if let (Some(d), Some(p)) = (declared, &files.pooling_config) {
        if d != used {
            let why = match pooling {
                Some(_) => format!("--pooling {used} was asked for"),
                None => format!("--format {format} pools with {used}"),
            };
            notes.push(format!(
                "warning: {} declares {d} pooling, but {why}: kept as asked; pass --pooling {d} \
                 (or leave out --format and --pooling) to follow the model",
                p.display()
            ));
        }
    }
    Ok((format, pooling, notes))
}

/// The pooling a sentence-transformers folder declares (`1_Pooling/config.json`), if any.
pub fn folder_pooling(files: &ModelFiles) -> Result<Option<Pooling>> {
    let Some(p) = &files.pooling_config else {
        return Ok(None);
    };
    let v = read_json(p)?;
    let on = |k: &str| v.get(k).and_then(|b| b.as_bool()).unwrap_or(false);
    if on("pooling_mode_cls_token") {
        Ok(Some(Pooling::Cls))
    } else if on("pooling_mode_mean_tokens") {
        Ok(Some(Pooling::Mean))
    } else {
        Err(Error::Unsupported {
            path: p.clone(),
            msg: "only pooling_mode_cls_token and pooling_mode_mean_tokens are implemented".into(),
        })
    }
}

/// The query and passage token limits of an input format with a model: SimLM's fixed 32 and 144;
/// for sentence-transformers, the folder's `max_seq_length` (`sentence_bert_config.json`), else the
/// model's `max_position_embeddings`. `simlm-index info` shows them for an index.
pub fn token_limits(
    format: InputFormat,
    files: &ModelFiles,
    config: &BertConfig,
) -> Result<(usize, usize)> {
    Ok(match format {
        InputFormat::Simlm => (SIMLM_QUERY_MAX_LEN, SIMLM_PASSAGE_MAX_LEN),
        InputFormat::SentenceTransformers => {
            let m = match &files.sentence_bert_config {
                Some(p) => read_json(p)?
                    .get("max_seq_length")
                    .and_then(|m| m.as_u64())
                    .map(|m| m as usize)
                    .ok_or_else(|| {
                        Error::invalid(p, None, "missing integer field `max_seq_length`")
                    })?,
                None => config.max_position_embeddings,
            };
            (m, m)
        }
    })
}

impl Encoder {
    /// Loads a checkpoint (folder or hub id) for the given options.
    pub fn load(spec: &str, opts: &EncoderOptions) -> Result<Self> {
        Self::from_files(ModelFiles::resolve(spec)?, opts)
    }

    pub fn from_files(files: ModelFiles, opts: &EncoderOptions) -> Result<Self> {
        let config = BertConfig::from_file(&files.config)?;
        let tok = load_tokenizer(&files.tokenizer, files.tokenizer_config.as_deref())?;
        let (qmax, pmax) = token_limits(opts.format, &files, &config)?;
        let max_pos = config.max_position_embeddings;
        if qmax > max_pos || pmax > max_pos {
            return Err(Error::Unsupported {
                path: files.config.clone(),
                msg: format!("max_position_embeddings = {max_pos} is shorter than the input format's {} tokens", qmax.max(pmax)),
            });
        }
        let text = TextEncoder::new(tok, opts.format, qmax, pmax, &files.tokenizer)?;
        let pooling = match (opts.pooling, opts.format) {
            (Some(p), _) => p,
            (None, InputFormat::Simlm) => Pooling::Cls,
            (None, InputFormat::SentenceTransformers) => {
                folder_pooling(&files)?.unwrap_or(Pooling::Mean)
            }
        };
        let weights = files.open_weights()?;
        let model = BertModel::from_weights(
            &weights,
            &config,
            &files.weights,
            opts.precision.dtype(),
            &opts.device,
            opts.precision == Precision::Int8,
        )?;
        Ok(Encoder {
            model,
            text,
            pooling,
            files,
            precision: opts.precision,
            batch_tokens: opts
                .batch_tokens
                .unwrap_or_else(|| Encoder::default_batch_tokens(&opts.device))
                .max(1),
            batch_tokens_chosen: opts.batch_tokens.is_some(),
            max_batch: opts.max_batch.max(1),
        })
    }

    pub fn dim(&self) -> usize {
        self.model.config().hidden_size
    }

    pub fn batch_tokens(&self) -> usize {
        self.batch_tokens
    }

    /// The token budget of a forward pass when none is given. On the CPU, 1024: a batch's
    /// activations then stay closer to the core's cache, and whole batches run on each worker
    /// thread; 1024 encoded MS MARCO pool passages in 7-12% less time than 4096 on MiniLM and a BERT-base
    /// shape. On a GPU, 4096: bigger passes keep it busy.
    pub fn default_batch_tokens(device: &Device) -> usize {
        if device.is_cpu() {
            1024
        } else {
            4096
        }
    }

    /// The default budget of earlier versions (4096 on every device), when it differs from this
    /// encoder's and no budget was given: a build begun with it continues with it, since the last
    /// bits of the vectors depend on the batches.
    pub fn earlier_default_batch_tokens(&self) -> Option<usize> {
        (!self.batch_tokens_chosen && self.batch_tokens != 4096).then_some(4096)
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    pub fn format(&self) -> InputFormat {
        self.text.format()
    }

    pub fn files(&self) -> &ModelFiles {
        &self.files
    }

    /// The precision of the forward pass.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn tokenize(&self, kind: Kind, docs: &[Doc]) -> Result<Vec<Tokens>> {
        self.text.tokenize(kind, docs)
    }

    /// The tokens each text takes once truncated, and whether it was truncated.
    pub fn token_counts(&self, kind: Kind, docs: &[Doc]) -> Result<Vec<(usize, bool)>> {
        self.text.token_counts(kind, docs)
    }

    /// The most tokens a text of this kind keeps (longer ones are truncated).
    pub fn max_tokens(&self, kind: Kind) -> usize {
        self.text.max_tokens(kind)
    }

    /// Unit vectors of `docs`, row-major `(docs.len(), dim)`, in input order.
    pub fn encode(&self, kind: Kind, docs: &[Doc]) -> Result<Vec<f32>> {
        self.encode_within(kind, docs, self.batch_tokens)
    }

    /// [`Encoder::encode`] with forward passes of at most `batch_tokens` padded tokens.
    pub fn encode_within(&self, kind: Kind, docs: &[Doc], batch_tokens: usize) -> Result<Vec<f32>> {
        self.encode_within_reporting(kind, docs, batch_tokens, &|_| {})
    }

    /// [`Encoder::encode_within`], calling `done(n)` as each forward pass of `n` texts finishes (from
    /// the worker threads, in any order): a build shows progress within a chunk. The vectors do not
    /// depend on it.
    pub fn encode_within_reporting(
        &self,
        kind: Kind,
        docs: &[Doc],
        batch_tokens: usize,
        done: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<f32>> {
        let toks = self.tokenize(kind, docs)?;
        self.encode_tokens_within(&toks, batch_tokens, done)
    }

    /// Unit vectors of already tokenised texts, in input order. Texts are sorted by length and cut
    /// into batches of at most `batch_tokens` padded tokens, so padding stays small.
    pub fn encode_tokens(&self, toks: &[Tokens]) -> Result<Vec<f32>> {
        self.encode_tokens_within(toks, self.batch_tokens, &|_| {})
    }

    fn encode_tokens_within(
        &self,
        toks: &[Tokens],
        batch_tokens: usize,
        done: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<f32>> {
        use crate::model::cpu::parallel::with_splitting;
        use rayon::prelude::*;
        let dim = self.dim();
        let mut out = vec![0f32; toks.len() * dim];
        let batches = length_batches(toks, batch_tokens.max(1), self.max_batch);
        let run = |batch: &Vec<usize>| {
            let vecs = self.forward_batch(&batch.iter().map(|&i| &toks[i]).collect::<Vec<_>>());
            if vecs.is_ok() {
                done(batch.len());
            }
            vecs
        };
        // On the CPU, whole batches go to the worker threads (each batch's GEMMs then run on one
        // thread): that scales better than splitting every GEMM. A batch's result does not depend on
        // the thread that computes it.
        // Fewer than two batches a thread (a query from the REPL, a service's batch of a few dozen)
        // run one after another, each splitting its operations across the pool instead: a thread
        // with the one long batch of two would otherwise run alone while the other waits (64
        // dev.small queries took 1.4x as long that way). They run on a pool worker all the same, so
        // that each operation's parts go to the other workers by work stealing while they are still
        // awake: from outside the pool, every operation (dozens per query) paid a wake-up and a wait
        // of the calling thread, which was half of a query's time.
        let results: Vec<Result<Vec<f32>>> = if !self.model.device().is_cpu() {
            batches.iter().map(run).collect()
        } else if batches.len() >= 2 * rayon::current_num_threads() {
            batches
                .par_iter()
                .map(|b| with_splitting(false, || run(b)))
                .collect()
        } else {
            rayon::scope(|_| with_splitting(true, || batches.iter().map(run).collect()))
        };
        for (batch, vecs) in batches.iter().zip(results) {
            let vecs = vecs?;
            for (row, &i) in batch.iter().enumerate() {
                out[i * dim..(i + 1) * dim].copy_from_slice(&vecs[row * dim..(row + 1) * dim]);
            }
        }
        Ok(out)
    }

    /// One forward pass over texts padded to the longest of them.
    pub fn forward_batch(&self, toks: &[&Tokens]) -> Result<Vec<f32>> {
        if toks.is_empty() {
            return Ok(Vec::new());
        }
        let b = toks.len();
        let s = toks.iter().map(|t| t.ids.len()).max().unwrap_or(0).max(1);
        let pad = self.model.config().pad_token_id;
        let mut ids = vec![pad; b * s];
        let mut types = vec![0u32; b * s];
        let mut mask = vec![0u32; b * s];
        for (r, t) in toks.iter().enumerate() {
            let n = t.ids.len();
            ids[r * s..r * s + n].copy_from_slice(&t.ids);
            types[r * s..r * s + n].copy_from_slice(&t.type_ids);
            mask[r * s..r * s + n].iter_mut().for_each(|m| *m = 1);
        }
        let dev = self.model.device();
        let ids = Tensor::from_vec(ids, (b, s), dev)?;
        let types = Tensor::from_vec(types, (b, s), dev)?;
        let mask = Tensor::from_vec(mask, (b, s), dev)?;
        let pooled = match self.pooling {
            // [CLS] pooling reads one row: the model's last layer computes only that row.
            Pooling::Cls => pool(
                &self.model.forward_cls(&ids, &types, &mask)?,
                &mask.narrow(1, 0, 1)?,
                Pooling::Cls,
            )?,
            Pooling::Mean => pool(
                &self.model.forward(&ids, &types, &mask)?,
                &mask,
                Pooling::Mean,
            )?,
        };
        Ok(pooled
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }
}

/// Cuts texts into batches, longest first: each batch is a run of the length-sorted order whose
/// `count x longest` stays within `batch_tokens` (a single text longer than that is a batch alone).
pub fn length_batches(toks: &[Tokens], batch_tokens: usize, max_batch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..toks.len()).collect();
    // Stable sort: equal lengths keep input order, so batching is deterministic.
    order.sort_by_key(|&i| std::cmp::Reverse(toks[i].ids.len()));
    let mut batches = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut longest = 0;
    for i in order {
        let len = toks[i].ids.len().max(1);
        let new_longest = longest.max(len);
        if !cur.is_empty()
            && (cur.len() >= max_batch || (cur.len() + 1) * new_longest > batch_tokens)
        {
            batches.push(std::mem::take(&mut cur));
            longest = 0;
        }
        longest = longest.max(len);
        cur.push(i);
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: usize) -> Tokens {
        Tokens {
            ids: vec![1; n],
            type_ids: vec![0; n],
        }
    }

    #[test]
    fn batches_respect_the_budget_and_cover_every_text_once() {
        let toks: Vec<Tokens> = [5, 100, 7, 33, 100, 2, 64, 9]
            .iter()
            .map(|&n| t(n))
            .collect();
        let batches = length_batches(&toks, 200, 3);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..toks.len()).collect::<Vec<_>>());
        for b in &batches {
            let longest = b.iter().map(|&i| toks[i].ids.len()).max().unwrap();
            assert!(b.len() <= 3);
            assert!(b.len() == 1 || b.len() * longest <= 200, "{b:?}");
        }
        // Longest first.
        assert_eq!(batches[0], vec![1, 4]);
    }

    #[test]
    fn a_text_over_budget_is_a_batch_alone() {
        let toks = vec![t(500), t(3)];
        assert_eq!(length_batches(&toks, 100, 8), vec![vec![0], vec![1]]);
    }

    #[test]
    fn devices_parse() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
        assert!(parse_device("tpu").is_err());
        #[cfg(not(feature = "cuda"))]
        assert!(parse_device("cuda:0")
            .unwrap_err()
            .to_string()
            .contains("without CUDA"));
    }
}
