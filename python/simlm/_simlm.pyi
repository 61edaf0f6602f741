"""Type stubs of the native module simlm._simlm (re-exported by simlm)."""

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

_Path = Union[str, "os.PathLike[str]"]

DEFAULT_MODEL: str
__version__: str

class IndexError(Exception):
    """An index folder that cannot be used as it is (not Python's built-in IndexError)."""

class CorruptIndexError(IndexError):
    """A file of the index is damaged or disagrees with the manifest."""

class LockedIndexError(IndexError):
    """Another process is writing the index folder."""

class Encoder:
    """A BERT-family bi-encoder: texts in, L2-normalised float32 vectors out."""

    def __init__(
        self,
        model: _Path,
        format: str = "simlm",
        pooling: Optional[str] = None,
        precision: Optional[str] = None,
        device: str = "cpu",
        batch_tokens: Optional[int] = None,
        threads: Optional[int] = None,
    ) -> None: ...
    def encode(
        self,
        texts: Sequence[str],
        kind: str = "query",
        titles: Optional[Sequence[Optional[str]]] = None,
    ) -> npt.NDArray[np.float32]:
        """(len(texts), dim) float32, each row of unit length; as `simlm-index embed`."""
    @property
    def dim(self) -> int: ...
    @property
    def format(self) -> str: ...
    @property
    def pooling(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def batch_tokens(self) -> int: ...

class Index:
    """An index folder opened read-only for search."""

    def __init__(
        self,
        path: _Path,
        model: Optional[_Path] = None,
        device: str = "cpu",
        threads: Optional[int] = None,
    ) -> None: ...
    def search(
        self,
        queries: npt.ArrayLike,
        k: int = 10,
        exact: bool = False,
        ef: Optional[int] = None,
    ) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """(n, k) scores and rows, best first; padded with -inf / -1 past the index's size."""
    def search_text(
        self,
        queries: Sequence[str],
        k: int = 10,
        exact: bool = False,
        ef: Optional[int] = None,
    ) -> List[List[Dict[str, Any]]]:
        """Hits as dicts with docid, score, rank (1-based) and row."""
    def docid(self, row: int) -> str: ...
    def passage(self, row: int) -> Dict[str, Optional[str]]:
        """{"id", "title", "text"} read from the collection."""
    @property
    def vectors(self) -> npt.NDArray[Any]:
        """Read-only (count, dim) view over the memory-mapped matrix (float32 or float16)."""
    @property
    def count(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def dtype(self) -> str: ...
    @property
    def has_graph(self) -> bool: ...
    @property
    def path(self) -> "os.PathLike[str]":
        """The index folder (a pathlib.Path)."""
    @property
    def manifest(self) -> Dict[str, Any]: ...
    def __len__(self) -> int: ...

def build_index(
    collection: _Path,
    out: _Path,
    model: _Path = ...,
    *,
    format: str = "simlm",
    pooling: Optional[str] = None,
    precision: Optional[str] = None,
    device: str = "cpu",
    batch_tokens: Optional[int] = None,
    threads: Optional[int] = None,
    titles: Optional[_Path] = None,
    fix_encoding: bool = False,
    skip_bad: bool = False,
    dtype: str = "f32",
    hnsw: bool = True,
    m: int = 32,
    ef_construction: int = 200,
    shard: Union[None, str, Tuple[int, int]] = None,
    force: bool = False,
    chunk_rows: int = 4096,
    progress: bool = False,
) -> Dict[str, Any]:
    """Encode a collection into an index folder (as `simlm-index build`); returns the manifest."""

def import_vectors(
    vectors: Union[_Path, npt.ArrayLike],
    out: _Path,
    *,
    ids: Union[None, _Path, Sequence[str]] = None,
    collection: Optional[_Path] = None,
    hnsw: bool = True,
    m: int = 32,
    ef_construction: int = 200,
    force: bool = False,
    threads: Optional[int] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """An index from vectors encoded elsewhere (as `simlm-index import`); returns the manifest."""

def evaluate(
    qrels: Union[_Path, Dict[str, Dict[str, int]]],
    run: Union[_Path, Dict[str, Dict[str, float]]],
    measures: Optional[Sequence[str]] = None,
    rel_level: int = 1,
) -> Dict[str, Dict[str, float]]:
    """Per-query measures, as pytrec_eval's RelevanceEvaluator.evaluate."""
