//! The HNSW graph over the unit vectors, searched by inner product.
//!
//! The graph is built with hnsw_rs, under the distance `|a - b|^2 / 2`, which for unit vectors is
//! `1 - a.b`, the inner-product order, computed without cancellation: a vector's distance to itself is
//! exactly 0, and near-duplicate passages stay distinguishable. (hnsw_rs's own `DistDot` computes
//! `1 - a.b`, asserts it is >= 0 without tolerance and panics when a stored vector is searched for
//! itself and rounding makes `a.a` exceed 1.)
//!
//! Nodes that the build left with fewer than two incoming layer-0 links are then linked from their
//! nearest neighbours (`reach_the_unreached`), so that a walk can reach every passage.
//!
//! The graph is written in this crate's own flat layout, `graph.hnsw` (below), and searched by
//! this module: opening it is a memory map; a search walks fixed-stride link arrays with a per-thread
//! visited table. The walk scores candidates against 8-bit codes of the vectors (one byte per
//! dimension, a quarter of the f32 matrix's bytes, so four times fewer cache lines per step), and the
//! `ef` candidates it ends with are re-scored with the exact inner products from the matrix: returned
//! scores, and their order and ties, are those of exact search.
//!
//! `graph.hnsw`, little-endian:
//! - a 64-byte header: magic `SIMLMHNS`, format version (u32), layer-0 capacity `m0` (u32), upper
//!   layer capacity `m` (u32), top level (u32), node count `n` (u64), entry node (u64), words in the
//!   upper-layer table (u64), vector dimension `dim` (u64), zero padding;
//! - the level of every node (`n` bytes, zero-padded to a multiple of 4);
//! - layer 0: `n` lists of `1 + m0` u32 (count, then neighbour rows);
//! - for every node its first word in the upper-layer table (u32; `u32::MAX` when its level is 0);
//! - the upper-layer table: for each node of level `L >= 1`, `L` lists of `1 + m` u32 (layers 1..=L);
//! - the code book: `dim` f32 minima, then `dim` f32 steps; a vector's code in dimension `i` is
//!   `round((x_i - min_i) / step_i)`, a byte;
//! - the codes: `n` rows of `dim` bytes.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io::Write;
use std::path::Path;

use anndists::dist::distances::Distance;
use hnsw_rs::hnsw::Hnsw;
use memmap2::Mmap;

use super::{sort_hits, Hit};
use crate::error::{Error, IoContext, Result};
use crate::store::npy::NpyMatrix;

/// The graph's file name inside an index folder.
pub const GRAPH_FILE: &str = "graph.hnsw";

const MAGIC: &[u8; 8] = b"SIMLMHNS";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 64;
const NONE: u32 = u32::MAX;

/// `|a - b|^2 / 2`: `1 - a.b` for unit vectors (the build distance).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitDistance;

impl Distance<f32> for UnitDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        0.5 * super::simd::l2_sq(a, b)
    }
}

/// Build parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HnswParams {
    /// Neighbours per node on the upper layers; layer 0 keeps up to twice as many (hnsw_rs
    /// `max_nb_connection`, hnswlib's `M`).
    pub m: usize,
    pub ef_construction: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 32,
            ef_construction: 200,
        }
    }
}

/// The default search-time `ef`.
pub const DEFAULT_EF: usize = 128;

const MAX_LAYER: usize = 16;

/// A built graph in memory, in the file's layout.
pub struct GraphParts {
    m0: usize,
    m: usize,
    top: usize,
    entry: usize,
    dim: usize,
    levels: Vec<u8>,
    layer0: Vec<u32>,
    upper_at: Vec<u32>,
    upper: Vec<u32>,
    mins: Vec<f32>,
    steps: Vec<f32>,
    codes: Vec<u8>,
}

