"""The Python package against the command-line tools and the references (pytrec_eval, the fixtures)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import simlm
from conftest import (
    MINILM,
    MSMARCO,
    POOL,
    TINY,
    SHARED,
    needs_minilm,
    needs_shared,
    pool_head,
    read_tsv_texts,
    run_tool,
    write_jsonl,
)

FIXTURE_QUERIES = ["what is qa", "how many calories are in an egg", "who wrote hamlet"]


@pytest.fixture
def ctrl_c():
    """Python's own SIGINT handler for the test: a process started with SIGINT ignored (a background
    job of a non-interactive shell, as CI may run the tests) would otherwise never see Ctrl-C."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def fixture_lines(name):
    with open(SHARED / "fixtures" / name, encoding="utf-8") as f:
        return [json.loads(l) for l in f]


# ---------------------------------------------------------------- encoder


@needs_shared
def test_encode_matches_the_fixture_and_embed_tiny(tmp_path):
    enc = simlm.Encoder(TINY, threads=2)
    assert enc.dim == 32 and enc.format == "simlm" and enc.pooling == "cls"
    lines = fixture_lines("tiny-bert.expected.jsonl")
    for kind in ("query", "passage"):
        sel = [l for l in lines if l["kind"] == kind]
        texts = [l["text"] for l in sel]
        titles = [l.get("title") for l in sel] if kind == "passage" else None
        v = enc.encode(texts, kind=kind, titles=titles)
        assert v.dtype == np.float32 and v.shape == (len(texts), 32)
        assert v.flags.c_contiguous
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(v, np.array([l["cls"] for l in sel]), atol=2e-5)
        write_jsonl(tmp_path / f"{kind}.jsonl", texts, titles)
        run_tool(
            "simlm-index", "embed", "--model", TINY, "--kind", kind,
            "--input", tmp_path / f"{kind}.jsonl", "--out", tmp_path / f"{kind}.npy",
        )
        assert np.array_equal(v, np.load(tmp_path / f"{kind}.npy")), kind


@needs_shared
@needs_minilm
def test_encode_matches_embed_minilm(tmp_path):
    enc = simlm.Encoder(MINILM, format="sentence-transformers", precision="f32", threads=2)
    assert enc.dim == 384 and enc.pooling == "mean"
    texts = [t for _, t in read_tsv_texts(POOL, 64)]
    for kind, inputs in (("query", FIXTURE_QUERIES), ("passage", texts)):
        v = enc.encode(inputs, kind=kind)
        write_jsonl(tmp_path / "in.jsonl", inputs)
        run_tool(
            "simlm-index", "embed", "--model", MINILM, "--format", "sentence-transformers",
            "--kind", kind, "--input", tmp_path / "in.jsonl", "--out", tmp_path / "out.npy",
        )
        assert np.array_equal(v, np.load(tmp_path / "out.npy")), kind


@needs_shared
def test_encode_arguments():
    enc = simlm.Encoder(TINY)
    assert enc.encode([], kind="query").shape == (0, 32)
    with pytest.raises(ValueError, match="unknown kind"):
        enc.encode(["a"], kind="sentence")
    with pytest.raises(ValueError, match="titles"):
        enc.encode(["a", "b"], kind="passage", titles=["t"])
    with pytest.raises(TypeError):
        enc.encode("a bare string, not a list")
    with pytest.raises(FileNotFoundError):
        simlm.Encoder("/nonexistent/model-folder")
    with pytest.raises(ValueError, match="precision"):
        simlm.Encoder(TINY, precision="f8")
    assert "encode(" in simlm.Encoder.encode.__doc__


# ---------------------------------------------------------------- index and search


def batch_run(index, queries_tsv, k, out, *extra):
    run_tool("simlm-search", "batch", "--index", index, "--queries", queries_tsv, "--k", k,
             "--out", out, *extra)
    runs = {}
    with open(out) as f:
        for line in f:
            qid, _, docid, rank, score, _ = line.split()
            runs.setdefault(qid, []).append((docid, float(score)))
    return runs


