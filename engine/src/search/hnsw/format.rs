//! `graph.hnsw`: writing a built graph, and opening one for search (memory-mapped, every size checked
//! against the file before any of it is read). Little-endian:
//! - a 64-byte header: magic `SIMLMHNS`, format version (u32), layer-0 capacity `m0` (u32), upper
//!   layer capacity `m` (u32), top level (u32), node count `n` (u64), entry node (u64), words in the
//!   upper-layer table (u64), vector dimension `dim` (u64), zero padding;
//! - the level of every node (`n` bytes, zero-padded to a multiple of 4);
//! - layer 0: `n` lists of `1 + m0` u32 (count, then neighbour rows);
//! - for every node its first word in the upper-layer table (u32; `u32::MAX` when its level is 0);
//! - the upper-layer table: for each node of level `L >= 1`, `L` lists of `1 + m` u32 (layers 1..=L);
//! - (version 2) every node's matrix row (`n` u32, a permutation of the rows: nodes are numbered in
//!   the order of `order`, and every id above is a node number);
//! - the code book: `dim` f32 minima, then `dim` f32 steps (see `codes`), all finite (a file with
//!   any other value is refused at open: one NaN there would make every walk score NaN);
//! - the codes: `n` rows of `dim` bytes, by node.
//!
//! Version 1 (written before the nodes were reordered) has no row section: node `i` is row `i`. It
//! is read as before.

use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use sha2::{Digest, Sha256};

use super::{GraphParts, MAX_LAYER, NONE};
use crate::error::{Error, IoContext, Result};
use crate::memory::HugeArray;

const MAGIC: &[u8; 8] = b"SIMLMHNS";
const VERSION: u32 = 2;
/// The version without the row section (nodes are rows), still read.
const VERSION_ROWS_ARE_NODES: u32 = 1;
pub(super) const HEADER_LEN: usize = 64;
/// Words converted to bytes at a time by [`write_le_words`].
const WRITE_WORDS: usize = 1 << 18;

/// Writes `words` as little-endian u32s through a bounded buffer: a whole-array byte copy would add
/// the array's size (layer 0: 2.3 GB at 8.8M nodes) to the builder's peak memory. Used by the graph
/// file and by its checkpoints.
pub(super) fn write_le_words(
    w: &mut impl Write,
    words: impl Iterator<Item = u32>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4 * WRITE_WORDS);
    for x in words {
        buf.extend_from_slice(&x.to_le_bytes());
        if buf.len() == buf.capacity() {
            w.write_all(&buf)?;
            buf.clear();
        }
    }
    w.write_all(&buf)
}

pub(super) fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// A writer that counts and hashes (SHA-256) what goes through it.
pub(super) struct Summed<W> {
    inner: W,
    sha: Sha256,
    len: u64,
}

impl<W: Write> Summed<W> {
    pub fn new(inner: W) -> Self {
        Summed {
            inner,
            sha: Sha256::new(),
            len: 0,
        }
    }

    /// The inner writer, the bytes written and their SHA-256 (hex).
    pub fn into_parts(self) -> (W, u64, String) {
        (self.inner, self.len, format!("{:x}", self.sha.finalize()))
    }
}

impl<W: Write> Write for Summed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The first value of a code book (`dim` minima, then `dim` steps) that is not finite, or a step
/// below zero: its place and value.
pub(super) fn bad_book_value<'a>(
    mins: impl IntoIterator<Item = &'a f32>,
    steps: impl IntoIterator<Item = &'a f32>,
) -> Option<String> {
    if let Some((i, x)) = mins.into_iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Some(format!("the minimum of dimension {i} is {x}"));
    }
    steps
        .into_iter()
        .enumerate()
        .find(|(_, x)| !x.is_finite() || **x < 0.0)
        .map(|(i, x)| format!("the step of dimension {i} is {x}"))
}

