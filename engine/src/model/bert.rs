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

use super::checkpoint::WeightFile;
use super::config::{Activation, BertConfig};
use crate::error::{Error, Result};

/// The additive attention bias of a padding key.
const MASK_BIAS: f64 = -10000.0;

struct Linear {
    /// `(in, out)`, contiguous, so that `x @ weight` is a plain row-major GEMM; `None` when the
    /// projection runs on `quant` alone (int8 keeps no f32 copy).
    weight: Option<Tensor>,
    bias: Tensor,
    /// The weight packed for the small-batch kernel (`cpu_ops::PackedWeight`), made on first use.
    packed: std::sync::OnceLock<Option<super::cpu_ops::PackedWeight>>,
    /// The weight as 7-bit integers (`--precision int8`): when present, the projection runs on it.
    quant: Option<super::int8::QuantWeight>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.weight {
            Some(w) => x.matmul(w)?.broadcast_add(&self.bias),
            None => candle_core::bail!("an int8 projection runs on the fused CPU path only"),
        }
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
            let quant = super::int8::QuantWeight::from_rows(&rows, inp).map_err(|e| {
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
            });
        }
        let parts: Vec<&[f32]> = parts.iter().map(|p| &p[..]).collect();
        Ok(Linear {
            weight: Some(transposed_side_by_side(&parts, inp, out)?),
            bias,
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

impl BertModel {
    /// Builds the model from a checkpoint's tensors (names as in Hugging Face checkpoints, with or
    /// without the `bert.` prefix). `path` names the weight file in errors. With `int8`, every
    /// linear layer's weight is quantised (see `model::int8`) and the projections run on integers:
    /// CPU and f32 only.
    pub fn from_weights(
        file: &WeightFile,
        config: &BertConfig,
        path: &Path,
        dtype: DType,
        device: &Device,
        int8: bool,
    ) -> Result<Self> {
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
        let x = if self.device.is_cpu() && self.dtype == DType::F32 {
            let (ids, types) = (ids.to_vec1::<u32>()?, types.to_vec1::<u32>()?);
            super::cpu_ops::embedding_sums(
                &self.word,
                &self.token_type,
                &self.position,
                &ids,
                &types,
                s,
            )?
        } else {
            let words = self.word.index_select(&ids, 0)?.reshape((b, s, h))?;
            let types = self
                .token_type
                .index_select(&types, 0)?
                .reshape((b, s, h))?;
            let pos = self.position.narrow(0, 0, s)?;
            (words + types)?.broadcast_add(&pos)?.reshape((b * s, h))?
        };
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
        use super::cpu_ops::{FeedForwardInt8, FusedAttention, FusedLinear};
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
                    weight: l.weight.as_ref(),
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
            if let (true, Some(w1), Some(w2)) =
                (erf, &layer.intermediate.quant, &layer.output.quant)
            {
                x = x.apply_op1_no_bwd(&FeedForwardInt8 {
                    intermediate: w1,
                    intermediate_bias: &layer.intermediate.bias,
                    output: w2,
                    output_bias: &layer.output.bias,
                    norm: (
                        &layer.out_norm.weight,
                        &layer.out_norm.bias,
                        layer.out_norm.eps,
                    ),
                })?;
                continue;
            }
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
