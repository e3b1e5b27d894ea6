"""Relational transformer: every box attends to every other box of its image.

Pre-norm encoder layers whose attention logits get a per-head bias computed from the pairwise
box geometry (Relation Networks for object detection, Hu et al. 2018). Padding boxes are masked
as keys. No positional index is used, so the encoder is permutation-equivariant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detgroup.ops.boxes import PAIR_FEATURES

# Large negative logit for padded keys: finite (so a fully padded row gives a uniform, not NaN,
# softmax) and representable in float16.
_MASKED = -1e4


class RelationLayer(nn.Module):
    """One pre-norm block: x + Attn(LN(x), bias) then x + FFN(LN(x))."""

    def __init__(self, *, dim: int, heads: int, ffn_mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_mult * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_mult * dim, dim),
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_bias: Tensor) -> Tensor:
        """x: [B, N, D]; attn_bias: [B, H, N, N] additive (padding already masked)."""
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, N, D/H]
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias.to(q.dtype),
            dropout_p=self.dropout if self.training else 0.0,
        )  # [B, H, N, D/H]
        x = x + self.drop(self.proj(attn.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.ffn(self.norm2(x)))


class RelationEncoder(nn.Module):
    """A stack of :class:`RelationLayer` with geometry biases; ``layers=0`` is the identity."""

    def __init__(
        self, *, dim: int, layers: int, heads: int, ffn_mult: int = 4, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.heads = heads
        self.layers = nn.ModuleList(
            RelationLayer(dim=dim, heads=heads, ffn_mult=ffn_mult, dropout=dropout)
            for _ in range(layers)
        )
        self.geometry_bias = (
            nn.Sequential(
                nn.Linear(PAIR_FEATURES, 64), nn.GELU(), nn.Linear(64, heads * layers)
            )
            if layers
            else None
        )
        self.norm = nn.LayerNorm(dim) if layers else nn.Identity()

    def forward(self, tokens: Tensor, geometry: Tensor, pad_mask: Tensor) -> Tensor:
        """
        Args:
            tokens: [B, N, D] box tokens.
            geometry: [B, N, N, 7] from :func:`detgroup.ops.boxes.pairwise_geometry`.
            pad_mask: [B, N] bool, True where the box is padding.

        Returns:
            h [B, N, D].
        """
        if not self.layers or tokens.shape[1] == 0:
            return self.norm(tokens)
        b, n, _ = tokens.shape
        bias = self.geometry_bias(geometry)  # [B, N, N, L * H]
        bias = bias.view(b, n, n, len(self.layers), self.heads).permute(3, 0, 4, 1, 2)
        key_mask = pad_mask[:, None, None, :].expand(b, self.heads, n, n)  # [B, H, N, N]
        x = tokens
        for layer, layer_bias in zip(self.layers, bias, strict=True):  # layer_bias [B, H, N, N]
            x = layer(x, torch.where(key_mask, _MASKED, layer_bias))
        return self.norm(x)
