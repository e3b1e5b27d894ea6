"""``detgroup infer`` and ``detgroup viz``: group the boxes of many images, write results.

Boxes come from (a) a COCO(-with-groups) JSON, (b) per-image box lists, or (c) a torchvision
detector whose weights the user gives as a local file. Per-image box lists are either a folder
with ``<image stem>.json`` (``[[x1, y1, x2, y2], ...]`` or ``{"boxes": [...]}``) or
``<image stem>.csv`` (rows ``x1,y1,x2,y2``, an optional header line), or one JSON file mapping
image file names to such lists.

Boxes may carry their text and attributes (what a model with ``model.text`` /
``model.attributes`` reads): in a COCO file the annotations' ``text`` and ``attributes``; in a
per-image JSON ``{"boxes": [...], "texts": [...], "attributes": [[...], ...]}`` (one entry per
box); in a CSV a fifth column, the box's text. A ``texts`` or ``attributes`` list whose length
differs from the boxes' is an error naming the file, found before anything is written.
Both travel into ``per_image/<stem>.json`` and ``predictions.json`` (``text`` and ``attributes``
per box, ``attribute_names`` at the top).

Output folder: ``per_image/<stem>.json`` (readable: groups with members, category, score,
enclosing box), ``overlays/<stem>.png``, ``results.json`` (COCO results with ``group_id`` and
``group_score``) and ``predictions.json`` (a COCO-with-groups file of the predictions, which
``detgroup viz`` and ``detgroup eval``-style tools read like ground truth). Every file is
written atomically; a failing image is reported and skipped; images already done are skipped
on a re-run unless ``resume=False``.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from detgroup.atomic import atomic_write_json, remove_stale_temp_files
from detgroup.data.coco_groups import load_coco_groups, read_json
from detgroup.data.images import read_image_rgb
from detgroup.errors import DetgroupError
from detgroup.inference import Grouper, GroupResult, check_boxes

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(spec: str | Path) -> list[Path]:
    """An image file, a folder (its images, sorted) or a glob pattern → image paths."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(str(spec)) if Path(p).is_file())
    if not files:
        raise DetgroupError(f"{spec}: no images found (give an image, a folder or a glob)")
    return files


class BoxSource:
    """Boxes [N, 4] xyxy px and an image id for each image file."""

    def __init__(self, spec: Path) -> None:
        self.spec = spec
        self.coco: dict[str, tuple[int, np.ndarray]] = {}
        self.mapping: dict[str, Any] | None = None
        # texts and attributes of the boxes of a COCO file, by image file name
        self.coco_extras: dict[str, tuple[list[str] | None, np.ndarray | None]] = {}
        if spec.is_dir():
            return
        data = read_json(spec)
        if isinstance(data, dict) and "images" in data and "annotations" in data:
            coco = load_coco_groups(spec)
            for info in coco.images:
                target = coco.targets(info["id"])
                boxes = target["boxes"]
                self.coco[Path(info["file_name"]).name] = (int(info["id"]), boxes)
                anns = coco.anns_by_image.get(info["id"], [])
                has_text = any("text" in a for a in anns)
                self.coco_extras[Path(info["file_name"]).name] = (
                    target["texts"] if has_text else None,
                    target["attributes"] if coco.attribute_names else None)
        elif isinstance(data, dict):
            self.mapping = {Path(k).name: v for k, v in data.items()}
        else:
            raise DetgroupError(
                f"{spec}: expected a COCO JSON or a mapping of image file name to boxes"
            )

    def boxes(self, image: Path) -> tuple[int | None, Any, str]:
        """(image id or None, raw boxes, where they came from) for one image."""
        if self.coco:
            if image.name not in self.coco:
                raise DetgroupError(f"{self.spec}: no image with file name {image.name!r}")
            image_id, boxes = self.coco[image.name]
            return image_id, boxes, f"{self.spec} ({image.name})"
        if self.mapping is not None:
            if image.name not in self.mapping:
                raise DetgroupError(f"{self.spec}: no boxes for {image.name!r}")
            return None, _box_list(self.mapping[image.name], self.spec), str(self.spec)
        for suffix in (".json", ".csv"):
            file = self.spec / f"{image.stem}{suffix}"
            if file.is_file():
                return None, _read_box_file(file), str(file)
        raise DetgroupError(f"{self.spec}: no {image.stem}.json or {image.stem}.csv box file")


    def extras(self, image: Path, num_boxes: int) -> tuple[list[str] | None, Any]:
        """(texts or None, attributes or None) of the boxes of one image; a list whose length
        is not ``num_boxes`` is a DetgroupError naming its file."""
        if self.coco:
            return self.coco_extras.get(image.name, (None, None))
        if self.mapping is not None:
            value, source = self.mapping.get(image.name), self.spec
        else:
            value, source = None, self.spec
            for suffix in (".json", ".csv"):
                file = self.spec / f"{image.stem}{suffix}"
                if file.is_file():
                    source = file
                    value = read_json(file) if suffix == ".json" else _read_csv_texts(file)
                    break
        return _box_extras(value, source, num_boxes)


