//! The BERT encoder: configuration, checkpoint files and the forward pass.
pub mod bert;
pub mod checkpoint;
pub mod config;
pub mod cpu_ops;
