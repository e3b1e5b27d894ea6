"""RoI features: MultiScaleRoIAlign on the backbone maps + box geometry → one token per box."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign

from detgroup.ops.boxes import BOX_FEATURES, box_features


class RoITokenizer(nn.Module):
    """Turn the boxes of a padded batch into tokens ``[B, N, D]``.

    Appearance: ``torchvision.ops.MultiScaleRoIAlign`` (level chosen by box size) on a grid of
    ``roi_size`` x ``roi_width`` bins (down x across; ``roi_width=0``: square), flattened and
    projected by a two-layer MLP. With ``context > 0`` a second grid is pooled on the box grown by
    ``context`` x its height on every side (what surrounds a word: the rule it is written on, the
    frame of a field, the blank after a label) and concatenated to the first. Position: an MLP
    on :func:`box_features`, added.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        featmap_names: list[str],
        dim: int,
        roi_size: int = 7,
        roi_width: int = 0,
        context: float = 0.0,
        sampling_ratio: int = 2,
        canonical_scale: int = 224,
    ) -> None:
        super().__init__()
        width = roi_width or roi_size  # bins across; down is roi_size
        self.context = context
        pools = 2 if context > 0 else 1  # the box itself, and the box with its surroundings
        self.pool = MultiScaleRoIAlign(
            featmap_names,
            output_size=(roi_size, width),
            sampling_ratio=sampling_ratio,
            canonical_scale=canonical_scale,
        )
        self.appearance = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(pools * in_channels * roi_size * width, dim * 2),
            nn.GELU(),
            nn.Linear(dim * 2, dim),
        )
        self.position = nn.Sequential(nn.Linear(BOX_FEATURES, dim), nn.GELU(), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)

    def pooled(self, features: OrderedDict[str, Tensor], boxes: Tensor, padded_hw: tuple[int, int]
               ) -> Tensor:
        """RoIAlign output for every (padded) box: [B * N, C, roi_size, roi_width]."""
        batch = boxes.shape[0]
        return self.pool(features, list(boxes.unbind(0)), [padded_hw] * batch)

    def forward(
        self,
        features: OrderedDict[str, Tensor],
        boxes: Tensor,
        image_sizes: Tensor,
        padded_hw: tuple[int, int],
    ) -> Tensor:
        """
        Args:
            features: backbone maps of the padded batch, finest first.
            boxes: [B, N, 4] xyxy absolute pixels (padding rows may be any finite box).
            image_sizes: [B, 2] (H, W) of each image before padding.
            padded_hw: (H, W) of the padded batch tensor.

        Returns:
            tokens [B, N, D].
        """
        batch, n = boxes.shape[:2]
        if n == 0:
            return boxes.new_zeros(batch, 0, self.norm.normalized_shape[0])
        roi = self.pooled(features, boxes, padded_hw)  # [B * N, C, roi_size, roi_width]
        if self.context > 0:
            grow = (boxes[..., 3:4] - boxes[..., 1:2]).clamp(min=1.0) * self.context  # [B, N, 1]
            around = boxes + torch.cat([-grow, -grow, grow, grow], dim=-1)  # [B, N, 4]
            roi = torch.cat([roi, self.pooled(features, around, padded_hw)], dim=1)  # 2C channels
        tokens = self.appearance(roi).view(batch, n, -1)  # [B, N, D]
        tokens = tokens + self.position(box_features(boxes, image_sizes))
        return self.norm(tokens)


class LayoutTokenizer(nn.Module):
    """Tokens ``[B, N, D]`` from box geometry alone (``model.backbone.name: none``): an MLP on
    :func:`box_features`, layer-normalised. Same call as :class:`RoITokenizer`; no features."""

    def __init__(self, *, dim: int) -> None:
        super().__init__()
        self.position = nn.Sequential(nn.Linear(BOX_FEATURES, dim), nn.GELU(), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        features: OrderedDict[str, Tensor],
        boxes: Tensor,
        image_sizes: Tensor,
        padded_hw: tuple[int, int],
    ) -> Tensor:
        """boxes [B, N, 4] xyxy px, image_sizes [B, 2] (H, W) → tokens [B, N, D]."""
        return self.norm(self.position(box_features(boxes, image_sizes)))
