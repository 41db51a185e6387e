"""Atomic writes: a reader sees the old file or the new one, never half of one."""

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the mode a plain open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks (an index's arrays or a model's weights are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def is_nonempty_dir(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and any(path.iterdir())


@contextmanager
def atomic_dir(path: Path, replace: bool = False) -> Iterator[Path]:
    """Yields a fresh hidden sibling folder to fill; when the block succeeds it is renamed to path, so a reader
    sees the old folder or the complete new one, never half of one (a failed block leaves path as it was).

    An empty folder at path (e.g. one Hydra made for its run) is taken over; a non-empty one only with
    replace=True, else FileExistsError before anything is written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    if is_nonempty_dir(path) and not replace:
        raise FileExistsError(f"{path} exists and is not empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; give the mode a plain mkdir would
        old = None
        if is_nonempty_dir(path):  # checked again: the block may have run for a while
            if not replace:
                raise FileExistsError(f"{path} was filled by someone else meanwhile")
            old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
            path.rename(old)
        elif path.is_dir():
            path.rmdir()
        try:
            tmp.rename(path)
        except BaseException:
            if old is not None:
                old.rename(path)  # put the previous folder back
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
