//! Searching a graph: greedy descent through the upper layers, a best-first search of layer 0 scored
//! on the 8-bit codes (against the query's weights in 16 bits, by integer multiply-adds), then the
//! candidates re-scored from the matrix in exact search's arithmetic
//! (`simd::RowsFn`: a row's score is the one exact search gives it, bit for bit). Every link the
//! walk follows is bounds-checked, every returned score is finite, and a search returns
//! `min(k, passages)` hits or an error: a damaged graph or matrix never shows as a short or wrong list.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::format::Graph;
use super::Near;
use crate::error::{Error, Result};
use crate::memory::HugeArray;
use crate::search::{sort_hits, Hit};
use crate::simd::{self, prefetch, RowsFn, ROWS};
use crate::store::npy::NpyMatrix;

/// How many codes ahead of the one being scored a walk asks for: each code is `dim` bytes (12 cache
/// lines at 768), so 6 keep about 70 lines in flight, near what a core's miss buffers hold. Asking for
/// all of a node's new neighbours at once (up to 64 codes) overflowed them; at 1M x 768 on an AMD EPYC
/// Zen 4 (1 and 2 threads, ef 10 and 16), 6 codes ahead gave 6-19% more queries/s than all at once;
/// 8 and 12 no more than 6.
const AHEAD: usize = 6;

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Per-thread search state, reused across queries.
#[derive(Default)]
struct Scratch {
    /// `visited[row] == epoch` marks a row as seen by the current query.
    visited: HugeArray<u16>,
    epoch: u16,
    candidates: BinaryHeap<Near>,
    /// The `ef` best found, worst on top.
    found: BinaryHeap<Reverse<Near>>,
    batch: Vec<u32>,
    weights: Vec<f32>,
    small_weights: Vec<i16>,
}

impl Scratch {
    /// Takes `near` as a candidate and a found row if there is room among the `ef` found or it beats
    /// the worst of them (`floor`, raised to the new worst).
    #[inline]
    fn offer(&mut self, near: Near, ef: usize, floor: &mut f32) {
        if self.found.len() < ef || near.score > *floor {
            self.candidates.push(near);
            self.found.push(Reverse(near));
            if self.found.len() > ef {
                self.found.pop();
            }
            if let Some(w) = self.found.peek() {
                *floor = w.0.score;
            }
        }
    }

    fn start(&mut self, n: usize) {
        if self.visited.len() != n {
            self.visited = HugeArray::zeroed(n);
            self.epoch = 0;
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.visited.fill(0);
            self.epoch = 1;
        }
        self.candidates.clear();
        self.found.clear();
    }
}

impl Graph {
    fn damaged(&self, msg: String) -> Error {
        Error::corrupt(
            &self.path,
            format!(
                "{msg}; run `simlm-index verify {dir}` and rebuild the graph with `simlm-index hnsw {dir}`",
                dir = self.index_dir.display()
            ),
        )
    }

    /// The `k` rows with the highest inner product with `query` found through the graph, keeping `ef`
    /// candidates on layer 0; scores are those exact search gives the rows of `matrix` (the same
    /// arithmetic, the same bits), in exact search's order.
    pub fn search(
        &self,
        matrix: &NpyMatrix,
        query: &[f32],
        k: usize,
        ef: usize,
    ) -> Result<Vec<Hit>> {
        self.search_with(simd::score_rows_kernel(), matrix, query, k, ef)
    }

    /// [`Graph::search`], re-scoring with a given kernel (the tests run every one the CPU has).
    pub(crate) fn search_with(
        &self,
        rows_kernel: RowsFn,
        matrix: &NpyMatrix,
        query: &[f32],
        k: usize,
        ef: usize,
    ) -> Result<Vec<Hit>> {
        let dim = self.dim;
        if matrix.rows() != self.n || matrix.cols() != dim {
            return Err(self.damaged(format!(
                "a graph of {} x {dim} for a matrix of {} x {}",
                self.n,
                matrix.rows(),
                matrix.cols()
            )));
        }
        if query.len() != dim {
            return Err(Error::Usage(format!(
                "a query of {} values for vectors of dimension {dim}",
                query.len()
            )));
        }
        if self.n == 0 || k == 0 {
            return Ok(Vec::new());
        }
        let codes = &self.map[self.codes_at..self.codes_at + self.n * dim];
        let mins = self.floats(self.book_at, dim);
        let steps = self.floats(self.book_at + 4 * dim, dim);
        // q . x ~ q . min + sum_i (q_i step_i) code_i
        let bias: f32 = query.iter().zip(mins).map(|(q, m)| q * m).sum();
        let found = SCRATCH.with(|cell| {
            let mut guard = cell.borrow_mut();
            let sc = &mut *guard;
            let mut weights = std::mem::take(&mut sc.weights);
            weights.clear();
            weights.extend(query.iter().zip(steps).map(|(q, s)| q * s));
            // The weights in 16 bits (a step of 1/32,767 of the largest: far below the codes' own
            // rounding), so that a code is scored by integer multiply-adds (`dot_u8_i16`).
            let top = weights.iter().fold(0f32, |m, w| m.max(w.abs()));
            let found = if dim <= simd::DOT_U8_I16_MAX_LEN && top.is_normal() {
                let scale = top / i16::MAX as f32;
                let mut small = std::mem::take(&mut sc.small_weights);
                small.clear();
                small.extend(weights.iter().map(|w| (w / scale).round() as i16));
                let dot = simd::dot_u8_i16_kernel();
                let found = self.walk(sc, ef.max(k), codes.as_ptr(), dim, |r| {
                    bias + scale * dot(&small, &codes[r * dim..(r + 1) * dim]) as f32
                });
                sc.small_weights = small;
                found
            } else {
                let dot = simd::dot_u8_kernel();
                self.walk(sc, ef.max(k), codes.as_ptr(), dim, |r| {
                    bias + dot(&weights, &codes[r * dim..(r + 1) * dim])
                })
            };
            sc.weights = weights;
            found
        });
        let found: Vec<u32> = found
            .map_err(|m| self.damaged(m))?
            .into_iter()
            .map(|node| self.row(node as usize) as u32)
            .collect();
        let mut hits = rescore(rows_kernel, matrix, query, &found)?;
        sort_hits(&mut hits);
        hits.truncate(k);
        let want = k.min(self.n);
        if hits.len() < want {
            return Err(self.damaged(format!(
                "the walk reached {} passages, fewer than the {want} asked for",
                hits.len()
            )));
        }
        Ok(hits)
    }

