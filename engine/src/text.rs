//! Input formats: how a query or a passage becomes token ids.
//!
//! * `simlm` (SimLM's own): a query is one segment of at most 32 tokens; a passage is the pair
//!   (title, text) of at most 144 tokens with longest-first truncation, the title `-` when missing or
//!   empty. An empty passage text gives the single segment `[CLS] title [SEP]`, as the Python tokenizer
//!   does for `text_pair=""`.
//! * `sentence-transformers`: one segment `(title + " " + text).strip()` for queries and documents
//!   alike, truncated to the model folder's `max_seq_length`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::{
    EncodeInput, Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::error::{Error, IoContext, Result};

/// SimLM's query length limit, in tokens.
pub const SIMLM_QUERY_MAX_LEN: usize = 32;
/// SimLM's passage length limit, in tokens.
pub const SIMLM_PASSAGE_MAX_LEN: usize = 144;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputFormat {
    Simlm,
    SentenceTransformers,
}

impl std::str::FromStr for InputFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "simlm" => Ok(InputFormat::Simlm),
            "sentence-transformers" | "st" => Ok(InputFormat::SentenceTransformers),
            _ => Err(format!(
                "unknown input format `{s}` (simlm | sentence-transformers)"
            )),
        }
    }
}

impl std::fmt::Display for InputFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InputFormat::Simlm => "simlm",
            InputFormat::SentenceTransformers => "sentence-transformers",
        })
    }
}

/// Whether a text is a query or a passage: SimLM formats the two differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Query,
    Passage,
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "query" => Ok(Kind::Query),
            "passage" | "doc" | "document" => Ok(Kind::Passage),
            _ => Err(format!("unknown kind `{s}` (query | passage)")),
        }
    }
}

/// A text to encode: queries use `text` alone (in `simlm` format); passages may carry a title.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Doc {
    #[serde(default)]
    pub title: Option<String>,
    pub text: String,
}

impl Doc {
    pub fn new(title: Option<&str>, text: &str) -> Self {
        Doc {
            title: title.map(str::to_string),
            text: text.to_string(),
        }
    }

    pub fn query(text: &str) -> Self {
        Doc::new(None, text)
    }
}

/// Token ids of one text, unpadded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

/// A tokenizer set up for one input format: one truncation setting per kind.
pub struct TextEncoder {
    query: Tokenizer,
    passage: Tokenizer,
    format: InputFormat,
}

fn truncating(mut tok: Tokenizer, max_length: usize, path: &Path) -> Result<Tokenizer> {
    tok.with_padding(None);
    tok.with_truncation(Some(TruncationParams {
        max_length,
        strategy: TruncationStrategy::LongestFirst,
        stride: 0,
        direction: TruncationDirection::Right,
    }))
    .map_err(|e| Error::invalid(path, None, format!("cannot set truncation: {e}")))?;
    Ok(tok)
}

/// Loads `tokenizer.json`, or builds BERT's WordPiece tokenizer from a `vocab.txt` (lower-casing as
/// `tokenizer_config.json`'s `do_lower_case` says, true when absent).
pub fn load_tokenizer(path: &Path, tokenizer_config: Option<&Path>) -> Result<Tokenizer> {
    if path.file_name().is_some_and(|n| n == "vocab.txt") {
        return wordpiece_from_vocab(path, tokenizer_config);
    }
    // Read it ourselves so that an I/O error and a parse error are told apart.
    let bytes = std::fs::read(path).at(path)?;
    Tokenizer::from_bytes(&bytes)
        .map_err(|e| Error::invalid(path, None, format!("tokenizer.json does not parse: {e}")))
}

fn wordpiece_from_vocab(vocab: &Path, tokenizer_config: Option<&Path>) -> Result<Tokenizer> {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;

    let mut lowercase = true;
    if let Some(p) = tokenizer_config {
        let v = crate::model::read_json(p)?;
        if let Some(b) = v.get("do_lower_case").and_then(|b| b.as_bool()) {
            lowercase = b;
        }
    }
    let model = WordPiece::from_file(&vocab.to_string_lossy())
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| {
            Error::invalid(
                vocab,
                None,
                format!("cannot read the WordPiece vocabulary: {e}"),
            )
        })?;
    let id = |t: &str| -> Result<u32> {
        tokenizers::Model::token_to_id(&model, t)
            .ok_or_else(|| Error::invalid(vocab, None, format!("the vocabulary has no {t} token")))
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    let mut tok = Tokenizer::new(model);
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
        .map_err(|e| Error::invalid(vocab, None, format!("cannot set up the normaliser: {e}")))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), sep),
        ("[CLS]".into(), cls),
    )));
    Ok(tok)
}

impl TextEncoder {
    /// `query_max` / `passage_max`: the token limits of each kind.
    pub fn new(
        tok: Tokenizer,
        format: InputFormat,
        query_max: usize,
        passage_max: usize,
        path: &Path,
    ) -> Result<Self> {
        Ok(TextEncoder {
            query: truncating(tok.clone(), query_max, path)?,
            passage: truncating(tok, passage_max, path)?,
            format,
        })
    }

    pub fn format(&self) -> InputFormat {
        self.format
    }

    /// Token ids of each text, in order (tokenised in parallel).
    pub fn tokenize(&self, kind: Kind, docs: &[Doc]) -> Result<Vec<Tokens>> {
        Ok(self
            .encodings(kind, docs)?
            .into_iter()
            .map(|e| Tokens {
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
            })
            .collect())
    }

    /// The tokens each text takes once truncated (special tokens included), and whether it was
    /// longer than the kind's limit (truncated).
    pub fn token_counts(&self, kind: Kind, docs: &[Doc]) -> Result<Vec<(usize, bool)>> {
        Ok(self
            .encodings(kind, docs)?
            .iter()
            .map(|e| (e.get_ids().len(), !e.get_overflowing().is_empty()))
            .collect())
    }

    /// Each text tokenised in the kind's format, truncated to its limit (in parallel).
    fn encodings(&self, kind: Kind, docs: &[Doc]) -> Result<Vec<Encoding>> {
        let tok = match kind {
            Kind::Query => &self.query,
            Kind::Passage => &self.passage,
        };
        let inputs: Vec<EncodeInput> = docs.iter().map(|d| self.input(kind, d)).collect();
        tok.encode_batch(inputs, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The most tokens a text of this kind keeps.
    pub fn max_tokens(&self, kind: Kind) -> usize {
        let tok = match kind {
            Kind::Query => &self.query,
            Kind::Passage => &self.passage,
        };
        tok.get_truncation().map_or(usize::MAX, |t| t.max_length)
    }

    fn input<'s>(&self, kind: Kind, d: &'s Doc) -> EncodeInput<'s> {
        match (self.format, kind) {
            (InputFormat::Simlm, Kind::Query) => EncodeInput::Single(d.text.as_str().into()),
            (InputFormat::Simlm, Kind::Passage) => {
                let title = match d.title.as_deref() {
                    None | Some("") => "-",
                    Some(t) => t,
                };
                if d.text.is_empty() {
                    EncodeInput::Single(title.to_string().into())
                } else {
                    EncodeInput::Dual(title.to_string().into(), d.text.as_str().into())
                }
            }
            (InputFormat::SentenceTransformers, _) => {
                let joined = match d.title.as_deref() {
                    None | Some("") => d.text.trim().to_string(),
                    Some(t) => format!("{t} {}", d.text).trim().to_string(),
                };
                EncodeInput::Single(joined.into())
            }
        }
    }
}
