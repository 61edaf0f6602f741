//! The weights of a BERT encoder as loaded from a checkpoint: the tensors found by their names (with
//! or without the `bert.` prefix, old LayerNorm names included), their shapes checked, every tensor
//! of the file accounted for (a task head is named and left out; anything else is an error), the
//! projections transposed to `(in, out)` with Q, K and V side by side in one matrix, and, for
//! `--precision int8`, quantised straight from the checkpoint's layout. The forward (`bert.rs`) reads
//! [`BertWeights`] and nothing of the file.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::checkpoint::WeightFile;
use super::config::BertConfig;
use super::cpu::int8::QuantWeight;
use super::cpu::linear::PackedWeight;
use crate::error::{Error, Result};

pub(super) struct Linear {
    /// `(in, out)`, contiguous, so that `x @ weight` is a plain row-major GEMM; `None` when the
    /// projection runs on `quant` alone (int8 keeps no f32 copy).
    pub(super) weight: Option<Tensor>,
    pub(super) bias: Tensor,
    /// The weight packed for the small-batch kernel (`cpu::linear::PackedWeight`), made on first use.
    pub(super) packed: std::sync::OnceLock<Option<PackedWeight>>,
    /// The weight as 7-bit integers (`--precision int8`): when present, the projection runs on it.
    pub(super) quant: Option<QuantWeight>,
    /// `quant`'s values as f32, made on first use by the one op of an int8 model that reads the
    /// weight itself (the last layer's first-row attention, [CLS] pooling).
    pub(super) dequantized: std::sync::OnceLock<Vec<f32>>,
    /// For a fused QKV weight, its K block transposed (`fused_attention::keys_transposed`), made on
    /// first use by the last layer's first-row attention.
    pub(super) keys_t: std::sync::OnceLock<Vec<f32>>,
}

impl Linear {
    /// Runs `f` with the weight as `(in, out)` f32 values: the f32 weight, or the int8 weight's
    /// values (`scale * code`, what its products compute with).
    pub(super) fn with_values<R>(
        &self,
        f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
    ) -> candle_core::Result<R> {
        match (&self.weight, &self.quant) {
            (Some(w), _) => super::cpu::tensor::with_f32(w, "weight", f),
            (None, Some(q)) => f(self.dequantized.get_or_init(|| q.dequantized())),
            (None, None) => candle_core::bail!("linear layer without a weight"),
        }
    }

    /// Runs `f` with the weight's values (as [`Linear::with_values`]) and, taking it as a fused QKV
    /// weight `(in, 3 * h)`, its K block transposed to `(h, in)`.
    pub(super) fn with_qkv_values<R>(
        &self,
        h: usize,
        f: impl FnOnce(&[f32], &[f32]) -> candle_core::Result<R>,
    ) -> candle_core::Result<R> {
        self.with_values(|w| {
            let inp = w.len() / (3 * h).max(1);
            if self.keys_t.get().is_none() {
                let _ = self
                    .keys_t
                    .set(super::cpu::fused_attention::keys_transposed(w, inp, h));
            }
            f(w, self.keys_t.get().expect("set above"))
        })
    }
}

pub(super) struct LayerNorm {
    pub(super) weight: Tensor,
    pub(super) bias: Tensor,
    pub(super) eps: f32,
}

pub(super) struct Layer {
    pub(super) qkv: Linear,
    pub(super) attn_out: Linear,
    pub(super) attn_norm: LayerNorm,
    pub(super) intermediate: Linear,
    pub(super) output: Linear,
    pub(super) out_norm: LayerNorm,
}

/// Every tensor of the encoder (no pooler: SimLM and sentence-transformers use the last hidden
/// states), checked and laid out for the forward.
pub(super) struct BertWeights {
    pub(super) word: Tensor,
    pub(super) position: Tensor,
    pub(super) token_type: Tensor,
    pub(super) emb_norm: LayerNorm,
    pub(super) layers: Vec<Layer>,
}