@needs_shared
def test_search_matches_simlm_search_batch(tiny_index, tmp_path):
    idx = simlm.Index(tiny_index, threads=2)
    assert len(idx) == 2000 and idx.dim == 32 and idx.has_graph
    queries = read_tsv_texts(MSMARCO / "dl19.queries.tsv", 43)
    (tmp_path / "q.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in queries))
    enc = simlm.Encoder(TINY)
    qv = enc.encode([t for _, t in queries], kind="query")
    for extra, kw in (
        (["--exact"], {"exact": True}),
        (["--ef", "64"], {"ef": 64}),
        ([], {}),
    ):
        want = batch_run(tiny_index, tmp_path / "q.tsv", 100, tmp_path / "run.trec", *extra)
        scores, rows = idx.search(qv, k=100, **kw)
        assert scores.shape == (43, 100) and scores.dtype == np.float32
        assert rows.shape == (43, 100) and rows.dtype == np.int64
        hits = idx.search_text([t for _, t in queries], k=100, **kw)
        for i, (qid, _) in enumerate(queries):
            got = [(idx.docid(r), float(s)) for s, r in zip(scores[i], rows[i])]
            assert [d for d, _ in got] == [d for d, _ in want[qid]], (qid, extra)
            np.testing.assert_allclose([s for _, s in got], [s for _, s in want[qid]], atol=6e-7)
            assert [h["docid"] for h in hits[i]] == [d for d, _ in got]
            assert [h["rank"] for h in hits[i]] == list(range(1, 101))
            assert [h["row"] for h in hits[i]] == list(rows[i])
            assert [h["score"] for h in hits[i]] == [float(s) for s in scores[i]]


@needs_shared
def test_passage_docid_vectors(tiny_index):
    idx = simlm.Index(tiny_index)
    first = read_tsv_texts(POOL, 3)
    for row, (pid, text) in enumerate(first):
        assert idx.docid(row) == pid
        p = idx.passage(row)
        assert p["id"] == pid and p["text"] == text and p["title"] is None
    with pytest.raises(IndexError):  # Python's built-in, as for a list
        idx.docid(2000)
    with pytest.raises(IndexError):
        idx.passage(-1)
    v = idx.vectors
    assert v.shape == (2000, 32) and v.dtype == np.float32
    assert not v.flags.writeable and not v.flags.owndata
    files = Path(tiny_index) / idx.manifest["data"]
    assert np.array_equal(v, np.load(files / "vectors.npy"))
    with pytest.raises(ValueError):
        v[0, 0] = 1.0
    # The view keeps the index alive.
    del idx
    assert float(np.abs(v).sum()) > 0


@needs_shared
def test_query_arrays_converted_or_refused(tiny_index):
    idx = simlm.Index(tiny_index)
    q = simlm.Encoder(TINY).encode(FIXTURE_QUERIES, kind="query")
    want = idx.search(q, k=20, exact=True)
    # float64, Fortran order, a strided view, a list: converted once, the same results.
    for other in (q.astype(np.float64), np.asfortranarray(q), np.repeat(q, 2, axis=0)[::2],
                  q.tolist()):
        got = idx.search(other, k=20, exact=True)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    with pytest.raises(ValueError, match="dimensions"):
        idx.search(np.ones((2, 16), np.float32))
    with pytest.raises(ValueError, match="2-d"):
        idx.search(q[None])
    with pytest.raises(ValueError, match="2-d"):
        idx.search(q[0])
    bad = q.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="query 1 has a value that is not a finite number"):
        idx.search(bad)
    with pytest.raises(ValueError, match="all zeros"):
        idx.search(np.zeros((1, 32), np.float32))
    with pytest.raises(ValueError, match="numbers"):
        idx.search(np.array([["a"] * 32]))
    with pytest.raises(ValueError, match="k must"):
        idx.search(q, k=0)
    with pytest.raises(ValueError, match="one of them"):
        idx.search(q, exact=True, ef=10)
    s, r = idx.search(q[:0], k=5)
    assert s.shape == (0, 5) and r.shape == (0, 5)


