"""The decoders' entry points on dense pair logits: ``decode``, ``partition``,
``decode_on_neighbors`` (dense or, on the nearest boxes' pairs, sparse) and ``objective``.

The entry points on an edge list, ``decode_sparse`` / ``partition_sparse``, live in ``sparse``;
the result type ``Partition`` in ``result``; ``detgroup.decoder`` re-exports them all."""

from __future__ import annotations

import numpy as np

from detgroup.decoder.checks import as_log_probs, as_options, as_pair_logits
from detgroup.decoder.clusters import cluster_sums, compact
from detgroup.decoder.dense import DENSE_SOLVERS, METHODS, dense_pair_sums
from detgroup.decoder.exact import EXACT_MAX_NODES
from detgroup.decoder.result import Partition, assemble
from detgroup.decoder.sparse import decode_sparse
from detgroup.errors import DetgroupError
from detgroup.ops.neighbors import neighbor_edges


def decode(
    pair_logits: np.ndarray,
    class_logits: np.ndarray | None = None,
    method: str = "gaec-kl",
    consistency: str = "joint",
    boxes: np.ndarray | None = None,
) -> Partition:
    """Decode dense pair logits (and class logits) into categories and groups.

    Parameters
    ----------
    pair_logits : np.ndarray
        float [N, N], symmetric log-odds that boxes i and j are in one group; diagonal ignored.
    class_logits : np.ndarray or None
        float [N, C] category logits, or None (then every category is 0).
    method : str
        One of ``METHODS``: "gaec-kl", "average", "components", "exact".
    consistency : str
        "joint" or "forbid" (package docstring); has no effect without class logits.
    boxes : np.ndarray or None
        float [N, 4] (x1, y1, x2, y2); when given, groups are numbered left to right.

    Returns
    -------
    Partition
        Categories, groups, global cluster index, group scores and objective.

    Raises
    ------
    DetgroupError
        On malformed or non-finite input, an unknown method, or N > EXACT_MAX_NODES for "exact".
    """
    w = as_pair_logits(pair_logits)
    n = w.shape[0]
    lp, box = as_options(n, class_logits, method, METHODS, consistency, boxes)
    if method == "exact" and n > EXACT_MAX_NODES:
        raise DetgroupError(
            f"method 'exact' solves an integer program and is limited to {EXACT_MAX_NODES} boxes,"
            f" got {n}; use 'gaec-kl' or 'average'"
        )
    solve = DENSE_SOLVERS[method]
    uses_classes = method in ("gaec-kl", "exact")
    if lp is not None and consistency == "forbid":
        labels = np.empty(n, dtype=np.int64)
        predicted = lp.argmax(axis=1)
        offset = 0
        for c in np.unique(predicted):
            idx = np.flatnonzero(predicted == c)
            sub = solve(w[np.ix_(idx, idx)], None)
            labels[idx] = sub + offset
            offset += int(sub.max()) + 1
    else:
        labels = solve(w, lp if uses_classes else None)
    return assemble(labels, dense_pair_sums(w), lp, box)


def partition(
    pair_logits: np.ndarray,
    class_logits: np.ndarray | None = None,
    method: str = "gaec-kl",
    *,
    consistency: str = "joint",
    boxes: np.ndarray | None = None,
    pair_bias: float = 0.0,
    neighbors: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Categories int64 [N] and per-category group ids int64 [N]; see ``decode``.

    ``pair_bias`` is added to ``pair_logits`` before decoding (a checkpoint's calibrated
    ``decoder.pair_bias``); ``neighbors`` k > 0 decodes only the pairs among each box's k
    nearest boxes (:func:`decode_on_neighbors`; needs ``boxes``). With the settings a
    ``Grouper`` uses (``Grouper.decoder_settings``, or the ``.decoder.json`` that
    ``detgroup export`` writes) this gives ``Grouper.predict``'s categories and groups:
    ``partition(pair_logits, class_logits, boxes=boxes, **settings)``.
    """
    w = np.asarray(pair_logits)
    if w.ndim == 2 and w.shape[0] == w.shape[1] and np.issubdtype(w.dtype, np.floating):
        w = w + np.asarray(pair_bias, dtype=w.dtype)
        w = (w + w.T) / 2  # as the post-processing of the model does, in the input's precision
    else:
        w = as_pair_logits(pair_logits) + pair_bias
    result = decode_on_neighbors(w, class_logits, method=method, consistency=consistency,
                                 boxes=boxes, neighbors=neighbors)
    return result.categories, result.groups


def decode_on_neighbors(
    pair_logits: np.ndarray,
    class_logits: np.ndarray | None = None,
    *,
    method: str = "gaec-kl",
    consistency: str = "joint",
    boxes: np.ndarray | None = None,
    neighbors: int = 0,
) -> Partition:
    """``decode`` on every pair (``neighbors`` 0, or N <= k + 1), else ``decode_sparse`` on the
    pairs among each box's k nearest boxes (:func:`neighbor_edges`; other pairs neutral).

    pair_logits [N, N] symmetric, class_logits [N, C] or None, boxes [N, 4] xyxy (needed when
    ``neighbors`` > 0).
    """
    if isinstance(neighbors, bool) or not isinstance(neighbors, int | np.integer) \
            or neighbors < 0:
        raise DetgroupError(f"neighbors must be an int >= 0 (0: every pair), got {neighbors!r}")
    n = np.shape(pair_logits)[0] if np.ndim(pair_logits) else 0
    if neighbors == 0 or n <= neighbors + 1:
        return decode(pair_logits, class_logits, method=method, consistency=consistency,
                      boxes=boxes)
    if boxes is None:
        raise DetgroupError(f"neighbors={neighbors} decodes on the nearest boxes: give boxes")
    if method == "exact":
        raise DetgroupError("decoder method 'exact' decodes every pair; it cannot be used "
                            f"with neighbors={neighbors} (use neighbors 0)")
    edges = neighbor_edges(boxes, neighbors)  # [E, 2]
    w = np.asarray(pair_logits)
    return decode_sparse(n, edges, w[edges[:, 0], edges[:, 1]], class_logits, method=method,
                         consistency=consistency, boxes=boxes)


def objective(
    pair_logits: np.ndarray, cluster: np.ndarray, class_logits: np.ndarray | None = None
) -> float:
    """The decoder objective (package docstring) of a partition, higher is better.

    Parameters
    ----------
    pair_logits : np.ndarray
        float [N, N], symmetric; diagonal ignored.
    cluster : np.ndarray
        int [N], any labels; boxes with equal labels are in one cluster.
    class_logits : np.ndarray or None
        float [N, C]; adds each cluster's best summed log-probability.
    """
    w = as_pair_logits(pair_logits)
    n = w.shape[0]
    lp = as_log_probs(class_logits, n)
    labels = np.asarray(cluster)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DetgroupError(
            f"cluster must be an integer array of shape ({n},), got {labels.dtype} {labels.shape}"
        )
    lab, k = compact(labels)
    total = float(dense_pair_sums(w)(lab, k)[0].sum())
    if lp is not None:
        total += float(cluster_sums(lab, k, lp).max(axis=1).sum())
    return total
