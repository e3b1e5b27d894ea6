"""Box geometry: the one box validator, per-box encodings and pairwise relations, batched with
padding.

All boxes are ``(x1, y1, x2, y2)`` in absolute pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detgroup.errors import DetgroupError

BOX_FEATURES = 9
PAIR_FEATURES = 7
SYM_PAIR_FEATURES = 6
_EPS = 1e-3


@dataclass(frozen=True)
class BoxFaults:
    """What is wrong with each of N boxes (xyxy px) in a ``width`` x ``height`` image.

    ``non_finite``, ``inverted`` (x2 < x1 or y2 < y1), ``empty`` (x2 <= x1 or y2 <= y1),
    ``no_area_inside`` (nothing left after clipping to the image) and ``outside`` (more than
    ``tolerance`` px outside the image) are bool [N]; ``clipped`` [N, 4] holds the boxes clipped
    to the image, in the boxes' dtype.
    """

    non_finite: np.ndarray
    inverted: np.ndarray
    empty: np.ndarray
    no_area_inside: np.ndarray
    outside: np.ndarray
    clipped: np.ndarray


def box_faults(boxes: np.ndarray, height: float, width: float, *,
               tolerance: float = 1.0) -> BoxFaults:
    """The box rule of every box source (COCO files, box files, the API, overlays): boxes
    [N, 4] xyxy px against a ``width`` x ``height`` image (``math.inf`` for no image).

    A box may extend up to ``tolerance`` px outside the image; the callers decide which faults
    are errors and word them (:func:`check_boxes` raises on the first).
    """
    with np.errstate(invalid="ignore"):
        non_finite = ~np.isfinite(boxes).all(axis=1)
        inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        clipped = boxes.copy()
        clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
        clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
        no_area = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
        outside = (np.abs(clipped - boxes) > tolerance).any(axis=1)
    return BoxFaults(non_finite=non_finite, inverted=inverted, empty=empty,
                     no_area_inside=no_area, outside=outside, clipped=clipped)


def check_boxes(
    boxes: Any, height: int, width: int, *, source: str = "boxes", clip: bool = False,
    tolerance: float = 1.0,
) -> np.ndarray:
    """Validate user boxes ``[N, 4]`` xyxy px against a ``width`` x ``height`` image.

    The rule of every box source (COCO files too, :func:`box_faults`): a box may extend up to
    ``tolerance`` px outside the image (it is kept as it is); further out it is an error unless
    ``clip``, which clips every box to the image. A box with no area inside the image is always
    an error. Returns float32 [N, 4]; a fault raises :class:`~detgroup.errors.DetgroupError`
    naming ``source``, the box index and the problem.
    """
    try:
        arr = np.asarray(boxes, dtype=np.float32)
    except (TypeError, ValueError):
        raise DetgroupError(f"{source}: boxes must be numbers in an [N, 4] array") from None
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise DetgroupError(f"{source}: boxes must have shape [N, 4], got {list(arr.shape)}")
    faults = box_faults(arr, height, width, tolerance=tolerance)
    bad = np.flatnonzero(faults.non_finite)
    if bad.size:
        raise DetgroupError(f"{source}: box {bad[0]} has a non-finite coordinate {arr[bad[0]]}")
    bad = np.flatnonzero(faults.empty)
    if bad.size:
        raise DetgroupError(
            f"{source}: box {bad[0]} {arr[bad[0]].tolist()} is empty or inside out "
            "(need x1 < x2 and y1 < y2, xyxy pixels)"
        )
    bad = np.flatnonzero(faults.no_area_inside)
    if bad.size:
        raise DetgroupError(
            f"{source}: box {bad[0]} {arr[bad[0]].tolist()} has no area inside the image "
            f"({width}x{height})"
        )
    if not clip:
        out = np.flatnonzero(faults.outside)
        if out.size:
            raise DetgroupError(
                f"{source}: box {out[0]} {arr[out[0]].tolist()} extends outside the "
                f"{width}x{height} image by more than {tolerance} px (use --clip, or "
                "clip=True, to clip it)"
            )
        return arr
    return faults.clipped


def _signed_log(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def box_features(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """Normalised geometry of every box.

    Args:
        boxes: [B, N, 4] xyxy absolute pixels.
        image_sizes: [B, 2] (H, W) of each image in pixels.

    Returns:
        [B, N, 9]: x1, y1, x2, y2, cx, cy, w, h as fractions of the image, and log(w / h).
    """
    hw = image_sizes.to(boxes.dtype)
    scale = torch.stack([hw[:, 1], hw[:, 0]] * 2, dim=1)[:, None, :]  # [B, 1, 4]
    norm = boxes / scale  # [B, N, 4]
    w = (norm[..., 2] - norm[..., 0]).clamp_min(_EPS)
    h = (norm[..., 3] - norm[..., 1]).clamp_min(_EPS)
    cx = (norm[..., 0] + norm[..., 2]) / 2
    cy = (norm[..., 1] + norm[..., 3]) / 2
    aspect = torch.log(w / h)
    return torch.cat([norm, torch.stack([cx, cy, w, h, aspect], dim=-1)], dim=-1)


def pairwise_iou(boxes: Tensor, others: Tensor | None = None) -> Tensor:
    """IoU of boxes [B, N, 4] with others [B, M, 4] (default: themselves) → [B, N, M]."""
    others = boxes if others is None else others
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp_min(0)  # [B, N, 2]
    wh_o = (others[..., 2:] - others[..., :2]).clamp_min(0)  # [B, M, 2]
    area, area_o = wh[..., 0] * wh[..., 1], wh_o[..., 0] * wh_o[..., 1]
    lt = torch.maximum(boxes[:, :, None, :2], others[:, None, :, :2])  # [B, N, M, 2]
    rb = torch.minimum(boxes[:, :, None, 2:], others[:, None, :, 2:])  # [B, N, M, 2]
    inter = (rb - lt).clamp_min(0).prod(-1)  # [B, N, M]
    union = area[:, :, None] + area_o[:, None, :] - inter
    return inter / union.clamp_min(_EPS)


def _centres_sizes(boxes: Tensor) -> tuple[Tensor, Tensor]:
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2  # [B, N, 2]
    size = (boxes[..., 2:] - boxes[..., :2]).clamp_min(_EPS)  # [B, N, 2] (w, h)
    return centre, size


def pairwise_geometry(boxes: Tensor) -> Tensor:
    """Directed relation of box j to box i (Relation Networks style), for attention biases.

    Args:
        boxes: [B, N, 4] xyxy absolute pixels.

    Returns:
        [B, N, N, 7]: signed-log offsets dx, dy of j's centre in units of i's width/height,
        log(w_j / w_i), log(h_j / h_i), IoU, signed-log centre distance in units of
        sqrt(area_i), and the gap between the boxes (0 when they touch) in the same units.
    """
    centre, size = _centres_sizes(boxes)
    delta = centre[:, None, :, :] - centre[:, :, None, :]  # [B, N, N, 2] (j - i)
    rel = delta / size[:, :, None, :]  # [B, N, N, 2]
    log_size = torch.log(size[:, None, :, :] / size[:, :, None, :])  # [B, N, N, 2]
    scale_i = size.prod(-1).sqrt()[:, :, None]  # [B, N, 1]
    dist = delta.norm(dim=-1) / scale_i  # [B, N, N]
    gap = (delta.abs() - (size[:, None, :, :] + size[:, :, None, :]) / 2).clamp_min(0)
    gap = gap.norm(dim=-1) / scale_i  # [B, N, N]
    iou = pairwise_iou(boxes)
    return torch.cat(
        [_signed_log(rel), log_size, iou[..., None], torch.log1p(dist)[..., None],
         torch.log1p(gap)[..., None]],
        dim=-1,
    )


def symmetric_pair_geometry(boxes: Tensor, others: Tensor | None = None) -> Tensor:
    """Undirected relation of boxes i and j (equal for (i, j) and (j, i)), for the pair head.

    Args:
        boxes: [B, N, 4] xyxy absolute pixels.
        others: [B, M, 4] boxes to pair them with (default: ``boxes`` itself, M = N).

    Returns:
        [B, N, M, 6]: log1p of |dx| and |dy| in units of the pair's mean size, |log w ratio|,
        |log h ratio|, IoU, and log1p of the gap between the boxes in the same units.
    """
    others = boxes if others is None else others
    centre, size = _centres_sizes(boxes)
    centre_o, size_o = _centres_sizes(others)
    delta = (centre_o[:, None, :, :] - centre[:, :, None, :]).abs()  # [B, N, M, 2]
    mean_size = (size_o[:, None, :, :] + size[:, :, None, :]) / 2  # [B, N, M, 2]
    rel = delta / mean_size
    log_size = torch.log(size_o[:, None, :, :] / size[:, :, None, :]).abs()
    gap = (delta - mean_size).clamp_min(0) / mean_size  # [B, N, M, 2]
    iou = pairwise_iou(boxes, others)
    return torch.cat(
        [torch.log1p(rel), log_size, iou[..., None], torch.log1p(gap.norm(dim=-1))[..., None]],
        dim=-1,
    )


LAYOUT_PAIR_FEATURES = 6


def layout_pair_geometry(boxes: Tensor, others: Tensor | None = None) -> Tensor:
    """Undirected text-layout relation of boxes i and j, in units of their text height.

    What a same-line / next-line linking rule looks at, for the pair head of models on
    documents (``model.pair_layout_features``): gaps measured in the height of the text, not in
    box widths, which vary from word to word.

    Args:
        boxes: [B, N, 4] xyxy absolute pixels.
        others: [B, M, 4] boxes to pair them with (default: ``boxes`` itself, M = N).

    Returns:
        [B, N, M, 6]: signed-log horizontal and vertical gaps between the boxes (negative when
        their extents overlap) in units of the smaller height; the overlap of their vertical
        extents over the smaller height and of their horizontal extents over the smaller width
        (both in [0, 1]); log1p of the distance between their left edges and between their
        vertical centres, both in units of the smaller height.
    """
    others = boxes if others is None else others
    a = boxes[:, :, None, :]  # [B, N, 1, 4]
    b = others[:, None, :, :]  # [B, 1, M, 4]
    size_a = (a[..., 2:] - a[..., :2]).clamp_min(_EPS)  # [B, N, 1, 2]
    size_b = (b[..., 2:] - b[..., :2]).clamp_min(_EPS)  # [B, 1, M, 2]
    small = torch.minimum(size_a, size_b)  # [B, N, M, 2] (w, h)
    unit = small[..., 1]  # [B, N, M] the smaller text height
    # gap > 0: space between the extents; gap < 0: minus their overlap
    gap = torch.maximum(a[..., :2], b[..., :2]) - torch.minimum(a[..., 2:], b[..., 2:])
    overlap = (-gap).clamp_min(0) / small  # [B, N, M, 2] in [0, 1]
    left = (a[..., 0] - b[..., 0]).abs() / unit  # [B, N, M]
    mid = ((a[..., 1] + a[..., 3]) - (b[..., 1] + b[..., 3])).abs() / (2 * unit)  # [B, N, M]
    return torch.cat(
        [_signed_log(gap / unit[..., None]), overlap[..., 1:], overlap[..., :1],
         torch.log1p(left)[..., None], torch.log1p(mid)[..., None]],
        dim=-1,
    )
