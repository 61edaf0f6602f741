//! The library's own tests of a build's resume and of merging shards: in-process, with the tiny BERT
//! fixture and the head of the Medline collection, stopped through a failpoint armed for the test.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::*;
use crate::corpus::ReadOptions;
use crate::failpoint::stopped_at;
use crate::store::layout;
use crate::store::npy::{self, Dtype};
use crate::{Encoder, EncoderOptions};

/// The armed failpoint is process-wide: the tests that build run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn shards_cover_all_rows_once() {
    for total in [1, 7, 1033] {
        for chunk in [1, 4, 64] {
            for n in 1..5 {
                let mut next = 0;
                for i in 0..n {
                    let (a, b) = shard_range(i, n, total, chunk);
                    assert_eq!(a, next);
                    assert!(a % chunk == 0 || a == total);
                    next = b;
                }
                assert_eq!(next, total);
            }
        }
    }
}

/// Progress that keeps its messages.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Progress for Recorder {
    fn stage(&self, _: &str, _: Option<u64>) {}
    fn set(&self, _: u64) {}
    fn finish_stage(&self) {}
    fn message(&self, msg: &str) {
        self.0.lock().unwrap().push(msg.to_string());
    }
}

fn encoder() -> Encoder {
    Encoder::load(
        &testkit::s(&testkit::tiny_bert()),
        &EncoderOptions::default(),
    )
    .unwrap()
}

/// The first `n` passages of Medline, as a collection file in `dir`.
fn collection(dir: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(testkit::medline()).unwrap();
    let head: String = text.lines().take(n).map(|l| format!("{l}\n")).collect();
    testkit::write(dir, "docs.jsonl", head)
}

fn options(collection: &Path, out: &Path) -> BuildOptions {
    BuildOptions {
        collection: collection.to_path_buf(),
        read: ReadOptions::default(),
        out: out.to_path_buf(),
        dtype: Dtype::F32,
        hnsw: None,
        shard: None,
        force: false,
        chunk_rows: 128,
    }
}

fn data(dir: &Path, name: &str) -> Vec<u8> {
    let m = crate::store::manifest::Manifest::read(dir).unwrap();
    std::fs::read(m.data_dir(dir).join(name)).unwrap()
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_stopped_build_resumes_where_it_stopped() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let docs = collection(tmp.path(), 600);
    let enc = encoder();
    let clean = tmp.path().join("clean");
    build(&enc, &options(&docs, &clean), &Quiet).unwrap();

    // Stopped after the first chunk: no index, a resumable generation with 128 rows done.
    let out = tmp.path().join("resumed");
    let opts = options(&docs, &out);
    let e = stopped_at("encode", || build(&enc, &opts, &Quiet)).unwrap_err();
    assert!(e.to_string().contains("failpoint encode"), "{e}");
    assert!(!out.join(layout::MANIFEST).exists());
    assert_eq!(layout::generations(&out).unwrap().len(), 1);

    // Stopped again before the commit, then finished: each run continues the last.
    let rec = Recorder::default();
    stopped_at("manifest", || build(&enc, &opts, &rec)).unwrap_err();
    assert!(
        rec.0
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("resuming after 128 of 600 rows")),
        "{:?}",
        rec.0.lock().unwrap()
    );
    let m = build(&enc, &opts, &Quiet).unwrap();
    assert_eq!(m.count, 600);
    for name in [layout::VECTORS, layout::DOCIDS, layout::OFFSETS] {
        assert_eq!(data(&out, name), data(&clean, name), "{name}");
    }
    assert!(verify(&out).unwrap().is_empty());
    // The same command once more finds the index complete and changes nothing.
    let manifest = std::fs::read(out.join(layout::MANIFEST)).unwrap();
    build(&enc, &opts, &Quiet).unwrap();
    assert_eq!(std::fs::read(out.join(layout::MANIFEST)).unwrap(), manifest);
    // Asked for a graph the index lacks, the build points to the command that adds one.
    let with_graph = BuildOptions {
        hnsw: Some(crate::search::hnsw::HnswParams {
            m: 8,
            ef_construction: 40,
        }),
        ..opts.clone()
    };
    let e = build(&enc, &with_graph, &Quiet).unwrap_err().to_string();
    assert!(e.contains("--hnsw-m 8 --ef-construction 40"), "{e}");
    assert_eq!(std::fs::read(out.join(layout::MANIFEST)).unwrap(), manifest);
}

