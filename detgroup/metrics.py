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
* An evaluator that saw no boxes reports the same perfect values (and an MAE of 0.0).
"""

from __future__ import annotations

from collections.abc import Sequence

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
    """Σ C(n, 2) over ``sizes``: the number of same-group pairs."""
    sizes = sizes.astype(np.int64)
    return int((sizes * (sizes - 1) // 2).sum())


def _macro_f1(confusion: np.ndarray) -> float:
    """Macro F1 of a [C, C] confusion matrix (rows: true, columns: predicted).

    A class absent from both the truth and the prediction scores 1.0.
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

    # Sparse contingency table: the non-empty cells (true group i, predicted group j).
    cells, inter = np.unique(gt_ids * num_pred + pred_ids, return_counts=True)
    cell_gt, cell_pred = np.divmod(cells, max(num_pred, 1))
    gt_sizes = np.bincount(gt_ids, minlength=num_gt)  # [K_gt]
    pred_sizes = np.bincount(pred_ids, minlength=num_pred)  # [K_pred]

    labels = np.union1d(gt_categories, pred_categories)
    confusion = np.zeros((labels.size, labels.size), dtype=np.int64)
    np.add.at(
        confusion,
        (np.searchsorted(labels, gt_categories), np.searchsorted(labels, pred_categories)),
        1,
    )

    dense = np.zeros((num_gt, num_pred), dtype=np.int64)
    dense[cell_gt, cell_pred] = inter
    rows, cols = linear_sum_assignment(dense, maximize=True)
    hungarian_matched = int(dense[rows, cols].sum())

    pair_tp = _num_pairs(inter)
    pair_true = _num_pairs(gt_sizes)
    pair_pred = _num_pairs(pred_sizes)
    pair_precision = _rate(pair_tp, pair_pred, pair_true)
    pair_recall = _rate(pair_tp, pair_true, pair_pred)

    union = gt_sizes[cell_gt] + pred_sizes[cell_pred] - inter
    same_category = gt_cluster_cats[cell_gt] == pred_cluster_cats[cell_pred]
    matched = same_category & (2 * inter > union)  # IoU > 0.5, in exact integer arithmetic
    group_tp = int(matched.sum())
    exact_tp = int((same_category & (inter == union)).sum())
    iou_sum = float((inter[matched] / union[matched]).sum())
    agnostic_exact_tp = int((inter == union).sum())
    unscored = np.asarray(list(unscored_categories), dtype=np.int64)
    gt_scored = ~np.isin(gt_cluster_cats, unscored)  # [K_gt]
    pred_scored = ~np.isin(pred_cluster_cats, unscored)  # [K_pred]
    entity_tp = int((same_category & (inter == union) & gt_scored[cell_gt]).sum())

    metrics: dict[str, float | int] = {
        "num_boxes": n,
        "cat_acc": _rate(int(np.trace(confusion)), n, 0),
        "cat_macro_f1": _macro_f1(confusion),
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
    ) -> dict[str, float | int]:
        """Adds one image (arguments as in `image_metrics`) and returns its metrics.

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
        metrics = _image_metrics(*arrays, self.unscored_categories)
        np.add.at(self._confusion, (gt_cats, pred_cats), 1)
        self.per_image.append(metrics)
        return metrics

    def summary(self) -> dict[str, float]:
        """Metrics over all images added so far.

        Returns:
            ``cat_acc``, ``cat_macro_f1`` (pooled over boxes); ``ari``, ``nmi``, ``ami``,
            ``hungarian_acc``, ``num_groups_mae`` (means over non-empty images);
            ``pair_precision``, ``pair_recall``, ``pair_f1``, ``group_precision``,
            ``group_recall``, ``group_f1``, ``exact_group_precision``, ``exact_group_recall``,
            ``exact_group_f1``, ``group_pq``, ``agnostic_exact_group_precision/recall/f1``,
            ``entity_precision/recall/f1`` (from counts pooled over images);
            ``num_images`` (empty ones included) and ``num_boxes``.
        """
        images = [m for m in self.per_image if m["num_boxes"] > 0]

        def total(key: str) -> float:
            return sum(m[key] for m in images)

        num_boxes = int(total("num_boxes"))
        summary: dict[str, float] = {
            "num_images": len(self.per_image),
            "num_boxes": num_boxes,
            "cat_acc": _rate(int(np.trace(self._confusion)), num_boxes, 0),
            "cat_macro_f1": _macro_f1(self._confusion),
        }
        for key, image_key in _MEAN_KEYS.items():
            if images:
                summary[key] = total(image_key) / len(images)
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
