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
outline) and a label ``name/group score`` at its top-left; lone boxes are drawn thinner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detgroup.atomic import atomic_write_bytes
from detgroup.errors import DetgroupError

__all__ = [
    "OKABE_ITO",
    "GroupStyle",
    "draw_groups",
    "group_palette",
    "group_styles",
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
    bad = np.flatnonzero(~np.isfinite(boxes).all(1))
    if len(bad):
        raise DetgroupError(f"boxes must be finite; bad box indices {bad.tolist()}")
    bad = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
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
        affinity = np.asarray(affinity, float)
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


def _collect_groups(boxes: np.ndarray, categories: np.ndarray, groups: np.ndarray,
                    category_names: list[str],
                    group_scores: dict[tuple[int, int], float] | None) -> list[_Group]:
    """The groups of one image in group order; members sorted by box position, so the result
    does not depend on the order of the boxes."""
    reading = np.lexsort((boxes[:, 2], boxes[:, 0], boxes[:, 3], boxes[:, 1]))  # [N]
    out = []
    for (c, g), style in group_styles(categories, groups).items():
        members = reading[(categories[reading] == c) & (groups[reading] == g)]
        score = None if group_scores is None else group_scores.get((c, g))
        out.append(_Group((c, g), f"{category_names[c]}/{g}", members, style,
                          None if score is None else float(score)))
    return out


def _overlap(rect: tuple[int, int, int, int], others: np.ndarray) -> float:
    """Total area of ``rect`` (x0, y0, x1, y1) covered by each of ``others`` [K, 4], summed."""
    if len(others) == 0:
        return 0.0
    w = np.minimum(rect[2], others[:, 2]) - np.maximum(rect[0], others[:, 0])
    h = np.minimum(rect[3], others[:, 3]) - np.maximum(rect[1], others[:, 1])
    return float((np.clip(w, 0, None) * np.clip(h, 0, None)).sum())


def _draw_overlay(canvas: np.ndarray, boxes: np.ndarray, groups: list[_Group],
                  sizes: _Sizes) -> None:
    """Draw hulls, boxes and labels onto ``canvas`` (boxes in its pixels), in place."""
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

    # Labels last, on top: groups with hulls first, each at the spot that covers no other label
    # and the fewest other boxes: above its top-left-most corner, left of it, below it (inside)
    # or below the group. In crowded scans a label with no such spot, or a lone group's label
    # that would cover another box, is left out; the legend still lists every group.
    placed = np.zeros((0, 4))
    for grp in sorted(groups, key=lambda g: len(g.members) == 1):
        points = hulls[grp.key] if grp.key in hulls else _rect_points(boxes[grp.members[0]])
        x0, y0 = np.round(points[np.argmin(points.sum(1))]).astype(int)  # top-left-most corner
        y1 = int(np.ceil(points[:, 1].max()))
        text = grp.name if grp.score is None else f"{grp.name} {grp.score:.2f}"
        tw, th, base = _text_size(text, sizes.font, sizes.text)
        w, h = tw + 2 * sizes.pad, th + base + 2 * sizes.pad
        others = np.delete(boxes, grp.members, axis=0)
        best, best_cost = (0, 0, 0, 0), math.inf
        for rank, (x, y) in enumerate([(x0, y0 - h), (x0 - w, y0), (x0, y0), (x0, y1)]):
            x = int(np.clip(x, 0, max(width - w, 0)))
            y = int(np.clip(y, 0, max(height - h, 0)))
            rect = (x, y, x + w, y + h)
            covered = _overlap(rect, others)
            if _overlap(rect, placed) == 0 and covered + rank < best_cost and (
                    covered == 0 or len(grp.members) > 1):
                best, best_cost = rect, covered + rank
        if best_cost == math.inf:
            continue  # no free spot: the legend still lists the group
        placed = np.vstack([placed, best])
        cv2.rectangle(canvas, best[:2], (best[2] - 1, best[3] - 1), grp.style.colour, cv2.FILLED)
        _put_text(canvas, text, best[0] + sizes.pad, best[1] + sizes.pad, sizes.font, sizes.text,
                  _contrast(grp.style.colour))


def _legend(groups: list[_Group], n_boxes: int, height: int, sizes: _Sizes) -> np.ndarray:
    """A panel listing each group: a swatch in its style, its name, member count and score."""
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
    per_col = max(1, (height - top - 2 * pad) // row_h)
    n_cols = max(1, math.ceil(len(groups) / per_col))
    panel_w = max(n_cols * col_w, _text_size(title, scale, thickness)[0]) + 4 * pad
    panel_h = max(height, top + min(len(groups), per_col) * row_h + 2 * pad)
    panel = np.empty((panel_h, panel_w, 3), np.uint8)
    panel[:] = _PANEL_BG
    _put_text(panel, title, 2 * pad, 2 * pad, scale, thickness, _PANEL_FG)
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


def _heat_map(affinity: np.ndarray, groups: list[_Group], height: int,
              sizes: _Sizes) -> np.ndarray:
    """A panel with ``affinity`` [N, N] rows/cols in group order, viridis, with group blocks
    outlined in the group colour, categories separated by white lines and a colour bar."""
    scale, thickness, pad = sizes.font, sizes.text, sizes.pad
    _, th, base = _text_size("Ag", scale, thickness)
    text_h = th + base
    strip = max(4, 2 * sizes.line)  # group colour strips along the top and left
    top = text_h + 3 * pad + strip
    bottom = 2 * text_h + 4 * pad  # colour bar and its 0/1 labels
    side = max(height - top - bottom, 16)
    left = 2 * pad + strip

    order = np.concatenate([g.members for g in groups])  # [N]
    n = len(order)
    cell = np.minimum(np.arange(side) * n // side, n - 1)  # [side] matrix row of each pixel row
    values = np.round(affinity[np.ix_(order, order)] * 255).astype(np.uint8)[np.ix_(cell, cell)]
    matrix = cv2.applyColorMap(values, cv2.COLORMAP_VIRIDIS)[:, :, ::-1]  # BGR -> RGB

    panel = np.empty((top + side + bottom, left + side + 2 * pad, 3), np.uint8)
    panel[:] = _PANEL_BG
    _put_text(panel, "affinity p(same group)", left, pad, scale, thickness, _PANEL_FG)
    panel[top:top + side, left:left + side] = matrix

    def edge(k: int) -> int:  # first pixel of matrix row k
        return left + -(-k * side // n)

    start = 0
    for i, grp in enumerate(groups):
        stop = start + len(grp.members)
        a, b = edge(start), edge(stop)
        panel[top - strip:top - 1, a:b] = grp.style.colour
        panel[top + a - left:top + b - left, left - strip:left - 1] = grp.style.colour
        if len(grp.members) > 1:
            cv2.rectangle(panel, (a, top + a - left), (b - 1, top + b - 1 - left),
                          grp.style.colour, max(1, sizes.thin))
        if i and grp.key[0] != groups[i - 1].key[0]:
            cv2.line(panel, (a, top), (a, top + side - 1), (255, 255, 255), 1)
            cv2.line(panel, (left, top + a - left), (left + side - 1, top + a - left),
                     (255, 255, 255), 1)
        start = stop

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


def draw_groups(image: np.ndarray, boxes: np.ndarray, categories: np.ndarray, groups: np.ndarray,
                category_names: list[str], *,
                group_scores: dict[tuple[int, int], float] | None = None,
                affinity: np.ndarray | None = None, title: str | None = None,
                min_side: int = 512, texts: list[str] | None = None) -> np.ndarray:
    """Draw grouped boxes on a copy of ``image`` with a legend and, optionally, a heat map.

    Args:
        image: uint8 [H, W, 3] RGB (or [H, W] grayscale).
        boxes: float [N, 4] xyxy in pixels of ``image``; N = 0 is allowed.
        categories: int [N], index into ``category_names``.
        groups: int [N], group id within its category.
        category_names: one name per category.
        group_scores: score per (category, group), shown after the group's name.
        affinity: float [N, N] same-group probabilities in [0, 1], drawn as a heat map with
            rows/cols in group order beside the image.
        title: text for a header above everything.
        min_side: images whose long side is shorter are upscaled to it before drawing.
        texts: N strings (a box's OCR text), written small inside each box (characters
            outside ASCII as '?'); None: none.

    Returns:
        A new uint8 [H', W', 3] RGB canvas: the (upscaled) image with group hulls, boxes and
        labels, then the legend panel, then the heat map panel if ``affinity`` is given and
        N > 0, all under the title. Labels that would cover other labels are left out; the
        legend lists every group with its number of members.

    Raises:
        DetgroupError: if shapes or dtypes do not match, or a category index is out of range.
    """
    image = _as_rgb(image, "image")
    boxes, categories, groups, affinity = _check(boxes, categories, groups, category_names,
                                                 affinity)
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

    grouped = _collect_groups(boxes, categories, groups, category_names, group_scores)
    _draw_overlay(canvas, boxes, grouped, sizes)
    if texts is not None:
        if len(texts) != len(boxes):
            raise DetgroupError(f"draw_groups: {len(texts)} texts for {len(boxes)} boxes")
        _draw_box_texts(canvas, boxes, texts)
    panels = [canvas, _legend(grouped, len(boxes), canvas.shape[0], sizes)]
    if affinity is not None and len(boxes):
        panels.append(_heat_map(affinity, grouped, canvas.shape[0], sizes))
    out = _hstack_top(panels)
    if title:
        out = np.vstack([_header(out.shape[1], [(0, title)], sizes), out])
    return out


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
