//! The fuzz loop of one target: every seed of its corpus is run, then mutated inputs until the time
//! or the count is spent. Each input runs under `catch_unwind`; a panic is a failure, whose input is
//! shrunk, saved under the artifacts folder with its message and backtrace beside it, and named in
//! the report. An input that runs past the hang limit is saved and the process aborted (a hang
//! cannot be interrupted), as the allocation guard does for an absurd allocation.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use crate::guard;
use crate::mutate::{mutate, Rng};
use crate::targets::{fnv, Scratch, Target};

/// How long and how a target is fuzzed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Seconds of mutated inputs; `None`: `runs` of them, the same ones at each run.
    pub secs: Option<f64>,
    /// Mutated inputs when no time is given (and at most this many when one is, if set).
    pub runs: Option<u64>,
    pub seed: u64,
    /// The longest input tried, in bytes.
    pub max_len: usize,
    /// An input that runs longer than this is a hang.
    pub hang_secs: u64,
    /// Where the seeds are: one folder per target.
    pub corpus: PathBuf,
    /// Where failing inputs are saved: one folder per target.
    pub artifacts: PathBuf,
}

/// The mutated inputs per target of a run without `SIMLM_FUZZ_SECS`.
pub const DEFAULT_RUNS: u64 = 500;
pub const DEFAULT_SEED: u64 = 0x5eed_f022;

impl Settings {
    /// From the environment: `SIMLM_FUZZ_SECS` (seconds per target), `SIMLM_FUZZ_RUNS` (mutated
    /// inputs per target; 500 when neither is set), `SIMLM_FUZZ_SEED`, `SIMLM_FUZZ_MAX_LEN` (bytes,
    /// 65536), `SIMLM_FUZZ_HANG_SECS` (10); the corpus and artifacts folders beside this crate.
    pub fn from_env() -> Self {
        fn var<T: std::str::FromStr>(name: &str) -> Option<T> {
            let v = std::env::var(name).ok()?;
            match v.trim().parse() {
                Ok(x) => Some(x),
                Err(_) => panic!("{name}={v:?} is not a number"),
            }
        }
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let secs = var::<f64>("SIMLM_FUZZ_SECS").filter(|s| *s > 0.0);
        let runs = var("SIMLM_FUZZ_RUNS").or(secs.is_none().then_some(DEFAULT_RUNS));
        Settings {
            secs,
            runs,
            seed: var("SIMLM_FUZZ_SEED").unwrap_or(DEFAULT_SEED),
            max_len: var("SIMLM_FUZZ_MAX_LEN").unwrap_or(1 << 16),
            hang_secs: var("SIMLM_FUZZ_HANG_SECS").unwrap_or(10),
            corpus: here.join("corpus"),
            artifacts: here.join("artifacts"),
        }
    }
}

/// A failing input, as saved.
#[derive(Debug)]
pub struct Failure {
    /// The (shrunk) input's file.
    pub input: PathBuf,
    /// The panic's message and place.
    pub message: String,
    pub location: String,
    pub backtrace: String,
    /// Which input first showed it: a seed's file name, or `mutated`.
    pub found_by: String,
}

/// What a target's run did.
#[derive(Debug)]
pub struct Report {
    pub target: &'static str,
    pub seeds: usize,
    pub mutated: u64,
    pub elapsed: Duration,
    /// Distinct behaviours seen (accepted, or refused with a message of a distinct shape).
    pub behaviours: usize,
    pub failures: Vec<Failure>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fuzz {}: {} inputs ({} seeds, {} mutated) in {:.1} s, {} behaviours, {} failure(s)",
            self.target,
            self.seeds as u64 + self.mutated,
            self.seeds,
            self.mutated,
            self.elapsed.as_secs_f64(),
            self.behaviours,
            self.failures.len()
        )?;
        for x in &self.failures {
            write!(
                f,
                "\n  panic at {}: {}\n    input ({}): {}\n    backtrace: {}",
                x.location,
                x.message,
                x.found_by,
                x.input.display(),
                x.input.with_extension("txt").display()
            )?;
        }
        Ok(())
    }
}

/// A panic caught by the hook while inputs run.
struct Caught {
    message: String,
    location: String,
    backtrace: String,
}

static CAUGHT: Mutex<Vec<Caught>> = Mutex::new(Vec::new());
static QUIET: AtomicBool = AtomicBool::new(false);
static HOOK: Once = Once::new();

