//! The graph's construction over the 8-bit codes of unit vectors, by inner product (higher is
//! closer), straight into the link arrays of `graph.hnsw` (node ids are rows).
//!
//! The algorithm is hnswlib's: a node's level is drawn with multiplier `1 / ln(m)`; it descends
//! greedily to its level, then on each of its layers keeps the `ef_construction` best nodes of a
//! best-first search and links to `m` of them chosen by hnswlib's heuristic
//! (`getNeighborsByHeuristic2`: a candidate is dropped when it is closer to an already chosen
//! neighbour than to the new node); each chosen neighbour links back, re-choosing its list with the
//! same heuristic only when the list is full. How this builder differs, and why:
//!
//! - Links live in fixed-stride arrays addressed by node id, the very arrays the file stores:
//!   layer 0 has `n` lists of `1 + m0` words (count, then ids); the upper layers' table has its
//!   per-node offsets fixed before the build, since levels are drawn from a hash of the node id.
//!   Nothing is allocated per node or per edge, and the arrays are returned without a copy.
//! - A node's lists are written under its spin-lock byte. Walks read them without locking: every
//!   word is an atomic, so a list being rewritten reads as a mix of old and new ids, all nodes.
//! - Scores are inner products of decoded codes. The node being inserted (or whose list is
//!   re-chosen) is decoded once into f32 weights `x_i * step_i` and a bias `x . min`; any other
//!   node then scores `bias + sum_i weights_i * code_i`, which is `decode(a) . decode(b)`, reading
//!   one byte per dimension.
//! - The entry point is the first node of the top level and is inserted first, so it never changes
//!   and no insertion takes a global lock.
//! - A node's neighbours are chosen on all its layers before any link is written, and the links
//!   are written from layer 0 up: a walk that reaches the node on some layer finds its lists below
//!   filled.
//! - Nodes that no layer-0 list points to when insertion ends are then linked from a near node
//!   (`reach_every_node`), so that every node can be found.
//!
//! With one thread (a one-thread rayon pool) the build is deterministic: nodes are inserted in row
//! order after the entry, and every tie is broken by node id.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use rayon::prelude::*;

use super::{CodeBook, HnswParams, Near, MAX_LAYER as MAX_LEVEL, NONE};
use crate::simd::{dot_u8_kernel, prefetch, DotU8Fn};

/// Seeds the level draw (any fixed value: the graph must not depend on the run).
const LEVEL_SEED: u64 = 0x5EED_1E7E_15AB_C0DE;

/// Nodes inserted one by one before the parallel phase, so that concurrent insertions start from a
/// graph with some structure rather than a handful of nodes all threads contend for.
const SEQUENTIAL_START: usize = 1_000;

/// `progress` is called every this many insertions.
const PROGRESS_STEP: usize = 16_384;

/// A built graph in the layout of `graph.hnsw` (see `format`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Links {
    /// Capacity of a layer-0 list.
    pub m0: usize,
    /// Capacity of an upper-layer list.
    pub m: usize,
    /// The highest level of any node.
    pub top: usize,
    /// The first node of level `top`, where walks start.
    pub entry: usize,
    /// Every node's level.
    pub levels: Vec<u8>,
    /// `n` lists of `1 + m0` words: count, then neighbour ids.
    pub layer0: Vec<u32>,
    /// Every node's first word in `upper`, `NONE` for nodes of level 0.
    pub upper_at: Vec<u32>,
    /// For each node of level `L >= 1`, `L` lists of `1 + m` words, for layers `1..=L`.
    pub upper: Vec<u32>,
}

/// What a build calls between two chunks of insertions (none in flight) with the number of nodes
/// inserted and the link arrays: a checkpoint's chance (see `checkpoint`). An error stops the build.
pub(super) type AfterChunk<'a> =
    &'a (dyn Fn(usize, &[AtomicU32], &[AtomicU32]) -> std::io::Result<()> + Sync);

/// Sizes of the link arrays of an `n`-node graph with lists of `m` (`m0 = 2m` on layer 0): layer-0
/// words, upper-layer words.
pub(super) fn array_words(n: usize, m: usize) -> (usize, usize) {
    let upper: usize = (0..n).map(|u| draw_level(u, m) as usize * (1 + m)).sum();
    (n * (1 + 2 * m), upper)
}

