//! The BERT encoder forward, written on candle-core / candle-nn.
//!
//! Why not candle-transformers' `BertModel`: it builds its attention mask from `f32::MIN`, which
//! overflows to `-inf`/NaN in f16 and bf16, and the GPU path needs half precision. Here the mask is an
//! additive bias of `-10000`, finite in every float type, and exactly zero after `exp` in f32.
//!
//! Layout choices for speed: activations are kept as a `(batch * seq, hidden)` matrix so that every
//! projection is one large GEMM; Q, K and V are one fused projection; LayerNorm and softmax are candle's
//! fused kernels.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};

use super::checkpoint::WeightFile;
use super::config::{Activation, BertConfig};
use super::weights::{BertWeights, Layer, LayerNorm, Linear};
use crate::error::{Error, Result};

/// The additive attention bias of a padding key.
const MASK_BIAS: f64 = -10000.0;

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.weight {
            Some(w) => x.matmul(w)?.broadcast_add(&self.bias),
            None => candle_core::bail!("an int8 projection runs on the fused CPU path only"),
        }
    }
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
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

impl BertModel {
    /// Builds the model from a checkpoint's tensors (names as in Hugging Face checkpoints, with or
    /// without the `bert.` prefix). `path` names the weight file in errors. With `int8`, every
    /// linear layer's weight is quantised (see `cpu::int8`) and the projections run on integers:
    /// CPU and f32 only.
    pub fn from_weights(
        file: &WeightFile,
        config: &BertConfig,
        path: &Path,
        dtype: DType,
        device: &Device,
        int8: bool,
    ) -> Result<Self> {
        let BertWeights {
            word,
            position,
            token_type,
            emb_norm,
            layers,
        } = BertWeights::load(file, config, path, dtype, device, int8)?;
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
    /// On the fused CPU path (f32 and int8) the last layer then computes attention, its output
    /// projection and the feed-forward block for that one row of each sequence, its attention
    /// straight from the layer's input rows (no row's keys or values projected; see
    /// `cpu::fused_attention::FirstRowAttention`).
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
            super::cpu::embedding::embedding_sums(
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

    /// The encoder layers with the fused f32 CPU kernels (see `cpu`).
    fn layers_cpu_f32(
        &self,
        mut x: Tensor,
        attention_mask: &Tensor,
        b: usize,
        s: usize,
        scale: f64,
        cls_only: bool,
    ) -> Result<Tensor> {
        use super::cpu::fused_attention::{FirstRowAttention, FusedAttention};
        use super::cpu::fused_linear::{FeedForwardInt8, FusedLinear};
        use super::cpu::tensor::with_f32;
        let lengths: Vec<usize> = attention_mask
            .to_dtype(DType::F32)?
            .sum(1)?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|n| (n as usize).min(s))
            .collect();
        // Sequences shorter than the batch's longest are packed: the projections, which cost in
        // proportion to their rows, run on the real tokens only (a batch of queries of 5 to 32
        // tokens holds about twice as many padded rows as real ones), and attention reads each
        // sequence's span. Each row's values are those it has padded.
        let h = self.config.hidden_size;
        // A sequence with no real token at all (a text that tokenised to nothing) keeps the padded
        // layout: it has no first row to take.
        let packed = b > 1 && lengths.iter().any(|&n| n < s) && lengths.iter().all(|&n| n > 0);
        let starts: Vec<usize> = if packed {
            std::iter::once(0)
                .chain(lengths.iter().scan(0, |at, &n| {
                    *at += n;
                    Some(*at)
                }))
                .collect()
        } else {
            (0..=b).map(|i| i * s).collect()
        };
        if packed {
            let real: Vec<u32> = (0..b)
                .flat_map(|i| (i * s..i * s + lengths[i]).map(|r| r as u32))
                .collect();
            x = x.index_select(&Tensor::new(real.as_slice(), x.device())?, 0)?;
        }
        let attention = FusedAttention {
            starts: &starts,
            heads: self.config.num_attention_heads,
            head_dim: self.config.head_dim(),
            lengths: &lengths,
            scale: scale as f32,
        };
        let erf = self.config.hidden_act == Activation::GeluErf;
        let last = self.layers.len().saturating_sub(1);
        // Whether the last layer keeps only each sequence's first row (see below).
        let firsts_only = cls_only && !self.layers.is_empty();
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
            let ctx = if cls_only && li == last {
                // Attention for the first row of each sequence straight from the layer's input
                // (no keys and values projected), and from here on, only those rows.
                let h = attention.heads * attention.head_dim;
                let ctx = layer.qkv.with_qkv_values(h, |w, keys_t| {
                    with_f32(&layer.qkv.bias, "bias", |bias| {
                        x.apply_op1_no_bwd(&FirstRowAttention {
                            starts: &starts,
                            heads: attention.heads,
                            head_dim: attention.head_dim,
                            lengths: &lengths,
                            scale: attention.scale,
                            weight: w,
                            keys_t,
                            bias,
                        })
                    })
                })?;
                let first: Vec<u32> = starts[..b].iter().map(|&r| r as u32).collect();
                x = x.index_select(&Tensor::new(first.as_slice(), x.device())?, 0)?;
                ctx
            } else {
                linear(&layer.qkv, None, false, None, &x)?.apply_op1_no_bwd(&attention)?
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
        if packed && !firsts_only {
            // Back to the padded layout, the padding rows zero.
            let real = x.flatten_all()?.to_vec1::<f32>()?;
            let mut padded = vec![0f32; b * s * h];
            for i in 0..b {
                let n = lengths[i] * h;
                padded[i * s * h..][..n].copy_from_slice(&real[starts[i] * h..][..n]);
            }
            x = Tensor::from_vec(padded, (b * s, h), x.device())?;
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
