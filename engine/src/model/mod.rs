//! The BERT encoder: configuration, checkpoint files and the forward pass.
pub mod attention;
pub mod bert;
pub mod checkpoint;
pub mod config;
pub mod cpu_ops;
pub mod int8;

use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Reads a JSON file of a model folder (config, tokenizer and pooling settings), or says where it is
/// not valid JSON.
pub(crate) fn read_json(p: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(p).at(p)?;
    parse_json(&text, p)
}

/// Parses JSON text; `p` names the file in errors.
pub(crate) fn parse_json(text: &str, p: &Path) -> Result<serde_json::Value> {
    serde_json::from_str(text)
        .map_err(|e| Error::invalid(p, Some(e.line()), format!("not valid JSON: {e}")))
}
