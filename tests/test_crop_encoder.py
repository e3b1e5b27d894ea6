"""``model.crop``: per-box crops cut from the pixels, encoded by a shared CNN, fused with the
RoI token."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detgroup.errors import DetgroupError
from detgroup.model.crop_encoder import (
    CropAugment,
    CropEncoder,
    check_crop_inputs,
    crop_windows,
    random_affine,
    square_crop_boxes,
)
from detgroup.model.detector import build_model
from tests.conftest import tiny_config

CROP = ["model.crop.enabled=true", "model.crop.size=8", "model.crop.channels=4"]


def _model(data: Path, *extra: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(tiny_config(data, *CROP, *extra)).eval()


def _scene(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, 64, 80, generator=g)
    wh = torch.rand(n, 2, generator=g) * 16 + 4
    xy = torch.rand(n, 2, generator=g) * (torch.tensor([80.0, 64.0]) - wh)
    return image, torch.cat([xy, xy + wh], dim=1)[None]  # [1, N, 4]


def test_square_window_keeps_the_aspect_and_adds_context() -> None:
    boxes = torch.tensor([[10.0, 20.0, 30.0, 30.0], [0.0, 0.0, 4.0, 8.0]])  # 20 x 10, 4 x 8
    assert square_crop_boxes(boxes, 0.0).tolist() == [[10.0, 15.0, 30.0, 35.0],
                                                      [-2.0, 0.0, 6.0, 8.0]]
    # context 0.25: the square side grows by a quarter of it on every side
    assert square_crop_boxes(boxes, 0.25).tolist() == [[5.0, 10.0, 35.0, 40.0],
                                                       [-4.0, -2.0, 8.0, 10.0]]


def test_crops_sample_the_pixels_of_the_square_window() -> None:
    """On a horizontal ramp (pixel x holds x) bilinear RoIAlign is exact: bin j of a window
    from x1 of side s reads x1 + (j + 0.5) s / size - 0.5 (pixel centres at x + 0.5)."""
    encoder = CropEncoder(size=8, context=0.0, channels=2, dim=8)
    ramp = torch.arange(64, dtype=torch.float32).expand(1, 3, 48, 64).contiguous()
    boxes = torch.tensor([[[10.0, 12.0, 26.0, 20.0]]])  # 16 x 8 -> square window 16 x 16
    crop = encoder.crops(ramp, boxes)  # [1, 3, 8, 8]
    expected = 10.0 + (torch.arange(8) + 0.5) * 16 / 8 - 0.5
    assert crop.shape == (1, 3, 8, 8)
    assert torch.allclose(crop[0, 0], expected.expand(8, 8), atol=1e-4)


def test_a_wide_crop_keeps_a_word_s_aspect() -> None:
    """model.crop.width: a 16 x 64 grid takes a word box padded to aspect 4 (here a 40 x 8 word
    grows to 40 x 10; a 10 x 10 box to 40 x 10), and samples its pixels as the square one does."""
    boxes = torch.tensor([[0.0, 0.0, 40.0, 8.0], [15.0, 0.0, 25.0, 10.0]])
    assert crop_windows(boxes, 0.0, 4.0).tolist() == [[0.0, -1.0, 40.0, 9.0],
                                                      [0.0, 0.0, 40.0, 10.0]]
    assert torch.equal(crop_windows(boxes, 0.25, 1.0), square_crop_boxes(boxes, 0.25))
    encoder = CropEncoder(size=16, width=64, context=0.0, channels=2, dim=8)
    ramp = torch.arange(128, dtype=torch.float32).expand(1, 3, 48, 128).contiguous()
    crop = encoder.crops(ramp, torch.tensor([[[20.0, 10.0, 84.0, 26.0]]]))  # 64 x 16: as is
    assert crop.shape == (1, 3, 16, 64)
    expected = 20.0 + (torch.arange(64) + 0.5) - 0.5
    assert torch.allclose(crop[0, 0], expected.expand(16, 64), atol=1e-4)
    tokens = encoder(ramp, torch.tensor([[[20.0, 10.0, 84.0, 26.0]]]),
                     torch.zeros(1, 1, dtype=torch.bool))
    assert tokens.shape == (1, 1, 8)
    with pytest.raises(DetgroupError, match=r"40 px is smaller .*model\.crop\.width = 64"):
        check_crop_inputs(torch.tensor([[[0.0, 0.0, 5.0, 5.0]]]),
                          torch.zeros(1, 1, dtype=torch.bool), torch.tensor([[48, 40]]), 16, 64)


def test_crops_follow_a_flip_of_image_and_boxes() -> None:
    """Crops are cut from the image the model gets, so an augmentation of image and boxes
    (here a horizontal flip) moves the crops with them."""
    encoder = CropEncoder(size=8, context=0.5, channels=2, dim=8)
    image, boxes = _scene(5)
    width = image.shape[-1]
    flipped = boxes[..., [2, 1, 0, 3]] * torch.tensor([-1.0, 1, -1, 1]) + torch.tensor(
        [width, 0.0, width, 0])
    a = encoder.crops(image, boxes)
    b = encoder.crops(image.flip(-1), flipped)
    assert torch.allclose(a.flip(-1), b, atol=1e-5)


@pytest.mark.parametrize("norm", [False, True])
def test_padding_boxes_give_zero_tokens_and_batched_equals_one_by_one(tiny_data: Path,
                                                                      norm: bool) -> None:
    model = _model(tiny_data, f"model.crop.norm={norm}")
    image_a, boxes_a = _scene(5, seed=1)
    image_b, boxes_b = _scene(3, seed=2)
    images = torch.cat([image_a, image_b])
    boxes = torch.cat([boxes_a, torch.cat([boxes_b, torch.tensor([[[0.0, 0, 1, 1]] * 2])], 1)])
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with torch.no_grad():
        tokens = model.crop_encoder(model.normalised(images, torch.tensor([[64, 80]] * 2)),
                                    boxes, pad)
        assert tokens[1, 3:].abs().max() == 0 and (tokens[0].abs().sum(-1) > 0).all()
        batched = model(images, boxes, pad)
        single = model(image_b, boxes_b)
    assert torch.allclose(batched["pred_affinity"][1, :3, :3], single["pred_affinity"][0],
                          atol=1e-4)
    assert torch.allclose(batched["pred_logits"][1, :3], single["pred_logits"][0], atol=1e-5)


@pytest.mark.parametrize("fusion", ["add", "replace"])
def test_permutation_equivariant_and_deterministic(tiny_data: Path, fusion: str) -> None:
    model = _model(tiny_data, f"model.crop.fusion={fusion}")
    again = _model(tiny_data, f"model.crop.fusion={fusion}")
    image, boxes = _scene(6, seed=4)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        out = model(image, boxes)
        shuffled = model(image, boxes[:, perm])
        twin = again(image, boxes)
    assert torch.allclose(out["pred_affinity"][0][perm][:, perm], shuffled["pred_affinity"][0],
                          atol=1e-4)
    assert torch.equal(out["pred_affinity"], twin["pred_affinity"])  # same seed, same model


def test_add_uses_the_backbone_and_replace_does_not(tiny_data: Path) -> None:
    image, boxes = _scene(4, seed=5)
    for fusion, changes in (("add", True), ("replace", False)):
        model = _model(tiny_data, f"model.crop.fusion={fusion}")
        with torch.no_grad():
            before = model(image, boxes)["pred_affinity"]
            for p in model.backbone.parameters():
                p.add_(0.5)
            after = model(image, boxes)["pred_affinity"]
        assert (not torch.allclose(before, after, atol=1e-4)) == changes, fusion


def test_crop_norm_is_a_group_norm_per_crop_and_off_keeps_the_old_layout() -> None:
    """``norm`` puts a GroupNorm after each convolution, normalising each crop alone (so the
    token of a box does not depend on the other boxes of the batch); off, the CNN's parameter
    names are those of checkpoints written before the option existed."""
    plain = CropEncoder(size=8, context=0.0, channels=4, dim=16)
    assert [k for k in plain.state_dict() if k.startswith("cnn.")] == [
        f"cnn.{i}.{w}" for i in (0, 2, 4, 6) for w in ("weight", "bias")]
    normed = CropEncoder(size=8, context=0.0, channels=6, dim=16, norm=True).eval()
    norms = [m for m in normed.cnn if isinstance(m, torch.nn.GroupNorm)]
    assert [(m.num_groups, m.num_channels) for m in norms] == [(2, 6), (2, 6), (4, 12), (4, 12)]
    image, boxes = _scene(5, seed=3)
    with torch.no_grad():
        crops = normed.crops(image, boxes)  # [5, 3, 8, 8]
        alone = normed.cnn(crops[:1])
        together = normed.cnn(crops)
    assert torch.allclose(alone, together[:1], atol=1e-6)


@pytest.mark.parametrize("norm", [False, True])
def test_crop_encoder_trains(tiny_data: Path, norm: bool) -> None:
    model = _model(tiny_data, f"model.crop.norm={norm}").train()
    image, boxes = _scene(4, seed=6)
    out = model(image, boxes)
    out["pred_affinity"].sum().backward()
    grads = [p.grad for p in model.crop_encoder.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_crops_change_the_output_only_through_pixels_inside_the_window(tiny_data: Path) -> None:
    """replace: a token sees the pixels of its own window (and the others' through attention),
    never a pixel outside every window."""
    model = _model(tiny_data, "model.crop.fusion=replace")
    image = torch.rand(1, 3, 64, 80)
    boxes = torch.tensor([[[4.0, 4.0, 20.0, 20.0], [30.0, 30.0, 40.0, 44.0]]])
    changed = image.clone()
    changed[..., 50:, 60:] = 0.0  # outside both windows (and their bilinear reach)
    with torch.no_grad():
        a, b = model(image, boxes)["pred_affinity"], model(changed, boxes)["pred_affinity"]
        changed[..., 10, 10] = 1 - changed[..., 10, 10]
        c = model(changed, boxes)["pred_affinity"]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(("override", "key"), [
    ("model.crop.size=0", "model.crop.size"), ("model.crop.size=-4", "model.crop.size"),
    ("model.crop.size=4", "model.crop.size"), ("model.crop.context=-0.1", "model.crop.context"),
    ("model.crop.width=4", "model.crop.width"),
    ("model.crop.channels=0", "model.crop.channels"),
    ("model.crop.fusion=concat", "model.crop.fusion"),
    ("model.backbone.name=none", "model.crop"),
    ("model.crop.augment.rotate=-5", "model.crop.augment.rotate"),
    ("model.crop.augment.scale=1.5", "model.crop.augment.scale"),
])
def test_bad_crop_config_names_the_key(tiny_data: Path, override: str, key: str) -> None:
    with pytest.raises(DetgroupError, match=key.replace(".", r"\.")):
        tiny_config(tiny_data, *CROP, override)


def test_zero_width_box_after_clipping_names_the_box(tiny_data: Path) -> None:
    model = _model(tiny_data)
    image, boxes = _scene(3)
    bad = boxes.clone()
    bad[0, 2] = torch.tensor([85.0, 10.0, 95.0, 20.0])  # right of the 80 px wide image
    with pytest.raises(DetgroupError, match=r"image 0, box 2 .*no width or height"):
        model(image, bad)
    bad[0, 2] = torch.tensor([10.0, 10.0, 10.0, 20.0])  # zero width inside it
    with pytest.raises(DetgroupError, match=r"box 2"):
        model(image, bad)
    # a padding box may be anything
    model(image, bad, torch.tensor([[False, False, True]]))


def test_image_smaller_than_the_crop_names_the_key(tiny_data: Path) -> None:
    model = _model(tiny_data, "model.crop.size=16")
    image = torch.rand(1, 3, 12, 40)
    boxes = torch.tensor([[[2.0, 2.0, 10.0, 10.0]]])
    with pytest.raises(DetgroupError, match=r"12 x 40 px is smaller .*model\.crop\.size = 16"):
        model(image, boxes)
    # the check is per image: the padded batch size does not count, each image's own size does
    with pytest.raises(DetgroupError, match="image 1"):
        check_crop_inputs(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool),
                          torch.tensor([[40, 40], [8, 40]]), 16)


def test_no_boxes(tiny_data: Path) -> None:
    model = _model(tiny_data)
    out = model(torch.rand(1, 3, 64, 64), torch.zeros(1, 0, 4))
    assert out["pred_affinity"].shape == (1, 0, 0)


def _maps(*rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows)  # [K, 2, 3]


@pytest.mark.parametrize("width", [0, 32])
def test_warped_crop_with_the_identity_is_the_crop(width: int) -> None:
    # windows inside the image and no larger than the grid: roi_align takes one sample per
    # cell, as grid_sample does (at the image's edge roi_align repeats the last half pixel,
    # grid_sample fades to zero; larger boxes roi_align averages)
    encoder = CropEncoder(size=16, context=0.1, channels=4, dim=8, width=width)
    image = torch.randn(2, 3, 40, 80, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[[10.0, 10.0, 22.0, 18.0], [40.0, 5.0, 50.0, 17.0]],
                          [[18.0, 3.0, 30.0, 15.0], [45.0, 22.0, 57.0, 34.0]]])
    identity = torch.eye(2, 3).expand(4, 2, 3)
    want = encoder.crops(image, boxes)
    assert torch.allclose(encoder.warped_crops(image, boxes, identity), want, atol=1e-4)
    # a half turn is the crop flipped both ways; a quarter turn of a square crop is rot90
    turn = _maps([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]).expand(4, 2, 3)
    assert torch.allclose(encoder.warped_crops(image, boxes, turn), want.flip(-1, -2),
                          atol=1e-4)
    if width == 0:
        quarter = _maps([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]).expand(4, 2, 3)
        assert torch.allclose(encoder.warped_crops(image, boxes, quarter),
                              torch.rot90(want, 1, dims=(-2, -1)), atol=1e-4)


def test_a_shift_reads_the_pixels_beside_the_box_not_zeros() -> None:
    encoder = CropEncoder(size=8, context=0.0, channels=4, dim=8)
    image = torch.zeros(1, 3, 32, 32)
    image[..., :, 16:] = 1.0  # the right half of the image is lit
    boxes = torch.tensor([[[8.0, 8.0, 16.0, 16.0]]])  # just left of the edge
    assert float(encoder.crops(image, boxes).max()) == 0.0
    half_right = _maps([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # read one half side to the right
    shifted = encoder.warped_crops(image, boxes, half_right)  # [1, 3, 8, 8]
    assert torch.all(shifted[..., :, :4] == 0) and torch.all(shifted[..., :, 4:] == 1)


def test_random_affine_stays_in_its_ranges() -> None:
    torch.manual_seed(0)
    maps = random_affine(4096, CropAugment(rotate=10, scale=0.2, translate=0.1),
                         device=torch.device("cpu"), dtype=torch.float32)  # [K, 2, 3]
    linear = maps[:, :, :2]
    scale = 1 / torch.linalg.det(linear).sqrt()  # no shear: det = 1 / scale^2
    angle = torch.rad2deg(torch.atan2(linear[:, 1, 0], linear[:, 0, 0]))
    assert 0.8 - 1e-5 <= float(scale.min()) and float(scale.max()) <= 1.2 + 1e-5
    assert float(angle.abs().max()) <= 10 + 1e-4 and float(angle.abs().max()) > 9
    assert float(maps[:, :, 2].abs().max()) <= 0.2 + 1e-6  # 0.1 of the side = 0.2 half sides
    none = random_affine(3, CropAugment(), device=torch.device("cpu"), dtype=torch.float32)
    assert torch.equal(none, torch.eye(2, 3).expand(3, 2, 3))
    assert not CropAugment().enabled and CropAugment(shear=1).enabled


def test_augment_warps_training_crops_only(tiny_data: Path) -> None:
    aug = ["model.crop.augment.rotate=15", "model.crop.augment.scale=0.1",
           "model.crop.augment.shear=10", "model.crop.augment.translate=0.05"]
    model = _model(tiny_data, *aug)
    plain = _model(tiny_data)  # the same seed: the same weights
    image, boxes = _scene(5)
    # evaluation never warps: the augmented model is the plain one
    with torch.no_grad():
        assert torch.equal(model(image, boxes)["pred_affinity"],
                           plain(image, boxes)["pred_affinity"])
    model.train()
    torch.manual_seed(1)
    first = model(image, boxes)["pred_affinity"]
    torch.manual_seed(1)
    again = model(image, boxes)["pred_affinity"]
    other = model(image, boxes)["pred_affinity"]
    assert torch.equal(first, again)  # drawn from torch's generator: seeded, reproducible
    assert not torch.allclose(first, other)
    # and it is differentiable, padding rows stay zero
    pad = torch.tensor([[False, False, False, True, True]])
    tokens = model.crop_encoder(image, boxes, pad)
    assert torch.all(tokens[0, 3:] == 0)
    tokens.sum().backward()
    assert model.crop_encoder.cnn[0].weight.grad is not None
