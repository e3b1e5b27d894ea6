"""Decoding a sparse pair graph (an edge list) in O(N·k) memory: ``decode_sparse``,
``partition_sparse`` and their solvers."""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from detgroup.decoder.checks import as_edge_list, as_num_nodes, as_options
from detgroup.decoder.clusters import GAIN_TOL, class_gain, components, resolve
from detgroup.decoder.local_search import SINGLETON_START_MAX_NODES, best_local_search
from detgroup.decoder.result import Partition, assemble

SPARSE_METHODS = ("gaec-kl", "average", "components")


def decode_sparse(
    num_nodes: int,
    edges: np.ndarray,
    edge_logits: np.ndarray,
    class_logits: np.ndarray | None = None,
    method: str = "gaec-kl",
    consistency: str = "joint",
    boxes: np.ndarray | None = None,
) -> Partition:
    """Decode a sparse pair graph (e.g. k nearest neighbours) in O(N·k) memory.

    Parameters
    ----------
    num_nodes : int
        N, the number of boxes.
    edges : np.ndarray
        int [E, 2], pairs (i, j) of box indices in [0, N); unlisted pairs are neutral (logit 0).
    edge_logits : np.ndarray
        float [E], same-group log-odds of each listed pair.
    class_logits, method, consistency, boxes
        As in ``decode``; method is one of ``SPARSE_METHODS``.

    Returns
    -------
    Partition
        As in ``decode``; group scores average over the listed pairs inside each group.
    """
    n = as_num_nodes(num_nodes)
    u, v, wl = as_edge_list(edges, edge_logits, n)
    lp, box = as_options(n, class_logits, method, SPARSE_METHODS, consistency, boxes)
    solve_lp = lp if method == "gaec-kl" else None
    if lp is not None and consistency == "forbid":
        predicted = lp.argmax(axis=1)
        keep = predicted[u] == predicted[v]
        u, v, wl = u[keep], v[keep], wl[keep]
        solve_lp = None
    labels = _SPARSE_SOLVERS[method](n, u, v, wl, solve_lp)
    inner = labels[u] == labels[v]
    labels = components(n, u[inner], v[inner])
    return assemble(labels, _sparse_pair_sums(u, v, wl), lp, box)


