"""Heads on the relational features h [B, N, D]: categories, and same-group pair logits.

Three pair heads, one per loss family (see ``detgroup.losses``):

* :class:`PairAffinityHead` — an MLP on (h_i ⊙ h_j, |h_i − h_j|, geometry_ij) → one logit per
  pair; symmetric by construction (optionally with text-layout geometry). Trained with
  class-balanced BCE.
* :class:`AssignmentHead` — a K-way soft cluster assignment per box; the pair probability is
  p_i · p_j (the L2C KCL/MCL formulation).
* :class:`EmbeddingHead` — an embedding per box (associative embedding); the pair logit falls
  linearly with the embedding distance and crosses 0 at half the push margin.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detgroup.ops.boxes import (
    LAYOUT_PAIR_FEATURES,
    SYM_PAIR_FEATURES,
    layout_pair_geometry,
    symmetric_pair_geometry,
)

_PROB_EPS = 1e-6


class CategoryHead(nn.Module):
    def __init__(self, *, dim: int, num_classes: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, num_classes))

    def forward(self, h: Tensor) -> Tensor:
        """h [B, N, D] → class logits [B, N, C]."""
        return self.mlp(h)


class PairAffinityHead(nn.Module):
    """Symmetric same-group logits from pair features, computed ``chunk`` rows at a time.

    ``layout=True`` adds :func:`~detgroup.ops.boxes.layout_pair_geometry` (gaps and overlaps in
    units of text height) to the pair features, for documents.
    """

    def __init__(self, *, dim: int, hidden: int, chunk: int = 256, layout: bool = False) -> None:
        super().__init__()
        self.chunk = chunk
        self.layout = layout
        geometry = SYM_PAIR_FEATURES + (LAYOUT_PAIR_FEATURES if layout else 0)
        self.mlp = nn.Sequential(
            nn.Linear(2 * dim + geometry, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, 1),
        )

    def _block(self, h: Tensor, boxes: Tensor, rows: slice, cols: slice) -> Tensor:
        hi = h[:, rows, None, :]  # [B, R, 1, D]
        hj = h[:, None, cols, :]  # [B, 1, K, D]
        geometry = symmetric_pair_geometry(boxes[:, rows], boxes[:, cols])  # [B, R, K, G]
        if self.layout:
            layout = layout_pair_geometry(boxes[:, rows], boxes[:, cols])  # [B, R, K, 6]
            geometry = torch.cat([geometry, layout], dim=-1)
        feats = torch.cat([hi * hj, (hi - hj).abs(), geometry.to(h.dtype)], dim=-1)
        return self.mlp(feats).squeeze(-1)  # [B, R, K]

    def forward(self, h: Tensor, boxes: Tensor) -> dict[str, Tensor]:
        """h [B, N, D], boxes [B, N, 4] xyxy → ``pred_affinity`` [B, N, N] logits.

        At inference with N > ``chunk`` only the blocks on and above the diagonal are
        evaluated, ``chunk`` rows at a time, and mirrored: the features are symmetric in
        (i, j), so this is exact and halves the work on big scenes.
        """
        n = h.shape[1]
        if self.training or n <= self.chunk:
            return {"pred_affinity": self._block(h, boxes, slice(None), slice(None))}
        out = h.new_empty(h.shape[0], n, n)
        for start in range(0, n, self.chunk):
            stop = min(start + self.chunk, n)
            block = self._block(h, boxes, slice(start, stop), slice(start, n))  # [B, R, N - s]
            out[:, start:stop, start:] = block
            out[:, start:, start:stop] = block.transpose(1, 2)
        return {"pred_affinity": out}


class AssignmentHead(nn.Module):
    """Soft assignment to ``num_clusters`` clusters; pair logit = logit(p_i · p_j)."""

    def __init__(self, *, dim: int, num_clusters: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, num_clusters))

    def forward(self, h: Tensor, boxes: Tensor) -> dict[str, Tensor]:
        logits = self.mlp(h)  # [B, N, K]
        prob = logits.softmax(-1)
        same = (prob @ prob.transpose(1, 2)).clamp(_PROB_EPS, 1 - _PROB_EPS)  # [B, N, N]
        return {"pred_assign": logits, "pred_affinity": torch.logit(same)}


class EmbeddingHead(nn.Module):
    """Associative embedding; pair logit = (margin / 2 − ‖e_i − e_j‖) · 8 / margin."""

    def __init__(self, *, dim: int, embed_dim: int, margin: float) -> None:
        super().__init__()
        self.margin = margin
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, embed_dim))

    def forward(self, h: Tensor, boxes: Tensor) -> dict[str, Tensor]:
        embed = self.mlp(h)  # [B, N, E]
        dist = (embed[:, :, None, :] - embed[:, None, :, :]).pow(2).sum(-1).add(1e-12).sqrt()
        logits = (self.margin / 2 - dist) * (8.0 / self.margin)  # [B, N, N]
        return {"pred_embed": embed, "pred_affinity": logits}
