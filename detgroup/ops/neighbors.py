"""Neighbour graphs of boxes in numpy (no torch): the pairs a sparse decoder decodes on."""

from __future__ import annotations

import numpy as np

from detgroup.errors import DetgroupError
from detgroup.ops.arrays import as_float_array, require_finite


def neighbor_edges(boxes: np.ndarray, k: int) -> np.ndarray:
    """The k-nearest-neighbour graph of boxes by the gap between their edges.

    Parameters
    ----------
    boxes : np.ndarray
        float [N, 4] (x1, y1, x2, y2).
    k : int
        Neighbours per box (>= 1); k >= N - 1 lists every pair.

    Returns
    -------
    np.ndarray
        int64 [E, 2] unique pairs (i, j), i < j, sorted: i and j are linked when j is among
        the k nearest boxes of i or i among those of j. The distance is the length of the
        shortest segment between the two rectangles (0 when they touch or overlap); ties go to
        the lower index. O(N^2) time and memory, like the dense pair logits it is read from.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise DetgroupError(f"k must be an int >= 1, got {k!r}")
    b = as_float_array(boxes, "boxes")
    if b.ndim != 2 or b.shape[1] != 4:
        raise DetgroupError(f"boxes must have shape [N, 4] (xyxy), got {b.shape}")
    require_finite(b, "boxes")
    n = b.shape[0]
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    k = min(int(k), n - 1)
    gap_x = np.maximum(b[:, None, 0], b[None, :, 0]) - np.minimum(b[:, None, 2], b[None, :, 2])
    gap_y = np.maximum(b[:, None, 1], b[None, :, 1]) - np.minimum(b[:, None, 3], b[None, :, 3])
    dist = np.hypot(np.maximum(gap_x, 0.0), np.maximum(gap_y, 0.0))  # [N, N]
    np.fill_diagonal(dist, np.inf)
    nearest = np.argsort(dist, axis=1, kind="stable")[:, :k]  # [N, k]
    i = np.repeat(np.arange(n), k)
    j = nearest.ravel()
    pairs = np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1)
    return np.unique(pairs, axis=0).astype(np.int64)
