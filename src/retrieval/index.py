"""A sparse document index on disk: CSR arrays + doc ids + metadata, with checksums.

The same format serves as the cache of encoded corpora (so evaluating a checkpoint twice does not
re-encode) and as the index that `python -m src.index` builds and `python -m src.search` queries
(src/retrieval/index_folder.py).
"""

import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import scipy.sparse as sp
import torch

from src.common.io import atomic_dir, atomic_write_json, sha256_file

log = logging.getLogger(__name__)
INDEX_FORMAT_VERSION = 1
_ARRAYS = ("data", "indices", "indptr")


class CorruptIndex(ValueError):
    """An index folder whose files do not match their recorded checksums."""


def prune(matrix: sp.csr_matrix, ratio: float) -> sp.csr_matrix:
    """Drops each row's weights below ratio x that row's maximum (OpenSearch's max-ratio pruning)."""
    if ratio <= 0:
        return matrix
    matrix = matrix.tocsr(copy=True)
    row_max = matrix.max(axis=1).toarray().ravel()  # (num_docs,)
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))  # row of each non-zero
    matrix.data[matrix.data < ratio * row_max[rows]] = 0
    matrix.eliminate_zeros()
    return matrix


def fingerprint(*parts: object) -> str:
    """A short stable hash of JSON-able parts, tensors and bytes (for cache keys)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(part.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(part, bytes):
            h.update(part)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def model_fingerprint(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer: the same weights give the same key wherever they came from."""
    state = model.state_dict()
    return fingerprint(*[x for name in sorted(state) for x in (name, state[name])])


def corpus_fingerprint(doc_ids: list[str], texts: list[str]) -> str:
    h = hashlib.sha256()
    for doc_id, text in zip(doc_ids, texts, strict=True):
        h.update(f"{doc_id}\t{text}\n".encode())
    return h.hexdigest()[:20]


def _npy_header(dtype: np.dtype, length: int) -> bytes:
    """The .npy (v1.0) header of a 1-D array; numpy pads it to 128 bytes for any length below 10^50."""
    out = io.BytesIO()
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (length,)}
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue()


class _NpyAppender:
    """A 1-D .npy file written piece by piece, never held whole: the header is written again with the final
    length on close, in place, since its size does not depend on the length."""

    def __init__(self, path: Path, dtype: type) -> None:
        self.dtype, self.length = np.dtype(dtype), 0
        self.file: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed by close(), after many appends)
        self.file.write(_npy_header(self.dtype, 0))

    def append(self, values: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())
        self.length += len(values)

    def close(self) -> None:
        self.file.seek(0)
        self.file.write(_npy_header(self.dtype, self.length))
        self.file.close()


@contextmanager
def index_writer(
    folder: Path, vocab_size: int, meta: dict | None = None, replace: bool = False
) -> Iterator[Callable[[sp.csr_matrix, list[str]], None]]:
    """Writes an index folder chunk by chunk: yields add(rows, doc_ids), rows a (n, vocab_size) CSR
    matrix whose documents follow the ones added before. Memory stays at one chunk (plus the ids), so a
    corpus need never be one matrix in memory. The folder appears whole when the block ends, or not at all
    (`src.common.io.atomic_dir`, which also says when an existing folder is replaced)."""
    with atomic_dir(Path(folder), replace=replace) as tmp:
        data, indices = _NpyAppender(tmp / "data.npy", np.float32), _NpyAppender(tmp / "indices.npy", np.int32)
        row_nnz: list[np.ndarray] = []
        doc_ids: list[str] = []

        def add(rows: sp.csr_matrix, ids: list[str]) -> None:
            rows = sp.csr_matrix(rows)
            if rows.shape != (len(ids), vocab_size):
                raise ValueError(f"rows of shape {rows.shape} for {len(ids)} ids and vocabulary {vocab_size}")
            data.append(rows.data)
            indices.append(rows.indices)
            row_nnz.append(np.diff(rows.indptr))
            doc_ids.extend(ids)

        try:
            yield add
        finally:
            data.close()
            indices.close()
        indptr = np.zeros(len(doc_ids) + 1, dtype=np.int64)  # int64: a big corpus passes 2^31 non-zeros
        np.cumsum(np.concatenate([np.zeros(0, np.int64), *row_nnz]), out=indptr[1:])
        np.save(tmp / "indptr.npy", indptr)
        (tmp / "doc_ids.json").write_text(json.dumps(doc_ids))
        checksums = {name: sha256_file(tmp / name) for name in (*(f"{a}.npy" for a in _ARRAYS), "doc_ids.json")}
        header = {
            "version": INDEX_FORMAT_VERSION,
            "shape": [len(doc_ids), vocab_size],
            "nnz": int(indptr[-1]),
            "checksums": checksums,
            "meta": meta or {},
        }
        atomic_write_json(tmp / "index.json", header)


@dataclass
class SparseIndex:
    matrix: sp.csr_matrix  # (num_docs, V) float32
    doc_ids: list[str]
    meta: dict = field(default_factory=dict)

    def save(self, folder: Path) -> Path:
        """Writes into a temporary sibling folder, then renames it into place: never half-written."""
        with index_writer(folder, self.matrix.shape[1], self.meta, replace=True) as add:
            add(self.matrix, self.doc_ids)
        return Path(folder)

    @classmethod
    def load(cls, folder: Path, verify: bool = True, mmap: bool = False) -> "SparseIndex":
        """mmap: the arrays stay in their files and pages come in as they are read (and can be dropped
        again under memory pressure), so a corpus larger than memory can be searched chunk by chunk."""
        folder = Path(folder)
        header_path = folder / "index.json"
        if not header_path.is_file():
            raise FileNotFoundError(f"{folder} is not an index: no index.json")
        header = json.loads(header_path.read_text())
        if verify:
            for name, digest in header["checksums"].items():
                if not (folder / name).is_file() or sha256_file(folder / name) != digest:
                    raise CorruptIndex(f"{folder / name} does not match its checksum in {header_path}")
        arrays = [np.load(folder / f"{name}.npy", mmap_mode="r" if mmap else None) for name in _ARRAYS]
        matrix = sp.csr_matrix(tuple(arrays), shape=tuple(header["shape"]), copy=False)
        return cls(matrix, json.loads((folder / "doc_ids.json").read_text()), header["meta"])