/// Builds the graph over every row with hnsw_rs, inserting in parallel (rayon), and the rows' codes;
/// `progress` is called with the number of rows inserted so far.
pub fn build(
    matrix: &NpyMatrix,
    params: HnswParams,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<GraphParts> {
    let n = matrix.rows();
    let dim = matrix.cols();
    if n >= NONE as usize {
        return Err(Error::Msg(format!(
            "{n} vectors: a graph holds at most {} (build shards)",
            NONE - 1
        )));
    }
    let graph = Hnsw::new(
        params.m,
        n.max(1),
        MAX_LAYER,
        params.ef_construction,
        UnitDistance,
    );
    const STEP: usize = 16_384;
    let mut done = 0;
    // The code book's per-dimension range, gathered from the rows as they are inserted.
    let mut mins = vec![f32::INFINITY; dim];
    let mut maxs = vec![f32::NEG_INFINITY; dim];
    for a in (0..n).step_by(STEP) {
        let b = (a + STEP).min(n);
        let rows = matrix.rows_f32(a, b);
        let items: Vec<(&[f32], usize)> = (a..b)
            .map(|r| (&rows[(r - a) * dim..(r - a + 1) * dim], r))
            .collect();
        graph.parallel_insert_slice(&items);
        for row in rows.chunks_exact(dim) {
            for (i, &x) in row.iter().enumerate() {
                mins[i] = mins[i].min(x);
                maxs[i] = maxs[i].max(x);
            }
        }
        done += b - a;
        progress(done);
    }
    let mut parts = export(&graph, matrix, 2 * params.m, params.ef_construction);
    drop(graph);
    // The codes: 255 steps over each dimension's range.
    if n == 0 {
        mins.fill(0.0);
        maxs.fill(0.0);
    }
    let steps: Vec<f32> = mins
        .iter()
        .zip(&maxs)
        .map(|(lo, hi)| (hi - lo) / 255.0)
        .collect();
    let mut codes = Vec::with_capacity(n * dim);
    for a in (0..n).step_by(STEP) {
        let rows = matrix.rows_f32(a, (a + STEP).min(n));
        for row in rows.chunks_exact(dim) {
            codes.extend(row.iter().enumerate().map(|(i, &x)| {
                if steps[i] > 0.0 {
                    ((x - mins[i]) / steps[i]).round().clamp(0.0, 255.0) as u8
                } else {
                    0
                }
            }));
        }
    }
    parts.mins = mins;
    parts.steps = steps;
    parts.codes = codes;
    Ok(parts)
}

/// hnsw_rs's links in the flat layout (node ids are matrix rows: they were inserted so).
fn export(
    graph: &Hnsw<'_, f32, UnitDistance>,
    matrix: &NpyMatrix,
    cap0: usize,
    ef: usize,
) -> GraphParts {
    let (n, dim) = (matrix.rows(), matrix.cols());
    let mut lists: Vec<Vec<Vec<u32>>> = vec![Vec::new(); n];
    let mut levels = vec![0u8; n];
    for p in graph.get_point_indexation() {
        let row = p.get_origin_id();
        let level = p.get_point_id().0 as usize;
        levels[row] = level as u8;
        lists[row] = p
            .get_neighborhood_id()
            .into_iter()
            .take(level + 1)
            .map(|l| l.iter().map(|nb| nb.d_id as u32).collect())
            .collect();
    }
    reach_the_unreached(&mut lists, cap0, |u| {
        let v = matrix.rows_f32(u, u + 1);
        graph
            .search(&v, 8, ef)
            .into_iter()
            .map(|nb| nb.d_id as u32)
            .filter(|&r| r as usize != u)
            .collect()
    });
    let top = levels.iter().copied().max().unwrap_or(0) as usize;
    let entry = levels.iter().position(|&l| l as usize == top).unwrap_or(0);
    let m0 = lists
        .iter()
        .map(|l| l.first().map_or(0, Vec::len))
        .max()
        .unwrap_or(0);
    let m = lists
        .iter()
        .flat_map(|l| l.iter().skip(1).map(Vec::len))
        .max()
        .unwrap_or(0);
    let mut layer0 = vec![0u32; n * (m0 + 1)];
    let mut upper_at = vec![NONE; n];
    let mut upper = Vec::new();
    for (row, l) in lists.iter().enumerate() {
        let slot = &mut layer0[row * (m0 + 1)..(row + 1) * (m0 + 1)];
        if let Some(l0) = l.first() {
            slot[0] = l0.len() as u32;
            slot[1..=l0.len()].copy_from_slice(l0);
        }
        let lv = levels[row] as usize;
        if lv > 0 {
            upper_at[row] = upper.len() as u32;
            for layer in 1..=lv {
                let nb = l.get(layer).map_or(&[][..], Vec::as_slice);
                upper.push(nb.len() as u32);
                upper.extend_from_slice(nb);
                upper.extend(std::iter::repeat_n(0, m - nb.len()));
            }
        }
    }
    GraphParts {
        m0,
        m,
        top,
        entry,
        dim,
        levels,
        layer0,
        upper_at,
        upper,
        mins: Vec::new(),
        steps: Vec::new(),
        codes: Vec::new(),
    }
}

/// Links to nodes that few or no layer-0 lists point to. Insertion can leave a node whose only
/// links lead to a hub whose list is full, and that no list points to: no walk reaches it, not even
/// one for its own vector (on the MS MARCO pool, 24 such nodes, and 36 passages not found first for
/// their own vector). Each node with fewer than `MIN_IN` incoming links is looked up in the built
/// graph (`nearest(u)`: rows near u's vector, best first); it is added to the lists of the nearest that
/// have room (hnsw_rs fills layer-0 lists to 16-17 of 64 on average), and they to its own.
fn reach_the_unreached(
    lists: &mut [Vec<Vec<u32>>],
    cap0: usize,
    nearest: impl Fn(usize) -> Vec<u32> + Sync,
) {
    use rayon::prelude::*;
    const MIN_IN: usize = 2;
    let mut incoming = vec![0usize; lists.len()];
    for l in lists.iter() {
        for &v in l.first().map_or(&[][..], Vec::as_slice) {
            incoming[v as usize] += 1;
        }
    }
    let weak: Vec<usize> = (0..lists.len()).filter(|&u| incoming[u] < MIN_IN).collect();
    let found: Vec<Vec<u32>> = weak.par_iter().map(|&u| nearest(u)).collect();
    for (&u, near) in weak.iter().zip(found) {
        for v in near {
            if incoming[u] >= MIN_IN {
                break;
            }
            let v = v as usize;
            if v >= lists.len() || lists[v].is_empty() || lists[u].is_empty() {
                continue;
            }
            if lists[v][0].len() < cap0 && !lists[v][0].contains(&(u as u32)) {
                lists[v][0].push(u as u32);
                incoming[u] += 1;
                if lists[u][0].len() < cap0 && !lists[u][0].contains(&(v as u32)) {
                    lists[u][0].push(v as u32);
                    incoming[v] += 1;
                }
            }
        }
    }
}

impl GraphParts {
    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// Writes the graph file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        if self.upper.len() >= NONE as usize {
            return Err(Error::Msg(format!(
                "{}: the upper layers hold {} words, more than the format's {}",
                path.display(),
                self.upper.len(),
                NONE - 1
            )));
        }
        crate::store::atomic_write(path, |w| {
            let mut h = Vec::with_capacity(HEADER_LEN);
            h.extend_from_slice(MAGIC);
            h.extend_from_slice(&VERSION.to_le_bytes());
            h.extend_from_slice(&(self.m0 as u32).to_le_bytes());
            h.extend_from_slice(&(self.m as u32).to_le_bytes());
            h.extend_from_slice(&(self.top as u32).to_le_bytes());
            h.extend_from_slice(&(self.len() as u64).to_le_bytes());
            h.extend_from_slice(&(self.entry as u64).to_le_bytes());
            h.extend_from_slice(&(self.upper.len() as u64).to_le_bytes());
            h.extend_from_slice(&(self.dim as u64).to_le_bytes());
            h.resize(HEADER_LEN, 0);
            w.write_all(&h)?;
            w.write_all(&self.levels)?;
            w.write_all(&vec![0u8; pad4(self.len()) - self.len()])?;
            for words in [&self.layer0, &self.upper_at, &self.upper] {
                let mut buf = Vec::with_capacity(4 * words.len());
                words
                    .iter()
                    .for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
                w.write_all(&buf)?;
            }
            for x in self.mins.iter().chain(&self.steps) {
                w.write_all(&x.to_le_bytes())?;
            }
            w.write_all(&self.codes)
        })
    }
}

fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// A graph file opened for search (memory-mapped).
pub struct Graph {
    map: Mmap,
    n: usize,
    m0: usize,
    m: usize,
    top: usize,
    entry: usize,
    dim: usize,
    layer0_at: usize,
    upper_at_at: usize,
    upper_at: usize,
    upper_len: usize,
    book_at: usize,
    codes_at: usize,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Per-thread search state, reused across queries.
#[derive(Default)]
struct Scratch {
    /// `visited[row] == epoch` marks a row as seen by the current query.
    visited: Vec<u16>,
    epoch: u16,
    candidates: BinaryHeap<Best>,
    found: BinaryHeap<Worst>,
    batch: Vec<u32>,
    weights: Vec<f32>,
}

impl Scratch {
    fn start(&mut self, n: usize) {
        if self.visited.len() != n {
            self.visited = vec![0; n];
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

/// A scored row ordered best first (the result order; a u32 row keeps the heaps compact).
#[derive(Clone, Copy)]
struct Best(f32, u32);

impl PartialEq for Best {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Best {}
impl PartialOrd for Best {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Best {
    fn cmp(&self, o: &Self) -> Ordering {
        super::rank(self.0, self.1 as usize, o.0, o.1 as usize)
    }
}

/// A scored row ordered worst first (lower score, then higher row).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Worst(std::cmp::Reverse<Best>);

impl Worst {
    fn score(&self) -> f32 {
        (self.0).0 .0
    }
}

impl Graph {
    /// Opens the graph of an index folder.
    pub fn open(dir: &Path) -> Result<Graph> {
        let path = dir.join(GRAPH_FILE);
        if !path.is_file() {
            return Err(Error::ModelNotFound(format!(
                "{}: the HNSW graph is missing; build it with `simlm-index hnsw {}` or search with --exact",
                path.display(),
                dir.display()
            )));
        }
        let f = std::fs::File::open(&path).at(&path)?;
        // Safety: the file is opened read-only; the index folder is not modified while it is searched.
        let map = unsafe { Mmap::map(&f) }.at(&path)?;
        let bad = |msg: String| {
            Error::invalid(
                &path,
                None,
                format!(
                    "{msg}; rebuild the graph with `simlm-index hnsw {}`",
                    dir.display()
                ),
            )
        };
        if map.len() < HEADER_LEN || &map[..8] != MAGIC {
            return Err(bad("not a graph file of this engine".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(map[o..o + 4].try_into().unwrap()) as usize;
        let u64_at = |o: usize| u64::from_le_bytes(map[o..o + 8].try_into().unwrap());
        let version = u32_at(8);
        if version != VERSION as usize {
            return Err(bad(format!(
                "graph format version {version}, this engine reads version {VERSION}"
            )));
        }
        let (m0, m, top) = (u32_at(12), u32_at(16), u32_at(20));
        let (n, entry, upper_len, dim) = (u64_at(24), u64_at(32), u64_at(40), u64_at(48));
        // Sizes in u128, so that no header value can overflow the arithmetic.
        let (n128, m0_128, ul, d128) = (n as u128, m0 as u128, upper_len as u128, dim as u128);
        let need = HEADER_LEN as u128
            + n128.div_ceil(4) * 4
            + 4 * n128 * (m0_128 + 1)
            + 4 * n128
            + 4 * ul
            + 8 * d128
            + n128 * d128;
        if map.len() as u128 != need
            || (n > 0 && entry >= n)
            || top > MAX_LAYER
            || !cfg!(target_endian = "little")
        {
            return Err(bad(format!(
                "the file holds {} bytes, its header describes {need}: it is truncated or damaged",
                map.len()
            )));
        }
        let (n, entry, upper_len, dim) =
            (n as usize, entry as usize, upper_len as usize, dim as usize);
        let layer0_at = HEADER_LEN + pad4(n);
        let upper_at_at = layer0_at + 4 * n * (m0 + 1);
        let upper_at = upper_at_at + 4 * n;
        let book_at = upper_at + 4 * upper_len;
        let codes_at = book_at + 8 * dim;
        Ok(Graph {
            map,
            n,
            m0,
            m,
            top,
            entry,
            dim,
            layer0_at,
            upper_at_at,
            upper_at,
            upper_len,
            book_at,
            codes_at,
        })
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    fn words(&self, at: usize, len: usize) -> &[u32] {
        let b = &self.map[at..at + 4 * len];
        // Safety: the map is page-aligned and every section starts at a multiple of 4; any bit pattern
        // is a valid u32; the file is little-endian, checked at open.
        unsafe { std::slice::from_raw_parts(b.as_ptr() as *const u32, len) }
    }

    fn floats(&self, at: usize, len: usize) -> &[f32] {
        let b = &self.map[at..at + 4 * len];
        // Safety: as for `words`; any bit pattern is a valid f32.
        unsafe { std::slice::from_raw_parts(b.as_ptr() as *const f32, len) }
    }

    fn level(&self, row: usize) -> usize {
        self.map[HEADER_LEN + row] as usize
    }

    /// The neighbours of `row` on `layer` (an empty list for a damaged entry).
    fn neighbours(&self, row: usize, layer: usize) -> &[u32] {
        let list = if layer == 0 {
            self.words(self.layer0_at + 4 * row * (self.m0 + 1), self.m0 + 1)
        } else {
            let at = self.words(self.upper_at_at + 4 * row, 1)[0] as usize;
            let start = at.saturating_add((layer - 1) * (self.m + 1));
            if at == NONE as usize
                || layer > self.level(row)
                || start.saturating_add(self.m + 1) > self.upper_len
            {
                return &[];
            }
            self.words(self.upper_at + 4 * start, self.m + 1)
        };
        let count = (list[0] as usize).min(list.len() - 1);
        &list[1..=count]
    }

    /// The `k` rows with the highest inner product with `query` found through the graph, keeping `ef`
    /// candidates on layer 0; scores are the exact inner products with the rows of `matrix`.
    pub fn search(&self, matrix: &NpyMatrix, query: &[f32], k: usize, ef: usize) -> Vec<Hit> {
        let dim = self.dim;
        if self.n == 0 || k == 0 || matrix.rows() != self.n || query.len() != dim {
            return Vec::new();
        }
        let codes = &self.map[self.codes_at..self.codes_at + self.n * dim];
        let mins = self.floats(self.book_at, dim);
        let steps = self.floats(self.book_at + 4 * dim, dim);
        // q . x ~ q . min + sum_i (q_i step_i) code_i
        let bias: f32 = query.iter().zip(mins).map(|(q, m)| q * m).sum();
        let dot_u8 = super::simd::dot_u8_kernel();
        let found = SCRATCH.with(|cell| {
            let mut guard = cell.borrow_mut();
            let sc = &mut *guard;
            let mut weights = std::mem::take(&mut sc.weights);
            weights.clear();
            weights.extend(query.iter().zip(steps).map(|(q, s)| q * s));
            let found = self.walk(sc, ef.max(k), codes.as_ptr(), dim, |r| {
                bias + dot_u8(&weights, &codes[r * dim..(r + 1) * dim])
            });
            sc.weights = weights;
            found
        });
        let mut hits = self.rescore(matrix, query, &found);
        sort_hits(&mut hits);
        hits.truncate(k);
        hits
    }

    /// Exact inner products of `query` with the `rows` of the matrix.
    fn rescore(&self, matrix: &NpyMatrix, query: &[f32], rows: &[u32]) -> Vec<Hit> {
        let dot = super::simd::dot_kernel();
        rows.iter()
            .map(|&r| {
                let r = r as usize;
                // A borrowed slice of the map for f32 files; f16 rows are converted one by one.
                let v = matrix.rows_f32(r, r + 1);
                Hit {
                    row: r,
                    score: dot(query, &v),
                }
            })
            .collect()
    }

    /// The graph walk: greedy descent through the upper layers, then a best-first search of layer 0
    /// keeping the `ef` best rows by `score`. `base` and `stride` (bytes) locate the scored rows in
    /// memory for prefetching.
    fn walk(
        &self,
        sc: &mut Scratch,
        ef: usize,
        base: *const u8,
        stride: usize,
        score: impl Fn(usize) -> f32,
    ) -> Vec<u32> {
        let mut cur = self.entry;
        let mut cur_score = score(cur);
        for layer in (1..=self.top).rev() {
            loop {
                let mut moved = false;
                for &nb in self.neighbours(cur, layer) {
                    let nb = nb as usize;
                    if nb >= self.n {
                        continue;
                    }
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
        sc.candidates.push(Best(cur_score, cur as u32));
        sc.found
            .push(Worst(std::cmp::Reverse(Best(cur_score, cur as u32))));
        let mut floor = cur_score;
        while let Some(Best(s, row)) = sc.candidates.pop() {
            if s < floor && sc.found.len() >= ef {
                break;
            }
            // The next candidate's links load while this one's neighbours are scored.
            if let Some(next) = sc.candidates.peek() {
                let at = self.layer0_at + 4 * next.1 as usize * (self.m0 + 1);
                prefetch(self.map.as_ptr().wrapping_add(at), 4 * (self.m0 + 1));
            }
            // Unseen neighbours first (their rows prefetched), then their scores.
            sc.batch.clear();
            for &nb in self.neighbours(row as usize, 0) {
                let i = nb as usize;
                if i < self.n && sc.visited[i] != epoch {
                    sc.visited[i] = epoch;
                    sc.batch.push(nb);
                    prefetch(base.wrapping_add(i * stride), stride);
                }
            }
            for &nb in &sc.batch {
                let s = score(nb as usize);
                if sc.found.len() < ef || s > floor {
                    sc.candidates.push(Best(s, nb));
                    sc.found.push(Worst(std::cmp::Reverse(Best(s, nb))));
                    if sc.found.len() > ef {
                        sc.found.pop();
                    }
                    if let Some(w) = sc.found.peek() {
                        floor = w.score();
                    }
                }
            }
        }
        sc.found.drain().map(|w| (w.0).0 .1).collect()
    }
}

/// Asks for the `len` bytes at `p` ahead of their use.
#[inline(always)]
fn prefetch(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut o = 0;
        while o < len {
            // Safety: prefetching is a hint and never faults; the address is only computed.
            unsafe { _mm_prefetch(p.wrapping_add(o) as *const i8, _MM_HINT_T0) };
            o += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// Builds the graph of the matrix in `dir` and writes it there.
pub fn build_and_save(
    dir: &Path,
    matrix: &NpyMatrix,
    params: HnswParams,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<()> {
    build(matrix, params, progress)?.save(&dir.join(GRAPH_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::npy::{self, Dtype};

    /// `n` pseudo-random unit vectors of `dim` (a fixed LCG: the same every run).
    fn unit_vectors(n: usize, dim: usize) -> Vec<f32> {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut v: Vec<f32> = (0..n * dim)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        for row in v.chunks_mut(dim) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }

    fn brute_force(data: &[f32], dim: usize, q: &[f32], k: usize) -> Vec<usize> {
        let mut all: Vec<Hit> = data
            .chunks(dim)
            .enumerate()
            .map(|(row, v)| Hit {
                row,
                score: v.iter().zip(q).map(|(a, b)| a * b).sum(),
            })
            .collect();
        sort_hits(&mut all);
        all.iter().take(k).map(|h| h.row).collect()
    }

    fn setup(n: usize, dim: usize, dtype: Dtype) -> (tempfile::TempDir, Vec<f32>) {
        let dir = tempfile::tempdir().unwrap();
        let data = unit_vectors(n, dim);
        let p = dir.path().join("vectors.npy");
        crate::store::atomic_write(&p, |w| {
            w.write_all(&npy::header(dtype, n, Some(dim)))?;
            npy::write_rows(w, dtype, &data)
        })
        .unwrap();
        let m = NpyMatrix::open(&p).unwrap();
        let params = HnswParams {
            m: 8,
            ef_construction: 64,
        };
        build_and_save(dir.path(), &m, params, &|_| {}).unwrap();
        (dir, data)
    }

    #[test]
    fn finds_every_row_first_and_agrees_with_brute_force() {
        let (n, dim) = (2000, 24);
        let (dir, data) = setup(n, dim, Dtype::F32);
        let m = NpyMatrix::open(&dir.path().join("vectors.npy")).unwrap();
        let g = Graph::open(dir.path()).unwrap();
        assert_eq!((g.len(), g.dim()), (n, dim));
        let mut overlap = 0;
        for r in 0..n {
            let q = &data[r * dim..(r + 1) * dim];
            let hits = g.search(&m, q, 10, DEFAULT_EF);
            assert_eq!(hits[0].row, r, "row {r}: {:?}", &hits[..3]);
            assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
            let truth = brute_force(&data, dim, q, 10);
            overlap += hits.iter().filter(|h| truth.contains(&h.row)).count();
            // Scores are the rows' exact inner products.
            for h in &hits {
                let want: f32 = data[h.row * dim..(h.row + 1) * dim]
                    .iter()
                    .zip(q)
                    .map(|(a, b)| a * b)
                    .sum();
                assert!((h.score - want).abs() < 1e-5);
            }
        }
        let recall = overlap as f64 / (10 * n) as f64;
        assert!(recall >= 0.99, "recall@10 {recall}");
        // New queries: recall against brute force; k above ef; k = 0.
        let queries = unit_vectors(n + 200, dim);
        let mut overlap = 0;
        for q in queries[n * dim..].chunks(dim) {
            let hits = g.search(&m, q, 10, DEFAULT_EF);
            let truth = brute_force(&data, dim, q, 10);
            overlap += hits.iter().filter(|h| truth.contains(&h.row)).count();
        }
        let recall = overlap as f64 / 2000.0;
        assert!(recall >= 0.95, "recall@10 of new queries {recall}");
        assert_eq!(g.search(&m, &queries[..dim], 50, 10).len(), 50);
        assert!(g.search(&m, &queries[..dim], 0, 10).is_empty());
    }

    #[test]
    fn searches_half_precision_matrices() {
        let (n, dim) = (500, 16);
        let (dir, data) = setup(n, dim, Dtype::F16);
        let m = NpyMatrix::open(&dir.path().join("vectors.npy")).unwrap();
        let g = Graph::open(dir.path()).unwrap();
        let mut first = 0;
        for r in 0..n {
            let hits = g.search(&m, &data[r * dim..(r + 1) * dim], 5, DEFAULT_EF);
            first += usize::from(hits[0].row == r);
        }
        assert!(first >= n * 99 / 100, "{first} of {n} rows first");
    }

    #[test]
    fn unreached_nodes_get_links_where_there_is_room() {
        // Node 3 links to 0 only and nobody links to it; node 0's list is full (capacity 3).
        let mut lists: Vec<Vec<Vec<u32>>> = vec![
            vec![vec![1, 2, 4]],
            vec![vec![0, 2]],
            vec![vec![0, 1, 4]],
            vec![vec![0]],
            vec![vec![0, 1]],
        ];
        reach_the_unreached(
            &mut lists,
            3,
            |u| if u == 3 { vec![0, 2, 1] } else { vec![] },
        );
        assert_eq!(lists[0][0], vec![1, 2, 4], "a full list is left alone");
        assert_eq!(lists[2][0], vec![0, 1, 4], "a full list is left alone");
        assert_eq!(lists[1][0], vec![0, 2, 3]);
        assert_eq!(lists[3][0], vec![0, 1]);
        // Every node but 3 had 2 incoming links; 3 now has one (the only list with room).
        let incoming_3 = lists.iter().filter(|l| l[0].contains(&3)).count();
        assert_eq!(incoming_3, 1);
    }

    #[test]
    fn tiny_graphs_work() {
        for n in [1, 2, 3] {
            let (dir, data) = setup(n, 8, Dtype::F32);
            let m = NpyMatrix::open(&dir.path().join("vectors.npy")).unwrap();
            let g = Graph::open(dir.path()).unwrap();
            let hits = g.search(&m, &data[..8], 10, 4);
            assert_eq!(hits.len(), n);
            assert_eq!(hits[0].row, 0);
        }
    }

    #[test]
    fn damaged_files_are_errors() {
        let (dir, _) = setup(300, 8, Dtype::F32);
        let p = dir.path().join(GRAPH_FILE);
        let good = std::fs::read(&p).unwrap();
        let mut huge = good.clone();
        huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut version = good.clone();
        version[8] = 9;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 4].to_vec(), "truncated or damaged"),
            (huge, "truncated or damaged"),
            (vec![b'x'; 100], "not a graph file"),
            (version, "format version 9"),
            (Vec::new(), "not a graph file"),
        ];
        for (bytes, want) in cases {
            std::fs::write(&p, &bytes).unwrap();
            let err = Graph::open(dir.path()).err().expect("an error").to_string();
            assert!(err.contains(want) && err.contains("graph.hnsw"), "{err}");
            assert!(err.contains("simlm-index hnsw"), "{err}");
        }
        // Damaged links (rows out of range, counts past the list) are skipped, never followed.
        let mut bad = good.clone();
        let at = HEADER_LEN + pad4(300);
        for w in bad[at..at + 4 * 300 * 5].chunks_exact_mut(4) {
            w.copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        }
        std::fs::write(&p, &bad).unwrap();
        let m = NpyMatrix::open(&dir.path().join("vectors.npy")).unwrap();
        let g = Graph::open(dir.path()).unwrap();
        let q = unit_vectors(1, 8);
        assert!(g.search(&m, &q, 10, 20).len() <= 10);
        std::fs::remove_file(&p).unwrap();
        let err = Graph::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
