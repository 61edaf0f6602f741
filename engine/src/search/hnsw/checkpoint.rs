//! A long graph build's checkpoints, so that a stop (a kill, a reboot, the end of a session) costs
//! minutes, not hours: every few minutes, between two chunks of insertions (no insertion in flight),
//! the link arrays and the number of nodes inserted are written to `DIR/graph.partial/`; the next build
//! of the same graph (the same codes, rows and parameters) starts from there. Insertion order does not
//! change across a resume, so with one thread a resumed build gives the same graph, byte for byte,
//! as one that never stopped.
//!
//! ```text
//! DIR/graph.partial/state.json   what the arrays belong to, how far the build got, and the SHA-256
//!                                of each array file (written last)
//! DIR/graph.partial/layer0.bin   little-endian u32 words, the layer-0 lists
//! DIR/graph.partial/upper.bin    little-endian u32 words, the upper layers' lists
//! ```
//!
//! A checkpoint is written whole into `graph.partial.new/` (files synced, `state.json` last) and then
//! takes the place of the previous one; a stop between the two leaves one complete folder or the
//! other, and reading accepts either (the one further along, if both are good). What a stopped
//! process left is checked before it is used: the array files against their checksums, then every
//! list against the graph's layout (counts within the list, links to nodes already inserted and of a
//! level that has the layer, no list for a node not yet inserted and none empty for one that is;
//! see `build::check_saved`). A checkpoint that fails any check is not used: the build says which and
//! why, and starts from the other folder or from the beginning. The commit that makes any graph part
//! of the index removes both.

use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::format::Summed;
use super::HnswParams;
use crate::failpoint;

/// The checkpoint folder's name in the index folder.
pub const FOLDER: &str = "graph.partial";
/// Where a checkpoint is written before it takes the place of `FOLDER`.
pub const NEW: &str = "graph.partial.new";
const STATE: &str = "state.json";
const LAYER0: &str = "layer0.bin";
const UPPER: &str = "upper.bin";
/// 2: `state.json` holds the checksums of the array files (version 1 held none).
const FORMAT: u32 = 2;

