"""Solvers on dense pair logits ``[N, N]``: GAEC (+ local search), average linkage, components,
exact."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.special import expit

from detgroup.decoder.clusters import (
    GAIN_TOL,
    class_gain,
    class_gain_pairs,
    components,
    resolve,
)
from detgroup.decoder.exact import exact_dense
from detgroup.decoder.local_search import SINGLETON_START_MAX_NODES, best_local_search


def _inner_pairs(lab: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i [P], j [P]) of distinct nodes that share a cluster, each pair once."""
    order = np.argsort(lab, kind="stable")
    size = np.bincount(lab, minlength=k)
    end = np.cumsum(size)[lab[order]]  # [N] one past the last position of each node's cluster
    later = end - np.arange(lab.size) - 1  # [N] partners after each position
    first = np.repeat(np.arange(lab.size), later)
    offset = np.arange(first.size) - np.repeat(np.cumsum(later) - later, later)
    return order[first], order[first + 1 + offset]


def dense_pair_sums(w: np.ndarray) -> Callable[[np.ndarray, int], tuple[np.ndarray, ...]]:
    """For labels lab [N] with K clusters: per-cluster sums of inner logits, inner
    probabilities and inner pair counts ([K] each), for dense logits w [N, N]."""

    def sums(lab: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
        i, j = _inner_pairs(lab, k)
        logits = w[i, j]
        owner = lab[i]
        return (
            np.bincount(owner, logits, minlength=k),
            np.bincount(owner, expit(logits), minlength=k),
            np.bincount(owner, minlength=k).astype(np.float64),
        )

    return sums


def gaec_dense(w: np.ndarray, lp: np.ndarray | None) -> np.ndarray:
    """Greedy additive edge contraction on dense logits w [N, N] → labels [N].

    ``wc`` holds summed weights between current clusters; ``gain`` the objective change of
    merging two clusters (weights plus class term). The class term is non-positive, so it is
    only evaluated where the weight is positive; elsewhere the gain can never be positive.
    """
    n = w.shape[0]
    wc = w.copy()  # [N, N]
    gain = w.copy()  # [N, N]
    lsum = None if lp is None else lp.copy()  # [N, C] summed log-probs per cluster
    if lsum is not None:
        i, j = np.nonzero(np.triu(w > 0, 1))
        g = class_gain_pairs(lsum, i, j)
        gain[i, j] += g
        gain[j, i] += g
    np.fill_diagonal(gain, -np.inf)
    alive = np.ones(n, dtype=bool)
    parent = np.arange(n)
    row_arg = gain.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    row_max = gain[np.arange(n), row_arg]
    while n:
        a = int(row_max.argmax())
        if not row_max[a] > GAIN_TOL:
            break
        b = int(row_arg[a])
        parent[b] = a
        alive[b] = False
        wc[a] += wc[b]
        wc[:, a] = wc[a]
        gain[b] = -np.inf
        gain[:, b] = -np.inf
        row_max[b] = -np.inf
        new = wc[a].copy()  # [N], gains of merging the new cluster a with each other one
        new[~alive] = -np.inf
        if lsum is not None:
            lsum[a] += lsum[b]
            attract = np.flatnonzero(new > 0)  # elsewhere the gain is <= 0 anyway
            new[attract] += class_gain(lsum[a], lsum[attract])
        new[a] = -np.inf
        gain[a] = new
        gain[:, a] = new
        row_arg[a] = new.argmax()
        row_max[a] = new[row_arg[a]]
        stale = (row_arg == a) | (row_arg == b)
        stale[a] = False
        stale &= alive
        better = (new > row_max) & ~stale
        row_max[better] = new[better]
        row_arg[better] = a
        idx = np.flatnonzero(stale)
        if idx.size:
            row_arg[idx] = gain[idx].argmax(axis=1)
            row_max[idx] = gain[idx, row_arg[idx]]
    return resolve(parent)


def _gaec_kl_dense(w: np.ndarray, lp: np.ndarray | None) -> np.ndarray:
    n = w.shape[0]
    starts = [gaec_dense(w, lp), _average_dense(w, None)]
    if n <= SINGLETON_START_MAX_NODES:
        starts.append(np.arange(n))
    return best_local_search(w, lp, starts, dense_pair_sums(w))


def _average_dense(w: np.ndarray, lp: np.ndarray | None) -> np.ndarray:
    n = w.shape[0]
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    iu, ju = np.triu_indices(n, 1)
    tree = linkage(expit(-w[iu, ju]), method="average")  # distance 1 - p
    # Merge only while the mean probability is strictly above 0.5.
    return fcluster(tree, t=np.nextafter(0.5, 0.0), criterion="distance").astype(np.int64)


def _components_dense(w: np.ndarray, lp: np.ndarray | None) -> np.ndarray:
    u, v = np.nonzero(np.triu(w > 0, 1))
    return components(w.shape[0], u, v)


DENSE_SOLVERS: dict[str, Callable[[np.ndarray, np.ndarray | None], np.ndarray]] = {
    "gaec-kl": _gaec_kl_dense,
    "average": _average_dense,
    "components": _components_dense,
    "exact": exact_dense,
}


METHODS = tuple(DENSE_SOLVERS)
