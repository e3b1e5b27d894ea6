"""Torch dataset over a COCO-with-groups file, and the collate that pads boxes with a mask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from detgroup.data.coco_groups import CocoGroups, load_coco_groups
from detgroup.data.images import read_image_rgb


class GroupDataset(Dataset):
    """Images with their boxes, categories and groups.

    Each item is a dict: ``image`` float32 [3, H, W] in [0, 1] RGB, ``boxes`` float32 [N, 4]
    xyxy absolute pixels, ``categories`` int64 [N], ``groups`` int64 [N] (dense per image),
    ``image_id`` int. N = 0 is legal.

    Args:
        ann: path of a COCO-with-groups file, or an already loaded :class:`CocoGroups`.
        images_dir: folder that ``file_name`` is relative to.
        hflip_prob: probability of a horizontal flip (training augmentation).
        seed: seed of the augmentation generator (with the item index, so any worker order
            gives the same flips).
    """

    def __init__(
        self,
        ann: str | Path | CocoGroups,
        images_dir: str | Path,
        *,
        hflip_prob: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.coco = ann if isinstance(ann, CocoGroups) else load_coco_groups(ann)
        self.images_dir = Path(images_dir)
        self.hflip_prob = hflip_prob
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
        if self.hflip_prob > 0:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            if rng.random() < self.hflip_prob:
                width = pixels.shape[1]
                pixels = pixels[:, ::-1]
                boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0],
                                  boxes[:, 3]], axis=1)
        image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float() / 255.0
        return {
            "image": image,
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "categories": torch.from_numpy(target["categories"]),
            "groups": torch.from_numpy(target["groups"]),
            "image_id": int(info["id"]),
        }


def collate_groups(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch items with different image sizes and box counts.

    Returns ``images`` [B, 3, Hmax, Wmax] (zero padded at the bottom/right, so box coordinates
    stay valid), ``image_sizes`` int64 [B, 2] (H, W), ``boxes`` [B, Nmax, 4] (padding rows are a
    unit box so RoIAlign stays finite), ``categories`` and ``groups`` [B, Nmax] (padding = -1),
    ``pad_mask`` bool [B, Nmax] (True = padding) and ``image_ids`` [B].
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
    sizes = torch.zeros(batch, 2, dtype=torch.long)
    for b, it in enumerate(items):
        _, h, w = it["image"].shape
        images[b, :, :h, :w] = it["image"]
        sizes[b] = torch.tensor([h, w])
        n = len(it["boxes"])
        boxes[b, :n] = it["boxes"]
        categories[b, :n] = it["categories"]
        groups[b, :n] = it["groups"]
        pad_mask[b, :n] = False
    return {
        "images": images,
        "image_sizes": sizes,
        "boxes": boxes,
        "categories": categories,
        "groups": groups,
        "pad_mask": pad_mask,
        "image_ids": [it["image_id"] for it in items],
    }