def partition_sparse(
    num_nodes: int,
    edges: np.ndarray,
    edge_logits: np.ndarray,
    class_logits: np.ndarray | None = None,
    method: str = "gaec-kl",
    *,
    consistency: str = "joint",
    boxes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Categories int64 [N] and per-category group ids int64 [N]; see ``decode_sparse``."""
    result = decode_sparse(num_nodes, edges, edge_logits, class_logits, method, consistency, boxes)
    return result.categories, result.groups


def _sparse_pair_sums(
    u: np.ndarray, v: np.ndarray, wl: np.ndarray
) -> Callable[[np.ndarray, int], tuple[np.ndarray, ...]]:
    """As ``dense_pair_sums`` over the listed edges (u, v) with logits wl only."""

    def sums(lab: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
        inner = lab[u] == lab[v]
        owner = lab[u[inner]]
        logit_sum = np.bincount(owner, wl[inner], minlength=k)
        prob_sum = np.bincount(owner, expit(wl[inner]), minlength=k)
        return logit_sum, prob_sum, np.bincount(owner, minlength=k).astype(np.float64)

    return sums


def _symmetric_csr(n: int, u: np.ndarray, v: np.ndarray, wl: np.ndarray) -> sp.csr_matrix:
    """Sparse symmetric weight matrix [N, N] from unique edges u < v with weights wl."""
    return sp.csr_matrix(
        (np.concatenate([wl, wl]), (np.concatenate([u, v]), np.concatenate([v, u]))),
        shape=(n, n),
    )


def _contract(
    n: int,
    u: np.ndarray,
    v: np.ndarray,
    weight: np.ndarray,
    score: Callable[[np.ndarray | int, np.ndarray, np.ndarray], np.ndarray],
    absorb: Callable[[int, int], None],
) -> np.ndarray:
    """Greedy contraction of a sparse graph → labels [N].

    Repeatedly merges the two adjacent clusters of highest ``score(a, b, weight_ab)`` while it
    is positive. Edge weights add up when clusters merge; ``absorb(a, b)`` updates the caller's
    per-cluster state when b merges into a. Heap entries carry both clusters' versions and are
    skipped once either cluster changed.
    """
    adj: list[dict[int, float]] = [{} for _ in range(n)]
    for a, b, x in zip(u.tolist(), v.tolist(), weight.tolist(), strict=True):
        adj[a][b] = x
        adj[b][a] = x
    version = [0] * n
    parent = np.arange(n)
    initial = score(u, v, weight)
    heap = [
        (-g, a, b, 0, 0)
        for g, a, b in zip(initial.tolist(), u.tolist(), v.tolist(), strict=True)
        if g > GAIN_TOL
    ]
    heapq.heapify(heap)
    while heap:
        _, a, b, va, vb = heapq.heappop(heap)
        if version[a] != va or version[b] != vb:
            continue
        if len(adj[a]) < len(adj[b]):  # keep the cluster with more neighbours
            a, b = b, a
        parent[b] = a
        version[b] = -1
        adj_a = adj[a]
        del adj_a[b]
        for c, x in adj[b].items():
            if c != a:
                adj_c = adj[c]
                del adj_c[b]
                y = adj_a.get(c, 0.0) + x
                adj_a[c] = y
                adj_c[a] = y
        adj[b] = {}
        absorb(a, b)
        version[a] += 1
        if adj_a:
            nbr = np.fromiter(adj_a.keys(), dtype=np.int64, count=len(adj_a))
            g = score(a, nbr, np.fromiter(adj_a.values(), dtype=np.float64, count=len(adj_a)))
            good = g > GAIN_TOL
            va = version[a]
            for c, gc in zip(nbr[good].tolist(), g[good].tolist(), strict=True):
                heapq.heappush(heap, (-gc, a, c, va, version[c]))
    return resolve(parent)


def _gaec_kl_sparse(
    n: int, u: np.ndarray, v: np.ndarray, wl: np.ndarray, lp: np.ndarray | None
) -> np.ndarray:
    lsum = None if lp is None else lp.copy()  # [N, C] summed log-probs per cluster

    def score(a: np.ndarray | int, b: np.ndarray, x: np.ndarray) -> np.ndarray:
        return x if lsum is None else x + class_gain(lsum[a], lsum[b])

    def absorb(a: int, b: int) -> None:
        if lsum is not None:
            lsum[a] += lsum[b]

    starts = [_contract(n, u, v, wl, score, absorb), _average_sparse(n, u, v, wl, None)]
    if n <= SINGLETON_START_MAX_NODES:
        starts.append(np.arange(n))
    return best_local_search(_symmetric_csr(n, u, v, wl), lp, starts, _sparse_pair_sums(u, v, wl))


def _average_sparse(
    n: int, u: np.ndarray, v: np.ndarray, wl: np.ndarray, lp: np.ndarray | None
) -> np.ndarray:
    size = np.ones(n)

    def score(a: np.ndarray | int, b: np.ndarray, x: np.ndarray) -> np.ndarray:
        return x / (size[a] * size[b])  # mean probability - 0.5, unlisted pairs count 0.5

    def absorb(a: int, b: int) -> None:
        size[a] += size[b]

    return _contract(n, u, v, expit(wl) - 0.5, score, absorb)


def _components_sparse(
    n: int, u: np.ndarray, v: np.ndarray, wl: np.ndarray, lp: np.ndarray | None
) -> np.ndarray:
    linked = wl > 0
    return components(n, u[linked], v[linked])


_SPARSE_SOLVERS: dict[
    str,
    Callable[[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None], np.ndarray],
] = {
    "gaec-kl": _gaec_kl_sparse,
    "average": _average_sparse,
    "components": _components_sparse,
}
