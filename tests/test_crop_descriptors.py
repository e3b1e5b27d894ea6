"""Fixed crop descriptors (HOG, pixels): the window of model.crop, HOG by hand, attributes."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detgroup.data.coco_groups import load_coco_groups
from detgroup.data.crop_descriptors import (
    crop_hog,
    crop_pixels,
    grey_crops,
    hog_features,
    hog_size,
    square_windows,
    write_hog_attributes,
)
from detgroup.data.dataset import GroupDataset
from detgroup.data.images import read_image_rgb
from detgroup.errors import DetgroupError
from detgroup.model.crop_encoder import CropEncoder, square_crop_boxes


def test_windows_and_crops_match_the_model_crop() -> None:
    """The numpy crop is the model's roi_align crop (one sample per bin when upsampling),
    up to the uint8 rounding."""
    rng = np.random.default_rng(0)
    grey = (rng.random((60, 70)) * 255).astype(np.uint8)
    grey = np.asarray(np.round(np.convolve(grey.ravel(), np.ones(3) / 3, "same")),
                      np.uint8).reshape(60, 70)
    boxes = np.array([[10.0, 12.0, 26.0, 24.0], [30.0, 20.0, 40.0, 36.0]])  # windows < 32 px
    assert np.allclose(square_windows(boxes, 0.2),
                       square_crop_boxes(torch.tensor(boxes), 0.2).numpy())
    ours = grey_crops(grey, boxes, size=32, context=0.2).astype(np.float32)
    encoder = CropEncoder(size=32, context=0.2, channels=2, dim=8)
    pixels = torch.tensor(grey, dtype=torch.float32).expand(1, 3, 60, 70).contiguous()
    theirs = encoder.crops(pixels, torch.tensor(boxes, dtype=torch.float32)[None])[:, 0]
    assert np.abs(ours - theirs.numpy()).max() <= 1.0


def test_hog_of_a_horizontal_edge_votes_in_the_90_degree_bin() -> None:
    crops = np.full((1, 32, 32), 200, np.uint8)
    crops[:, 16:] = 20  # a horizontal edge: vertical gradient, orientation 90 degrees
    hog = hog_features(crops)
    assert hog.shape == (1, hog_size(32)) == (1, 324)
    per_bin = hog.reshape(9, 4, 9)  # [blocks, cells, bins]
    assert per_bin[..., 4].sum() > 0 and np.allclose(np.delete(per_bin, 4, axis=-1), 0, atol=1e-5)
    # brightness does not change gradients; a flat crop has none
    assert np.allclose(hog_features(crops // 2 + 10), hog_features(crops // 2 + 60))
    assert np.allclose(hog_features(np.full((2, 32, 32), 90, np.uint8)), 0)
    # an edge at 45 degrees votes elsewhere
    diagonal = np.where(np.add.outer(np.arange(32), np.arange(32)) < 32, 200, 20).astype(np.uint8)
    assert not np.allclose(hog_features(diagonal[None]), hog)


def test_hog_blocks_are_unit_length_and_shapes_are_checked() -> None:
    rng = np.random.default_rng(1)
    hog = hog_features((rng.random((3, 16, 16)) * 255).astype(np.uint8))
    norms = np.linalg.norm(hog.reshape(3, 9, 36), axis=-1)
    assert np.allclose(norms, 1.0, atol=1e-3)
    with pytest.raises(DetgroupError, match="multiple of 4"):
        hog_features(np.zeros((1, 30, 30), np.uint8))
    with pytest.raises(DetgroupError, match=">= 8"):
        grey_crops(np.zeros((20, 20), np.uint8), np.array([[1.0, 1, 5, 5]]), size=4)


def test_crop_pixels_are_ink_high() -> None:
    grey = np.full((40, 40), 255, np.uint8)
    grey[10:20, 10:20] = 0
    pixels = crop_pixels(grey, np.array([[10.0, 10, 20, 20], [25.0, 25, 35, 35]]), size=8)
    assert pixels.shape == (2, 64)
    assert pixels[0].min() > 0.9 and pixels[1].max() == 0.0


def test_hog_attributes_file_feeds_model_attributes(tiny_data: Path, tmp_path: Path) -> None:
    ann = tiny_data / "val/annotations.json"
    out = write_hog_attributes(ann, tiny_data / "val/images", tmp_path / "hog.json")
    coco = load_coco_groups(out)
    assert coco.attribute_names == [f"hog_{k}" for k in range(324)]
    data = GroupDataset(out, tiny_data / "val/images")
    item = data[0]
    assert item["attributes"].shape == (len(item["boxes"]), 324)
    # the attributes are the HOG of the image's boxes, as crop_hog computes them
    raw = json.loads(out.read_text())
    first = raw["images"][0]
    anns = [a for a in raw["annotations"] if a["image_id"] == first["id"]]
    rgb = read_image_rgb(tiny_data / "val/images" / first["file_name"])
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    xywh = np.array([a["bbox"] for a in anns])
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    expected = crop_hog(grey, boxes)
    assert np.abs(np.array([a["attributes"] for a in anns]) - expected).max() < 1e-4
    with pytest.raises(DetgroupError, match="already has attribute_names"):
        write_hog_attributes(out, tiny_data / "val/images", tmp_path / "again.json")