impl BertWeights {
    /// Reads the encoder's tensors from a checkpoint (names as in Hugging Face checkpoints, with or
    /// without the `bert.` prefix). `path` names the weight file in errors. With `int8`, every
    /// linear layer's weight is quantised (see `cpu::int8`) and the projections run on integers:
    /// CPU and f32 only.
    pub(super) fn load(
        file: &WeightFile,
        config: &BertConfig,
        path: &Path,
        dtype: DType,
        device: &Device,
        int8: bool,
    ) -> Result<BertWeights> {
        if int8 && (!device.is_cpu() || dtype != DType::F32) {
            return Err(Error::Usage(
                "int8 runs on the CPU (dynamic quantisation of the linear layers): use --device cpu, \
                 or f16 / bf16 on CUDA"
                    .into(),
            ));
        }
        let mut w = Weights {
            file,
            names: file
                .names()
                .into_iter()
                .map(|n| (normalise_weight_name(&n), n))
                .collect(),
            path,
            dtype,
            device,
            int8,
        };
        let h = config.hidden_size;
        let eps = config.layer_norm_eps;
        let word = w.take("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let position = w.take(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, h],
        )?;
        let token_type = w.take(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
        )?;
        let emb_norm = w.layer_norm("embeddings.LayerNorm", h, eps)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let qkv = w.fused_linear(
                &[
                    &format!("{p}.attention.self.query"),
                    &format!("{p}.attention.self.key"),
                    &format!("{p}.attention.self.value"),
                ],
                h,
                h,
            )?;
            layers.push(Layer {
                qkv,
                attn_out: w.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: w.layer_norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                intermediate: w.linear(
                    &format!("{p}.intermediate.dense"),
                    h,
                    config.intermediate_size,
                )?,
                output: w.linear(&format!("{p}.output.dense"), config.intermediate_size, h)?,
                out_norm: w.layer_norm(&format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
        check_all_used(w.names.keys(), config, path)?;
        Ok(BertWeights {
            word,
            position,
            token_type,
            emb_norm,
            layers,
        })
    }
}

/// The checkpoint's tensors while the model is built from them.
struct Weights<'a> {
    file: &'a WeightFile,
    /// Normalised name (see [`normalise_weight_name`]) -> the file's name, for every tensor not
    /// taken yet.
    names: HashMap<String, String>,
    /// The weight file, for error messages.
    path: &'a Path,
    dtype: DType,
    device: &'a Device,
    /// Quantise the projections (`--precision int8`) straight from the checkpoint's layout.
    int8: bool,
}

/// A weight's f32 values: where they lie in the mapped file, or copied out.
enum Values<'a> {
    InPlace(&'a [f32]),
    Copied(Vec<f32>),
}

impl std::ops::Deref for Values<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            Values::InPlace(v) => v,
            Values::Copied(v) => v,
        }
    }
}

impl<'a> Weights<'a> {
    /// Marks `name` taken and returns the file's name for it.
    fn claim(&mut self, name: &str) -> Result<String> {
        self.names.remove(name).ok_or_else(|| {
            Error::invalid(
                self.path,
                None,
                format!("weight `{name}` is missing (is this a BERT checkpoint?)"),
            )
        })
    }

    fn check_shape(&self, name: &str, got: &[usize], shape: &[usize]) -> Result<()> {
        if got != shape {
            return Err(Error::invalid(
                self.path,
                None,
                format!("weight `{name}` has shape {got:?}, config.json implies {shape:?}"),
            ));
        }
        Ok(())
    }

    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let file_name = self.claim(name)?;
        let t = self.file.tensor(&file_name)?;
        self.check_shape(name, t.dims(), shape)?;
        Ok(t.to_dtype(self.dtype)?.to_device(self.device)?)
    }

    /// The f32 values of weight `name` (for the CPU f32 and int8 paths), read in place from a mapped
    /// file when they can be: a copy of the whole checkpoint in memory is then never made.
    /// Otherwise [`Weights::take`] copies it out (this path is f32, so in f32).
    fn take_values(&mut self, name: &str, shape: &[usize]) -> Result<Values<'a>> {
        let file: &'a WeightFile = self.file;
        let in_place = self.names.get(name).and_then(|f| file.f32_in_place(f));
        match in_place {
            Some((v, got)) => {
                self.claim(name)?;
                self.check_shape(name, &got, shape)?;
                Ok(Values::InPlace(v))
            }
            None => Ok(Values::Copied(
                self.take(name, shape)?.flatten_all()?.to_vec1::<f32>()?,
            )),
        }
    }

    fn linear(&mut self, prefix: &str, inp: usize, out: usize) -> Result<Linear> {
        self.fused_linear(&[prefix], inp, out)
    }

    /// The projections `prefixes` (each `out` wide, from `inp`) as one: their weights side by side
    /// in an `(inp, out * prefixes.len())` matrix, their biases one after another.
    fn fused_linear(&mut self, prefixes: &[&str], inp: usize, out: usize) -> Result<Linear> {
        let mut biases = Vec::with_capacity(prefixes.len());
        for p in prefixes {
            biases.push(self.take(&format!("{p}.bias"), &[out])?);
        }
        let bias = Tensor::cat(&biases, 0)?;
        let cpu_f32 = self.device.is_cpu() && self.dtype == DType::F32;
        if !cpu_f32 {
            let mut t = Vec::with_capacity(prefixes.len());
            for p in prefixes {
                t.push(
                    self.take(&format!("{p}.weight"), &[out, inp])?
                        .t()?
                        .contiguous()?,
                );
            }
            return Ok(Linear {
                weight: Some(Tensor::cat(&t, 1)?.contiguous()?),
                bias,
                packed: Default::default(),
                quant: None,
                dequantized: Default::default(),
                keys_t: Default::default(),
            });
        }
        let mut parts = Vec::with_capacity(prefixes.len());
        for p in prefixes {
            parts.push(self.take_values(&format!("{p}.weight"), &[out, inp])?);
        }
        if self.int8 {
            // PyTorch's (out, inp) rows are what the quantiser reads: the parts' rows one after
            // another, no transpose and no f32 copy kept.
            let rows: Vec<&[f32]> = parts.iter().flat_map(|p| p.chunks_exact(inp)).collect();
            let quant = QuantWeight::from_rows(&rows, inp).map_err(|e| {
                Error::invalid(
                    self.path,
                    None,
                    format!(
                        "weight `{}.weight` has the non-finite value {} at [{}, {}]: int8 \
                         quantisation needs finite weights (run with --precision f32, or check \
                         the checkpoint)",
                        prefixes[e.row / out],
                        e.value,
                        e.row % out,
                        e.col
                    ),
                )
            })?;
            return Ok(Linear {
                weight: None,
                bias,
                packed: Default::default(),
                quant: Some(quant),
                dequantized: Default::default(),
                keys_t: Default::default(),
            });
        }
        let parts: Vec<&[f32]> = parts.iter().map(|p| &p[..]).collect();
        Ok(Linear {
            weight: Some(transposed_side_by_side(&parts, inp, out)?),
            bias,
            packed: Default::default(),
            quant: None,
            dequantized: Default::default(),
            keys_t: Default::default(),
        })
    }

    fn layer_norm(&mut self, prefix: &str, dim: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.take(&format!("{prefix}.weight"), &[dim])?,
            bias: self.take(&format!("{prefix}.bias"), &[dim])?,
            eps: eps as f32,
        })
    }
}

