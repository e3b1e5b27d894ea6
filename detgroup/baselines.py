"""Unsupervised clustering baselines for grouping boxes, and the tuning of their settings.

What detgroup is measured against (``tools/benchmark.py``): the status quo of classifying each
box and then clustering without supervision. Every baseline here sees one image at a time as a
:class:`Scene` — box centres, optional per-box appearance features (e.g. a per-box classifier's
features), the category each box was given (predicted or true), and the true group labels for
tuning — and clusters the boxes of each category separately, so its group ids are numbered per
category like the decoder's.

* position only: :class:`Agglomerative` or :class:`DBSCANClusterer` on box centres, and
  :func:`kmeans_oracle_groups` (k-means given the true number of groups, an oracle);
* appearance (+ position): :class:`Agglomerative` or :class:`HDBSCANClusterer` on L2-normalised
  features, optionally concatenated with the box centres times a weight (:class:`Setting`);
* layout rules on the boxes themselves (``Setting(on="boxes")``): :class:`LineLinker` links the
  words of one text line separated by a small gap (and optionally a line to the next one), the
  way a document pipeline without a model groups words into entities; :class:`Singletons` puts
  every box alone.

Thresholds, ``eps``, ``min_cluster_size`` and the position weight are chosen by :func:`tune`:
the candidate with the highest mean ARI (or exact-group F1, :func:`exact_group_f1`) over a set of
(training) scenes.

Numpy / scipy / scikit-learn only; nothing here trains a network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import pdist
from sklearn.cluster import HDBSCAN, KMeans

LINKAGES = ("single", "complete", "average", "ward")


class Clusterer(Protocol):
    """Clusters M points: ``features`` float [M, D] → labels int [M] (values only matter by
    equality). Must accept M = 0 and M = 1."""

    def __call__(self, features: np.ndarray) -> np.ndarray: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class Agglomerative:
    """Hierarchical clustering (scipy ``linkage``, euclidean) cut at distance ``threshold``."""

    threshold: float
    linkage: str = "average"

    def __post_init__(self) -> None:
        if self.linkage not in LINKAGES:
            raise ValueError(f"linkage must be one of {LINKAGES}, got {self.linkage!r}")

    def __call__(self, features: np.ndarray) -> np.ndarray:
        if len(features) < 2:
            return np.zeros(len(features), dtype=np.int64)
        # condensed distances: a square [M, M] feature matrix must not pass for a distance matrix
        tree = linkage(pdist(features), method=self.linkage)
        return fcluster(tree, self.threshold, criterion="distance").astype(np.int64)

    def describe(self) -> str:
        return f"{self.linkage} linkage, threshold {self.threshold:.3g}"


@dataclass(frozen=True)
class DBSCANClusterer:
    """DBSCAN (euclidean); every noise point becomes a group of its own.

    Same clusters as ``sklearn.cluster.DBSCAN(eps, min_samples)``: a border point joins the
    cluster that scikit-learn's scan reaches first (the one with the lowest core index), without
    its per-call overhead, which dominates on a few dozen points and a tuning grid of thousands of
    calls.
    """

    eps: float
    min_samples: int = 1

    def __call__(self, features: np.ndarray) -> np.ndarray:
        n = len(features)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        diff = features[:, None, :] - features[None, :, :]
        near = np.sqrt((diff**2).sum(-1)) <= self.eps  # [M, M], self included
        core = near.sum(1) >= self.min_samples
        _, comp = connected_components(
            csr_matrix(near & core[:, None] & core[None, :]), directed=False
        )
        labels = np.full(n, -1, dtype=np.int64)
        labels[core] = comp[core]
        # each component of core points is named by its lowest index, as in sklearn's scan
        first_core = {int(c): int(np.flatnonzero(core & (comp == c))[0])
                      for c in np.unique(comp[core])}
        for i in np.flatnonzero(~core):
            reach = np.unique(comp[near[i] & core])
            if len(reach):
                labels[i] = min(reach, key=lambda c: first_core[int(c)])
        return _noise_to_singletons(labels)

    def describe(self) -> str:
        return f"eps {self.eps:.3g}, min_samples {self.min_samples}"


@dataclass(frozen=True)
class HDBSCANClusterer:
    """``sklearn.cluster.HDBSCAN`` (euclidean); every noise point becomes a group of its own.

    ``min_samples`` (default: ``min_cluster_size``) is capped at the number of points.
    ``cluster_selection_epsilon`` is not offered: scikit-learn 1.9.1 raises a TypeError in its
    epsilon search on many small inputs.
    """

    min_cluster_size: int = 2
    min_samples: int | None = None
    allow_single_cluster: bool = False

    def __call__(self, features: np.ndarray) -> np.ndarray:
        n = len(features)
        if n < 2:  # scikit-learn refuses a single sample
            return np.zeros(n, dtype=np.int64)
        min_samples = min(self.min_samples or self.min_cluster_size, n)
        labels = HDBSCAN(
            min_cluster_size=self.min_cluster_size, min_samples=min_samples,
            allow_single_cluster=self.allow_single_cluster, copy=True,
        ).fit_predict(features)
        return _noise_to_singletons(labels.astype(np.int64))

    def describe(self) -> str:
        single = ", single cluster allowed" if self.allow_single_cluster else ""
        return (f"min_cluster_size {self.min_cluster_size}, "
                f"min_samples {self.min_samples}{single}")


def _noise_to_singletons(labels: np.ndarray) -> np.ndarray:
    """Labels [M] where -1 (noise) is replaced by fresh ids, one per point."""
    noise = labels < 0
    if noise.any():
        labels = labels.copy()
        labels[noise] = labels.max(initial=-1) + 1 + np.arange(noise.sum())
    return labels


@dataclass
class Scene:
    """One image for the clustering baselines.

    Attributes:
        centres: float [N, 2], box centres divided by the image (width, height).
        categories: int [N], the category each box was given (predicted or true); boxes of
            different categories are never grouped.
        truth: int [N], true group label of each box, one value per (category, group) pair (see
            :func:`cluster_labels`); only used to tune and to count groups for the oracle.
        appearance: float [N, D], per-box features (L2-normalised by the caller when wanted),
            or [N, 0] for position-only baselines.
        boxes: float [N, 4] (x1, y1, x2, y2) px, for the layout rules (``Setting(on="boxes")``);
            [N, 0] when not given.
    """

    centres: np.ndarray
    categories: np.ndarray
    truth: np.ndarray
    appearance: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    def __post_init__(self) -> None:
        n = len(self.centres)
        if self.appearance.size == 0:
            self.appearance = np.zeros((n, 0), dtype=np.float32)
        if self.boxes.size == 0:
            self.boxes = np.zeros((n, 0), dtype=np.float32)
        if not (len(self.categories) == len(self.truth) == len(self.appearance)
                == len(self.boxes) == n):
            raise ValueError("centres, categories, truth, appearance and boxes need one row per "
                             "box")

    def features(self, position_weight: float) -> np.ndarray:
        """float [N, D + 2]: the appearance features then ``position_weight`` × centres."""
        return np.concatenate([self.appearance, position_weight * self.centres], axis=1)


@dataclass(frozen=True)
class Setting:
    """A clusterer and the weight of the box centres beside the appearance features."""

    clusterer: Clusterer
    position_weight: float = 1.0
    on: str = "features"  # "features": Scene.features(position_weight); "boxes": Scene.boxes

    def describe(self) -> str:
        if self.on == "boxes":
            return self.clusterer.describe()
        return f"{self.clusterer.describe()}, position weight {self.position_weight:g}"


@dataclass(frozen=True)
class LineLinker:
    """Layout rule on boxes [M, 4] (x1, y1, x2, y2) px: groups = connected components of links.

    Two boxes are on one line when their vertical overlap is at least ``min_overlap`` of the
    smaller height; they are linked when, on one line, the horizontal gap between them is at
    most ``max_gap`` times their mean height. With ``max_line_gap`` > 0, two boxes on
    consecutive lines are also linked when they overlap horizontally and the vertical gap
    between them is at most ``max_line_gap`` times their mean height (multi-line entities).
    """

    max_gap: float
    min_overlap: float = 0.5
    max_line_gap: float = 0.0

    def __call__(self, boxes: np.ndarray) -> np.ndarray:
        n = len(boxes)
        if n <= 1:
            return np.zeros(n, dtype=np.int64)
        x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
        height = np.maximum(y2 - y1, 1e-6)
        mean_h = (height[:, None] + height[None, :]) / 2  # [M, M]
        v_overlap = np.minimum(y2[:, None], y2[None, :]) - np.maximum(y1[:, None], y1[None, :])
        h_gap = np.maximum(x1[:, None], x1[None, :]) - np.minimum(x2[:, None], x2[None, :])
        same_line = v_overlap >= self.min_overlap * np.minimum(height[:, None], height[None, :])
        links = same_line & (h_gap <= self.max_gap * mean_h)
        if self.max_line_gap > 0:
            v_gap = -v_overlap  # > 0: vertical distance between the boxes
            links |= (~same_line) & (h_gap < 0) & (v_gap <= self.max_line_gap * mean_h)
        np.fill_diagonal(links, False)
        return connected_components(csr_matrix(links), directed=False)[1].astype(np.int64)

    def describe(self) -> str:
        text = (f"same-line linking: gap <= {self.max_gap:.3g} x height, vertical overlap >= "
                f"{self.min_overlap:g}")
        if self.max_line_gap > 0:
            text += f", next line within {self.max_line_gap:g} x height"
        return text


class Singletons:
    """Every box its own group."""

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return np.arange(len(features), dtype=np.int64)

    def describe(self) -> str:
        return "each box alone"


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` [N, D] scaled to unit euclidean norm (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def box_centres(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Centres [N, 2] of ``boxes`` [N, 4] (x1, y1, x2, y2) px, divided by (width, height)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / (2 * width),
                     (boxes[:, 1] + boxes[:, 3]) / (2 * height)], axis=1)


def cluster_labels(categories: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """int64 [N] dense ids of the (category, group) pairs: the partition the metrics score."""
    if len(categories) == 0:
        return np.zeros(0, dtype=np.int64)
    pairs = np.stack([np.asarray(categories), np.asarray(groups)], axis=1)
    return np.unique(pairs, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def adjusted_rand(truth: np.ndarray, pred: np.ndarray) -> float:
    """Adjusted Rand index of two labelings [N] (equal to scikit-learn's
    ``adjusted_rand_score``), without its input checks: tuning calls it ~10^5 times."""
    n = len(truth)
    _, t = np.unique(truth, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    cont = np.zeros((t.max(initial=-1) + 1, p.max(initial=-1) + 1), dtype=np.float64)
    np.add.at(cont, (t.reshape(-1), p.reshape(-1)), 1.0)
    sum_sq = (cont**2).sum()
    a, b = cont.sum(1), cont.sum(0)
    tp = sum_sq - n
    fp = (b**2).sum() - sum_sq
    fn = (a**2).sum() - sum_sq
    tn = n * n - fp - fn - sum_sq
    if fn == 0 and fp == 0:
        return 1.0
    return float(2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))


def group_within_categories(
    categories: np.ndarray, features: np.ndarray, clusterer: Clusterer
) -> np.ndarray:
    """Cluster the boxes of each category separately.

    Args:
        categories: int [N], category per box.
        features: float [N, D].
        clusterer: called once per category present, on that category's rows.

    Returns:
        int64 [N] group ids numbered 0.. within each category.
    """
    groups = np.zeros(len(categories), dtype=np.int64)
    for c in np.unique(categories):
        idx = np.flatnonzero(categories == c)
        labels = np.asarray(clusterer(features[idx]))
        groups[idx] = np.unique(labels, return_inverse=True)[1].reshape(-1)
    return groups


def scene_groups(scene: Scene, setting: Setting) -> np.ndarray:
    """int64 [N] group ids (per category) of ``scene`` under ``setting``."""
    if setting.on == "boxes":
        if scene.boxes.shape[1] != 4 and len(scene.boxes):
            raise ValueError("this setting needs Scene.boxes [N, 4]")
        features = scene.boxes
    else:
        features = scene.features(setting.position_weight)
    return group_within_categories(scene.categories, features, setting.clusterer)


def kmeans_oracle_groups(scene: Scene, *, position_weight: float = 1.0,
                         seed: int = 0) -> np.ndarray:
    """k-means within each category with k = the true number of groups among its boxes.

    An oracle: the number of groups is read from ``scene.truth``. Returns int64 [N] group ids
    numbered within each category.
    """
    feats = scene.features(position_weight)
    groups = np.zeros(len(scene.categories), dtype=np.int64)
    for c in np.unique(scene.categories):
        idx = np.flatnonzero(scene.categories == c)
        k = len(np.unique(scene.truth[idx]))
        if k <= 1 or len(idx) <= 1:
            continue  # one group: all zeros
        labels = KMeans(n_clusters=k, n_init=5, random_state=seed).fit_predict(feats[idx])
        groups[idx] = labels
    return groups


def exact_group_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """F1 of exactly recovered clusters: 2 |clusters identical in both| / (|truth| + |pred|),
    for two labelings [N] (1.0 when N = 0)."""
    if len(truth) == 0:
        return 1.0
    pairs = np.unique(np.stack([truth, pred], axis=1), axis=0)  # [K, 2] co-occurring labels
    true_ids, true_n = np.unique(pairs[:, 0], return_counts=True)
    pred_ids, pred_n = np.unique(pairs[:, 1], return_counts=True)
    # a cluster is recovered exactly when its true label meets only one predicted label and
    # that predicted label meets only this true label
    one_true = set(true_ids[true_n == 1].tolist())
    one_pred = set(pred_ids[pred_n == 1].tolist())
    exact = sum(1 for t, p in pairs.tolist() if t in one_true and p in one_pred)
    return 2.0 * exact / (len(true_ids) + len(pred_ids))


SCORES = {"ari": adjusted_rand, "exact_f1": exact_group_f1}


def mean_score(scenes: Sequence[Scene], setting: Setting, score: str = "ari") -> float:
    """Mean over scenes with boxes of ``score`` (a key of :data:`SCORES`) between ``truth``
    and the (category, group) partition that ``setting`` gives."""
    fn = SCORES[score]
    scores = [
        fn(s.truth, cluster_labels(s.categories, scene_groups(s, setting)))
        for s in scenes if len(s.truth)
    ]
    return float(np.mean(scores)) if scores else 1.0


def mean_ari(scenes: Sequence[Scene], setting: Setting) -> float:
    """:func:`mean_score` with the ARI."""
    return mean_score(scenes, setting, "ari")


def tune(scenes: Sequence[Scene], candidates: Sequence[Setting],
         score: str = "ari") -> tuple[Setting, float]:
    """The candidate with the highest :func:`mean_score` on ``scenes`` (the first on ties),
    and that mean score."""
    if not candidates:
        raise ValueError("tune needs at least one candidate setting")
    best, best_score = candidates[0], -np.inf
    for setting in candidates:
        score_value = mean_score(scenes, setting, score)
        if score_value > best_score:
            best, best_score = setting, score_value
    return best, float(best_score)
