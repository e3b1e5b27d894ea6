"""Writing one tool's section of BENCHMARKS.md without touching the others' sections."""

from __future__ import annotations

from pathlib import Path

from detgroup.atomic import atomic_open


def write_section(path: Path, text: str) -> None:
    """Replace the section of ``path`` that starts with ``text``'s first line (a ``## `` heading)
    up to the next ``## `` heading, or append it; creates the file with a ``# Benchmarks``
    title. The file is read right before the atomic write, so sections that other tools edited
    meanwhile are kept."""
    heading = text.splitlines()[0].rstrip()
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + text + ("\n" + tail if tail else "")
    with atomic_open(path, "w") as f:
        f.write(new)
