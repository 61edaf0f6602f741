#![allow(dead_code)]
//! Paths of the shared test material and of the fetched real model.

use std::path::PathBuf;

pub use testkit::{repo_root, shared};

pub fn fixtures() -> PathBuf {
    shared().join("fixtures")
}

/// The real all-MiniLM-L6-v2 folder that scripts/fetch-minilm.sh unpacks.
pub fn minilm() -> PathBuf {
    let p = std::env::var_os("SIMLM_MINILM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models/all-MiniLM-L6-v2"));
    assert!(
        p.join("model.safetensors").is_file(),
        "{} is missing: run scripts/fetch-minilm.sh first",
        p.display()
    );
    p
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
