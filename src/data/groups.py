"""The on-disk training format: a folder of JSON-lines shards of distillation groups plus a manifest.

    DIR/manifest.json        written last: its presence means the set is complete (see `Manifest`)
    DIR/<source>-00000.jsonl one group per line (see `GroupRecord`), `shard_size` groups per shard
    DIR/idf.json             token -> IDF over the sources' corpora, for the inference-free query side

Every line holds its texts, so training streams shards without loading any corpus, and each
shard is opened by byte offset: a set far larger than memory (MS MARCO's 500k queries) trains
with random access. Teacher scores are raw, one list per teacher; how they are combined
(per-batch min-max normalisation and averaging) is a training-time choice, `src.teachers.combine`.
"""

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from src.common.io import atomic_write_bytes, atomic_write_json
from src.data.beir import DataError

FORMAT = "l0-sparse-groups"
VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Candidate:
    """A group before the local teachers score it: what every source (BEIR mining, triples files,
    MS MARCO converters) hands to `src.data.prepare`. `given_scores` are scores that came with the data
    (a published teacher's), keyed by teacher name; the local teachers' scores are added to them."""

    query_id: str
    query: str
    doc_ids: list[str]  # positive first, then G-1 negatives
    docs: list[str]
    given_scores: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupRecord:
    """One training group: a query, its G documents (positive first) and each teacher's G scores."""

    query_id: str
    query: str
    doc_ids: list[str]
    docs: list[str]
    scores: dict[str, list[float]]  # teacher name -> G raw scores, in doc order

    def to_line(self) -> bytes:
        return (json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")

    @classmethod
    def parse(cls, line: bytes, where: str, group_size: int, teachers: list[str]) -> "GroupRecord":
        """`where` is "file:line" for the error message."""
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as err:  # bad JSON or UTF-8; integers past 4300 digits; deep nesting
            raise DataError(f"{where}: not a valid JSON line ({err})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in ("query_id", "query", "doc_ids", "docs", "scores") if k not in row]
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
        record = cls(**{k: row[k] for k in ("query_id", "query", "doc_ids", "docs", "scores")})
        if not (
            isinstance(record.query_id, str)
            and isinstance(record.query, str)
            and all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in (record.doc_ids, record.docs))
            and isinstance(record.scores, dict)
            and all(isinstance(s, list) and all(type(x) in (int, float) for x in s) for s in record.scores.values())
        ):  # checked here, or a wrong type surfaces mid-training as a TypeError from the collate function
            raise DataError(
                f'{where}: expected "query_id" and "query" strings, "doc_ids" and "docs" lists of strings, '
                '"scores" an object of lists of numbers'
            )
        if len(record.docs) != group_size or len(record.doc_ids) != group_size:
            raise DataError(f"{where}: {len(record.docs)} documents, the set's group size is {group_size}")
        if sorted(record.scores) != sorted(teachers):
            raise DataError(f"{where}: scores from {sorted(record.scores)}, the manifest names {sorted(teachers)}")
        if any(len(s) != group_size for s in record.scores.values()):
            raise DataError(f"{where}: every teacher needs {group_size} scores")
        return record


@dataclass
class ShardInfo:
    file: str
    rows: int
    sha256: str


@dataclass
class Manifest:
    group_size: int
    teachers: list[str]  # names, as keyed in every record's `scores`
    shards: list[ShardInfo]
    counts: dict[str, dict[str, int]]  # per source: what was kept and what was skipped, and why
    config: dict  # how the set was made (prepare's settings, or a converter's)
    format: str = FORMAT
    version: int = VERSION
    teacher_details: list[dict] = field(default_factory=list)  # each teacher's kind, model and settings

    def save(self, folder: Path) -> None:
        atomic_write_json(Path(folder) / MANIFEST, asdict(self))

    @classmethod
    def load(cls, folder: Path) -> "Manifest":
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: {folder} is not a complete prepared training set "
                f"(run `python -m src.prepare paths.output_dir={folder}`; an interrupted run resumes)"
            )
        data = path.read_bytes()
        try:
            raw = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as err:
            line_no = data[: err.start].count(b"\n") + 1
            raise DataError(f"{path}:{line_no}: not valid UTF-8 (byte {data[err.start]:#04x})") from None
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        except (ValueError, RecursionError) as err:  # integers past 4300 digits, deep nesting
            raise DataError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("version") != VERSION:
            found = f"format {raw.get('format')!r} v{raw.get('version')}" if isinstance(raw, dict) else "not an object"
            raise DataError(f"{path}: {found}, expected {FORMAT} v{VERSION}")
        try:
            raw["shards"] = [ShardInfo(**s) for s in raw["shards"]]
            manifest = cls(**raw)
        except (KeyError, TypeError) as err:  # a field missing or unknown, or a shard that is not an object
            raise DataError(f"{path}: not a manifest of this version ({err})") from None
        types = {"group_size": int, "teachers": list, "shards": list, "counts": dict, "config": dict}
        wrong = [k for k, kind in types.items() if type(getattr(manifest, k)) is not kind]
        if "teachers" not in wrong and not all(isinstance(t, str) for t in manifest.teachers):
            wrong.append("teachers")
        wrong += [
            f"shards[{i}]"
            for i, s in enumerate(manifest.shards)
            if not (isinstance(s.file, str) and type(s.rows) is int and isinstance(s.sha256, str))
        ]
        if wrong:  # checked here: PreparedSet and prepare's resume use these fields as given
            raise DataError(f"{path}: field(s) of the wrong type: {', '.join(wrong)}")
        return manifest


