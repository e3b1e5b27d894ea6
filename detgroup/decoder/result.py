"""The decoders' result, ``Partition``, and its assembly from raw cluster labels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from detgroup.decoder.clusters import cluster_sums, compact


@dataclass(frozen=True)
class Partition:
    """A decoded partition of N boxes into groups of one category each.

    Attributes
    ----------
    categories : np.ndarray
        int64 [N], category index per box (all 0 without class logits).
    groups : np.ndarray
        int64 [N], group id per box, numbered 0.. within each category.
    cluster : np.ndarray
        int64 [N], global group index 0..K-1, ordered by (category, group id).
    group_scores : np.ndarray
        float64 [K], confidence per group, indexed by ``cluster``: mean within-group pair
        probability; a singleton's maximum class probability (1.0 without class logits).
    objective : float
        The decoder objective of this partition (package docstring), higher is better.
    """

    categories: np.ndarray
    groups: np.ndarray
    cluster: np.ndarray
    group_scores: np.ndarray
    objective: float


def assemble(
    labels: np.ndarray,
    pair_sums: Callable[[np.ndarray, int], tuple[np.ndarray, ...]],
    lp: np.ndarray | None,
    boxes: np.ndarray | None,
) -> Partition:
    """Categories, canonical numbering, scores and objective for raw cluster labels [N]."""
    n = labels.size
    lab, k = compact(labels)
    if lp is not None:
        lsum = cluster_sums(lab, k, lp)  # [K, C]
        cat = lsum.argmax(axis=1)
        class_term = float(lsum.max(axis=1).sum())
    else:
        cat = np.zeros(k, dtype=np.int64)
        class_term = 0.0
    first = np.full(k, n, dtype=np.int64)
    np.minimum.at(first, lab, np.arange(n))
    if boxes is not None:
        left = np.full(k, np.inf)
        top = np.full(k, np.inf)
        np.minimum.at(left, lab, boxes[:, 0])
        np.minimum.at(top, lab, boxes[:, 1])
        order = np.lexsort((first, top, left, cat))
    else:
        order = np.lexsort((first, cat))
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    sorted_cat = cat[order]
    group_of_rank = np.arange(k) - np.searchsorted(sorted_cat, sorted_cat, side="left")

    logit_sum, prob_sum, pairs = pair_sums(lab, k)
    singleton_score = np.exp(lp.max(axis=1)) if lp is not None else np.ones(n)
    scores = np.ones(k)
    scores[lab] = singleton_score  # only kept for clusters without inner pairs
    has_pairs = pairs > 0
    scores[has_pairs] = prob_sum[has_pairs] / pairs[has_pairs]
    return Partition(
        categories=cat[lab].astype(np.int64),
        groups=group_of_rank[rank[lab]].astype(np.int64),
        cluster=rank[lab],
        group_scores=scores[order],
        objective=float(logit_sum.sum()) + class_term,
    )
