"""The evaluation loop (model → :class:`~detgroup.model.postprocess.PostProcess` → metrics), and
the scoring of detected, grouped boxes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from detgroup.data.coco_groups import CocoGroups, load_coco_groups, read_json
from detgroup.data.dataset import model_inputs
from detgroup.errors import DetgroupError
from detgroup.metrics import DetectionGroupingEvaluator, GroupingEvaluator, coco_box_ap
from detgroup.model.postprocess import PostProcess, Prediction

ImagePrediction = Prediction  # the name before the one prediction type (model/postprocess.py)
__all__ = ["ImagePrediction", "PostProcess", "evaluate", "evaluate_detections",
           "load_detections", "move_batch", "unscored_indices"]


def unscored_indices(names: list[str], unscored: list[str], *, source: str) -> list[int]:
    """Class indices of the category names in ``unscored``; an unknown name is an error."""
    unknown = [u for u in unscored if u not in names]
    if unknown:
        raise DetgroupError(f"{source}: unscored categories {unknown} are not among {names}")
    return [names.index(u) for u in unscored]


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v
            for k, v in batch.items()}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[dict[str, Any]],
    *,
    num_classes: int,
    postprocess: PostProcess,
    device: torch.device,
    progress: bool = False,
    on_image: Callable[[Prediction, np.ndarray, np.ndarray, dict[str, Any]], None]
    | None = None,
    unscored_categories: list[int] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Run the model on every batch, decode, and score against the batch's ground truth.

    ``on_image(prediction, gt_categories [N], gt_groups [N], metrics)`` is called for every
    image (the evaluation report collects its rows this way).

    Returns the summary (see :class:`detgroup.metrics.GroupingEvaluator`, plus
    ``model_seconds`` and ``decode_seconds`` per image) and per-image metric dicts.
    ``unscored_categories``: class indices left out of the ``entity_*`` metrics.
    A ``postprocess`` with ``ignore_categories`` scores the grouping alone: every true box
    counts as of one category too (give ``num_classes`` 1).
    """
    was_training = model.training
    model.eval()
    evaluator = GroupingEvaluator(num_classes=num_classes,
                                  unscored_categories=unscored_categories or ())
    per_image: list[dict[str, Any]] = []
    model_time = decode_time = 0.0
    for batch in tqdm(loader, desc="eval", disable=not progress, leave=False):
        batch = move_batch(batch, device)
        start = time.perf_counter()
        outputs = model(**model_inputs(batch))
        mid = time.perf_counter()
        preds = postprocess(outputs, batch["boxes"], batch["image_ids"])
        decode_time += time.perf_counter() - mid
        model_time += mid - start
        for b, pred in enumerate(preds):
            real = ~batch["pad_mask"][b]
            gt_cat = batch["categories"][b][real].cpu().numpy()
            if postprocess.ignore_categories:
                gt_cat = np.zeros_like(gt_cat)
            gt_grp = batch["groups"][b][real].cpu().numpy()
            known = batch["group_known"][b][real].cpu().numpy() if "group_known" in batch else None
            metrics = evaluator.update(gt_cat, gt_grp, pred.categories, pred.groups, known)
            per_image.append({"image_id": pred.image_id, **metrics})
            if on_image is not None:
                on_image(pred, gt_cat, gt_grp, metrics)
    model.train(was_training)
    summary = evaluator.summary()
    n = max(len(per_image), 1)
    summary["model_seconds"] = model_time / n
    summary["decode_seconds"] = decode_time / n
    return summary, per_image


