//! The CPU kernels of the forward, for f32 and int8 (the CUDA and half-precision paths use candle's
//! own ops). candle's CPU backend runs each element-wise op as its own pass with libm's scalar
//! `erf`/`exp`; fusing the bias, residual and GELU into the projections and computing attention per
//! (sequence, head) over the real tokens only removes those passes and the padding work.
//!
//! Three levels, each using only those below it:
//!
//! | level | modules |
//! |---|---|
//! | fused ops (candle custom ops, what `bert.rs` calls) | [`fused_linear`] (projection + bias, residual, GELU or LayerNorm; the int8 feed-forward block), [`fused_attention`], [`embedding`] |
//! | products | [`linear`] (f32: the general GEMM, packed weights for a few rows), [`int8`] (weights, drivers; `int8::rows` quantises activations, `int8::tiles` the micro-kernels), [`attention`] (one head on AVX-512 register tiles) |
//! | leaves | [`elementwise`] (exp, GELU, softmax, LayerNorm, bias and residual rows), [`parallel`] (splitting across the pool, shared pointers), [`tensor`] (candle tensors as f32 slices) |
//!
//! The table of ops and kernels per CPU level is in `model/mod.rs`.

pub mod attention;
pub mod elementwise;
pub mod embedding;
pub mod fused_attention;
pub mod fused_linear;
pub mod int8;
pub mod linear;
pub mod parallel;
pub mod tensor;