def _box_extras(value: Any, source: Path, num_boxes: int) -> tuple[list[str] | None, Any]:
    """The ``texts`` and ``attributes`` lists of a per-image box record, checked."""
    if isinstance(value, list) and value and isinstance(value[0], str):
        value = {"texts": value}  # the texts column of a CSV
    if not isinstance(value, dict):
        return None, None
    texts, attributes = value.get("texts"), value.get("attributes")
    if texts is not None:
        if not isinstance(texts, list):
            raise DetgroupError(f"{source}: 'texts' must be a list of strings")
        if len(texts) != num_boxes:
            raise DetgroupError(f"{source}: 'texts' has {len(texts)} entries for {num_boxes} "
                                "boxes (one string per box)")
        bad = [i for i, t in enumerate(texts) if t is not None and not isinstance(t, str)]
        if bad:
            raise DetgroupError(f"{source}: 'texts' entry {bad[0]} is not a string: "
                                f"{texts[bad[0]]!r}")
    if attributes is not None:
        if not isinstance(attributes, list) or len(attributes) != num_boxes:
            count = len(attributes) if isinstance(attributes, list) else "no"
            raise DetgroupError(f"{source}: 'attributes' has {count} entries for {num_boxes} "
                                "boxes (one list of numbers per box)")
    return texts, attributes


def _read_csv_texts(path: Path) -> list[str] | None:
    """The fifth column (the box's text) of a CSV box file, or None if it has none."""
    texts: list[str] = []
    with path.open(newline="") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or (line_no == 1 and not _is_float(row[0])):
                continue
            texts.append(row[4] if len(row) > 4 else "")
    return texts if any(texts) else None


def _box_list(value: Any, source: Path) -> Any:
    if isinstance(value, dict):
        if "boxes" not in value:
            raise DetgroupError(f"{source}: expected a list of boxes or {{'boxes': [...]}}")
        value = value["boxes"]
    if not isinstance(value, list):
        raise DetgroupError(f"{source}: boxes must be a list of [x1, y1, x2, y2]")
    return value


def _read_box_file(path: Path) -> Any:
    if path.suffix == ".json":
        return _box_list(read_json(path), path)
    rows = []
    with path.open(newline="") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or (line_no == 1 and not _is_float(row[0])):
                continue
            if len(row) < 4 or not all(_is_float(v) for v in row[:4]):
                raise DetgroupError(f"{path}: line {line_no} is not x1,y1,x2,y2 numbers: {row}")
            rows.append([float(v) for v in row[:4]])
    return rows


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class Detector:
    """A torchvision Faster R-CNN whose weights come from a local file (never downloaded)."""

    def __init__(self, weights: Path, *, arch: str, score: float, classes: list[int] | None,
                 device: str) -> None:
        from torchvision.models import detection

        if not weights.is_file():
            raise DetgroupError(f"{weights}: detector weights file not found")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt file: torch raises many types
            raise DetgroupError(f"{weights}: cannot read detector weights ({err})") from None
        key = "roi_heads.box_predictor.cls_score.weight"
        if not isinstance(state, dict) or key not in state:
            raise DetgroupError(f"{weights}: not a torchvision Faster R-CNN state dict")
        ctor = getattr(detection, arch)
        model = ctor(weights=None, weights_backbone=None, num_classes=state[key].shape[0])
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise DetgroupError(f"{weights}: weights do not fit {arch} ({str(err)[:200]})") \
                from None
        self.model = model.eval().to(device)
        self.device = device
        self.score = score
        self.classes = set(classes) if classes else None

    @torch.no_grad()
    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """pixels [H, W, 3] uint8 RGB → kept boxes [N, 4] xyxy px."""
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255).to(self.device)
        det = self.model([tensor])[0]
        keep = det["scores"] >= self.score
        if self.classes is not None:
            keep &= torch.tensor([int(c) in self.classes for c in det["labels"]], dtype=torch.bool,
                                 device=keep.device)
        return det["boxes"][keep].cpu().numpy()


