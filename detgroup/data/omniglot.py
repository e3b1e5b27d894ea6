"""Omniglot glyph scenes → COCO with groups: box = glyph, category = alphabet, group = character.

Source: ``images_background.npz`` (``images`` bool [C, 20, 105, 105], True = paper; C = 964 in
the real set) and ``alphabets.csv`` (columns ``alphabet, first, count``: the alphabets whose
character range is known, in file order; characters of one alphabet are contiguous).

A scene is a grey sheet of paper with dark handwritten glyphs. Each glyph is cropped to its ink,
scaled so that its longer side is a random 40..56 px (``glyph_size``), and put at a uniformly
random position where it overlaps earlier glyphs by at most :data:`MAX_OVERLAP` of the smaller
box (the least overlapping of :data:`PLACEMENT_TRIES` tries otherwise). Positions, sizes and the
order of annotations carry no information about identity. The canvas is ``canvas`` px square,
larger when the glyphs would cover more than :data:`DENSITY` of it (side rounded up to 32 px),
so every split has the same glyph density. Paper and ink tones vary per scene.

Characters are split per alphabet, in index order: the first :data:`TRAIN_FRACTION` (rounded)
of its characters train, the next :data:`VAL_FRACTION` (rounded) val, the rest test, so val
and test characters are never seen in training. Splits, under ``OUT/<split>/``:

* ``train``: ``train_scenes`` scenes, each of 1..3 alphabets (``alphabets_per_scene``) with 4..10
  of their train characters (``chars_per_scene``, at least one per alphabet), 2..6 random
  samples of each (``samples_per_char``).
* ``val``, ``test`` (the "Learning to cluster" transfer protocol, Hsu et al. 2018): per alphabet,
  its held-out characters of that split with all 20 samples each, one scene per part of at most
  ``eval_max_chars`` characters (balanced parts; an alphabet part of 11 gives 6 + 5).
* ``unseen``: the characters of no listed alphabet, in runs of consecutive indices (each run
  lies between listed alphabets), cut into balanced parts of at most ``eval_max_chars``
  characters with all samples; one category ``glyph`` (category-agnostic: only grouping is
  evaluated there).

With ``unlisted_train_runs = k > 0`` the first ``k`` of those runs (in index order) join the
training material instead, as one more category ``other`` (each run drawn like an alphabet);
``unseen`` keeps the remaining runs, so its alphabets are still never seen in training. This is
the "Learning to cluster" setting (train on many alphabets, cluster alphabets never seen): more
training characters, fewer unseen ones.

With ``rotations`` = 2 or 4, every train character also trains turned by 180 (or 90, 180 and
270) degrees, each turn a character of its own (class augmentation); a turned glyph's
annotation has ``rotation`` (degrees, counter-clockwise), and no scene holds two turns of one
character.

Every annotation also has ``character`` (index into the npz) and ``sample`` (0..19); each
file's ``info`` holds the parameters, the split's characters and its stats. Scene ``i`` of
split ``s`` (index into :data:`SPLITS`) is drawn from ``np.random.default_rng([seed, s, i])``
(the characters of a train scene from ``[seed, 0, i, 1]``): deterministic by seed, and any
scene regenerates alone.
"""

from __future__ import annotations

import csv
import logging
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from detgroup.atomic import atomic_write_bytes
from detgroup.data.coco_groups import write_coco_groups
from detgroup.errors import DetgroupError

log = logging.getLogger(__name__)

TRAIN_FRACTION = 0.6
VAL_FRACTION = 0.2
DENSITY = 0.25  # at most this fraction of the canvas is covered by glyph boxes
MAX_OVERLAP = 0.05  # intersection over the smaller box allowed between two glyphs
PLACEMENT_TRIES = 50
SPLITS = ("train", "val", "test", "unseen", "alphabets")  # alphabets: with eval_alphabets only
UNSEEN_CATEGORY = "glyph"
OTHER_CATEGORY = "other"


