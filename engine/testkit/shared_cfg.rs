//! Build script of the crates whose tests read `../shared` (the fixtures and data beside the checkout):
//! when it is missing, it sets `cfg(no_shared)`, and those tests are reported as ignored with the reason
//! (`#[cfg_attr(no_shared, ignore = "...")]`) instead of failing or passing without running.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(no_shared)");
    println!("cargo::rerun-if-env-changed=SIMLM_SHARED");
    let shared = std::env::var_os("SIMLM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap()).join("../../shared")
        });
    println!("cargo::rerun-if-changed={}", shared.display());
    if !shared.join("fixtures").is_dir() || !shared.join("data").is_dir() {
        println!("cargo::rustc-cfg=no_shared");
    }
}
