"""Tests for detgroup.metrics: hand-computed values, brute-force references, conventions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    adjusted_mutual_info_score,
    adjusted_rand_score,
    f1_score,
    normalized_mutual_info_score,
)

from detgroup.errors import DetgroupError
from detgroup.metrics import (
    DetectionGroupingEvaluator,
    GroupingEvaluator,
    category_confusion,
    coco_box_ap,
    detection_image_metrics,
    image_metrics,
    match_detections,
    match_groups,
)

RATE_KEYS = (
    "cat_acc",
    "cat_macro_f1",
    "ari",
    "nmi",
    "ami",
    "hungarian_acc",
    "pair_precision",
    "pair_recall",
    "pair_f1",
    "group_precision",
    "group_recall",
    "group_f1",
    "exact_group_precision",
    "exact_group_recall",
    "exact_group_f1",
    "group_pq",
)
SUMMARY_KEYS = RATE_KEYS + ("num_groups_mae", "num_images", "num_boxes")


def check(metrics: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key


def random_image(rng: np.random.Generator, n: int, num_classes: int, max_groups: int):
    """Random (gt_cats, gt_groups, pred_cats, pred_groups), each [n] int."""
    return tuple(
        rng.integers(0, high, n) for high in (num_classes, max_groups, num_classes, max_groups)
    )


# Two true groups of 2 boxes, all of category 0; reused by several cases.
TWO_PAIRS = ([0, 0, 0, 0], [0, 0, 1, 1])


def test_perfect_prediction_scores_one_under_renamed_ids():
    gt_cats, gt_groups = [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1]
    m = image_metrics(gt_cats, gt_groups, gt_cats, [7, 7, 3, 3, 9, 2])
    check(m, {key: 1.0 for key in RATE_KEYS})
    check(m, {"num_groups_error": 0, "num_gt_groups": 4, "num_pred_groups": 4, "group_tp": 4})


def test_all_merged_iou_half_does_not_match():
    # One predicted group {0,1,2,3} against true {0,1}, {2,3}: IoU = 2/4 = 0.5 exactly.
    m = image_metrics(*TWO_PAIRS, [0, 0, 0, 0], [0, 0, 0, 0])
    check(
        m,
        {
            "cat_acc": 1.0,
            "cat_macro_f1": 1.0,
            # index Σ C(n_ij,2) = 2, expected 2·6/6 = 2, max (2+6)/2 = 4 → (2-2)/(4-2)
            "ari": 0.0,
            "nmi": 0.0,
            "ami": 0.0,
            "hungarian_acc": 2 / 4,
            "pair_tp": 2,
            "pair_pred": 6,
            "pair_true": 2,
            "pair_precision": 1 / 3,
            "pair_recall": 1.0,
            "pair_f1": 0.5,
            "group_tp": 0,
            "group_precision": 0.0,
            "group_recall": 0.0,
            "group_f1": 0.0,
            "group_pq": 0.0,
            "num_groups_error": 1,
        },
    )


def test_all_singletons_against_pairs():
    m = image_metrics(*TWO_PAIRS, [0, 0, 0, 0], [0, 1, 2, 3])
    check(
        m,
        {
            "ari": 0.0,  # index 0, expected 0, max (2 + 0) / 2 = 1
            "nmi": math.log(2) / ((math.log(2) + math.log(4)) / 2),  # MI = H(gt) = ln 2
            "ami": 0.0,  # every labelling of singletons has MI = H(gt), so EMI = MI
            "hungarian_acc": 2 / 4,
            "pair_tp": 0,
            "pair_pred": 0,
            "pair_true": 2,
            "pair_precision": 0.0,  # nothing predicted, but pairs were expected
            "pair_recall": 0.0,
            "pair_f1": 0.0,
            "group_tp": 0,  # each singleton has IoU 1/2 with its true pair
            "group_precision": 0.0,
            "group_recall": 0.0,
            "group_pq": 0.0,
            "num_groups_error": 2,
        },
    )


def test_all_singletons_on_both_sides_is_perfect():
    m = image_metrics([0, 1, 0], [0, 0, 1], [0, 1, 0], [5, 5, 6])
    check(m, {key: 1.0 for key in RATE_KEYS})
    check(m, {"pair_tp": 0, "pair_pred": 0, "pair_true": 0})


def test_category_error_splits_a_group():
    # True groups A = cat0 {0,1,2}, B = cat1 {3,4}. Box 2 is predicted as cat1, so with the
    # same group id 0 everywhere the prediction is P = cat0 {0,1}, Q = cat1 {2,3,4}.
    m = image_metrics([0, 0, 0, 1, 1], [0, 0, 0, 0, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0])
    # Contingency: A∩P = 2, A∩Q = 1, B∩Q = 2; both marginals are (0.6, 0.4) of N = 5.
    mi = 0.4 * math.log(0.4 / 0.24) + 0.2 * math.log(0.2 / 0.36) + 0.4 * math.log(0.4 / 0.24)
    entropy = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4))
    check(
        m,
        {
            "cat_acc": 4 / 5,
            "cat_macro_f1": 0.8,  # class 0: 2TP=4, FN=1 → 4/5; class 1: 2TP=4, FP=1 → 4/5
            "ari": (2 - 1.6) / (4 - 1.6),  # index 2, expected 4·4/10, max 4
            "nmi": mi / entropy,
            "hungarian_acc": 4 / 5,
            "pair_tp": 2,
            "pair_pred": 4,
            "pair_true": 4,
            "pair_precision": 0.5,
            "pair_recall": 0.5,
            "pair_f1": 0.5,
            "group_tp": 2,  # A–P and B–Q, each IoU 2/3; A–Q is of another category
            "group_precision": 1.0,
            "group_recall": 1.0,
            "group_f1": 1.0,
            "exact_group_tp": 0,
            "exact_group_precision": 0.0,
            "exact_group_f1": 0.0,
            "group_pq": (2 / 3 + 2 / 3) / 2,
            "num_groups_error": 0,
        },
    )


def test_right_members_wrong_category_do_not_match():
    m = image_metrics([0, 0, 0], [0, 0, 0], [1, 1, 1], [0, 0, 0])
    check(
        m,
        {
            "cat_acc": 0.0,
            "cat_macro_f1": 0.0,
            "ari": 1.0,
            "hungarian_acc": 1.0,
            "pair_f1": 1.0,
            "group_tp": 0,
            "group_f1": 0.0,
            "exact_group_f1": 0.0,
            "group_pq": 0.0,
        },
    )


def test_group_pq_by_hand():
    # True: G1 = c0 {0,1,2,3}, G2 = c0 {4,5}, G3 = c1 {6,7}.
    # Pred: P1 = c0 {0,1,2}, P2 = c0 {3,4,5}, P3 = c1 {6}, P4 = c1 {7}.
    cats = [0, 0, 0, 0, 0, 0, 1, 1]
    m = image_metrics(cats, [0, 0, 0, 0, 1, 1, 0, 0], cats, [0, 0, 0, 1, 1, 1, 0, 1])
    check(
        m,
        {
            # G1–P1 IoU 3/4, G2–P2 IoU 2/3 match; G3–P3, G3–P4 IoU 1/2 do not.
            "group_tp": 2,
            "group_iou_sum": 3 / 4 + 2 / 3,
            "group_precision": 2 / 4,
            "group_recall": 2 / 3,
            "group_f1": 4 / 7,
            "group_pq": (3 / 4 + 2 / 3) / (2 + 0.5 * 2 + 0.5 * 1),
            "exact_group_tp": 0,
            "num_groups_error": 1,
            "pair_tp": 3 + 1,
            "pair_pred": 3 + 3,
            "pair_true": 6 + 1 + 1,
            "pair_f1": 4 / 7,
            "hungarian_acc": (3 + 2 + 1) / 8,
            "ari": (4 - 48 / 28) / (7 - 48 / 28),  # index 4, expected 8·6/28, max (8+6)/2
        },
    )


def test_exact_match_counts_only_identical_member_sets():
    # True c0 {0,1}, c0 {2,3,4}; predicted c0 {0,1} (exact), c0 {2,3}, c0 {4}.
    m = image_metrics([0] * 5, [0, 0, 1, 1, 1], [0] * 5, [0, 0, 1, 1, 2])
    check(
        m,
        {
            "group_tp": 2,
            "exact_group_tp": 1,
            "exact_group_precision": 1 / 3,
            "exact_group_recall": 1 / 2,
            "exact_group_f1": 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2),
            "group_pq": (1 + 2 / 3) / (2 + 0.5 * 1 + 0.5 * 0),
        },
    )


@pytest.mark.parametrize("pred_group", [0, 5, -3])
def test_single_box_image(pred_group):
    check(image_metrics([2], [4], [2], [pred_group]), {key: 1.0 for key in RATE_KEYS})
    wrong = image_metrics([2], [4], [1], [pred_group])
    check(
        wrong,
        {
            "cat_acc": 0.0,
            "cat_macro_f1": 0.0,
            "ari": 1.0,
            "nmi": 1.0,
            "ami": 1.0,
            "hungarian_acc": 1.0,
            "pair_precision": 1.0,  # no pairs on either side
            "pair_recall": 1.0,
            "pair_f1": 1.0,
            "group_f1": 0.0,
            "group_pq": 0.0,
            "num_groups_error": 0,
        },
    )


def test_empty_image_is_perfect_and_skipped_by_the_summary():
    m = image_metrics([], [], np.zeros(0, dtype=np.int64), [])
    check(m, {key: 1.0 for key in RATE_KEYS})
    check(m, {"num_boxes": 0, "pair_tp": 0, "num_gt_groups": 0, "num_groups_error": 0})

    with_empty = GroupingEvaluator(num_classes=2)
    without = GroupingEvaluator(num_classes=2)
    image = (*TWO_PAIRS, [0, 0, 1, 0], [0, 0, 0, 0])
    for ev in (with_empty, without):
        ev.update(*image)
    with_empty.update([], [], [], [])
    a, b = with_empty.summary(), without.summary()
    assert (a["num_images"], b["num_images"]) == (2, 1)
    assert len(with_empty.per_image) == 2
    check(a, {key: b[key] for key in SUMMARY_KEYS if key != "num_images"})


def test_evaluator_without_boxes():
    ev = GroupingEvaluator(num_classes=3)
    check(ev.summary(), {key: 1.0 for key in RATE_KEYS})
    check(ev.summary(), {"num_images": 0, "num_boxes": 0, "num_groups_mae": 0.0})


def test_two_images_pooled_versus_averaged():
    ev = GroupingEvaluator(num_classes=2)
    ev.update(*TWO_PAIRS, [0, 0, 0, 0], [0, 0, 0, 0])  # all merged (see above)
    ev.update([1, 1], [3, 3], [1, 1], [0, 0])  # perfect, one pair
    s = ev.summary()
    assert set(SUMMARY_KEYS) <= set(s)
    check(
        s,
        {
            "num_images": 2,
            "num_boxes": 6,
            "cat_acc": 1.0,
            "cat_macro_f1": 1.0,
            "ari": (0.0 + 1.0) / 2,
            "nmi": (0.0 + 1.0) / 2,
            "hungarian_acc": (0.5 + 1.0) / 2,
            "num_groups_mae": (1 + 0) / 2,
            # pooled pairs: TP 2 + 1, predicted 6 + 1, true 2 + 1 (not the mean of 1/3 and 1)
            "pair_precision": 3 / 7,
            "pair_recall": 1.0,
            "pair_f1": 2 * (3 / 7) / (3 / 7 + 1),
            # pooled groups: TP 0 + 1, predicted 1 + 1, true 2 + 1
            "group_precision": 1 / 2,
            "group_recall": 1 / 3,
            "group_f1": 0.4,
            "group_pq": 1 / (1 + 0.5 * 1 + 0.5 * 2),
        },
    )
    assert [m["num_boxes"] for m in ev.per_image] == [4, 2]


def test_pooled_category_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    ev = GroupingEvaluator(num_classes=4)
    true, pred = [], []
    for n in (5, 0, 12, 1, 30):
        image = random_image(rng, n, 3, 4)  # category 3 never occurs
        ev.update(*image)
        true.append(image[0])
        pred.append(image[2])
    y_true, y_pred = np.concatenate(true), np.concatenate(pred)
    s = ev.summary()
    assert s["cat_acc"] == pytest.approx(accuracy_score(y_true, y_pred))
    expected = f1_score(y_true, y_pred, labels=range(4), average="macro", zero_division=1.0)
    assert s["cat_macro_f1"] == pytest.approx(expected)


def brute_force(gt_cats, gt_groups, pred_cats, pred_groups) -> dict:
    """Reference pair, Hungarian and group counts by enumerating pairs, matchings and sets."""
    n = len(gt_cats)
    gt = list(zip(gt_cats.tolist(), gt_groups.tolist(), strict=True))
    pred = list(zip(pred_cats.tolist(), pred_groups.tolist(), strict=True))
    pairs = list(itertools.combinations(range(n), 2))
    same_gt = {(i, j) for i, j in pairs if gt[i] == gt[j]}
    same_pred = {(i, j) for i, j in pairs if pred[i] == pred[j]}

    def members(labels):
        return {key: {i for i in range(n) if labels[i] == key} for key in set(labels)}

    gt_sets, pred_sets = members(gt), members(pred)
    rows, cols = sorted((list(gt_sets.values()), list(pred_sets.values())), key=len)
    matched = max(
        sum(len(r & c) for r, c in zip(rows, chosen, strict=True))
        for chosen in itertools.permutations(cols, len(rows))
    )
    ious = [
        len(gs & ps) / len(gs | ps)
        for gk, gs in gt_sets.items()
        for pk, ps in pred_sets.items()
        if gk[0] == pk[0]
    ]
    return {
        "pair_tp": len(same_gt & same_pred),
        "pair_pred": len(same_pred),
        "pair_true": len(same_gt),
        "hungarian_acc": matched / n,
        "group_tp": sum(iou > 0.5 for iou in ious),
        "exact_group_tp": sum(iou == 1.0 for iou in ious),
        "group_iou_sum": sum(iou for iou in ious if iou > 0.5),
        "num_gt_groups": len(gt_sets),
        "num_pred_groups": len(pred_sets),
    }


@pytest.mark.parametrize("seed", range(20))
def test_counts_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    image = random_image(rng, int(rng.integers(1, 11)), 2, 3)
    check(image_metrics(*image), brute_force(*image))


@pytest.mark.parametrize("seed", range(10))
def test_partition_scores_match_sklearn_on_category_group_pairs(seed):
    rng = np.random.default_rng(100 + seed)
    gt_cats, gt_groups, pred_cats, pred_groups = random_image(rng, 40, 3, 5)
    true = gt_cats * 1000 + gt_groups  # one label per (category, group) pair
    pred = pred_cats * 1000 + pred_groups
    check(
        image_metrics(gt_cats, gt_groups, pred_cats, pred_groups),
        {
            "ari": adjusted_rand_score(true, pred),
            "nmi": normalized_mutual_info_score(true, pred),
            "ami": adjusted_mutual_info_score(true, pred),
        },
    )


def rename_groups(rng: np.random.Generator, groups: np.ndarray) -> np.ndarray:
    """Maps the group ids one-to-one onto other, arbitrary ids."""
    ids = np.unique(groups)
    new_ids = rng.choice(np.arange(-50, 50), size=ids.size, replace=False)
    return new_ids[np.searchsorted(ids, groups)]


@pytest.mark.parametrize("seed", range(5))
def test_invariant_to_renaming_group_ids_and_reordering_boxes(seed):
    rng = np.random.default_rng(200 + seed)
    gt_cats, gt_groups, pred_cats, pred_groups = random_image(rng, 30, 3, 4)
    reference = image_metrics(gt_cats, gt_groups, pred_cats, pred_groups)
    renamed = image_metrics(
        gt_cats, rename_groups(rng, gt_groups), pred_cats, rename_groups(rng, pred_groups)
    )
    order = rng.permutation(30)
    shuffled = image_metrics(gt_cats[order], gt_groups[order], pred_cats[order], pred_groups[order])
    check(renamed, reference)
    check(shuffled, reference)


def test_large_image_runs():
    rng = np.random.default_rng(7)
    n = 2000
    gt_cats, gt_groups, pred_cats, pred_groups = random_image(rng, n, 5, 300)
    m = image_metrics(gt_cats, gt_groups, pred_cats, pred_groups)
    pred_sizes = np.unique(pred_cats * 1000 + pred_groups, return_counts=True)[1]
    assert m["pair_pred"] == int((pred_sizes * (pred_sizes - 1) // 2).sum())
    check(image_metrics(gt_cats, np.arange(n), gt_cats, np.arange(n)), {"hungarian_acc": 1.0})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([0, 0], [0], [0, 0], [0, 0]), "gt_groups has 1 entries but gt_categories has 2"),
        (([0], [0], [0], [0, 1]), "pred_groups has 2 entries"),
        (([[0]], [0], [0], [0]), "gt_categories must be 1-D"),
        (([0], [0], [0.5], [0]), "pred_categories must hold integers"),
        (([-1], [0], [0], [0]), "gt_categories holds a negative category"),
    ],
)
def test_bad_inputs_raise(args, message):
    with pytest.raises(DetgroupError, match=message):
        image_metrics(*args)
    with pytest.raises(DetgroupError, match=message):
        GroupingEvaluator(num_classes=2).update(*args)


def test_evaluator_checks_num_classes():
    ev = GroupingEvaluator(num_classes=2)
    with pytest.raises(DetgroupError, match="pred_categories holds category 2 but num_classes"):
        ev.update([0], [0], [2], [0])
    assert ev.per_image == []
    with pytest.raises(DetgroupError, match="num_classes must be >= 1"):
        GroupingEvaluator(num_classes=0)
    with pytest.raises(TypeError):
        GroupingEvaluator(2)  # type: ignore[misc]


# ---- group matching and the confusion matrix


@pytest.mark.parametrize("seed", range(6))
def test_match_groups_covers_the_hungarian_accuracy_boxes(seed):
    rng = np.random.default_rng(seed)
    n = 15
    gt_cat, gt_grp = rng.integers(0, 2, n), rng.integers(0, 4, n)
    pred_cat, pred_grp = rng.integers(0, 2, n), rng.integers(0, 5, n)
    match = match_groups(gt_cat, gt_grp, pred_cat, pred_grp)
    hungarian = image_metrics(gt_cat, gt_grp, pred_cat, pred_grp)["hungarian_acc"]
    assert match.matched_boxes == round(hungarian * n)
    # one-to-one, each pair shares a box, and the two maps agree
    rows = np.flatnonzero(match.pred_for_gt >= 0)
    assert len(set(match.pred_for_gt[rows].tolist())) == len(rows)
    assert (match.overlap[rows, match.pred_for_gt[rows]] > 0).all()
    assert (match.gt_for_pred[match.pred_for_gt[rows]] == rows).all()
    # renaming the predicted group ids changes no matched pair of boxes
    renamed = match_groups(gt_cat, gt_grp, pred_cat, (pred_grp * 7 + 3) % 11)
    assert renamed.matched_boxes == match.matched_boxes


def test_match_groups_by_hand():
    # true A = {0, 1, 2}, B = {3}; predicted X = {0, 1}, Y = {2, 3}
    match = match_groups([0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1])
    assert match.gt_keys.tolist() == [[0, 0], [1, 0]]
    assert match.overlap.tolist() == [[2, 1], [0, 1]]
    assert match.pred_for_gt.tolist() == [0, 1] and match.matched_boxes == 3
    # a true group that shares no box with any free predicted group stays unmatched
    lone = match_groups([0, 0], [0, 1], [0, 0], [0, 0])
    assert sorted(lone.pred_for_gt.tolist()) == [-1, 0]
    empty = match_groups([], [], [], [])
    assert empty.gt_keys.shape == (0, 2) and empty.matched_boxes == 0


def test_category_confusion_is_the_evaluators():
    rng = np.random.default_rng(0)
    evaluator = GroupingEvaluator(num_classes=3)
    total = np.zeros((3, 3), np.int64)
    for _ in range(4):
        gt, pred = rng.integers(0, 3, 10), rng.integers(0, 3, 10)
        evaluator.update(gt, np.zeros(10, int), pred, np.zeros(10, int))
        total += category_confusion(gt, pred, 3)
        assert category_confusion(gt, pred, 3)[1, 2] == int(((gt == 1) & (pred == 2)).sum())
    np.testing.assert_array_equal(evaluator.confusion, total)
    assert int(np.trace(total)) == round(evaluator.summary()["cat_acc"] * 40)
# --- grouping on detected boxes ----------------------------------------------------------------


def boxes_at(*columns: int) -> np.ndarray:
    """[n, 4] unit-spaced 10 px boxes, one per column index (far apart: IoU 0 between them)."""
    return np.array([[20.0 * c, 0.0, 20.0 * c + 10.0, 10.0] for c in columns])


def det_image(det_boxes, det_scores, det_cats, det_groups, gt_boxes, gt_cats, gt_groups):
    return detection_image_metrics(
        det_boxes=np.asarray(det_boxes, dtype=float), det_scores=det_scores,
        det_categories=det_cats, det_groups=det_groups, gt_boxes=np.asarray(gt_boxes, float),
        gt_categories=gt_cats, gt_groups=gt_groups,
    )


def test_match_detections_greedy_by_score_each_truth_once():
    gt = np.array([[0.0, 0, 10, 10], [30, 0, 40, 10]])
    dets = np.array([[0.0, 0, 10, 10],  # IoU 1 with truth 0, low score
                     [0.0, 0, 10, 8],  # IoU 0.8 with truth 0, higher score: takes it
                     [30, 0, 40, 4],  # IoU 0.4 with truth 1: below 0.5
                     [31, 0, 40, 10]])  # IoU 0.9 with truth 1
    match = match_detections(dets, np.array([0.5, 0.9, 0.99, 0.1]), gt)
    np.testing.assert_array_equal(match, [-1, 0, -1, 1])
    # IoU exactly at the threshold matches (>= 0.5, as COCOeval)
    half = np.array([[0.0, 0, 10, 5]])
    np.testing.assert_array_equal(match_detections(half, np.ones(1), gt[:1]), [0])
    assert match_detections(np.zeros((0, 4)), np.zeros(0), gt).shape == (0,)
    np.testing.assert_array_equal(match_detections(dets, np.ones(4), np.zeros((0, 4))), [-1] * 4)


def test_detections_on_the_truth_boxes_score_as_image_metrics():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 12))
        gt_cats, gt_groups, pred_cats, pred_groups = random_image(rng, n, 3, 4)
        order = rng.permutation(n)  # detections in another order than the truth
        m = det_image(boxes_at(*order), rng.random(n), pred_cats[order], pred_groups[order],
                      boxes_at(*range(n)), gt_cats, gt_groups)
        ref = image_metrics(gt_cats, gt_groups, pred_cats, pred_groups)
        for key in ("cat_acc", "ari", "pair_precision", "pair_recall", "pair_f1",
                    "group_precision", "group_recall", "group_f1", "exact_group_f1", "group_pq",
                    "group_tp", "exact_group_tp", "num_gt_groups", "num_pred_groups"):
            assert m[key] == pytest.approx(ref[key], abs=1e-12), key
        check(m, {"box_precision": 1.0, "box_recall": 1.0, "num_matched": n})


def test_missed_box_is_a_missing_member():
    # truth: {0, 1, 2} and {3}; box 2 is not detected, the rest grouped right
    m = det_image(boxes_at(0, 1, 3), [0.9, 0.8, 0.7], [0, 0, 0], [5, 5, 6],
                  boxes_at(0, 1, 2, 3), [0, 0, 0, 0], [0, 0, 0, 1])
    check(m, {
        "num_matched": 3, "box_precision": 1.0, "box_recall": 3 / 4,
        # {d0, d1} against {g0, g1, g2}: IoU 2/3, a match but not exact; {d3} = {g3} exactly
        "group_tp": 2, "exact_group_tp": 1, "group_f1": 1.0, "exact_group_f1": 0.5,
        "group_pq": (2 / 3 + 1.0) / 2,
        "pair_tp": 1, "pair_pred": 1, "pair_true": 3, "pair_precision": 1.0,
        "pair_recall": 1 / 3, "ari": 1.0, "cat_acc": 1.0,
    })


def test_duplicate_detection_is_a_false_member():
    # truth: one group {g0, g1}; a second, lower-scored detection of g0 joins the group
    dets = np.vstack([boxes_at(0, 1), [[0.0, 0.0, 10.0, 9.0]]])
    m = det_image(dets, [0.9, 0.8, 0.7], [0, 0, 0], [0, 0, 0], boxes_at(0, 1), [0, 0], [0, 0])
    check(m, {
        "num_matched": 2, "box_precision": 2 / 3, "box_recall": 1.0,
        "group_tp": 1, "exact_group_tp": 0, "group_precision": 1.0, "group_recall": 1.0,
        "exact_group_f1": 0.0, "group_pq": 2 / 3,  # IoU 2/3 over ½(1 + 1) groups
        "pair_tp": 1, "pair_pred": 3, "pair_true": 1, "pair_precision": 1 / 3,
    })
    # the duplicate in a group of its own: the group is right, the duplicate a false group
    m = det_image(dets, [0.9, 0.8, 0.7], [0, 0, 0], [0, 0, 1], boxes_at(0, 1), [0, 0], [0, 0])
    check(m, {"group_tp": 1, "exact_group_tp": 1, "group_precision": 0.5, "group_recall": 1.0,
              "exact_group_f1": 2 / 3, "group_pq": 1.0 / 1.5})


def test_box_matched_into_the_wrong_group():
    # truth {g0, g1}, {g2, g3}; g2's detection is put with g0 and g1
    gt_cats, gt_groups = [0, 0, 0, 0], [0, 0, 1, 1]
    m = det_image(boxes_at(0, 1, 2, 3), [0.9] * 4, [0, 0, 0, 0], [0, 0, 0, 1], boxes_at(0, 1, 2, 3),
                  gt_cats, gt_groups)
    # {d0, d1, d2} vs {g0, g1}: IoU 2/3 (match); {d3} vs {g2, g3}: IoU 1/2 (no match)
    check(m, {"group_tp": 1, "exact_group_tp": 0, "group_precision": 0.5, "group_recall": 0.5,
              "group_f1": 0.5, "group_pq": (2 / 3) / 2,
              "ari": adjusted_rand_score([0, 0, 1, 1], [0, 0, 0, 1])})
    # right members, wrong category: the box is matched, the group is not
    m = det_image(boxes_at(0, 1), [0.9, 0.9], [1, 1], [0, 0], boxes_at(0, 1), [0, 0], [0, 0])
    check(m, {"num_matched": 2, "cat_acc": 0.0, "group_tp": 0, "group_pq": 0.0,
              "pair_tp": 1, "ari": 1.0})


def test_empty_image_on_either_side():
    none = np.zeros((0, 4))
    m = det_image(none, [], [], [], boxes_at(0, 1), [0, 0], [3, 3])  # nothing detected
    check(m, {"box_precision": 0.0, "box_recall": 0.0, "group_precision": 0.0,
              "group_recall": 0.0, "group_f1": 0.0, "group_pq": 0.0, "pair_recall": 0.0,
              "num_gt_groups": 1, "num_pred_groups": 0})
    assert math.isnan(m["ari"])
    m = det_image(boxes_at(0, 1), [0.5, 0.5], [0, 1], [0, 0], none, [], [])  # no truth
    check(m, {"box_precision": 0.0, "box_recall": 0.0, "group_precision": 0.0,
              "group_recall": 0.0, "group_pq": 0.0, "num_pred_groups": 2})
    m = det_image(none, [], [], [], none, [], [])  # nothing on either side
    check(m, {key: 1.0 for key in ("box_precision", "box_recall", "group_f1", "group_pq",
                                   "exact_group_f1", "pair_f1", "cat_acc")})


def test_detection_evaluator_pools_counts_over_images():
    evaluator = DetectionGroupingEvaluator()
    evaluator.update(det_boxes=boxes_at(0, 1, 3), det_scores=[0.9, 0.8, 0.7],
                     det_categories=[0, 0, 0], det_groups=[5, 5, 6],
                     gt_boxes=boxes_at(0, 1, 2, 3), gt_categories=[0, 0, 0, 0],
                     gt_groups=[0, 0, 0, 1])
    evaluator.update(det_boxes=np.zeros((0, 4)), det_scores=[], det_categories=[],
                     det_groups=[], gt_boxes=boxes_at(0, 1), gt_categories=[1, 1],
                     gt_groups=[0, 0])
    s = evaluator.summary()
    check(s, {"num_images": 2, "num_detections": 3, "num_truth": 6, "box_recall": 3 / 6,
              "group_tp": 2, "num_gt_groups": 3, "num_pred_groups": 2,
              "group_precision": 1.0, "group_recall": 2 / 3,
              "group_pq": (2 / 3 + 1.0) / 2.5, "ari": 1.0})  # ARI: the first image only
    assert DetectionGroupingEvaluator().summary()["group_pq"] == 1.0
    with pytest.raises(DetgroupError, match="det_scores"):
        evaluator.update(det_boxes=boxes_at(0), det_scores=[0.5, 0.5], det_categories=[0],
                         det_groups=[0], gt_boxes=none_boxes(), gt_categories=[], gt_groups=[])


def none_boxes() -> np.ndarray:
    return np.zeros((0, 4))


def _coco(boxes: np.ndarray, cats: list[int]) -> dict:
    anns = [{"id": k + 1, "image_id": 1, "category_id": c,
             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
            for k, (b, c) in enumerate(zip(boxes.tolist(), cats, strict=True))]
    return {"images": [{"id": 1, "file_name": "a.png", "width": 200, "height": 50}],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
            "annotations": anns}


def test_coco_box_ap_against_hand_values():
    truth = _coco(boxes_at(0, 1, 2), [1, 1, 2])
    perfect = [{**a, "score": 0.9} for a in truth["annotations"]]
    check(coco_box_ap(truth, perfect), {"cat_ap": 1.0, "cat_ap50": 1.0, "box_ap": 1.0,
                                        "box_ap50": 1.0})
    swapped = [{**d, "category_id": 3 - d["category_id"]} for d in perfect]
    ap = coco_box_ap(truth, swapped)
    check(ap, {"cat_ap": 0.0, "box_ap": 1.0})
    check(coco_box_ap(truth, []), {"cat_ap": 0.0, "box_ap50": 0.0})


def test_boxes_of_unknown_group_count_for_categories_only():
    """gt_known False: the box's pairs leave the grouping metrics, its category stays."""
    gt_cat, gt_grp = [0, 0, 0, 1, 1], [0, 0, 1, 2, 2]
    pred_cat, pred_grp = [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]  # box 2 wrongly joins the dogs
    known = [True, True, False, True, True]
    ev = GroupingEvaluator(num_classes=2)
    m = ev.update(gt_cat, gt_grp, pred_cat, pred_grp, known)
    keep = np.flatnonzero(known)
    subset = image_metrics(*(np.asarray(a)[keep] for a in (gt_cat, gt_grp, pred_cat, pred_grp)))
    grouping = [k for k in RATE_KEYS if not k.startswith("cat_")]
    check(m, {k: subset[k] for k in grouping})
    assert m["ari"] == 1.0 and m["pair_f1"] == 1.0  # the known boxes are grouped perfectly
    assert m["num_boxes"] == 5 and m["num_grouped_boxes"] == 4
    assert m["cat_acc"] == pytest.approx(4 / 5)  # box 2's category error still counts
    s = ev.summary()
    assert s["cat_acc"] == pytest.approx(4 / 5) and s["num_grouped_boxes"] == 4
    assert s["pair_f1"] == 1.0 and s["ari"] == 1.0
    # all known: the same as without the mask
    plain = GroupingEvaluator(num_classes=2).update(gt_cat, gt_grp, pred_cat, pred_grp)
    check(GroupingEvaluator(num_classes=2).update(gt_cat, gt_grp, pred_cat, pred_grp,
                                                  [True] * 5), plain)
    # an image with no box of known group stays out of the averages over images
    ev.update([0, 0], [0, 1], [0, 0], [0, 0], [False, False])
    assert ev.summary()["ari"] == 1.0
    with pytest.raises(DetgroupError, match="gt_known has 1 entries"):
        ev.update([0, 0], [0, 1], [0, 0], [0, 0], [True])


