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

import glob
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from detgroup.atomic import atomic_write_json, remove_stale_temp_files
from detgroup.data.box_files import parse_box_list, read_box_file, read_csv_texts
from detgroup.data.coco_groups import CocoGroups, load_coco_groups, read_json
from detgroup.data.images import read_image_rgb
from detgroup.errors import DetgroupError
from detgroup.inference import Grouper, GroupResult
from detgroup.ops.boxes import check_boxes

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class InputImage:
    """One image to group: where it is, its relative file name, and its id."""

    path: Path
    name: str  # relative file name, posix separators (COCO's ``file_name``)
    image_id: int


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def list_images(spec: str | Path) -> list[tuple[Path, str]]:
    """An image file, a folder (its images, subfolders included, sorted) or a glob pattern →
    (path, name relative to the folder / the glob's common folder) of each image."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if _is_image(p))
        named = [(p, p.relative_to(path).as_posix()) for p in files]
    elif path.is_file():
        named = [(path, path.name)]
    else:
        files = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file())
        root = Path(os.path.commonpath([str(p.parent) for p in files])) if files else Path()
        named = [(p, p.relative_to(root).as_posix()) for p in files]
    if not named:
        raise DetgroupError(f"{spec}: no images found (give an image, a folder or a glob)")
    return named


def output_names(names: list[str]) -> list[str]:
    """Unique output names (no suffix, subfolders kept) for relative image file names.

    ``a/x.png`` → ``a/x``; names that would collide keep their suffix (``x.png``, ``x.jpg``);
    ``..`` and absolute anchors are dropped, so no output leaves its folder.
    """
    def safe(name: str) -> PurePosixPath:
        parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts
                 if p not in ("..", ".", "/")]
        return PurePosixPath(*parts) if parts else PurePosixPath("image")

    stems = [str(safe(n).with_suffix("")) for n in names]
    full = [str(safe(n)) for n in names]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    chosen = [stem if counts[stem] == 1 else f for stem, f in zip(stems, full, strict=True)]
    seen: dict[str, int] = {}
    out = []
    for k, name in enumerate(chosen):
        if name in seen or chosen.count(name) > 1:
            name = f"{name}__{k}"
        seen[name] = k
        out.append(name)
    return out


def _match_name(name: str, keys: dict[str, Any]) -> str | None:
    """The key of ``keys`` naming the same file as ``name``: equal, else the one key that is a
    whole-component suffix of ``name`` or of which ``name`` is one (``x.png`` ~ ``a/x.png``)."""
    if name in keys:
        return name
    parts = PurePosixPath(name).parts
    hits = []
    for key in keys:
        kp = PurePosixPath(key.replace("\\", "/")).parts
        short, long = (kp, parts) if len(kp) <= len(parts) else (parts, kp)
        if short and long[-len(short):] == short:
            hits.append(key)
    return hits[0] if len(hits) == 1 else None


class BoxSource:
    """Boxes [N, 4] xyxy px for each image, from a COCO file, a mapping file or a folder."""

    def __init__(self, spec: Path, *, clip: bool = False) -> None:
        self.spec = spec
        self.coco: CocoGroups | None = None
        self.mapping: dict[str, Any] | None = None
        # texts and attributes of the boxes of a COCO file, by image file name
        self.coco_extras: dict[str, tuple[list[str] | None, np.ndarray | None]] = {}
        if spec.is_dir():
            return
        data = read_json(spec)
        if isinstance(data, dict) and "images" in data and "annotations" in data:
            self.coco = load_coco_groups(spec, clip=clip)
            self.by_name = {info["file_name"]: info for info in self.coco.images}
        elif isinstance(data, dict):
            self.mapping = {str(k).replace("\\", "/"): v for k, v in data.items()}
        else:
            raise DetgroupError(
                f"{spec}: expected a COCO JSON or a mapping of image file name to boxes"
            )

    def category_ids(self, names: list[str]) -> list[int] | None:
        """COCO ids of the model's categories ``names`` in this source, or None when the
        source is not COCO or lacks one of the names."""
        if self.coco is None:
            return None
        ids = {c["name"]: int(c["id"]) for c in self.coco.categories}
        if not all(n in ids for n in names):
            return None
        return [ids[n] for n in names]

    def inputs(self, images: str) -> list[InputImage | str]:
        """The images to group (a failure message for a file the COCO source lacks).

        Every image file found (a folder: with its subfolders) is matched to the COCO image of
        the same relative ``file_name`` (else of the one ``file_name`` that ends in the file's
        path, or that the file's relative name ends in); COCO images without a file are not
        inputs.
        """
        found = list_images(images)
        if self.coco is None:
            return [InputImage(p, n, k) for k, (p, n) in enumerate(found, start=1)]
        out: list[InputImage | str] = []
        for path, name in found:
            key = _match_name(name, self.by_name) or _match_name(path.as_posix(), self.by_name)
            if key is None:
                out.append(f"{self.spec}: no image with file name {name!r} (or several whose "
                           "file_name ends in it)")
            else:
                info = self.by_name[key]
                out.append(InputImage(path, info["file_name"], int(info["id"])))
        return out

    def boxes(self, image: InputImage) -> tuple[Any, str]:
        """(raw boxes xyxy px, where they came from) for one image."""
        if self.coco is not None:
            return (self.coco.targets(image.image_id)["boxes"],
                    f"{self.spec} (image id {image.image_id}, {image.name})")
        if self.mapping is not None:
            key = _match_name(image.name, self.mapping)
            if key is None:
                raise DetgroupError(f"{self.spec}: no boxes for {image.name!r}")
            return parse_box_list(self.mapping[key], source=f"{self.spec} ({key})"), \
                f"{self.spec} ({key})"
        file = self._box_file(image)
        if file is None:
            stem = str(PurePosixPath(image.name).with_suffix(""))
            raise DetgroupError(f"{self.spec}: no {stem}.json or {stem}.csv box file")
        return read_box_file(file), str(file)

    def _box_file(self, image: InputImage) -> Path | None:
        """The per-image box file of ``image`` in the box folder (``.json`` first), or None."""
        stem = str(PurePosixPath(image.name).with_suffix(""))
        for suffix in (".json", ".csv"):
            file = self.spec / f"{stem}{suffix}"
            if file.is_file():
                return file
        return None

    def extras(self, image: InputImage, num_boxes: int) -> tuple[list[str] | None, Any]:
        """(texts or None, attributes or None) of the boxes of one image; a list whose length
        is not ``num_boxes`` is a DetgroupError naming its file."""
        if self.coco is not None:
            target = self.coco.targets(image.image_id)
            anns = self.coco.anns_by_image.get(image.image_id, [])
            return (target["texts"] if any("text" in a for a in anns) else None,
                    target["attributes"] if self.coco.attribute_names else None)
        value: Any = None
        source: Path = self.spec
        if self.mapping is not None:
            key = _match_name(image.name, self.mapping)
            value = None if key is None else self.mapping[key]
        elif (file := self._box_file(image)) is not None:
            source = file
            value = read_json(file) if file.suffix == ".json" else read_csv_texts(file)
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


def _record(image: InputImage, pixels: np.ndarray, result: GroupResult,
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
    overlays: bool = True,
    heatmap: bool = False,
    resume: bool = True,
    clip: bool = False,
) -> dict[str, Any]:
    """Group the boxes of every image; returns a summary (counts, failures, timings).

    ``clip``: clip boxes that leave their image instead of failing the image (and, for a COCO
    box file, instead of refusing the file).
    """
    from detgroup.visualize import draw_groups, save_rgb_png

    if boxes is not None and detector is not None:
        raise DetgroupError("give at most one of --boxes and --detector")
    grouper = Grouper.from_checkpoint(checkpoint, device=device, method=method,
                                      neighbors=neighbors, clip=clip)
    # neither: the model detects the boxes itself (trained with model.detector)
    self_detect = boxes is None and detector is None
    if self_detect and not grouper.detects:
        raise DetgroupError(f"{checkpoint}: this model groups given boxes (trained without "
                            "model.detector): give --boxes or --detector")
    source = BoxSource(boxes, clip=clip) if boxes is not None else None
    inputs: list[InputImage | str] = (
        source.inputs(images) if source is not None
        else [InputImage(p, n, k) for k, (p, n) in enumerate(list_images(images), start=1)]
    )
    if source is not None:
        _check_all_extras(source, [i for i in inputs if isinstance(i, InputImage)])
    det = (Detector(detector, arch=detector_arch, score=detector_score,
                    classes=detector_classes, device=device) if detector is not None else None)
    try:
        for sub in ("per_image", "overlays"):
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DetgroupError(f"{out_dir}: cannot create output folder ({err.strerror})") from None
    remove_stale_temp_files(out_dir, recursive=True)

    names = grouper.category_names
    category_ids = source.category_ids(names) if source is not None else None
    if source is not None and source.coco is not None and category_ids is None:
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


def _check_all_extras(source: BoxSource, images: list[InputImage]) -> None:
    """Check the texts / attributes of every image's boxes before anything is written (an image
    whose boxes cannot be read is left to the main loop, which reports and skips it)."""
    for image in images:
        try:
            raw, _ = source.boxes(image)
        except DetgroupError:
            continue
        source.extras(image, len(raw))


def _write_collections(out_dir: Path, records: list[dict[str, Any]], names: list[str],
                       category_ids: list[int] | None = None,
                       attribute_names: list[str] | None = None) -> None:
    """``results.json`` (COCO results) and ``predictions.json`` (COCO with groups).

    ``category_ids[k]`` is the COCO id written for the model's category ``names[k]``
    (default 1..C).
    """
    ids = category_ids or list(range(1, len(names) + 1))
    id_of = dict(zip(names, ids, strict=True))
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
                "category_id": id_of[box["category"]],
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
    categories = [{"id": i, "name": n} for n, i in zip(names, ids, strict=True)]
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
