"""Atomic file writes: a temporary file in the target folder, fsync, then ``os.replace``.

A reader (or a crash) never sees a half-written file: the path either holds the old content,
the new content, or does not exist.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', not {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temp_files(folder: str | Path, *, recursive: bool = False) -> None:
    """Delete the temporary files that ``atomic_open`` leaves when a process is killed while
    writing (``.NAME.*.tmp``) in ``folder`` (and its subfolders with ``recursive``)."""
    folder = Path(folder)
    for stale in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = None) -> None:
    """Serialise ``obj`` as JSON and write it to ``path`` atomically."""
    text = json.dumps(obj, indent=indent, allow_nan=False)
    with atomic_open(path, "w") as f:
        f.write(text)
        f.write("\n")