impl GraphParts {
    /// Writes the graph file atomically; returns its size and SHA-256 (hex), as written.
    pub fn save(&self, path: &Path) -> Result<(u64, String)> {
        if let Some(bad) = bad_book_value(&self.book.mins, &self.book.steps) {
            return Err(Error::invalid(
                path,
                None,
                format!("the graph's code book cannot be written: {bad}"),
            ));
        }
        if self.upper.len() >= NONE as usize {
            return Err(Error::invalid(
                path,
                None,
                format!(
                    "the upper layers hold {} words, more than the format's {}",
                    self.upper.len(),
                    NONE - 1
                ),
            ));
        }
        let inv = super::order::inverse(&self.order);
        let mut sum = None;
        crate::store::atomic_write(path, |w| {
            let mut w = Summed::new(w);
            let mut h = Vec::with_capacity(HEADER_LEN);
            h.extend_from_slice(MAGIC);
            h.extend_from_slice(&VERSION.to_le_bytes());
            h.extend_from_slice(&(self.m0 as u32).to_le_bytes());
            h.extend_from_slice(&(self.m as u32).to_le_bytes());
            h.extend_from_slice(&(self.top as u32).to_le_bytes());
            h.extend_from_slice(&(self.len() as u64).to_le_bytes());
            h.extend_from_slice(&(inv[self.entry] as u64).to_le_bytes());
            h.extend_from_slice(&(self.upper.len() as u64).to_le_bytes());
            h.extend_from_slice(&(self.dim as u64).to_le_bytes());
            h.resize(HEADER_LEN, 0);
            w.write_all(&h)?;
            // Every array by node (`order`), every link a node number.
            let order = &self.order;
            let levels: Vec<u8> = order.iter().map(|&r| self.levels[r as usize]).collect();
            w.write_all(&levels)?;
            w.write_all(&vec![0u8; pad4(self.len()) - self.len()])?;
            let l0 = 1 + self.m0;
            write_le_words(
                &mut w,
                order.iter().flat_map(|&r| {
                    relabel(&self.layer0[r as usize * l0..(r as usize + 1) * l0], &inv)
                }),
            )?;
            write_le_words(&mut w, order.iter().map(|&r| self.upper_at[r as usize]))?;
            // The upper-layer table stays where the build put each node's lists (by row); its
            // links are node numbers.
            write_le_words(
                &mut w,
                self.upper
                    .chunks_exact(1 + self.m)
                    .flat_map(|l| relabel(l, &inv)),
            )?;
            write_le_words(&mut w, order.iter().copied())?;
            for x in self.book.mins.iter().chain(&self.book.steps) {
                w.write_all(&x.to_le_bytes())?;
            }
            let dim = self.dim;
            for &r in order {
                w.write_all(&self.codes[r as usize * dim..(r as usize + 1) * dim])?;
            }
            let (_, size, sha256) = w.into_parts();
            sum = Some((size, sha256));
            Ok(())
        })?;
        Ok(sum.expect("the file was written"))
    }
}

/// A link list (count, then ids) with its ids turned into node numbers (`inv[row]`) and its unused
/// slots zero.
fn relabel<'a>(list: &'a [u32], inv: &'a [u32]) -> impl Iterator<Item = u32> + 'a {
    let count = (list[0] as usize).min(list.len() - 1);
    std::iter::once(count as u32)
        .chain(list[1..=count].iter().map(|&v| inv[v as usize]))
        .chain(std::iter::repeat_n(0, list.len() - 1 - count))
}

/// A graph file's bytes: read into memory on huge pages where it fits, else memory-mapped.
pub(super) enum Bytes {
    Mapped(Mmap),
    Resident(HugeArray<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Resident(r) => r,
        }
    }
}

/// Whether a graph file of `len` bytes is read into memory: where the kernel gives huge pages, the
/// file takes at most a quarter of the memory available (`memory::available_memory`: the machine's or
/// the control group's), and `SIMLM_GRAPH_RESIDENT` is not `0`.
/// A walk scores about a thousand codes at random places of the file per query; on a 4 KiB-page map
/// nearly every one also misses the TLB (1M x 768 codes span 190,000 pages), on 2 MiB pages the whole
/// file needs a few hundred entries. A larger file stays mapped, paged in and out by the kernel.
fn resident(len: usize) -> bool {
    if std::env::var("SIMLM_GRAPH_RESIDENT").is_ok_and(|v| v == "0") {
        return false;
    }
    crate::memory::huge_pages_available()
        && crate::memory::available_memory().is_some_and(|a| len as u64 <= a / 4)
}

/// The bytes of the file just opened, in memory on huge pages; `len` is its size when opened.
fn read_resident(mut f: &std::fs::File, len: usize) -> std::io::Result<HugeArray<u8>> {
    use std::io::Read;
    let mut buf = HugeArray::<u8>::zeroed(len);
    f.read_exact(&mut buf)?;
    // The file is no longer than when opened (a shorter one fails `read_exact`).
    if f.read(&mut [0u8; 1])? != 0 {
        return Err(std::io::Error::other("the file grew while it was read"));
    }
    Ok(buf)
}