/// Checks the arrays of a checkpoint (see `checkpoint`) of an `n`-node graph with lists of `m`
/// against what a build has written once its first `inserted` nodes (in insertion order: the entry,
/// then the rows) are in: the arrays have the graph's sizes; every count fits its list; every link
/// is to another node already inserted, whose level has the layer; a node not yet inserted has no
/// links, and one inserted has some on each of its layers (the entry, on layer 0 once another node
/// is in). A damaged word is caught here instead of sending the build out of bounds, and a count of
/// nodes inserted that the arrays do not bear out is refused. Returns what is wrong.
pub(super) fn check_saved(
    n: usize,
    m: usize,
    saved: &super::checkpoint::Saved,
) -> Result<(), String> {
    let m0 = 2 * m;
    let (layer0_words, upper_words) = array_words(n, m);
    let (layer0, upper, k) = (&saved.layer0, &saved.upper, saved.inserted);
    if (layer0.len(), upper.len()) != (layer0_words, upper_words) {
        return Err(format!(
            "arrays of {} and {} words, the graph's are {layer0_words} and {upper_words}",
            layer0.len(),
            upper.len()
        ));
    }
    if k > n {
        return Err(format!("{k} nodes inserted of {n}"));
    }
    let levels: Vec<u8> = (0..n).map(|u| draw_level(u, m)).collect();
    let top = levels.iter().copied().max().unwrap_or(0);
    let entry = levels.iter().position(|&l| l == top).unwrap_or(0);
    // Position in the insertion order: the entry, then the other rows in order.
    let inserted = |u: usize| {
        let at = match u {
            u if u == entry => 0,
            u if u < entry => u + 1,
            u => u,
        };
        at < k
    };
    let mut upper_at = 0usize;
    for (u, &level) in levels.iter().enumerate() {
        let level = level as usize;
        let own = &layer0[u * (1 + m0)..(u + 1) * (1 + m0)];
        let lists = std::iter::once((0, own)).chain((1..=level).map(|layer| {
            let at = upper_at + (layer - 1) * (1 + m);
            (layer, &upper[at..at + 1 + m])
        }));
        for (layer, list) in lists {
            let count = list[0] as usize;
            let here = || format!("node {u}'s list on layer {layer}");
            if count > list.len() - 1 {
                return Err(format!(
                    "{} claims {count} links, more than the {} it holds",
                    here(),
                    list.len() - 1
                ));
            }
            if !inserted(u) && count > 0 {
                return Err(format!(
                    "{} holds links, but the node is not among the {k} inserted",
                    here()
                ));
            }
            if inserted(u) && count == 0 && (u != entry || (layer == 0 && k >= 2)) {
                return Err(format!(
                    "{} is empty, but the node is among the {k} inserted",
                    here()
                ));
            }
            for &v in &list[1..=count] {
                let v = v as usize;
                let wrong = if v >= n {
                    format!("past the {n} nodes")
                } else if v == u {
                    "itself".to_string()
                } else if !inserted(v) {
                    format!("not among the {k} inserted")
                } else if (levels[v] as usize) < layer {
                    format!("whose level {} has no layer {layer}", levels[v])
                } else {
                    continue;
                };
                return Err(format!("{} links to node {v}, {wrong}", here()));
            }
        }
        upper_at += level * (1 + m);
    }
    Ok(())
}