/// Progress that asks the build to stop once `after` rows are encoded (a front end's Ctrl-C).
struct StopAfter(u64, std::sync::atomic::AtomicU64);

impl Progress for StopAfter {
    fn stage(&self, _: &str, _: Option<u64>) {}
    fn set(&self, pos: u64) {
        self.1.store(pos, std::sync::atomic::Ordering::SeqCst);
    }
    fn finish_stage(&self) {}
    fn message(&self, _: &str) {}
    fn cancelled(&self) -> bool {
        self.1.load(std::sync::atomic::Ordering::SeqCst) >= self.0
    }
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_cancelled_build_stops_at_a_chunk_and_resumes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let docs = collection(tmp.path(), 600);
    let enc = encoder();
    let clean = tmp.path().join("clean");
    build(&enc, &options(&docs, &clean), &Quiet).unwrap();
    let out = tmp.path().join("stopped");
    let opts = options(&docs, &out);
    let e = build(&enc, &opts, &StopAfter(200, Default::default())).unwrap_err();
    assert!(matches!(e, crate::Error::Cancelled(_)), "{e}");
    assert!(e.to_string().contains("after 256 of 600"), "{e}");
    assert!(!out.join(layout::MANIFEST).exists());
    let u = super::unfinished(&out).unwrap().unwrap();
    assert_eq!(u.rows_done, 256);
    // Asked to stop once the vectors are done: it stops before the graph.
    let graph = BuildOptions {
        hnsw: Some(crate::search::hnsw::HnswParams::default()),
        ..opts.clone()
    };
    let e = build(&enc, &graph, &StopAfter(600, Default::default())).unwrap_err();
    assert!(e.to_string().contains("after 600 of 600"), "{e}");
    let m = build(&enc, &graph, &Quiet).unwrap();
    assert_eq!(m.count, 600);
    for name in [layout::VECTORS, layout::DOCIDS, layout::OFFSETS] {
        assert_eq!(data(&out, name), data(&clean, name), "{name}");
    }
    assert!(verify(&out).unwrap().is_empty());
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn merged_shards_equal_one_build() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let docs = collection(tmp.path(), 500);
    let enc = encoder();
    let whole = tmp.path().join("whole");
    build(&enc, &options(&docs, &whole), &Quiet).unwrap();
    let shards: Vec<PathBuf> = (0..3)
        .map(|i| {
            let dir = tmp.path().join(format!("shard{i}"));
            let mut o = options(&docs, &dir);
            o.shard = Some((i, 3));
            build(&enc, &o, &Quiet).unwrap();
            dir
        })
        .collect();

    // Incomplete or repeated sets are refused.
    let out = tmp.path().join("merged");
    for set in [
        vec![shards[0].clone(), shards[2].clone()],
        vec![shards[0].clone(), shards[1].clone(), shards[1].clone()],
    ] {
        let e = merge(&set, &out, None, false, &Quiet).unwrap_err();
        assert!(e.to_string().contains("exactly once"), "{e}");
        assert!(!out.exists(), "a refused merge left {}", out.display());
    }
    // A merge stopped before its matrix is finished leaves nothing; in any order, it equals the
    // unsharded build.
    let reversed: Vec<PathBuf> = shards.iter().rev().cloned().collect();
    stopped_at("matrix-finish", || {
        merge(&reversed, &out, None, false, &Quiet)
    })
    .unwrap_err();
    assert!(!out.exists());
    let m = merge(&reversed, &out, None, false, &Quiet).unwrap();
    assert_eq!((m.count, m.shard.clone()), (500, None));
    for name in [layout::VECTORS, layout::DOCIDS, layout::OFFSETS] {
        assert_eq!(data(&out, name), data(&whole, name), "{name}");
    }
    assert!(verify(&out).unwrap().is_empty());
    // Shards of another collection do not join these.
    std::fs::create_dir(tmp.path().join("o")).unwrap();
    let other_docs = collection(&tmp.path().join("o"), 400);
    let other = tmp.path().join("other1");
    let mut o = options(&other_docs, &other);
    o.shard = Some((1, 3));
    build(&enc, &o, &Quiet).unwrap();
    let e = merge(
        &[shards[0].clone(), other, shards[2].clone()],
        &tmp.path().join("mixed"),
        None,
        false,
        &Quiet,
    )
    .unwrap_err();
    assert!(e.to_string().contains("differ in sources"), "{e}");
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_build_begun_with_the_earlier_default_budget_keeps_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let docs = collection(tmp.path(), 600);
    let earlier = Encoder::load(
        &testkit::s(&testkit::tiny_bert()),
        &EncoderOptions {
            batch_tokens: Some(4096),
            ..Default::default()
        },
    )
    .unwrap();
    let enc = encoder();
    assert_eq!(enc.batch_tokens(), 1024);
    assert_eq!(enc.earlier_default_batch_tokens(), Some(4096));
    assert_eq!(earlier.earlier_default_batch_tokens(), None);
    let clean = tmp.path().join("clean");
    build(&earlier, &options(&docs, &clean), &Quiet).unwrap();

