//! The embedding sums that start the forward, as one pass on the encoder's own threads (a fused op:
//! it calls only the leaves).

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::parallel::{may_split, SERIAL_ELEMENTS};
use super::tensor::with_f32;

/// The embedding sums `(word[id] + type[type id]) + position[p]` of `ids.len() / seq` sequences of
/// `seq` tokens, as a `(tokens, hidden)` tensor: candle's `index_select` and two additions give the
/// same bits, but run their additions on candle's own thread pool, whose workers spin beside the
/// encoder's threads. Here the rows are summed on the calling thread, or split across the pool
/// when the encoder may split.
pub fn embedding_sums(
    word: &Tensor,
    token_type: &Tensor,
    position: &Tensor,
    ids: &[u32],
    types: &[u32],
    seq: usize,
) -> Result<Tensor> {
    let (vocab, h) = word.dims2()?;
    let (type_vocab, max_pos) = (token_type.dims2()?.0, position.dims2()?.0);
    if ids.is_empty() && types.is_empty() {
        return Tensor::zeros((0, h), candle_core::DType::F32, &candle_core::Device::Cpu);
    }
    if types.len() != ids.len() || seq == 0 || seq > max_pos || !ids.len().is_multiple_of(seq) {
        candle_core::bail!(
            "embeddings: {} ids, {} type ids, {seq} per sequence",
            ids.len(),
            types.len()
        );
    }
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
        candle_core::bail!(
            "token id {id} is outside the model's {vocab} word embeddings: the tokenizer does not \
             belong to this checkpoint (use the tokenizer.json that came with its config.json)"
        );
    }
    if let Some(&t) = types.iter().find(|&&t| t as usize >= type_vocab) {
        candle_core::bail!("token type {t} is outside the model's {type_vocab} token types");
    }
    let mut out = vec![0f32; ids.len() * h];
    with_f32(word, "word embeddings", |w| {
        with_f32(token_type, "token type embeddings", |t| {
            with_f32(position, "position embeddings", |p| {
                let row = |(i, o): (usize, &mut [f32])| {
                    let w = &w[ids[i] as usize * h..][..h];
                    let t = &t[types[i] as usize * h..][..h];
                    let p = &p[(i % seq) * h..][..h];
                    for (((o, w), t), p) in o.iter_mut().zip(w).zip(t).zip(p) {
                        *o = (w + t) + p;
                    }
                };
                if may_split() && ids.len() * h > SERIAL_ELEMENTS {
                    out.par_chunks_mut(h).enumerate().for_each(row);
                } else {
                    out.chunks_mut(h).enumerate().for_each(row);
                }
                Ok(())
            })
        })
    })?;
    Tensor::from_vec(out, (ids.len(), h), &candle_core::Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::super::parallel::with_splitting;
    use super::*;

    /// The embedding sums give the bits of candle's index_select and additions, split or not, and a
    /// token id past the vocabulary is an error that names the tokenizer.
    #[test]
    fn embedding_sums_match_candles_ops() {
        let dev = candle_core::Device::Cpu;
        let (vocab, h, types_n, max_pos) = (50, 24, 2, 16);
        let t = |n: usize, m: usize, d: f32| -> Tensor {
            let v: Vec<f32> = (0..n * h)
                .map(|i| ((i * m % 101) as f32 - 50.0) / d)
                .collect();
            Tensor::from_vec(v, (n, h), &dev).unwrap()
        };
        let (word, ty, pos) = (t(vocab, 7, 9.0), t(types_n, 3, 11.0), t(max_pos, 5, 13.0));
        let (b, s) = (3, 7);
        let ids: Vec<u32> = (0..b * s).map(|i| (i * 13 % vocab) as u32).collect();
        let types: Vec<u32> = (0..b * s).map(|i| (i % s > 3) as u32).collect();
        let idt = Tensor::from_vec(ids.clone(), b * s, &dev).unwrap();
        let tyt = Tensor::from_vec(types.clone(), b * s, &dev).unwrap();
        let want = (word
            .index_select(&idt, 0)
            .unwrap()
            .reshape((b, s, h))
            .unwrap()
            + ty.index_select(&tyt, 0)
                .unwrap()
                .reshape((b, s, h))
                .unwrap())
        .unwrap()
        .broadcast_add(&pos.narrow(0, 0, s).unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
        for split in [false, true] {
            let got = with_splitting(split, || embedding_sums(&word, &ty, &pos, &ids, &types, s))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "split {split}");
        }
        let empty = embedding_sums(&word, &ty, &pos, &[], &[], 0).unwrap();
        assert_eq!(empty.dims(), &[0, h]);
        let mut bad = ids.clone();
        bad[4] = vocab as u32;
        let e = embedding_sums(&word, &ty, &pos, &bad, &types, s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("token id 50") && e.contains("tokenizer"), "{e}");
    }
}
