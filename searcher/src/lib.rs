//! The library side of `simlm-search`: the HTTP service (`serve`), so that its request parsing can be
//! called from outside the binary (the fuzz targets).

pub mod compat;
pub mod front;
pub mod serve;
