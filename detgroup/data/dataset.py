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
from detgroup.ops.text import SHAPE_FEATURES, encode_texts


class GroupDataset(Dataset):
    """Images with their boxes, categories and groups.

    Each item is a dict: ``image`` float32 [3, H, W] in [0, 1] RGB (``None`` when
    ``load_images`` is off), ``image_size`` (H, W), ``boxes`` float32 [N, 4] xyxy absolute
    pixels, ``categories`` int64 [N], ``groups`` int64 [N] (dense per image), ``group_known``
    bool [N] (False: ``group_id`` -1, the box's pairs carry no label), ``texts`` (N strings,
    ``""`` for none), ``attributes`` float32 [N, A], ``image_id`` int. N = 0 is legal.

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
        load_images: False for a model without a backbone: no image file is read, the frame
            is the annotation's width x height, and the geometric augmentations still apply.
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
        load_images: bool = True,
    ) -> None:
        self.coco = ann if isinstance(ann, CocoGroups) else load_coco_groups(ann)
        self.images_dir = Path(images_dir)
        self.hflip_prob = hflip_prob
        self.scale_jitter = scale_jitter
        self.box_jitter = box_jitter
        self.photometric = photometric
        self.box_dropout = box_dropout
        self.seed = seed
        self.load_images = load_images
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
        pixels: np.ndarray | None = None  # [H, W, 3] uint8
        if self.load_images:
            pixels = read_image_rgb(self.images_dir / info["file_name"])
            size = pixels.shape[:2]
        else:
            size = (int(info["height"]), int(info["width"]))
        target = self.coco.targets(info["id"])
        boxes = target["boxes"]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.hflip_prob > 0 and rng.random() < self.hflip_prob:
            width = size[1]
            if pixels is not None:
                pixels = pixels[:, ::-1]
            boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0],
                              boxes[:, 3]], axis=1)
        if self.scale_jitter > 0:
            factor = rng.uniform(-1, 1) * self.scale_jitter + 1
            if pixels is not None:
                pixels, boxes = _rescale(pixels, boxes, factor)
                size = pixels.shape[:2]
            else:
                new = (max(1, round(size[0] * factor)), max(1, round(size[1] * factor)))
                scale = np.array([new[1] / size[1], new[0] / size[0]] * 2, dtype=np.float32)
                boxes, size = (boxes * scale).astype(np.float32), new
        if self.box_jitter > 0 and len(boxes):
            boxes = _jitter_boxes(boxes, rng, self.box_jitter, size)
        image = None
        if pixels is not None:
            image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float() / 255
            if self.photometric > 0:
                contrast, brightness = 1 + rng.uniform(-1, 1, size=2) * self.photometric
                mean = image.mean()
                image = ((image - mean) * contrast + mean * brightness).clamp_(0, 1)
        elif self.photometric > 0:
            rng.uniform(-1, 1, size=2)  # the same draws as with pixels
        categories, groups = target["categories"], target["groups"]  # [N], [N]
        known = target["group_known"]  # [N]
        texts, attributes = target["texts"], target["attributes"]  # N strings, [N, A]
        if self.box_dropout > 0 and len(boxes) > 1:
            # drawn last, so that a recipe without it keeps its other draws
            keep = rng.random(len(boxes)) >= self.box_dropout  # [N]
            if not keep.any():
                keep[rng.integers(len(boxes))] = True
            boxes, categories, known = boxes[keep], categories[keep], known[keep]
            attributes = attributes[keep]
            texts = [t for t, k in zip(texts, keep, strict=True) if k]
            groups = np.unique(groups[keep], return_inverse=True)[1].reshape(-1)
        return {
            "image": image,
            "image_size": (int(size[0]), int(size[1])),
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "categories": torch.as_tensor(categories, dtype=torch.int64),
            "groups": torch.as_tensor(groups, dtype=torch.int64),
            "group_known": torch.as_tensor(known, dtype=torch.bool),
            "texts": list(texts),
            "attributes": torch.as_tensor(attributes, dtype=torch.float32),
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
    stay valid; [B, 3, 0, 0] when no item has an image), ``image_sizes`` int64 [B, 2] (H, W),
    ``boxes`` [B, Nmax, 4] (padding rows are a unit box so RoIAlign stays finite),
    ``categories`` and ``groups`` [B, Nmax] (padding = -1), ``group_known`` bool [B, Nmax]
    (False for padding and for boxes of unknown group; items without the key count as known),
    ``pad_mask`` bool [B, Nmax] (True = padding), ``image_ids`` [B], ``texts`` (B lists of
    strings), the model's text inputs ``text_hashes`` [T], ``text_offsets`` [B * Nmax],
    ``text_shape`` [B, Nmax, S] (:func:`detgroup.ops.text.encode_texts` of the texts, padding
    boxes empty) and ``attributes`` [B, Nmax, A] (padding = 0).
    """
    batch = len(items)
    n_max = max((len(it["boxes"]) for it in items), default=0)
    sizes = torch.zeros(batch, 2, dtype=torch.long)
    for b, it in enumerate(items):
        sizes[b] = torch.tensor(_image_size(it))
    with_pixels = [it for it in items if it.get("image") is not None]
    h_max = max((it["image"].shape[1] for it in with_pixels), default=0)
    w_max = max((it["image"].shape[2] for it in with_pixels), default=0)
    images = torch.zeros(batch, 3, h_max, w_max)
    num_attributes = max((_attributes(it).shape[1] for it in items), default=0)
    boxes = torch.zeros(batch, n_max, 4)
    boxes[:, :, 2:] = 1.0
    categories = torch.full((batch, n_max), -1, dtype=torch.long)
    groups = torch.full((batch, n_max), -1, dtype=torch.long)
    pad_mask = torch.ones(batch, n_max, dtype=torch.bool)
    known = torch.zeros(batch, n_max, dtype=torch.bool)
    attributes = torch.zeros(batch, n_max, num_attributes)
    texts: list[list[str]] = []
    for b, it in enumerate(items):
        if it.get("image") is not None:
            _, h, w = it["image"].shape
            images[b, :, :h, :w] = it["image"]
        n = len(it["boxes"])
        boxes[b, :n] = it["boxes"]
        categories[b, :n] = it["categories"]
        groups[b, :n] = it["groups"]
        known[b, :n] = it["group_known"] if "group_known" in it else True
        pad_mask[b, :n] = False
        item_texts = list(it.get("texts") or [""] * n)
        texts.append(item_texts)
        if num_attributes:
            attributes[b, :n] = _attributes(it)
    padded_texts = [t for item_texts in texts
                    for t in item_texts + [""] * (n_max - len(item_texts))]  # B * Nmax
    encoded = encode_texts(padded_texts)
    return {
        "images": images,
        "image_sizes": sizes,
        "boxes": boxes,
        "categories": categories,
        "groups": groups,
        "group_known": known,
        "pad_mask": pad_mask,
        "image_ids": [it["image_id"] for it in items],
        "texts": texts,
        "text_hashes": torch.from_numpy(encoded["text_hashes"]),
        "text_offsets": torch.from_numpy(encoded["text_offsets"]),
        "text_shape": torch.from_numpy(encoded["text_shape"]).view(batch, n_max, SHAPE_FEATURES),
        "attributes": attributes,
    }


def _image_size(item: dict[str, Any]) -> tuple[int, int]:
    if item.get("image_size") is not None:
        return item["image_size"]
    return tuple(item["image"].shape[1:])


def _attributes(item: dict[str, Any]) -> torch.Tensor:
    values = item.get("attributes")
    if values is None:
        return torch.zeros(len(item["boxes"]), 0)
    values = torch.as_tensor(values, dtype=torch.float32)
    if values.dim() != 2:  # e.g. an empty list for no boxes
        return values.reshape(len(item["boxes"]), 0) if values.numel() == 0 else \
            values.reshape(len(item["boxes"]), -1)
    return values


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :class:`~detgroup.model.detector.GroupingModel` in a batch."""
    return {"images": batch["images"], "boxes": batch["boxes"], "pad_mask": batch["pad_mask"],
            "image_sizes": batch["image_sizes"], "text_hashes": batch["text_hashes"],
            "text_offsets": batch["text_offsets"], "text_shape": batch["text_shape"],
            "attributes": batch["attributes"]}
