//! The BERT encoder: configuration, checkpoint files, the weights and the forward pass, and the CPU
//! kernels under it.
//!
//! The files point one way, from the forward down to the kernels:
//!
//! ```text
//! bert.rs      the forward: embeddings, layers (candle's ops on any device; the fused CPU ops for f32
//!  |           and int8 on the CPU), pooling
//!  +-- weights.rs       the tensors, found by name, checked and laid out (config.rs, checkpoint.rs)
//!  +-- cpu/             the CPU kernels (cpu/mod.rs): fused ops -> products -> leaves
//! ```
//!
//! Each step of the CPU forward, the file that runs it, and the kernels it runs on each CPU level
//! (`crate::simd::level`; the `gemm` crate picks its own kernels for the CPU):
//!
//! | op | file | AVX-512 | AVX2 + FMA | portable |
//! |---|---|---|---|---|
//! | embedding sums | `cpu/embedding.rs` | plain loop | same | same |
//! | f32 projection, more than 64 rows | `cpu/fused_linear.rs`, `cpu/linear.rs` (`gemm_f32`) | `gemm` crate | `gemm` crate | `gemm` crate |
//! | f32 projection, up to 64 rows (a query) | `cpu/linear.rs` (`PackedWeight`) | `rows_panel_avx512`, up to 24 rows a pass | `simd::score_tile` 6 x 16, intrinsics | `score_tile`'s 16-lane loop |
//! | bias, residual, GELU, LayerNorm after a projection | `cpu/fused_linear.rs`, `cpu/elementwise.rs` | generic code compiled for AVX-512 | compiled for AVX2 + FMA | baseline x86-64 |
//! | attention per (sequence, head) | `cpu/fused_attention.rs` | `cpu/attention.rs`: register tiles and `exp16` (head size a multiple of 16, up to 128) | `gemm` crate products, `softmax_padded` | same as AVX2 |
//! | attention of the [CLS] row only (last layer, [CLS] pooling), from the layer's input rows | `cpu/fused_attention.rs` (`FirstRowAttention`) | loops in each sequence's own order (query, `W_K q`, context), `gemm` crate products (scores, weighted row sums), `softmax` | same | same |
//! | int8: activations quantised per row | `cpu/int8/rows.rs` | `row_range_avx512`, `quantize_into` | `row_range_avx2`, `quantize_into` | `row_range_generic`, `quantize_into` |
//! | int8: product tiles and epilogue | `cpu/int8/tiles.rs` | `tile_vnni` where the CPU has VNNI, else `tile_avx2` | `tile_avx2` | `tile_portable` |
//! | int8 projection, int8 feed-forward block | `cpu/fused_linear.rs`, `cpu/int8/mod.rs` | the rows and tiles above, GELU from `elementwise` | same | same |
//!
//! All levels give the same bits for a given op except the `gemm` crate's (its own kernel choice) and
//! attention's register tiles (the `gemm` crate's order for more than 16 keys); see each file.
pub mod bert;
pub mod checkpoint;
pub mod config;
pub mod cpu;
mod weights;

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