    /// The graph walk: greedy descent through the upper layers, then a best-first search of layer 0
    /// keeping the `ef` best rows by `score`. `base` and `stride` (bytes) locate the scored rows in
    /// memory for prefetching. A damaged link list is an error.
    fn walk(
        &self,
        sc: &mut Scratch,
        ef: usize,
        base: *const u8,
        stride: usize,
        score: impl Fn(usize) -> f32,
    ) -> std::result::Result<Vec<u32>, String> {
        let mut cur = self.entry;
        let mut cur_score = score(cur);
        for layer in (1..=self.top).rev() {
            loop {
                let mut moved = false;
                for &nb in self.neighbours(cur, layer)? {
                    let nb = nb as usize;
                    let s = score(nb);
                    if s > cur_score || (s == cur_score && nb < cur) {
                        cur = nb;
                        cur_score = s;
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        sc.start(self.n);
        let epoch = sc.epoch;
        sc.visited[cur] = epoch;
        let start = Near {
            score: cur_score,
            id: cur as u32,
        };
        sc.candidates.push(start);
        sc.found.push(Reverse(start));
        let mut floor = cur_score;
        // Nodes the walk may restart from when it runs out of candidates short of `ef` rows (a part of
        // the graph it cannot reach from where it entered layer 0): the unvisited ones, by id.
        let mut restart = 0usize;
        loop {
            while let Some(Near { score: s, id: row }) = sc.candidates.pop() {
                if s < floor && sc.found.len() >= ef {
                    break;
                }
                // The next candidate's links load while this one's neighbours are scored.
                if let Some(next) = sc.candidates.peek() {
                    let at = self.layer0_at + 4 * next.id as usize * (self.m0 + 1);
                    prefetch(self.map.as_ptr().wrapping_add(at), 4 * (self.m0 + 1));
                }
                // Unseen neighbours first, then their scores, each code asked for `AHEAD` codes
                // before it is scored.
                sc.batch.clear();
                for &nb in self.neighbours(row as usize, 0)? {
                    let i = nb as usize;
                    if sc.visited[i] != epoch {
                        sc.visited[i] = epoch;
                        if sc.batch.len() < AHEAD {
                            prefetch(base.wrapping_add(i * stride), stride);
                        }
                        sc.batch.push(nb);
                    }
                }
                for i in 0..sc.batch.len() {
                    if let Some(&far) = sc.batch.get(i + AHEAD) {
                        prefetch(base.wrapping_add(far as usize * stride), stride);
                    }
                    let nb = sc.batch[i];
                    sc.offer(
                        Near {
                            score: score(nb as usize),
                            id: nb,
                        },
                        ef,
                        &mut floor,
                    );
                }
            }
            if sc.found.len() >= ef.min(self.n) {
                break;
            }
            while restart < self.n && sc.visited[restart] == epoch {
                restart += 1;
            }
            if restart == self.n {
                break;
            }
            sc.visited[restart] = epoch;
            // found holds fewer than ef rows here: the seed is always taken.
            sc.offer(
                Near {
                    score: score(restart),
                    id: restart as u32,
                },
                ef,
                &mut floor,
            );
        }
        Ok(sc.found.drain().map(|w| w.0.id).collect())
    }
}

/// The scores of `query` with the `rows` of the matrix by `kernel` (exact search's arithmetic), in
/// list order; a non-finite one (a damaged row) is an error naming the row.
fn rescore(kernel: RowsFn, matrix: &NpyMatrix, query: &[f32], rows: &[u32]) -> Result<Vec<Hit>> {
    // A matrix larger than memory is mostly on disk: ask for all the candidates' rows at once, so that
    // the disk reads them in parallel (one page fault after another would wait for each in turn).
    if matrix.exceeds_half_of_memory() {
        matrix.prefetch_row_list(rows);
    }
    let mut hits = Vec::with_capacity(rows.len());
    let mut out = [0f32; ROWS];
    for group in rows.chunks(ROWS) {
        // Borrowed slices of the map for f32 files; f16 rows are converted one by one.
        let data: Vec<_> = group
            .iter()
            .map(|&r| matrix.rows_f32(r as usize, r as usize + 1))
            .collect();
        let slices: Vec<&[f32]> = data.iter().map(|d| &d[..]).collect();
        kernel(query, &slices, &mut out);
        for (&r, &score) in group.iter().zip(&out) {
            let row = r as usize;
            if !score.is_finite() {
                return Err(crate::search::non_finite(matrix, row, score));
            }
            hits.push(Hit { row, score });
        }
    }
    Ok(hits)
}