/// A graph file opened for search (in memory or memory-mapped).
pub struct Graph {
    pub(super) map: Bytes,
    pub(super) path: PathBuf,
    /// The index folder, for the messages that tell how to rebuild the graph.
    pub(super) index_dir: PathBuf,
    pub(super) n: usize,
    pub(super) m0: usize,
    pub(super) m: usize,
    pub(super) top: usize,
    pub(super) entry: usize,
    pub(super) dim: usize,
    pub(super) layer0_at: usize,
    upper_at_at: usize,
    upper_at: usize,
    upper_len: usize,
    /// Where each node's matrix row is stored (version 2); none when nodes are rows (version 1).
    rows_at: Option<usize>,
    pub(super) book_at: usize,
    pub(super) codes_at: usize,
}

impl Graph {
    /// Opens the graph file `path` of the index folder `index_dir`. The header must describe the
    /// file's exact size, the code book must be finite, and the entry node's links must be in range;
    /// the other links are checked as a search follows them.
    pub fn open(path: &Path, index_dir: &Path) -> Result<Graph> {
        Self::open_as(path, index_dir, None)
    }

    /// [`Graph::open`], read into memory (`Some(true)`), mapped (`Some(false)`) or as [`resident`]
    /// decides (`None`).
    pub(super) fn open_as(path: &Path, index_dir: &Path, read: Option<bool>) -> Result<Graph> {
        if !path.is_file() {
            return Err(Error::invalid(
                path,
                None,
                format!(
                    "the HNSW graph is missing; build it with `simlm-index hnsw {}` or search with --exact",
                    index_dir.display()
                ),
            ));
        }
        let f = std::fs::File::open(path).at(path)?;
        let len = f.metadata().at(path)?.len() as usize;
        let map = if read.unwrap_or_else(|| resident(len)) {
            Bytes::Resident(read_resident(&f, len).at(path)?)
        } else {
            // Safety: the file is opened read-only, and files of a committed generation are never
            // written again (see `store::layout`).
            Bytes::Mapped(unsafe { Mmap::map(&f) }.at(path)?)
        };
        let bad = |msg: String| {
            Error::corrupt(
                path,
                format!(
                    "{msg}; rebuild the graph with `simlm-index hnsw {}`",
                    index_dir.display()
                ),
            )
        };
        if map.len() < HEADER_LEN || &map[..8] != MAGIC {
            return Err(bad("not a graph file of this engine".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(map[o..o + 4].try_into().unwrap()) as usize;
        let u64_at = |o: usize| u64::from_le_bytes(map[o..o + 8].try_into().unwrap());
        let version = u32_at(8);
        if version != VERSION as usize && version != VERSION_ROWS_ARE_NODES as usize {
            return Err(bad(format!(
                "graph format version {version}, this engine reads versions \
                 {VERSION_ROWS_ARE_NODES} and {VERSION}"
            )));
        }
        let has_rows = version == VERSION as usize;
        let (m0, m, top) = (u32_at(12), u32_at(16), u32_at(20));
        let (n, entry, upper_len, dim) = (u64_at(24), u64_at(32), u64_at(40), u64_at(48));
        // Sizes in u128, checked: no header value can overflow the arithmetic (the codes' n x dim of
        // two u64s alone can pass 2^128); an overflow describes no file.
        let (n128, m0_128, ul, d128) = (n as u128, m0 as u128, upper_len as u128, dim as u128);
        let parts = [
            Some(HEADER_LEN as u128),
            Some(n128.div_ceil(4) * 4),
            (4 * n128).checked_mul(m0_128 + 1),
            Some(4 * n128),
            Some(4 * ul),
            Some(if has_rows { 4 * n128 } else { 0 }),
            Some(8 * d128),
            n128.checked_mul(d128),
        ];
        let need = parts
            .iter()
            .try_fold(0u128, |sum, p| p.and_then(|p| sum.checked_add(p)));
        if need != Some(map.len() as u128)
            || (n > 0 && entry >= n)
            || top > MAX_LAYER
            || !cfg!(target_endian = "little")
        {
            return Err(bad(format!(
                "the file holds {} bytes, its header describes {}: it is truncated or damaged",
                map.len(),
                need.map_or("more than 2^128".to_string(), |n| n.to_string())
            )));
        }
        let (n, entry, upper_len, dim) =
            (n as usize, entry as usize, upper_len as usize, dim as usize);
        let layer0_at = HEADER_LEN + pad4(n);
        let upper_at_at = layer0_at + 4 * n * (m0 + 1);
        let upper_at = upper_at_at + 4 * n;
        let rows_at = has_rows.then_some(upper_at + 4 * upper_len);
        let book_at = upper_at + 4 * upper_len + if has_rows { 4 * n } else { 0 };
        let codes_at = book_at + 8 * dim;
        let g = Graph {
            map,
            path: path.to_path_buf(),
            index_dir: index_dir.to_path_buf(),
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
            rows_at,
            book_at,
            codes_at,
        };
        if let Some(at) = rows_at {
            // A row twice (or a row past the matrix) would return a passage twice, or the wrong one.
            let mut seen = vec![false; n];
            for (node, &r) in g.words(at, n).iter().enumerate() {
                let r = r as usize;
                if r >= n || std::mem::replace(&mut seen[r], true) {
                    return Err(bad(format!(
                        "node {node} stands for row {r}, past the {n} rows or already taken: \
                         its row table is damaged"
                    )));
                }
            }
        }
        let book = g.floats(g.book_at, 2 * dim);
        if let Some(v) = bad_book_value(&book[..dim], &book[dim..]) {
            return Err(bad(format!(
                "its code book is damaged ({v}): no score could be trusted"
            )));
        }
        if n > 0 {
            if g.level(entry) != top {
                return Err(bad(format!(
                    "the entry node's level is not the top level {top}"
                )));
            }
            for layer in 0..=top {
                g.neighbours(entry, layer).map_err(bad)?;
            }
        }
        Ok(g)
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

    /// The file's size in bytes.
    pub fn file_len(&self) -> usize {
        self.map.len()
    }

    /// Whether the file was read into memory (else it is memory-mapped).
    pub fn is_resident(&self) -> bool {
        matches!(self.map, Bytes::Resident(_))
    }

    pub(super) fn words(&self, at: usize, len: usize) -> &[u32] {
        let b = &self.map[at..at + 4 * len];
        // Safety: the map is page-aligned and every section starts at a multiple of 4; any bit pattern
        // is a valid u32; the file is little-endian, checked at open.
        unsafe { std::slice::from_raw_parts(b.as_ptr() as *const u32, len) }
    }

    pub(super) fn floats(&self, at: usize, len: usize) -> &[f32] {
        let b = &self.map[at..at + 4 * len];
        // Safety: as for `words`; any bit pattern is a valid f32.
        unsafe { std::slice::from_raw_parts(b.as_ptr() as *const f32, len) }
    }

    /// The matrix row of node `node` (checked at open to be a row, each once).
    pub(super) fn row(&self, node: usize) -> usize {
        match self.rows_at {
            Some(at) => self.words(at + 4 * node, 1)[0] as usize,
            None => node,
        }
    }

    pub(super) fn level(&self, row: usize) -> usize {
        self.map[HEADER_LEN + row] as usize
    }

    /// The neighbours of `row` on `layer`, every one checked to be a row of the graph: a damaged list
    /// is an error (with what is wrong), never followed or silently skipped.
    pub(super) fn neighbours(
        &self,
        row: usize,
        layer: usize,
    ) -> std::result::Result<&[u32], String> {
        let list = if layer == 0 {
            self.words(self.layer0_at + 4 * row * (self.m0 + 1), self.m0 + 1)
        } else {
            let at = self.words(self.upper_at_at + 4 * row, 1)[0] as usize;
            let start = at.saturating_add((layer - 1) * (self.m + 1));
            if at == NONE as usize
                || layer > self.level(row)
                || start.saturating_add(self.m + 1) > self.upper_len
            {
                return Err(format!(
                    "node {row} has no list on layer {layer}: the graph is damaged"
                ));
            }
            self.words(self.upper_at + 4 * start, self.m + 1)
        };
        let count = list[0] as usize;
        if count > list.len() - 1 {
            return Err(format!(
                "node {row} claims {count} links on layer {layer}, more than the {} a list holds: the graph is damaged",
                list.len() - 1
            ));
        }
        let links = &list[1..=count];
        if let Some(bad) = links.iter().find(|&&v| v as usize >= self.n) {
            return Err(format!(
                "node {row} links to node {bad} on layer {layer}, past the {} nodes: the graph is damaged",
                self.n
            ));
        }
        Ok(links)
    }
}