    // Begun with 4096 (as by an earlier version), stopped, then run again without a budget.
    let out = tmp.path().join("resumed");
    let opts = options(&docs, &out);
    stopped_at("encode", || build(&earlier, &opts, &Quiet)).unwrap_err();
    let rec = Recorder::default();
    let m = build(&enc, &opts, &rec).unwrap();
    let said = rec.0.lock().unwrap().join("\n");
    assert!(said.contains("made with 4096 batch tokens"), "{said}");
    assert!(said.contains("resuming after 128 of 600 rows"), "{said}");
    assert_eq!(m.count, 600);
    assert_eq!(data(&out, layout::VECTORS), data(&clean, layout::VECTORS));
    let clean_settings = crate::store::manifest::Manifest::read(&clean)
        .unwrap()
        .settings;
    assert_eq!(m.settings, clean_settings);
    let before = std::fs::read(out.join(layout::MANIFEST)).unwrap();

    // Finished with 4096: the same command finds it complete and changes nothing.
    let rec = Recorder::default();
    build(&enc, &opts, &rec).unwrap();
    assert!(
        rec.0
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("already complete")),
        "{:?}",
        rec.0.lock().unwrap()
    );
    assert_eq!(std::fs::read(out.join(layout::MANIFEST)).unwrap(), before);

    // --force starts over with this version's budget: other settings, the same rows.
    let forced = build(
        &enc,
        &BuildOptions {
            force: true,
            ..opts.clone()
        },
        &Quiet,
    )
    .unwrap();
    assert_ne!(forced.settings, m.settings);
    assert_eq!(forced.count, 600);
    // A build in a new folder takes this version's budget too.
    let fresh = build(&enc, &options(&docs, &tmp.path().join("fresh")), &Quiet).unwrap();
    assert_eq!(fresh.settings, forced.settings);
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_damaged_manifest_keeps_every_generation() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let docs = collection(tmp.path(), 200);
    let enc = encoder();
    let out = tmp.path().join("index");
    let opts = options(&docs, &out);
    build(&enc, &opts, &Quiet).unwrap();
    let manifest = std::fs::read(out.join(layout::MANIFEST)).unwrap();
    let vectors = data(&out, layout::VECTORS);
    let gens = layout::generations(&out).unwrap();
    // An unfinished build replacing it beside it, stopped after its first chunk.
    std::fs::create_dir(tmp.path().join("other")).unwrap();
    let other = collection(&tmp.path().join("other"), 300);
    let replace = BuildOptions {
        force: true,
        ..options(&other, &out)
    };
    stopped_at("encode", || build(&enc, &replace, &Quiet)).unwrap_err();
    let with_unfinished = layout::generations(&out).unwrap();
    assert_eq!(with_unfinished.len(), 2);

    // The manifest cut short: the build reports it, and no generation goes.
    std::fs::write(out.join(layout::MANIFEST), &manifest[..manifest.len() / 2]).unwrap();
    let e = build(&enc, &opts, &Quiet).unwrap_err();
    assert!(e.to_string().contains(layout::MANIFEST), "{e}");
    assert_eq!(layout::generations(&out).unwrap(), with_unfinished);
    // Nor does a graph build or a merge into it.
    let params = crate::search::hnsw::HnswParams::default();
    rebuild_graph(&out, params, &Quiet).unwrap_err();
    merge(&[tmp.path().join("none")], &out, None, false, &Quiet).unwrap_err();
    assert_eq!(layout::generations(&out).unwrap(), with_unfinished);

    // The manifest put back, the index is whole again.
    std::fs::write(out.join(layout::MANIFEST), &manifest).unwrap();
    assert!(verify(&out).unwrap().is_empty());
    assert_eq!(data(&out, layout::VECTORS), vectors);
    assert!(layout::generations(&out).unwrap().contains(&gens[0]));

    // --force replaces a damaged index.
    std::fs::write(out.join(layout::MANIFEST), b"{").unwrap();
    let m = build(
        &enc,
        &BuildOptions {
            force: true,
            ..opts.clone()
        },
        &Quiet,
    )
    .unwrap();
    assert_eq!(m.count, 200);
    assert!(verify(&out).unwrap().is_empty());
    assert_eq!(data(&out, layout::VECTORS), vectors);
}

