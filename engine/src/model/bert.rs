//! The BERT encoder forward, written on candle-core / candle-nn.
//!
//! Why not candle-transformers' `BertModel`: it builds its attention mask from `f32::MIN`, which
//! overflows to `-inf`/NaN in f16 and bf16, and the GPU path needs half precision. Here the mask is an
//! additive bias of `-10000`, finite in every float type, and exactly zero after `exp` in f32.
//!
//! Layout choices for speed: activations are kept as a `(batch * seq, hidden)` matrix so that every
//! projection is one large GEMM; Q, K and V are one fused projection; LayerNorm and softmax are candle's
//! fused kernels.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};

use super::config::{Activation, BertConfig};
use crate::error::{Error, Result};

/// The additive attention bias of a padding key.
const MASK_BIAS: f64 = -10000.0;

struct Linear {
    /// `(in, out)`, contiguous, so that `x @ weight` is a plain row-major GEMM.
    weight: Tensor,
    bias: Tensor,
    /// The weight packed for the small-batch kernel (`cpu_ops::PackedWeight`), made on first use.
    packed: std::sync::OnceLock<Option<super::cpu_ops::PackedWeight>>,
    /// The weight as 7-bit integers (`--precision int8`): when present, the projection runs on it.
    quant: Option<super::int8::QuantWeight>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight)?.broadcast_add(&self.bias)
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

/// A loaded BERT encoder (no pooler: SimLM and sentence-transformers use the last hidden states).
pub struct BertModel {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    config: BertConfig,
    dtype: DType,
    device: Device,
}

/// Where the weights came from, for error messages.
struct Weights<'a> {
    map: HashMap<String, Tensor>,
    path: &'a Path,
    dtype: DType,
    device: &'a Device,
}

