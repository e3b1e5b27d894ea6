"""Synthetic "pets in groups" scenes: procedurally drawn animals standing in groups.

Every image holds 1..G groups; a group is 1..M animals of one category that share an
*identity*: a fur colour, a marking pattern (none / spots / stripes / patch) and a collar
colour, each with a little per-animal noise. The identity is independent of the category, and
groups of one image never share all three cues but often share one or two, so the cues are
subtle. Members stand around their group's centre with a spread that makes groups interleave,
so position alone does not give the groups; appearance and position together do.

Each category has a body-shape prototype (ear droop and length, snout length, tail length,
thickness and curl). A *clear* animal is drawn near its category's prototype. An *ambiguous*
animal is drawn from one middle shape distribution that is the same for every category, so its
own pixels cannot tell its category: a per-box classifier is at chance on it. Every group keeps
at least one clear member (a lone animal is always clear), so the category is always
recoverable from the set of a group's members.

Scenes are deterministic: image ``i`` of split ``s`` is drawn from
``np.random.default_rng([seed, s, i])``, so any subset regenerates identically and one seed
always gives byte-identical PNG and JSON files.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from detgroup.atomic import atomic_write_bytes
from detgroup.config import SynthConfig  # the schema; re-exported here
from detgroup.data.coco_groups import write_coco_groups
from detgroup.errors import DetgroupError

log = logging.getLogger(__name__)

SPLITS = ("train", "val")

# Shape features, each in [0, 1]: ear droop (0 upright, 1 hanging), ear length, snout length,
# tail length, tail thickness, tail curl.
SHAPE_FEATURES = ("ear_droop", "ear_len", "snout", "tail_len", "tail_thick", "tail_curl")
KNOWN_PROTOTYPES: dict[str, tuple[float, ...]] = {
    "cat": (0.0, 0.35, 0.0, 1.0, 0.1, 1.0),
    "dog": (1.0, 0.55, 1.0, 0.45, 0.6, 0.0),
    "rabbit": (0.0, 1.0, 0.2, 0.0, 1.0, 0.0),
}
SHAPE_NOISE = 0.06  # per-feature standard deviation around a prototype

# Group identity palettes (RGB). Fur colours are pet-like and some are close to each other.
FUR_COLOURS = (
    (222, 136, 58),  # ginger
    (126, 82, 48),  # brown
    (146, 146, 152),  # grey
    (58, 56, 62),  # black
    (236, 218, 176),  # cream
    (206, 176, 84),  # golden
    (92, 108, 136),  # slate blue
    (176, 72, 54),  # russet
)
MARKINGS = ("none", "spots", "stripes", "patch")
COLLAR_COLOURS = (
    (228, 30, 36),  # red
    (36, 72, 226),  # blue
    (32, 176, 64),  # green
    (246, 214, 24),  # yellow
    (204, 44, 204),  # magenta
    (30, 206, 214),  # cyan
)
FUR_NOISE = 7.0  # per-animal RGB noise around the group's fur colour

BOX_AREA_PER_L2 = 1.7  # box area of an animal ~ 1.7 L^2 for body length L
CROWDING = 0.35  # animals' boxes cover at most about this fraction of the image


def check_config(cfg: SynthConfig) -> None:
    """Raise :class:`DetgroupError` naming the field when a knob is out of range."""
    problems = []
    if cfg.image_size < 64:
        problems.append(f"image_size must be >= 64, got {cfg.image_size}")
    if len(cfg.categories) < 2 or len(set(cfg.categories)) != len(cfg.categories):
        problems.append(f"categories must hold >= 2 distinct names, got {cfg.categories}")
    if cfg.num_train < 0 or cfg.num_val < 0:
        problems.append(f"num_train/num_val must be >= 0, got {cfg.num_train}/{cfg.num_val}")
    if not 1 <= cfg.min_groups <= cfg.max_groups:
        problems.append(f"need 1 <= min_groups <= max_groups, got {cfg.min_groups}, "
                        f"{cfg.max_groups}")
    if not 2 <= cfg.min_members <= cfg.max_members:
        problems.append(f"need 2 <= min_members <= max_members, got {cfg.min_members}, "
                        f"{cfg.max_members}")
    for name in ("lone_prob", "ambiguous_fraction", "box_jitter", "max_overlap", "text_noise"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            problems.append(f"{name} must be in [0, 1], got {getattr(cfg, name)}")
    if cfg.clutter < 0:
        problems.append(f"clutter must be >= 0, got {cfg.clutter}")
    if cfg.group_spread < 0:
        problems.append(f"group_spread must be >= 0, got {cfg.group_spread}")
    if not 0.0 < cfg.min_size <= cfg.max_size <= 0.3:
        problems.append(f"need 0 < min_size <= max_size <= 0.3, got {cfg.min_size}, "
                        f"{cfg.max_size}")
    if not 1 <= cfg.tiles <= 64:
        problems.append(f"tiles must be in [1, 64], got {cfg.tiles}")
    if problems:
        raise DetgroupError("synthetic dataset config: " + "; ".join(problems))


def category_prototypes(categories: list[str]) -> np.ndarray:
    """Shape prototype per category, float [C, len(SHAPE_FEATURES)] in [0, 1].

    cat, dog and rabbit have hand-made prototypes; any other name gets a fixed pseudo-random
    one derived from the name, so a category list always maps to the same shapes.
    """
    rows = []
    for name in categories:
        if name in KNOWN_PROTOTYPES:
            rows.append(KNOWN_PROTOTYPES[name])
        else:
            name_rng = np.random.default_rng(zlib.crc32(name.encode("utf-8")))
            rows.append(tuple(name_rng.choice([0.0, 1.0], size=len(SHAPE_FEATURES))))
    return np.asarray(rows, dtype=np.float64)


# ----------------------------------------------------------------------------------------
# Drawing one animal into its own patch


@dataclass
class _Animal:
    category: int  # class index 0..C-1
    group: int  # group index within the image
    ambiguous: bool
    shape: np.ndarray  # [len(SHAPE_FEATURES)] in [0, 1]
    cues: tuple[int, int, int]  # group identity: fur, marking, collar palette indices
    fur: np.ndarray  # [3] RGB float
    marking: int  # index into MARKINGS
    collar: np.ndarray  # [3] RGB float
    length: float  # body length in px
    facing_left: bool


def _pt(origin: tuple[float, float], length: float, x: float, y: float) -> tuple[int, int]:
    """Patch pixel (fixed point, 4 fractional bits) of body coordinates ``(x, y)`` in lengths."""
    return (round((origin[0] + x * length) * 16), round((origin[1] + y * length) * 16))


def _shade(colour: np.ndarray, factor: float) -> tuple[int, ...]:
    return tuple(int(v) for v in np.clip(np.asarray(colour) * factor, 0, 255))


class _Painter:
    """Draws anti-aliased primitives into a colour patch and its alpha mask at once."""

    SHIFT = 4  # fixed-point bits of the coordinates passed to OpenCV

    def __init__(self, height: int, width: int) -> None:
        self.rgb = np.zeros((height, width, 3), np.uint8)
        self.alpha = np.zeros((height, width), np.uint8)

    def ellipse(self, c: tuple[int, int], axes: tuple[float, float], angle: float,
                colour: tuple[int, ...]) -> None:
        ax = (max(1, round(axes[0] * 16)), max(1, round(axes[1] * 16)))
        cv2.ellipse(self.rgb, c, ax, angle, 0, 360, colour, -1, cv2.LINE_AA, self.SHIFT)
        cv2.ellipse(self.alpha, c, ax, angle, 0, 360, 255, -1, cv2.LINE_AA, self.SHIFT)

    def polygon(self, pts: np.ndarray, colour: tuple[int, ...]) -> None:
        pts = np.round(pts * 16).astype(np.int32)
        cv2.fillPoly(self.rgb, [pts], colour, cv2.LINE_AA, self.SHIFT)
        cv2.fillPoly(self.alpha, [pts], 255, cv2.LINE_AA, self.SHIFT)

    def polyline(self, pts: np.ndarray, colour: tuple[int, ...], thickness: float) -> None:
        pts = np.round(pts * 16).astype(np.int32)
        t = max(1, round(thickness))
        cv2.polylines(self.rgb, [pts], False, colour, t, cv2.LINE_AA, self.SHIFT)
        cv2.polylines(self.alpha, [pts], False, 255, t, cv2.LINE_AA, self.SHIFT)


def _ear_polygon(base: np.ndarray, direction: float, length: float, width: float,
                 roundness: float) -> np.ndarray:
    """Ear outline [K, 2] px: pointed (roundness 0) to rounded lobe (roundness 1)."""
    s = np.linspace(0.0, 1.0, 12)
    half = 0.5 * width * ((1 - roundness) * (1 - s) + roundness * np.sqrt(np.clip(1 - s**2, 0, 1)))
    along = np.stack([np.cos(direction), np.sin(direction)])
    across = np.stack([-along[1], along[0]])
    centre_line = base[None, :] + (s * length)[:, None] * along[None, :]
    left = centre_line + half[:, None] * across[None, :]
    right = centre_line - half[:, None] * across[None, :]
    return np.concatenate([left, right[::-1]], axis=0)


def _draw_animal(animal: _Animal, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render one animal facing right (mirrored if facing left).

    Returns ``rgb`` uint8 [h, w, 3] and ``alpha`` uint8 [h, w]; body coordinates are in units
    of the body length L with the body centre at ``origin`` and y pointing down.
    """
    L = animal.length
    droop, ear_len, snout, tail_len, tail_thick, tail_curl = animal.shape
    h, w = math.ceil(2.6 * L), math.ceil(3.2 * L)
    origin = (1.6 * L, 1.4 * L)
    p = _Painter(h, w)
    fur = animal.fur
    dark = _shade(fur, 0.62)

    def pt(x: float, y: float) -> tuple[int, int]:
        return _pt(origin, L, x, y)

    def px(x: float, y: float) -> np.ndarray:
        return np.array([origin[0] + x * L, origin[1] + y * L])

    # Tail: from the rump, going back and turning upwards by `curl`.
    n_seg = 8
    tail_length = (0.12 + 0.62 * tail_len) * L
    start_angle = math.radians(165 + 55 * (1 - tail_curl))  # 180 = backwards, 270 = up
    turn = math.radians(110) * tail_curl
    pts = [px(-0.45, -0.06)]
    for k in range(n_seg):
        a = start_angle + turn * (k + 0.5) / n_seg
        pts.append(pts[-1] + tail_length / n_seg * np.array([math.cos(a), math.sin(a)]))
    tail_w = (0.05 + 0.11 * tail_thick) * L
    p.polyline(np.array(pts), _shade(fur, 0.9), max(1.5, tail_w))
    tip = pts[-1]
    p.ellipse((round(tip[0] * 16), round(tip[1] * 16)), (0.8 * tail_w, 0.8 * tail_w), 0,
              _shade(fur, 0.9))

    # Legs: far legs darker, drawn first.
    leg_len, leg_w = 0.32 * L, max(1.5, 0.1 * L)
    for x, shade in ((-0.3, 0.7), (0.26, 0.7), (-0.2, 0.95), (0.36, 0.95)):
        p.polyline(np.array([px(x, 0.05), px(x, 0.05) + [0, leg_len]]), _shade(fur, shade), leg_w)

    # Body, then its markings clipped to the body.
    body_axes = (0.48 * L, 0.26 * L)
    p.ellipse(pt(0, 0), body_axes, 0, _shade(fur, 1.0))
    _draw_marking(p, animal, origin, rng)

    # Neck, collar, head.
    head = (0.55, -0.32)
    neck_w = 0.26 * L
    p.polyline(np.array([px(0.3, -0.08), px(*head)]), _shade(fur, 1.0), neck_w)
    collar_c = (0.43, -0.19)
    cdir = np.array([0.55 - 0.3, -0.32 + 0.08])
    cdir /= np.linalg.norm(cdir)
    perp = np.array([-cdir[1], cdir[0]]) * 0.18
    p.polyline(np.array([px(collar_c[0] - perp[0], collar_c[1] - perp[1]),
                         px(collar_c[0] + perp[0], collar_c[1] + perp[1])]),
               _shade(animal.collar, 1.0), max(2.0, 0.14 * L))

    # Ears behind the head: direction turns from upright to hanging down the head's back.
    head_r = 0.21
    ear_length = (0.14 + 0.32 * ear_len) * L
    ear_width = (0.11 + 0.05 * droop) * L
    for dx, extra in ((-0.09, 0.0), (0.05, 0.25)):
        base = px(head[0] + dx, head[1] - 0.14)
        direction = math.radians(-95 - 10 * extra - 120 * droop)  # -90 = straight up
        shade = 0.62 if droop > 0.5 else 0.85 + 0.1 * extra
        p.polygon(_ear_polygon(base, direction, ear_length, ear_width, droop), _shade(fur, shade))

    p.ellipse(pt(*head), (head_r * L, head_r * L * 0.95), 0, _shade(fur, 1.0))
    # Hanging ears lie in front of the head.
    if droop > 0.5:
        base = px(head[0] - 0.06, head[1] - 0.12)
        direction = math.radians(-95 - 120 * droop)
        p.polygon(_ear_polygon(base, direction, ear_length, ear_width, droop), dark)

    # Snout, nose and eye.
    snout_len = (0.07 + 0.1 * snout) * L
    snout_c = (head[0] + 0.13 + snout_len / L * 0.8, head[1] + 0.06)
    p.ellipse(pt(*snout_c), (snout_len, (0.075 + 0.035 * snout) * L), 8, _shade(fur, 1.12))
    nose = (snout_c[0] + snout_len / L * 0.9, snout_c[1] - 0.02)
    p.ellipse(pt(*nose), (max(1.0, 0.04 * L), max(1.0, 0.035 * L)), 0, (30, 22, 22))
    p.ellipse(pt(head[0] + 0.06, head[1] - 0.06), (max(0.9, 0.035 * L),) * 2, 0, (20, 20, 20))

    if animal.facing_left:
        return p.rgb[:, ::-1].copy(), p.alpha[:, ::-1].copy()
    return p.rgb, p.alpha