@needs_shared
def test_k_beyond_the_index_is_padded_like_faiss(tmp_path):
    v = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    simlm.import_vectors(v, out=tmp_path / "idx", hnsw=False)
    idx = simlm.Index(tmp_path / "idx")
    s, r = idx.search(v[:2], k=7)
    assert (r[:, 5:] == -1).all() and np.isneginf(s[:, 5:]).all()
    assert sorted(r[0, :5]) == [0, 1, 2, 3, 4]


@needs_shared
def test_threads_searching_at_once_agree_with_one(tiny_index):
    idx = simlm.Index(tiny_index)
    q = np.random.default_rng(1).standard_normal((400, 32)).astype(np.float32)
    for kw in ({"exact": True}, {"ef": 64}):
        seq = [idx.search(q[i:i + 10], k=50, **kw) for i in range(0, 400, 10)]
        with ThreadPoolExecutor(8) as ex:
            par = list(ex.map(lambda i: idx.search(q[i:i + 10], k=50, **kw), range(0, 400, 10)))
        for a, b in zip(seq, par):
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@needs_shared
def test_the_gil_is_released_and_ctrl_c_interrupts_a_search(tiny_index, ctrl_c):
    idx = simlm.Index(tiny_index)
    q = np.random.default_rng(4).standard_normal((60000, 32)).astype(np.float32)
    ticks, stop = [0], [False]

    def count():
        while not stop[0]:
            ticks[0] += 1

    t = threading.Thread(target=count)
    t.start()
    idx.search(q[:20000], k=10, exact=True)
    stop[0] = True
    t.join()
    # With the GIL held through the search, the counting thread could not have run at all.
    assert ticks[0] > 1000, ticks
    timer = threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT))
    began = time.time()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        idx.search(q, k=10, exact=True)
    assert time.time() - began < 0.2 + 1.0


# ---------------------------------------------------------------- build and import


def gen_files(out):
    """The index's files, byte for byte, but the graph: a graph built on several threads depends on
    their timing (the command-line tool's own resume tests compare the same three files)."""
    m = json.loads((Path(out) / "manifest.json").read_text())
    d = Path(out) / m["data"]
    return {f["path"]: (d / f["path"]).read_bytes() for f in m["files"] if f["path"] != "graph.hnsw"}


@needs_shared
def test_build_index_equals_simlm_index_build(tmp_path):
    coll = pool_head(600, tmp_path / "c.tsv")
    m = simlm.build_index(collection=coll, out=tmp_path / "py", model=TINY, chunk_rows=128,
                          m=16, ef_construction=100, dtype="f16")
    assert m["count"] == 600 and m["dtype"] == "f16" and m["hnsw"] == {"m": 16, "ef_construction": 100}
    run_tool("simlm-index", "build", "--model", TINY, "--collection", coll, "--out",
             tmp_path / "cli", "--chunk-rows", 128, "--hnsw-m", 16, "--ef-construction", 100,
             "--dtype", "f16")
    assert gen_files(tmp_path / "py") == gen_files(tmp_path / "cli")
    idx = simlm.Index(tmp_path / "py")
    assert idx.vectors.dtype == np.float16 and idx.dtype == "float16"
    # Built again with the same settings: nothing to do; a finished index is not replaced.
    simlm.build_index(collection=coll, out=tmp_path / "py", model=TINY, chunk_rows=128,
                      m=16, ef_construction=100, dtype="f16")
    with pytest.raises(ValueError, match="force"):
        simlm.build_index(collection=coll, out=tmp_path / "py", model=TINY)
    with pytest.raises(FileNotFoundError):
        simlm.build_index(collection=tmp_path / "missing.tsv", out=tmp_path / "x", model=TINY)
    with pytest.raises(ValueError):
        simlm.build_index(collection=coll, out=tmp_path / "x", model=TINY, m=0)