/// While inputs run, panics are recorded (with a backtrace) instead of printed.
fn install_hook() {
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.load(Ordering::SeqCst) {
                return default(info);
            }
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_default();
            let backtrace = std::backtrace::Backtrace::force_capture().to_string();
            let mut c = CAUGHT.lock().unwrap_or_else(|e| e.into_inner());
            if c.len() < 64 {
                c.push(Caught {
                    message: payload_text(info.payload()),
                    location,
                    backtrace,
                });
            }
        }));
    });
}

fn payload_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".into()
    }
}

/// Runs one input: `Ok(behaviour)` or the panic.
fn run_one(
    run: Run,
    s: &Scratch,
    input: &[u8],
    dump: &std::ffi::CStr,
    clock: &Clock,
) -> Result<String, Caught> {
    guard::set_input(input, dump);
    clock.start();
    let r = catch_unwind(AssertUnwindSafe(|| run(s, input)));
    clock.stop();
    guard::clear_input();
    r.map_err(|payload| {
        let message = payload_text(&*payload);
        let mut c = CAUGHT.lock().unwrap_or_else(|e| e.into_inner());
        let found = c.iter().rposition(|x| x.message == message);
        let caught = found.map(|i| c.remove(i));
        c.clear();
        caught.unwrap_or(Caught {
            message,
            location: "(unknown)".into(),
            backtrace: String::new(),
        })
    })
}

/// When the running input started (milliseconds since the clock's origin; 0: none running).
struct Clock {
    origin: Instant,
    started: AtomicU64,
}

impl Clock {
    fn start(&self) {
        let ms = self.origin.elapsed().as_millis() as u64 + 1;
        self.started.store(ms, Ordering::SeqCst);
    }

    fn stop(&self) {
        self.started.store(0, Ordering::SeqCst);
    }
}

/// Aborts the process when one input runs past the limit, after saving it (`dump`).
fn watchdog(
    clock: Arc<Clock>,
    done: Arc<AtomicBool>,
    limit: Duration,
    dump: PathBuf,
    input: Arc<Mutex<Vec<u8>>>,
) {
    std::thread::spawn(move || {
        while !done.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            let started = clock.started.load(Ordering::SeqCst);
            if started == 0 {
                continue;
            }
            let now = clock.origin.elapsed().as_millis() as u64 + 1;
            if now.saturating_sub(started) > limit.as_millis() as u64 {
                let bytes = input.lock().map(|i| i.clone()).unwrap_or_default();
                let _ = std::fs::write(&dump, &bytes);
                eprintln!(
                    "\nfuzz: an input has run for more than {} s (a hang); it is saved at {}",
                    limit.as_secs(),
                    dump.display()
                );
                std::process::abort();
            }
        }
    });
}

/// Shrinks a failing input while it still fails at the same place (at most a few thousand tries).
fn shrink(
    run: Run,
    s: &Scratch,
    input: &[u8],
    location: &str,
    dump: &std::ffi::CStr,
    clock: &Clock,
) -> Vec<u8> {
    let mut best = input.to_vec();
    let mut tries = 0;
    let mut chunk = best.len().div_ceil(2).max(1);
    while chunk >= 1 && tries < 4000 {
        let mut at = 0;
        let mut shrunk = false;
        while at < best.len() && tries < 4000 {
            let end = (at + chunk).min(best.len());
            let mut cand = best[..at].to_vec();
            cand.extend_from_slice(&best[end..]);
            tries += 1;
            match run_one(run, s, &cand, dump, clock) {
                Err(c) if c.location == location => {
                    best = cand;
                    shrunk = true;
                }
                _ => at += chunk,
            }
        }
        if !shrunk {
            if chunk == 1 {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
    }
    best
}

/// Saves a failing input (shrunk) and its panic's message and backtrace; returns the input's path.
fn save(dir: &Path, input: &[u8], c: &Caught) -> PathBuf {
    let _ = std::fs::create_dir_all(dir);
    let p = dir.join(format!("crash-{:016x}", fnv(input)));
    let _ = std::fs::write(&p, input);
    let _ = std::fs::write(
        p.with_extension("txt"),
        format!(
            "panic at {}: {}\n\ninput ({} bytes): {:?}\n\n{}",
            c.location,
            c.message,
            input.len(),
            String::from_utf8_lossy(input),
            c.backtrace
        ),
    );
    p
}

/// The seeds of a target: the files of its corpus folder, in name order.
pub fn seeds(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| {
                let bytes = std::fs::read(e.path())
                    .unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
                (e.file_name().to_string_lossy().into_owned(), bytes)
            })
            .collect(),
        Err(e) => panic!(
            "{}: {e} (each target needs a folder of seeds)",
            dir.display()
        ),
    };
    out.sort();
    out
}

