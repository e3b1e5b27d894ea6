"""Cluster bookkeeping shared by the solvers: labels, per-cluster sums, class-term gains,
connected components."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

# A move must gain more than this to count, so that float noise cannot make the search cycle.
GAIN_TOL = 1e-9
# Bound on the floats of one temporary array in the chunked computations.
CHUNK = 1 << 22


def compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels renumbered 0..K-1 in order of value (int64 [N]) and K."""
    uniq, lab = np.unique(labels, return_inverse=True)
    return lab.astype(np.int64).ravel(), int(uniq.size)


def cluster_sums(lab: np.ndarray, k: int, x: np.ndarray) -> np.ndarray:
    """Per-cluster sums of the rows of x [N, C] → [K, C]."""
    out = np.zeros((k, x.shape[1]))
    np.add.at(out, lab, x)
    return out


def class_gain(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Change of the class term when clusters with summed log-probs a and b ([M, C]) merge."""
    return (a + b).max(axis=-1) - a.max(axis=-1) - b.max(axis=-1)


def max_of_sums(x: np.ndarray, i: np.ndarray, y: np.ndarray, j: np.ndarray) -> np.ndarray:
    """``max_c x[i[m], c] + y[j[m], c]`` for x [*, C], y [*, C], i, j [M] → [M], in chunks."""
    step = max(1, CHUNK // x.shape[1])
    parts = [(x[i[s : s + step]] + y[j[s : s + step]]).max(axis=1) for s in range(0, i.size, step)]
    return np.concatenate(parts) if parts else np.zeros(0)


def class_gain_pairs(lsum: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """``class_gain`` for cluster pairs (i[m], j[m]) of lsum [K, C] → [M]."""
    best = lsum.max(axis=1)
    return max_of_sums(lsum, i, lsum, j) - best[i] - best[j]


def components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Connected-component label per node (int64 [N]) of the graph with edges (u, v)."""
    graph = sp.csr_matrix((np.ones(u.size), (u, v)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def resolve(parent: np.ndarray) -> np.ndarray:
    """Root of every node in a forest of parent pointers [N] → [N]."""
    while True:
        up = parent[parent]
        if np.array_equal(up, parent):
            return parent
        parent = up