@needs_shared
def test_import_vectors_from_array_and_file(tmp_path):
    rng = np.random.default_rng(2)
    v = rng.standard_normal((300, 24)).astype(np.float32)
    coll = pool_head(300, tmp_path / "c.tsv")
    m = simlm.import_vectors(v, out=tmp_path / "a", collection=coll)
    assert m["count"] == 300 and m["dim"] == 24
    np.save(tmp_path / "v.npy", v)
    run_tool("simlm-index", "import", "--vectors", tmp_path / "v.npy", "--out", tmp_path / "b",
             "--collection", coll)
    a, b = gen_files(tmp_path / "a"), gen_files(tmp_path / "b")
    assert a == b
    idx = simlm.Index(tmp_path / "a")
    assert np.array_equal(idx.vectors, v)
    assert idx.passage(7)["id"] == idx.docid(7) == read_tsv_texts(coll, 8)[7][0]
    with pytest.raises(ValueError, match="no model"):
        idx.search_text(["what is qa"])
    # From a path, with ids given as a list; float64 converted; float16 kept.
    simlm.import_vectors(str(tmp_path / "v.npy"), out=tmp_path / "c", ids=[f"d{i}" for i in range(300)],
                         hnsw=False)
    assert simlm.Index(tmp_path / "c").docid(299) == "d299"
    simlm.import_vectors(v.astype(np.float64), out=tmp_path / "d", hnsw=False)
    assert np.array_equal(simlm.Index(tmp_path / "d").vectors, v)
    simlm.import_vectors(v.astype(np.float16), out=tmp_path / "e", hnsw=False)
    e = simlm.Index(tmp_path / "e")
    assert e.vectors.dtype == np.float16 and np.array_equal(e.vectors, v.astype(np.float16))
    with pytest.raises(ValueError, match="2-d"):
        simlm.import_vectors(v[0], out=tmp_path / "f")
    with pytest.raises(ValueError):
        simlm.import_vectors(v, out=tmp_path / "g", ids=["x"] * 3)


# ---------------------------------------------------------------- errors


@needs_shared
def test_missing_damaged_and_locked_indexes(tmp_path):
    with pytest.raises(FileNotFoundError):
        simlm.Index(tmp_path / "nothing")
    v = np.random.default_rng(3).standard_normal((100, 8)).astype(np.float32)
    simlm.import_vectors(v, out=tmp_path / "idx", hnsw=False)
    assert issubclass(simlm.CorruptIndexError, simlm.IndexError)
    assert issubclass(simlm.LockedIndexError, simlm.IndexError)
    # A writer holds the folder: another process takes the lock as simlm-index does (flock).
    lock = tmp_path / "idx" / "simlm-index.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         f"f = open({str(lock)!r}, 'a+')\n"
         "fcntl.flock(f, fcntl.LOCK_EX)\n"
         "f.truncate(0); f.write(str(os.getpid())); f.flush()\n"
         "print('locked', flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(simlm.LockedIndexError, match=f"PID {holder.pid}"):
            simlm.import_vectors(v, out=tmp_path / "idx", hnsw=False, force=True)
        # Readers do not take the lock.
        assert len(simlm.Index(tmp_path / "idx")) == 100
    finally:
        holder.kill()
        holder.wait()
    simlm.import_vectors(v, out=tmp_path / "idx", hnsw=False, force=True)
    # A flipped byte in the ids: opening refuses the index.
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    ids = tmp_path / "idx" / m["data"] / "docids.txt"
    b = bytearray(ids.read_bytes())
    b[3] ^= 0x01
    ids.write_bytes(bytes(b))
    with pytest.raises(simlm.CorruptIndexError, match="docids.txt"):
        simlm.Index(tmp_path / "idx")
    # A changed manifest.
    ids.write_bytes(bytes(b[:3]) + bytes([b[3] ^ 0x01]) + bytes(b[4:]))
    simlm.Index(tmp_path / "idx")
    mf = tmp_path / "idx" / "manifest.json"
    mf.write_text(mf.read_text().replace('"count": 100', '"count": 99'))
    with pytest.raises(simlm.IndexError, match="manifest.json"):
        simlm.Index(tmp_path / "idx")