def _draw_marking(p: _Painter, animal: _Animal, origin: tuple[float, float],
                  rng: np.random.Generator) -> None:
    """Paint the group's marking pattern onto the body ellipse only."""
    kind = MARKINGS[animal.marking]
    if kind == "none":
        return
    L = animal.length
    layer = p.rgb.copy()
    dark = _shade(animal.fur, 0.45)
    light = (40, 30, 26) if animal.fur.mean() > 180 else (246, 242, 232)

    def pt(x: float, y: float) -> tuple[int, int]:
        return _pt(origin, L, x, y)

    if kind == "spots":
        for _ in range(4):
            x, y = rng.uniform(-0.35, 0.35), rng.uniform(-0.12, 0.12)
            r = rng.uniform(0.08, 0.11) * L
            cv2.ellipse(layer, pt(x, y), (round(r * 16), round(r * 16)), 0, 0, 360, dark, -1,
                        cv2.LINE_AA, 4)
    elif kind == "stripes":
        t = max(2, round(0.09 * L))
        for x in np.linspace(-0.3, 0.3, 4) + rng.uniform(-0.04, 0.04):
            cv2.line(layer, pt(x - 0.05, -0.3), pt(x + 0.05, 0.3), dark, t, cv2.LINE_AA, 4)
    else:  # patch: a large light (or dark, on light fur) saddle
        x = rng.uniform(-0.15, 0.15)
        cv2.ellipse(layer, pt(x, -0.05), (round(0.24 * L * 16), round(0.17 * L * 16)), 0, 0, 360,
                    light, -1, cv2.LINE_AA, 4)
    body = np.zeros(p.alpha.shape, np.uint8)
    cv2.ellipse(body, pt(0, 0), (round(0.46 * L * 16), round(0.25 * L * 16)), 0, 0, 360, 255, -1,
                cv2.LINE_AA, 4)
    a = body[..., None].astype(np.float32) / 255.0
    p.rgb[:] = np.round(layer * a + p.rgb * (1 - a)).astype(np.uint8)


