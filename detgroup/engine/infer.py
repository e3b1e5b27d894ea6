"""``detgroup infer`` and ``detgroup viz``: group the boxes of many images, write results.

Boxes come from (a) a COCO(-with-groups) JSON, (b) per-image box lists, or (c) a torchvision
detector whose weights the user gives as a local file. Per-image box lists are either a folder
with ``<image name without suffix>.json`` or ``.csv`` (subfolders as under the images folder),
or one JSON file mapping image file names to box lists; their formats are those of
:mod:`detgroup.data.box_files` (a CSV header names ``xyxy`` or ``xywh`` columns).
Without any of these, a model trained with ``model.detector`` detects the boxes itself: one
model file detects, classifies and groups.

Images are keyed by their file name *relative to the images folder* (subfolders kept, as COCO's
``file_name``) and, with a COCO box file, by its image id: ``a/x.png`` and ``b/x.png`` are two
images everywhere. A folder is searched with its subfolders; with a COCO box file each image
found is matched to the COCO image of its relative file name.

Output folder: ``per_image/<name>.json`` (readable: groups with members, category, score,
enclosing box), ``overlays/<name>.png``, where ``<name>`` is the relative file name without its
suffix (with it, when two inputs would share a name: ``x.png`` and ``x.jpg``), ``results.json``
(COCO results with ``group_id`` and ``group_score``) and ``predictions.json`` (a
COCO-with-groups file of the predictions, which ``detgroup viz`` and ``detgroup eval``-style
tools read like ground truth). Category ids: those of the input COCO file (matched by name)
when the boxes come from one that names every category of the model; else 1..C in the order
of the checkpoint's ``category_names``. Every file is written atomically; a failing image is
reported and skipped; images already done (same file name and image id) are skipped on a
re-run unless ``resume=False``.

Boxes may carry their text and attributes (what a model with ``model.text`` /
``model.attributes`` reads): in a COCO file the annotations' ``text`` and ``attributes``; in a
per-image JSON ``{"boxes": [...], "texts": [...], "attributes": [[...], ...]}`` (one entry per
box); in a CSV a fifth column, the box's text. A ``texts`` or ``attributes`` list whose length
differs from the boxes' is an error naming the file, found before anything is written.
Both travel into ``per_image/<name>.json`` and ``predictions.json`` (``text`` and ``attributes``
per box, ``attribute_names`` at the top).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from detgroup.atomic import atomic_write_json, remove_stale_temp_files
from detgroup.checkpoint import load_checkpoint
from detgroup.config import PairPriorConfig
from detgroup.data.box_sources import (
    IMAGE_SUFFIXES,
    BoxSource,
    InputImage,
    list_images,
    output_names,
)
from detgroup.data.coco_groups import load_coco_groups, write_coco_groups
from detgroup.data.images import read_image_rgb
from detgroup.errors import DetgroupError
from detgroup.inference import Grouper
from detgroup.model.box_detector import BoxDetector
from detgroup.model.postprocess import Prediction
from detgroup.ops.boxes import check_boxes

log = logging.getLogger(__name__)

Detector = BoxDetector  # the name before detgroup/model/box_detector.py
__all__ = ["IMAGE_SUFFIXES", "BoxSource", "Detector", "InputImage", "draw_annotations",
           "list_images", "output_names", "per_category_groups", "run_inference"]


def _record(image: InputImage, pixels: np.ndarray, result: Prediction,
            texts: list[str] | None = None, attributes: Any = None) -> dict[str, Any]:
    names = result.category_names
    record = {
        "file_name": image.name,
        "image_id": image.image_id,
        "width": int(pixels.shape[1]),
        "height": int(pixels.shape[0]),
        "groups": result.group_list(),
        "boxes": [
            {"box": [round(float(v), 2) for v in box], "category": names[int(c)],
             "score": round(float(s), 4), "group": f"{names[int(c)]}/{int(g)}"}
            for box, c, g, s in zip(result.boxes, result.categories, result.groups,
                                    result.scores, strict=True)
        ],
    }
    for k, box in enumerate(record["boxes"]):
        if texts is not None:
            box["text"] = texts[k] or ""
        if attributes is not None:
            box["attributes"] = [float(v) for v in attributes[k]]
    return record


def _done_record(path: Path, image: InputImage) -> dict[str, Any] | None:
    """The earlier result at ``path`` when it is this image's (same name and id), else None."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("%s: unreadable earlier result, redoing it", path)
        return None
    if not isinstance(record, dict) or (record.get("file_name"), record.get("image_id")) != (
            image.name, image.image_id):
        log.warning("%s: an earlier result of another image, redoing it", path)
        return None
    return record


