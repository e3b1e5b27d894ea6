"""FUNSD scanned forms → COCO with groups: box = word, category = entity label, group = entity.

FUNSD (Jaume et al., ICDAR-OST 2019) ships one JSON per form (``annotations/<stem>.json``) next
to its scan (``images/<stem>.png``). A form is a list of entities; each entity has an ``id``
(unique in its form), a ``label`` (question | answer | header | other), its ``words`` (each with
a ``box`` [x0, y0, x1, y1] in pixels and a ``text``) and ``linking`` (pairs of entity ids).

The converter writes one annotation per word: ``bbox`` [x, y, w, h] px, ``category_id`` of its
entity's label (:data:`CATEGORIES`, ids 1..4), ``group_id`` = the entity id, plus ``text`` and
``entity_id``. The entity links go to the top-level key ``"funsd_links"`` as
``[image_id, entity_a, entity_b]`` (FUNSD's direction, question → answer), without duplicates.
Words whose box is empty or degenerate (x1 <= x0 or y1 <= y0) and entities left without words
are logged with their file and entity id and skipped; boxes that reach outside the image are
clipped. The counts are logged and kept in the file's ``info["stats"]``.

The 149 official training forms are split into train and val by :func:`split_forms` (a seeded
permutation of the sorted file stems; the list is in ``datasets/README_funsd.md``). The official
``testing_data`` folder converts unchanged to one ``test`` split.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from detgroup.data.coco_groups import read_json, write_coco_groups
from detgroup.data.images import read_image_rgb
from detgroup.errors import DetgroupError

log = logging.getLogger(__name__)

CATEGORIES = ("question", "answer", "header", "other")
# info["stats"]: "*_in" count the source, "words" / "entities" / "links" what was written.
STAT_KEYS = ("forms", "words_in", "words", "words_skipped", "boxes_clipped", "entities_in",
             "entities", "entities_skipped", "links", "links_dropped")


def split_forms(stems: list[str], *, val_forms: int, seed: int) -> tuple[list[str], list[str]]:
    """Split form stems into (train, val), both sorted.

    The val forms are the first ``val_forms`` entries of
    ``np.random.default_rng(seed).permutation`` applied to the sorted stems, so the split depends
    only on the set of stems, ``val_forms`` and ``seed``.
    """
    stems = sorted(stems)
    if not 0 <= val_forms < len(stems):
        raise DetgroupError(
            f"val_forms must be in [0, {len(stems) - 1}] for {len(stems)} forms, got {val_forms}"
        )
    order = np.random.default_rng(seed).permutation(len(stems))
    val = {stems[i] for i in order[:val_forms]}
    return [s for s in stems if s not in val], sorted(val)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Put ``src`` at ``dst`` atomically: a hard link where the file system allows, else a copy."""
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # another file system, or hard links to others' files not allowed
            shutil.copyfile(src, tmp)
            os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _word_box(
    word: Any, width: int, height: int
) -> tuple[list[float] | None, str | None, bool]:
    """Clip a FUNSD word box [x0, y0, x1, y1] px to the image.

    Returns ``(bbox, reason, clipped)``: ``bbox`` [x, y, w, h] px, or None with ``reason`` why
    the word is skipped; ``clipped`` says the box reached outside the ``width`` x ``height``
    image.
    """
    box = word.get("box") if isinstance(word, dict) else None
    if not isinstance(box, list) or len(box) != 4:
        return None, f"empty or malformed box {box!r}", False
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
        return None, f"non-numeric box {box!r}", False
    if not all(math.isfinite(v) for v in box):
        return None, f"non-finite box {box!r}", False
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        return None, f"degenerate box {box!r}", False
    cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    if cx1 <= cx0 or cy1 <= cy0:
        return None, f"box {box!r} lies outside the {width}x{height} image", False
    clipped = (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1)
    return [cx0, cy0, cx1 - cx0, cy1 - cy0], None, clipped


def _entities(form_path: Path) -> list[dict[str, Any]]:
    """The checked entity list of one FUNSD annotation file (malformed → DetgroupError)."""
    doc = read_json(form_path)
    if not isinstance(doc, dict) or not isinstance(doc.get("form"), list):
        raise DetgroupError(f"{form_path}: not a FUNSD annotation (needs a top-level 'form' list)")
    seen: set[int] = set()
    for k, entity in enumerate(doc["form"]):
        if not isinstance(entity, dict):
            raise DetgroupError(f"{form_path}: form[{k}] must be an object")
        eid = entity.get("id")
        if not isinstance(eid, int) or isinstance(eid, bool):
            raise DetgroupError(f"{form_path}: form[{k}] has a missing or non-integer 'id'")
        if eid in seen:
            raise DetgroupError(f"{form_path}: entity id {eid}: duplicate entity id")
        seen.add(eid)
        if entity.get("label") not in CATEGORIES:
            raise DetgroupError(
                f"{form_path}: entity id {eid}: unknown label {entity.get('label')!r} "
                f"(expected one of {', '.join(CATEGORIES)})"
            )
        if not isinstance(entity.get("words", []), list):
            raise DetgroupError(f"{form_path}: entity id {eid}: 'words' must be a list")
        links = entity.get("linking", [])
        if not isinstance(links, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) for v in p)
            for p in links
        ):
            raise DetgroupError(
                f"{form_path}: entity id {eid}: 'linking' must be a list of [id, id] pairs"
            )
    return doc["form"]


