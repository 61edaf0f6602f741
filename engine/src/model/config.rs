//! `config.json` of a BERT-family checkpoint, checked against what the forward implements.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, IoContext, Result};

/// The activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// The exact, erf-based GELU (`"gelu"` in Hugging Face configs).
    GeluErf,
    /// The tanh approximation (`"gelu_new"`, `"gelu_pytorch_tanh"`, `"gelu_fast"`).
    GeluTanh,
    Relu,
}

/// The hyper-parameters the forward needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: Activation,
    pub pad_token_id: u32,
    /// The config.json this was read from, for errors that a mismatch with the weights raises.
    pub path: std::path::PathBuf,
}

/// Model types whose checkpoints follow BERT's layout and absolute positions.
const SUPPORTED_MODEL_TYPES: &[&str] = &["bert"];

impl BertConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).at(path)?;
        Self::from_json_str(&text, path)
    }

    /// Parses and validates; `path` only names the file in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let v: Value = super::parse_json(text, path)?;
        let obj = v
            .as_object()
            .ok_or_else(|| Error::invalid(path, None, "expected a JSON object"))?;
        let unsupported = |msg: String| Error::Unsupported {
            path: path.to_path_buf(),
            msg,
        };
        let usize_field = |name: &str| -> Result<usize> {
            match obj.get(name) {
                None => Err(Error::invalid(
                    path,
                    None,
                    format!("missing field `{name}` (a BERT config.json must give it)"),
                )),
                Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
                    Error::invalid(
                        path,
                        None,
                        format!("field `{name}` must be a non-negative integer, got {v}"),
                    )
                }),
            }
        };

        if let Some(mt) = obj.get("model_type") {
            let mt = mt.as_str().unwrap_or_default();
            if !SUPPORTED_MODEL_TYPES.contains(&mt) {
                return Err(unsupported(format!(
                    "model_type = {mt:?}; this engine runs BERT-family encoders (model_type \"bert\")"
                )));
            }
        }
        if let Some(p) = obj.get("position_embedding_type") {
            if p.as_str() != Some("absolute") {
                return Err(unsupported(format!(
                    "position_embedding_type = {p}; only \"absolute\" positions are implemented"
                )));
            }
        }
        if obj.get("is_decoder").and_then(Value::as_bool) == Some(true) {
            return Err(unsupported(
                "is_decoder = true; only encoders are supported".into(),
            ));
        }
        let hidden_act = match obj.get("hidden_act") {
            None => Activation::GeluErf,
            Some(v) => match v.as_str() {
                Some("gelu") => Activation::GeluErf,
                Some("gelu_new") | Some("gelu_pytorch_tanh") | Some("gelu_fast") => Activation::GeluTanh,
                Some("relu") => Activation::Relu,
                _ => {
                    return Err(unsupported(format!(
                        "hidden_act = {v}; supported: \"gelu\", \"gelu_new\", \"gelu_pytorch_tanh\", \"gelu_fast\", \"relu\""
                    )))
                }
            },
        };
        let layer_norm_eps = match obj.get("layer_norm_eps") {
            None => 1e-12,
            Some(v) => v.as_f64().ok_or_else(|| {
                Error::invalid(
                    path,
                    None,
                    format!("field `layer_norm_eps` must be a number, got {v}"),
                )
            })?,
        };
        let pad_token_id = match obj.get("pad_token_id") {
            None | Some(Value::Null) => 0,
            Some(v) => v.as_u64().ok_or_else(|| {
                Error::invalid(
                    path,
                    None,
                    format!("field `pad_token_id` must be an integer, got {v}"),
                )
            })? as u32,
        };
        let cfg = BertConfig {
            vocab_size: usize_field("vocab_size")?,
            hidden_size: usize_field("hidden_size")?,
            num_hidden_layers: usize_field("num_hidden_layers")?,
            num_attention_heads: usize_field("num_attention_heads")?,
            intermediate_size: usize_field("intermediate_size")?,
            max_position_embeddings: usize_field("max_position_embeddings")?,
            type_vocab_size: match obj.get("type_vocab_size") {
                None => 2,
                Some(_) => usize_field("type_vocab_size")?,
            },
            layer_norm_eps,
            hidden_act,
            pad_token_id,
            path: path.to_path_buf(),
        };
        for (name, v) in [
            ("vocab_size", cfg.vocab_size),
            ("hidden_size", cfg.hidden_size),
            ("intermediate_size", cfg.intermediate_size),
            ("max_position_embeddings", cfg.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(unsupported(format!(
                    "{name} = 0: a BERT model needs at least 1 (is this the config.json that came \
                     with the weights?)"
                )));
            }
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(unsupported(format!(
                "hidden_size = {} is not a multiple of num_attention_heads = {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        Ok(cfg)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"{"model_type":"bert","vocab_size":10,"hidden_size":8,"num_hidden_layers":1,
        "num_attention_heads":2,"intermediate_size":16,"max_position_embeddings":32,"type_vocab_size":2,
        "hidden_act":"gelu","position_embedding_type":"absolute"}"#;

    fn parse(s: &str) -> Result<BertConfig> {
        BertConfig::from_json_str(s, Path::new("config.json"))
    }

    #[test]
    fn zero_sizes_are_refused() {
        for field in ["hidden_size", "intermediate_size", "vocab_size"] {
            let s = BASE.replace(&format!("\"{field}\":"), &format!("\"{field}\":0,\"x\":"));
            let e = parse(&s).unwrap_err().to_string();
            assert!(e.contains(&format!("{field} = 0")), "{e}");
        }
    }

    #[test]
    fn parses_a_bert_config() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.hidden_size, 8);
        assert_eq!(c.head_dim(), 4);
        assert_eq!(c.hidden_act, Activation::GeluErf);
        assert_eq!(c.layer_norm_eps, 1e-12);
    }

    #[test]
    fn missing_field_is_named() {
        let s = BASE.replace(r#""hidden_size":8,"#, "");
        let e = parse(&s).unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains("`hidden_size`"),
            "{e}"
        );
    }

    #[test]
    fn unknown_activation_is_named_with_its_value() {
        let s = BASE.replace(r#""gelu""#, r#""swish""#);
        let e = parse(&s).unwrap_err().to_string();
        assert!(e.contains("hidden_act") && e.contains("swish"), "{e}");
    }

    #[test]
    fn relative_positions_are_refused() {
        let s = BASE.replace(r#""absolute""#, r#""relative_key""#);
        let e = parse(&s).unwrap_err().to_string();
        assert!(
            e.contains("position_embedding_type") && e.contains("relative_key"),
            "{e}"
        );
    }

    #[test]
    fn other_model_types_are_refused() {
        let s = BASE.replace(r#""bert""#, r#""roberta""#);
        let e = parse(&s).unwrap_err().to_string();
        assert!(e.contains("model_type") && e.contains("roberta"), "{e}");
    }
}
