"""OpenCV overlays of grouped boxes: group hulls, labels, a legend and an affinity heat map.

Colours follow *group order*: the groups of one image are sorted by (category, group id) and
the k-th one is drawn in ``group_palette(n)[k]``. So one input always draws the same colours
(whatever the order of its boxes), and the groups of one image get distinct styles: the 8
colour-blind-safe Okabe–Ito colours first, then the same hues lighter/darker and dashed/dotted
(72 distinct styles before they repeat). Every stroke has a thin contrasting halo so that it
stays visible on light scans and dark photos alike.

Small images are upscaled (``min_side``) before drawing. Line widths grow with the drawn image
(capped by the typical box size, so the words of a dense scan stay readable) and text with its
square root, so 256 px synthetic scenes and 1000 px scans are both legible. Box strokes lie just
outside the boxes; a group of two or more boxes also gets its convex hull (tinted fill and
outline); every group, lone boxes too, gets a label ``name/group score`` near its top-left,
kept inside the image; lone boxes are drawn thinner.

Truth beside prediction (`draw_comparison`): predicted groups are matched one-to-one to true
groups by member overlap (`detgroup.metrics.match_groups`, Hungarian). True groups are numbered
1.. in reading order (by their top-left-most box); a matched predicted group takes the number
and style of its true group, the others get the following numbers. Labels read ``number
category`` on both sides, so one group has one colour and one number in both pictures. A
predicted box whose group is not the match of its true group gets a badge ``G``, one whose
category is wrong a badge ``C`` (``GC`` both; boxes without a true box count as wrong group).
The heat map of same-group probabilities has the box indices (input order) on both axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_iou

from detgroup.atomic import atomic_write_bytes
from detgroup.errors import DetgroupError
from detgroup.metrics import GroupMatch, match_groups
from detgroup.ops.boxes import box_faults

__all__ = [
    "OKABE_ITO",
    "WRONG_CATEGORY",
    "WRONG_GROUP",
    "Comparison",
    "GroupStyle",
    "compare",
    "comparison_panels",
    "draw_comparison",
    "draw_groups",
    "draw_heat_map",
    "group_palette",
    "group_styles",
    "match_boxes",
    "number_style",
    "save_rgb_png",
    "side_by_side",
]

# Okabe & Ito (2008), "Color Universal Design": distinct under the common colour-vision
# deficiencies. RGB.
OKABE_ITO: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),  # orange
    (86, 180, 233),  # sky blue
    (0, 158, 115),  # bluish green
    (240, 228, 66),  # yellow
    (0, 114, 178),  # blue
    (213, 94, 0),  # vermillion
    (204, 121, 167),  # reddish purple
    (0, 0, 0),  # black
)
# Rounds of the palette after the first: (brightness, line style) in a Latin-square order, so
# consecutive rounds differ in both brightness and line style.
_VARIANTS = (
    ("base", "solid"),
    ("light", "dashed"),
    ("dark", "dotted"),
    ("base", "dashed"),
    ("light", "dotted"),
    ("dark", "solid"),
    ("base", "dotted"),
    ("light", "solid"),
    ("dark", "dashed"),
)
_MIX = {"base": 0.0, "light": 0.5, "dark": 0.45}  # fraction of white (light) or black (dark)

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_PANEL_BG = (246, 246, 246)
_PANEL_FG = (24, 24, 24)
_FILL_ALPHA = 0.22  # opacity of a group's hull fill
# Badge of a wrong box: a colour no palette style has (the palette mixes its hues with white
# or black only), with white text.
_WRONG_BG = (255, 0, 102)
WRONG_GROUP = 1  # bit of ``Comparison.pred_wrong``: the box is not in its true group's match
WRONG_CATEGORY = 2  # bit: the box's predicted category is not its true one


@dataclass(frozen=True)
class GroupStyle:
    """How one group is drawn: an RGB colour and a line style ("solid", "dashed", "dotted")."""

    colour: tuple[int, int, int]
    dash: str = "solid"


def group_palette(n: int) -> list[GroupStyle]:
    """Return ``n`` group styles: Okabe–Ito solid first, then lighter/darker dashed/dotted rounds.

    Styles are distinct for ``n <= 72`` and repeat after that.
    """
    styles = []
    for k in range(n):
        brightness, dash = _VARIANTS[(k // len(OKABE_ITO)) % len(_VARIANTS)]
        base = np.array(OKABE_ITO[k % len(OKABE_ITO)], float)
        target = 0.0 if brightness == "dark" else 255.0
        colour = base + _MIX[brightness] * (target - base)
        if brightness == "dark" and not base.any():  # black cannot get darker: a pale grey
            colour = np.full(3, 204.0)
        styles.append(GroupStyle(tuple(int(round(c)) for c in colour), dash))
    return styles


def group_styles(categories: np.ndarray, groups: np.ndarray) -> dict[tuple[int, int], GroupStyle]:
    """Map each (category, group) present to its style, by group order (see the module doc).

    ``categories``, ``groups``: int [N]. The result is ordered by (category, group).
    """
    keys = sorted({(int(c), int(g)) for c, g in zip(categories, groups, strict=True)})
    return dict(zip(keys, group_palette(len(keys)), strict=True))


# ----------------------------------------------------------------------------------------
# Sizes and primitives


@dataclass(frozen=True)
class _Sizes:
    """Line widths, font scale (cv2 Hershey units) and paddings in px for one drawn image."""

    line: int
    thin: int
    font: float
    text: int
    pad: int

    @classmethod
    def for_side(cls, long_side: int, box_side: float = math.inf) -> _Sizes:
        """Sizes for a drawn image with this long side whose boxes' typical short side is
        ``box_side`` px: lines grow in proportion to the image but stay under about a seventh
        of a typical box (the words of a scan stay readable); text grows with the square root
        of the image, so labels stay readable on 512 px scenes without burying a 1000 px scan.
        """
        u = math.sqrt(long_side / 512)
        line = max(2, round(min(max(3.0, long_side / 400), box_side / 7)))
        font = 0.42 * u
        return cls(line=line, thin=line - 1, font=font,
                   text=max(1, round(1.6 * font)), pad=max(2, round(3 * u)))


def _luminance(colour: tuple[int, int, int]) -> float:
    r, g, b = colour
    return (0.299 * r + 0.587 * g + 0.114 * b) / 255


def _contrast(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever stands out against ``colour``."""
    # Dark halos keep mid-tone colours vivid; only dark colours get a white one.
    return (0, 0, 0) if _luminance(colour) > 0.4 else (255, 255, 255)


