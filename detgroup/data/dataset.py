"""Torch dataset over a COCO-with-groups file, and the collate that pads boxes with a mask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from detgroup.data.coco_groups import CocoGroups, load_coco_groups
from detgroup.data.images import read_image_rgb


class GroupDataset(Dataset):
    """Images with their boxes, categories and groups.

    Each item is a dict: ``image`` float32 [3, H, W] in [0, 1] RGB, ``boxes`` float32 [N, 4]
    xyxy absolute pixels, ``categories`` int64 [N], ``groups`` int64 [N] (dense per image),
    ``group_known`` bool [N] (False: ``group_id`` -1, the box's pairs carry no label),
    ``image_id`` int. N = 0 is legal.

    Args:
        ann: path of a COCO-with-groups file, or an already loaded :class:`CocoGroups`.
        images_dir: folder that ``file_name`` is relative to.
        hflip_prob: probability of a horizontal flip (training augmentation).
        scale_jitter: rescale image and boxes by a factor in [1 - s, 1 + s] (augmentation).
        box_jitter: move every box side by up to this fraction of the box height.
        photometric: change brightness and contrast by up to this fraction.
        box_dropout: leave out each box with this probability (its pixels stay in the image;
            at least one box is kept); the remaining groups are renumbered densely.
        seed: seed of the augmentation generator (with the epoch and the item index, so any
            worker order gives the same draws).
    """

    def __init__(
        self,
        ann: str | Path | CocoGroups,
        images_dir: str | Path,
        *,
        hflip_prob: float = 0.0,
        scale_jitter: float = 0.0,
        box_jitter: float = 0.0,
        photometric: float = 0.0,
        box_dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.coco = ann if isinstance(ann, CocoGroups) else load_coco_groups(ann)
        self.images_dir = Path(images_dir)
        self.hflip_prob = hflip_prob
        self.scale_jitter = scale_jitter
        self.box_jitter = box_jitter
        self.photometric = photometric
        self.box_dropout = box_dropout
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw (call once per epoch)."""
        self.epoch = epoch

    @property
    def category_names(self) -> list[str]:
        return self.coco.category_names

    def __len__(self) -> int:
        return len(self.coco)

    def num_boxes(self, index: int) -> int:
        """Number of boxes of item ``index`` without reading its image."""
        return len(self.coco.anns_by_image.get(self.coco.images[index]["id"], []))

    def __getitem__(self, index: int) -> dict[str, Any]:
        info = self.coco.images[index]
        pixels = read_image_rgb(self.images_dir / info["file_name"])  # [H, W, 3] uint8
        target = self.coco.targets(info["id"])
        boxes = target["boxes"]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.hflip_prob > 0 and rng.random() < self.hflip_prob:
            width = pixels.shape[1]
            pixels = pixels[:, ::-1]
            boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0],
                              boxes[:, 3]], axis=1)
        if self.scale_jitter > 0:
            pixels, boxes = _rescale(pixels, boxes, rng.uniform(-1, 1) * self.scale_jitter + 1)
        if self.box_jitter > 0 and len(boxes):
            boxes = _jitter_boxes(boxes, rng, self.box_jitter, pixels.shape[:2])
        image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float() / 255.0
        if self.photometric > 0:
            contrast, brightness = 1 + rng.uniform(-1, 1, size=2) * self.photometric
            mean = image.mean()
            image = ((image - mean) * contrast + mean * brightness).clamp_(0, 1)
        categories, groups = target["categories"], target["groups"]  # [N], [N]
        known = target["group_known"]  # [N]
        if self.box_dropout > 0 and len(boxes) > 1:
            # drawn last, so that a recipe without it keeps its other draws
            keep = rng.random(len(boxes)) >= self.box_dropout  # [N]
            if not keep.any():
                keep[rng.integers(len(boxes))] = True
            boxes, categories, known = boxes[keep], categories[keep], known[keep]
            groups = np.unique(groups[keep], return_inverse=True)[1].reshape(-1)
        return {
            "image": image,
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "categories": torch.as_tensor(categories, dtype=torch.int64),
            "groups": torch.as_tensor(groups, dtype=torch.int64),
            "group_known": torch.as_tensor(known, dtype=torch.bool),
            "image_id": int(info["id"]),
        }


def _rescale(pixels: np.ndarray, boxes: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Resize an [H, W, 3] image and its [N, 4] boxes by ``factor`` (area filter to shrink)."""
    h, w = pixels.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))  # (W', H') for OpenCV
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(pixels), size, interpolation=interp)
    scale = np.array([size[0] / w, size[1] / h] * 2, dtype=np.float32)
    return resized, (boxes * scale).astype(np.float32)


def _jitter_boxes(
    boxes: np.ndarray, rng: np.random.Generator, amount: float, image_hw: tuple[int, int]
) -> np.ndarray:
    """Move each side of the [N, 4] boxes by up to ``amount`` x the box height; keep >= 1 px."""
    heights = (boxes[:, 3] - boxes[:, 1])[:, None]  # [N, 1]
    moved = boxes + rng.uniform(-amount, amount, size=boxes.shape) * heights  # [N, 4]
    h, w = image_hw
    moved[:, 0::2] = moved[:, 0::2].clip(0, w)
    moved[:, 1::2] = moved[:, 1::2].clip(0, h)
    # a box that the jitter would turn inside out keeps its original side
    flat = (moved[:, 2] - moved[:, 0] < 1) | (moved[:, 3] - moved[:, 1] < 1)
    moved[flat] = boxes[flat]
    return moved.astype(np.float32)


def collate_groups(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch items with different image sizes and box counts.

    Returns ``images`` [B, 3, Hmax, Wmax] (zero padded at the bottom/right, so box coordinates
    stay valid), ``image_sizes`` int64 [B, 2] (H, W), ``boxes`` [B, Nmax, 4] (padding rows are a
    unit box so RoIAlign stays finite), ``categories`` and ``groups`` [B, Nmax] (padding = -1),
    ``group_known`` bool [B, Nmax] (False for padding and for boxes of unknown group; items
    without the key count as known), ``pad_mask`` bool [B, Nmax] (True = padding) and
    ``image_ids`` [B].
    """
    batch = len(items)
    n_max = max((len(it["boxes"]) for it in items), default=0)
    h_max = max(it["image"].shape[1] for it in items)
    w_max = max(it["image"].shape[2] for it in items)
    images = torch.zeros(batch, 3, h_max, w_max)
    boxes = torch.zeros(batch, n_max, 4)
    boxes[:, :, 2:] = 1.0
    categories = torch.full((batch, n_max), -1, dtype=torch.long)
    groups = torch.full((batch, n_max), -1, dtype=torch.long)
    pad_mask = torch.ones(batch, n_max, dtype=torch.bool)
    known = torch.zeros(batch, n_max, dtype=torch.bool)
    sizes = torch.zeros(batch, 2, dtype=torch.long)
    for b, it in enumerate(items):
        _, h, w = it["image"].shape
        images[b, :, :h, :w] = it["image"]
        sizes[b] = torch.tensor([h, w])
        n = len(it["boxes"])
        boxes[b, :n] = it["boxes"]
        categories[b, :n] = it["categories"]
        groups[b, :n] = it["groups"]
        known[b, :n] = it["group_known"] if "group_known" in it else True
        pad_mask[b, :n] = False
    return {
        "images": images,
        "image_sizes": sizes,
        "boxes": boxes,
        "categories": categories,
        "groups": groups,
        "group_known": known,
        "pad_mask": pad_mask,
        "image_ids": [it["image_id"] for it in items],
    }
