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
so every split has the same glyph density. Paper and ink tones vary per scene, with mild noise.

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

Every annotation also has ``character`` (index into the npz) and ``sample`` (0..19); each
file's ``info`` holds the parameters, the split's characters and its stats. Scene ``i`` of
split ``s`` is drawn from ``np.random.default_rng([seed, s, i])``: deterministic by seed.
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
SPLITS = ("train", "val", "test", "unseen")
UNSEEN_CATEGORY = "glyph"


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


def _overlap(box: np.ndarray, boxes: np.ndarray) -> float:
    """Largest intersection of ``box`` [4] xyxy with ``boxes`` [K, 4] over the smaller area."""
    if len(boxes) == 0:
        return 0.0
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return float((iw * ih / np.minimum(area, areas)).max())


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
    for k in rng.permutation(len(inks)):
        h, w = inks[k].shape
        best, best_overlap = None, math.inf
        for _ in range(PLACEMENT_TRIES):
            x, y = rng.integers(0, side - w + 1), rng.integers(0, side - h + 1)
            box = np.array([x, y, x + w, y + h], float)
            ov = _overlap(box, boxes[: np.count_nonzero(boxes[:, 2])])
            if ov < best_overlap:
                best, best_overlap = box, ov
            if ov <= MAX_OVERLAP:
                break
        x, y = int(best[0]), int(best[1])
        region = darkness[y:y + h, x:x + w]
        np.maximum(region, inks[k], out=region)
        boxes[k] = best
    image = paper - darkness * (paper - ink) + rng.normal(0, 3, darkness.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), boxes