def _text_size(text: str, scale: float, thickness: int) -> tuple[int, int, int]:
    """(width, height above the baseline, descent below it) in px."""
    (w, h), baseline = cv2.getTextSize(text, _FONT, scale, thickness)
    return w, h, baseline


def _put_text(canvas: np.ndarray, text: str, x: int, y_top: int, scale: float, thickness: int,
              colour: tuple[int, int, int]) -> None:
    """Draw ``text`` with its cap height starting at row ``y_top``."""
    _, h, _ = _text_size(text, scale, thickness)
    cv2.putText(canvas, text, (x, y_top + h), _FONT, scale, colour, thickness, cv2.LINE_AA)


def _dashes(points: np.ndarray, on: float, off: float) -> list[np.ndarray]:
    """Cut the closed polygon ``points`` [K, 2] into dashes ``on`` px long, ``off`` px apart."""
    path = np.vstack([points, points[:1]]).astype(float)
    seg = np.diff(path, axis=0)  # [K, 2]
    lengths = np.hypot(seg[:, 0], seg[:, 1])
    cum = np.concatenate([[0.0], np.cumsum(lengths)])  # [K + 1] arc length at each vertex

    def at(s: float) -> np.ndarray:
        i = min(int(np.searchsorted(cum, s, side="right")) - 1, len(seg) - 1)
        return path[i] + seg[i] * ((s - cum[i]) / lengths[i] if lengths[i] > 0 else 0.0)

    out = []
    for start in np.arange(0.0, cum[-1], on + off):
        end = min(start + on, cum[-1])
        corners = path[1:-1][(cum[1:-1] > start) & (cum[1:-1] < end)]
        out.append(np.vstack([at(start), *corners, at(end)]))
    return out


def _dash_paths(points: np.ndarray, dash: str, thickness: int) -> list[np.ndarray]:
    """The closed polygon ``points`` [K, 2] as open paths [K', 2]: one, or one per dash."""
    if dash == "solid":
        return [np.vstack([points, points[:1]])]
    if dash == "dashed":
        return _dashes(points, 3.5 * thickness + 3, 2.5 * thickness + 2)
    return _dashes(points, thickness + 1, 1.5 * thickness + 2)  # dotted: short dashes


def _stroke(canvas: np.ndarray, points: np.ndarray, style: GroupStyle, thickness: int) -> None:
    """Draw the closed polygon ``points`` [K, 2] (px) in ``style``, over a 1 px contrasting halo."""
    paths = [np.round(p).astype(np.int32).reshape(-1, 1, 2)
             for p in _dash_paths(points, style.dash, thickness)]
    cv2.polylines(canvas, paths, False, _contrast(style.colour), thickness + 2, cv2.LINE_AA)
    cv2.polylines(canvas, paths, False, style.colour, thickness, cv2.LINE_AA)


def _box_band(canvas: np.ndarray, box: np.ndarray, offset: int, width: int,
              colour: tuple[int, int, int], dash: str) -> None:
    """Paint the band ``width`` px wide that lies ``offset`` px outside ``box`` (xyxy px, widened
    to whole pixels), cut into dashes. Pixel-exact, unlike cv2's thick lines."""
    x0, y0 = np.floor(box[:2])
    x1, y1 = np.ceil(box[2:])
    mid = offset + width / 2  # the band's centre line
    height, full_width = canvas.shape[:2]
    for path in _dash_paths(_rect_points([x0 - mid, y0 - mid, x1 + mid, y1 + mid]), dash, width):
        for p, q in zip(path[:-1], path[1:], strict=True):  # axis-aligned pieces
            xa, ya = np.round(np.minimum(p, q) - width / 2).astype(int)
            xb, yb = np.round(np.maximum(p, q) + width / 2).astype(int)
            canvas[max(ya, 0):min(yb, height), max(xa, 0):min(xb, full_width)] = colour


def _draw_boxes(canvas: np.ndarray, boxes: np.ndarray, style: GroupStyle, thickness: int) -> None:
    """Draw ``boxes`` [M, 4] xyxy px as ``thickness`` px strokes just outside their edges, with
    a 1 px solid contrasting halo on either side (so at most 1 px of a box is hidden).

    All halos go first, so the boxes of one group do not cut each other.
    """
    for box in boxes:
        _box_band(canvas, box, -1, thickness + 2, _contrast(style.colour), "solid")
    for box in boxes:
        _box_band(canvas, box, 0, thickness, style.colour, style.dash)


def _rect_points(box: np.ndarray | list[float]) -> np.ndarray:
    """Corners [4, 2] of an xyxy box, clockwise from the top-left."""
    x0, y0, x1, y1 = box
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def _hstack_top(panels: list[np.ndarray]) -> np.ndarray:
    """Place RGB panels left to right, top-aligned, padding shorter ones with the panel colour."""
    height = max(p.shape[0] for p in panels)
    padded = []
    for p in panels:
        pad = np.empty((height - p.shape[0], p.shape[1], 3), np.uint8)
        pad[:] = _PANEL_BG
        padded.append(np.vstack([p, pad]))
    return np.hstack(padded)


def _header(width: int, texts: list[tuple[int, str]], sizes: _Sizes) -> np.ndarray:
    """A header strip ``width`` px wide with each text drawn at its x offset."""
    scale, thickness = 1.25 * sizes.font, sizes.text + 1
    _, h, base = _text_size("Ag", scale, thickness)
    strip = np.empty((h + base + 4 * sizes.pad, width, 3), np.uint8)
    strip[:] = _PANEL_BG
    for x, text in texts:
        _put_text(strip, text, x + 2 * sizes.pad, 2 * sizes.pad, scale, thickness, _PANEL_FG)
    return strip