# ----------------------------------------------------------------------------------------
# Background and clutter


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gradient between two ground colours plus low-frequency and fine noise, float [H, W, 3]."""
    grounds = np.array([(96, 140, 70), (150, 170, 90), (190, 175, 130), (140, 135, 125),
                        (110, 120, 80), (170, 150, 110)], np.float32)
    a, b = grounds[rng.choice(len(grounds), 2, replace=False)]
    a = a + rng.normal(0, 10, 3)
    b = b + rng.normal(0, 10, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    t = (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) + 0.5
    img = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
    coarse = rng.normal(0, 14, (8, 8, 3)).astype(np.float32)
    img += cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 5, (size, size, 3)).astype(np.float32)
    return img


def _draw_clutter(img: np.ndarray, rng: np.random.Generator, count: int, scale: float) -> None:
    """Unannotated distractors: bushes, balls, blobs and sticks, in place on ``img``."""
    size = img.shape[0]
    for _ in range(count):
        kind = rng.integers(4)
        cx, cy = rng.uniform(0, size, 2)
        r = scale * rng.uniform(0.25, 0.6)
        if kind == 0:  # bush: a cluster of green discs
            base = np.array([60, 120, 50]) + rng.normal(0, 20, 3)
            for _ in range(rng.integers(4, 9)):
                ox, oy = rng.normal(0, r * 0.6, 2)
                rr = r * rng.uniform(0.35, 0.7)
                col = tuple(float(v) for v in np.clip(base * rng.uniform(0.7, 1.2), 0, 255))
                cv2.circle(img, (int(cx + ox), int(cy + oy)), max(1, int(rr)), col, -1,
                           cv2.LINE_AA)
        elif kind == 1:  # ball with a highlight
            col = tuple(float(v) for v in rng.uniform(30, 240, 3))
            rr = max(2, int(r * 0.45))
            cv2.circle(img, (int(cx), int(cy)), rr, col, -1, cv2.LINE_AA)
            cv2.circle(img, (int(cx - rr / 3), int(cy - rr / 3)), max(1, rr // 3),
                       (245, 245, 245), -1, cv2.LINE_AA)
        elif kind == 2:  # blob: a random polygon, sometimes in a fur colour
            if rng.random() < 0.5:
                col_arr = np.array(FUR_COLOURS[rng.integers(len(FUR_COLOURS))], float)
            else:
                col_arr = rng.uniform(40, 220, 3)
            angles = np.sort(rng.uniform(0, 2 * np.pi, 7))
            radii = r * rng.uniform(0.4, 1.0, 7)
            pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
            cv2.fillPoly(img, [pts.astype(np.int32)], tuple(float(v) for v in col_arr),
                         cv2.LINE_AA)
        else:  # stick
            a = rng.uniform(0, np.pi)
            d = np.array([np.cos(a), np.sin(a)]) * r * 1.2
            col = tuple(float(v) for v in np.array([110, 80, 50]) + rng.normal(0, 15, 3))
            cv2.line(img, (int(cx - d[0]), int(cy - d[1])), (int(cx + d[0]), int(cy + d[1])),
                     col, max(1, int(scale * 0.06)), cv2.LINE_AA)


# ----------------------------------------------------------------------------------------
# Scene layout


def _sample_identities(rng: np.random.Generator, n_groups: int) -> list[tuple[int, int, int]]:
    """Distinct (fur, marking, collar) index triples, one per group."""
    identities: list[tuple[int, int, int]] = []
    while len(identities) < n_groups:
        ident = (int(rng.integers(len(FUR_COLOURS))), int(rng.integers(len(MARKINGS))),
                 int(rng.integers(len(COLLAR_COLOURS))))
        if ident not in identities:
            identities.append(ident)
    return identities


def _sample_animals(rng: np.random.Generator, cfg: SynthConfig) -> list[_Animal]:
    """Groups, categories, identities and shapes of one scene (positions come later)."""
    protos = category_prototypes(cfg.categories)
    middle = protos.mean(axis=0)
    n_groups = int(rng.integers(cfg.min_groups, cfg.max_groups + 1))
    identities = _sample_identities(rng, n_groups)
    sizes = [1 if rng.random() < cfg.lone_prob
             else int(rng.integers(cfg.min_members, cfg.max_members + 1))
             for _ in range(n_groups)]
    n_total = sum(sizes)
    size = cfg.image_size
    body = size * rng.uniform(cfg.min_size, cfg.max_size)
    body = min(body, math.sqrt(CROWDING * size * size / (n_total * BOX_AREA_PER_L2)))
    animals = []
    for g, (n, cues) in enumerate(zip(sizes, identities, strict=True)):
        fur_i, marking, collar_i = cues
        category = int(rng.integers(len(cfg.categories)))
        ambiguous = rng.random(n) < cfg.ambiguous_fraction
        if ambiguous.all():
            ambiguous[rng.integers(n)] = False
        for amb in ambiguous:
            centre = middle if amb else protos[category]
            shape = np.clip(centre + rng.normal(0, SHAPE_NOISE, len(SHAPE_FEATURES)), 0, 1)
            animals.append(_Animal(
                category=category, group=g, ambiguous=bool(amb), shape=shape, cues=cues,
                fur=np.array(FUR_COLOURS[fur_i], float) + rng.normal(0, FUR_NOISE, 3),
                marking=marking,
                collar=np.array(COLLAR_COLOURS[collar_i], float) + rng.normal(0, 6, 3),
                length=body * rng.uniform(0.9, 1.1),
                facing_left=bool(rng.random() < 0.5),
            ))
    return animals


def _tight_box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the pixels with alpha >= 128, x1/y1 exclusive."""
    ys, xs = np.nonzero(alpha >= 128)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _overlap(box: np.ndarray, boxes: np.ndarray) -> float:
    """Largest intersection of ``box`` [4] with ``boxes`` [K, 4] over the smaller area."""
    if len(boxes) == 0:
        return 0.0
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return float((iw * ih / np.minimum(area, areas)).max())


