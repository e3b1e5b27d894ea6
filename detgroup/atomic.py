"""Atomic file writes: a temporary file in the target folder, fsync, then ``os.replace``.

A reader (or a crash) never sees a half-written file: the path either holds the old content,
the new content, or does not exist.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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


@contextlib.contextmanager
def atomic_directory(path: str | Path, *, marker: str) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path`` to fill; on success it replaces ``path``.

    A reader never sees half a folder: ``path`` holds the old content or the new one (it is
    missing only between two renames). ``path`` may be missing, empty, or an earlier output of
    the same kind, recognised by the file ``marker`` in it (the caller writes that file into
    the new folder); anything else is refused, so a user's folder is never deleted. On any
    exception the temporary folder is removed and ``path`` is left untouched. Folders left by a
    killed process (``.NAME.*.tmp``, ``.NAME.*.old``) are removed first.
    """
    from detgroup.errors import DetgroupError

    path = Path(path)
    if path.exists() and not (path.is_dir() and ((path / marker).is_file()
                                                 or not any(path.iterdir()))):
        raise DetgroupError(f"{path}: exists and is not an earlier output (no {marker} in it); "
                            "give a new or empty folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in [*path.parent.glob(f".{path.name}.*.tmp"),
                      *path.parent.glob(f".{path.name}.*.old")]:
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as err:
        raise DetgroupError(f"{path}: cannot create the output folder ({err.strerror})") from None
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; outputs are meant to be shared
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old / path.name, path)  # put the earlier output back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