impl Weights<'_> {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.map.remove(name).ok_or_else(|| {
            Error::invalid(
                self.path,
                None,
                format!("weight `{name}` is missing (is this a BERT checkpoint?)"),
            )
        })?;
        if t.dims() != shape {
            return Err(Error::invalid(
                self.path,
                None,
                format!(
                    "weight `{name}` has shape {:?}, config.json implies {:?}",
                    t.dims(),
                    shape
                ),
            ));
        }
        Ok(t.to_dtype(self.dtype)?.to_device(self.device)?)
    }

    fn linear(&mut self, prefix: &str, inp: usize, out: usize) -> Result<Linear> {
        self.fused_linear(&[prefix], inp, out)
    }

    /// The projections `prefixes` (each `out` wide, from `inp`) as one: their weights side by side
    /// in an `(inp, out * prefixes.len())` matrix, their biases one after another.
    fn fused_linear(&mut self, prefixes: &[&str], inp: usize, out: usize) -> Result<Linear> {
        let mut weights = Vec::with_capacity(prefixes.len());
        let mut biases = Vec::with_capacity(prefixes.len());
        for p in prefixes {
            weights.push(self.take(&format!("{p}.weight"), &[out, inp])?);
            biases.push(self.take(&format!("{p}.bias"), &[out])?);
        }
        let weight = if self.device.is_cpu() && self.dtype == DType::F32 {
            transposed_side_by_side(&weights, inp, out)?
        } else {
            let t: Vec<Tensor> = weights
                .iter()
                .map(|w| w.t()?.contiguous())
                .collect::<candle_core::Result<_>>()?;
            Tensor::cat(&t, 1)?.contiguous()?
        };
        Ok(Linear {
            weight,
            bias: Tensor::cat(&biases, 0)?,
            packed: Default::default(),
            quant: None,
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

/// `(out, inp)` f32 CPU weights (PyTorch's layout) transposed into one `(inp, out * parts)` matrix,
/// part `i` in columns `i * out..`: the same values as candle's transpose and concatenation, written
/// once, in blocks that stay in cache (candle's strided copy went element by element).
fn transposed_side_by_side(parts: &[Tensor], inp: usize, out: usize) -> Result<Tensor> {
    use rayon::prelude::*;
    const B: usize = 32;
    let width = out * parts.len();
    let mut dst = vec![0f32; inp * width];
    for (i, part) in parts.iter().enumerate() {
        super::cpu_ops::with_f32(part, "weight", |src| {
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
            Ok(())
        })?;
    }
    Ok(Tensor::from_vec(dst, (inp, width), &Device::Cpu)?)
}

/// Normalises a checkpoint's weight names: drops a leading `bert.` (BertForXxx checkpoints) and maps
/// the old TensorFlow-era `gamma`/`beta` LayerNorm names to `weight`/`bias`.
pub fn normalise_weight_names(map: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    map.into_iter()
        .map(|(k, v)| {
            let k = k.strip_prefix("bert.").unwrap_or(&k).to_string();
            let k = if let Some(p) = k.strip_suffix("LayerNorm.gamma") {
                format!("{p}LayerNorm.weight")
            } else if let Some(p) = k.strip_suffix("LayerNorm.beta") {
                format!("{p}LayerNorm.bias")
            } else {
                k
            };
            (k, v)
        })
        .collect()
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

impl BertModel {
    /// Builds the model from a name -> tensor map (names as in Hugging Face checkpoints, with or
    /// without the `bert.` prefix). `path` names the weight file in errors.
    pub fn from_weights(
        map: HashMap<String, Tensor>,
        config: &BertConfig,
        path: &Path,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut w = Weights {
            map: normalise_weight_names(map),
            path,
            dtype,
            device,
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
        check_all_used(w.map.keys(), config, path)?;
        Ok(BertModel {
            word,
            position,
            token_type,
            emb_norm,
            layers,
            config: config.clone(),
            dtype,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Quantises every linear layer's weight to int8 (see `model::int8`); the forward then runs the
    /// projections on integers. CPU and f32 only. `path` names the weight file in errors.
    pub fn quantize_int8(&mut self, path: &Path) -> Result<()> {
        if !self.device.is_cpu() || self.dtype != DType::F32 {
            return Err(Error::Usage(
                "int8 runs on the CPU (dynamic quantisation of the linear layers): use --device cpu, \
                 or f16 / bf16 on CUDA"
                    .into(),
            ));
        }
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (name, l) in [
                ("attention.self.query/key/value", &mut layer.qkv),
                ("attention.output.dense", &mut layer.attn_out),
                ("intermediate.dense", &mut layer.intermediate),
                ("output.dense", &mut layer.output),
            ] {
                let (inp, out) = l.weight.dims2()?;
                let q = super::cpu_ops::with_f32(&l.weight, "weight", |w| {
                    Ok(super::int8::QuantWeight::of(w, inp, out))
                })?
                .map_err(|e| {
                    Error::invalid(path, None, format!("encoder.layer.{i}.{name}: {e}"))
                })?;
                l.quant = Some(q);
            }
        }
        Ok(())
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Last hidden states, `(batch, seq, hidden)` in the model's dtype. `input_ids`,
    /// `token_type_ids` and `attention_mask` are `(batch, seq)` u32 tensors on the model's device.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        self.forward_inner(input_ids, token_type_ids, attention_mask, false)
    }

    /// The last hidden state of the first token only, `(batch, 1, hidden)`: what [CLS] pooling reads.
    /// On the fused f32 CPU path the last layer then computes attention, its output projection and
    /// the feed-forward block for that one row of each sequence (keys and values still come from
    /// every token), which saves about three quarters of that layer.
    pub fn forward_cls(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        self.forward_inner(input_ids, token_type_ids, attention_mask, true)
    }

    fn forward_inner(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        cls_only: bool,
    ) -> Result<Tensor> {
        let (b, s) = input_ids.dims2()?;
        let h = self.config.hidden_size;
        let hd = self.config.head_dim();
        if s > self.config.max_position_embeddings {
            return Err(Error::Usage(format!(
                "sequence of {s} tokens exceeds max_position_embeddings = {}",
                self.config.max_position_embeddings
            )));
        }

        let ids = input_ids.flatten_all()?;
        let types = token_type_ids.flatten_all()?;
        let words = self.word.index_select(&ids, 0)?.reshape((b, s, h))?;
        let types = self
            .token_type
            .index_select(&types, 0)?
            .reshape((b, s, h))?;
        let pos = self.position.narrow(0, 0, s)?;
        let x = (words + types)?.broadcast_add(&pos)?.reshape((b * s, h))?;
        let x = self.emb_norm.forward(&x)?;
        let scale = 1.0 / (hd as f64).sqrt();

        let x = if self.device.is_cpu() && self.dtype == DType::F32 {
            self.layers_cpu_f32(x, attention_mask, b, s, scale, cls_only)?
        } else {
            self.layers_generic(x, attention_mask, b, s, scale)?
        };
        if cls_only {
            if x.dims2()?.0 == b {
                return Ok(x.reshape((b, 1, h))?);
            }
            return Ok(x.reshape((b, s, h))?.narrow(1, 0, 1)?);
        }
        Ok(x.reshape((b, s, h))?)
    }
}

impl BertModel {
    /// The encoder layers with candle's ops: any device, any float type.
    fn layers_generic(
        &self,
        mut x: Tensor,
        attention_mask: &Tensor,
        b: usize,
        s: usize,
        scale: f64,
    ) -> Result<Tensor> {
        let h = self.config.hidden_size;
        let heads = self.config.num_attention_heads;
        let hd = self.config.head_dim();
        // (b, 1, 1, s): 0 for real tokens, MASK_BIAS for padding.
        let bias =
            ((attention_mask.to_dtype(self.dtype)? - 1.0)? * -MASK_BIAS)?.reshape((b, 1, 1, s))?;
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?.reshape((b, s, 3, heads, hd))?;
            let q = (qkv.narrow(2, 0, 1)?.squeeze(2)?.transpose(1, 2)? * scale)?.contiguous()?;
            let k = qkv
                .narrow(2, 1, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()?;
            let v = qkv
                .narrow(2, 2, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()?;
            let scores = q.matmul(&k.t()?)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b * s, h))?;
            let attn = layer.attn_out.forward(&ctx)?;
            x = layer.attn_norm.forward(&(attn + &x)?)?;
            let inter = self.activation(&layer.intermediate.forward(&x)?)?;
            let out = layer.output.forward(&inter)?;
            x = layer.out_norm.forward(&(out + &x)?)?;
        }
        Ok(x)
    }

    /// The encoder layers with the fused f32 CPU kernels (see `cpu_ops`).
    fn layers_cpu_f32(
        &self,
        mut x: Tensor,
        attention_mask: &Tensor,
        b: usize,
        s: usize,
        scale: f64,
        cls_only: bool,
    ) -> Result<Tensor> {
        use super::cpu_ops::{FusedAttention, FusedLinear};
        let lengths: Vec<usize> = attention_mask
            .to_dtype(DType::F32)?
            .sum(1)?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|n| n as usize)
            .collect();
        let attention = FusedAttention {
            batch: b,
            seq: s,
            heads: self.config.num_attention_heads,
            head_dim: self.config.head_dim(),
            lengths: &lengths,
            scale: scale as f32,
            first_token_only: false,
        };
        let erf = self.config.hidden_act == Activation::GeluErf;
        let last = self.layers.len().saturating_sub(1);
        for (li, layer) in self.layers.iter().enumerate() {
            let linear = |l: &Linear,
                          residual: Option<&Tensor>,
                          gelu: bool,
                          norm: Option<&LayerNorm>,
                          input: &Tensor| {
                input.apply_op1_no_bwd(&FusedLinear {
                    weight: &l.weight,
                    quant: l.quant.as_ref(),
                    // An int8 layer never reads the f32 packing: it is not made.
                    packed: l.quant.is_none().then_some(&l.packed),
                    bias: &l.bias,
                    residual,
                    gelu,
                    norm: norm.map(|n| (&n.weight, &n.bias, n.eps)),
                })
            };
            let qkv = linear(&layer.qkv, None, false, None, &x)?;
            let ctx = if cls_only && li == last {
                // From here on, only the first row of each sequence.
                let h = self.config.hidden_size;
                x = x
                    .reshape((b, s, h))?
                    .narrow(1, 0, 1)?
                    .reshape((b, h))?
                    .contiguous()?;
                qkv.apply_op1_no_bwd(&FusedAttention {
                    first_token_only: true,
                    ..attention
                })?
            } else {
                qkv.apply_op1_no_bwd(&attention)?
            };
            x = linear(
                &layer.attn_out,
                Some(&x),
                false,
                Some(&layer.attn_norm),
                &ctx,
            )?;
            let inter = linear(&layer.intermediate, None, erf, None, &x)?;
            let inter = if erf { inter } else { self.activation(&inter)? };
            x = linear(
                &layer.output,
                Some(&x),
                false,
                Some(&layer.out_norm),
                &inter,
            )?;
        }
        Ok(x)
    }

    fn activation(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.config.hidden_act {
            Activation::GeluErf => x.gelu_erf()?,
            Activation::GeluTanh => x.gelu()?,
            Activation::Relu => candle_nn::Activation::Relu.forward(x)?,
        })
    }
}

/// How the last hidden states become one vector (always L2-normalised afterwards).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The `[CLS]` state (SimLM; no pooler layer).
    Cls,
    /// The mean over non-padding tokens (sentence-transformers).
    Mean,
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cls" => Ok(Pooling::Cls),
            "mean" => Ok(Pooling::Mean),
            _ => Err(format!("unknown pooling `{s}` (cls | mean)")),
        }
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
        })
    }
}

/// The pooled vector of each sequence, L2-normalised, as f32 `(batch, hidden)`.
pub fn pool(hidden: &Tensor, attention_mask: &Tensor, pooling: Pooling) -> Result<Tensor> {
    let hidden = hidden.to_dtype(DType::F32)?;
    let pooled = match pooling {
        Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
        Pooling::Mean => {
            let m = attention_mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let sum = hidden.broadcast_mul(&m)?.sum(1)?;
            let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
            sum.broadcast_div(&count)?
        }
    };
    let norm = pooled
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(pooled.broadcast_div(&norm)?)
}
