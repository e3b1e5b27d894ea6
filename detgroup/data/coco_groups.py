"""COCO with groups: reader, validator and writer.

The format is COCO detection JSON plus one integer ``group_id`` per annotation (DESIGN.md).
Two annotations of one image with equal ``group_id`` belong to one group; an annotation without
``group_id`` is a group of its own. All annotations of a group share a ``category_id``.
``group_id: -1`` (:data:`GROUP_UNKNOWN`) marks a box whose group is not known (partly labelled
data): its category counts, but every pair it is in is left out of the pair loss and of the
grouping metrics.

The validator collects every problem of a file, not just the first, and each message names the
file, the image or annotation id and what is wrong. ``load_coco_groups`` raises one
:class:`~detgroup.errors.DetgroupError` listing them all.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detgroup.atomic import atomic_write_json
from detgroup.data.images import read_image_rgb
from detgroup.errors import DetgroupError
from detgroup.ops.boxes import box_faults

MAX_LISTED_PROBLEMS = 50
GROUP_UNKNOWN = -1  # the group_id of a box whose group is not known


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _where(image_id: Any = None, ann_id: Any = None) -> str:
    if ann_id is not None:
        suffix = f" (image id {image_id!r})" if image_id is not None else ""
        return f"annotation id {ann_id!r}{suffix}"
    if image_id is not None:
        return f"image id {image_id!r}"
    return "file"


@dataclass
class CocoGroups:
    """A validated COCO-with-groups file.

    ``images`` are sorted by id; ``category_names[k]`` is the name of class index ``k``
    (categories sorted by their COCO id); ``anns_by_image`` maps image id → its annotations.
    """

    path: Path
    images: list[dict[str, Any]]
    categories: list[dict[str, Any]]
    anns_by_image: dict[int, list[dict[str, Any]]] = field(repr=False)
    # the top-level attribute_names: what each annotation's attributes vector holds
    attribute_names: list[str] = field(default_factory=list)

    @property
    def category_names(self) -> list[str]:
        return [c["name"] for c in self.categories]

    @property
    def category_ids(self) -> list[int]:
        return [c["id"] for c in self.categories]

    def __len__(self) -> int:
        return len(self.images)

    def group_label_counts(self) -> dict[str, int]:
        """``boxes``, ``without_group_id`` (each a group of its own) and ``group_unknown``
        (``group_id`` -1: left out of the pair loss and the grouping metrics)."""
        anns = [a for v in self.anns_by_image.values() for a in v]
        return {"boxes": len(anns),
                "without_group_id": sum("group_id" not in a for a in anns),
                "group_unknown": sum(a.get("group_id") == GROUP_UNKNOWN for a in anns)}

    def targets(self, image_id: int) -> dict[str, np.ndarray]:
        """Ground truth of one image.

        Returns ``boxes`` float32 [N, 4] xyxy absolute pixels, ``categories`` int64 [N] class
        indices into ``category_names``, ``groups`` int64 [N] dense group indices 0..G-1 (in order
        of first appearance; an annotation without ``group_id``, or with ``group_id`` -1, gets a
        group of its own), ``group_known`` bool [N] (False for ``group_id`` -1: the box's pairs
        are not labelled), ``ann_ids`` int64 [N], ``texts`` (a list of N strings, ``""`` where an
        annotation has no ``text``) and ``attributes`` float32 [N, A] (A =
        ``len(attribute_names)``).
        """
        anns = self.anns_by_image.get(image_id, [])
        cat_index = {cid: k for k, cid in enumerate(self.category_ids)}
        boxes = np.zeros((len(anns), 4), dtype=np.float32)
        categories = np.zeros(len(anns), dtype=np.int64)
        groups = np.zeros(len(anns), dtype=np.int64)
        dense: dict[Any, int] = {}
        for i, ann in enumerate(anns):
            x, y, w, h = ann["bbox"]
            boxes[i] = (x, y, x + w, y + h)
            categories[i] = cat_index[ann["category_id"]]
            key = ann.get("group_id", ("lone", ann["id"]))
            if key == GROUP_UNKNOWN:
                key = ("unknown", ann["id"])
            groups[i] = dense.setdefault(key, len(dense))
        ann_ids = np.array([a["id"] for a in anns], dtype=np.int64)
        known = np.array([a.get("group_id") != GROUP_UNKNOWN for a in anns], dtype=bool)
        attributes = np.array([a.get("attributes", []) for a in anns], dtype=np.float32)
        return {"boxes": boxes, "categories": categories, "groups": groups,
                "group_known": known, "ann_ids": ann_ids,
                "texts": [a.get("text", "") for a in anns],
                "attributes": attributes.reshape(len(anns), len(self.attribute_names))}


def _check_bbox(
    ann: dict[str, Any],
    image: dict[str, Any] | None,
    *,
    where: str,
    tolerance: float,
    clip: bool,
    problems: list[str],
) -> None:
    bbox = ann.get("bbox")
    if bbox is None:
        problems.append(f"{where}: missing 'bbox'")
        return
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        problems.append(f"{where}: 'bbox' must be a list of 4 numbers [x, y, w, h], got {bbox!r}")
        return
    if not all(math.isfinite(v) for v in bbox):
        problems.append(f"{where}: 'bbox' has a non-finite value {bbox!r}")
        return
    x, y, w, h = bbox
    width, height = math.inf, math.inf
    known = image is not None and _is_number(image.get("width")) and _is_number(
        image.get("height"))
    if known:
        width, height = image["width"], image["height"]
    faults = box_faults(np.array([[x, y, x + w, y + h]], dtype=np.float64), height, width,
                        tolerance=tolerance)
    if faults.empty[0]:
        problems.append(f"{where}: 'bbox' has non-positive size (w={w}, h={h})")
        return
    if not known:
        return
    if clip:
        if faults.no_area_inside[0]:
            problems.append(
                f"{where}: 'bbox' {bbox!r} lies outside the {width}x{height} image (nothing left "
                "after clipping)"
            )
            return
        x1, y1, x2, y2 = (float(v) for v in faults.clipped[0])
        ann["bbox"] = [x1, y1, x2 - x1, y2 - y1]
    elif faults.outside[0]:
        problems.append(
            f"{where}: 'bbox' {bbox!r} extends outside the {width}x{height} image by more than "
            f"{tolerance} px (use --clip, or clip=True, to clip it)"
        )


def _check_item_fields(
    ann: dict[str, Any],
    attribute_names: list[str] | None,
    declared_ok: bool,
    *,
    where: str,
    problems: list[str],
) -> None:
    """The optional ``text`` (a string) and ``attributes`` (finite numbers, as many as the
    top-level ``attribute_names``, which every annotation then carries) of one annotation."""
    if "text" in ann and not isinstance(ann["text"], str):
        problems.append(f"{where}: 'text' must be a string, got {type(ann['text']).__name__} "
                        f"{ann['text']!r}")
    if not declared_ok:
        return
    if "attributes" not in ann:
        if attribute_names is not None:
            problems.append(f"{where}: missing 'attributes' (the file declares attribute_names "
                            f"{attribute_names})")
        return
    values = ann["attributes"]
    if attribute_names is None:
        problems.append(f"{where}: has 'attributes' but the file declares no top-level "
                        "'attribute_names'")
        return
    if not isinstance(values, list) or not all(_is_number(v) for v in values):
        problems.append(f"{where}: 'attributes' must be a list of numbers, got {values!r}")
        return
    if len(values) != len(attribute_names):
        problems.append(f"{where}: 'attributes' has {len(values)} values but attribute_names "
                        f"declares {len(attribute_names)} {attribute_names}")
        return
    bad = [attribute_names[i] for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        problems.append(f"{where}: 'attributes' has a non-finite value for {bad} ({values!r})")


def validate_coco_groups(
    data: Any,
    *,
    path: str | Path = "<memory>",
    images_dir: str | Path | None = None,
    clip: bool = False,
    tolerance: float = 1.0,
) -> list[str]:
    """Check a parsed COCO-with-groups document; return every problem found (empty if valid).

    With ``clip=True`` boxes that extend outside their image are clipped in place instead of
    being reported. With ``images_dir`` every image file is decoded and its size checked.
    """
    path = str(path)
    problems: list[str] = []
    if not isinstance(data, dict):
        return [f"{path}: top level must be a JSON object, got {type(data).__name__}"]
    for key in ("images", "annotations", "categories"):
        if key not in data:
            problems.append(f"{path}: missing top-level key '{key}'")
        elif not isinstance(data[key], list):
            problems.append(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
    if problems:
        return problems

    attribute_names = data.get("attribute_names")
    if attribute_names is not None and (
        not isinstance(attribute_names, list)
        or not all(isinstance(n, str) and n for n in attribute_names)
        or len(set(attribute_names)) != len(attribute_names)
    ):
        problems.append(f"{path}: 'attribute_names' must be a list of distinct non-empty "
                        f"strings, got {attribute_names!r}")
        attribute_names = None
        declared_ok = False
    else:
        declared_ok = True

    images: dict[Any, dict[str, Any]] = {}
    for k, image in enumerate(data["images"]):
        if not isinstance(image, dict):
            problems.append(f"{path}: images[{k}] must be an object")
            continue
        image_id = image.get("id")
        where = f"{path}: {_where(image_id=image_id)}"
        if not _is_int(image_id):
            problems.append(f"{path}: images[{k}] has a missing or non-integer 'id' ({image_id!r})")
            continue
        if image_id in images:
            problems.append(f"{where}: duplicate image id")
            continue
        images[image_id] = image
        if not isinstance(image.get("file_name"), str) or not image.get("file_name"):
            problems.append(f"{where}: missing or non-string 'file_name'")
        for dim in ("width", "height"):
            if not _is_int(image.get(dim)) or image[dim] <= 0:
                problems.append(
                    f"{where}: '{dim}' must be a positive integer, got {image.get(dim)!r}"
                )

    categories: dict[Any, dict[str, Any]] = {}
    names: set[str] = set()
    for k, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict):
            problems.append(f"{path}: categories[{k}] must be an object")
            continue
        cat_id = cat.get("id")
        if not _is_int(cat_id):
            problems.append(
                f"{path}: categories[{k}] has a missing or non-integer 'id' ({cat_id!r})"
            )
            continue
        if cat_id in categories:
            problems.append(f"{path}: category id {cat_id}: duplicate category id")
            continue
        categories[cat_id] = cat
        name = cat.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"{path}: category id {cat_id}: missing or non-string 'name'")
        elif name in names:
            problems.append(f"{path}: category id {cat_id}: duplicate category name {name!r}")
        else:
            names.add(name)

    ann_ids: set[Any] = set()
    group_members: dict[tuple[Any, Any], list[dict[str, Any]]] = defaultdict(list)
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            problems.append(f"{path}: annotations[{k}] must be an object")
            continue
        ann_id, image_id = ann.get("id"), ann.get("image_id")
        where = f"{path}: {_where(image_id=image_id, ann_id=ann_id)}"
        if not _is_int(ann_id):
            problems.append(
                f"{path}: annotations[{k}] has a missing or non-integer 'id' ({ann_id!r})"
            )
            continue
        if ann_id in ann_ids:
            problems.append(f"{where}: duplicate annotation id")
            continue
        ann_ids.add(ann_id)
        if not _is_int(image_id) or image_id not in images:
            problems.append(f"{where}: unknown image id {image_id!r}")
        cat_id = ann.get("category_id")
        if not _is_int(cat_id) or cat_id not in categories:
            problems.append(f"{where}: unknown category id {cat_id!r}")
        _check_bbox(
            ann,
            images.get(image_id) if _is_int(image_id) else None,
            where=where,
            tolerance=tolerance,
            clip=clip,
            problems=problems,
        )
        if "group_id" in ann:
            if not _is_int(ann["group_id"]):
                problems.append(f"{where}: 'group_id' must be an integer, got {ann['group_id']!r}")
            elif ann["group_id"] != GROUP_UNKNOWN:
                group_members[(image_id, ann["group_id"])].append(ann)
        if "iscrowd" in ann and ann["iscrowd"] not in (0, 1):
            problems.append(f"{where}: 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")
        _check_item_fields(ann, attribute_names, declared_ok, where=where, problems=problems)

    for (image_id, group_id), members in group_members.items():
        cats = sorted({m.get("category_id") for m in members}, key=repr)
        if len(cats) > 1:
            ids = ", ".join(str(m["id"]) for m in members)
            problems.append(
                f"{path}: image id {image_id!r}, group_id {group_id}: one group spans categories "
                f"{cats} (annotation ids {ids})"
            )

    if images_dir is not None:
        root = Path(images_dir)
        for image_id, image in images.items():
            name = image.get("file_name")
            if not isinstance(name, str) or not name:
                continue
            try:
                pixels = read_image_rgb(root / name)
            except DetgroupError as err:
                problems.append(f"{path}: image id {image_id}: {err}")
                continue
            h, w = pixels.shape[:2]
            if (w, h) != (image.get("width"), image.get("height")):
                problems.append(
                    f"{path}: image id {image_id}: file {root / name} is {w}x{h}, but the "
                    f"annotation says {image.get('width')}x{image.get('height')}"
                )
    return problems


def format_problems(problems: list[str]) -> str:
    """Join problems into one message, listing at most ``MAX_LISTED_PROBLEMS`` of them."""
    shown = problems[:MAX_LISTED_PROBLEMS]
    more = len(problems) - len(shown)
    lines = [f"{len(problems)} problem(s) found:"] + [f"  {p}" for p in shown]
    if more:
        lines.append(f"  ... and {more} more")
    return "\n".join(lines)


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing file or a syntax error is a :class:`DetgroupError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DetgroupError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DetgroupError(f"{path}: cannot read file ({err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DetgroupError(
            f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from None


def load_coco_groups(
    path: str | Path,
    *,
    images_dir: str | Path | None = None,
    clip: bool = False,
    tolerance: float = 1.0,
) -> CocoGroups:
    """Read and validate a COCO-with-groups file; raise one error listing every problem."""
    path = Path(path)
    data = read_json(path)
    problems = validate_coco_groups(
        data, path=path, images_dir=images_dir, clip=clip, tolerance=tolerance
    )
    if problems:
        raise DetgroupError(format_problems(problems))
    return from_dict(data, path=path)


def from_dict(data: dict[str, Any], *, path: str | Path = "<memory>") -> CocoGroups:
    """Index an already validated COCO-with-groups document."""
    images = sorted(data["images"], key=lambda im: im["id"])
    categories = sorted(data["categories"], key=lambda c: c["id"])
    anns_by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in data["annotations"]:
        anns_by_image[ann["image_id"]].append(ann)
    for anns in anns_by_image.values():
        anns.sort(key=lambda a: a["id"])
    return CocoGroups(Path(path), images, categories, dict(anns_by_image),
                      list(data.get("attribute_names") or []))


def write_coco_groups(path: str | Path, data: dict[str, Any]) -> None:
    """Validate ``data`` (without image files) and write it atomically as JSON.

    Missing ``area`` and ``iscrowd`` fields are filled in so pycocotools reads the file as is.
    """
    problems = validate_coco_groups(data, path=path)
    if problems:
        raise DetgroupError(format_problems(problems))
    out = dict(data)
    out["annotations"] = [
        {**ann, "area": ann.get("area", float(ann["bbox"][2] * ann["bbox"][3])),
         "iscrowd": ann.get("iscrowd", 0)}
        for ann in data["annotations"]
    ]
    atomic_write_json(path, out)


def detection_results(image_id: int, boxes: np.ndarray, categories: np.ndarray,
                      groups: np.ndarray, scores: np.ndarray,
                      category_ids: list[int]) -> list[dict[str, Any]]:
    """One image's detections as COCO results with ``group_id`` (what ``eval --detections``
    reads): boxes [R, 4] xyxy px, categories [R] indices into ``category_ids``, groups [R]
    per-category group ids in [0, R), scores [R]. A group is (category, group id), made one
    integer per image as ``category * (R + 1) + group``."""
    n = len(boxes)
    results = []
    for box, cat, group, score in zip(boxes, categories, groups, scores, strict=True):
        x1, y1, x2, y2 = (float(v) for v in box)
        results.append({"image_id": int(image_id),
                        "category_id": int(category_ids[int(cat)]),
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score),
                        "group_id": int(cat) * (n + 1) + int(group)})
    return results