# --- grouping on detected boxes (``detgroup eval --detections``) -----------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_detections(path: str | Path, truth: CocoGroups) -> list[dict[str, Any]]:
    """Read and check a COCO results file (a list of detections) against its truth file.

    Each detection has ``image_id`` and ``category_id`` of ``truth`` (results must use the
    truth file's category ids), ``bbox`` [x, y, w, h] px with finite values and w, h >= 0, a
    finite ``score``, and optionally an integer ``group_id`` (without one a detection is a group
    of its own, as in COCO with groups).

    Returns:
        The detections, in file order.

    Raises:
        DetgroupError: one line naming the file, the detection (its index, and its ``id`` when it
            has one), its image id and the first problem found.
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, list):
        raise DetgroupError(f"{path}: expected COCO results (a JSON list of detections), got a "
                            f"{type(data).__name__}")
    image_ids = {int(info["id"]) for info in truth.images}
    known = ", ".join(f"{c['id']} {c['name']!r}" for c in truth.categories)
    for k, det in enumerate(data):
        if not isinstance(det, dict):
            raise DetgroupError(f"{path}: detection {k} is not a JSON object")
        where = f"{path}: detection {k}" + (f" (id {det['id']!r})" if "id" in det else "")
        image_id = det.get("image_id")
        if not isinstance(image_id, int) or isinstance(image_id, bool) or image_id not in image_ids:
            raise DetgroupError(f"{where}: image id {image_id!r} is not in {truth.path}")
        where = f"{where} (image id {image_id})"
        cat_id = det.get("category_id")
        if cat_id not in truth.category_ids or isinstance(cat_id, bool):
            raise DetgroupError(f"{where}: category id {cat_id!r} is not in {truth.path} (its "
                                f"categories: {known}; results must use the truth file's ids)")
        if "score" not in det:
            raise DetgroupError(f"{where}: no 'score'")
        if not _is_number(det["score"]) or not math.isfinite(det["score"]):
            raise DetgroupError(f"{where}: 'score' must be a finite number, got {det['score']!r}")
        bbox = det.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise DetgroupError(f"{where}: 'bbox' must be [x, y, w, h] numbers, got {bbox!r}")
        if not all(math.isfinite(v) for v in bbox):
            raise DetgroupError(f"{where}: 'bbox' has a non-finite value {bbox!r}")
        if bbox[2] < 0 or bbox[3] < 0:
            raise DetgroupError(f"{where}: 'bbox' has a negative size {bbox!r}")
        group_id = det.get("group_id", 0)
        if not isinstance(group_id, int) or isinstance(group_id, bool):
            raise DetgroupError(f"{where}: 'group_id' must be an integer, got {group_id!r}")
    return data


def _detection_arrays(dets: list[dict[str, Any]], cat_index: dict[int, int]
                      ) -> dict[str, np.ndarray]:
    """boxes [D, 4] xyxy px, scores [D], categories [D] class indices, groups [D] dense ids."""
    boxes = np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    dense: dict[Any, int] = {}
    groups = [dense.setdefault(d.get("group_id", ("lone", k)), len(dense))
              for k, d in enumerate(dets)]
    return {"det_boxes": boxes,
            "det_scores": np.array([d["score"] for d in dets], dtype=np.float64),
            "det_categories": np.array([cat_index[d["category_id"]] for d in dets],
                                       dtype=np.int64),
            "det_groups": np.array(groups, dtype=np.int64)}


def evaluate_detections(
    detections: str | Path,
    truth: str | Path,
    *,
    min_score: float = 0.0,
    iou_threshold: float = 0.5,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score detected, classified and grouped boxes (COCO results with ``group_id``) against a
    COCO-with-groups truth file.

    Category and box AP (:func:`~detgroup.metrics.coco_box_ap`) use every detection; the
    grouping metrics (:class:`~detgroup.metrics.DetectionGroupingEvaluator`) use those with
    ``score >= min_score``. Every truth image is scored, with or without detections.

    Returns:
        The summary and per-image metrics (``image_id`` plus the metrics; ``ari`` is None for an
        image without a matched detection).
    """
    coco = load_coco_groups(truth)
    dets = load_detections(detections, coco)
    by_image: dict[int, list[dict[str, Any]]] = {}
    for det in dets:
        if det["score"] >= min_score:
            by_image.setdefault(det["image_id"], []).append(det)
    cat_index = {cid: k for k, cid in enumerate(coco.category_ids)}
    evaluator = DetectionGroupingEvaluator(iou_threshold=iou_threshold)
    per_image: list[dict[str, Any]] = []
    for info in coco.images:
        target = coco.targets(info["id"])
        metrics = evaluator.update(
            **_detection_arrays(by_image.get(info["id"], []), cat_index),
            gt_boxes=target["boxes"], gt_categories=target["categories"],
            gt_groups=target["groups"],
        )
        record = {"image_id": int(info["id"]), **metrics}
        if math.isnan(record["ari"]):
            record["ari"] = None
        per_image.append(record)
    document = {"images": coco.images, "categories": coco.categories,
                "annotations": [a for anns in coco.anns_by_image.values() for a in anns]}
    summary = evaluator.summary()
    summary.update(coco_box_ap(document, dets))
    return summary, per_image
