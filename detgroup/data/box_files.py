"""Per-image box lists from CSV and JSON files, under one rule for the box format.

Every box source says its format, or takes the one default:

* CSV (``.csv``): values separated by commas, semicolons or tabs (the first line decides; a
  line that mixes them is refused, so decimal commas never pass for separators). The first
  line is a header when it is not all numbers; it must name the columns of one format:
  ``x1,y1,x2,y2`` / ``xmin,ymin,xmax,ymax`` / ``left,top,right,bottom`` (corners, ``xyxy``) or
  ``x,y,w,h`` / ``x,y,width,height`` / ``left,top,width,height`` / ``xmin,ymin,w,h`` (corner and
  size, ``xywh``), in any order and case, other columns ignored. An unknown header is an error.
  Without a header every row holds exactly the four numbers ``x1,y1,x2,y2``.
* JSON: a list of ``[x1, y1, x2, y2]``, or ``{"boxes": [...], "format": "xyxy" | "xywh"}``
  (``format`` optional, default ``xyxy``).
* COCO files (read elsewhere) are ``[x, y, w, h]`` by definition.

A row or entry that does not parse is an error naming the file and the line (CSV) or the box
index (JSON). Whether a box may leave its image is decided later, the same way for every
source (:func:`detgroup.ops.boxes.check_boxes`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from detgroup.errors import DetgroupError

BOX_FORMATS = ("xyxy", "xywh")
# header spellings: column names -> format; a header must hold all four names of one of them
HEADER_SPELLINGS: dict[tuple[str, str, str, str], str] = {
    ("x1", "y1", "x2", "y2"): "xyxy",
    ("xmin", "ymin", "xmax", "ymax"): "xyxy",
    ("left", "top", "right", "bottom"): "xyxy",
    ("x", "y", "w", "h"): "xywh",
    ("x", "y", "width", "height"): "xywh",
    ("left", "top", "width", "height"): "xywh",
    ("xmin", "ymin", "w", "h"): "xywh",
    ("xmin", "ymin", "width", "height"): "xywh",
}
_SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab"}


def to_xyxy(boxes: np.ndarray, fmt: str) -> np.ndarray:
    """``boxes`` float [N, 4] in ``fmt`` (``xyxy`` or ``xywh``, pixels) → [N, 4] xyxy."""
    if fmt not in BOX_FORMATS:
        raise DetgroupError(f"unknown box format {fmt!r}; use one of {list(BOX_FORMATS)}")
    if fmt == "xyxy":
        return boxes
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_box_list(value: Any, *, source: str | Path) -> np.ndarray:
    """A JSON box list (see the module docstring) → float64 [N, 4] xyxy pixels."""
    fmt = "xyxy"
    if isinstance(value, dict):
        if "boxes" not in value:
            raise DetgroupError(f"{source}: expected a list of boxes or {{'boxes': [...]}}")
        fmt = value.get("format", "xyxy")
        if fmt not in BOX_FORMATS:
            raise DetgroupError(
                f"{source}: unknown box format {fmt!r}; use one of {list(BOX_FORMATS)}"
            )
        value = value["boxes"]
    if not isinstance(value, list):
        raise DetgroupError(f"{source}: boxes must be a list of [x1, y1, x2, y2]")
    for k, box in enumerate(value):
        if not isinstance(box, list) or len(box) != 4 or not all(_number(v) for v in box):
            raise DetgroupError(f"{source}: box {k} is not a list of 4 numbers ({fmt}): {box!r}")
    rows = np.asarray(value, dtype=np.float64).reshape(-1, 4)
    return to_xyxy(rows, fmt)


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _header_columns(names: list[str], path: Path, line_no: int) -> tuple[list[int], str]:
    """Indices of the four box columns of a header, and their format."""
    lowered = [n.strip().lower() for n in names]
    for spelling, fmt in HEADER_SPELLINGS.items():
        if all(n in lowered for n in spelling):
            return [lowered.index(n) for n in spelling], fmt
    known = ", ".join(",".join(s) + f" ({f})" for s, f in HEADER_SPELLINGS.items())
    raise DetgroupError(
        f"{path}: line {line_no}: header {names} names no box format; use one of: {known}"
    )


def read_csv_boxes(path: str | Path) -> np.ndarray:
    """Boxes of a CSV file (see the module docstring) → float64 [N, 4] xyxy pixels."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DetgroupError(f"{path}: cannot read box file ({err})") from None
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        return np.zeros((0, 4))
    found = [s for s in _SEPARATORS if s in first]
    if len(found) > 1:
        raise DetgroupError(
            f"{path}: line {lines.index(first) + 1} mixes separators "
            f"({', '.join(_SEPARATORS[s] for s in found)}); separate values by one of them "
            "(and write decimals with a point)"
        )
    if not found:
        raise DetgroupError(
            f"{path}: line {lines.index(first) + 1} is not comma, semicolon or tab separated "
            f"values: {first!r}"
        )
    sep = found[0]
    columns = [0, 1, 2, 3]
    fmt = "xyxy"
    width = 4
    rows: list[list[float]] = []
    started = False  # the first non-blank line has been read
    has_header = False  # ... and it was a header
    for line_no, row in enumerate(csv.reader(io.StringIO(text), delimiter=sep), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        values = [_float(cell) for cell in row]
        if not started and any(v is None for v in values):
            columns, fmt = _header_columns(row, path, line_no)
            width = len(row)
            started = has_header = True
            continue
        started = True
        if len(row) != width:
            what = ("as many as the header names" if has_header
                    else "x1,y1,x2,y2 (a file without a header holds these four only)")
            raise DetgroupError(
                f"{path}: line {line_no} has {len(row)} values, expected {width}: {what}"
            )
        picked = [values[c] for c in columns]
        if any(v is None for v in picked):
            raise DetgroupError(
                f"{path}: line {line_no} is not numbers in the {fmt} columns: {row}"
            )
        rows.append([float(v) for v in picked])  # type: ignore[arg-type]
    return to_xyxy(np.asarray(rows, dtype=np.float64).reshape(-1, 4), fmt)


def read_csv_texts(path: str | Path) -> list[str] | None:
    """The ``text`` column of a CSV box file (named in its header, separated as the boxes are:
    see :func:`read_csv_boxes`), one string per box row, or None if the file has none."""
    path = Path(path)
    lines = [line for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if not lines:
        return None
    sep = next((s for s in _SEPARATORS if s in lines[0]), ",")
    rows = list(csv.reader(lines, delimiter=sep))
    header = [cell.strip().lower() for cell in rows[0]]
    if "text" not in header:
        return None
    col = header.index("text")
    return [row[col] if len(row) > col else "" for row in rows[1:]]


def read_box_file(path: str | Path) -> np.ndarray:
    """Boxes of a ``.json`` or ``.csv`` file → float64 [N, 4] xyxy pixels."""
    from detgroup.data.coco_groups import read_json

    path = Path(path)
    if path.suffix.lower() == ".json":
        return parse_box_list(read_json(path), source=path)
    return read_csv_boxes(path)