@dataclass(frozen=True)
class Alphabet:
    """One row of ``alphabets.csv``: characters ``first .. first + count - 1`` of the npz."""

    name: str
    first: int
    count: int

    @property
    def characters(self) -> list[int]:
        return list(range(self.first, self.first + self.count))


def read_alphabets(path: str | Path, num_characters: int) -> list[Alphabet]:
    """Read ``alphabets.csv`` (columns ``alphabet, first, count``), in file order.

    Ranges must lie in ``[0, num_characters)`` and not overlap; a violation is a
    :class:`DetgroupError` naming the file and the line.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise DetgroupError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DetgroupError(f"{path}: cannot read CSV ({err})") from None
    alphabets: list[Alphabet] = []
    owner: dict[int, str] = {}
    for line, row in enumerate(rows, start=2):
        try:
            alphabet = Alphabet(row["alphabet"].strip(), int(row["first"]), int(row["count"]))
        except (KeyError, AttributeError, TypeError, ValueError):
            raise DetgroupError(
                f"{path}: line {line}: needs columns 'alphabet', 'first' and 'count' (integers)"
            ) from None
        if not alphabet.name or alphabet.count < 1 or alphabet.first < 0 or (
            alphabet.first + alphabet.count > num_characters
        ):
            raise DetgroupError(
                f"{path}: line {line}: alphabet {alphabet.name!r} with characters "
                f"{alphabet.first}..{alphabet.first + alphabet.count - 1} does not fit the "
                f"{num_characters} characters of the npz"
            )
        clash = next((owner[c] for c in alphabet.characters if c in owner), None)
        if clash is not None or alphabet.name in {a.name for a in alphabets}:
            raise DetgroupError(
                f"{path}: line {line}: alphabet {alphabet.name!r} repeats or overlaps "
                f"{clash or alphabet.name!r}"
            )
        owner.update(dict.fromkeys(alphabet.characters, alphabet.name))
        alphabets.append(alphabet)
    if not alphabets:
        raise DetgroupError(f"{path}: no alphabets listed")
    return alphabets


def split_characters(alphabets: list[Alphabet]) -> dict[str, list[list[int]]]:
    """Character indices of ``train``, ``val`` and ``test``, one list per alphabet.

    Per alphabet of ``n`` characters, in index order: ``round(TRAIN_FRACTION * n)`` train, then
    ``round(VAL_FRACTION * n)`` val, the rest test.
    """
    split: dict[str, list[list[int]]] = {"train": [], "val": [], "test": []}
    for alphabet in alphabets:
        chars = alphabet.characters
        n_train = round(TRAIN_FRACTION * len(chars))
        n_val = round(VAL_FRACTION * len(chars))
        split["train"].append(chars[:n_train])
        split["val"].append(chars[n_train:n_train + n_val])
        split["test"].append(chars[n_train + n_val:])
    return split


def unseen_runs(alphabets: list[Alphabet], num_characters: int) -> list[list[int]]:
    """Runs of consecutive character indices that belong to no listed alphabet."""
    listed = {c for a in alphabets for c in a.characters}
    runs: list[list[int]] = []
    for c in range(num_characters):
        if c in listed:
            continue
        if runs and runs[-1][-1] == c - 1:
            runs[-1].append(c)
        else:
            runs.append([c])
    return runs


def balanced_parts(chars: list[int], max_chars: int) -> list[list[int]]:
    """Cut ``chars`` into the fewest parts of at most ``max_chars``, sizes differing by <= 1."""
    if not chars:
        return []
    n_parts = math.ceil(len(chars) / max_chars)
    return [list(map(int, p)) for p in np.array_split(np.array(chars), n_parts)]


def load_glyphs(path: str | Path) -> np.ndarray:
    """The ``images`` array of an Omniglot npz as bool [C, S, H, W], True = paper.

    A missing or unreadable file, a missing key, a wrong shape or a sample without ink is a
    :class:`DetgroupError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DetgroupError(f"{path}: file not found")
    try:
        with np.load(path) as npz:
            if "images" not in npz.files:
                raise DetgroupError(f"{path}: no 'images' array (has {', '.join(npz.files)})")
            images = npz["images"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DetgroupError(f"{path}: not a readable npz file ({err})") from None
    if images.ndim != 4 or min(images.shape) < 1:
        raise DetgroupError(
            f"{path}: 'images' must be [characters, samples, H, W], got {list(images.shape)}"
        )
    if images.dtype != bool:
        images = images != 0
    blank = np.argwhere(images.all(axis=(2, 3)))
    if len(blank):
        c, s = blank[0]
        raise DetgroupError(
            f"{path}: character {c}, sample {s} has no ink ({len(blank)} blank sample(s))"
        )
    return images


def _glyph_ink(paper: np.ndarray, size: int) -> np.ndarray:
    """Ink coverage float32 [h, w] in [0, 1] of one sample ``paper`` bool [H, W] (True = paper),
    cropped to its ink and scaled so that its longer side is ``size`` px."""
    ink = ~paper
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float32)
    scale = size / max(crop.shape)
    h, w = (max(1, round(d * scale)) for d in crop.shape)
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)


def _overlaps(candidates: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Per candidate box, its largest intersection over the smaller area with any of ``boxes``.

    ``candidates`` [T, 4] and ``boxes`` [K, 4] xyxy; returns float [T] (zeros when K = 0).
    """
    if len(boxes) == 0:
        return np.zeros(len(candidates))
    c, b = candidates[:, None, :], boxes[None, :, :]  # [T, 1, 4], [1, K, 4]
    iw = np.maximum(np.minimum(c[..., 2], b[..., 2]) - np.maximum(c[..., 0], b[..., 0]), 0)
    ih = np.maximum(np.minimum(c[..., 3], b[..., 3]) - np.maximum(c[..., 1], b[..., 1]), 0)
    area_c = (c[..., 2] - c[..., 0]) * (c[..., 3] - c[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return (iw * ih / np.minimum(area_c, area_b)).max(axis=1)


def render_glyph_scene(
    rng: np.random.Generator,
    samples: list[np.ndarray],
    *,
    canvas: int,
    glyph_size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Draw glyphs on a sheet of paper.

    Args:
        rng: the scene's generator.
        samples: bool [H, W] Omniglot samples (True = paper), one per glyph.
        canvas: smallest side of the square sheet, px.
        glyph_size: (min, max) px of a glyph's longer side, inclusive.

    Returns:
        ``image`` uint8 [S, S] grey levels (S >= ``canvas``, a multiple of 32 when enlarged)
        and ``boxes`` float64 [N, 4] xyxy px of the glyphs' ink, in the order of ``samples``.
    """
    inks = [_glyph_ink(p, int(rng.integers(glyph_size[0], glyph_size[1] + 1))) for p in samples]
    area = sum(g.shape[0] * g.shape[1] for g in inks)
    side = max(canvas, 32 * math.ceil(math.sqrt(area / DENSITY) / 32))
    paper, ink = rng.uniform(190, 235), rng.uniform(10, 70)
    darkness = np.zeros((side, side), np.float32)  # ink coverage; overlapping glyphs: max
    boxes = np.zeros((len(inks), 4))
    order = rng.permutation(len(inks))
    for n, k in enumerate(order):  # boxes placed so far: order[:n]
        h, w = inks[k].shape
        xy = rng.integers(0, [side - w + 1, side - h + 1], (PLACEMENT_TRIES, 2))
        candidates = np.concatenate([xy, xy + [w, h]], axis=1).astype(float)  # [T, 4]
        ov = _overlaps(candidates, boxes[order[:n]])
        fits = np.flatnonzero(ov <= MAX_OVERLAP)
        x, y = xy[fits[0] if len(fits) else int(np.argmin(ov))]
        region = darkness[y:y + h, x:x + w]
        np.maximum(region, inks[k], out=region)
        boxes[k] = (x, y, x + w, y + h)
    image = paper - darkness * (paper - ink)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), boxes


def glyph_sample(glyphs: np.ndarray, c: int, s: int) -> np.ndarray:
    """Sample ``s`` of character ``c`` (bool [H, W]); a turned character's id is
    ``character + quarter_turns * len(glyphs)`` (``convert_omniglot(rotations=...)``)."""
    return np.rot90(glyphs[c % len(glyphs), s], c // len(glyphs))


def _encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a grey uint8 image [H, W]."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode a PNG")
    return buf.tobytes()


def _train_scene(
    rng: np.random.Generator,
    train_chars: list[list[int]],
    *,
    chars_per_scene: tuple[int, int],
    samples_per_char: tuple[int, int],
    alphabets_per_scene: tuple[int, int],
    num_samples: int,
    num_chars: int = 0,
) -> list[tuple[int, int, list[int]]]:
    """(index into ``train_chars``, character, sample indices) of each character of one train
    scene. With ``num_chars`` (turned characters in ``train_chars``, ids ``c + turns *
    num_chars``), no two turns of one character share a scene: a symmetric glyph (O, X) would
    otherwise be two groups that look alike."""
    usable = [a for a, chars in enumerate(train_chars) if chars]
    n_chars = int(rng.integers(chars_per_scene[0], chars_per_scene[1] + 1))
    n_alpha = int(rng.integers(alphabets_per_scene[0], alphabets_per_scene[1] + 1))
    n_alpha = min(n_alpha, n_chars, len(usable))
    chosen = [int(a) for a in rng.choice(usable, n_alpha, replace=False)]
    pool = [(a, c) for a in chosen for c in train_chars[a]]
    n_chars = min(n_chars, len(pool))
    # One character of every chosen alphabet first, then the rest uniformly from the pool.
    firsts = [(a, int(rng.choice(train_chars[a]))) for a in chosen]
    rest = [pc for pc in pool if pc not in firsts]
    if not num_chars:
        picks = firsts + [rest[i] for i in rng.choice(len(rest), n_chars - n_alpha,
                                                      replace=False)]
    else:
        picks, bases = list(firsts), {c % num_chars for _, c in firsts}
        for i in rng.permutation(len(rest)):
            if len(picks) == n_chars:
                break
            if rest[i][1] % num_chars not in bases:
                picks.append(rest[i])
                bases.add(rest[i][1] % num_chars)
    scene = []
    for a, c in picks:
        lo, hi = (min(v, num_samples) for v in samples_per_char)
        k = int(rng.integers(lo, hi + 1))
        scene.append((a, c, sorted(int(s) for s in rng.choice(num_samples, k, replace=False))))
    return scene


def _write_split(
    out: Path,
    split: str,
    scenes: list[list[tuple[int, int, list[int]]]],
    glyphs: np.ndarray,
    categories: list[str],
    info: dict[str, Any],
    *,
    seed: int,
    canvas: int,
    glyph_size: tuple[int, int],
    progress: bool,
) -> Path:
    """Render ``scenes`` (per scene: (category index, character, samples) per character) and
    write ``out/<split>/annotations.json`` + ``images/``; return the annotation path."""
    image_dir = out / split / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    split_index = SPLITS.index(split)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    sides = []
    for i, scene in enumerate(tqdm(scenes, desc=f"omniglot {split}", disable=not progress)):
        rng = np.random.default_rng([seed, split_index, i])
        members = [(g, a, c, s) for g, (a, c, samples) in enumerate(scene, start=1)
                   for s in samples]  # (group id, category index, character, sample)
        image, boxes = render_glyph_scene(
            rng, [glyph_sample(glyphs, c, s) for _, _, c, s in members], canvas=canvas,
            glyph_size=glyph_size,
        )
        name = f"{i:06d}.png"
        atomic_write_bytes(image_dir / name, _encode_png(image))
        images.append({"id": i + 1, "file_name": name, "width": image.shape[1],
                       "height": image.shape[0]})
        sides.append(image.shape[0])
        for k in rng.permutation(len(members)):
            group, a, c, s = members[k]
            x0, y0, x1, y1 = boxes[k]
            ann = {
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": a + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0, "group_id": group,
                "character": c % len(glyphs), "sample": s,
            }
            if c >= len(glyphs):  # a turned train character
                ann["rotation"] = c // len(glyphs) * 90  # degrees, counter-clockwise
            annotations.append(ann)
    characters = sorted({c % len(glyphs) for scene in scenes for _, c, _ in scene})
    counts = [sum(len(samples) for _, _, samples in scene) for scene in scenes]
    stats = {
        "scenes": len(scenes), "characters": len(characters), "glyphs": len(annotations),
        "groups": sum(len(scene) for scene in scenes),
        "glyphs_per_scene": [min(counts, default=0), max(counts, default=0)],
        "canvas_side": [min(sides, default=0), max(sides, default=0)],
    }
    data = {
        "info": {**info, "split": split, "characters": characters, "stats": stats},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(categories)],
    }
    path = out / split / "annotations.json"
    write_coco_groups(path, data)
    log.info("omniglot %s: %d scenes, %d characters, %d glyphs, canvas %d..%d px -> %s", split,
             stats["scenes"], stats["characters"], stats["glyphs"], *stats["canvas_side"], path)
    return path


def _check_range(name: str, value: tuple[int, int], low: int) -> tuple[int, int]:
    lo, hi = (int(v) for v in value)
    if not low <= lo <= hi:
        raise DetgroupError(f"{name} must be (min, max) with {low} <= min <= max, got {value}")
    return lo, hi


def convert_omniglot(
    src: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    train_scenes: int = 2000,
    canvas: int = 512,
    glyph_size: tuple[int, int] = (40, 56),
    chars_per_scene: tuple[int, int] = (4, 10),
    samples_per_char: tuple[int, int] = (2, 6),
    alphabets_per_scene: tuple[int, int] = (1, 3),
    eval_max_chars: int = 10,
    unlisted_train_runs: int = 0,
    eval_alphabets: tuple[str, ...] = (),
    rotations: int = 1,
    progress: bool = False,
) -> dict[str, Path]:
    """Build Omniglot glyph scenes from ``src`` (``images_background.npz`` + ``alphabets.csv``).

    Args:
        src: folder holding the two source files.
        out: output root; writes ``OUT/<split>/annotations.json`` and ``OUT/<split>/images/``
            (grey PNGs) for the splits train, val, test and unseen (see the module docstring).
        seed: seed of every random choice.
        train_scenes: number of train scenes.
        canvas: smallest side of a scene, px.
        glyph_size: (min, max) px of a glyph's longer side.
        chars_per_scene: (min, max) characters of a train scene.
        samples_per_char: (min, max) samples of a character in a train scene.
        alphabets_per_scene: (min, max) alphabets of a train scene.
        eval_max_chars: most characters of a val, test or unseen scene.
        unlisted_train_runs: how many runs of unlisted characters (first ones in index order)
            train as category ``other`` instead of being ``unseen`` (module docstring).
        eval_alphabets: names of listed alphabets left out of train, val and test entirely
            and written as split ``alphabets``: one scene per alphabet holding all of its
            characters x all samples (the "Learning to cluster" protocol), category ``glyph``.
        progress: show progress bars.

    Returns:
        ``{"train": ann_path, "val": ..., "test": ..., "unseen": ...}`` (and ``"alphabets"``
        with ``eval_alphabets``).
    """
    src, out = Path(src), Path(out)
    glyph_size = _check_range("glyph_size", glyph_size, 2)
    chars_per_scene = _check_range("chars_per_scene", chars_per_scene, 1)
    samples_per_char = _check_range("samples_per_char", samples_per_char, 1)
    alphabets_per_scene = _check_range("alphabets_per_scene", alphabets_per_scene, 1)
    if rotations not in (1, 2, 4):
        raise DetgroupError(f"rotations must be 1, 2 or 4, got {rotations}")
    if train_scenes < 0 or eval_max_chars < 1 or canvas < glyph_size[1]:
        raise DetgroupError(
            f"need train_scenes >= 0, eval_max_chars >= 1 and canvas >= the largest glyph "
            f"({glyph_size[1]} px), got {train_scenes}, {eval_max_chars} and {canvas}"
        )
    glyphs = load_glyphs(src / "images_background.npz")
    num_chars, num_samples = glyphs.shape[:2]
    listed = read_alphabets(src / "alphabets.csv", num_chars)
    unknown = sorted(set(eval_alphabets) - {a.name for a in listed})
    if unknown:
        raise DetgroupError(f"{src / 'alphabets.csv'}: eval alphabet {unknown[0]!r} is not "
                            f"listed (listed: {[a.name for a in listed]})")
    held_out = [a for a in listed if a.name in set(eval_alphabets)]
    alphabets = [a for a in listed if a.name not in set(eval_alphabets)]
    if not alphabets:
        raise DetgroupError("eval_alphabets: every listed alphabet is held out; keep one to "
                            "train on")
    names = [a.name for a in alphabets]
    split = split_characters(alphabets)
    if not any(split["train"]):
        raise DetgroupError(f"{src / 'alphabets.csv'}: no alphabet has a train character")
    runs = unseen_runs(listed, num_chars)
    if not 0 <= unlisted_train_runs <= len(runs):
        raise DetgroupError(f"unlisted_train_runs must be in 0..{len(runs)} (the runs of "
                            f"unlisted characters), got {unlisted_train_runs}")
    if unlisted_train_runs:
        names = [*names, OTHER_CATEGORY]
    # train material: one entry per alphabet, then one per unlisted run trained as "other"
    train_chars = split["train"] + runs[:unlisted_train_runs]
    # a turned character is character c + quarter_turns * num_chars (see glyph_sample)
    train_chars = [[c + turn * num_chars for turn in range(0, 4, 4 // rotations) for c in chars]
                   for chars in train_chars]
    entry_category = list(range(len(alphabets))) + [len(alphabets)] * unlisted_train_runs

    train = [
        [(entry_category[e], c, samples) for e, c, samples in _train_scene(
            np.random.default_rng([seed, SPLITS.index("train"), i, 1]), train_chars,
            chars_per_scene=chars_per_scene, samples_per_char=samples_per_char,
            alphabets_per_scene=alphabets_per_scene, num_samples=num_samples,
            num_chars=num_chars if rotations > 1 else 0)]
        for i in range(train_scenes)
    ]
    all_samples = list(range(num_samples))
    scenes = {
        "train": train,
        **{name: [[(a, c, all_samples) for c in part]
                  for a, chars in enumerate(split[name])
                  for part in balanced_parts(chars, eval_max_chars)]
           for name in ("val", "test")},
        "unseen": [[(0, c, all_samples) for c in part]
                   for run in runs[unlisted_train_runs:]
                   for part in balanced_parts(run, eval_max_chars)],
        "alphabets": [[(0, c, all_samples) for c in a.characters] for a in held_out],
    }
    info = {
        "description": "Omniglot glyph scenes: box = glyph, category = alphabet, "
                       "group = character",
        "source": str(src),
        "params": {"seed": seed, "train_scenes": train_scenes, "canvas": canvas,
                   "glyph_size": list(glyph_size), "chars_per_scene": list(chars_per_scene),
                   "samples_per_char": list(samples_per_char),
                   "alphabets_per_scene": list(alphabets_per_scene),
                   "eval_max_chars": eval_max_chars,
                   "unlisted_train_runs": unlisted_train_runs,
                   "eval_alphabets": [a.name for a in held_out], "rotations": rotations,
                   "density": DENSITY,
                   "max_overlap": MAX_OVERLAP, "train_fraction": TRAIN_FRACTION,
                   "val_fraction": VAL_FRACTION},
    }
    return {
        name: _write_split(
            out, name, scenes[name], glyphs,
            [UNSEEN_CATEGORY] if name in ("unseen", "alphabets") else names, info,
            seed=seed, canvas=canvas, glyph_size=glyph_size, progress=progress,
        )
        for name in SPLITS if name != "alphabets" or held_out
    }