def write_shard(path: Path, records: Iterable[GroupRecord]) -> ShardInfo:
    """Writes one shard atomically; a crash leaves no half shard behind."""
    data = b"".join(r.to_line() for r in records)
    atomic_write_bytes(path, data)
    return ShardInfo(Path(path).name, data.count(b"\n"), hashlib.sha256(data).hexdigest())


class PreparedSet:
    """Random access to a prepared folder's groups, reading one line per item from disk.

    Opening checks every shard against the manifest's SHA-256, so a truncated or
    edited shard is named up front rather than found mid-training. Files are opened lazily, per
    process, so DataLoader workers each get their own handles.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.manifest = Manifest.load(self.folder)
        self.teachers = list(self.manifest.teachers)
        self.group_size = self.manifest.group_size
        shard_of, starts, ends = [], [], []  # per item: its shard, and its line's byte range
        for shard_no, shard in enumerate(self.manifest.shards):
            path = self.folder / shard.file
            if not path.is_file():
                raise DataError(f"{path}: listed in {self.folder / MANIFEST} but missing")
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != shard.sha256:
                raise DataError(f"{path}: SHA-256 differs from {MANIFEST}: the shard was changed or truncated")
            line_ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n")) + 1  # (rows,)
            if len(line_ends) != shard.rows or not data.endswith(b"\n"):  # a re-signed shard can still be cut short
                raise DataError(f"{path}: {len(line_ends)} complete lines, {MANIFEST} says {shard.rows}")
            ends.append(line_ends)
            starts.append(np.concatenate([[0], line_ends])[:-1])  # not [0] for a shard without a line end
            shard_of.append(np.full(len(line_ends), shard_no))
        # numpy, not lists of tuples: 8 bytes per number keeps a 500k-group index in a few MB
        self._shard_of = np.concatenate(shard_of) if shard_of else np.zeros(0, dtype=np.int64)
        self._start = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
        self._end = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
        self._first_item = np.searchsorted(self._shard_of, np.arange(len(self.manifest.shards)))  # for line numbers
        self._handles: dict[int, BinaryIO] = {}

    def __len__(self) -> int:
        return len(self._start)

    def __getitem__(self, i: int) -> GroupRecord:
        shard_no, start, end = int(self._shard_of[i]), int(self._start[i]), int(self._end[i])
        shard = self.folder / self.manifest.shards[shard_no].file
        f = self._handles.get(shard_no)
        if f is None:
            f = self._handles[shard_no] = open(shard, "rb")  # noqa: SIM115 (kept open for the next items)
        # pread, not seek + read: DataLoader workers forked after the main process opened a shard share its
        # file offset, and concurrent seeks would hand one worker another's line.
        line = os.pread(f.fileno(), end - start, start)
        where = f"{shard}:{i - int(self._first_item[shard_no]) + 1}"
        return GroupRecord.parse(line, where, self.group_size, self.teachers)

    def __iter__(self) -> Iterator[GroupRecord]:
        return (self[i] for i in range(len(self)))

    def __getstate__(self) -> dict:  # file handles do not cross process boundaries
        return {**self.__dict__, "_handles": {}}