def run_inference(
    *,
    checkpoint: Path,
    images: str,
    out_dir: Path,
    boxes: Path | None = None,
    detector: Path | None = None,
    detector_arch: str = "fasterrcnn_resnet50_fpn",
    detector_score: float = 0.5,
    detector_classes: list[int] | None = None,
    device: str = "cpu",
    method: str | None = None,
    neighbors: int | None = None,
    pair_bias_search: str | None = None,
    prior_weight_grid: list[float] | None = None,
    overlays: bool = True,
    heatmap: bool = False,
    resume: bool = True,
    clip: bool = False,
    pair_prior: PairPriorConfig | None = None,
    ignore_categories: bool = False,
) -> dict[str, Any]:
    """Group the boxes of every image; returns a summary (counts, failures, timings).

    ``clip``: clip boxes that leave their image instead of failing the image (and, for a COCO
    box file, instead of refusing the file). ``pair_prior``: replaces the checkpoint's
    ``model.pair_prior`` (:meth:`Grouper.from_checkpoint`). ``ignore_categories``: group by the
    pair logits alone; every box is of the one category ``object`` in every output.
    ``pair_bias_search`` / ``prior_weight_grid``: replace the checkpoint's
    ``decoder.pair_bias_search`` / ``decoder.prior_weight_grid``.
    """
    from detgroup.visualize import draw_groups, save_rgb_png

    if boxes is not None and detector is not None:
        raise DetgroupError("give at most one of --boxes and --detector")
    # a bad checkpoint is named before the boxes (with a --pair-prior the box file is read first:
    # a prior on attributes of a checkpoint that names none takes the COCO box file's names)
    state = load_checkpoint(checkpoint)
    source = BoxSource(boxes, clip=clip) if boxes is not None else None
    file_names = source.coco.attribute_names if source is not None and source.coco else None
    grouper = Grouper.from_checkpoint(checkpoint, device=device, method=method,
                                      neighbors=neighbors, clip=clip, pair_prior=pair_prior,
                                      pair_bias_search=pair_bias_search,
                                      prior_weight_grid=prior_weight_grid,
                                      attribute_names=file_names, state=state,
                                      ignore_categories=ignore_categories)
    # neither: the model detects the boxes itself (trained with model.detector)
    self_detect = boxes is None and detector is None
    if self_detect and not grouper.detects:
        raise DetgroupError(f"{checkpoint}: this model groups given boxes (trained without "
                            "model.detector): give --boxes or --detector")
    inputs: list[InputImage | str] = (
        source.inputs(images) if source is not None
        else [InputImage(p, n, k) for k, (p, n) in enumerate(list_images(images), start=1)]
    )
    if source is not None:
        source.check_extras([i for i in inputs if isinstance(i, InputImage)])
    det = (BoxDetector(detector, arch=detector_arch, score=detector_score,
                       classes=detector_classes, device=device) if detector is not None else None)
    try:
        for sub in ("per_image", "overlays"):
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DetgroupError(f"{out_dir}: cannot create output folder ({err.strerror})") from None
    remove_stale_temp_files(out_dir, recursive=True)

    names = grouper.category_names
    category_ids = source.category_ids(names) if source is not None else None
    if (source is not None and source.coco is not None and category_ids is None
            and not ignore_categories):  # (ignoring them, results.json uses id 1: "object")
        log.warning("%s: does not name every category of the model %s; results.json uses "
                    "ids 1..%d in the model's order", boxes, names, len(names))
    good = [item for item in inputs if isinstance(item, InputImage)]
    failures: list[str] = [item for item in inputs if isinstance(item, str)]
    for message in failures:
        log.error("%s", message)
    stems = output_names([i.name for i in good])
    records: list[dict[str, Any]] = []
    done = skipped = 0
    seconds = 0.0
    for image, stem in tqdm(list(zip(good, stems, strict=True)), desc="infer", leave=False):
        record_path = out_dir / "per_image" / f"{stem}.json"
        earlier = _done_record(record_path, image) if resume else None
        if earlier is not None and not {g.get("category") for g in earlier.get("groups", [])
                                        if isinstance(g, dict)} <= set(names):
            log.warning("%s: an earlier result with other categories than %s (another model "
                        "or --ignore-categories), redoing it", record_path, names)
            earlier = None
        if earlier is not None:
            records.append(earlier)
            skipped += 1
            continue
        try:
            pixels = read_image_rgb(image.path)
            start = time.perf_counter()
            if source is not None:
                raw, where = source.boxes(image)
            elif det is not None:
                raw, where = det(pixels), f"detector on {image.path}"
            else:
                raw, where = None, f"{checkpoint} on {image.path}"
            box_arr = (None if self_detect else
                       check_boxes(raw, pixels.shape[0], pixels.shape[1], source=where, clip=clip))
            texts, attributes = (source.extras(image, len(box_arr))
                                 if source is not None and box_arr is not None else (None, None))
            if texts is None and grouper.uses_text and box_arr is not None and len(box_arr):
                raise DetgroupError(f"{where}: the model reads box texts but the boxes come "
                                    "without 'texts'")
            if not grouper.attribute_names:
                attributes = None  # the model reads none, and predictions.json could not name them
            result = grouper.predict(pixels, box_arr, texts, attributes)
            seconds += time.perf_counter() - start
            record = _record(image, pixels, result, texts, attributes)
            record_path.parent.mkdir(parents=True, exist_ok=True)
            if overlays:
                canvas = draw_groups(
                    pixels, result.boxes, result.categories, result.groups, names,
                    group_scores=result.group_scores,
                    affinity=result.affinity if heatmap else None, title=image.name,
                )
                overlay = out_dir / "overlays" / f"{stem}.png"
                overlay.parent.mkdir(parents=True, exist_ok=True)
                save_rgb_png(overlay, canvas)
            atomic_write_json(record_path, record, indent=1)
            records.append(record)
            done += 1
        except DetgroupError as err:
            failures.append(str(err))
            log.error("%s", err)
    _write_collections(out_dir, records, names, category_ids, grouper.attribute_names)
    return {
        "images_total": len(inputs), "images_done": done, "images_skipped": skipped,
        "images_failed": len(failures), "failures": failures,
        "boxes": sum(len(r["boxes"]) for r in records),
        "groups": sum(len(r["groups"]) for r in records),
        "seconds_per_image": seconds / max(done, 1), "out": str(out_dir),
        "category_ids": category_ids or list(range(1, len(names) + 1)),
    }


