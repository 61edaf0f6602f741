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
