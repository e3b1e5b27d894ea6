"""``detgroup infer`` and ``detgroup viz``: group the boxes of many images, write results.

Boxes come from (a) a COCO(-with-groups) JSON, (b) per-image box lists, or (c) a torchvision
detector whose weights the user gives as a local file. Per-image box lists are either a folder
with ``<image stem>.json`` (``[[x1, y1, x2, y2], ...]`` or ``{"boxes": [...]}``) or
``<image stem>.csv`` (rows ``x1,y1,x2,y2``, an optional header line), or one JSON file mapping
image file names to such lists. Without any of these, a model trained with ``model.detector``
detects the boxes itself: one model file detects, classifies and groups.

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
        if spec.is_dir():
            return
        data = read_json(spec)
        if isinstance(data, dict) and "images" in data and "annotations" in data:
            coco = load_coco_groups(spec)
            for info in coco.images:
                boxes = coco.targets(info["id"])["boxes"]
                self.coco[Path(info["file_name"]).name] = (int(info["id"]), boxes)
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


def _record(image: Path, image_id: int, pixels: np.ndarray, result: GroupResult) -> dict[str, Any]:
    names = result.category_names
    return {
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

    if boxes is not None and detector is not None:
        raise DetgroupError("give at most one of --boxes and --detector")
    files = list_images(images)
    grouper = Grouper.from_checkpoint(checkpoint, device=device, method=method,
                                      neighbors=neighbors)
    # neither: the model detects the boxes itself (trained with model.detector)
    self_detect = boxes is None and detector is None
    if self_detect and not grouper.detects:
        raise DetgroupError(f"{checkpoint}: this model groups given boxes (trained without "
                            "model.detector): give --boxes or --detector")
    source = BoxSource(boxes) if boxes is not None else None
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
            elif det is not None:
                image_id, raw, where = None, det(pixels), f"detector on {image}"
            else:
                image_id, raw, where = None, None, f"{checkpoint} on {image}"
            image_id = index if image_id is None else image_id
            box_arr = (None if self_detect else
                       check_boxes(raw, pixels.shape[0], pixels.shape[1], source=where))
            result = grouper.predict(pixels, box_arr)
            seconds += time.perf_counter() - start
            record = _record(image, image_id, pixels, result)
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
    _write_collections(out_dir, records, names)
    return {
        "images_total": len(files), "images_done": done, "images_skipped": skipped,
        "images_failed": len(failures), "failures": failures,
        "boxes": sum(len(r["boxes"]) for r in records),
        "groups": sum(len(r["groups"]) for r in records),
        "seconds_per_image": seconds / max(done, 1), "out": str(out_dir),
    }


def _write_collections(out_dir: Path, records: list[dict[str, Any]], names: list[str]) -> None:
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
            anns.append({**entry, "id": len(anns) + 1, "area": entry["bbox"][2] * entry["bbox"][3],
                         "iscrowd": 0})
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(names)]
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_json(out_dir / "predictions.json",
                      {"images": images, "annotations": anns, "categories": categories})


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


def draw_annotations(data: Path, images_dir: Path, out_dir: Path, *, limit: int = 0) -> int:
    """Draw a COCO-with-groups file (ground truth or ``predictions.json``) as overlays."""
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
                             title=info["file_name"])
        save_rgb_png(out_dir / f"{Path(info['file_name']).stem}.png", canvas)
        written += 1
    return written