def _write_collections(out_dir: Path, records: list[dict[str, Any]], names: list[str],
                       category_ids: list[int] | None = None,
                       attribute_names: list[str] | None = None) -> None:
    """``results.json`` (COCO results) and ``predictions.json`` (COCO with groups, through the
    validating :func:`~detgroup.data.coco_groups.write_coco_groups`).

    Each box's group id and category id come from the ``groups`` of its per-image record (the
    group's index, its ``members`` and its category); ``category_ids[k]`` is the COCO id
    written for the model's category ``names[k]`` (default 1..C).
    """
    ids = category_ids or list(range(1, len(names) + 1))
    id_of = dict(zip(names, ids, strict=True))
    results, images, anns = [], [], []
    records = sorted(records, key=lambda r: r["image_id"])
    for record in records:
        images.append({"id": record["image_id"], "file_name": record["file_name"],
                       "width": record["width"], "height": record["height"]})
        group_of = {m: k for k, g in enumerate(record["groups"]) for m in g["members"]}
        for m, box in enumerate(record["boxes"]):
            group = record["groups"][group_of[m]]
            x1, y1, x2, y2 = box["box"]
            entry = {
                "image_id": record["image_id"],
                # 2 decimals as in per_image; a box thinner than that keeps 0.01 px, so that
                # a valid input box is never refused by the writer at the end of a run
                "bbox": [x1, y1, max(round(x2 - x1, 2), 0.01), max(round(y2 - y1, 2), 0.01)],
                "category_id": id_of[group["category"]],
                "score": box["score"],
                "group_id": group_of[m],
                "group_score": group["score"],
            }
            results.append(entry)
            ann = {**entry, "id": len(anns) + 1}
            for key in ("text", "attributes"):
                if key in box and (key == "text" or attribute_names):
                    ann[key] = box[key]
            anns.append(ann)
    categories = [{"id": i, "name": n} for n, i in zip(names, ids, strict=True)]
    atomic_write_json(out_dir / "results.json", results)
    predictions: dict[str, Any] = {"images": images, "annotations": anns,
                                   "categories": categories}
    if attribute_names and any("attributes" in a for a in anns):
        predictions["attribute_names"] = list(attribute_names)
    write_coco_groups(out_dir / "predictions.json", predictions)


