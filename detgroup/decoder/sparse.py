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
# Kernighan–Lin exchanges on an edge list only for cluster pairs of at most this many members
# together: the sequence of a pair of M members costs O(M²) time and memory, and a graph that
# collapses into a few clusters of thousands would spend nearly all its time there. Node moves
# and merges still reach every cluster. (The dense path, bounded in N by memory, has no cap.)
KL_MAX_NODES = 1000
# Components of the positive-pair graph are decoded in batches of about this many boxes: a batch
# holds whole components (a larger one is a batch of its own), so a huge component's rounds of
# local search do not also sweep the rest of the graph.
BATCH_NODES = 2000


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
    labels = _by_components(n, u, v, wl, solve_lp, _SPARSE_SOLVERS[method])
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


def _by_components(
    n: int,
    u: np.ndarray,
    v: np.ndarray,
    wl: np.ndarray,
    lp: np.ndarray | None,
    solve: Callable[[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None], np.ndarray],
) -> np.ndarray:
    """``solve`` on batches of whole connected components of the pairs of positive logit →
    labels [N].

    Exact as a decomposition: a cluster with no positive pair between two of its parts gains
    (pair term) or keeps (class term) by splitting them, so some optimum keeps every cluster
    inside one component, and the problems of different components are independent. Batches
    (``BATCH_NODES``) keep the Python work per batch, not per component.
    """
    comp = components(n, u[wl > 0], v[wl > 0])  # [N]
    size = np.bincount(comp)
    if size.max(initial=0) == n or n <= BATCH_NODES:
        return solve(n, u, v, wl, lp)
    # components in order of size, cut into batches; singletons need no solver
    order = np.argsort(size, kind="stable")
    order = order[size[order] > 1]
    batch_of = np.full(size.size, -1)
    filled, batch = 0, 0
    for c, s in zip(order.tolist(), size[order].tolist(), strict=True):
        if filled and filled + s > BATCH_NODES:
            batch, filled = batch + 1, 0
        batch_of[c] = batch
        filled += s
    node_batch = batch_of[comp]  # [N], -1: a singleton component
    labels = np.arange(n)  # singletons keep their own label
    same = comp[u] == comp[v]
    edge_batch = np.where(same, node_batch[u], -1)
    for b in range(batch + 1 if order.size else 0):
        nodes = np.flatnonzero(node_batch == b)
        local = np.full(n, -1)
        local[nodes] = np.arange(nodes.size)
        mine = edge_batch == b
        sub = solve(nodes.size, local[u[mine]], local[v[mine]], wl[mine],
                    None if lp is None else lp[nodes])
        labels[nodes] = n + nodes[sub]  # a member's index: distinct across batches
    return labels


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
    *,
    monotone: bool,
) -> np.ndarray:
    """Greedy contraction of a sparse graph → labels [N].

    Repeatedly merges the two adjacent clusters of highest ``score(a, b, weight_ab)`` while it
    is positive. Edge weights add up when clusters merge; ``absorb(a, b)`` updates the caller's
    per-cluster state when b merges into a.

    The heap is lazy: every pair of positive score has an entry whose key is at least that
    score (while its summed weight is unchanged), and a popped pair merges only when its score,
    computed anew, is still the largest key; otherwise it goes back with its current score. So
    the merge order is that of an eager heap, but a merge pushes only the pairs whose weight
    changed (the absorbed cluster's neighbours), not every pair of the merged cluster: with
    ``monotone`` scores (they never rise while the weight stays: average linkage, GAEC without
    class term) the current score is a lasting bound; otherwise (GAEC with the class term,
    which is <= 0) the weight is, and a pair put back with its exact score is keyed by the
    weight again once either cluster changes.
    """
    adj: list[dict[int, float]] = [{} for _ in range(n)]
    for a, b, x in zip(u.tolist(), v.tolist(), weight.tolist(), strict=True):
        adj[a][b] = x
        adj[b][a] = x
    alive = [True] * n
    version = [0] * n
    # partners put back with an exact key (or dropped at a loss) since the last change
    exact: list[list[int]] = [[] for _ in range(n)]
    parent = np.arange(n)
    bound = score(u, v, weight) if monotone else weight
    # entries: (-key, a, b, weight, version of a, version of b); version -1: a bound
    heap = [
        (-g, a, b, x, -1, -1)
        for g, a, b, x in zip(bound.tolist(), u.tolist(), v.tolist(), weight.tolist(),
                              strict=True)
        if g > GAIN_TOL
    ]
    heapq.heapify(heap)
    while heap:
        key, a, b, x, va, vb = heapq.heappop(heap)
        if not (alive[a] and alive[b]) or adj[a].get(b) != x:
            continue  # a cluster is gone, or the weight changed and a fresh entry exists
        if va >= 0 and (version[a] != va or version[b] != vb):
            continue  # an exact key gone stale; the pair was keyed by its weight again
        if va < 0:
            g = float(score(a, np.array([b]), np.array([x]))[0])
            top = -heap[0][0] if heap else -np.inf
            # not the largest any more (or no gain left): back with its current score
            if g <= GAIN_TOL or (g < -key - 1e-12 * max(1.0, -key) and g <= top):
                if g > GAIN_TOL:
                    heapq.heappush(heap, (-g, a, b, x, -1, -1) if monotone
                                   else (-g, a, b, x, version[a], version[b]))
                if not monotone:  # even at a loss now: the class term may rise again
                    exact[a].append(b)
                    exact[b].append(a)
                continue
        if len(adj[a]) < len(adj[b]):  # keep the cluster with more neighbours
            a, b = b, a
        parent[b] = a
        alive[b] = False
        adj_a, adj_b = adj[a], adj[b]
        del adj_a[b]
        del adj_b[a]
        for c, y in adj_b.items():
            adj_c = adj[c]
            del adj_c[b]
            z = adj_a.get(c, 0.0) + y
            adj_a[c] = z
            adj_c[a] = z
        absorb(a, b)
        version[a] += 1
        fresh = list(adj_b)
        if not monotone:  # pairs keyed exactly are keyed by their weight again
            fresh += [c for c in exact[a] + exact[b] if alive[c] and c in adj_a]
            exact[a], exact[b] = [], []
        adj[b] = {}
        if fresh:
            nbr = np.unique(np.array(fresh, dtype=np.int64))
            xs = np.array([adj_a[c] for c in nbr.tolist()])
            g = score(a, nbr, xs) if monotone else xs
            good = g > GAIN_TOL
            for c, xc, gc in zip(nbr[good].tolist(), xs[good].tolist(), g[good].tolist(),
                                 strict=True):
                heapq.heappush(heap, (-gc, a, c, xc, -1, -1))
    return resolve(parent)


