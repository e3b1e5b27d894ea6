"""The Python API (Grouper) and its handling of odd images, boxes and checkpoints."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy.special import logit

from detgroup import Grouper, partition
from detgroup.data.images import read_image_rgb
from detgroup.engine.checkpoint import load_checkpoint, save_checkpoint
from detgroup.errors import DetgroupError

BOXES = [[10, 10, 40, 40], [45, 10, 80, 40], [10, 50, 40, 90]]


@pytest.fixture(scope="module")
def grouper(tiny_checkpoint: Path) -> Grouper:
    return Grouper.from_checkpoint(tiny_checkpoint)


def test_predict_outputs(grouper: Grouper) -> None:
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    result = grouper.predict(image, BOXES)
    assert result.categories.shape == result.groups.shape == (3,)
    assert result.affinity.shape == (3, 3)
    # the probabilities are those the decoder decoded: decoding them again gives the result
    settings = {**grouper.decoder_settings, "pair_bias": 0.0}  # the bias is in them already
    again = partition(logit(np.asarray(result.affinity, np.float64)),
                      np.log(result.class_probs.astype(np.float64)), boxes=BOXES, **settings)
    np.testing.assert_array_equal(again[0], result.categories)
    np.testing.assert_array_equal(again[1], result.groups)
    assert set(result.group_scores) == set(zip(result.categories.tolist(),
                                               result.groups.tolist(), strict=True))
    for (c, _), _score in result.group_scores.items():
        assert 0 <= c < len(grouper.category_names)
    members = sorted(i for g in result.group_list() for i in g["members"])
    assert members == [0, 1, 2]


def test_predict_batch_equals_predict(grouper: Grouper) -> None:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (96, 96, 3), dtype=np.uint8) for _ in range(3)]
    boxes = [BOXES, BOXES[:1], []]
    batch = grouper.predict_batch(images, boxes)
    for image, b, got in zip(images, boxes, batch, strict=True):
        one = grouper.predict(image, b)
        assert np.array_equal(one.groups, got.groups)
        assert np.allclose(one.affinity, got.affinity, atol=1e-5)
    assert len(batch[2].categories) == 0


@pytest.mark.parametrize("kind", ["gray", "rgba", "uint16", "gray16"])
def test_image_formats(tmp_path: Path, grouper: Grouper, kind: str) -> None:
    rng = np.random.default_rng(2)
    pixels = {
        "gray": rng.integers(0, 255, (64, 80), dtype=np.uint8),
        "rgba": rng.integers(0, 255, (64, 80, 4), dtype=np.uint8),
        "uint16": rng.integers(0, 65535, (64, 80, 3), dtype=np.uint16),
        "gray16": rng.integers(0, 65535, (64, 80), dtype=np.uint16),
    }[kind]
    path = tmp_path / f"{kind}.png"
    cv2.imwrite(str(path), pixels)
    rgb = read_image_rgb(path)
    assert rgb.shape == (64, 80, 3) and rgb.dtype == np.uint8
    assert len(grouper.predict(path, BOXES[:2]).categories) == 2


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        ([[1, 2, 3]], r"shape \[N, 4\]"),
        ([[1, 2, float("nan"), 4]], "non-finite"),
        ([[30, 10, 20, 40]], "box 0"),
        ([[200, 200, 300, 300]], "no area inside the image"),
        ("abc", "numbers"),
    ],
)
def test_bad_boxes_are_clear_errors(grouper: Grouper, boxes: object, message: str) -> None:
    with pytest.raises(DetgroupError, match=message):
        grouper.predict(np.zeros((96, 96, 3), np.uint8), boxes)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00truncated", b"hello"])
def test_bad_image_files(tmp_path: Path, grouper: Grouper, content: bytes) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(DetgroupError, match="x.png"):
        grouper.predict(path, BOXES)


def test_checkpoint_from_a_different_config(tiny_checkpoint: Path, tmp_path: Path) -> None:
    state = load_checkpoint(tiny_checkpoint)
    state["config"]["model"]["dim"] = 64  # weights no longer fit the model the config builds
    bad = tmp_path / "other.pt"
    save_checkpoint(bad, {k: v for k, v in state.items() if k != "format"})
    with pytest.raises(DetgroupError, match="weights do not fit the model"):
        Grouper.from_checkpoint(bad)


def test_checkpoint_with_an_unknown_config_key(tiny_checkpoint: Path, tmp_path: Path) -> None:
    state = load_checkpoint(tiny_checkpoint)
    state["config"]["model"]["wingspan"] = 3
    bad = tmp_path / "odd.pt"
    save_checkpoint(bad, {k: v for k, v in state.items() if k != "format"})
    with pytest.raises(DetgroupError, match="wingspan"):
        Grouper.from_checkpoint(bad)


def test_truncated_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> None:
    data = tiny_checkpoint.read_bytes()
    bad = tmp_path / "cut.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DetgroupError, match="cut.pt: not a readable checkpoint"):
        Grouper.from_checkpoint(bad)


def test_output_folder_blocked_by_a_file(tiny_data: Path, tmp_path: Path) -> None:
    from detgroup.engine.train import train
    from tests.conftest import tiny_config

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DetgroupError, match="cannot create output folder"):
        train(tiny_config(tiny_data), out_dir=blocker / "run", progress=False)


def test_partition_is_the_public_decoder() -> None:
    logits = np.full((4, 4), -5.0)
    logits[0, 1] = logits[1, 0] = logits[2, 3] = logits[3, 2] = 5.0
    categories, groups = partition(logits)
    assert categories.tolist() == [0, 0, 0, 0]
    assert groups[0] == groups[1] != groups[2] == groups[3]


def test_config_travels_inside_the_checkpoint(tiny_checkpoint: Path) -> None:
    state = load_checkpoint(tiny_checkpoint)
    # what training was given (tests/conftest.py: TINY_MODEL and the tiny set's categories)
    assert state["config"]["category_names"] == ["cat", "dog"]
    assert state["config"]["model"]["dim"] == 32 and state["config"]["train"]["epochs"] == 1
    assert Grouper.from_checkpoint(tiny_checkpoint).cfg.model.relation.layers == 2
    assert all(torch.is_tensor(v) for v in state["model"].values())