/// Builds the graph of the `n` rows of `codes` (`dim` bytes each) on the current rayon pool;
/// `progress` is called with the number of nodes inserted so far. A build that `resume`s starts from
/// a checkpoint's arrays, which `check_saved` has accepted; `after_chunk` is called every `chunk`
/// insertions.
///
/// Panics when the inputs disagree in size, when `m` is 0, or when the upper layers would need more
/// than `u32::MAX - 1` words.
#[allow(clippy::too_many_arguments)]
pub(super) fn build(
    codes: &[u8],
    n: usize,
    dim: usize,
    book: &CodeBook,
    params: HnswParams,
    progress: &(dyn Fn(usize) + Sync),
    mut resume: Option<super::checkpoint::Saved>,
    chunk: usize,
    after_chunk: AfterChunk,
) -> std::io::Result<Links> {
    assert_eq!(codes.len(), n * dim, "codes must hold n rows of dim bytes");
    assert!(
        book.mins.len() == dim && book.steps.len() == dim,
        "the code book must have dim entries"
    );
    assert!(params.m >= 1, "m must be at least 1");
    assert!(n < NONE as usize, "at most u32::MAX - 1 nodes");
    let (m, m0) = (params.m, 2 * params.m);
    let levels: Vec<u8> = (0..n).map(|u| draw_level(u, m)).collect();
    let top = levels.iter().copied().max().unwrap_or(0) as usize;
    let entry = levels.iter().position(|&l| l as usize == top).unwrap_or(0);
    let mut upper_at = vec![NONE; n];
    let mut words = 0usize;
    for (u, &l) in levels.iter().enumerate() {
        if l > 0 {
            upper_at[u] = words as u32;
            words += l as usize * (1 + m);
        }
    }
    assert!(
        words < NONE as usize,
        "the upper layers would need {words} words"
    );
    let graph = Graph {
        codes,
        dim,
        mins: &book.mins,
        steps: &book.steps,
        m,
        m0,
        ef: params.ef_construction.max(1),
        top,
        entry,
        dot: dot_u8_kernel(),
        layer0: match &mut resume {
            Some(r) => atomic_from_plain(std::mem::take(&mut r.layer0)),
            None => atomic_zeros(n * (1 + m0)),
        },
        upper: match &mut resume {
            Some(r) => atomic_from_plain(std::mem::take(&mut r.upper)),
            None => atomic_zeros(words),
        },
        locks: (0..n).map(|_| AtomicBool::new(false)).collect(),
        levels,
        upper_at,
    };
    assert_eq!(
        graph.layer0.len(),
        n * (1 + m0),
        "a resumed layer 0 of another size"
    );
    assert_eq!(
        graph.upper.len(),
        words,
        "resumed upper layers of another size"
    );
    let scratch = Scratches::new(n, dim, m0);
    let from = resume.as_ref().map_or(0, |r| r.inserted.min(n));
    drop(resume);
    let done = AtomicUsize::new(from);
    // The entry first, then the rows in order.
    let insert = |i: usize| {
        let u = match i {
            0 => entry,
            i if i <= entry => i - 1,
            i => i,
        };
        scratch.with(|sc| graph.insert(u, sc));
        let d = done.fetch_add(1, Relaxed) + 1;
        if d.is_multiple_of(PROGRESS_STEP) {
            progress(d);
        }
    };
    let start = n.min(SEQUENTIAL_START);
    (from.min(start)..start).for_each(insert);
    // The parallel phase in chunks: between two, no insertion is in flight and the arrays are a
    // consistent state (the first `a` nodes of the order inserted).
    let mut a = from.max(start);
    while a < n {
        let b = (a + chunk.max(1)).min(n);
        (a..b).into_par_iter().for_each(insert);
        a = b;
        if a < n {
            after_chunk(a, &graph.layer0, &graph.upper)?;
        }
    }
    if !n.is_multiple_of(PROGRESS_STEP) {
        progress(n);
    }
    graph.reach_every_node(&scratch);
    Ok(Links {
        m0,
        m,
        top,
        entry,
        levels: graph.levels,
        layer0: atomic_into_plain(graph.layer0),
        upper_at: graph.upper_at,
        upper: atomic_into_plain(graph.upper),
    })
}