/// `(out, inp)` f32 weights (PyTorch's layout) transposed into one `(inp, out * parts)` matrix, part
/// `i` in columns `i * out..`: the same values as candle's transpose and concatenation, written once,
/// in blocks that stay in cache (candle's strided copy went element by element).
fn transposed_side_by_side(parts: &[&[f32]], inp: usize, out: usize) -> Result<Tensor> {
    use rayon::prelude::*;
    const B: usize = 32;
    let width = out * parts.len();
    let mut dst = vec![0f32; inp * width];
    for (i, src) in parts.iter().enumerate() {
        // Blocks of B input rows (rows of dst) in parallel.
        dst.par_chunks_mut(B * width)
            .enumerate()
            .for_each(|(kb, rows)| {
                let k0 = kb * B;
                let kn = rows.len() / width;
                for j0 in (0..out).step_by(B) {
                    for j in j0..(j0 + B).min(out) {
                        let col = i * out + j;
                        for (kk, &v) in src[j * inp + k0..][..kn].iter().enumerate() {
                            rows[kk * width + col] = v;
                        }
                    }
                }
            });
    }
    Ok(Tensor::from_vec(dst, (inp, width), &Device::Cpu)?)
}

/// A checkpoint's weight name as the encoder reads it: without a leading `bert.` (BertForXxx
/// checkpoints), and with the old TensorFlow-era `gamma`/`beta` LayerNorm names as `weight`/`bias`.
pub fn normalise_weight_name(name: &str) -> String {
    let k = name.strip_prefix("bert.").unwrap_or(name);
    if let Some(p) = k.strip_suffix("LayerNorm.gamma") {
        format!("{p}LayerNorm.weight")
    } else if let Some(p) = k.strip_suffix("LayerNorm.beta") {
        format!("{p}LayerNorm.bias")
    } else {
        k.to_string()
    }
}

/// Whether a weight the encoder does not read belongs to something a BERT checkpoint legitimately
/// carries beside the encoder: the pooler, task heads (`cls.*` pre-training heads, classifiers), and
/// the position/token-type id buffers that PyTorch saves with the embeddings.
fn is_extra_head(name: &str) -> bool {
    !(name.starts_with("encoder.") || name.starts_with("embeddings."))
        || name == "embeddings.position_ids"
        || name == "embeddings.token_type_ids"
}

/// Refuses encoder weights that `config` leaves unused (a config.json with fewer layers than the
/// checkpoint would silently run a truncated model).
fn check_all_used<'a>(
    left: impl Iterator<Item = &'a String>,
    config: &BertConfig,
    path: &Path,
) -> Result<()> {
    let mut unused: Vec<&str> = left
        .map(String::as_str)
        .filter(|n| !is_extra_head(n))
        .collect();
    if unused.is_empty() {
        return Ok(());
    }
    unused.sort_unstable();
    let layer_of = |n: &str| -> Option<usize> {
        n.strip_prefix("encoder.layer.")?
            .split('.')
            .next()?
            .parse()
            .ok()
    };
    let layers = unused.iter().filter_map(|n| layer_of(n)).max();
    let shown: Vec<String> = unused.iter().take(3).map(|n| format!("`{n}`")).collect();
    let more = if unused.len() > shown.len() {
        format!(" and {} more", unused.len() - shown.len())
    } else {
        String::new()
    };
    let hint = match layers {
        Some(max) if max >= config.num_hidden_layers => format!(
            "the weights hold {} layers but num_hidden_layers = {}: set num_hidden_layers to {} in {}, \
             or use the config.json that came with these weights",
            max + 1,
            config.num_hidden_layers,
            max + 1,
            config.path.display()
        ),
        _ => format!(
            "check that {} is the config.json that came with these weights",
            config.path.display()
        ),
    };
    Err(Error::invalid(
        path,
        None,
        format!(
            "{} weights are not used by the model that {} describes: {}{more}; {hint}",
            unused.len(),
            config.path.display(),
            shown.join(", ")
        ),
    ))
}
