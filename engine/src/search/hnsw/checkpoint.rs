//! A long graph build's checkpoints, so that a stop (a kill, a reboot, the end of a session) costs
//! minutes, not hours: every few minutes, between two chunks of insertions (no insertion in flight),
//! the link arrays and the number of nodes inserted are written to `DIR/graph.partial/`; the next build
//! of the same graph (the same codes, rows and parameters) starts from there. Insertion order does not
//! change across a resume, so with one thread a resumed build gives the same graph, byte for byte,
//! as one that never stopped.
//!
//! ```text
//! DIR/graph.partial/state.json   what the arrays belong to and how far the build got (written last)
//! DIR/graph.partial/layer0.bin   little-endian u32 words, the layer-0 lists
//! DIR/graph.partial/upper.bin    little-endian u32 words, the upper layers' lists
//! ```
//!
//! A checkpoint is written whole into `graph.partial.new/` (files synced, `state.json` last) and then
//! takes the place of the previous one; a stop between the two leaves one complete folder or the
//! other, and reading accepts either. The commit that makes any graph part of the index removes both.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::HnswParams;
use crate::failpoint;

/// The checkpoint folder's name in the index folder.
pub const FOLDER: &str = "graph.partial";
const NEW: &str = "graph.partial.new";
const STATE: &str = "state.json";
const LAYER0: &str = "layer0.bin";
const UPPER: &str = "upper.bin";
const FORMAT: u32 = 1;

/// How often a checkpoint is written, unless `SIMLM_GRAPH_CHECKPOINT_SECS` says otherwise.
const EVERY: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    format: u32,
    rows: usize,
    dim: usize,
    m: usize,
    ef_construction: usize,
    /// Of the 8-bit codes the build scores on: they follow from the matrix and its code book.
    codes_sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    #[serde(flatten)]
    identity: Identity,
    inserted: usize,
    layer0_words: usize,
    upper_words: usize,
    /// Seconds of building (all runs, from each run's start to this checkpoint) that the nodes
    /// inserted so far took: a resumed build's time is this plus its own.
    #[serde(default)]
    build_seconds: f64,
}

/// The state a build resumes from: nodes `0..inserted` of the insertion order are in the arrays.
pub(super) struct Saved {
    pub inserted: usize,
    pub build_seconds: f64,
    pub layer0: Vec<u32>,
    pub upper: Vec<u32>,
}

/// Where and how often one build writes its checkpoints.
pub struct Checkpoints {
    dir: PathBuf,
    identity: Identity,
    every: Duration,
    last: Mutex<Instant>,
    /// When this run started, and the seconds of the runs before it (from the checkpoint it resumed).
    started: Instant,
    prior_seconds: Mutex<f64>,
}

impl Checkpoints {
    /// Checkpoints of the graph of `codes` (`rows x dim`) with `params`, in index folder `dir`, for a
    /// run that started at `started`.
    pub fn new(
        dir: &Path,
        rows: usize,
        dim: usize,
        params: HnswParams,
        codes: &[u8],
        started: Instant,
    ) -> Self {
        let every = std::env::var("SIMLM_GRAPH_CHECKPOINT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(EVERY);
        Checkpoints {
            dir: dir.to_path_buf(),
            identity: Identity {
                format: FORMAT,
                rows,
                dim,
                m: params.m,
                ef_construction: params.ef_construction,
                codes_sha256: format!("{:x}", Sha256::digest(codes)),
            },
            every,
            last: Mutex::new(Instant::now()),
            started,
            prior_seconds: Mutex::new(0.0),
        }
    }

    /// The checkpoint of this very graph, if one is there and whole (`None` otherwise: another
    /// graph's, a damaged or a partly written one is not used; the build starts over and replaces it).
    pub(super) fn load(&self, layer0_words: usize, upper_words: usize) -> Option<Saved> {
        [FOLDER, NEW].iter().find_map(|name| {
            let d = self.dir.join(name);
            let state: State = serde_json::from_slice(&std::fs::read(d.join(STATE)).ok()?).ok()?;
            if state.identity != self.identity
                || state.layer0_words != layer0_words
                || state.upper_words != upper_words
                || state.inserted > self.identity.rows
            {
                return None;
            }
            *self.prior_seconds.lock().unwrap() = state.build_seconds;
            Some(Saved {
                inserted: state.inserted,
                build_seconds: state.build_seconds,
                layer0: read_words(&d.join(LAYER0), layer0_words)?,
                upper: read_words(&d.join(UPPER), upper_words)?,
            })
        })
    }

    /// Writes a checkpoint if the last one is older than the interval.
    pub(super) fn save_if_due(
        &self,
        inserted: usize,
        layer0: &[AtomicU32],
        upper: &[AtomicU32],
    ) -> std::io::Result<()> {
        let mut last = self.last.lock().unwrap();
        if last.elapsed() < self.every {
            return Ok(());
        }
        self.save(inserted, layer0, upper)?;
        *last = Instant::now();
        failpoint::hit("graph-checkpoint")
    }

    fn save(
        &self,
        inserted: usize,
        layer0: &[AtomicU32],
        upper: &[AtomicU32],
    ) -> std::io::Result<()> {
        let new = self.dir.join(NEW);
        if new.exists() {
            std::fs::remove_dir_all(&new)?;
        }
        std::fs::create_dir(&new)?;
        write_words(&new.join(LAYER0), layer0)?;
        write_words(&new.join(UPPER), upper)?;
        let state = State {
            identity: self.identity.clone(),
            inserted,
            layer0_words: layer0.len(),
            upper_words: upper.len(),
            build_seconds: *self.prior_seconds.lock().unwrap()
                + self.started.elapsed().as_secs_f64(),
        };
        let mut f = std::fs::File::create(new.join(STATE))?;
        f.write_all(&serde_json::to_vec_pretty(&state).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        sync_dir(&new)?;
        let cur = self.dir.join(FOLDER);
        if cur.exists() {
            std::fs::remove_dir_all(&cur)?;
        }
        std::fs::rename(&new, &cur)?;
        sync_dir(&self.dir)
    }
}

/// Removes the checkpoints of index folder `dir` (after a commit).
pub fn remove(dir: &Path) {
    for name in [FOLDER, NEW] {
        let _ = std::fs::remove_dir_all(dir.join(name));
    }
}

fn write_words(path: &Path, words: &[AtomicU32]) -> std::io::Result<()> {
    let f = std::fs::File::create(path)?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    super::format::write_le_words(&mut w, words.iter().map(|x| x.load(Relaxed)))?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()
}

fn read_words(path: &Path, len: usize) -> Option<Vec<u32>> {
    let mut f = std::fs::File::open(path).ok()?;
    if f.metadata().ok()?.len() != 4 * len as u64 {
        return None;
    }
    let mut out = crate::memory::huge_with_capacity(len);
    let mut buf = vec![0u8; 1 << 20];
    while out.len() < len {
        let n = ((len - out.len()) * 4).min(buf.len());
        f.read_exact(&mut buf[..n]).ok()?;
        out.extend(
            buf[..n]
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
    Some(out)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