# question, answer, header, other: the FUNSD categories; "other" (3) is not scored
_Q, _A, _H, _O = 0, 1, 2, 3


def test_entity_f1_layoutlm_protocol_hand_computed() -> None:
    # true: {0, 1} question, {2, 3} answer, {4} other, {5} header
    gt_cat, gt_grp = [_Q, _Q, _A, _A, _O, _H], [0, 0, 0, 0, 0, 0]
    # predicted: {0, 1} question (right), {2} and {3} answers (a split: both wrong), {4} other
    # (not scored), {5} question (right words, wrong label)
    pred_cat, pred_grp = [_Q, _Q, _A, _A, _O, _Q], [0, 0, 0, 1, 0, 1]
    m = image_metrics(gt_cat, gt_grp, pred_cat, pred_grp, unscored_categories=[_O])
    assert (m["entity_tp"], m["entity_pred"], m["entity_true"]) == (1, 4, 3)
    assert m["entity_precision"] == pytest.approx(1 / 4)
    assert m["entity_recall"] == pytest.approx(1 / 3)
    assert m["entity_f1"] == pytest.approx(2 / 7)
    # categories ignored: {0, 1}, {4} and {5} are exact; 5 predicted groups, 4 true ones
    assert m["agnostic_exact_group_tp"] == 3
    assert m["agnostic_exact_group_f1"] == pytest.approx(2 / 3)
    # with every category scored the entity metrics are the exact-group ones
    every = image_metrics(gt_cat, gt_grp, pred_cat, pred_grp)
    assert every["entity_f1"] == pytest.approx(every["exact_group_f1"])
    assert every["entity_f1"] == pytest.approx(2 * (2 / 5) * (2 / 4) / (2 / 5 + 2 / 4))


