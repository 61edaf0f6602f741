//! Test support shared by the workspace's test files: where the shared fixtures and data are, the
//! Python with the reference tools, and small helpers for running the binaries on temporary files.

pub mod http;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `../shared` beside the checkout (override with SIMLM_SHARED): fixtures and data.
pub fn shared() -> PathBuf {
    std::env::var_os("SIMLM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared"))
}

/// The tiny BERT fixture checkpoint.
pub fn tiny_bert() -> PathBuf {
    shared().join("fixtures/tiny-bert")
}

/// The Medline collection (1,033 docs, JSONL).
pub fn medline() -> PathBuf {
    shared().join("data/classic/med/docs.jsonl")
}

/// Medline's queries, `(id, text)`, in file order.
pub fn medline_queries() -> Vec<(String, String)> {
    std::fs::read_to_string(shared().join("data/classic/med/queries.tsv"))
        .unwrap()
        .lines()
        .map(|l| {
            let (a, b) = l.split_once('\t').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect()
}

/// The Python that has the reference tools (SIMLM_PYTHON, else the repository's .venv, else python3).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SIMLM_PYTHON") {
        return p.into();
    }
    let venv = repo_root().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

/// Writes `content` to `dir/name`; returns the path.
pub fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// A command's standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Runs `cmd` with `input` on its standard input (written from another thread, so that a large input
/// cannot block on a full pipe; a command that stops reading early gives a broken pipe, ignored) and
/// its standard output and error captured.
pub fn with_stdin(mut cmd: Command, input: Vec<u8>) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    o
}

/// Asserts that a command succeeded, showing its standard error when it did not.
pub fn ok(o: Output) -> Output {
    assert!(o.status.success(), "failed: {}", stderr(&o));
    o
}

/// A path as an owned string, for argument lists.
pub fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Copies a folder tree.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// `bytes` gzip-compressed.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}