def per_category_groups(categories: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Renumber arbitrary group ids as 0.. within each category, in order of first member."""
    out = np.zeros(len(groups), dtype=np.int64)
    seen: dict[tuple[int, int], int] = {}
    counts: dict[int, int] = {}
    for i, (c, g) in enumerate(zip(categories.tolist(), groups.tolist(), strict=True)):
        if (c, g) not in seen:
            seen[(c, g)] = counts.get(c, 0)
            counts[c] = seen[(c, g)] + 1
        out[i] = seen[(c, g)]
    return out


def draw_annotations(data: Path, images_dir: Path, out_dir: Path, *, limit: int = 0,
                     label_text: bool = False) -> int:
    """Draw a COCO-with-groups file (ground truth or ``predictions.json``) as overlays
    (``label_text``: each box's ``text`` written in it)."""
    from detgroup.visualize import draw_groups, save_rgb_png

    coco = load_coco_groups(data)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DetgroupError(f"{out_dir}: cannot create output folder ({err.strerror})") from None
    items = coco.images[:limit] if limit > 0 else coco.images
    stems = output_names([info["file_name"] for info in items])
    written = 0
    for info, stem in tqdm(list(zip(items, stems, strict=True)), desc="viz", leave=False):
        pixels = read_image_rgb(images_dir / info["file_name"])
        target = coco.targets(info["id"])
        groups = per_category_groups(target["categories"], target["groups"])
        scores: dict[tuple[int, int], float] = {}
        for ann, c, g in zip(coco.anns_by_image.get(info["id"], []), target["categories"], groups,
                             strict=True):
            if "group_score" in ann:
                scores[(int(c), int(g))] = float(ann["group_score"])
        canvas = draw_groups(pixels, target["boxes"], target["categories"], groups,
                             coco.category_names, group_scores=scores or None,
                             title=info["file_name"],
                             texts=target["texts"] if label_text else None)
        overlay = out_dir / f"{stem}.png"
        overlay.parent.mkdir(parents=True, exist_ok=True)
        save_rgb_png(overlay, canvas)
        written += 1
    return written