/// A node's level: `floor(-ln(U) / ln(m))`, `U` uniform in (0, 1] from a hash of its id.
fn draw_level(u: usize, m: usize) -> u8 {
    let h = splitmix64(LEVEL_SEED.wrapping_add(u as u64));
    let unit = ((h >> 11) + 1) as f64 / (1u64 << 53) as f64;
    let level = -unit.ln() / (m.max(2) as f64).ln();
    level.min(MAX_LEVEL as f64) as u8
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `len` zeroed atomic words, allocated zeroed (untouched pages cost no memory until written), on
/// huge pages where the kernel gives them (see `memory`).
fn atomic_zeros(len: usize) -> Vec<AtomicU32> {
    let mut v = std::mem::ManuallyDrop::new(crate::memory::huge_zeroed::<u32>(len));
    // Safety: AtomicU32 has the size, alignment and bit validity of u32, so the allocation is a
    // valid Vec<AtomicU32> of the same length and capacity; the original Vec is not dropped.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut AtomicU32, v.len(), v.capacity()) }
}

/// `v` as atomic words, without a copy.
fn atomic_from_plain(v: Vec<u32>) -> Vec<AtomicU32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // Safety: as in `atomic_zeros`.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut AtomicU32, v.len(), v.capacity()) }
}

/// The words of `v`, without a copy.
fn atomic_into_plain(v: Vec<AtomicU32>) -> Vec<u32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // Safety: as in `atomic_zeros`, the other way round; the Vec is owned, so nothing else accesses
    // the words.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut u32, v.len(), v.capacity()) }
}

/// A thread's reusable state.
struct Scratch {
    /// `visited[u] == epoch` marks u as seen by the current walk.
    visited: Vec<u16>,
    epoch: u16,
    /// Nodes still to expand, best first.
    candidates: BinaryHeap<Near>,
    /// The `ef` best nodes found, worst first.
    found: BinaryHeap<Reverse<Near>>,
    /// The unseen neighbours of the node being expanded.
    batch: Vec<u32>,
    /// The found nodes (or a full list plus the new node), best first.
    sorted: Vec<Near>,
    /// The decoded weights of the node whose neighbours are searched or re-chosen.
    weights: Vec<f32>,
    /// The decoded weights and biases of the neighbours the heuristic has kept so far.
    kept: Vec<f32>,
    kept_bias: Vec<f32>,
    /// The chosen neighbours of the node being inserted, per layer.
    chosen: Vec<Vec<u32>>,
    /// A re-chosen full list.
    rechosen: Vec<u32>,
}

impl Scratch {
    fn new(n: usize, dim: usize, m0: usize) -> Scratch {
        Scratch {
            visited: crate::memory::huge_zeroed(n),
            epoch: 0,
            candidates: BinaryHeap::new(),
            found: BinaryHeap::new(),
            batch: Vec::with_capacity(m0),
            sorted: Vec::new(),
            weights: vec![0.0; dim],
            kept: vec![0.0; m0 * dim],
            kept_bias: vec![0.0; m0],
            chosen: vec![Vec::new(); MAX_LEVEL + 1],
            rechosen: Vec::with_capacity(m0),
        }
    }

    /// Starts a walk: nothing visited, no candidates.
    fn start(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.visited.fill(0);
            self.epoch = 1;
        }
        self.candidates.clear();
        self.found.clear();
    }
}

/// One scratch per worker of the current pool, found by the worker's index: the locks are never
/// contended, they only prove to the compiler that no two threads share one.
struct Scratches(Vec<Mutex<Scratch>>);

impl Scratches {
    fn new(n: usize, dim: usize, m0: usize) -> Scratches {
        Scratches(
            (0..rayon::current_num_threads())
                .map(|_| Mutex::new(Scratch::new(n, dim, m0)))
                .collect(),
        )
    }

    /// Runs `f` with the calling worker's scratch (the first one outside the pool).
    fn with<R>(&self, f: impl FnOnce(&mut Scratch) -> R) -> R {
        let i = rayon::current_thread_index().unwrap_or(0) % self.0.len();
        f(&mut self.0[i].lock().unwrap())
    }
}

/// The graph under construction.
struct Graph<'a> {
    codes: &'a [u8],
    dim: usize,
    mins: &'a [f32],
    steps: &'a [f32],
    m: usize,
    m0: usize,
    ef: usize,
    top: usize,
    entry: usize,
    dot: DotU8Fn,
    levels: Vec<u8>,
    layer0: Vec<AtomicU32>,
    upper_at: Vec<u32>,
    upper: Vec<AtomicU32>,
    /// Held while a node's lists are written.
    locks: Vec<AtomicBool>,
}

