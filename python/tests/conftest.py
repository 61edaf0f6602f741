"""Shared paths and fixtures of the Python package's tests.

`../shared` (beside the checkout; SIMLM_SHARED elsewhere) holds the fixtures and data; tests that need
it are skipped, with the reason, when it is missing. The command-line tools the tests compare with are
looked for in $SIMLM_BIN, then the checkout's target/release and target/debug.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SIMLM_SHARED", REPO.parent / "shared"))
TINY = SHARED / "fixtures" / "tiny-bert"
POOL = SHARED / "data" / "msmarco" / "pool" / "collection.tsv"
MSMARCO = SHARED / "data" / "msmarco"
MINILM = Path(os.environ.get("SIMLM_MINILM", REPO / "models" / "all-MiniLM-L6-v2"))

needs_shared = pytest.mark.skipif(
    not (SHARED / "fixtures").is_dir() or not (SHARED / "data").is_dir(),
    reason=f"needs ../shared (the fixtures and data beside the checkout): {SHARED} is missing",
)
needs_minilm = pytest.mark.skipif(
    not (MINILM / "model.safetensors").is_file(),
    reason=f"needs all-MiniLM-L6-v2 at {MINILM} (scripts/demo.sh fetches it; SIMLM_MINILM elsewhere)",
)


def find_bin(name):
    dirs = []
    if os.environ.get("SIMLM_BIN"):
        dirs.append(Path(os.environ["SIMLM_BIN"]))
    dirs += [REPO / "target" / "release", REPO / "target" / "debug"]
    for d in dirs:
        if (d / name).is_file():
            return str(d / name)
    return shutil.which(name)


def tool(name):
    """The path of a command-line tool, or skip the test."""
    p = find_bin(name)
    if p is None:
        pytest.skip(f"needs {name} (cargo build --workspace, or SIMLM_BIN=folder)")
    return p


def run_tool(name, *args):
    p = subprocess.run([tool(name), *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, f"{name} {' '.join(map(str, args))}: {p.stderr}"
    return p


def pool_head(n, out):
    """The pool's first n passages as a TSV collection at out."""
    with open(POOL, encoding="utf-8") as f, open(out, "w", encoding="utf-8") as o:
        for i, line in enumerate(f):
            if i >= n:
                break
            o.write(line)
    return out


def read_tsv_texts(path, n):
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= n:
                break
            pid, text = line.rstrip("\n").split("\t", 1)
            out.append((pid, text))
    return out


def write_jsonl(path, texts, titles=None):
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            d = {"text": t}
            if titles is not None and titles[i] is not None:
                d["title"] = titles[i]
            f.write(json.dumps(d, ensure_ascii=False) + "\n")


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory):
    """An index of the pool's first 2,000 passages with the tiny BERT (simlm format, graph)."""
    if not POOL.is_file():
        pytest.skip(f"needs {POOL}")
    import simlm

    d = tmp_path_factory.mktemp("tiny")
    coll = pool_head(2000, d / "collection.tsv")
    out = d / "idx"
    simlm.build_index(collection=coll, out=out, model=TINY, threads=2)
    return out