/// The one generation folder of an unfinished build in `out`.
fn unfinished(out: &Path) -> PathBuf {
    let gens = layout::generations(out).unwrap();
    assert_eq!(gens.len(), 1, "{gens:?}");
    out.join(layout::generation_name(gens[0]))
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

/// Edits the progress record of the unfinished build in `out`.
fn edit_record(out: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = unfinished(out).join(layout::PROGRESS);
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut record);
    std::fs::write(&p, serde_json::to_vec(&record).unwrap()).unwrap();
}

/// What a build said, one message a line.
fn said(rec: &Recorder) -> String {
    rec.0.lock().unwrap().join("\n")
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_damaged_partial_matrix_resumes_after_its_last_good_chunk() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let docs = collection(tmp.path(), 600);
    let enc = encoder();
    let clean = tmp.path().join("clean");
    build(&enc, &options(&docs, &clean), &Quiet).unwrap();
    let row = 4 * enc.dim();
    let out = tmp.path().join("resumed");
    let opts = options(&docs, &out);

    // Stopped with all five chunks synced, the matrix unfinished; a byte of chunk 3 flipped.
    stopped_at("matrix-finish", || build(&enc, &opts, &Quiet)).unwrap_err();
    let partial = unfinished(&out).join(layout::PARTIAL);
    flip_byte(&partial, npy::HEADER_LEN + 300 * row + 7);
    let rec = Recorder::default();
    stopped_at("matrix-finish", || build(&enc, &opts, &rec)).unwrap_err();
    let s = said(&rec);
    assert!(
        s.contains(&format!(
            "{}: chunk 3 (rows 256..384) does not match the checksum recorded when it was written",
            partial.display()
        )) && s.contains("resuming after 256 of 600 rows"),
        "{s}"
    );

    // A non-finite value in chunk 4, its checksum made to match.
    let mut bytes = std::fs::read(&partial).unwrap();
    let at = npy::HEADER_LEN + 400 * row;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let chunk4 = &bytes[npy::HEADER_LEN + 384 * row..npy::HEADER_LEN + 512 * row];
    let sum = crate::store::manifest::sha256_bytes(chunk4);
    std::fs::write(&partial, &bytes).unwrap();
    edit_record(&out, |r| r["chunk_sha256"][3] = sum.into());
    let rec = Recorder::default();
    let m = build(&enc, &opts, &rec).unwrap();
    let s = said(&rec);
    assert!(
        s.contains("chunk 4 (rows 384..512) holds a non-finite value (row 400, dimension 0)")
            && s.contains("resuming after 384 of 600 rows"),
        "{s}"
    );
    assert_eq!(m.count, 600);
    assert_eq!(data(&out, layout::VECTORS), data(&clean, layout::VECTORS));
    assert!(verify(&out).unwrap().is_empty());
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_damaged_finished_matrix_or_graph_is_made_again() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let docs = collection(tmp.path(), 600);
    let enc = encoder();
    // One thread, so that every graph of these vectors is the same.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let with_graph = |out: &Path| BuildOptions {
        hnsw: Some(crate::search::hnsw::HnswParams {
            m: 8,
            ef_construction: 40,
        }),
        ..options(&docs, out)
    };
    let run = |opts: &BuildOptions, rec: &Recorder| pool.install(|| build(&enc, opts, rec));
    let clean = tmp.path().join("clean");
    run(&with_graph(&clean), &Recorder::default()).unwrap();
    let row = 4 * enc.dim();
    let out = tmp.path().join("resumed");
    let opts = with_graph(&out);

    // The matrix finished, a byte of its chunk 4 flipped: kept up to chunk 3, then encoded on.
    stopped_at("matrix-renamed", || run(&opts, &Recorder::default())).unwrap_err();
    let vectors = unfinished(&out).join(layout::VECTORS);
    flip_byte(&vectors, npy::HEADER_LEN + 400 * row + 2);
    let rec = Recorder::default();
    stopped_at("manifest", || run(&opts, &rec)).unwrap_err();
    let s = said(&rec);
    assert!(
        s.contains(&format!(
            "{}: chunk 4 (rows 384..512) does not match the checksum recorded when it was written",
            vectors.display()
        )) && s.contains("resuming after 384 of 600 rows"),
        "{s}"
    );

    // The graph saved, then a byte of it flipped: built again.
    let graph = unfinished(&out).join(layout::GRAPH);
    let len = std::fs::metadata(&graph).unwrap().len() as usize;
    flip_byte(&graph, len / 2);
    let rec = Recorder::default();
    stopped_at("manifest", || run(&opts, &rec)).unwrap_err();
    let s = said(&rec);
    assert!(
        s.contains(&format!(
            "{}: does not match the checksum recorded when it was written: building the graph again",
            graph.display()
        )) && !s.contains("resuming after"),
        "{s}"
    );

    // A record of the graph without its checksum (an earlier version's): built again too.
    flip_byte(&graph, len / 3);
    edit_record(&out, |r| {
        r.as_object_mut().unwrap().remove("graph_sha256");
    });
    let rec = Recorder::default();
    run(&opts, &rec).unwrap();
    let s = said(&rec);
    assert!(
        s.contains("graph.hnsw: recorded by an earlier version, without its checksum"),
        "{s}"
    );
    for name in [
        layout::VECTORS,
        layout::GRAPH,
        layout::DOCIDS,
        layout::OFFSETS,
    ] {
        assert!(data(&out, name) == data(&clean, name), "{name}");
    }
    assert!(verify(&out).unwrap().is_empty());
}

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_record_without_checksums_is_not_trusted() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let docs = collection(tmp.path(), 400);
    let enc = encoder();
    let clean = tmp.path().join("clean");
    build(&enc, &options(&docs, &clean), &Quiet).unwrap();
    let out = tmp.path().join("resumed");
    let opts = options(&docs, &out);
    // Stopped with the matrix unfinished; its record as an earlier version wrote it (rows done, no
    // checksums), and a byte of the matrix flipped, which nothing could tell.
    stopped_at("matrix-finish", || build(&enc, &opts, &Quiet)).unwrap_err();
    edit_record(&out, |r| {
        r.as_object_mut().unwrap().remove("chunk_sha256");
    });
    let partial = unfinished(&out).join(layout::PARTIAL);
    flip_byte(&partial, npy::HEADER_LEN + 4 * enc.dim() * 200 + 1);
    let rec = Recorder::default();
    build(&enc, &opts, &rec).unwrap();
    let s = said(&rec);
    assert!(
        s.contains(
            "recorded by an earlier version, without checksums of the vectors: encoding them again"
        ) && !s.contains("resuming after"),
        "{s}"
    );
    assert_eq!(data(&out, layout::VECTORS), data(&clean, layout::VECTORS));
    assert!(verify(&out).unwrap().is_empty());
}