def _convert_split(
    stems: list[str], ann_dir: Path, img_dir: Path, out_dir: Path, split: str, info: dict
) -> Path:
    """Convert the forms ``stems`` into ``out_dir/<split>``; return the annotation path."""
    image_out = out_dir / split / "images"
    image_out.mkdir(parents=True, exist_ok=True)
    stats: Counter[str] = Counter(dict.fromkeys(STAT_KEYS, 0))
    stats["forms"] = len(stems)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    links: list[list[int]] = []
    for image_id, stem in enumerate(stems, start=1):
        form_path = ann_dir / f"{stem}.json"
        entities = _entities(form_path)
        image_path = img_dir / f"{stem}.png"
        height, width = read_image_rgb(image_path).shape[:2]
        _link_or_copy(image_path, image_out / image_path.name)
        images.append({"id": image_id, "file_name": image_path.name, "width": width,
                       "height": height})
        kept_entities: set[int] = set()
        for entity in entities:
            eid = entity["id"]
            words = entity.get("words", [])
            stats["words_in"] += len(words)
            stats["entities_in"] += 1
            kept = 0
            for word in words:
                bbox, reason, clipped = _word_box(word, width, height)
                if bbox is None:
                    log.warning("%s: entity id %d: skipped a word: %s", form_path, eid, reason)
                    stats["words_skipped"] += 1
                    continue
                if clipped:
                    log.debug("%s: entity id %d: clipped box %s to the image", form_path, eid,
                              word["box"])
                    stats["boxes_clipped"] += 1
                text = word.get("text", "")
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id,
                    "category_id": CATEGORIES.index(entity["label"]) + 1,
                    "bbox": [round(v, 2) for v in bbox], "iscrowd": 0, "group_id": eid,
                    "text": text if isinstance(text, str) else str(text), "entity_id": eid,
                })
                kept += 1
            if kept:
                kept_entities.add(eid)
            else:
                why = "has no words" if not words else "has no word with a usable box"
                log.warning("%s: entity id %d: skipped, it %s", form_path, eid, why)
                stats["entities_skipped"] += 1
        # FUNSD lists each link under both of its entities: keep the first of each pair.
        pairs = dict.fromkeys(tuple(p) for e in entities for p in e.get("linking", []))
        for a, b in pairs:
            if a != b and a in kept_entities and b in kept_entities:
                links.append([image_id, a, b])
            else:
                log.warning("%s: dropped link [%d, %d] (a self-link, or to a skipped or unknown "
                            "entity)", form_path, a, b)
                stats["links_dropped"] += 1
        stats["entities"] += len(kept_entities)
    stats["words"] = len(annotations)
    stats["links"] = len(links)
    data = {
        "info": {**info, "split": split, "forms": list(stems), "stats": dict(stats)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(CATEGORIES)],
        "funsd_links": links,
    }
    path = out_dir / split / "annotations.json"
    write_coco_groups(path, data)
    log.info(
        "funsd %s: %d forms, %d words kept, %d skipped, %d boxes clipped, %d entities "
        "(%d skipped), %d links (%d dropped) -> %s", split, stats["forms"], stats["words"],
        stats["words_skipped"], stats["boxes_clipped"], stats["entities"],
        stats["entities_skipped"], stats["links"], stats["links_dropped"], path,
    )
    return path


def convert_funsd(
    src: str | Path,
    out: str | Path,
    *,
    val_forms: int = 30,
    seed: int = 0,
    split: str | None = None,
    limit: int | None = None,
) -> dict[str, Path]:
    """Convert a FUNSD folder (``annotations/*.json`` + ``images/*.png``) to COCO with groups.

    Args:
        src: FUNSD's ``training_data`` or ``testing_data`` folder (or the FUNSD root holding
            ``training_data``).
        out: output root; writes ``OUT/<split>/annotations.json`` and ``OUT/<split>/images/``
            (the PNGs under their own names, hard-linked where possible, else copied).
        val_forms: number of forms held out for val (see :func:`split_forms`).
        seed: seed of the train/val split.
        split: ``"test"`` puts every form into ``OUT/test``; ``"train"`` splits into train and
            val; None (default) chooses ``"test"`` when ``src`` is named ``testing_data``.
        limit: convert only forms among the first ``limit`` sorted stems (a quick check); the
            train/val assignment of a form does not depend on it.

    Returns:
        ``{"train": ann_path, "val": ann_path}`` or ``{"test": ann_path}``.
    """
    src, out = Path(src), Path(out)
    if not (src / "annotations").is_dir() and (src / "training_data").is_dir():
        src = src / "training_data"
    if split is None:
        split = "test" if src.name == "testing_data" else "train"
    if split not in ("train", "test"):
        raise DetgroupError(f"split must be 'train' or 'test', got {split!r}")
    ann_dir, img_dir = src / "annotations", src / "images"
    for folder in (ann_dir, img_dir):
        if not folder.is_dir():
            raise DetgroupError(f"{folder}: folder not found (expected a FUNSD folder layout)")
    stems = sorted(p.stem for p in ann_dir.glob("*.json"))
    if not stems:
        raise DetgroupError(f"{ann_dir}: no annotation files (*.json)")
    for stem in stems:
        if not (img_dir / f"{stem}.png").is_file():
            raise DetgroupError(f"{img_dir / (stem + '.png')}: image file not found")
    chosen = set(stems[:limit] if limit is not None else stems)
    info = {"description": "FUNSD forms: box = word, category = entity label, group = entity",
            "source": str(src)}
    if split == "test":
        parts = {"test": stems}
    else:
        train, val = split_forms(stems, val_forms=val_forms, seed=seed)
        parts = {"train": train, "val": val}
        info.update(val_forms=val_forms, seed=seed)
    return {
        name: _convert_split([s for s in part if s in chosen], ann_dir, img_dir, out, name, info)
        for name, part in parts.items()
    }