def test_entity_f1_pooled_and_other_predicted_as_entity() -> None:
    evaluator = GroupingEvaluator(num_classes=4, unscored_categories=[_O])
    evaluator.update([_Q, _Q, _A, _A, _O, _H], [0] * 6, [_Q, _Q, _A, _A, _O, _Q],
                     [0, 0, 0, 1, 0, 1])
    # two "other" words read as one answer: a predicted entity with no true one
    evaluator.update([_O, _O], [0, 0], [_A, _A], [0, 0])
    # a true question predicted as "other": missed, and nothing predicted
    evaluator.update([_Q], [0], [_O], [0])
    s = evaluator.summary()
    assert s["entity_precision"] == pytest.approx(1 / 5)
    assert s["entity_recall"] == pytest.approx(1 / 4)
    assert s["entity_f1"] == pytest.approx(2 * (1 / 5) * (1 / 4) / (1 / 5 + 1 / 4))
    # categories ignored, images 2 and 3 are exact: 3 + 1 + 1 of 7 predicted and 6 true groups
    assert s["agnostic_exact_group_precision"] == pytest.approx(5 / 7)
    assert s["agnostic_exact_group_recall"] == pytest.approx(5 / 6)


def test_hand_written_counts_equal_scikit_learn_on_random_labels() -> None:
    """Macro F1 and the pair counts are kept by hand for speed; they must equal sklearn's."""
    from sklearn.metrics.cluster import pair_confusion_matrix

    rng = np.random.default_rng(0)
    evaluator = GroupingEvaluator(num_classes=6)
    all_gt, all_pred = [], []
    for _ in range(200):
        n = int(rng.integers(1, 40))
        gt_cat, pred_cat = rng.integers(0, 4, n), rng.integers(0, 4, n)
        gt_grp, pred_grp = rng.integers(0, 5, n), rng.integers(0, 5, n)
        m = image_metrics(gt_cat, gt_grp, pred_cat, pred_grp)
        assert m["cat_macro_f1"] == f1_score(gt_cat, pred_cat, average="macro")
        # ordered pairs, so each unordered pair counts twice
        pairs = pair_confusion_matrix(gt_cat * 5 + gt_grp, pred_cat * 5 + pred_grp) // 2
        assert (m["pair_tp"], m["pair_true"], m["pair_pred"]) == (
            pairs[1, 1], pairs[1, 1] + pairs[1, 0], pairs[1, 1] + pairs[0, 1])
        evaluator.update(gt_cat, gt_grp, pred_cat, pred_grp)
        all_gt.append(gt_cat)
        all_pred.append(pred_cat)
    # pooled over images, over range(num_classes): classes 4 and 5 never occur and score 1.0
    pooled = f1_score(np.concatenate(all_gt), np.concatenate(all_pred), labels=range(6),
                      average="macro", zero_division=1.0)
    assert evaluator.summary()["cat_macro_f1"] == pytest.approx(pooled, rel=1e-12)