def gaec_sparse(
    n: int, u: np.ndarray, v: np.ndarray, wl: np.ndarray, lp: np.ndarray | None
) -> np.ndarray:
    """Greedy additive edge contraction of an edge list → labels [N].

    u, v int64 [E] unique edges u < v, wl float64 [E] their logits, lp float64 [N, C] class
    log-probs or None (then the class term is left out).
    """
    lsum = None if lp is None else lp.copy()  # [N, C] summed log-probs per cluster

    def score(a: np.ndarray | int, b: np.ndarray, x: np.ndarray) -> np.ndarray:
        return x if lsum is None else x + class_gain(lsum[a], lsum[b])

    def absorb(a: int, b: int) -> None:
        if lsum is not None:
            lsum[a] += lsum[b]

    return _contract(n, u, v, wl, score, absorb, monotone=lsum is None)


def _gaec_kl_sparse(
    n: int, u: np.ndarray, v: np.ndarray, wl: np.ndarray, lp: np.ndarray | None
) -> np.ndarray:
    starts = [gaec_sparse(n, u, v, wl, lp), _average_sparse(n, u, v, wl, None)]
    if n <= SINGLETON_START_MAX_NODES:
        starts.append(np.arange(n))
    return best_local_search(_symmetric_csr(n, u, v, wl), lp, starts, _sparse_pair_sums(u, v, wl),
                             kl_max_nodes=KL_MAX_NODES)


def _average_sparse(
    n: int, u: np.ndarray, v: np.ndarray, wl: np.ndarray, lp: np.ndarray | None
) -> np.ndarray:
    size = np.ones(n)

    def score(a: np.ndarray | int, b: np.ndarray, x: np.ndarray) -> np.ndarray:
        return x / (size[a] * size[b])  # mean probability - 0.5, unlisted pairs count 0.5

    def absorb(a: int, b: int) -> None:
        size[a] += size[b]

    return _contract(n, u, v, expit(wl) - 0.5, score, absorb, monotone=True)


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
