"""Fixed (non-learned) descriptors of each box's crop: HOG and raw pixels.

The classical status quo for clustering small items such as handwritten glyphs: cut each box
from the image as a square (the same window as ``model.crop``:
:func:`detgroup.model.crop_encoder.square_crop_boxes`), resample it to ``size`` x ``size`` grey
pixels, and describe it by HOG (Dalal & Triggs 2005, as ``cv2.HOGDescriptor`` computes it,
which OpenCV 5 no longer ships: centred [-1, 0, 1] gradients, 4 x 4 cells, 9 unsigned orientation
bins with linear vote interpolation between bin centres, 2 x 2 cell blocks at a stride of one
cell, L2-Hys block normalisation: 324 values; no Gaussian block window, no spatial vote
interpolation) or by the pixels themselves. Used by the HOG + Ward baseline
(``tools/bench_omniglot_l2c.py``) and, written into an annotation file as each box's
``attributes`` (:func:`write_hog_attributes`), as a fixed input of the model
(``model.attributes``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detgroup.data.coco_groups import load_coco_groups, write_coco_groups
from detgroup.data.images import read_image_rgb
from detgroup.errors import DetgroupError

HOG_BINS = 9
HOG_CELLS = 4  # cells across a crop
HOG_CLIP = 0.2  # L2-Hys


def square_windows(boxes: np.ndarray, context: float = 0.0) -> np.ndarray:
    """float64 [N, 4] xyxy: each box padded to a square about its centre, side
    max(w, h) x (1 + 2 context) (the window of ``model.crop``)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(axis=1, keepdims=True) * (0.5 + context)
    return np.concatenate([centre - half, centre + half], axis=1)


def grey_crops(grey: np.ndarray, boxes: np.ndarray, *, size: int = 32,
               context: float = 0.0) -> np.ndarray:
    """uint8 [N, size, size]: the square window of each box resampled bilinearly (pixel
    centres at +0.5, as ``roi_align(aligned=True)``; outside the image the border repeats).

    Args:
        grey: uint8 [H, W] image.
        boxes: [N, 4] xyxy px.
    """
    if size < 8:
        raise DetgroupError(f"crop size must be >= 8 px, got {size}")
    windows = square_windows(boxes, context)
    crops = np.zeros((len(windows), size, size), np.uint8)
    for k, (x1, y1, x2, _) in enumerate(windows):
        scale = (x2 - x1) / size  # source px per crop px
        # inverse map: crop pixel j (centre j + 0.5) reads source x1 + (j + 0.5) scale - 0.5
        offset = 0.5 * scale - 0.5
        warp = np.array([[scale, 0.0, x1 + offset], [0.0, scale, y1 + offset]])
        crops[k] = cv2.warpAffine(grey, warp, (size, size),
                                  flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REPLICATE)
    return crops


def hog_size(size: int) -> int:
    """Length of the HOG descriptor of a crop (any size that is a multiple of 4)."""
    return (HOG_CELLS - 1) ** 2 * 4 * HOG_BINS


def hog_features(crops: np.ndarray) -> np.ndarray:
    """float32 [N, 324]: HOG descriptors (module docstring) of grey crops [N, S, S], S a
    multiple of 4; all crops at once."""
    n, size = crops.shape[0], crops.shape[-1]
    if size % HOG_CELLS or crops.shape[1] != size:
        raise DetgroupError(f"HOG crops must be square with a side that is a multiple of "
                            f"{HOG_CELLS} px, got {crops.shape[1:]}")
    x = crops.astype(np.float32)
    gx, gy = np.zeros_like(x), np.zeros_like(x)
    gx[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    gy[:, 1:-1, :] = x[:, 2:, :] - x[:, :-2, :]
    magnitude = np.hypot(gx, gy)  # [N, S, S]
    position = np.mod(np.arctan2(gy, gx), np.pi) / (np.pi / HOG_BINS) - 0.5  # bin units
    low = np.floor(position)
    upper_weight = position - low
    low_bin, high_bin = np.mod(low, HOG_BINS).astype(np.int64), np.mod(low + 1, HOG_BINS)
    cell = size // HOG_CELLS
    hist = np.zeros((n, HOG_CELLS, HOG_CELLS, HOG_BINS), np.float32)
    for k in range(HOG_BINS):
        votes = magnitude * ((low_bin == k) * (1 - upper_weight) + (high_bin == k) * upper_weight)
        hist[..., k] = votes.reshape(n, HOG_CELLS, cell, HOG_CELLS, cell).sum(axis=(2, 4))
    blocks = [hist[:, i:i + 2, j:j + 2].reshape(n, -1)
              for i in range(HOG_CELLS - 1) for j in range(HOG_CELLS - 1)]
    v = np.stack(blocks, axis=1)  # [N, 9 blocks, 36]
    eps = 1e-3 * 4 * HOG_BINS  # keeps an empty block finite
    v = v / np.sqrt((v ** 2).sum(-1, keepdims=True) + eps ** 2)
    v = np.minimum(v, HOG_CLIP)
    v = v / np.sqrt((v ** 2).sum(-1, keepdims=True) + 1e-6)
    return v.reshape(n, -1).astype(np.float32)


def crop_hog(grey: np.ndarray, boxes: np.ndarray, *, size: int = 32,
             context: float = 0.0) -> np.ndarray:
    """float32 [N, :func:`hog_size`]: the HOG descriptor of each box's crop (module docstring).
    ``size`` must be a multiple of 4."""
    return hog_features(grey_crops(grey, boxes, size=size, context=context))


def crop_pixels(grey: np.ndarray, boxes: np.ndarray, *, size: int = 32,
                context: float = 0.0) -> np.ndarray:
    """float32 [N, size * size]: each box's crop, dark ink high (1 - grey / 255), flattened."""
    crops = grey_crops(grey, boxes, size=size, context=context)
    return (1.0 - crops.reshape(len(crops), -1).astype(np.float32) / 255.0)


def write_hog_attributes(ann: str | Path, images: str | Path, out: str | Path, *,
                         size: int = 32, context: float = 0.0) -> Path:
    """Copy the COCO-with-groups file ``ann`` to ``out`` with each annotation's ``attributes``
    set to the HOG descriptor of its crop (top-level ``attribute_names`` ``hog_0`` ..), so
    that ``model.attributes`` reads it. Images are read from ``images``. Written atomically;
    returns ``out``. An annotation file that already declares attributes is refused."""
    ann, images, out = Path(ann), Path(images), Path(out)
    load_coco_groups(ann)  # validated before anything is computed
    data: dict[str, Any] = json.loads(ann.read_text(encoding="utf-8"))
    if data.get("attribute_names"):
        raise DetgroupError(f"{ann}: already has attribute_names; HOG attributes would replace "
                            "them")
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in data["annotations"]:
        by_image.setdefault(int(a["image_id"]), []).append(a)
    for image in data["images"]:
        anns = by_image.get(int(image["id"]), [])
        if not anns:
            continue
        grey = cv2.cvtColor(read_image_rgb(images / image["file_name"]), cv2.COLOR_RGB2GRAY)
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        for a, values in zip(anns, crop_hog(grey, boxes, size=size, context=context),
                             strict=True):
            a["attributes"] = [round(float(v), 5) for v in values]
    data["attribute_names"] = [f"hog_{k}" for k in range(hog_size(size))]
    write_coco_groups(out, data)
    return out
