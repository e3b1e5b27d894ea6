"""Per-box crops at their own resolution (``model.crop``): each box cut from the image itself
and encoded by a small CNN shared by all boxes.

A box of a 20 px glyph covers a few cells of a stride-4 feature map; its RoI token sees it
through a 7 x 7 grid of those cells. :class:`CropEncoder` instead pools the box from the
*normalised pixels* with ``torchvision.ops.roi_align`` onto a ``size`` x ``size`` grid (the box
padded to a square around its centre, so that the aspect is kept, and grown by ``context`` x
its side on every side), then a four-layer CNN (three stride-2 stages) and a linear layer
make one token [D] per box. Crops of all B x N boxes are one batch of the CNN: no loop over
boxes. The crops are cut in ``forward`` from the image the model is given, so any augmentation
of the image and its boxes applies to them too.

:func:`check_crop_inputs` turns the inputs a crop cannot be cut from (a box of no width or
height inside its image, an image smaller than the crop) into a
:class:`~detgroup.errors.DetgroupError` that names the box or the key.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from detgroup.errors import DetgroupError

CROP_FUSIONS = ("add", "replace")
MIN_CROP_SIZE = 8  # three stride-2 stages keep at least one cell


def square_crop_boxes(boxes: Tensor, context: float) -> Tensor:
    """The square crop window of each box: centred on it, side max(w, h) x (1 + 2 context).

    Args:
        boxes: [..., 4] xyxy px.

    Returns:
        [..., 4] xyxy px (may reach outside the image; roi_align reads zeros there).
    """
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2  # [..., 2]
    side = (boxes[..., 2:] - boxes[..., :2]).amax(dim=-1, keepdim=True)  # [..., 1]
    half = side * (0.5 + context)
    return torch.cat([centre - half, centre + half], dim=-1)


def check_crop_inputs(boxes: Tensor, pad_mask: Tensor, image_sizes: Tensor, size: int) -> None:
    """Raise :class:`DetgroupError` if a crop cannot be cut: an image with a side smaller than
    ``size`` px (``model.crop.size``), or a real box with no width or height once clipped to its
    image (named by image and box index).

    Args:
        boxes: [B, N, 4] xyxy px; pad_mask: [B, N] bool (True = padding, not checked);
        image_sizes: [B, 2] (H, W).
    """
    small = (image_sizes < size).any(dim=1)  # [B]
    if bool(small.any()):
        b = int(torch.nonzero(small)[0, 0])
        h, w = (int(v) for v in image_sizes[b])
        raise DetgroupError(f"image {b}: {h} x {w} px is smaller than the crop "
                            f"(model.crop.size = {size} px)")
    hw = image_sizes.to(boxes.dtype)  # [B, 2] (H, W)
    limit = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=1)[:, None]  # [B, 1, 4]
    clipped = torch.minimum(boxes.clamp(min=0), limit)  # [B, N, 4]
    empty = ((clipped[..., 2] <= clipped[..., 0]) | (clipped[..., 3] <= clipped[..., 1])
             | ~torch.isfinite(boxes).all(dim=-1)) & ~pad_mask  # [B, N]
    if bool(empty.any()):
        b, n = (int(v) for v in torch.nonzero(empty)[0])
        box = [round(float(v), 2) for v in boxes[b, n]]
        raise DetgroupError(f"image {b}, box {n} {box}: no width or height inside the "
                            f"{int(image_sizes[b, 0])} x {int(image_sizes[b, 1])} px image, "
                            "so no crop can be cut (model.crop)")


class CropEncoder(nn.Module):
    """Boxes of a padded batch → crop tokens [B, N, D] (see the module docstring).

    Tokens of padding boxes are zero.
    """

    def __init__(self, *, size: int, context: float, channels: int, dim: int,
                 in_channels: int = 3) -> None:
        super().__init__()
        if size < MIN_CROP_SIZE:
            raise ValueError(f"crop size must be >= {MIN_CROP_SIZE}, got {size}")
        self.size = size
        self.context = context
        c = channels
        self.cnn = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, padding=1), nn.GELU(),
            nn.Conv2d(c, c, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1), nn.GELU(),
        )
        cells = size
        for _ in range(3):
            cells = (cells + 1) // 2  # a stride-2, padding-1, 3 x 3 convolution
        self.project = nn.Sequential(nn.Flatten(1), nn.Linear(2 * c * cells * cells, dim))
        self.norm = nn.LayerNorm(dim)

    def crops(self, pixels: Tensor, boxes: Tensor) -> Tensor:
        """The crops of all boxes: [B * N, 3, size, size] (row-major b, n).

        Args:
            pixels: [B, 3, H, W] normalised image, zero outside each image.
            boxes: [B, N, 4] xyxy px.
        """
        b, n = boxes.shape[:2]
        ids = torch.arange(b, device=boxes.device, dtype=boxes.dtype)[:, None, None].expand(
            b, n, 1)  # [B, N, 1]
        window = square_crop_boxes(boxes, self.context)  # [B, N, 4]
        rois = torch.cat([ids, window], dim=-1).reshape(b * n, 5)  # [B * N, 5]
        # sampling_ratio -1: as many samples per bin as the box has pixels per bin (no aliasing
        # when a large box shrinks to the grid)
        return roi_align(pixels, rois, (self.size, self.size), spatial_scale=1.0,
                         sampling_ratio=-1, aligned=True)

    def forward(self, pixels: Tensor, boxes: Tensor, pad_mask: Tensor) -> Tensor:
        """
        Args:
            pixels: [B, 3, H, W] normalised image, zero outside each image.
            boxes: [B, N, 4] xyxy px (padding rows: any finite box).
            pad_mask: [B, N] bool, True where a box is padding.

        Returns:
            [B, N, D], zero on padding rows.
        """
        b, n = boxes.shape[:2]
        dim = self.norm.normalized_shape[0]
        if n == 0:
            return boxes.new_zeros(b, 0, dim)
        x = self.cnn(self.crops(pixels, boxes))  # [B * N, 2c, cells, cells]
        tokens = self.norm(self.project(x)).view(b, n, dim)  # [B, N, D]
        return tokens * (~pad_mask)[..., None].to(tokens.dtype)
