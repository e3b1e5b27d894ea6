"""Encoders of what a box carries beyond pixels, and their fusion into the box token.

* :class:`TextEncoder` — the hashed character n-grams of a box's text (``detgroup.ops.text``)
  averaged by an ``nn.EmbeddingBag``, with the word-shape bits, projected to the token width.
* :class:`AttributeEncoder` — a small MLP on the box's declared numeric attributes.
* :class:`TokenFusion` — adds them to the box token (``sum``) or concatenates and projects
  (``concat``), then layer-normalises, before the relational transformer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detgroup.ops.text import SHAPE_FEATURES

FUSIONS = ("sum", "concat")


class TextEncoder(nn.Module):
    """Texts of the B x N (padded) boxes of a batch → tokens [B, N, D].

    Embedding row 0 is the empty / missing text; hash ``h >= 0`` uses row ``h % buckets + 1``.
    """

    def __init__(self, *, buckets: int, embed_dim: int, dim: int) -> None:
        super().__init__()
        self.buckets = buckets
        self.bag = nn.EmbeddingBag(buckets + 1, embed_dim, mode="mean")
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim + SHAPE_FEATURES, dim), nn.GELU(), nn.Linear(dim, dim)
        )

    def forward(self, hashes: Tensor, offsets: Tensor, shape: Tensor) -> Tensor:
        """
        Args:
            hashes: [T] int64 n-gram hashes of all B * N boxes, box by box (row-major b, n).
            offsets: [B * N] int64, where each box's hashes start (each box has >= 1).
            shape: [B, N, SHAPE_FEATURES] word-shape bits.

        Returns:
            [B, N, D].
        """
        rows = torch.where(hashes < 0, torch.zeros_like(hashes), hashes % self.buckets + 1)
        bags = self.bag(rows, offsets)  # [B * N, E]
        bags = bags.view(shape.shape[0], shape.shape[1], self.bag.embedding_dim)  # [B, N, E]
        return self.mlp(torch.cat([bags, shape.to(bags.dtype)], dim=-1))


class AttributeEncoder(nn.Module):
    """Attributes [B, N, A] → tokens [B, N, D] (a two-layer MLP)."""

    def __init__(self, *, num_attributes: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(num_attributes, hidden), nn.GELU(), nn.Linear(hidden, dim)
        )

    def forward(self, attributes: Tensor) -> Tensor:
        return self.mlp(attributes)


class TokenFusion(nn.Module):
    """Box token [B, N, D] + any number of item tokens [B, N, D] → fused tokens [B, N, D].

    ``sum``: LayerNorm(box + items); ``concat``: LayerNorm(Linear([box, items...])).
    """

    def __init__(self, *, dim: int, parts: int, mode: str = "sum") -> None:
        super().__init__()
        if mode not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {mode!r}")
        self.mode = mode
        self.project = nn.Linear(parts * dim, dim) if mode == "concat" else None
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: list[Tensor]) -> Tensor:
        if self.project is None:
            fused = tokens[0]
            for extra in tokens[1:]:
                fused = fused + extra
        else:
            fused = self.project(torch.cat(tokens, dim=-1))
        return self.norm(fused)