/// Positions of each stage, as reported.
#[derive(Default)]
struct Positions(Mutex<Vec<(String, u64)>>);

impl Progress for Positions {
    fn stage(&self, name: &str, _: Option<u64>) {
        self.0.lock().unwrap().push((name.to_string(), u64::MAX));
    }
    fn set(&self, pos: u64) {
        let mut v = self.0.lock().unwrap();
        let name = v.last().map(|(n, _)| n.clone()).unwrap_or_default();
        v.push((name, pos));
    }
    fn finish_stage(&self) {}
    fn message(&self, _: &str) {}
}

/// The encoding stage reports positions within a chunk, as its forward passes finish, not only at
/// the chunk's end: one chunk of a slow model takes minutes. The vectors are those of a quiet build.
#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn encoding_reports_progress_within_a_chunk() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let docs = collection(tmp.path(), 300);
    let enc = encoder();
    let opts = BuildOptions {
        chunk_rows: 4096,
        ..options(&docs, &tmp.path().join("reported"))
    };
    let rec = Positions::default();
    build(&enc, &opts, &rec).unwrap();
    let quiet = tmp.path().join("quiet");
    let quiet_opts = BuildOptions {
        out: quiet.clone(),
        ..opts.clone()
    };
    build(&enc, &quiet_opts, &Quiet).unwrap();
    assert_eq!(
        data(&opts.out, layout::VECTORS),
        data(&quiet, layout::VECTORS)
    );
    let seen: Vec<u64> = rec
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, p)| n == "encoding" && *p != u64::MAX)
        .map(|(_, p)| *p)
        .collect();
    let within = seen.iter().filter(|&&p| p > 0 && p < 300).count();
    assert!(within >= 2, "one chunk of 300 rows: {seen:?}");
    assert_eq!(seen.iter().max(), Some(&300), "{seen:?}");
}
