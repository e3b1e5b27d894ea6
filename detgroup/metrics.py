"""Evaluation metrics for grouping detected objects: categories, partitions and groups.

Every image has N boxes; each box has a category and a group id, for the ground truth and for
the prediction, given as four 1-D integer arrays of length N. Group ids are numbered per
category (``cat/0, cat/1, dog/0``), so a box's group identity is the pair
``(category, group_id)`` on both sides: two boxes are in the same group only when they agree
on both, and a category error that splits a group counts as a grouping error. Group ids are
otherwise arbitrary integers; renaming them changes no metric.

Metrics per image (`image_metrics`):

* categories: accuracy and macro F1 over the categories present in the image (in the
  ground truth or the prediction);
* partitions, on the ``(category, group_id)`` cluster labels: ARI, NMI (arithmetic
  normalisation) and AMI from scikit-learn, Hungarian accuracy (the largest number of boxes
  covered by a one-to-one matching of predicted groups to true groups, over N), and pairwise
  precision/recall/F1 over the N (N - 1) / 2 box pairs, a pair being positive when both boxes
  are in the same group;
* group detection: a predicted group matches a true group of the same category when their
  member sets have IoU > 0.5 (the matching is then unique), or, for the ``exact_`` metrics,
  IoU = 1.0 → group precision (TP / predicted groups), recall (TP / true groups) and F1;
  Group PQ = Σ IoU(matched at > 0.5) / (TP + ½ FP + ½ FN); and the absolute error in the
  number of groups;
* category-agnostic exact groups (``agnostic_exact_group_*``): a predicted group matches a
  true group with exactly the same members, whatever the categories of either;
* entity labelling in the LayoutLM / FUNSD protocol (``entity_*``): the groups of the
  *scored* categories (all but ``unscored_categories``, e.g. FUNSD's "other") are the
  entities; a predicted entity is correct only when a true entity has exactly its members and
  its category. Precision = correct / predicted entities, recall = correct / true entities.
  Boxes of unscored categories count nowhere, except that a true entity predicted as an
  unscored category (or merged with one) is missed.

On detected boxes (`detection_image_metrics`, `DetectionGroupingEvaluator`): detections are
matched one-to-one to truth boxes at box IoU >= 0.5 in order of score (`match_detections`, as
COCOeval does); a predicted group's members are mapped through that matching, an unmatched
detection being a false member and a missed truth box a missing member, and groups then match
by the same rule as above. Box AP comes from pycocotools (`coco_box_ap`).

`GroupingEvaluator` accumulates images. Its `summary` pools over boxes the category metrics
(accuracy; macro F1 over ``range(num_classes)``), pools the pair and group counts before
taking ratios (pair and group precision/recall/F1, Group PQ), and averages over images the
per-image ARI, NMI, AMI, Hungarian accuracy and number-of-groups error (MAE).

Conventions for degenerate cases:

* A ratio with a zero denominator (no predicted positives for a precision, no true positives
  for a recall, no boxes for an accuracy, no groups at all for PQ) is 1.0 when nothing was
  expected and nothing was predicted, and 0.0 otherwise. So an image without same-group
  pairs on either side (all singletons, or N = 1) has pairwise precision = recall = F1 = 1.0,
  while all-singletons predicted against true pairs gives precision = recall = 0.0. F1 is
  2PR / (P + R), and 0.0 when P + R = 0. For macro F1, a category absent from both the
  ground truth and the prediction has F1 = 1.0 (scikit-learn's ``zero_division=1.0``);
  categories that do appear have F1 = 2TP / (2TP + FP + FN).
* ARI, NMI and AMI are scikit-learn's values, not clamped: they are 1.0 for identical
  partitions, including the degenerate ones (N = 0, N = 1, one group on both sides, all
  singletons on both sides), and 0.0 when exactly one side is a single group.
* An empty image (N = 0) counts in ``num_images``; its per-image metrics are the perfect
  values above (nothing expected, nothing predicted), but it is skipped in the averages over
  images and adds nothing to the pooled counts, so it changes no metric of the summary.
* An evaluator that saw no boxes reports the same perfect values (and an MAE of 0.0); the
  ``detgroup eval`` command refuses such a file instead of printing them.
* A box whose true group is unknown (``gt_known`` False in `GroupingEvaluator.update`) counts
  in the category metrics only; the grouping metrics of its image are those of its other
  boxes, and an image without any box of known group is left out of the averages over images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    adjusted_mutual_info_score,
    adjusted_rand_score,
    normalized_mutual_info_score,
)

from detgroup.errors import DetgroupError

Labels = np.ndarray | Sequence[int]

_INPUT_NAMES = ("gt_categories", "gt_groups", "pred_categories", "pred_groups")

# Per-image metrics the summary averages over non-empty images (summary key: per-image key).
_MEAN_KEYS = {
    "ari": "ari",
    "nmi": "nmi",
    "ami": "ami",
    "hungarian_acc": "hungarian_acc",
    "num_groups_mae": "num_groups_error",
}


def _rate(num: float, den: float, other_den: float) -> float:
    """``num / den``; for ``den == 0``: 1.0 when ``other_den == 0`` too (nothing either side)."""
    if den > 0:
        return float(num / den)
    return 1.0 if other_den == 0 else 0.0


def _f1(precision: float, recall: float) -> float:
    total = precision + recall
    return 2.0 * precision * recall / total if total > 0 else 0.0


def _num_pairs(sizes: np.ndarray) -> int:
    """Σ C(n, 2) over ``sizes``: the number of same-group pairs.

    Kept by hand: the counts equal sklearn's ``pair_confusion_matrix`` (tests/test_metrics.py)
    at a small fraction of its cost per image (BENCHMARKS.md, "Metrics by hand").
    """
    sizes = sizes.astype(np.int64)
    return int((sizes * (sizes - 1) // 2).sum())


def _macro_f1(confusion: np.ndarray) -> float:
    """Macro F1 of a [C, C] confusion matrix (rows: true, columns: predicted).

    A class absent from both the truth and the prediction scores 1.0. Kept by hand: equal to
    sklearn's ``f1_score(average="macro", zero_division=1.0)`` (tests/test_metrics.py) at a small
    fraction of its cost per image (BENCHMARKS.md, "Metrics by hand").
    """
    tp = np.diag(confusion).astype(np.float64)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    den = 2.0 * tp + fp + fn
    per_class = np.divide(2.0 * tp, den, out=np.ones_like(tp), where=den > 0)
    return float(per_class.mean()) if per_class.size else 1.0


def _as_labels(values: Labels, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise DetgroupError(f"metrics: {name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        return array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise DetgroupError(f"metrics: {name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64)


def _check_inputs(
    gt_categories: Labels,
    gt_groups: Labels,
    pred_categories: Labels,
    pred_groups: Labels,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    arrays = tuple(
        _as_labels(values, name)
        for values, name in zip(
            (gt_categories, gt_groups, pred_categories, pred_groups), _INPUT_NAMES, strict=True
        )
    )
    n = arrays[0].size
    for array, name in zip(arrays[1:], _INPUT_NAMES[1:], strict=True):
        if array.size != n:
            raise DetgroupError(
                f"metrics: {name} has {array.size} entries but gt_categories has {n}"
            )
    for array, name in ((arrays[0], _INPUT_NAMES[0]), (arrays[2], _INPUT_NAMES[2])):
        if n and array.min() < 0:
            raise DetgroupError(f"metrics: {name} holds a negative category {array.min()}")
    return arrays


def _clusters(categories: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Number the ``(category, group)`` pairs of N boxes.

    Returns:
        ids: [N] int, cluster index in ``[0, K)`` of each box.
        cluster_categories: [K] int, the category of each cluster.
    """
    keys, ids = np.unique(np.stack([categories, groups], axis=1), axis=0, return_inverse=True)
    return ids.reshape(-1), keys[:, 0]