# ----------------------------------------------------------------------------------------
# Validation


def _as_rgb(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DetgroupError(f"{what} must be a uint8 RGB array [H, W, 3] (or grayscale [H, W]), "
                            f"got {image.dtype} {list(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise DetgroupError(f"{what} is empty: shape {list(image.shape)}")
    return image


def _as_int(values: np.ndarray, n: int, what: str) -> np.ndarray:
    values = np.asarray(values)
    if values.size == 0:
        values = values.astype(np.int64)
    if values.shape != (n,) or not np.issubdtype(values.dtype, np.integer):
        raise DetgroupError(f"{what} must be an int array [N] with N = {n} boxes, "
                            f"got {values.dtype} {list(values.shape)}")
    return values.astype(np.int64)


def _check(boxes: np.ndarray, categories: np.ndarray, groups: np.ndarray,
           category_names: list[str], affinity: np.ndarray | None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    boxes = np.asarray(boxes, float)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DetgroupError(f"boxes must be [N, 4] xyxy, got shape {list(boxes.shape)}")
    n = len(boxes)
    faults = box_faults(boxes, math.inf, math.inf)  # drawn boxes may be degenerate
    bad = np.flatnonzero(faults.non_finite)
    if len(bad):
        raise DetgroupError(f"boxes must be finite; bad box indices {bad.tolist()}")
    bad = np.flatnonzero(faults.inverted)
    if len(bad):
        raise DetgroupError(f"boxes must be xyxy with x1 >= x0 and y1 >= y0; bad box indices "
                            f"{bad.tolist()}")
    categories = _as_int(categories, n, "categories")
    groups = _as_int(groups, n, "groups")
    bad = np.flatnonzero((categories < 0) | (categories >= len(category_names)))
    if len(bad):
        raise DetgroupError(f"categories must index category_names ({len(category_names)} "
                            f"names); bad box indices {bad.tolist()}")
    if affinity is not None:
        # a scipy sparse matrix (candidate pairs only): unlisted pairs drawn as 0
        affinity = np.asarray(affinity.toarray() if hasattr(affinity, "toarray") else affinity,
                              float)
        if affinity.shape != (n, n):
            raise DetgroupError(f"affinity must be [N, N] with N = {n} boxes, "
                                f"got shape {list(affinity.shape)}")
        if not (np.isfinite(affinity).all() and (affinity >= 0).all() and (affinity <= 1).all()):
            raise DetgroupError("affinity must hold probabilities in [0, 1] (not logits)")
    return boxes, categories, groups, affinity


# ----------------------------------------------------------------------------------------
# Panels


@dataclass(frozen=True)
class _Group:
    key: tuple[int, int]  # (category, group)
    name: str  # "cat/0"
    members: np.ndarray  # [M] box indices, in reading order (top to bottom, left to right)
    style: GroupStyle
    score: float | None


def _reading_order(boxes: np.ndarray) -> np.ndarray:
    """Box indices [N] top to bottom, then left to right (ties by the far corner)."""
    return np.lexsort((boxes[:, 2], boxes[:, 0], boxes[:, 3], boxes[:, 1]))


def number_style(number: int) -> GroupStyle:
    """The style of group number ``number`` (1-based): ``group_palette(number)[number - 1]``."""
    return group_palette(number)[number - 1]


def _collect_groups(boxes: np.ndarray, categories: np.ndarray, groups: np.ndarray,
                    category_names: list[str],
                    group_scores: dict[tuple[int, int], float] | None,
                    numbers: dict[tuple[int, int], int] | None = None) -> list[_Group]:
    """The groups of one image in group order (or by ``numbers``, which then also give their
    styles and names); members sorted by box position, so the result does not depend on the
    order of the boxes."""
    reading = _reading_order(boxes)  # [N]
    if numbers is None:
        styled = [((c, g), style, f"{category_names[c]}/{g}")
                  for (c, g), style in group_styles(categories, groups).items()]
    else:
        keys = sorted({(int(c), int(g)) for c, g in zip(categories, groups, strict=True)},
                      key=lambda k: numbers[k])
        styled = [(k, number_style(numbers[k]), f"{numbers[k]} {category_names[k[0]]}")
                  for k in keys]
    out = []
    for (c, g), style, name in styled:
        members = reading[(categories[reading] == c) & (groups[reading] == g)]
        score = None if group_scores is None else group_scores.get((c, g))
        out.append(_Group((c, g), name, members, style, None if score is None else float(score)))
    return out


def _overlap(rect: tuple[int, int, int, int], others: np.ndarray) -> float:
    """Total area of ``rect`` (x0, y0, x1, y1) covered by each of ``others`` [K, 4], summed."""
    if len(others) == 0:
        return 0.0
    w = np.minimum(rect[2], others[:, 2]) - np.maximum(rect[0], others[:, 0])
    h = np.minimum(rect[3], others[:, 3]) - np.maximum(rect[1], others[:, 1])
    return float((np.clip(w, 0, None) * np.clip(h, 0, None)).sum())


def _draw_overlay(canvas: np.ndarray, boxes: np.ndarray, groups: list[_Group],
                  sizes: _Sizes, wrong: np.ndarray | None = None) -> None:
    """Draw hulls, boxes, wrong-box badges (``wrong`` int [N] bits) and labels onto ``canvas``
    (boxes in its pixels), in place."""
    height, width = canvas.shape[:2]
    hulls: dict[tuple[int, int], np.ndarray] = {}
    for grp in groups:
        if len(grp.members) > 1:
            grow = 2 * sizes.line + 2  # keep the hull outline off the member boxes' strokes
            corners = np.vstack([_rect_points(b + [-grow, -grow, grow, grow])
                                 for b in boxes[grp.members]])
            hulls[grp.key] = cv2.convexHull(corners.astype(np.float32))[:, 0]  # [K, 2]

    fill = canvas.copy()
    for grp in groups:
        if grp.key in hulls:
            cv2.fillPoly(fill, [np.round(hulls[grp.key]).astype(np.int32)], grp.style.colour,
                         cv2.LINE_AA)
    cv2.addWeighted(fill, _FILL_ALPHA, canvas, 1 - _FILL_ALPHA, 0, dst=canvas)

    for grp in groups:
        lone = grp.key not in hulls
        if not lone:
            # cv2 draws thick anti-aliased lines about 1 px wider than asked
            _stroke(canvas, hulls[grp.key], grp.style, max(2, sizes.thin))
        # Boxes inside a hull are solid: the hull outline carries the group's line style, and
        # dashes around every word of a dense scan would bury the words.
        _draw_boxes(canvas, boxes[grp.members], grp.style if lone else GroupStyle(grp.style.colour),
                    sizes.thin if lone else sizes.line)

    if wrong is not None:
        _draw_badges(canvas, boxes, wrong, sizes)
    # Labels last, on top.
    for grp, text, rect in _place_labels(boxes, groups, hulls, sizes, width, height):
        cv2.rectangle(canvas, rect[:2], (rect[2] - 1, rect[3] - 1), grp.style.colour, cv2.FILLED)
        _put_text(canvas, text, rect[0] + sizes.pad, rect[1] + sizes.pad, sizes.font, sizes.text,
                  _contrast(grp.style.colour))


def _label_text(grp: _Group) -> str:
    return grp.name if grp.score is None else f"{grp.name} {grp.score:.2f}"


def _place_labels(boxes: np.ndarray, groups: list[_Group], hulls: dict[tuple[int, int], np.ndarray],
                  sizes: _Sizes, width: int, height: int
                  ) -> list[tuple[_Group, str, tuple[int, int, int, int]]]:
    """Where each group's label goes: (group, text, rect x0, y0, x1, y1 in px, x1/y1 exclusive).

    Every group gets a label, inside the ``width`` x ``height`` image (when it fits there).
    Groups with hulls go first. Each label takes, of the spots around its group's top-left-most
    corner (above, left, inside, right, below the group), the one that overlaps the labels
    placed before it least, then covers the fewest other boxes, then comes first in that list.
    """
    placed: list[tuple[_Group, str, tuple[int, int, int, int]]] = []
    rects = np.zeros((0, 4))
    for grp in sorted(groups, key=lambda g: len(g.members) == 1):
        points = hulls[grp.key] if grp.key in hulls else _rect_points(boxes[grp.members[0]])
        x0, y0 = np.round(points[np.argmin(points.sum(1))]).astype(int)  # top-left-most corner
        x1 = int(np.ceil(points[:, 0].max()))
        y1 = int(np.ceil(points[:, 1].max()))
        text = _label_text(grp)
        tw, th, base = _text_size(text, sizes.font, sizes.text)
        w, h = tw + 2 * sizes.pad, th + base + 2 * sizes.pad
        others = np.delete(boxes, grp.members, axis=0)
        spots = [(x0, y0 - h), (x0 - w, y0), (x0, y0), (x1, y0), (x0, y1), (x1 - w, y0 - h),
                 (x0 - w, y1 - h), (x1, y1 - h)]
        best, best_cost = (0, 0, w, h), (math.inf, math.inf, 0)
        for rank, (x, y) in enumerate(spots):
            x = int(np.clip(x, 0, max(width - w, 0)))
            y = int(np.clip(y, 0, max(height - h, 0)))
            rect = (x, y, x + w, y + h)
            cost = (_overlap(rect, rects), _overlap(rect, others), rank)
            if cost < best_cost:
                best, best_cost = rect, cost
        rects = np.vstack([rects, best])
        placed.append((grp, text, best))
    return placed


def _draw_badges(canvas: np.ndarray, boxes: np.ndarray, wrong: np.ndarray, sizes: _Sizes) -> None:
    """A badge ``G`` / ``C`` / ``GC`` at the top-right corner of each box with ``wrong`` bits
    (int [N]), inside the image."""
    height, width = canvas.shape[:2]
    scale, thickness = 0.85 * sizes.font, max(1, sizes.text)
    for i in np.flatnonzero(wrong):
        text = ("G" if wrong[i] & WRONG_GROUP else "") + ("C" if wrong[i] & WRONG_CATEGORY else "")
        tw, th, base = _text_size(text, scale, thickness)
        w, h = tw + 2 * sizes.pad, th + base + sizes.pad
        x = int(np.clip(np.ceil(boxes[i, 2]) - w // 2, 0, max(width - w, 0)))
        y = int(np.clip(np.floor(boxes[i, 1]) - h // 2, 0, max(height - h, 0)))
        cv2.rectangle(canvas, (x - 1, y - 1), (x + w, y + h), (255, 255, 255), cv2.FILLED)
        cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), _WRONG_BG, cv2.FILLED)
        _put_text(canvas, text, x + sizes.pad, y + max(1, sizes.pad // 2), scale, thickness,
                  (255, 255, 255))


def _legend(groups: list[_Group], n_boxes: int, height: int, sizes: _Sizes, *,
            badges: bool = False) -> np.ndarray:
    """A panel listing each group: a swatch in its style, its name, member count and score;
    with ``badges``, first a line explaining the wrong-box badges."""
    scale, thickness, pad = sizes.font, sizes.text, sizes.pad
    _, th, base = _text_size("Ag", scale, thickness)
    row_h = th + base + 2 * pad
    title = "no boxes" if n_boxes == 0 else (
        f"{len(groups)} group{'s' * (len(groups) != 1)}, {n_boxes} box{'es' * (n_boxes != 1)}")
    columns = [[g.name for g in groups], [f"n={len(g.members)}" for g in groups],
               ["" if g.score is None else f"{g.score:.2f}" for g in groups]]
    widths = [max((_text_size(t, scale, thickness)[0] for t in col), default=0)
              for col in columns]
    swatch = 2 * row_h
    col_w = swatch + sum(w + 3 * pad for w in widths) + 2 * pad
    top = row_h + 3 * pad
    note = "G: wrong group, C: wrong category"
    if badges:
        top += row_h
    per_col = max(1, (height - top - 2 * pad) // row_h)
    n_cols = max(1, math.ceil(len(groups) / per_col))
    panel_w = max(n_cols * col_w, _text_size(title, scale, thickness)[0],
                  _text_size(note, scale, thickness)[0] if badges else 0) + 4 * pad
    panel_h = max(height, top + min(len(groups), per_col) * row_h + 2 * pad)
    panel = np.empty((panel_h, panel_w, 3), np.uint8)
    panel[:] = _PANEL_BG
    _put_text(panel, title, 2 * pad, 2 * pad, scale, thickness, _PANEL_FG)
    if badges:
        _put_text(panel, note, 2 * pad, 2 * pad + row_h, scale, thickness, _WRONG_BG)
    for i, grp in enumerate(groups):
        x = 2 * pad + (i // per_col) * col_w
        y = top + (i % per_col) * row_h
        box = np.array([x + pad, y + pad, x + swatch - pad, y + row_h - pad], float)
        # A chip tinted more strongly than a hull fill, so that the colour reads at a glance,
        # outlined as on the image: a lone box, or a group's hull.
        tint = 0.6 * np.array(grp.style.colour) + 0.4 * np.array(_PANEL_BG)
        cv2.rectangle(panel, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])),
                      tuple(int(round(c)) for c in tint), cv2.FILLED)
        if len(grp.members) == 1:
            _draw_boxes(panel, box[None], grp.style, sizes.thin)
        else:
            _stroke(panel, _rect_points(box), grp.style, max(2, sizes.thin))
        tx = x + swatch + 2 * pad
        for col, w in zip(columns, widths, strict=True):
            _put_text(panel, col[i], tx, y + pad, scale, thickness, _PANEL_FG)
            tx += w + 3 * pad
    return panel


def _heat_map(affinity: np.ndarray, groups: list[_Group], height: int, sizes: _Sizes, *,
              inner: np.ndarray | None = None, title: str = "affinity p(same group)"
              ) -> np.ndarray:
    """A panel with ``affinity`` [N, N] rows/cols in the order of ``groups`` (their members),
    viridis, with group blocks outlined in the group colour, categories separated by white
    lines, the box index of each row and column on the axes, and a colour bar.

    ``inner``: uint8 [N, 3] RGB per box (input order), drawn as a second strip inside the
    group strips (the comparison's predicted group of each box). ``height``: about the
    panel's height in px.
    """
    scale, thickness, pad = sizes.font, sizes.text, sizes.pad
    _, th, base = _text_size("Ag", scale, thickness)
    text_h = th + base
    order = np.concatenate([g.members for g in groups])  # [N]
    n = len(order)
    tick_scale = 0.8 * scale
    tick_w, tick_h, tick_base = _text_size(str(max(n - 1, 0)), tick_scale, 1)
    ticks = tick_w + 2 * pad  # room for the index labels on the left and on top
    strip = max(4, 2 * sizes.line)  # group colour strips along the top and left
    strips = strip if inner is None else 2 * strip + 1
    top = text_h + 3 * pad + ticks + strips
    bottom = 2 * text_h + 4 * pad  # colour bar and its 0/1 labels
    side = max(height - top - bottom, 16)
    left = 2 * pad + ticks + strips

    cell = np.minimum(np.arange(side) * n // side, n - 1)  # [side] matrix row of each pixel row
    values = np.round(affinity[np.ix_(order, order)] * 255).astype(np.uint8)[np.ix_(cell, cell)]
    matrix = cv2.applyColorMap(values, cv2.COLORMAP_VIRIDIS)[:, :, ::-1]  # BGR -> RGB

    panel = np.empty((top + side + bottom, left + side + 2 * pad, 3), np.uint8)
    panel[:] = _PANEL_BG
    _put_text(panel, title, left, pad, scale, thickness, _PANEL_FG)
    panel[top:top + side, left:left + side] = matrix

    def edge(k: int) -> int:  # first pixel of matrix row k
        return left + -(-k * side // n)

    start = 0
    for i, grp in enumerate(groups):
        stop = start + len(grp.members)
        a, b = edge(start), edge(stop)
        panel[top - strips:top - strips + strip - 1, a:b] = grp.style.colour
        panel[top + a - left:top + b - left, left - strips:left - strips + strip - 1] = \
            grp.style.colour
        if len(grp.members) > 1:
            cv2.rectangle(panel, (a, top + a - left), (b - 1, top + b - 1 - left),
                          grp.style.colour, max(1, sizes.thin))
        if i and grp.key[0] != groups[i - 1].key[0]:
            cv2.line(panel, (a, top), (a, top + side - 1), (255, 255, 255), 1)
            cv2.line(panel, (left, top + a - left), (left + side - 1, top + a - left),
                     (255, 255, 255), 1)
        start = stop
    if inner is not None:
        for k, box in enumerate(order):
            a, b = edge(k), edge(k + 1)
            panel[top - strip:top - 1, a:b] = inner[box]
            panel[top + a - left:top + b - left, left - strip:left - 1] = inner[box]

    # Index labels: every row's when they fit, else every step-th (rows are in group order,
    # so the indices are not monotone; each label names its own row).
    step = max(1, math.ceil((tick_h + tick_base + 2) * n / side))
    top_labels = np.empty((side, ticks, 3), np.uint8)  # drawn sideways, then turned
    top_labels[:] = _PANEL_BG
    for k in range(0, n, step):
        text = str(int(order[k]))
        w = _text_size(text, tick_scale, 1)[0]
        centre = (edge(k) + edge(k + 1)) // 2 - left
        y = centre - (tick_h + tick_base) // 2
        _put_text(panel, text, left - strips - pad - w, top + y, tick_scale, 1, _PANEL_FG)
        _put_text(top_labels, text, ticks - pad - w, side - 1 - centre - (tick_h + tick_base) // 2,
                  tick_scale, 1, _PANEL_FG)
    panel[top - strips - ticks:top - strips, left:left + side] = np.rot90(top_labels, k=-1)

    bar_y = top + side + 2 * pad
    ramp = np.round(np.linspace(0, 255, side)).astype(np.uint8)[None].repeat(text_h, 0)
    panel[bar_y:bar_y + text_h, left:left + side] = cv2.applyColorMap(
        ramp, cv2.COLORMAP_VIRIDIS)[:, :, ::-1]
    label_y = bar_y + text_h + pad
    _put_text(panel, "0", left, label_y, scale, thickness, _PANEL_FG)
    one_w = _text_size("1", scale, thickness)[0]
    _put_text(panel, "1", left + side - one_w, label_y, scale, thickness, _PANEL_FG)
    return panel


# ----------------------------------------------------------------------------------------
# Public API


def _zoom(image: np.ndarray, boxes: np.ndarray, min_side: int
          ) -> tuple[np.ndarray, np.ndarray, _Sizes]:
    """Upscale ``image`` (nearest neighbour) to ``min_side``; scale ``boxes`` [N, 4]; sizes."""
    zoom = max(1.0, min_side / max(image.shape[:2]))
    canvas = image.copy()
    if zoom > 1:
        size = (round(image.shape[1] * zoom), round(image.shape[0] * zoom))
        # Nearest neighbour: the drawn pixels are the pixels the model sees.
        canvas = cv2.resize(image, size, interpolation=cv2.INTER_NEAREST)
    sx, sy = canvas.shape[1] / image.shape[1], canvas.shape[0] / image.shape[0]
    boxes = boxes * [sx, sy, sx, sy]
    short_sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])  # [N]
    sizes = _Sizes.for_side(max(canvas.shape[:2]),
                            float(np.median(short_sides)) if len(boxes) else math.inf)
    return canvas, boxes, sizes


def draw_groups(image: np.ndarray, boxes: np.ndarray, categories: np.ndarray, groups: np.ndarray,
                category_names: list[str], *,
                group_scores: dict[tuple[int, int], float] | None = None,
                affinity: np.ndarray | None = None, title: str | None = None,
                min_side: int = 512, numbers: dict[tuple[int, int], int] | None = None,
                wrong: np.ndarray | None = None, legend: bool = True,
                texts: list[str] | None = None) -> np.ndarray:
    """Draw grouped boxes on a copy of ``image`` with a legend and, optionally, a heat map.

    Args:
        image: uint8 [H, W, 3] RGB (or [H, W] grayscale).
        boxes: float [N, 4] xyxy in pixels of ``image``; N = 0 is allowed.
        categories: int [N], index into ``category_names``.
        groups: int [N], group id within its category.
        category_names: one name per category.
        group_scores: score per (category, group), shown after the group's name.
        affinity: float [N, N] same-group probabilities in [0, 1], drawn as a heat map with
            rows/cols in group order and the box indices on its axes, beside the image.
        title: text for a header above everything.
        min_side: images whose long side is shorter are upscaled to it before drawing.
        numbers: a number >= 1 per (category, group) present; the groups are then drawn in the
            style of their number (`number_style`) and labelled ``number category`` (the
            comparison's matched numbering). Default: group order, labels ``category/group``.
        wrong: int [N] bits `WRONG_GROUP` | `WRONG_CATEGORY` per box; boxes with any get a
            badge ``G`` / ``C`` / ``GC``.
        legend: add the legend panel.
        texts: N strings (a box's OCR text), written small inside each box (characters
            outside ASCII as '?'); None: none.

    Returns:
        A new uint8 [H', W', 3] RGB canvas: the (upscaled) image with group hulls, boxes and
        labels (one per group, inside the image), then the legend panel, then the heat map
        panel if ``affinity`` is given and N > 0, all under the title.

    Raises:
        DetgroupError: if shapes or dtypes do not match, or a category index is out of range.
    """
    image = _as_rgb(image, "image")
    boxes, categories, groups, affinity = _check(boxes, categories, groups, category_names,
                                                 affinity)
    if wrong is not None:
        wrong = _as_int(wrong, len(boxes), "wrong")
    _check_numbers(numbers, categories, groups)
    canvas, boxes, sizes = _zoom(image, boxes, min_side)
    grouped = _collect_groups(boxes, categories, groups, category_names, group_scores, numbers)
    _draw_overlay(canvas, boxes, grouped, sizes, wrong)
    if texts is not None:
        if len(texts) != len(boxes):
            raise DetgroupError(f"draw_groups: {len(texts)} texts for {len(boxes)} boxes")
        _draw_box_texts(canvas, boxes, texts)
    panels = [canvas]
    if legend:
        panels.append(_legend(grouped, len(boxes), canvas.shape[0], sizes,
                              badges=wrong is not None and bool(wrong.any())))
    if affinity is not None and len(boxes):
        panels.append(_heat_map(affinity, grouped, canvas.shape[0], sizes))
    out = _hstack_top(panels)
    if title:
        out = np.vstack([_header(out.shape[1], [(0, title)], sizes), out])
    return out


def _check_numbers(numbers: dict[tuple[int, int], int] | None, categories: np.ndarray,
                   groups: np.ndarray) -> None:
    if numbers is None:
        return
    missing = {(int(c), int(g)) for c, g in zip(categories, groups, strict=True)} - set(numbers)
    if missing:
        raise DetgroupError(f"numbers has no entry for the groups {sorted(missing)}")
    if any(int(v) < 1 for v in numbers.values()):
        raise DetgroupError("numbers must be >= 1")


def match_boxes(boxes: np.ndarray, others: np.ndarray, *, min_iou: float = 0.5
                ) -> tuple[np.ndarray, np.ndarray]:
    """Match ``boxes`` [N, 4] one-to-one to ``others`` [M, 4] (xyxy px) by IoU (Hungarian,
    maximising the summed IoU of pairs with IoU >= ``min_iou``).

    Returns int index arrays (i [K], j [K]) of the matched pairs, sorted by i.
    """
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    others = np.asarray(others, float).reshape(-1, 4)
    if not len(boxes) or not len(others):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(others)).numpy()  # [N, M]
    iou = np.nan_to_num(iou, nan=0.0)  # 0 / 0 between zero-area boxes
    # identical boxes (zero area included) match
    same = (boxes[:, None] == others[None]).all(-1)
    iou = np.where(same, 1.0, iou)
    weight = np.where(iou >= min_iou, iou, 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    keep = weight[rows, cols] > 0
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


@dataclass(frozen=True)
class Comparison:
    """Truth and prediction of one image with the predicted groups matched to the true ones.

    Fields:
        match: `detgroup.metrics.GroupMatch` over the boxes present on both sides
            (``box_pairs``).
        box_pairs: (true box indices [K], predicted box indices [K]): the boxes matched to
            each other (all of them, in order, when both sides have the same boxes).
        gt_numbers: number >= 1 per true (category, group): reading order of the group's
            top-left-most box.
        pred_numbers: number per predicted (category, group): its true group's number when
            matched, else numbers after the true groups' in reading order.
        pred_wrong: int [N_pred] bits `WRONG_GROUP` (the box's predicted group is not the match
            of its true group, or it has no true box) and `WRONG_CATEGORY`.
        gt_missed: bool [N_true], true boxes that no predicted box matched.
    """

    match: GroupMatch
    box_pairs: tuple[np.ndarray, np.ndarray]
    gt_numbers: dict[tuple[int, int], int]
    pred_numbers: dict[tuple[int, int], int]
    pred_wrong: np.ndarray
    gt_missed: np.ndarray


def _numbered(boxes: np.ndarray, categories: np.ndarray, groups: np.ndarray,
              first: int, fixed: dict[tuple[int, int], int]) -> dict[tuple[int, int], int]:
    """``fixed`` plus the other groups numbered from ``first`` in reading order of their
    top-left-most box."""
    numbers = dict(fixed)
    for i in _reading_order(boxes):
        key = (int(categories[i]), int(groups[i]))
        if key not in numbers:
            numbers[key] = first
            first += 1
    return numbers


def compare(gt_boxes: np.ndarray, gt_categories: np.ndarray, gt_groups: np.ndarray,
            pred_categories: np.ndarray, pred_groups: np.ndarray, *,
            pred_boxes: np.ndarray | None = None, min_iou: float = 0.5) -> Comparison:
    """Match a prediction to the truth of one image (see :class:`Comparison`).

    Args:
        gt_boxes: float [N, 4] xyxy px; gt_categories, gt_groups: int [N].
        pred_categories, pred_groups: int [M] of ``pred_boxes`` (default: the same N boxes).
        pred_boxes: float [M, 4] xyxy px when the prediction has boxes of its own (a
            detector's): matched to the true boxes one-to-one at IoU >= ``min_iou``.
    """
    gt_boxes = np.asarray(gt_boxes, float).reshape(-1, 4)
    gt_cat = np.asarray(gt_categories, np.int64).reshape(-1)
    gt_grp = np.asarray(gt_groups, np.int64).reshape(-1)
    pred_cat = np.asarray(pred_categories, np.int64).reshape(-1)
    pred_grp = np.asarray(pred_groups, np.int64).reshape(-1)
    if pred_boxes is None:
        if len(pred_cat) != len(gt_boxes):
            raise DetgroupError(f"the prediction has {len(pred_cat)} boxes, the truth "
                                f"{len(gt_boxes)}: give pred_boxes")
        pred_boxes = gt_boxes
        ti = pj = np.arange(len(gt_boxes))
    else:
        pred_boxes = np.asarray(pred_boxes, float).reshape(-1, 4)
        ti, pj = match_boxes(gt_boxes, pred_boxes, min_iou=min_iou)
    match = match_groups(gt_cat[ti], gt_grp[ti], pred_cat[pj], pred_grp[pj])
    gt_numbers = _numbered(gt_boxes, gt_cat, gt_grp, 1, {})
    fixed = {}
    for p, t in enumerate(match.gt_for_pred):
        if t >= 0:
            fixed[tuple(int(v) for v in match.pred_keys[p])] = \
                gt_numbers[tuple(int(v) for v in match.gt_keys[t])]
    pred_numbers = _numbered(pred_boxes, pred_cat, pred_grp, len(gt_numbers) + 1, fixed)
    pred_wrong = np.full(len(pred_boxes), WRONG_GROUP, np.int64)
    # matched boxes: group wrong when their predicted group is not their true group's match
    right_group = match.pred_for_gt[match.gt_index] == match.pred_index
    pred_wrong[pj] = np.where(right_group, 0, WRONG_GROUP) | np.where(
        pred_cat[pj] != gt_cat[ti], WRONG_CATEGORY, 0)
    gt_missed = np.ones(len(gt_boxes), bool)
    gt_missed[ti] = False
    return Comparison(match, (ti, pj), gt_numbers, pred_numbers, pred_wrong, gt_missed)


def comparison_panels(image: np.ndarray, gt_boxes: np.ndarray, gt_categories: np.ndarray,
                      gt_groups: np.ndarray, pred_categories: np.ndarray, pred_groups: np.ndarray,
                      category_names: list[str], *, pred_boxes: np.ndarray | None = None,
                      group_scores: dict[tuple[int, int], float] | None = None,
                      affinity: np.ndarray | None = None, min_side: int = 512,
                      legend: bool = True, comparison: Comparison | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The truth and the prediction of one image drawn with matched groups (see the module
    doc): (truth canvas, prediction canvas), each as `draw_groups` returns it.

    Arguments as in `compare` and `draw_groups`; ``group_scores`` and ``affinity`` [M, M]
    belong to the prediction. The heat map, if ``affinity`` is given, ends the prediction
    canvas: with the same boxes on both sides its rows follow the true groups (outer strip,
    outlines) and an inner strip shows each box's predicted group.
    """
    image = _as_rgb(image, "image")
    comparison = comparison or compare(gt_boxes, gt_categories, gt_groups, pred_categories,
                                       pred_groups, pred_boxes=pred_boxes)
    gt_boxes, gt_categories, gt_groups, _ = _check(gt_boxes, gt_categories, gt_groups,
                                                   category_names, None)
    same_boxes = pred_boxes is None
    pred_boxes = gt_boxes if same_boxes else pred_boxes
    truth = draw_groups(image, gt_boxes, gt_categories, gt_groups, category_names,
                        min_side=min_side, numbers=comparison.gt_numbers, legend=legend)
    pred = draw_groups(image, pred_boxes, pred_categories, pred_groups, category_names,
                       group_scores=group_scores, affinity=None if same_boxes else affinity,
                       min_side=min_side, numbers=comparison.pred_numbers,
                       wrong=comparison.pred_wrong, legend=legend)
    if same_boxes and affinity is not None and len(gt_boxes):
        heat = draw_heat_map(affinity, gt_boxes, gt_categories, gt_groups, category_names,
                             height=truth.shape[0], comparison=comparison,
                             pred_categories=pred_categories, pred_groups=pred_groups,
                             long_side=max(image.shape[:2]) * max(
                                 1.0, min_side / max(image.shape[:2])))
        pred = _hstack_top([pred, heat])
    return truth, pred


def draw_comparison(image: np.ndarray, gt_boxes: np.ndarray, gt_categories: np.ndarray,
                    gt_groups: np.ndarray, pred_categories: np.ndarray, pred_groups: np.ndarray,
                    category_names: list[str], *, pred_boxes: np.ndarray | None = None,
                    group_scores: dict[tuple[int, int], float] | None = None,
                    affinity: np.ndarray | None = None, min_side: int = 512,
                    legend: bool = True, comparison: Comparison | None = None,
                    title: str | None = None) -> np.ndarray:
    """Truth | prediction side by side in one uint8 RGB image, groups matched (module doc).

    Arguments as in `comparison_panels`; ``title`` goes into the header
    (``ground truth: TITLE``).
    """
    truth, pred = comparison_panels(image, gt_boxes, gt_categories, gt_groups, pred_categories,
                                    pred_groups, category_names, pred_boxes=pred_boxes,
                                    group_scores=group_scores, affinity=affinity,
                                    min_side=min_side, legend=legend, comparison=comparison)
    left = "ground truth" if not title else f"ground truth: {title}"
    return side_by_side(truth, pred, labels=(left, "prediction"))


def draw_heat_map(affinity: np.ndarray, boxes: np.ndarray, categories: np.ndarray,
                  groups: np.ndarray, category_names: list[str], *, height: int = 512,
                  comparison: Comparison | None = None,
                  pred_categories: np.ndarray | None = None,
                  pred_groups: np.ndarray | None = None,
                  long_side: float | None = None) -> np.ndarray:
    """The heat map panel alone: ``affinity`` [N, N] probabilities of N ``boxes`` (xyxy px),
    rows and columns ordered by the groups (``categories``, ``groups`` int [N]), the box
    indices on both axes; about ``height`` px tall.

    With a ``comparison`` (same boxes on both sides), ``categories``/``groups`` are the truth,
    drawn in the matched numbering, and an inner strip shows each box's predicted group
    (``pred_categories``, ``pred_groups`` [N]) in its matched colour. ``long_side`` sets the
    line and text sizes (default: ``height``).
    """
    boxes, categories, groups, affinity = _check(boxes, categories, groups, category_names,
                                                 affinity)
    sizes = _Sizes.for_side(int(long_side or max(height, 512)))
    numbers = None if comparison is None else comparison.gt_numbers
    grouped = _collect_groups(boxes, categories, groups, category_names, None, numbers)
    inner = None
    if comparison is not None:
        if pred_categories is None or pred_groups is None:
            raise DetgroupError("draw_heat_map with a comparison needs pred_categories and "
                                "pred_groups")
        inner = np.array([number_style(comparison.pred_numbers[(int(c), int(g))]).colour
                          for c, g in zip(pred_categories, pred_groups, strict=True)],
                         np.uint8).reshape(-1, 3)
    if not len(boxes):
        raise DetgroupError("draw_heat_map needs at least one box")
    title = "p(same group): rows by true group" if comparison else "affinity p(same group)"
    return _heat_map(affinity, grouped, height, sizes, inner=inner, title=title)


def _draw_box_texts(canvas: np.ndarray, boxes: np.ndarray, texts: list[str]) -> None:
    """Each box's text at its top-left corner, scaled to the box height, on a light halo."""
    for box, text in zip(boxes, texts, strict=True):
        label = (text or "").encode("ascii", "replace").decode("ascii")
        if not label:
            continue
        height = max(6.0, float(box[3] - box[1]))
        scale = max(0.25, min(1.0, 0.7 * height / 22.0))
        x, y = int(box[0]) + 1, int(box[1]) + 1
        for colour, thickness in (((255, 255, 255), 3), ((20, 20, 140), 1)):
            _put_text(canvas, label, x, y, scale, thickness, colour)


def side_by_side(left: np.ndarray, right: np.ndarray, *,
                 labels: tuple[str, str] = ("prediction", "ground truth")) -> np.ndarray:
    """Put two uint8 RGB images [H, W, 3] next to each other under a header with ``labels``.

    The shorter one is padded at the bottom; returns uint8 [H', W_left + gap + W_right, 3].
    """
    left, right = _as_rgb(left, "left image"), _as_rgb(right, "right image")
    sizes = _Sizes.for_side(max(left.shape[0], right.shape[0], 512))
    gap = np.empty((1, 2 * sizes.pad, 3), np.uint8)
    gap[:] = _PANEL_BG
    body = _hstack_top([left, gap, right])
    header = _header(body.shape[1], [(0, labels[0]), (left.shape[1] + gap.shape[1], labels[1])],
                     sizes)
    return np.vstack([header, body])


def save_rgb_png(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 RGB image [H, W, 3] (or grayscale [H, W]) to ``path`` as PNG, atomically."""
    image = _as_rgb(image, f"image for {path}")
    # Level 6 is about as small as 9 on overlays, at a fifth of the time.
    ok, data = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]),
                            [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise DetgroupError(f"could not encode {path} as PNG")
    atomic_write_bytes(path, data.tobytes())