/// A held node lock, released on drop.
struct NodeGuard<'a>(&'a AtomicBool);

impl Drop for NodeGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Release);
    }
}

impl Graph<'_> {
    fn code(&self, u: usize) -> &[u8] {
        &self.codes[u * self.dim..(u + 1) * self.dim]
    }

    /// Decodes node `u` into `weights` (`x_i * step_i`) and returns its bias `x . min`.
    fn decode(&self, u: usize, weights: &mut [f32]) -> f32 {
        let mut bias = 0.0;
        for (((w, &c), &lo), &step) in weights
            .iter_mut()
            .zip(self.code(u))
            .zip(self.mins)
            .zip(self.steps)
        {
            let x = lo + step * c as f32;
            *w = x * step;
            bias += x * lo;
        }
        bias
    }

    /// The inner product of a decoded node (`weights`, `bias`) with node `u`.
    fn score(&self, weights: &[f32], bias: f32, u: usize) -> f32 {
        bias + (self.dot)(weights, self.code(u))
    }

    fn capacity(&self, layer: usize) -> usize {
        if layer == 0 {
            self.m0
        } else {
            self.m
        }
    }

    /// Node `u`'s list on `layer`: the count word, then `capacity(layer)` slots.
    fn list(&self, u: usize, layer: usize) -> &[AtomicU32] {
        if layer == 0 {
            &self.layer0[u * (1 + self.m0)..(u + 1) * (1 + self.m0)]
        } else {
            let at = self.upper_at[u] as usize + (layer - 1) * (1 + self.m);
            &self.upper[at..at + 1 + self.m]
        }
    }

    /// The ids in a list (the count is clamped, as a concurrent rewrite is read without a lock).
    fn ids(list: &[AtomicU32]) -> impl Iterator<Item = u32> + '_ {
        let count = (list[0].load(Relaxed) as usize).min(list.len() - 1);
        list[1..=count].iter().map(|w| w.load(Relaxed))
    }

    fn lock(&self, u: usize) -> NodeGuard<'_> {
        let flag = &self.locks[u];
        let mut spins = 0u32;
        while flag
            .compare_exchange_weak(false, true, Acquire, Relaxed)
            .is_err()
        {
            // Lists are held for a few microseconds; yield if a holder was descheduled.
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        NodeGuard(flag)
    }

    /// Inserts node `u` (whose id is not yet in any list) and links it both ways.
    fn insert(&self, u: usize, sc: &mut Scratch) {
        if u == self.entry {
            return;
        }
        let level = self.levels[u] as usize;
        let mut weights = std::mem::take(&mut sc.weights);
        let bias = self.decode(u, &mut weights);
        let mut cur = Near {
            score: self.score(&weights, bias, self.entry),
            id: self.entry as u32,
        };
        for layer in (level + 1..=self.top).rev() {
            cur = self.greedy(&weights, bias, cur, layer);
        }
        for layer in (0..=level).rev() {
            self.search_layer(sc, &weights, bias, cur, layer);
            cur = sc.sorted[0];
            self.choose(
                &sc.sorted,
                self.m,
                &mut sc.kept,
                &mut sc.kept_bias,
                &mut sc.chosen[layer],
            );
        }
        sc.weights = weights;
        for layer in 0..=level {
            // No other thread writes u's list on this layer yet: only links to u lead to it.
            let list = self.list(u, layer);
            let chosen = std::mem::take(&mut sc.chosen[layer]);
            for (slot, &v) in list[1..].iter().zip(&chosen) {
                slot.store(v, Relaxed);
            }
            list[0].store(chosen.len() as u32, Relaxed);
            for &v in &chosen {
                self.link_back(v as usize, u as u32, layer, sc);
            }
            sc.chosen[layer] = chosen;
        }
    }

    /// Greedy descent on `layer` from `cur` to a node none of whose neighbours scores higher.
    fn greedy(&self, weights: &[f32], bias: f32, mut cur: Near, layer: usize) -> Near {
        loop {
            let mut moved = false;
            for v in Self::ids(self.list(cur.id as usize, layer)) {
                let near = Near {
                    score: self.score(weights, bias, v as usize),
                    id: v,
                };
                if near > cur {
                    cur = near;
                    moved = true;
                }
            }
            if !moved {
                return cur;
            }
        }
    }

    /// Best-first search of `layer` from `start`, keeping the `ef` best nodes; leaves them in
    /// `sc.sorted`, best first.
    fn search_layer(
        &self,
        sc: &mut Scratch,
        weights: &[f32],
        bias: f32,
        start: Near,
        layer: usize,
    ) {
        sc.start();
        let epoch = sc.epoch;
        sc.visited[start.id as usize] = epoch;
        sc.candidates.push(start);
        sc.found.push(Reverse(start));
        let mut floor = start.score;
        let stride = 4 * (1 + self.capacity(layer));
        while let Some(c) = sc.candidates.pop() {
            if c.score < floor && sc.found.len() >= self.ef {
                break;
            }
            // The next candidate's list loads while this one's neighbours are scored.
            if let Some(next) = sc.candidates.peek() {
                prefetch(
                    self.list(next.id as usize, layer).as_ptr() as *const u8,
                    stride,
                );
            }
            // The unseen neighbours first, then their scores. Each code's first line is asked for
            // as it is found and the whole next code while one is scored: asking for every line of
            // every code at once stalls on the CPU's outstanding-miss limit (one 100k x 768 build:
            // 125 CPU seconds instead of 142).
            sc.batch.clear();
            for v in Self::ids(self.list(c.id as usize, layer)) {
                let seen = &mut sc.visited[v as usize];
                if *seen != epoch {
                    *seen = epoch;
                    sc.batch.push(v);
                    prefetch(self.code(v as usize).as_ptr(), 1);
                }
            }
            for (k, &v) in sc.batch.iter().enumerate() {
                if let Some(&next) = sc.batch.get(k + 1) {
                    prefetch(self.code(next as usize).as_ptr(), self.dim);
                }
                let near = Near {
                    score: self.score(weights, bias, v as usize),
                    id: v,
                };
                if sc.found.len() < self.ef || near.score > floor {
                    sc.candidates.push(near);
                    sc.found.push(Reverse(near));
                    if sc.found.len() > self.ef {
                        sc.found.pop();
                    }
                    floor = sc.found.peek().map_or(floor, |w| w.0.score);
                }
            }
        }
        sc.sorted.clear();
        sc.sorted.extend(sc.found.drain().map(|w| w.0));
        sc.sorted.sort_unstable_by(|a, b| b.cmp(a));
    }

    /// hnswlib's heuristic: up to `k` of the `candidates` (scored from the node being linked, best
    /// first), each kept unless an already kept one scores higher with it than the node does, which
    /// spreads the links over directions instead of spending them on one cluster. Fewer than `k`
    /// candidates are all kept.
    fn choose(
        &self,
        candidates: &[Near],
        k: usize,
        kept: &mut [f32],
        kept_bias: &mut [f32],
        out: &mut Vec<u32>,
    ) {
        out.clear();
        if candidates.len() < k {
            out.extend(candidates.iter().map(|c| c.id));
            return;
        }
        let dim = self.dim;
        for c in candidates {
            if out.len() == k {
                break;
            }
            let code = self.code(c.id as usize);
            let shadowed = (0..out.len())
                .any(|j| kept_bias[j] + (self.dot)(&kept[j * dim..(j + 1) * dim], code) > c.score);
            if !shadowed {
                let j = out.len();
                kept_bias[j] = self.decode(c.id as usize, &mut kept[j * dim..(j + 1) * dim]);
                out.push(c.id);
            }
        }
    }

    /// Adds `u` to `v`'s list on `layer`; a full list is re-chosen by the heuristic among its links
    /// and `u`.
    fn link_back(&self, v: usize, u: u32, layer: usize, sc: &mut Scratch) {
        let capacity = self.capacity(layer);
        let _guard = self.lock(v);
        let list = self.list(v, layer);
        let count = list[0].load(Relaxed) as usize;
        if count < capacity {
            list[1 + count].store(u, Relaxed);
            list[0].store(count as u32 + 1, Relaxed);
            return;
        }
        let bias = self.decode(v, &mut sc.weights);
        for w in Self::ids(list).chain([u]) {
            prefetch(self.code(w as usize).as_ptr(), self.dim);
        }
        sc.sorted.clear();
        sc.sorted.extend(Self::ids(list).chain([u]).map(|w| Near {
            score: self.score(&sc.weights, bias, w as usize),
            id: w,
        }));
        sc.sorted.sort_unstable_by(|a, b| b.cmp(a));
        self.choose(
            &sc.sorted,
            capacity,
            &mut sc.kept,
            &mut sc.kept_bias,
            &mut sc.rechosen,
        );
        for (slot, &w) in list[1..].iter().zip(&sc.rechosen) {
            slot.store(w, Relaxed);
        }
        list[0].store(sc.rechosen.len() as u32, Relaxed);
    }

    /// Gives every node without an incoming layer-0 link one (for n >= 2). The heuristic can leave
    /// a node that no list keeps (near-duplicates shadow each other), and no walk reaches it. Each
    /// such node `u` is added to the list of the nearest node `v` found for it that has room;
    /// failing room, it replaces `v`'s lowest-scoring link whose target keeps another incoming
    /// link, so no node loses its last one. Such a `v` exists among all nodes: were every other
    /// list full of links to nodes with a single incoming link, the `(n - 1) m0` links would point
    /// to as many distinct nodes among `n - 1`, impossible for `m0 >= 2`.
    fn reach_every_node(&self, scratch: &Scratches) {
        let n = self.levels.len();
        if n < 2 {
            return;
        }
        let mut incoming = vec![0u32; n];
        for u in 0..n {
            for v in Self::ids(self.list(u, 0)) {
                incoming[v as usize] += 1;
            }
        }
        let orphans: Vec<usize> = (0..n).filter(|&u| incoming[u] == 0).collect();
        if orphans.is_empty() {
            return;
        }
        // Their nearest nodes, best first, found through the graph as an insertion would.
        let nearest: Vec<Vec<u32>> = orphans
            .par_iter()
            .map(|&u| {
                scratch.with(|sc| {
                    let mut weights = std::mem::take(&mut sc.weights);
                    let bias = self.decode(u, &mut weights);
                    let mut cur = Near {
                        score: self.score(&weights, bias, self.entry),
                        id: self.entry as u32,
                    };
                    for layer in (1..=self.top).rev() {
                        cur = self.greedy(&weights, bias, cur, layer);
                    }
                    self.search_layer(sc, &weights, bias, cur, 0);
                    sc.weights = weights;
                    sc.sorted.iter().map(|c| c.id).collect()
                })
            })
            .collect();
        let mut weights = vec![0.0; self.dim];
        for (&u, near) in orphans.iter().zip(&nearest) {
            let linked = near
                .iter()
                .copied()
                .chain(0..n as u32)
                .filter(|&v| v as usize != u)
                .any(|v| self.attach(u as u32, v as usize, &mut incoming, &mut weights));
            assert!(linked, "some node can always take a link (m0 >= 2)");
        }
    }

    /// Links `v` to the orphan `u` on layer 0 if that orphans no other node (`reach_every_node`).
    fn attach(&self, u: u32, v: usize, incoming: &mut [u32], weights: &mut [f32]) -> bool {
        let list = self.list(v, 0);
        let count = list[0].load(Relaxed) as usize;
        if count < self.m0 {
            list[1 + count].store(u, Relaxed);
            list[0].store(count as u32 + 1, Relaxed);
            incoming[u as usize] += 1;
            return true;
        }
        let bias = self.decode(v, weights);
        let worst = (1..=count)
            .map(|slot| (slot, list[slot].load(Relaxed)))
            .filter(|&(_, w)| incoming[w as usize] >= 2)
            .min_by_key(|&(_, w)| Near {
                score: self.score(weights, bias, w as usize),
                id: w,
            });
        let Some((slot, w)) = worst else {
            return false;
        };
        list[slot].store(u, Relaxed);
        incoming[w as usize] -= 1;
        incoming[u as usize] += 1;
        true
    }
}