/// How often a checkpoint is written by default.
pub(super) const EVERY: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    rows: usize,
    dim: usize,
    m: usize,
    ef_construction: usize,
    /// Of the 8-bit codes the build scores on: they follow from the matrix and its code book.
    codes_sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    format: u32,
    #[serde(flatten)]
    identity: Identity,
    inserted: usize,
    layer0_words: usize,
    upper_words: usize,
    /// SHA-256 (hex) of `layer0.bin` and of `upper.bin`.
    #[serde(default)]
    layer0_sha256: Option<String>,
    #[serde(default)]
    upper_sha256: Option<String>,
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
    /// Checkpoints of the graph of `codes` (`rows x dim`) with `params`, in index folder `dir`, at
    /// least `every` apart, for a run that started at `started`.
    pub(super) fn new(
        dir: &Path,
        rows: usize,
        dim: usize,
        params: HnswParams,
        codes: &[u8],
        started: Instant,
        every: Duration,
    ) -> Self {
        Checkpoints {
            dir: dir.to_path_buf(),
            identity: Identity {
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

    /// The checkpoint of this very graph, if a good one is there, and the folder it was read from
    /// (`None` otherwise: the build starts over and replaces it). Another graph's checkpoint, or a
    /// `graph.partial.new/` whose writing was stopped, is passed over in silence; one that fails a
    /// check is passed over with a `note` naming its folder and the reason.
    pub(super) fn load(&self, note: &dyn Fn(&str)) -> Option<(Saved, PathBuf)> {
        let m = self.identity.m;
        let (layer0_words, upper_words) = super::build::array_words(self.identity.rows, m);
        // The states first (small), then the arrays of the one further along, and of the other if
        // that one fails: only one checkpoint's arrays are held at a time.
        let mut found: Vec<(State, PathBuf)> = Vec::new();
        for name in [FOLDER, NEW] {
            let d = self.dir.join(name);
            if !d.is_dir() {
                continue;
            }
            let text = match std::fs::read(d.join(STATE)) {
                Ok(t) => t,
                // state.json is written last: a folder without it was being written.
                Err(_) if name == NEW => continue,
                Err(e) => {
                    note(&discarded(&d, &format!("its {STATE} cannot be read ({e})")));
                    continue;
                }
            };
            match serde_json::from_slice::<State>(&text) {
                Ok(state) if state.identity != self.identity => {}
                Ok(state) => found.push((state, d)),
                Err(e) => note(&discarded(&d, &format!("its {STATE} is damaged ({e})"))),
            }
        }
        found.sort_by_key(|(state, _)| std::cmp::Reverse(state.inserted));
        for (state, d) in found {
            match self.read(&state, &d, layer0_words, upper_words) {
                Ok(saved) => {
                    *self.prior_seconds.lock().unwrap() = saved.build_seconds;
                    return Some((saved, d));
                }
                Err(why) => note(&discarded(&d, &why)),
            }
        }
        None
    }

    /// The arrays of a checkpoint whose state is `state`, every check passed.
    fn read(
        &self,
        state: &State,
        d: &Path,
        layer0_words: usize,
        upper_words: usize,
    ) -> Result<Saved, String> {
        let (Some(l0_sum), Some(up_sum)) = (&state.layer0_sha256, &state.upper_sha256) else {
            return Err(format!(
                "it was written by an earlier version (format {}), without checksums of its files",
                state.format
            ));
        };
        if state.format != FORMAT {
            return Err(format!(
                "its format is {}, this version writes {FORMAT}",
                state.format
            ));
        }
        let rows = self.identity.rows;
        if state.inserted > rows {
            return Err(format!(
                "{STATE} counts {} nodes inserted, more than the graph's {rows}",
                state.inserted
            ));
        }
        if (state.layer0_words, state.upper_words) != (layer0_words, upper_words) {
            return Err(format!(
                "{STATE} records arrays of {} and {} words, this graph has {layer0_words} and \
                 {upper_words}",
                state.layer0_words, state.upper_words
            ));
        }
        let layer0 = read_words(&d.join(LAYER0), layer0_words, l0_sum)?;
        let upper = read_words(&d.join(UPPER), upper_words, up_sum)?;
        let saved = Saved {
            inserted: state.inserted,
            build_seconds: state.build_seconds,
            layer0,
            upper,
        };
        super::build::check_saved(rows, self.identity.m, &saved)?;
        Ok(saved)
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
        let layer0_sha256 = write_words(&new.join(LAYER0), layer0)?;
        let upper_sha256 = write_words(&new.join(UPPER), upper)?;
        let state = State {
            format: FORMAT,
            identity: self.identity.clone(),
            inserted,
            layer0_words: layer0.len(),
            upper_words: upper.len(),
            layer0_sha256: Some(layer0_sha256),
            upper_sha256: Some(upper_sha256),
            build_seconds: *self.prior_seconds.lock().unwrap()
                + self.started.elapsed().as_secs_f64(),
        };
        let mut f = std::fs::File::create(new.join(STATE))?;
        std::io::Write::write_all(
            &mut f,
            &serde_json::to_vec_pretty(&state).map_err(std::io::Error::other)?,
        )?;
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

/// The note for a checkpoint that is not used.
fn discarded(d: &Path, why: &str) -> String {
    format!("the graph checkpoint in {} is not used: {why}", d.display())
}

/// Removes the checkpoints of index folder `dir` (after a commit).
pub fn remove(dir: &Path) {
    for name in [FOLDER, NEW] {
        let _ = std::fs::remove_dir_all(dir.join(name));
    }
}

/// Writes `words` to `path`, synced; returns the SHA-256 (hex) of the bytes written.
fn write_words(path: &Path, words: &[AtomicU32]) -> std::io::Result<String> {
    let f = std::fs::File::create(path)?;
    let mut w = Summed::new(BufWriter::with_capacity(1 << 20, f));
    super::format::write_le_words(&mut w, words.iter().map(|x| x.load(Relaxed)))?;
    let (w, _, sum) = w.into_parts();
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(sum)
}

/// The `len` words of `path`, whose bytes must have the SHA-256 `sum`.
fn read_words(path: &Path, len: usize, sum: &str) -> Result<Vec<u32>, String> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let unreadable = |e: std::io::Error| format!("its {name} cannot be read ({e})");
    let mut f = std::fs::File::open(path).map_err(unreadable)?;
    let size = f.metadata().map_err(unreadable)?.len();
    if size != 4 * len as u64 {
        return Err(format!(
            "its {name} holds {size} bytes, the graph's array {}",
            4 * len as u64
        ));
    }
    let mut out = crate::memory::huge_with_capacity(len);
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    while out.len() < len {
        let n = ((len - out.len()) * 4).min(buf.len());
        f.read_exact(&mut buf[..n]).map_err(unreadable)?;
        sha.update(&buf[..n]);
        out.extend(
            buf[..n]
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
    if format!("{:x}", sha.finalize()) != sum {
        return Err(format!("its {name} does not match the checksum in {STATE}"));
    }
    Ok(out)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
