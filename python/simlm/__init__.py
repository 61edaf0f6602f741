"""simlm: the simlm-rs dense-retrieval engine from Python.

Encode texts with BERT-family bi-encoders (SimLM, sentence-transformers), build or import an index
(a memory-mapped numpy matrix and an HNSW graph), search it exactly or through the graph with numpy
arrays in and out (like faiss), and evaluate runs with trec_eval's numbers (like pytrec_eval).

    import simlm
    enc = simlm.Encoder("models/all-MiniLM-L6-v2", format="sentence-transformers")
    q = enc.encode(["what is qa"], kind="query")        # (1, 384) float32, unit length
    idx = simlm.Index("idx/")
    scores, rows = idx.search(q, k=10)                   # (1, 10) float32 and int64
    idx.docid(rows[0, 0]), idx.passage(rows[0, 0])

Long calls release the GIL and run on a worker thread; Ctrl-C raises KeyboardInterrupt (a build stops
at its next chunk boundary and resumes when run again). Errors: FileNotFoundError for missing files,
ValueError for bad arguments or arrays, simlm.IndexError (CorruptIndexError, LockedIndexError) for
index folders that cannot be used. See docs/python.md in the repository.
"""

from ._simlm import (
    DEFAULT_MODEL,
    CorruptIndexError,
    Encoder,
    Index,
    IndexError,
    LockedIndexError,
    __version__,
    build_index,
    evaluate,
    import_vectors,
)

__all__ = [
    "DEFAULT_MODEL",
    "CorruptIndexError",
    "Encoder",
    "Index",
    "IndexError",
    "LockedIndexError",
    "__version__",
    "build_index",
    "evaluate",
    "import_vectors",
]
