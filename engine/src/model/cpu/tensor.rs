//! candle's CPU tensors read as f32 slices, for the fused ops (a leaf).

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let v = match s {
        CpuStorage::F32(v) => v,
        _ => candle_core::bail!("{what}: the fused CPU kernels take f32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: must be contiguous"),
    }
}

/// Runs `f` with the f32 data of a CPU tensor.
pub(crate) fn with_f32<R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(s) => f(f32_slice(s, l, what)?),
        _ => candle_core::bail!("{what}: the fused CPU kernels need CPU tensors"),
    }
}