def _contingency(
    gt_ids: np.ndarray, pred_ids: np.ndarray, num_pred: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse contingency table of items that are in a true and a predicted group.

    Args:
        gt_ids: [M] int, true cluster in ``[0, K_gt)`` of each item.
        pred_ids: [M] int, predicted cluster in ``[0, K_pred)`` of the same items.
        num_pred: K_pred.

    Returns:
        cell_gt, cell_pred, inter: [Z] int each, the non-empty cells (true cluster, predicted
        cluster) and the number of items in each.
    """
    cells, inter = np.unique(gt_ids * num_pred + pred_ids, return_counts=True)
    cell_gt, cell_pred = np.divmod(cells, max(num_pred, 1))
    return cell_gt, cell_pred, inter


def _group_matches(
    cell_gt: np.ndarray,
    cell_pred: np.ndarray,
    inter: np.ndarray,
    gt_sizes: np.ndarray,
    pred_sizes: np.ndarray,
    gt_cluster_cats: np.ndarray,
    pred_cluster_cats: np.ndarray,
) -> tuple[int, int, float]:
    """Match predicted groups to true groups of the same category by member-set IoU.

    Args:
        cell_gt, cell_pred, inter: [Z] the non-empty cells of the contingency table
            (`_contingency`).
        gt_sizes: [K_gt] members of each true group (including members no prediction covers).
        pred_sizes: [K_pred] members of each predicted group (including members that are not
            in any true group, such as false detections).
        gt_cluster_cats, pred_cluster_cats: [K_gt], [K_pred] the category of each group.

    Returns:
        (matches at IoU > 0.5, which are unique; matches at IoU = 1; Σ IoU of the matches).
    """
    union = gt_sizes[cell_gt] + pred_sizes[cell_pred] - inter
    same_category = gt_cluster_cats[cell_gt] == pred_cluster_cats[cell_pred]
    matched = same_category & (2 * inter > union)  # IoU > 0.5, in exact integer arithmetic
    group_tp = int(matched.sum())
    exact_tp = int((same_category & (inter == union)).sum())
    iou_sum = float((inter[matched] / union[matched]).sum())
    return group_tp, exact_tp, iou_sum


def _category_rates(gt_categories: np.ndarray, pred_categories: np.ndarray) -> tuple[float, float]:
    """Accuracy and macro F1 over the categories present in one image (truth or prediction)."""
    labels = np.union1d(gt_categories, pred_categories)
    confusion = category_confusion(np.searchsorted(labels, gt_categories),
                                   np.searchsorted(labels, pred_categories), labels.size)
    return _rate(int(np.trace(confusion)), gt_categories.size, 0), _macro_f1(confusion)


def _image_metrics(
    gt_categories: np.ndarray,
    gt_groups: np.ndarray,
    pred_categories: np.ndarray,
    pred_groups: np.ndarray,
    unscored_categories: Sequence[int] = (),
) -> dict[str, float | int]:
    n = gt_categories.size
    gt_ids, gt_cluster_cats = _clusters(gt_categories, gt_groups)
    pred_ids, pred_cluster_cats = _clusters(pred_categories, pred_groups)
    num_gt, num_pred = gt_cluster_cats.size, pred_cluster_cats.size

    cell_gt, cell_pred, inter = _contingency(gt_ids, pred_ids, num_pred)
    gt_sizes = np.bincount(gt_ids, minlength=num_gt)  # [K_gt]
    pred_sizes = np.bincount(pred_ids, minlength=num_pred)  # [K_pred]

    cat_acc, cat_macro_f1 = _category_rates(gt_categories, pred_categories)

    dense = np.zeros((num_gt, num_pred), dtype=np.int64)
    dense[cell_gt, cell_pred] = inter
    rows, cols = linear_sum_assignment(dense, maximize=True)
    hungarian_matched = int(dense[rows, cols].sum())

    pair_tp = _num_pairs(inter)
    pair_true = _num_pairs(gt_sizes)
    pair_pred = _num_pairs(pred_sizes)
    pair_precision = _rate(pair_tp, pair_pred, pair_true)
    pair_recall = _rate(pair_tp, pair_true, pair_pred)

    group_tp, exact_tp, iou_sum = _group_matches(
        cell_gt, cell_pred, inter, gt_sizes, pred_sizes, gt_cluster_cats, pred_cluster_cats
    )
    union = gt_sizes[cell_gt] + pred_sizes[cell_pred] - inter
    same_category = gt_cluster_cats[cell_gt] == pred_cluster_cats[cell_pred]
    agnostic_exact_tp = int((inter == union).sum())
    unscored = np.asarray(list(unscored_categories), dtype=np.int64)
    gt_scored = ~np.isin(gt_cluster_cats, unscored)  # [K_gt]
    pred_scored = ~np.isin(pred_cluster_cats, unscored)  # [K_pred]
    entity_tp = int((same_category & (inter == union) & gt_scored[cell_gt]).sum())

    metrics: dict[str, float | int] = {
        "num_boxes": n,
        "num_grouped_boxes": n,
        "cat_acc": cat_acc,
        "cat_macro_f1": cat_macro_f1,
        "ari": float(adjusted_rand_score(gt_ids, pred_ids)),
        "nmi": float(normalized_mutual_info_score(gt_ids, pred_ids)),
        "ami": float(adjusted_mutual_info_score(gt_ids, pred_ids)),
        "hungarian_acc": _rate(hungarian_matched, n, 0),
        "pair_tp": pair_tp,
        "pair_pred": pair_pred,
        "pair_true": pair_true,
        "pair_precision": pair_precision,
        "pair_recall": pair_recall,
        "pair_f1": _f1(pair_precision, pair_recall),
        "num_gt_groups": num_gt,
        "num_pred_groups": num_pred,
        "num_groups_error": abs(num_pred - num_gt),
        "group_tp": group_tp,
        "exact_group_tp": exact_tp,
        "group_iou_sum": iou_sum,
        "agnostic_exact_group_tp": agnostic_exact_tp,
        "entity_tp": entity_tp,
        "entity_pred": int(pred_scored.sum()),
        "entity_true": int(gt_scored.sum()),
    }
    metrics.update(_group_rates(group_tp, exact_tp, iou_sum, num_gt, num_pred))
    metrics.update(_extra_rates(agnostic_exact_tp, num_gt, num_pred, entity_tp,
                                int(gt_scored.sum()), int(pred_scored.sum())))
    return metrics


def _extra_rates(agnostic_tp: int, num_gt: int, num_pred: int, entity_tp: int,
                 entity_true: int, entity_pred: int) -> dict[str, float]:
    """Category-agnostic exact-group and LayoutLM-protocol entity precision/recall/F1."""
    rates: dict[str, float] = {}
    for prefix, hits, true, pred in (("agnostic_exact_group", agnostic_tp, num_gt, num_pred),
                                     ("entity", entity_tp, entity_true, entity_pred)):
        precision = _rate(hits, pred, true)
        recall = _rate(hits, true, pred)
        rates[f"{prefix}_precision"] = precision
        rates[f"{prefix}_recall"] = recall
        rates[f"{prefix}_f1"] = _f1(precision, recall)
    return rates


def _group_rates(
    tp: int, exact_tp: int, iou_sum: float, num_gt: int, num_pred: int
) -> dict[str, float]:
    """Group precision/recall/F1 (IoU > 0.5 and exact) and Group PQ from match counts."""
    rates: dict[str, float] = {}
    for prefix, hits in (("group", tp), ("exact_group", exact_tp)):
        precision = _rate(hits, num_pred, num_gt)
        recall = _rate(hits, num_gt, num_pred)
        rates[f"{prefix}_precision"] = precision
        rates[f"{prefix}_recall"] = recall
        rates[f"{prefix}_f1"] = _f1(precision, recall)
    # TP + ½FP + ½FN = TP + ½(predicted - TP) + ½(true - TP) = ½(predicted + true groups)
    rates["group_pq"] = _rate(iou_sum, 0.5 * (num_pred + num_gt), 0)
    return rates


def category_confusion(gt_categories: np.ndarray, pred_categories: np.ndarray,
                       num_classes: int) -> np.ndarray:
    """Confusion matrix int64 [C, C] of N boxes: rows true category, columns predicted.

    ``gt_categories``, ``pred_categories``: int [N] in ``[0, num_classes)``.
    """
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (np.asarray(gt_categories, np.int64),
                          np.asarray(pred_categories, np.int64)), 1)
    return confusion


@dataclass(frozen=True)
class GroupMatch:
    """Predicted groups matched one-to-one to true groups by member overlap (Hungarian).

    A group is a ``(category, group)`` pair, as everywhere in this module. The matching
    maximises the number of boxes shared by matched groups (the count behind
    ``hungarian_acc``), whatever the categories; pairs that share no box are not matched.

    Fields:
        gt_keys: int [K_gt, 2], (category, group) of each true group, sorted.
        pred_keys: int [K_pred, 2], (category, group) of each predicted group, sorted.
        gt_index: int [N], row of ``gt_keys`` of each box.
        pred_index: int [N], row of ``pred_keys`` of each box.
        overlap: int [K_gt, K_pred], boxes shared by true group i and predicted group j.
        pred_for_gt: int [K_gt], the predicted group matched to each true group, -1 if none.
        gt_for_pred: int [K_pred], the true group matched to each predicted group, -1 if none.
    """

    gt_keys: np.ndarray
    pred_keys: np.ndarray
    gt_index: np.ndarray
    pred_index: np.ndarray
    overlap: np.ndarray
    pred_for_gt: np.ndarray
    gt_for_pred: np.ndarray

    @property
    def matched_boxes(self) -> int:
        """Boxes shared by matched groups (``hungarian_acc`` times N)."""
        rows = np.flatnonzero(self.pred_for_gt >= 0)
        return int(self.overlap[rows, self.pred_for_gt[rows]].sum())


def match_groups(gt_categories: Labels, gt_groups: Labels, pred_categories: Labels,
                 pred_groups: Labels) -> GroupMatch:
    """Match the predicted groups of one image to its true groups (arguments as in
    `image_metrics`); see :class:`GroupMatch`.

    Raises:
        DetgroupError: as `image_metrics`.
    """
    gt_cat, gt_grp, pred_cat, pred_grp = _check_inputs(gt_categories, gt_groups,
                                                       pred_categories, pred_groups)
    gt_keys, gt_index = _cluster_keys(gt_cat, gt_grp)
    pred_keys, pred_index = _cluster_keys(pred_cat, pred_grp)
    overlap = np.zeros((len(gt_keys), len(pred_keys)), dtype=np.int64)
    np.add.at(overlap, (gt_index, pred_index), 1)
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    keep = overlap[rows, cols] > 0
    pred_for_gt = np.full(len(gt_keys), -1, dtype=np.int64)
    gt_for_pred = np.full(len(pred_keys), -1, dtype=np.int64)
    pred_for_gt[rows[keep]] = cols[keep]
    gt_for_pred[cols[keep]] = rows[keep]
    return GroupMatch(gt_keys, pred_keys, gt_index, pred_index, overlap, pred_for_gt,
                      gt_for_pred)


def _cluster_keys(categories: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys int [K, 2] sorted, index int [N] of each box's key)."""
    if categories.size == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    keys, index = np.unique(np.stack([categories, groups], axis=1), axis=0, return_inverse=True)
    return keys, index.reshape(-1)


def image_metrics(
    gt_categories: Labels,
    gt_groups: Labels,
    pred_categories: Labels,
    pred_groups: Labels,
    *,
    unscored_categories: Sequence[int] = (),
) -> dict[str, float | int]:
    """Category, partition and group-detection metrics of one image.

    Args:
        gt_categories: [N] int >= 0, true category of each box.
        gt_groups: [N] int, true group id of each box (identity is ``(category, group)``).
        pred_categories: [N] int >= 0, predicted category of each box.
        pred_groups: [N] int, predicted group id of each box.

    Returns:
        Rates in [0, 1] (ARI and AMI may be negative): ``cat_acc``, ``cat_macro_f1``, ``ari``,
        ``nmi``, ``ami``, ``hungarian_acc``, ``pair_precision``, ``pair_recall``, ``pair_f1``,
        ``group_precision``, ``group_recall``, ``group_f1``, ``exact_group_precision``,
        ``exact_group_recall``, ``exact_group_f1``, ``group_pq``; and the counts behind them:
        ``num_boxes``, ``pair_tp``, ``pair_pred``, ``pair_true`` (same-group pairs in both,
        predicted, true), ``num_gt_groups``, ``num_pred_groups``, ``num_groups_error``
        (absolute difference), ``group_tp``, ``exact_group_tp``, ``group_iou_sum`` (Σ IoU of
        the matched groups); ``agnostic_exact_group_precision/recall/f1`` (members only) and
        ``entity_precision/recall/f1`` (the LayoutLM protocol, groups of the categories not in
        ``unscored_categories``) with their counts ``agnostic_exact_group_tp``,
        ``entity_tp``, ``entity_pred``, ``entity_true``. Conventions for degenerate cases are
        in the module docstring.

    Raises:
        DetgroupError: an input is not a 1-D integer array, the lengths differ, or a category
            is negative.
    """
    return _image_metrics(*_check_inputs(gt_categories, gt_groups, pred_categories, pred_groups),
                          unscored_categories)


class GroupingEvaluator:
    """Accumulates `image_metrics` over images and summarises them (pooled or averaged).

    Args:
        num_classes: C, the number of categories; category indices are in ``[0, C)``.
        unscored_categories: category indices left out of the ``entity_*`` metrics (the
            LayoutLM / FUNSD protocol does not score "other"); default: none.
    """

    def __init__(self, *, num_classes: int, unscored_categories: Sequence[int] = ()) -> None:
        if num_classes < 1:
            raise DetgroupError(f"metrics: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.unscored_categories = [int(c) for c in unscored_categories]
        self.per_image: list[dict[str, float | int]] = []
        self._confusion = np.zeros((num_classes, num_classes), dtype=np.int64)  # [C, C]

    def update(
        self,
        gt_categories: Labels,
        gt_groups: Labels,
        pred_categories: Labels,
        pred_groups: Labels,
        gt_known: np.ndarray | Sequence[bool] | None = None,
    ) -> dict[str, float | int]:
        """Adds one image (arguments as in `image_metrics`) and returns its metrics.

        ``gt_known`` [N] bool: False for a box whose true group is unknown (``group_id`` -1).
        Such a box counts in the category metrics and ``num_boxes``, but the grouping metrics
        (partition, pair and group detection) are computed on the other boxes only, so every
        pair it is in is left out; ``num_grouped_boxes`` counts the boxes they saw.

        Raises:
            DetgroupError: as `image_metrics`, or a category is not below ``num_classes``.
        """
        arrays = _check_inputs(gt_categories, gt_groups, pred_categories, pred_groups)
        gt_cats, _, pred_cats, _ = arrays
        for cats, name in ((gt_cats, _INPUT_NAMES[0]), (pred_cats, _INPUT_NAMES[2])):
            if cats.size and cats.max() >= self.num_classes:
                raise DetgroupError(
                    f"metrics: {name} holds category {cats.max()} "
                    f"but num_classes is {self.num_classes}"
                )
        known = None if gt_known is None else np.asarray(gt_known, dtype=bool).reshape(-1)
        if known is not None and known.size != gt_cats.size:
            raise DetgroupError(
                f"metrics: gt_known has {known.size} entries but gt_categories has {gt_cats.size}"
            )
        if known is None or known.all():
            metrics = _image_metrics(*arrays, self.unscored_categories)
        else:
            metrics = _image_metrics(*(a[known] for a in arrays), self.unscored_categories)
            metrics["num_boxes"] = int(gt_cats.size)
            metrics["cat_acc"], metrics["cat_macro_f1"] = _category_rates(gt_cats, pred_cats)
        self._confusion += category_confusion(gt_cats, pred_cats, self.num_classes)
        self.per_image.append(metrics)
        return metrics

    @property
    def confusion(self) -> np.ndarray:
        """Category confusion int64 [C, C] pooled over the boxes added so far (rows: true)."""
        return self._confusion.copy()

    def summary(self) -> dict[str, float]:
        """Metrics over all images added so far.

        Returns:
            ``cat_acc``, ``cat_macro_f1`` (pooled over boxes); ``ari``, ``nmi``, ``ami``,
            ``hungarian_acc``, ``num_groups_mae`` (means over non-empty images);
            ``pair_precision``, ``pair_recall``, ``pair_f1``, ``group_precision``,
            ``group_recall``, ``group_f1``, ``exact_group_precision``, ``exact_group_recall``,
            ``exact_group_f1``, ``group_pq``, ``agnostic_exact_group_precision/recall/f1``,
            ``entity_precision/recall/f1`` (from counts pooled over images);
            ``num_images`` (empty ones included), ``num_boxes`` and ``num_grouped_boxes`` (the
            boxes of known group, which the grouping metrics saw).
        """
        images = [m for m in self.per_image if m["num_boxes"] > 0]
        grouped = [m for m in images if m["num_grouped_boxes"] > 0]

        def total(key: str) -> float:
            return sum(m[key] for m in images)

        num_boxes = int(total("num_boxes"))
        summary: dict[str, float] = {
            "num_images": len(self.per_image),
            "num_boxes": num_boxes,
            "num_grouped_boxes": int(total("num_grouped_boxes")),
            "cat_acc": _rate(int(np.trace(self._confusion)), num_boxes, 0),
            "cat_macro_f1": _macro_f1(self._confusion),
        }
        for key, image_key in _MEAN_KEYS.items():
            if grouped:
                summary[key] = sum(m[image_key] for m in grouped) / len(grouped)
            else:
                summary[key] = 0.0 if key == "num_groups_mae" else 1.0

        pair_tp, pair_pred, pair_true = total("pair_tp"), total("pair_pred"), total("pair_true")
        summary["pair_precision"] = _rate(pair_tp, pair_pred, pair_true)
        summary["pair_recall"] = _rate(pair_tp, pair_true, pair_pred)
        summary["pair_f1"] = _f1(summary["pair_precision"], summary["pair_recall"])
        summary.update(
            _group_rates(
                int(total("group_tp")),
                int(total("exact_group_tp")),
                total("group_iou_sum"),
                int(total("num_gt_groups")),
                int(total("num_pred_groups")),
            )
        )
        summary.update(
            _extra_rates(
                int(total("agnostic_exact_group_tp")),
                int(total("num_gt_groups")),
                int(total("num_pred_groups")),
                int(total("entity_tp")),
                int(total("entity_true")),
                int(total("entity_pred")),
            )
        )
        return summary


# --- grouping on detected boxes ----------------------------------------------------------------

# Per-image metrics on detected boxes that the summary pools as counts (num: den keys).
_DET_COUNT_KEYS = (
    "num_detections",
    "num_truth",
    "num_matched",
    "cat_correct",
    "pair_tp",
    "pair_pred",
    "pair_true",
    "num_gt_groups",
    "num_pred_groups",
    "group_tp",
    "exact_group_tp",
)


def match_detections(
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    gt_boxes: np.ndarray,
    *,
    iou_threshold: float = 0.5,
) -> np.ndarray:
    """One-to-one matching of the detections of one image to its truth boxes, as COCOeval does.

    Detections are visited in order of decreasing score (a stable sort: ties keep file order);
    each takes the not yet matched truth box of highest IoU, if that IoU is >= ``iou_threshold``
    (ties go to the first truth box). Categories play no part: a box found with the wrong
    category is matched, and its category error is scored by the caller.

    Args:
        det_boxes: [D, 4] float, detections in (x1, y1, x2, y2) pixels.
        det_scores: [D] float, their confidences.
        gt_boxes: [G, 4] float, truth boxes in (x1, y1, x2, y2) pixels.
        iou_threshold: the least box IoU of a match.

    Returns:
        [D] int64: the index of the truth box each detection matched, -1 for none.
    """
    import torch
    from torchvision.ops import box_iou

    num_det, num_gt = len(det_boxes), len(gt_boxes)
    match = np.full(num_det, -1, dtype=np.int64)
    if num_det == 0 or num_gt == 0:
        return match
    iou = box_iou(
        torch.as_tensor(np.asarray(det_boxes, dtype=np.float64)),
        torch.as_tensor(np.asarray(gt_boxes, dtype=np.float64)),
    ).numpy()  # [D, G]
    taken = np.zeros(num_gt, dtype=bool)
    for d in np.argsort(-np.asarray(det_scores, dtype=np.float64), kind="mergesort"):
        candidates = np.where(taken, -1.0, iou[d])  # [G]
        g = int(np.argmax(candidates))
        if candidates[g] >= iou_threshold:
            match[d] = g
            taken[g] = True
    return match


def detection_image_metrics(
    *,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_categories: Labels,
    det_groups: Labels,
    gt_boxes: np.ndarray,
    gt_categories: Labels,
    gt_groups: Labels,
    iou_threshold: float = 0.5,
) -> dict[str, float | int]:
    """Category and group-detection metrics of one image whose boxes come from a detector.

    Detections are matched to truth boxes by :func:`match_detections`. A predicted group (the
    detections of one ``(category, group)``) is compared with a true group through that matching:
    a matched detection stands for its truth box, an unmatched detection is a false member (it
    is in the predicted group and in no true group), a truth box no detection matched is a
    missing member (in its true group only). Groups then match as in `image_metrics`: same
    category and member-set IoU > 0.5 (unique), or = 1 for ``exact_``. Pair counts follow the
    same rule (a same-group pair of detections is a true positive when both are matched to
    boxes of one true group).

    Args:
        det_boxes: [D, 4] float, detections (x1, y1, x2, y2) px; det_scores: [D] float.
        det_categories: [D] int >= 0, category of each detection; det_groups: [D] int, its
            group id (identity is ``(category, group)``).
        gt_boxes: [G, 4] float, truth boxes (x1, y1, x2, y2) px; gt_categories: [G] int >= 0;
            gt_groups: [G] int.
        iou_threshold: the least box IoU of a detection-to-truth match.

    Returns:
        Counts ``num_detections``, ``num_truth``, ``num_matched``, ``cat_correct`` (matched
        detections of the right category), ``pair_tp``, ``pair_pred``, ``pair_true``,
        ``num_gt_groups``, ``num_pred_groups``, ``group_tp``, ``exact_group_tp``,
        ``group_iou_sum``; rates ``box_precision`` (matched / detections), ``box_recall``
        (matched / truth), ``cat_acc`` (on matched detections), ``pair_precision``,
        ``pair_recall``, ``pair_f1``, ``group_precision``, ``group_recall``, ``group_f1``,
        ``exact_group_*``, ``group_pq``; and ``ari`` over the matched detections (their
        predicted groups against their truth boxes' groups), NaN when none matched. Zero
        denominators follow the module's conventions.

    Raises:
        DetgroupError: a label array is not 1-D integer, lengths differ from the boxes', or a
            category is negative.
    """
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    det_cats = _as_labels(det_categories, "det_categories")
    det_grps = _as_labels(det_groups, "det_groups")
    gt_cats = _as_labels(gt_categories, "gt_categories")
    gt_grps = _as_labels(gt_groups, "gt_groups")
    det_scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    for name, size, want in (("det_boxes", len(det_boxes), det_cats.size),
                             ("det_scores", det_scores.size, det_cats.size),
                             ("det_groups", det_grps.size, det_cats.size),
                             ("gt_boxes", len(gt_boxes), gt_cats.size),
                             ("gt_groups", gt_grps.size, gt_cats.size)):
        if size != want:
            raise DetgroupError(f"metrics: {name} has {size} entries but its labels have {want}")
    for cats, name in ((det_cats, "det_categories"), (gt_cats, "gt_categories")):
        if cats.size and cats.min() < 0:
            raise DetgroupError(f"metrics: {name} holds a negative category {cats.min()}")

    match = match_detections(det_boxes, det_scores, gt_boxes, iou_threshold=iou_threshold)
    matched = np.flatnonzero(match >= 0)  # [M] detection indices
    pred_ids, pred_cluster_cats = _clusters(det_cats, det_grps)  # [D], [K_pred]
    gt_ids, gt_cluster_cats = _clusters(gt_cats, gt_grps)  # [G], [K_gt]
    num_pred, num_gt = pred_cluster_cats.size, gt_cluster_cats.size
    pred_sizes = np.bincount(pred_ids, minlength=num_pred)  # false members included
    gt_sizes = np.bincount(gt_ids, minlength=num_gt)  # missing members included
    cell_gt, cell_pred, inter = _contingency(gt_ids[match[matched]], pred_ids[matched], num_pred)
    group_tp, exact_tp, iou_sum = _group_matches(
        cell_gt, cell_pred, inter, gt_sizes, pred_sizes, gt_cluster_cats, pred_cluster_cats
    )
    num_det, num_truth, num_matched = det_cats.size, gt_cats.size, matched.size
    cat_correct = int((det_cats[matched] == gt_cats[match[matched]]).sum())
    pair_tp, pair_pred, pair_true = _num_pairs(inter), _num_pairs(pred_sizes), _num_pairs(gt_sizes)
    ari = (float(adjusted_rand_score(gt_ids[match[matched]], pred_ids[matched]))
           if num_matched else float("nan"))
    metrics: dict[str, float | int] = {
        "num_detections": num_det,
        "num_truth": num_truth,
        "num_matched": num_matched,
        "cat_correct": cat_correct,
        "pair_tp": pair_tp,
        "pair_pred": pair_pred,
        "pair_true": pair_true,
        "num_gt_groups": num_gt,
        "num_pred_groups": num_pred,
        "group_tp": group_tp,
        "exact_group_tp": exact_tp,
        "group_iou_sum": iou_sum,
        "ari": ari,
    }
    metrics.update(_detection_rates(metrics))
    return metrics


def _detection_rates(counts: dict[str, float | int]) -> dict[str, float]:
    """Box, category, pair and group rates from the counts of `detection_image_metrics`."""
    rates = {
        "box_precision": _rate(counts["num_matched"], counts["num_detections"],
                               counts["num_truth"]),
        "box_recall": _rate(counts["num_matched"], counts["num_truth"],
                            counts["num_detections"]),
        "cat_acc": _rate(counts["cat_correct"], counts["num_matched"], 0),
        "pair_precision": _rate(counts["pair_tp"], counts["pair_pred"], counts["pair_true"]),
        "pair_recall": _rate(counts["pair_tp"], counts["pair_true"], counts["pair_pred"]),
    }
    rates["pair_f1"] = _f1(rates["pair_precision"], rates["pair_recall"])
    rates.update(_group_rates(int(counts["group_tp"]), int(counts["exact_group_tp"]),
                              float(counts["group_iou_sum"]), int(counts["num_gt_groups"]),
                              int(counts["num_pred_groups"])))
    return rates


class DetectionGroupingEvaluator:
    """Accumulates `detection_image_metrics` over images; `summary` pools the counts.

    Args:
        iou_threshold: the least box IoU of a detection-to-truth match.
    """

    def __init__(self, *, iou_threshold: float = 0.5) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise DetgroupError(f"metrics: iou_threshold must be in (0, 1], got {iou_threshold}")
        self.iou_threshold = iou_threshold
        self.per_image: list[dict[str, float | int]] = []

    def update(self, **image: Any) -> dict[str, float | int]:
        """Adds one image (keyword arguments of `detection_image_metrics`); returns its metrics."""
        metrics = detection_image_metrics(**image, iou_threshold=self.iou_threshold)
        self.per_image.append(metrics)
        return metrics

    def summary(self) -> dict[str, float]:
        """Metrics over all images so far: the rates of `detection_image_metrics` from counts
        pooled over images, ``ari`` averaged over the images with a matched detection (1.0 when
        there is none), and ``num_images`` plus the pooled counts."""
        totals: dict[str, float | int] = {
            key: sum(m[key] for m in self.per_image) for key in _DET_COUNT_KEYS
        }
        totals["group_iou_sum"] = float(sum(m["group_iou_sum"] for m in self.per_image))
        aris = [m["ari"] for m in self.per_image if m["num_matched"] > 0]
        summary: dict[str, float] = {"num_images": len(self.per_image), **totals}
        summary.update(_detection_rates(totals))
        summary["ari"] = float(np.mean(aris)) if aris else 1.0
        return summary


def coco_box_ap(truth: dict[str, Any], detections: list[dict[str, Any]]) -> dict[str, float]:
    """COCO box AP of detections against a truth file, by pycocotools ``COCOeval``.

    Args:
        truth: a COCO (with groups) document; ``area`` and ``iscrowd`` are filled in where
            missing (on a copy).
        detections: COCO results (``image_id``, ``bbox`` [x, y, w, h] px, ``category_id`` of
            ``truth``, ``score``).

    Returns:
        ``cat_ap`` (AP at IoU 0.50:0.95, per category, averaged over categories), ``cat_ap50``
        (at IoU 0.5), and ``box_ap`` / ``box_ap50``, the same with categories ignored
        (``useCats = 0``: box localisation alone). 0.0 without detections; -1.0 (COCOeval's
        value) without truth boxes.
    """
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset = dict(truth)
    dataset["annotations"] = [
        {**ann, "area": ann.get("area", float(ann["bbox"][2] * ann["bbox"][3])),
         "iscrowd": ann.get("iscrowd", 0)}
        for ann in truth["annotations"]
    ]
    if not dataset["annotations"]:
        return {"cat_ap": -1.0, "cat_ap50": -1.0, "box_ap": -1.0, "box_ap50": -1.0}
    if not detections:
        return {"cat_ap": 0.0, "cat_ap50": 0.0, "box_ap": 0.0, "box_ap50": 0.0}
    out: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        dt = gt.loadRes([dict(d) for d in detections])  # loadRes adds fields: copies
        for prefix, use_cats in (("cat", 1), ("box", 0)):
            coco_eval = COCOeval(gt, dt, iouType="bbox")
            coco_eval.params.useCats = use_cats
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
            out[f"{prefix}_ap"] = float(coco_eval.stats[0])
            out[f"{prefix}_ap50"] = float(coco_eval.stats[1])
    return out
