"""Per-box crops at their own resolution (``model.crop``): each box cut from the image itself
and encoded by a small CNN shared by all boxes.

A box of a 20 px glyph covers a few cells of a stride-4 feature map; its RoI token sees it
through a 7 x 7 grid of those cells. :class:`CropEncoder` instead pools the box from the
*normalised pixels* with ``torchvision.ops.roi_align`` onto a ``size`` x ``size`` grid, or
``size`` x ``width`` (a word: 16 x 64), the box padded around its centre to the grid's aspect,
so that its own aspect is kept, and grown by ``context`` x each side on both ends, then a four-
layer CNN (three stride-2 stages; with ``norm`` a GroupNorm after each convolution, per crop)
and a linear layer make one token [D] per box. Crops of all B x N boxes are one batch of the
CNN: no loop over boxes. The crops are cut in ``forward`` from the image the model is given, so
any augmentation of the image and its boxes applies to them too.

``augment`` (:class:`CropAugment`, training only, off by default) additionally warps each crop by
its own random affine map (rotation, shear, scale, shift), drawn from ``torch``'s generator: the
pair head then has to see two drawings of one character as alike under the small distortions a
new drawer, shelf angle or cell shape brings. The warped crop is sampled from the *image* (not
from the unwarped crop), so that it reads the real pixels around the box instead of zeros.

:func:`check_crop_inputs` turns the inputs a crop cannot be cut from (a box of no width or
height inside its image, an image smaller than the crop) into a
:class:`~detgroup.errors.DetgroupError` that names the box or the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from detgroup.errors import DetgroupError

CROP_FUSIONS = ("add", "replace")
MIN_CROP_SIZE = 8  # three stride-2 stages keep at least one cell
CROP_NORM_GROUPS = 8  # GroupNorm groups of each convolution with ``norm`` (fewer if indivisible)


@dataclass(frozen=True)
class CropAugment:
    """The range of the random affine map of each training crop (all 0: none).

    ``rotate`` and ``shear`` in degrees (uniform in +-), ``scale`` a fraction (uniform in 1 +-
    scale), ``translate`` a fraction of the crop's side (uniform in +-)."""

    rotate: float = 0.0
    shear: float = 0.0
    scale: float = 0.0
    translate: float = 0.0

    @property
    def enabled(self) -> bool:
        return any(v > 0 for v in (self.rotate, self.shear, self.scale, self.translate))


def random_affine(count: int, augment: CropAugment, *, device: torch.device,
                  dtype: torch.dtype) -> Tensor:
    """``count`` random affine maps of the crop plane, in units of the crop's half side:
    [count, 2, 3] (rotation @ shear / scale, then a shift), taking an output point of the crop
    to the point of the unwarped crop it is read from."""
    def uniform(limit: float) -> Tensor:  # [count]
        return (torch.rand(count, device=device, dtype=dtype) * 2 - 1) * limit

    angle = uniform(math.radians(augment.rotate))  # [count]
    shear = torch.tan(uniform(math.radians(augment.shear)))  # [count]
    scale = 1 + uniform(augment.scale)  # [count]
    cos, sin = torch.cos(angle), torch.sin(angle)
    # rotation [[c, -s], [s, c]] @ shear [[1, k], [0, 1]], divided by the scale: a crop scaled
    # up by s reads a window 1 / s the size
    linear = torch.stack([torch.stack([cos, cos * shear - sin], -1),
                          torch.stack([sin, sin * shear + cos], -1)], -2) / scale[:, None, None]
    shift = torch.stack([uniform(2 * augment.translate), uniform(2 * augment.translate)], -1)
    return torch.cat([linear, shift[..., None]], dim=-1)  # [count, 2, 3]


def square_crop_boxes(boxes: Tensor, context: float) -> Tensor:
    """The square crop window of each box: centred on it, side max(w, h) x (1 + 2 context).

    Args:
        boxes: [..., 4] xyxy px.

    Returns:
        [..., 4] xyxy px (may reach outside the image; roi_align reads zeros there).
    """
    return crop_windows(boxes, context, 1.0)


def crop_windows(boxes: Tensor, context: float, aspect: float = 1.0) -> Tensor:
    """The crop window of each box for a grid ``aspect`` = width / height: centred on the box,
    the smallest window of that aspect that holds it, each side grown by ``context`` x its
    length on both ends (``aspect`` 1: :func:`square_crop_boxes`).

    Args:
        boxes: [..., 4] xyxy px.

    Returns:
        [..., 4] xyxy px (may reach outside the image; roi_align reads zeros there).
    """
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2  # [..., 2]
    wh = boxes[..., 2:] - boxes[..., :2]  # [..., 2]
    height = torch.maximum(wh[..., 1:2], wh[..., 0:1] / aspect)  # [..., 1]
    half = torch.cat([height * aspect, height], dim=-1) * (0.5 + context)  # [..., 2]
    return torch.cat([centre - half, centre + half], dim=-1)


