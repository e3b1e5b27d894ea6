"""Input validation of the decoders' public entry points (raises ``DetgroupError``)."""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax

from detgroup.errors import DetgroupError
from detgroup.ops.arrays import as_float_array, require_finite

CONSISTENCY = ("joint", "forbid")
# Pair logits may come from float32 math: allow this much asymmetry (relative to max |logit|).
_SYMMETRY_RTOL = 1e-4


def as_pair_logits(pair_logits: object) -> np.ndarray:
    """Validated float64 [N, N] copy, symmetrised, with a zero diagonal."""
    w = as_float_array(pair_logits, "pair_logits")
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise DetgroupError(f"pair_logits must be a square [N, N] array, got shape {w.shape}")
    np.fill_diagonal(w, 0.0)
    if not np.isfinite(w.sum()):  # one cheap pass; the sum is finite unless an entry is not
        require_finite(w, "pair_logits")
    n = w.shape[0]
    if n:
        half_diff = w - w.T
        half_diff *= 0.5
        w -= half_diff  # now (w + w.T) / 2
        worst = max(float(half_diff.max()), -float(half_diff.min()))
        if 2.0 * worst > _SYMMETRY_RTOL * max(1.0, float(w.max()), -float(w.min())):
            i, j = divmod(int(np.abs(half_diff).argmax()), n)
            raise DetgroupError(
                f"pair_logits must be symmetric: [{i}, {j}] = {w[i, j] + half_diff[i, j]:.6g} "
                f"but [{j}, {i}] = {w[j, i] + half_diff[j, i]:.6g}"
            )
    return w


def as_log_probs(class_logits: object, n: int) -> np.ndarray | None:
    """log_softmax of validated class logits, float64 [N, C], or None."""
    if class_logits is None:
        return None
    x = as_float_array(class_logits, "class_logits")
    if x.ndim != 2 or x.shape[0] != n or x.shape[1] < 1:
        raise DetgroupError(
            f"class_logits must have shape [N, C] = [{n}, C] with C >= 1, got {x.shape}"
        )
    require_finite(x, "class_logits")
    return log_softmax(x, axis=1)


def as_boxes(boxes: object, n: int) -> np.ndarray | None:
    if boxes is None:
        return None
    b = as_float_array(boxes, "boxes")
    if b.shape != (n, 4):
        raise DetgroupError(f"boxes must have shape [N, 4] = [{n}, 4] (xyxy), got {b.shape}")
    require_finite(b, "boxes")
    return b


def as_num_nodes(num_nodes: object) -> int:
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int | np.integer):
        raise DetgroupError(f"num_nodes must be an int, got {num_nodes!r}")
    if num_nodes < 0:
        raise DetgroupError(f"num_nodes must be >= 0, got {num_nodes}")
    return int(num_nodes)


def as_edge_list(
    edges: object, edge_logits: object, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique undirected edges u < v (int64 [E']) and their mean logits (float64 [E'])."""
    e = np.asarray(edges)
    if e.size == 0:
        e = e.reshape(0, 2)
    if e.ndim != 2 or e.shape[1] != 2 or not (e.size == 0 or np.issubdtype(e.dtype, np.integer)):
        raise DetgroupError(f"edges must be an integer array [E, 2], got {e.dtype} {e.shape}")
    x = as_float_array(edge_logits, "edge_logits")
    if x.shape != (e.shape[0],):
        raise DetgroupError(f"edge_logits must have shape [E] = [{e.shape[0]}], got {x.shape}")
    require_finite(x, "edge_logits")
    e = e.astype(np.int64)
    if e.size and (e.min() < 0 or e.max() >= n):
        raise DetgroupError(
            f"edges must index boxes in [0, {n}), got values in [{e.min()}, {e.max()}]"
        )
    u, v = e.min(axis=1), e.max(axis=1)
    keep = u != v
    key, inverse = np.unique(u[keep] * n + v[keep], return_inverse=True)
    inverse = inverse.ravel()
    logits = np.bincount(inverse, x[keep], key.size) / np.bincount(inverse, minlength=key.size)
    return key // max(n, 1), key % max(n, 1), logits


def check_choice(value: object, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise DetgroupError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def as_options(
    n: int,
    class_logits: object,
    method: object,
    methods: tuple[str, ...],
    consistency: object,
    boxes: object,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The checks every decoder entry point shares for N boxes: log-probs float64 [N, C] or
    None (``as_log_probs``), the method among ``methods``, the consistency, and boxes float64
    [N, 4] or None."""
    lp = as_log_probs(class_logits, n)
    check_choice(method, methods, "method")
    check_choice(consistency, CONSISTENCY, "consistency")
    return lp, as_boxes(boxes, n)
