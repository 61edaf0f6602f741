//! The engine of the SimLM dense-retrieval search engine: BERT checkpoints, SimLM's input format, the
//! forward pass on candle, pooling, corpus readers, the memory-mapped vector store, exact search and the
//! HNSW graph.

pub mod corpus;
pub mod encoder;
pub mod error;
pub mod failpoint;
pub mod index;
pub mod memory;
pub mod model;
pub mod search;
pub mod simd;
pub mod store;
pub mod text;

pub use encoder::{parse_device, Encoder, EncoderOptions, Pooling, Precision};
pub use error::{Error, Result};
pub use model::checkpoint::{ModelFiles, DEFAULT_MODEL};
pub use text::{Doc, InputFormat, Kind, Tokens};

/// A binary's `--version` text: its version, then a `kernels: ` line naming [`kernels`] (the line the
/// benchmarks read). Made once per process, for clap's `long_version`.
pub fn long_version(version: &str) -> &'static str {
    Box::leak(format!("{version}\nkernels: {}", kernels()).into_boxed_str())
}

/// The kernels this process runs, in words: the level of exact search, the graph and the element-wise
/// passes, which pre-scan exact search runs and when, and the int8 products' (the f32 products are
/// the `gemm` crate's own choice for the CPU).
/// The binaries print it with `--version`.
pub fn kernels() -> String {
    let level = match simd::level() {
        simd::Level::Avx512 => "AVX-512",
        simd::Level::Avx2Fma => "AVX2 + FMA",
        simd::Level::Portable => "portable",
    };
    // Width 1 asks only which the CPU runs (they take widths up to 4,096).
    let kinds = search::prescan::kinds(1);
    let prescan = match (kinds.first(), search::prescan::mode()) {
        (None, _) => "off (no AVX-512 VNNI or BF16, nor AVX2)".to_string(),
        (Some(_), search::prescan::Mode::Off) => "off (SIMLM_EXACT_PRESCAN=0)".to_string(),
        (Some(&first), search::prescan::Mode::Force(want)) => match want {
            Some(want) if !kinds.contains(&want) => {
                format!(
                    "off (SIMLM_EXACT_PRESCAN names {}, which searches on this CPU do not take)",
                    want.name()
                )
            }
            want => format!(
                "{}, wherever it runs (SIMLM_EXACT_PRESCAN={})",
                want.unwrap_or(first).name(),
                want.map_or("force", |k| k.setting())
            ),
        },
        (Some(_), search::prescan::Mode::Auto) => kinds
            .iter()
            .map(|k| format!("{}, where it pays", k.name()))
            .collect::<Vec<_>>()
            .join("; else "),
    };
    format!(
        "{level} (exact search, graph, element-wise); exact search's pre-scan: {prescan}; int8 products: {}; f32 products: the gemm crate's choice for this CPU",
        model::cpu::int8::kernel_name()
    )
}
