"""Post-processing of model outputs into per-image groups, and the evaluation loop."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.special import expit
from torch import Tensor, nn
from tqdm import tqdm

from detgroup.data.coco_groups import CocoGroups, load_coco_groups, read_json
from detgroup.data.dataset import model_inputs
from detgroup.decoder import Partition, decode_on_neighbors, decode_sparse
from detgroup.errors import DetgroupError
from detgroup.metrics import DetectionGroupingEvaluator, GroupingEvaluator, coco_box_ap


@dataclass
class ImagePrediction:
    """Decoded prediction of one image (numpy, CPU).

    ``boxes`` [N, 4] xyxy px; ``class_probs`` [N, C]; ``categories`` [N] class indices;
    ``groups`` [N] group ids numbered from 0 within each category; ``scores`` [N] probability of
    the chosen category; ``group_scores`` maps (category, group) → confidence;
    ``affinity`` [N, N] same-group probabilities (a ``scipy.sparse.csr_matrix`` holding the
    candidate pairs only when the model scored candidate pairs, ``model.pair_candidates``).
    """

    image_id: int
    boxes: np.ndarray
    class_probs: np.ndarray
    categories: np.ndarray
    groups: np.ndarray
    scores: np.ndarray
    group_scores: dict[tuple[int, int], float]
    affinity: np.ndarray | sp.csr_matrix


def unscored_indices(names: list[str], unscored: list[str], *, source: str) -> list[int]:
    """Class indices of the category names in ``unscored``; an unknown name is an error."""
    unknown = [u for u in unscored if u not in names]
    if unknown:
        raise DetgroupError(f"{source}: unscored categories {unknown} are not among {names}")
    return [names.index(u) for u in unscored]


class PostProcess:
    """Turns the model's batched logits into :class:`ImagePrediction` per image."""

    def __init__(self, *, method: str = "gaec-kl", consistency: str = "joint",
                 pair_bias: float = 0.0, neighbors: int = 0) -> None:
        if neighbors and method == "exact":
            raise DetgroupError("decoder method 'exact' decodes every pair; it cannot be used "
                                f"with neighbors={neighbors} (use neighbors 0)")
        self.method = method
        self.consistency = consistency
        self.pair_bias = pair_bias  # added to the pair logits (see DecoderConfig.pair_bias)
        self.neighbors = neighbors  # 0: every pair; k: each box's k nearest (DecoderConfig)

    @classmethod
    def from_config(cls, decoder: Any, *, method: str | None = None,
                    consistency: str | None = None, pair_bias: float | None = None,
                    neighbors: int | None = None) -> PostProcess:
        """From a :class:`~detgroup.config.DecoderConfig`, each field overridable."""
        return cls(method=method or decoder.method,
                   consistency=consistency or decoder.consistency,
                   pair_bias=decoder.pair_bias if pair_bias is None else pair_bias,
                   neighbors=decoder.neighbors if neighbors is None else neighbors)

    def settings(self) -> dict[str, Any]:
        """Keyword arguments of :func:`detgroup.decoder.partition` that decode as this does."""
        return {"method": self.method, "consistency": self.consistency,
                "pair_bias": float(self.pair_bias), "neighbors": int(self.neighbors)}

    def decode(self, pair_logits: np.ndarray, class_logits: np.ndarray | None,
               boxes: np.ndarray) -> Partition:
        """Partition of one image: pair_logits [N, N] (bias added), class_logits [N, C] or None,
        boxes [N, 4] xyxy px; on the k-nearest-neighbour graph when ``neighbors`` > 0."""
        return decode_on_neighbors(pair_logits, class_logits, method=self.method,
                                   consistency=self.consistency, boxes=boxes,
                                   neighbors=self.neighbors)

    @torch.no_grad()
    def __call__(
        self, outputs: dict[str, Tensor], boxes: Tensor, image_ids: list[int]
    ) -> list[ImagePrediction]:
        """outputs: the model's dict; boxes [B, N, 4]; image_ids [B]."""
        if "pair_edges" in outputs:
            return self._sparse(outputs, boxes, image_ids)
        logits = outputs["pred_logits"].float().cpu().numpy()  # [B, N, C]
        pair = outputs["pred_affinity"].float().cpu().numpy() + self.pair_bias  # [B, N, N]
        real = (~outputs["pad_mask"]).cpu().numpy()  # [B, N]
        boxes_np = boxes.float().cpu().numpy()
        results = []
        for b, image_id in enumerate(image_ids):
            keep = np.flatnonzero(real[b])
            pair_b = pair[b][np.ix_(keep, keep)]
            pair_b = (pair_b + pair_b.T) / 2  # exact symmetry for the decoder
            cls_b = logits[b][keep]
            part = self.decode(pair_b, cls_b, boxes_np[b][keep])
            probs = _softmax(cls_b)
            scores = probs[np.arange(len(keep)), part.categories] if len(keep) else np.zeros(0)
            results.append(
                ImagePrediction(
                    image_id=int(image_id),
                    boxes=boxes_np[b][keep],
                    class_probs=probs,
                    categories=part.categories,
                    groups=part.groups,
                    scores=scores,
                    group_scores=_group_score_map(part),
                    affinity=expit(pair_b),
                )
            )
        return results


    def _sparse(self, outputs: dict[str, Tensor], boxes: Tensor, image_ids: list[int]
                ) -> list[ImagePrediction]:
        """Decode the candidate pairs (``pair_edges`` [E, 2] flat, ``pred_edge_logits`` [E])
        with ``decode_sparse``; ``neighbors`` does not apply (the graph is the model's)."""
        logits = outputs["pred_logits"].float().cpu().numpy()  # [B, N, C]
        real = (~outputs["pad_mask"]).cpu().numpy()  # [B, N]
        edges = outputs["pair_edges"].cpu().numpy()  # [E, 2]
        edge_logits = outputs["pred_edge_logits"].float().cpu().numpy() + self.pair_bias  # [E]
        boxes_np = boxes.float().cpu().numpy()
        n = real.shape[1]
        image_of = edges[:, 0] // max(n, 1)
        results = []
        for b, image_id in enumerate(image_ids):
            keep = np.flatnonzero(real[b])
            local = np.full(n, -1, dtype=np.int64)
            local[keep] = np.arange(len(keep))
            mine = image_of == b
            e = local[edges[mine] - b * n]  # [E_b, 2] indices into the real boxes
            w = edge_logits[mine]
            cls_b = logits[b][keep]
            part = decode_sparse(len(keep), e, w, cls_b, method=self.method,
                                 consistency=self.consistency, boxes=boxes_np[b][keep])
            probs = _softmax(cls_b)
            scores = probs[np.arange(len(keep)), part.categories] if len(keep) else np.zeros(0)
            p = expit(w)
            affinity = sp.csr_matrix((np.concatenate([p, p]), (np.concatenate([e[:, 0], e[:, 1]]),
                                      np.concatenate([e[:, 1], e[:, 0]]))),
                                     shape=(len(keep), len(keep)))
            results.append(ImagePrediction(
                image_id=int(image_id), boxes=boxes_np[b][keep], class_probs=probs,
                categories=part.categories, groups=part.groups, scores=scores,
                group_scores=_group_score_map(part), affinity=affinity))
        return results


def _group_score_map(part: Partition) -> dict[tuple[int, int], float]:
    """{(category, group): score} from the decoder's per-cluster scores."""
    scores: dict[tuple[int, int], float] = {}
    for i, k in enumerate(part.cluster):
        scores.setdefault((int(part.categories[i]), int(part.groups[i])),
                          float(part.group_scores[k]))
    return scores


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True) if x.size else x
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True) if x.size else e


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
    on_image: Callable[[ImagePrediction, np.ndarray, np.ndarray, dict[str, Any]], None]
    | None = None,
    unscored_categories: list[int] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Run the model on every batch, decode, and score against the batch's ground truth.

    ``on_image(prediction, gt_categories [N], gt_groups [N], metrics)`` is called for every
    image (the evaluation report collects its rows this way).

    Returns the summary (see :class:`detgroup.metrics.GroupingEvaluator`, plus
    ``model_seconds`` and ``decode_seconds`` per image) and per-image metric dicts.
    ``unscored_categories``: class indices left out of the ``entity_*`` metrics.
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