def _record(image: Path, image_id: int, pixels: np.ndarray, result: GroupResult,
            texts: list[str] | None = None, attributes: Any = None) -> dict[str, Any]:
    names = result.category_names
    record = {
        "file_name": image.name,
        "image_id": image_id,
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
    overlays: bool = True,
    heatmap: bool = False,
    resume: bool = True,
) -> dict[str, Any]:
    """Group the boxes of every image; returns a summary (counts, failures, timings)."""
    from detgroup.visualize import draw_groups, save_rgb_png

    if (boxes is None) == (detector is None):
        raise DetgroupError("give exactly one of --boxes and --detector")
    files = list_images(images)
    grouper = Grouper.from_checkpoint(checkpoint, device=device, method=method,
                                      neighbors=neighbors)
    source = BoxSource(boxes) if boxes is not None else None
    if source is not None:
        _check_all_extras(source, files)
    det = (Detector(detector, arch=detector_arch, score=detector_score,
                    classes=detector_classes, device=device) if detector is not None else None)
    try:
        for sub in ("per_image", "overlays"):
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DetgroupError(f"{out_dir}: cannot create output folder ({err.strerror})") from None
    remove_stale_temp_files(out_dir, recursive=True)

    names = grouper.category_names
    records: list[dict[str, Any]] = []
    failures: list[str] = []
    done = skipped = 0
    seconds = 0.0
    for index, image in enumerate(tqdm(files, desc="infer", leave=False), start=1):
        record_path = out_dir / "per_image" / f"{image.stem}.json"
        if resume and record_path.is_file():
            try:
                records.append(json.loads(record_path.read_text()))
                skipped += 1
                continue
            except (OSError, json.JSONDecodeError):
                log.warning("%s: unreadable earlier result, redoing it", record_path)
        try:
            pixels = read_image_rgb(image)
            start = time.perf_counter()
            if source is not None:
                image_id, raw, where = source.boxes(image)
            else:
                image_id, raw, where = None, det(pixels), f"detector on {image}"
            image_id = index if image_id is None else image_id
            box_arr = check_boxes(raw, pixels.shape[0], pixels.shape[1], source=where)
            texts, attributes = (source.extras(image, len(box_arr)) if source is not None
                                 else (None, None))
            if texts is None and grouper.uses_text and len(box_arr):
                raise DetgroupError(f"{where}: the model reads box texts but the boxes come "
                                    "without 'texts'")
            if not grouper.attribute_names:
                attributes = None  # the model reads none, and predictions.json could not name them
            result = grouper.predict(pixels, box_arr, texts, attributes)
            seconds += time.perf_counter() - start
            record = _record(image, image_id, pixels, result, texts, attributes)
            if overlays:
                canvas = draw_groups(
                    pixels, result.boxes, result.categories, result.groups, names,
                    group_scores=result.group_scores,
                    affinity=result.affinity if heatmap else None, title=image.name,
                )
                save_rgb_png(out_dir / "overlays" / f"{image.stem}.png", canvas)
            atomic_write_json(record_path, record, indent=1)
            records.append(record)
            done += 1
        except DetgroupError as err:
            failures.append(str(err))
            log.error("%s", err)
    _write_collections(out_dir, records, names, grouper.attribute_names)
    return {
        "images_total": len(files), "images_done": done, "images_skipped": skipped,
        "images_failed": len(failures), "failures": failures,
        "boxes": sum(len(r["boxes"]) for r in records),
        "groups": sum(len(r["groups"]) for r in records),
        "seconds_per_image": seconds / max(done, 1), "out": str(out_dir),
    }


def _check_all_extras(source: BoxSource, files: list[Path]) -> None:
    """Check the texts / attributes of every image's boxes before anything is written (an image
    whose boxes cannot be read is left to the main loop, which reports and skips it)."""
    for image in files:
        try:
            _, raw, _ = source.boxes(image)
        except DetgroupError:
            continue
        source.extras(image, len(raw))


def _write_collections(out_dir: Path, records: list[dict[str, Any]], names: list[str],
                       attribute_names: list[str] | None = None) -> None:
    """``results.json`` (COCO results) and ``predictions.json`` (COCO with groups)."""
    results, images, anns = [], [], []
    records = sorted(records, key=lambda r: r["image_id"])
    for record in records:
        images.append({"id": record["image_id"], "file_name": record["file_name"],
                       "width": record["width"], "height": record["height"]})
        group_index = {g["label"]: k for k, g in enumerate(record["groups"])}
        group_score = {g["label"]: g["score"] for g in record["groups"]}
        for box in record["boxes"]:
            x1, y1, x2, y2 = box["box"]
            entry = {
                "image_id": record["image_id"],
                "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                "category_id": names.index(box["category"]) + 1,
                "score": box["score"],
                "group_id": group_index[box["group"]],
                "group_score": group_score[box["group"]],
            }
            results.append(entry)
            ann = {**entry, "id": len(anns) + 1, "area": entry["bbox"][2] * entry["bbox"][3],
                   "iscrowd": 0}
            for key in ("text", "attributes"):
                if key in box and (key == "text" or attribute_names):
                    ann[key] = box[key]
            anns.append(ann)
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(names)]
    atomic_write_json(out_dir / "results.json", results)
    predictions: dict[str, Any] = {"images": images, "annotations": anns,
                                   "categories": categories}
    if attribute_names and any("attributes" in a for a in anns):
        predictions["attribute_names"] = list(attribute_names)
    atomic_write_json(out_dir / "predictions.json", predictions)


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
    written = 0
    for info in tqdm(items, desc="viz", leave=False):
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
        save_rgb_png(out_dir / f"{Path(info['file_name']).stem}.png", canvas)
        written += 1
    return written