/// One input's run: what the readers did, or a panic.
type Run<'a> = &'a dyn Fn(&Scratch, &[u8]) -> String;

/// Fuzzes one target.
pub fn fuzz(t: &Target, cfg: &Settings) -> Report {
    fuzz_with(t.name, t.tokens, &|s, d| (t.run)(s, d), cfg)
}

/// Fuzzes `run` (which may hold state, e.g. an opened index) as the target `name`: its seeds are in
/// the corpus folder `name`, its failures saved under the artifacts folder `name`.
pub fn fuzz_with(name: &'static str, tokens: &[&[u8]], run: Run, cfg: &Settings) -> Report {
    install_hook();
    let begin = Instant::now();
    let seeds = seeds(&cfg.corpus.join(name));
    let artifacts = cfg.artifacts.join(name);
    std::fs::create_dir_all(&artifacts).unwrap_or_else(|e| panic!("{}: {e}", artifacts.display()));
    // Written only when the process is aborted (an absurd allocation or a hang).
    let dump_path = artifacts.join("aborted-input");
    let dump = std::ffi::CString::new(dump_path.to_string_lossy().into_owned())
        .expect("a path without NUL");
    let scratch = Scratch::new().expect("a scratch folder");
    let clock = Arc::new(Clock {
        origin: Instant::now(),
        started: AtomicU64::new(0),
    });
    let done = Arc::new(AtomicBool::new(false));
    let current = Arc::new(Mutex::new(Vec::new()));
    watchdog(
        clock.clone(),
        done.clone(),
        Duration::from_secs(cfg.hang_secs),
        dump_path.clone(),
        current.clone(),
    );
    QUIET.store(true, Ordering::SeqCst);

    let mut behaviours = std::collections::HashSet::new();
    let mut failures: Vec<Failure> = Vec::new();
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let fail = |input: &[u8], c: Caught, found_by: String, failures: &mut Vec<Failure>| {
        if failures.iter().any(|f| f.location == c.location) {
            return;
        }
        let small = shrink(run, &scratch, input, &c.location, &dump, &clock);
        let path = save(&artifacts, &small, &c);
        failures.push(Failure {
            input: path,
            message: c.message,
            location: c.location,
            backtrace: c.backtrace,
            found_by,
        });
    };
    for (name, bytes) in &seeds {
        *current.lock().unwrap() = bytes.clone();
        match run_one(run, &scratch, bytes, &dump, &clock) {
            Ok(b) => {
                behaviours.insert(b);
            }
            Err(c) => fail(bytes, c, format!("seed {name}"), &mut failures),
        }
        pool.push(bytes.clone());
    }
    if pool.is_empty() {
        pool.push(Vec::new());
    }

    let mut rng = Rng::new(cfg.seed ^ fnv(name.as_bytes()));
    let deadline = cfg
        .secs
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let mut mutated = 0u64;
    loop {
        if cfg.runs.is_some_and(|r| mutated >= r) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        // Stop early once a target keeps failing: the failures found are what to fix first.
        if failures.len() >= 8 {
            break;
        }
        let parent = &pool[rng.below(pool.len())];
        let input = mutate(&mut rng, parent, &pool, tokens, cfg.max_len);
        mutated += 1;
        current.lock().unwrap().clone_from(&input);
        match run_one(run, &scratch, &input, &dump, &clock) {
            Ok(b) => {
                if behaviours.insert(b) {
                    if pool.len() < 4096 {
                        pool.push(input);
                    } else {
                        let i = rng.below(pool.len());
                        pool[i] = input;
                    }
                }
            }
            Err(c) => fail(&input, c, "mutated".into(), &mut failures),
        }
    }
    QUIET.store(false, Ordering::SeqCst);
    done.store(true, Ordering::SeqCst);
    Report {
        target: name,
        seeds: seeds.len(),
        mutated,
        elapsed: begin.elapsed(),
        behaviours: behaviours.len(),
        failures,
    }
}
