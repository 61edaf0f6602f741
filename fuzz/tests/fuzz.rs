//! One test per fuzz target: its seeds, then mutated inputs (500, the same ones each run, or for
//! `SIMLM_FUZZ_SECS` seconds). A failure names the saved input and its backtrace file.

use std::sync::Mutex;

use fuzz::driver::{self, Settings};
use fuzz::targets::{self, Scratch, Target};

#[global_allocator]
static ALLOC: fuzz::guard::Guarded = fuzz::guard::Guarded;

/// Targets run one at a time: the allocation guard and the panic hook serve one input at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn fuzz(name: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let report = driver::fuzz(targets::find(name), &Settings::from_env());
    eprintln!("\n{report}");
    assert!(report.failures.is_empty(), "{report}");
}

#[test]
fn npy() {
    fuzz("npy");
}

#[test]
fn collection() {
    fuzz("collection");
}

#[test]
fn queries() {
    fuzz("queries");
}

#[test]
fn query_vectors() {
    fuzz("query_vectors");
}

#[test]
fn qrels() {
    fuzz("qrels");
}

#[test]
fn run() {
    fuzz("run");
}

#[test]
fn manifest() {
    fuzz("manifest");
}

#[test]
fn graph() {
    fuzz("graph");
}

#[test]
fn request_body() {
    fuzz("request_body");
}

#[test]
fn every_target_has_seeds_and_every_seed_folder_a_target() {
    let cfg = Settings::from_env();
    let mut folders: Vec<String> = std::fs::read_dir(&cfg.corpus)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    let mut names: Vec<String> = targets::TARGETS
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    assert_eq!(folders, names);
    for t in targets::TARGETS {
        assert!(
            driver::seeds(&cfg.corpus.join(t.name)).len() >= 3,
            "{}: fewer than 3 seeds",
            t.name
        );
    }
}

/// A target that fails on one byte pattern, to check the driver finds, shrinks and saves it.
fn boom(_: &Scratch, data: &[u8]) -> String {
    if data.windows(3).any(|w| w == b"B\tM") {
        panic!("boom");
    }
    format!("len {}", data.len().min(4))
}

#[test]
fn the_driver_catches_shrinks_and_saves_a_failing_input() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let seeds = d.path().join("corpus/boom");
    std::fs::create_dir_all(&seeds).unwrap();
    std::fs::write(seeds.join("a"), b"xxxxB\tMyyyy").unwrap();
    std::fs::write(seeds.join("b"), b"B\tN").unwrap();
    let t = Target {
        name: "boom",
        run: boom,
        tokens: &[b"M"],
    };
    let cfg = Settings {
        secs: None,
        runs: Some(3000),
        seed: 1,
        max_len: 64,
        hang_secs: 10,
        corpus: d.path().join("corpus"),
        artifacts: d.path().join("artifacts"),
    };
    let report = driver::fuzz(&t, &cfg);
    assert_eq!(report.seeds, 2);
    assert_eq!(report.failures.len(), 1, "{report}");
    let f = &report.failures[0];
    assert_eq!(f.message, "boom");
    assert_eq!(f.found_by, "seed a");
    assert!(f.location.contains("tests/fuzz.rs"), "{}", f.location);
    // Shrunk to the bytes that matter, saved, with the backtrace beside it.
    assert_eq!(std::fs::read(&f.input).unwrap(), b"B\tM");
    let txt = std::fs::read_to_string(f.input.with_extension("txt")).unwrap();
    // The backtrace names the frame that panicked: the target's line in this file.
    assert!(
        txt.contains("boom") && txt.contains("tests/fuzz.rs:"),
        "{txt}"
    );
    // Without the failing seed, mutation finds it from the other one (a token and a byte apart).
    std::fs::remove_file(seeds.join("a")).unwrap();
    let report = driver::fuzz(&t, &cfg);
    assert_eq!(report.failures.len(), 1, "{report}");
    assert_eq!(report.failures[0].found_by, "mutated");
    assert!(report.mutated > 0 && report.mutated <= 3000);
}

/// The request-body target sees what the service would: its seeds are accepted or refused as a
/// client of an index without a model would be answered.
#[test]
fn request_body_seeds_are_judged_as_the_service_would() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new().unwrap();
    let run = targets::find("request_body").run;
    let seed = |name: &str| {
        let p = Settings::from_env().corpus.join("request_body").join(name);
        run(&scratch, &std::fs::read(p).unwrap())
    };
    // Vectors of the index's dimension are accepted; `/embed` refuses their fields (400).
    assert_eq!(seed("vector"), "search ok 1 false; embed 400");
    assert_eq!(seed("vectors"), "search ok 2 true; embed 400");
    // Texts need a model (422); `/search` refuses `/embed`'s fields (400) and the other way round.
    assert_eq!(seed("query"), "search 422; embed 400");
    assert_eq!(seed("queries-exact"), "search 422; embed 400");
    assert_eq!(seed("embed"), "search 400; embed 422");
    // A vector whose scores would overflow is the request's fault.
    assert_eq!(seed("huge-vector"), "search 422; embed 400");
}

/// The graph target's seeds named `v1-*` and `v2-*` are graphs the engine built (version 2) and one
/// in version 1's layout: every one opens and is searched, so mutations start from files that reach
/// the walk. The others are refused (a header whose sizes overflow 128 bits).
#[test]
fn graph_seeds_open_and_are_searched() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new().unwrap();
    let run = targets::find("graph").run;
    let folder = Settings::from_env().corpus.join("graph");
    let mut seen = 0;
    for entry in std::fs::read_dir(&folder).unwrap() {
        let p = entry.unwrap().path();
        let out = run(&scratch, &std::fs::read(&p).unwrap());
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with('v') {
            assert!(out.contains("truncated or damaged"), "{name}: {out}");
            continue;
        }
        assert!(
            out.starts_with("opened") && out.matches(" found").count() == 3,
            "{name}: {out}"
        );
        seen += 1;
    }
    assert!(seen >= 5, "{seen} seeds");
}
