"""``GroupingEvaluator``: detectron2 ``DatasetEvaluator`` of groups on detected boxes + COCO AP.

The metrics are those of ``detgroup eval --detections`` (:mod:`detgroup.metrics`): detections
are matched one-to-one to truth boxes at IoU >= ``iou_threshold`` by score, as COCOeval does;
the groups of the matched detections are compared with the true groups (group P/R/F1,
exact-group F1, Group PQ, pair F1, ARI), categories on matched boxes give ``cat_acc``, and
pycocotools gives COCO AP (``cat_ap``, ``cat_ap50``) and class-agnostic box AP (``box_ap``,
``box_ap50``). Metrics are fractions in [0, 1] (detectron2's own COCOEvaluator reports
percentages).
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from typing import Any

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from detgroup.data.coco_groups import detection_results, load_coco_groups
from detgroup.metrics import DetectionGroupingEvaluator, coco_box_ap

logger = logging.getLogger(__name__)


class GroupingEvaluator(DatasetEvaluator):
    """Group-detection metrics and COCO AP of a model with ``GroupingROIHeads``.

    Args:
        dataset_name: a dataset registered by ``register_coco_groups_instances`` (its metadata
            names the truth file).
        iou_threshold: the least box IoU of a detection-to-truth match.
        min_score: detections below this ``score`` are left out of the grouping metrics (AP
            uses every detection).
    """

    def __init__(self, dataset_name: str, *, iou_threshold: float = 0.5,
                 min_score: float = 0.0) -> None:
        meta = MetadataCatalog.get(dataset_name)
        self.truth = load_coco_groups(meta.json_file)
        self.iou_threshold = iou_threshold
        self.min_score = min_score
        self._category_ids = self.truth.category_ids  # contiguous index -> COCO category id
        self._results: list[dict[str, Any]] = []

    def reset(self) -> None:
        self._results = []

    @property
    def results(self) -> list[dict[str, Any]]:
        """The COCO results with ``group_id`` collected by ``process`` on this process."""
        return self._results

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        """Collect the detections of each image as COCO results with ``group_id``."""
        for inp, out in zip(inputs, outputs, strict=True):
            inst = out["instances"].to("cpu")
            boxes = inst.pred_boxes.tensor.numpy().astype(np.float64)  # [R, 4] xyxy px
            groups = inst.pred_groups.numpy() if inst.has("pred_groups") else np.arange(len(inst))
            self._results += detection_results(inp["image_id"], boxes, inst.pred_classes.numpy(),
                                               groups, inst.scores.numpy(), self._category_ids)

    def evaluate(self) -> OrderedDict[str, dict[str, float]]:
        """{"groups": metrics} on the main process (an empty dict on the others)."""
        results = self._results
        if comm.get_world_size() > 1:
            gathered = comm.gather(results, dst=0)
            if not comm.is_main_process():
                return OrderedDict()
            results = list(itertools.chain(*gathered))
        return OrderedDict(groups=self.metrics(results))

    def metrics(self, results: list[dict[str, Any]]) -> dict[str, float]:
        """The summary over every truth image, from COCO results with ``group_id``."""
        cat_index = {cid: k for k, cid in enumerate(self._category_ids)}
        by_image: dict[int, list[dict[str, Any]]] = {}
        for det in results:
            if det["score"] >= self.min_score:
                by_image.setdefault(det["image_id"], []).append(det)
        evaluator = DetectionGroupingEvaluator(iou_threshold=self.iou_threshold)
        for info in self.truth.images:
            dets = by_image.get(info["id"], [])
            target = self.truth.targets(info["id"])
            boxes = np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]
            evaluator.update(
                det_boxes=boxes, det_scores=np.array([d["score"] for d in dets]),
                det_categories=np.array([cat_index[d["category_id"]] for d in dets],
                                        dtype=np.int64),
                det_groups=np.array([d["group_id"] for d in dets], dtype=np.int64),
                gt_boxes=target["boxes"], gt_categories=target["categories"],
                gt_groups=target["groups"],
            )
        summary = evaluator.summary()
        document = {"images": self.truth.images, "categories": self.truth.categories,
                    "annotations": [a for anns in self.truth.anns_by_image.values()
                                    for a in anns]}
        summary.update(coco_box_ap(document, results))
        logger.info("group detection: %s", {k: round(float(v), 4) for k, v in summary.items()})
        return {k: float(v) for k, v in summary.items()}