# ---------------------------------------------------------------- evaluation


@needs_shared
def test_evaluate_equals_pytrec_eval():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    qrels_path = MSMARCO / "dl19.qrels.txt"
    run_path = MSMARCO / "runs" / "bm25.dl19.top100.trec"
    qrels, run = {}, {}
    for line in open(qrels_path):
        q, _, d, r = line.split()
        qrels.setdefault(q, {})[d] = int(r)
    for line in open(run_path):
        q, _, d, _, s, _ = line.split()
        run.setdefault(q, {})[d] = float(s)
    measures = ("recip_rank", "ndcg_cut_10", "recall_50", "recall_1000", "map", "P_10")
    want = pytrec_eval.RelevanceEvaluator(qrels, set(measures)).evaluate(run)
    for args in ((qrels_path, run_path), (str(qrels_path), str(run_path)), (qrels, run)):
        got = simlm.evaluate(*args, measures=measures)
        assert set(got) == set(want)
        for q in want:
            for m in measures:
                assert got[q][m] == pytest.approx(want[q][m], abs=1e-12), (q, m)
    for level in (2,):
        want = pytrec_eval.RelevanceEvaluator(qrels, {"recall_100"}, relevance_level=level).evaluate(run)
        got = simlm.evaluate(qrels, run, measures=["recall_100"], rel_level=level)
        for q in got:
            assert got[q]["recall_100"] == pytest.approx(want[q]["recall_100"], abs=1e-12)
    got = simlm.evaluate(qrels_path, run_path, measures=["MRR@10", "ndcg_cut.10"])
    assert set(next(iter(got.values()))) == {"MRR@10", "ndcg_cut_10"}
    with pytest.raises(ValueError, match="unknown metric"):
        simlm.evaluate(qrels, run, measures=["bpref"])
    with pytest.raises(FileNotFoundError):
        simlm.evaluate("/nonexistent/qrels", run)


# ---------------------------------------------------------------- Ctrl-C


@needs_shared
def test_keyboard_interrupt_stops_a_build_that_resumes_to_the_same_index(tmp_path, ctrl_c):
    coll = pool_head(12000, tmp_path / "c.tsv")
    out = tmp_path / "stopped"
    opts = dict(model=TINY, chunk_rows=200, m=8, ef_construction=40, threads=2)

    def interrupt_once_encoding():
        # Wait for the first chunk's progress record, then Ctrl-C this process.
        deadline = time.time() + 120
        while time.time() < deadline:
            for rec in out.glob("*/build.progress.json"):
                try:
                    if json.loads(rec.read_text()).get("rows_done", 0) > 0:
                        os.kill(os.getpid(), signal.SIGINT)
                        return
                except (ValueError, OSError):
                    pass
            time.sleep(0.005)

    t = threading.Thread(target=interrupt_once_encoding)
    t.start()
    began = time.time()
    with pytest.raises(KeyboardInterrupt):
        simlm.build_index(collection=coll, out=out, **opts)
    t.join()
    assert time.time() - began < 120
    rec = json.loads(next(out.glob("*/build.progress.json")).read_text())
    assert 0 < rec["rows_done"] < 12000, rec
    assert not (out / "manifest.json").exists()
    # The lock is free again: the same call resumes and finishes.
    simlm.build_index(collection=coll, out=out, **opts)
    simlm.build_index(collection=coll, out=tmp_path / "whole", **opts)
    assert gen_files(out) == gen_files(tmp_path / "whole")
