"""Candidate pairs of big scenes: each box's nearest boxes by edge gap and in an embedding.

Never holds an N x N matrix: distances are computed ``block`` query rows at a time against the
boxes of the same image, and only each row's k smallest survive. All boxes are
``(x1, y1, x2, y2)`` in absolute pixels. Boxes of a padded batch are addressed by their flat
index ``b * N + i`` into ``[B, N]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

# Overlapping and touching boxes all have gap 0; among them the nearer centre wins. The weight
# is small enough that it never reorders gaps that differ by more than a fraction of a pixel
# on images of a few thousand pixels.
GAP_TIE_BREAK = 1e-4


def gap_distance(boxes: Tensor, others: Tensor) -> Tensor:
    """Gap between the edges of boxes [R, 4] and others [M, 4] → [R, M].

    The length of the shortest segment between the two rectangles (0 when they touch or
    overlap), plus ``GAP_TIE_BREAK`` x the distance between their centres.
    """
    a, b = boxes[:, None, :], others[None, :, :]
    gap_x = (torch.maximum(a[..., 0], b[..., 0]) - torch.minimum(a[..., 2], b[..., 2])).clamp_min(0)
    gap_y = (torch.maximum(a[..., 1], b[..., 1]) - torch.minimum(a[..., 3], b[..., 3])).clamp_min(0)
    centre_a = (a[..., :2] + a[..., 2:]) / 2  # [R, 1, 2]
    centre_b = (b[..., :2] + b[..., 2:]) / 2  # [1, M, 2]
    centre = (centre_a - centre_b).norm(dim=-1)  # [R, M]
    return torch.hypot(gap_x, gap_y) + GAP_TIE_BREAK * centre


def embedding_distance(x: Tensor, others: Tensor) -> Tensor:
    """Squared Euclidean distance of embeddings x [R, E] and others [M, E] → [R, M]."""
    return (x.pow(2).sum(-1)[:, None] + others.pow(2).sum(-1)[None, :]
            - 2 * x @ others.T).clamp_min(0)


def blocked_knn(
    distance: Callable[[Tensor, Tensor], Tensor], points: Tensor, k: int, *, block: int = 1024
) -> Tensor:
    """The k nearest other points of every point by ``distance``, ``block`` rows at a time.

    Args:
        distance: (queries [R, F], points [M, F]) → [R, M] distances.
        points: [M, F] the points of one image.
        k: neighbours per point; 0 gives none, k > M - 1 gives all M - 1 others.
        block: query rows per distance computation (memory ``block`` x M).

    Returns:
        int64 [M, min(k, M - 1)] indices into ``points``, nearest first.
    """
    m = points.shape[0]
    k = min(int(k), m - 1)
    if k <= 0:
        return torch.zeros(m, 0, dtype=torch.long, device=points.device)
    out = []
    for start in range(0, m, block):
        stop = min(start + block, m)
        d = distance(points[start:stop], points)  # [R, M]
        rows = torch.arange(stop - start, device=points.device)
        d[rows, rows + start] = float("inf")  # not its own neighbour
        out.append(d.topk(k, dim=1, largest=False).indices)
    return torch.cat(out)


def gap_knn(boxes: Tensor, k: int, *, block: int = 1024) -> Tensor:
    """The k nearest other boxes of every box by :func:`gap_distance`: the same answer as
    ``blocked_knn(gap_distance, boxes, k)`` without scoring every pair.

    Boxes are taken a grid cell at a time (cells of about ``block`` / 4 boxes, at most
    ``block`` rows at once). Within the cell each box's k-th smallest distance r is an upper
    bound on its true k-th; a box at distance <= r has its centre within r + h_i + h_max of the
    box's centre (h: half a box diagonal, h_max the largest), so only boxes whose centres lie
    in the cell's bounding rectangle grown by that radius are scored exactly.

    Args:
        boxes: [M, 4] xyxy absolute pixels of one image.
        k: neighbours per box; 0 gives none, k > M - 1 gives all M - 1 others.

    Returns:
        int64 [M, min(k, M - 1)] indices into ``boxes``, nearest first.
    """
    m = boxes.shape[0]
    k = min(int(k), m - 1)
    if k <= 0:
        return torch.zeros(m, 0, dtype=torch.long, device=boxes.device)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # [M, 2]
    half_diag = (boxes[:, 2:] - boxes[:, :2]).norm(dim=-1) / 2  # [M]
    reach = half_diag.max()
    side = max(1, math.ceil(math.sqrt(4 * m / max(block, 1))))  # cells per side
    lo, hi = centre.amin(0), centre.amax(0)
    cell = ((centre - lo) / (hi - lo).clamp_min(1e-6) * side).long().clamp(0, side - 1)
    cell_id = cell[:, 1] * side + cell[:, 0]  # [M]
    order = torch.argsort(cell_id, stable=True)
    counts = torch.bincount(cell_id, minlength=side * side).tolist()
    out = torch.empty(m, k, dtype=torch.long, device=boxes.device)
    start = 0
    for count in counts:
        for sub in range(start, start + count, block):
            q = order[sub:min(sub + block, start + count)]  # [R] boxes of one cell
            _gap_knn_rows(boxes, centre, half_diag, reach, q, k, out)
        start += count
    return out


def _gap_knn_rows(boxes: Tensor, centre: Tensor, half_diag: Tensor, reach: Tensor, q: Tensor,
                  k: int, out: Tensor) -> None:
    """Fill out[q] (int64 [R, k]) with the k nearest boxes by gap of the boxes q [R]."""
    radius = torch.full(q.shape, float("inf"), dtype=boxes.dtype, device=boxes.device)
    if len(q) > k:
        own = gap_distance(boxes[q], boxes[q])  # [R, R]
        own.fill_diagonal_(float("inf"))
        radius = own.topk(k, dim=1, largest=False).values[:, -1] + half_diag[q] + reach
        # rounding margin: the bound is compared with centre offsets computed another way
        radius = radius * (1 + 1e-5) + 1e-3
    lo = (centre[q] - radius[:, None]).amin(0)  # [2]
    hi = (centre[q] + radius[:, None]).amax(0)
    cols = torch.nonzero(((centre >= lo) & (centre <= hi)).all(1)).squeeze(1)  # [M']
    d = gap_distance(boxes[q], boxes[cols])  # [R, M']
    d[cols[None, :] == q[:, None]] = float("inf")  # not its own neighbour
    out[q] = cols[d.topk(k, dim=1, largest=False).indices]


def symmetric_edges(neighbors: Tensor) -> Tensor:
    """Undirected edges of a neighbour table [M, k] (row i lists j) → int64 [E, 2], i < j,
    unique and sorted."""
    m, k = neighbors.shape
    if m == 0 or k == 0:
        return torch.zeros(0, 2, dtype=torch.long, device=neighbors.device)
    i = torch.arange(m, device=neighbors.device).repeat_interleave(k)
    j = neighbors.reshape(-1)
    key = torch.unique(torch.minimum(i, j) * m + torch.maximum(i, j))
    return torch.stack([key // m, key % m], dim=1)


def candidate_edges(
    boxes: Tensor,
    embed: Tensor | None,
    pad_mask: Tensor,
    *,
    gap_k: int,
    embed_k: int,
    block: int = 1024,
) -> Tensor:
    """Candidate pairs of a padded batch: per box its ``gap_k`` nearest boxes by
    :func:`gap_distance` and its ``embed_k`` nearest by :func:`embedding_distance`, within its
    own image, symmetrised and deduplicated.

    Args:
        boxes: [B, N, 4] xyxy absolute pixels.
        embed: [B, N, E] candidate embeddings (None: no embedding neighbours).
        pad_mask: [B, N] bool, True where padding (never a candidate).
        gap_k, embed_k: neighbours per box of each kind (0: none of that kind; more than the
            image's other boxes: all of them).
        block: query rows per distance computation.

    Returns:
        int64 [E, 2] flat indices ``b * N + i`` with i < j (same image), unique and sorted.
    """
    b, n = pad_mask.shape
    parts = []
    with torch.no_grad():
        for image in range(b):
            real = torch.nonzero(~pad_mask[image]).squeeze(1)  # [n_b]
            if real.numel() < 2:
                continue
            local = []
            if gap_k > 0:
                nb = gap_knn(boxes[image, real], gap_k, block=block)
                local.append(symmetric_edges(nb))
            if embed is not None and embed_k > 0:
                nb = blocked_knn(embedding_distance, embed[image, real].float(), embed_k,
                                 block=block)
                local.append(symmetric_edges(nb))
            if local:
                parts.append(real[torch.cat(local)] + image * n)  # [E_b, 2] flat
    if not parts:
        return torch.zeros(0, 2, dtype=torch.long, device=pad_mask.device)
    return unique_edges(torch.cat(parts), b * n)


def unique_edges(edges: Tensor, num_nodes: int) -> Tensor:
    """Edges [E, 2] → int64 [E', 2] with i < j, self pairs dropped, unique and sorted."""
    i, j = edges[:, 0], edges[:, 1]
    keep = i != j
    key = torch.unique(torch.minimum(i, j)[keep] * num_nodes + torch.maximum(i, j)[keep])
    return torch.stack([key // num_nodes, key % num_nodes], dim=1)


def random_pairs(pad_mask: Tensor, per_box: int, *, generator: torch.Generator | None = None
                 ) -> Tensor:
    """``per_box`` random partners for every real box, drawn uniformly among the other real
    boxes of its image → int64 [E, 2] flat indices (i < j, unique; self draws dropped)."""
    b, n = pad_mask.shape
    real_flat = torch.nonzero(~pad_mask.reshape(-1)).squeeze(1)  # [M] sorted by image
    if per_box <= 0 or real_flat.numel() == 0:
        return torch.zeros(0, 2, dtype=torch.long, device=pad_mask.device)
    counts = (~pad_mask).sum(1)  # [B]
    starts = torch.cumsum(counts, 0) - counts  # [B] offset of each image in real_flat
    image = real_flat // n  # [M]
    src = real_flat.repeat_interleave(per_box)  # [M * r]
    img = image.repeat_interleave(per_box)
    draw = torch.rand(src.shape, generator=generator, device=pad_mask.device)
    pick = starts[img] + (draw * counts[img]).long().clamp_max(counts[img] - 1)
    return unique_edges(torch.stack([src, real_flat[pick]], dim=1), b * n)
