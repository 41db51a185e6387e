"""A sparse document index on disk: CSR arrays + doc ids + metadata, with checksums.

The same format serves as the cache of encoded corpora (so evaluating a checkpoint twice does not
re-encode) and as the index that `python -m src.index` builds and `python -m src.search` queries
(src/retrieval/index_folder.py).
"""

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from src.common.io import atomic_dir, atomic_write_json

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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class SparseIndex:
    matrix: sp.csr_matrix  # (num_docs, V) float32
    doc_ids: list[str]
    meta: dict = field(default_factory=dict)

    def save(self, folder: Path) -> Path:
        """Writes into a temporary sibling folder, then renames it into place: never half-written."""
        with atomic_dir(Path(folder), replace=True) as tmp:
            checksums = {}
            for name in _ARRAYS:
                np.save(tmp / f"{name}.npy", getattr(self.matrix, name))
                checksums[f"{name}.npy"] = _sha256(tmp / f"{name}.npy")
            (tmp / "doc_ids.json").write_text(json.dumps(self.doc_ids))
            checksums["doc_ids.json"] = _sha256(tmp / "doc_ids.json")
            atomic_write_json(
                tmp / "index.json",
                {
                    "version": INDEX_FORMAT_VERSION,
                    "shape": list(self.matrix.shape),
                    "nnz": int(self.matrix.nnz),
                    "checksums": checksums,
                    "meta": self.meta,
                },
            )
        return Path(folder)

    @classmethod
    def load(cls, folder: Path, verify: bool = True) -> "SparseIndex":
        folder = Path(folder)
        header_path = folder / "index.json"
        if not header_path.is_file():
            raise FileNotFoundError(f"{folder} is not an index: no index.json")
        header = json.loads(header_path.read_text())
        if verify:
            for name, digest in header["checksums"].items():
                if not (folder / name).is_file() or _sha256(folder / name) != digest:
                    raise CorruptIndex(f"{folder / name} does not match its checksum in {header_path}")
        arrays = [np.load(folder / f"{name}.npy") for name in _ARRAYS]
        matrix = sp.csr_matrix(tuple(arrays), shape=tuple(header["shape"]))
        return cls(matrix, json.loads((folder / "doc_ids.json").read_text()), header["meta"])