def check_crop_inputs(boxes: Tensor, pad_mask: Tensor, image_sizes: Tensor, size: int,
                      width: int = 0) -> None:
    """Raise :class:`DetgroupError` if a crop cannot be cut: an image smaller than the
    ``size`` x ``width`` px crop (``model.crop.size`` / ``width``; 0: square), or a real box with
    no width or height once clipped to its image (named by image and box index)."""
    # boxes: [B, N, 4] xyxy px; pad_mask: [B, N] bool (True = padding, not checked);
    # image_sizes: [B, 2] (H, W)
    width = width or size
    small = (image_sizes[:, 0] < size) | (image_sizes[:, 1] < width)  # [B]
    if bool(small.any()):
        b = int(torch.nonzero(small)[0, 0])
        h, w = (int(v) for v in image_sizes[b])
        wide = f", model.crop.width = {width} px" if width != size else ""
        raise DetgroupError(f"image {b}: {h} x {w} px is smaller than the crop "
                            f"(model.crop.size = {size} px{wide})")
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
                 in_channels: int = 3, width: int = 0,
                 augment: CropAugment | None = None, norm: bool = False) -> None:
        super().__init__()
        self.augment = augment or CropAugment()
        if min(size, width or size) < MIN_CROP_SIZE:
            raise ValueError(f"crop size must be >= {MIN_CROP_SIZE}, got {size} x {width}")
        self.size = size  # grid height
        self.width = width or size  # grid width (0: square)
        self.context = context
        c = channels
        layers: list[nn.Module] = []
        for k, (cin, cout) in enumerate([(in_channels, c), (c, c), (c, 2 * c), (2 * c, 2 * c)]):
            layers.append(nn.Conv2d(cin, cout, 3, stride=1 if k == 0 else 2, padding=1))
            if norm:  # per crop, so padding boxes and batch composition change nothing
                layers.append(nn.GroupNorm(math.gcd(CROP_NORM_GROUPS, cout), cout))
            layers.append(nn.GELU())
        self.cnn = nn.Sequential(*layers)
        rows, cols = size, self.width
        for _ in range(3):  # a stride-2, padding-1, 3 x 3 convolution
            rows, cols = (rows + 1) // 2, (cols + 1) // 2
        self.project = nn.Sequential(nn.Flatten(1), nn.Linear(2 * c * rows * cols, dim))
        self.norm = nn.LayerNorm(dim)

    def crops(self, pixels: Tensor, boxes: Tensor) -> Tensor:
        """The crops of all boxes: [B * N, 3, size, width] (row-major b, n).

        Args:
            pixels: [B, 3, H, W] normalised image, zero outside each image.
            boxes: [B, N, 4] xyxy px.
        """
        b, n = boxes.shape[:2]
        ids = torch.arange(b, device=boxes.device, dtype=boxes.dtype)[:, None, None].expand(
            b, n, 1)  # [B, N, 1]
        window = crop_windows(boxes, self.context, self.width / self.size)  # [B, N, 4]
        rois = torch.cat([ids, window], dim=-1).reshape(b * n, 5)  # [B * N, 5]
        # sampling_ratio -1: as many samples per bin as the box has pixels per bin (no aliasing
        # when a large box shrinks to the grid)
        return roi_align(pixels, rois, (self.size, self.width), spatial_scale=1.0,
                         sampling_ratio=-1, aligned=True)

    def warped_crops(self, pixels: Tensor, boxes: Tensor, affine: Tensor) -> Tensor:
        """The crops of all boxes, each warped by its affine map: [B * N, 3, size, width].

        With the identity map it is the crop of :meth:`crops` read by bilinear sampling (one
        sample per grid cell, where roi_align averages as many as a big box has pixels per cell;
        the same for boxes no larger than the grid).

        Args:
            pixels: [B, 3, H, W] normalised image, zero outside each image.
            boxes: [B, N, 4] xyxy px.
            affine: [B * N, 2, 3] maps in units of the crop's half side (:func:`random_affine`).
        """
        b, n = boxes.shape[:2]
        h, w = pixels.shape[-2:]
        window = crop_windows(boxes, self.context, self.width / self.size).reshape(b * n, 4)
        centre = (window[:, :2] + window[:, 2:]) / 2  # [B * N, 2] (x, y) px
        half = (window[:, 2:] - window[:, :2]) / 2  # [B * N, 2] (x, y) px
        # cell centres of the grid in units of the half side ([-1, 1], as roi_align aligned=True)
        ys = (torch.arange(self.size, device=boxes.device, dtype=boxes.dtype) + 0.5) \
            / self.size * 2 - 1  # [size]
        xs = (torch.arange(self.width, device=boxes.device, dtype=boxes.dtype) + 0.5) \
            / self.width * 2 - 1  # [width]
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [size, width, 2]
        # the map acts in pixels: scale the half-side units by the window's own half sides so that
        # a rotation of a wide (word) crop stays a rotation
        unit = grid * half[:, None, None, :]  # [B * N, size, width, 2] px from the centre
        linear, shift = affine[:, :, :2], affine[:, :, 2]  # [B * N, 2, 2], [B * N, 2]
        point = torch.einsum("kij,kyxj->kyxi", linear, unit) + (shift * half)[:, None, None]
        point = point + centre[:, None, None]  # [B * N, size, width, 2] image px
        # to grid_sample's [-1, 1] of the padded image (align_corners=False: pixel edges)
        norm = torch.stack([point[..., 0] / w, point[..., 1] / h], dim=-1) * 2 - 1
        norm = norm.view(b, n * self.size, self.width, 2)  # the crops of image b stacked in rows
        out = F.grid_sample(pixels, norm.to(pixels.dtype), mode="bilinear",
                            padding_mode="zeros", align_corners=False)  # [B, 3, N * size, width]
        c = pixels.shape[1]
        return out.view(b, c, n, self.size, self.width).transpose(1, 2).reshape(
            b * n, c, self.size, self.width)

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
        if self.training and self.augment.enabled:
            affine = random_affine(b * n, self.augment, device=boxes.device, dtype=boxes.dtype)
            crops = self.warped_crops(pixels, boxes, affine)  # [B * N, 3, size, width]
        else:
            crops = self.crops(pixels, boxes)  # [B * N, 3, size, width]
        x = self.cnn(crops)  # [B * N, 2c, rows, cols]
        tokens = self.norm(self.project(x)).view(b, n, dim)  # [B, N, D]
        return tokens * (~pad_mask)[..., None].to(tokens.dtype)