def _place(rng: np.random.Generator, sizes: np.ndarray, centres: np.ndarray,
           spreads: np.ndarray, image_size: int, max_overlap: float) -> np.ndarray:
    """Box positions xyxy [N, 4] for boxes of ``sizes`` [N, 2] (w, h) around ``centres``.

    Each box is tried up to 40 times, widening the spread, until it overlaps earlier boxes by
    at most ``max_overlap``; otherwise the least overlapping try is kept.
    """
    placed = np.zeros((0, 4))
    for (bw, bh), centre, spread in zip(sizes, centres, spreads, strict=True):
        best, best_overlap = None, np.inf
        for attempt in range(40):
            c = centre + rng.normal(0, spread * (1 + attempt / 15), 2)
            x0 = float(np.clip(c[0] - bw / 2, 0, image_size - bw))
            y0 = float(np.clip(c[1] - bh / 2, 0, image_size - bh))
            box = np.array([x0, y0, x0 + bw, y0 + bh])
            ov = _overlap(box, placed)
            if ov < best_overlap:
                best, best_overlap = box, ov
            if ov <= max_overlap:
                break
        placed = np.vstack([placed, best])
    return placed


def render_scene(
    rng: np.random.Generator, cfg: SynthConfig
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw one scene.

    Returns ``image`` uint8 [S, S, 3] RGB with S = ``cfg.image_size`` and one dict per animal
    (in a random order): ``bbox`` [x, y, w, h] float px (jittered ground truth, inside the
    image), ``category`` class index into ``cfg.categories``, ``group`` group index within the
    image, ``ambiguous`` bool and ``cues`` (fur, marking, collar) palette indices.
    """
    check_config(cfg)
    size = cfg.image_size
    animals = _sample_animals(rng, cfg)
    canvas = _background(rng, size)
    _draw_clutter(canvas, rng, cfg.clutter, cfg.max_size * size * 1.6)

    sprites = [_draw_animal(a, rng) for a in animals]
    tight = np.array([_tight_box(alpha) for _, alpha in sprites], float)  # [N, 4] patch xyxy
    wh = tight[:, 2:] - tight[:, :2]
    n_groups = max(a.group for a in animals) + 1
    group_centres = rng.uniform(0.12 * size, 0.88 * size, (n_groups, 2))
    group_sizes = np.bincount([a.group for a in animals], minlength=n_groups)
    centres = np.array([group_centres[a.group] for a in animals])
    spreads = np.array([cfg.group_spread * size * math.sqrt(group_sizes[a.group])
                        for a in animals])
    order = rng.permutation(len(animals))  # placement order: groups interleave
    boxes = np.zeros((len(animals), 4))
    boxes[order] = _place(rng, wh[order], centres[order], spreads[order], size, cfg.max_overlap)

    # Paint back to front (by the bottom edge), alpha-blending each sprite at its box.
    for k in np.argsort(boxes[:, 3], kind="stable"):
        rgb, alpha = sprites[k]
        ox, oy = round(boxes[k, 0] - tight[k, 0]), round(boxes[k, 1] - tight[k, 1])
        boxes[k] = tight[k] + [ox, oy, ox, oy]  # whole pixels, still inside the image
        h, w = alpha.shape
        sx0, sy0 = max(0, -ox), max(0, -oy)
        sx1, sy1 = min(w, size - ox), min(h, size - oy)
        a = alpha[sy0:sy1, sx0:sx1, None].astype(np.float32) / 255.0
        region = canvas[oy + sy0:oy + sy1, ox + sx0:ox + sx1]
        region[:] = rgb[sy0:sy1, sx0:sx1] * a + region * (1 - a)
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)

    anns = []
    for k in rng.permutation(len(animals)):
        x0, y0, x1, y1 = boxes[k]
        bw, bh = x1 - x0, y1 - y0
        jit = rng.normal(0, cfg.box_jitter, 4) * [bw, bh, bw, bh]
        x0, x1 = np.clip([x0 + jit[0], x1 + jit[2]], 0, size)
        y0, y1 = np.clip([y0 + jit[1], y1 + jit[3]], 0, size)
        x1, y1 = max(x1, x0 + 1.0), max(y1, y0 + 1.0)
        x0, y0 = min(x0, size - 1.0), min(y0, size - 1.0)
        x1, y1 = min(x1, float(size)), min(y1, float(size))
        a = animals[k]
        anns.append({
            "bbox": [round(float(x0), 2), round(float(y0), 2),
                     round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
            "category": a.category,
            "group": a.group,
            "ambiguous": a.ambiguous,
            "cues": a.cues,
        })
    return image, anns


# ----------------------------------------------------------------------------------------
# Writing a dataset


def render_tiled_scene(
    seed: tuple[int, ...], cfg: SynthConfig
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """:func:`render_scene` of a ``cfg.tiles`` x ``cfg.tiles`` grid: tile t is drawn from
    ``default_rng([*seed, t])`` and shifted into place; group indices are made unique across
    tiles. With ``tiles`` 1 this is ``render_scene(default_rng(seed), cfg)``."""
    if cfg.tiles == 1:
        return render_scene(np.random.default_rng(list(seed)), cfg)
    size, t = cfg.image_size, cfg.tiles
    image = np.zeros((size * t, size * t, 3), np.uint8)
    anns: list[dict[str, Any]] = []
    groups = 0
    for tile in range(t * t):
        row, col = divmod(tile, t)
        part, tile_anns = render_scene(np.random.default_rng([*seed, tile]), cfg)
        image[row * size:(row + 1) * size, col * size:(col + 1) * size] = part
        for ann in tile_anns:
            x, y, w, h = ann["bbox"]
            anns.append({**ann, "bbox": [round(x + col * size, 2), round(y + row * size, 2), w, h],
                         "group": ann["group"] + groups})
        groups += max((a["group"] for a in tile_anns), default=-1) + 1
    return image, anns


def _encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 image [H, W, 3]."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode a PNG")
    return buf.tobytes()


def noisy_word(word: str, noise: float, rng: np.random.Generator) -> str:
    """``word`` with each character replaced by a random lower-case letter with probability
    ``noise``, in random case (capitalised or upper with probability 1/4 each)."""
    letters = [chr(ord("a") + int(rng.integers(26))) if rng.random() < noise else c
               for c in word]
    text = "".join(letters)
    case = rng.random()
    return text.capitalize() if case < 0.25 else text.upper() if case < 0.5 else text


def generate_synthetic(out_dir: str | Path, cfg: SynthConfig, *,
                       progress: bool = False) -> dict[str, Path]:
    """Write the train and val splits under ``out_dir``.

    Layout: ``OUT/{train,val}/images/NNNNNN.png`` and ``OUT/{train,val}/annotations.json``
    (COCO with groups; each annotation also carries ``"ambiguous": bool``, and the file's
    ``info`` holds the config). Returns ``{"train": ann_path, "val": ann_path}``.
    """
    check_config(cfg)
    out_dir = Path(out_dir)
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(cfg.categories)]
    paths = {}
    for split_index, (split, count) in enumerate(zip(SPLITS, (cfg.num_train, cfg.num_val),
                                                     strict=True)):
        image_dir = out_dir / split / "images"
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in tqdm(range(count), desc=f"synth {split}", disable=not progress):
            image, anns = render_tiled_scene((cfg.seed, split_index, i), cfg)
            name = f"{i:06d}.png"
            atomic_write_bytes(image_dir / name, _encode_png(image))
            images.append({"id": i + 1, "file_name": name, "width": image.shape[1],
                           "height": image.shape[0]})
            text_rng = np.random.default_rng([cfg.seed, split_index, i, 1])
            for ann in anns:
                x, y, w, h = ann["bbox"]
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i + 1,
                    "category_id": ann["category"] + 1, "bbox": [x, y, w, h],
                    "area": round(w * h, 2), "iscrowd": 0, "group_id": ann["group"] + 1,
                    "ambiguous": ann["ambiguous"],
                })
                if cfg.text_noise > 0:
                    annotations[-1]["text"] = noisy_word(cfg.categories[ann["category"]],
                                                         cfg.text_noise, text_rng)
        data = {
            "info": {"description": f"detgroup synthetic pets in groups, {split} split",
                     "synth_config": asdict(cfg)},
            "images": images, "annotations": annotations, "categories": categories,
        }
        paths[split] = out_dir / split / "annotations.json"
        write_coco_groups(paths[split], data)
        log.info("wrote %d %s images, %d boxes to %s", count, split, len(annotations),
                 paths[split])
    return paths
