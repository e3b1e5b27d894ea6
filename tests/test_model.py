"""GroupingModel and GroupCriterion: equivariance, batching, edge cases, RoIAlign, loss masks."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from detgroup.config import Config
from detgroup.losses import GroupCriterion, pair_targets
from detgroup.model.backbone import build_backbone
from detgroup.model.detector import build_model
from detgroup.ops.boxes import (
    layout_pair_geometry,
    pairwise_geometry,
    symmetric_pair_geometry,
)


def _boxes(n: int, size: int = 96, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * (size - 24)
    wh = torch.rand(n, 2, generator=g) * 16 + 6
    return torch.cat([xy, xy + wh], dim=1)  # [N, 4]


def _model(cfg: Config, **loss: str) -> torch.nn.Module:
    for k, v in loss.items():
        setattr(cfg.loss, k, v)
    torch.manual_seed(0)
    return build_model(cfg).eval()


@pytest.mark.parametrize("pair", ["bce", "mcl", "ae"])
def test_permutation_equivariance(tiny_cfg: Config, pair: str) -> None:
    model = _model(tiny_cfg, pair=pair)
    image = torch.rand(1, 3, 96, 96)
    boxes = _boxes(9)[None]
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = model(image, boxes)
        b = model(image, boxes[:, perm])
    torch.testing.assert_close(b["pred_logits"], a["pred_logits"][:, perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b["pred_affinity"], a["pred_affinity"][:, perm][:, :, perm],
                               atol=1e-5, rtol=1e-4)


def test_affinity_is_symmetric(tiny_cfg: Config) -> None:
    model = _model(tiny_cfg)
    with torch.no_grad():
        aff = model(torch.rand(1, 3, 96, 96), _boxes(7)[None])["pred_affinity"][0]
    torch.testing.assert_close(aff, aff.T, atol=1e-5, rtol=1e-4)


def test_batched_equals_one_by_one(tiny_cfg: Config) -> None:
    """Same image size, different box counts: padding changes nothing for the real boxes."""
    model = _model(tiny_cfg)
    images = torch.rand(3, 3, 96, 96)
    counts = [5, 2, 8]
    boxes = torch.zeros(3, 8, 4)
    boxes[:, :, 2:] = 1
    pad = torch.ones(3, 8, dtype=torch.bool)
    for b, n in enumerate(counts):
        boxes[b, :n] = _boxes(n, seed=b)
        pad[b, :n] = False
    with torch.no_grad():
        batched = model(images, boxes, pad)
        for b, n in enumerate(counts):
            single = model(images[b : b + 1], boxes[b : b + 1, :n])
            torch.testing.assert_close(batched["pred_logits"][b, :n], single["pred_logits"][0],
                                       atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(batched["pred_affinity"][b, :n, :n],
                                       single["pred_affinity"][0], atol=1e-5, rtol=1e-4)


def test_padded_image_sizes_mask_pixels(tiny_cfg: Config) -> None:
    """Pixels outside ``image_sizes`` do not reach the features."""
    model = _model(tiny_cfg)
    image = torch.rand(1, 3, 96, 96)
    noisy = image.clone()
    noisy[..., 64:, :] = torch.rand(1, 3, 32, 96)
    sizes = torch.tensor([[64, 96]])
    with torch.no_grad():
        a = model.features(image, sizes)["0"]
        b = model.features(noisy, sizes)["0"]
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("n", [0, 1])
def test_zero_and_one_box(tiny_cfg: Config, n: int) -> None:
    model = _model(tiny_cfg)
    model.train()
    out = model(torch.rand(1, 3, 96, 96), _boxes(n)[None].reshape(1, n, 4))
    assert out["pred_logits"].shape == (1, n, 2)
    assert out["pred_affinity"].shape == (1, n, n)
    crit = GroupCriterion()
    losses = crit(out, {"categories": torch.zeros(1, n, dtype=torch.long),
                        "groups": torch.zeros(1, n, dtype=torch.long)})
    total = crit.total(losses)
    assert torch.isfinite(total)
    total.backward()  # a batch without pairs still gives a usable graph


@pytest.mark.parametrize("roi_width", [0, 9])  # square 5 x 5, and 5 x 9 bins (down x across)
def test_roi_features_equal_torchvision_roi_align(roi_width: int) -> None:
    backbone = build_backbone(name="small", width=16, out_channels=8)
    from detgroup.model.roi_extractor import RoITokenizer

    tok = RoITokenizer(
        in_channels=8, featmap_names=["0", "1"], dim=16, roi_size=5, roi_width=roi_width
    )
    image = torch.rand(2, 3, 64, 80)
    feats = backbone(image)
    boxes = torch.stack([_boxes(4, 60, seed=0), _boxes(4, 60, seed=1)])  # small boxes: level 0
    pooled = tok.pooled(feats, boxes, (64, 80))
    indexed = torch.cat([torch.arange(2).repeat_interleave(4)[:, None].float(),
                         boxes.reshape(-1, 4)], dim=1)  # [K, 5]
    direct = roi_align(feats["0"], indexed, output_size=(5, roi_width or 5), spatial_scale=0.25,
                       sampling_ratio=2)
    torch.testing.assert_close(pooled, direct)
    assert tok(feats, boxes, torch.tensor([[64, 80], [64, 80]]), (64, 80)).shape == (2, 4, 16)


def test_roi_context_pools_the_grown_box_beside_the_box() -> None:
    from detgroup.model.roi_extractor import RoITokenizer

    backbone = build_backbone(name="small", width=16, out_channels=8)
    tok = RoITokenizer(in_channels=8, featmap_names=["0", "1"], dim=16, roi_size=3, roi_width=6,
                       context=0.5)
    assert tok.appearance[1].in_features == 2 * 8 * 3 * 6  # two grids of 8 channels
    image = torch.rand(1, 3, 64, 80)
    feats = backbone(image)
    boxes = torch.tensor([[[10.0, 20.0, 40.0, 28.0], [50.0, 30.0, 70.0, 36.0]]])  # [1, 2, 4]
    seen: list[torch.Tensor] = []
    tok.appearance.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    tok(feats, boxes, torch.tensor([[64, 80]]), (64, 80))
    grown = boxes + torch.tensor([[-4.0, -4.0, 4.0, 4.0], [-3.0, -3.0, 3.0, 3.0]])  # 0.5 x height
    indexed = torch.cat([torch.zeros(2, 1), grown[0]], dim=1)  # [K, 5]
    direct = roi_align(feats["0"], indexed, output_size=(3, 6), spatial_scale=0.25,
                       sampling_ratio=2)  # [2, 8, 3, 6]
    torch.testing.assert_close(seen[0][:, 8:], direct)  # channels 8..15: the surroundings
    torch.testing.assert_close(seen[0][:, :8], tok.pooled(feats, boxes, (64, 80)))


def test_pair_loss_ignores_padding_pairs() -> None:
    crit = GroupCriterion()
    logits = torch.randn(1, 4, 3)
    aff = torch.randn(1, 4, 4)
    aff = (aff + aff.transpose(1, 2)) / 2
    pad = torch.tensor([[False, False, False, True]])
    targets = {"categories": torch.tensor([[0, 0, 1, -1]]), "groups": torch.tensor([[0, 0, 1, -1]])}
    base = crit({"pred_logits": logits, "pred_affinity": aff, "pad_mask": pad}, targets)
    changed = aff.clone()
    changed[0, 3, :] = 100.0
    changed[0, :, 3] = -100.0
    changed_logits = logits.clone()
    changed_logits[0, 3] = torch.tensor([50.0, -50.0, 0.0])
    other = crit({"pred_logits": changed_logits, "pred_affinity": changed, "pad_mask": pad},
                 targets)
    for key in base:
        torch.testing.assert_close(base[key], other[key])


def test_pair_targets_mask_diagonal_and_padding() -> None:
    target, valid = pair_targets(torch.tensor([[0, 0, 1]]), torch.tensor([[False, False, True]]))
    assert target[0].tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert valid[0].tolist() == [[False, True, False], [True, False, False],
                                 [False, False, False]]


@pytest.mark.parametrize("pair", ["bce", "mcl", "kcl", "ae"])
def test_every_pair_loss_learns_a_toy_partition(tiny_cfg: Config, pair: str) -> None:
    """A few optimiser steps on one fixed batch lower the loss (each loss is wired up)."""
    model = _model(tiny_cfg, pair=pair).train()
    crit = GroupCriterion(pair_loss=pair)
    image = torch.rand(1, 3, 96, 96)
    boxes = _boxes(6)[None]
    targets = {"categories": torch.tensor([[0, 0, 0, 1, 1, 1]]),
               "groups": torch.tensor([[0, 0, 1, 2, 2, 3]])}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        total = crit.total(crit(model(image, boxes), targets))
        first = float(total.detach()) if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    assert float(total.detach()) < first


def test_geometry_shapes_and_symmetry() -> None:
    boxes = _boxes(5)[None]
    assert pairwise_geometry(boxes).shape == (1, 5, 5, 7)
    sym = symmetric_pair_geometry(boxes)
    torch.testing.assert_close(sym, sym.transpose(1, 2))


def test_relation_layers_zero_is_per_box(tiny_cfg: Config) -> None:
    """With the transformer off, a box's class logits do not depend on the other boxes."""
    tiny_cfg.model.relation.layers = 0
    model = _model(tiny_cfg)
    image = torch.rand(1, 3, 96, 96)
    boxes = _boxes(6)[None]
    with torch.no_grad():
        full = model(image, boxes)["pred_logits"][0, :3]
        part = model(image, boxes[:, :3])["pred_logits"][0]
    torch.testing.assert_close(full, part, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layout", [False, True])
def test_chunked_pair_head_equals_full(tiny_cfg: Config, layout: bool) -> None:
    """At inference the pair head runs ``pair_chunk`` rows at a time; results are identical."""
    tiny_cfg.model.pair_chunk = 7
    tiny_cfg.model.pair_layout_features = layout
    model = _model(tiny_cfg)
    image, boxes = torch.rand(1, 3, 96, 96), _boxes(30)[None]
    with torch.no_grad():
        chunked = model(image, boxes)["pred_affinity"]
        model.pair_head.chunk = 1000
        full = model(image, boxes)["pred_affinity"]
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-4)


def test_layout_geometry_measures_gaps_in_text_heights() -> None:
    """Two words on one line, 5 px apart, 10 px tall; a third on the next line, left-aligned."""
    boxes = torch.tensor([[[0.0, 0, 20, 10], [25, 0, 45, 10], [0, 14, 60, 24]]])
    geo = layout_pair_geometry(boxes)  # [1, 3, 3, 6]
    torch.testing.assert_close(geo, geo.transpose(1, 2))
    log = torch.log1p
    same_line = torch.stack([log(torch.tensor(0.5)), -log(torch.tensor(1.0)), torch.tensor(1.0),
                             torch.tensor(0.0), log(torch.tensor(2.5)), torch.tensor(0.0)])
    torch.testing.assert_close(geo[0, 0, 1], same_line)
    # next line: horizontal extents overlap by the whole first word (20 px = 2 heights), the
    # vertical gap is 4 px = 0.4 heights, left edges aligned, centres 1.4 heights apart
    next_line = torch.stack([-log(torch.tensor(2.0)), log(torch.tensor(0.4)), torch.tensor(0.0),
                             torch.tensor(1.0), torch.tensor(0.0), log(torch.tensor(1.4))])
    torch.testing.assert_close(geo[0, 0, 2], next_line)


def test_layout_pair_features_change_the_head_and_keep_equivariance(tiny_cfg: Config) -> None:
    plain = _model(tiny_cfg)
    tiny_cfg.model.pair_layout_features = True
    model = _model(tiny_cfg)
    first = model.pair_head.mlp[0]
    assert first.in_features == plain.pair_head.mlp[0].in_features + 6
    image, boxes = torch.rand(1, 3, 96, 96), _boxes(9)[None]
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = model(image, boxes)["pred_affinity"]
        b = model(image, boxes[:, perm])["pred_affinity"]
        # the layout columns are read: zeroing their weights changes the logits
        first.weight[:, -6:] = 0
        c = model(image, boxes)["pred_affinity"]
    torch.testing.assert_close(b, a[:, perm][:, :, perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a, a.transpose(1, 2), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(a, c, atol=1e-4)


def test_group_balance_counts_every_group_once() -> None:
    """Groups of 3, 2 and 1 boxes (+ padding): each group's pairs sum to 1, each ordered pair
    of groups sums to 1; with equal-size groups the loss equals the pair-balanced one."""
    from detgroup.losses import group_pair_weights

    groups = torch.tensor([[0, 0, 0, 1, 1, 2, -1]])
    pad = torch.tensor([[False] * 6 + [True]])
    target, valid = pair_targets(groups, pad)
    weights = group_pair_weights(target, valid)[0]
    same = (target[0] > 0.5) & valid[0]
    assert weights[same].sum() == pytest.approx(2.0)  # two groups with pairs
    assert weights[~same & valid[0]].sum() == pytest.approx(6.0)  # 3 x 2 ordered group pairs
    assert weights[0, 1] == pytest.approx(1 / 6) and weights[3, 4] == pytest.approx(1 / 2)
    assert weights[0, 5] == pytest.approx(1 / 3) and weights[:, 6].sum() == 0

    aff = torch.randn(1, 6, 6)
    aff = (aff + aff.transpose(1, 2)) / 2
    out = {"pred_logits": torch.randn(1, 6, 2), "pred_affinity": aff,
           "pad_mask": torch.zeros(1, 6, dtype=torch.bool)}
    pairs, per_group = GroupCriterion(), GroupCriterion(pair_balance="groups")
    equal = {"categories": torch.zeros(1, 6, dtype=torch.long),
             "groups": torch.tensor([[0, 0, 1, 1, 2, 2]])}
    torch.testing.assert_close(pairs(out, equal)["loss_pair"], per_group(out, equal)["loss_pair"])
    unequal = {"categories": torch.zeros(1, 6, dtype=torch.long),
               "groups": torch.tensor([[0, 0, 0, 0, 1, 2]])}
    assert not torch.allclose(pairs(out, unequal)["loss_pair"],
                              per_group(out, unequal)["loss_pair"])


@pytest.mark.parametrize("pair", ["bce", "mcl", "kcl", "ae"])
def test_pair_loss_leaves_out_pairs_of_boxes_of_unknown_group(pair: str) -> None:
    """group_known False (group_id -1): the box's pairs do not count in any pair loss, but its
    category does; the loss equals the loss of the batch without that box's pairs."""
    torch.manual_seed(0)
    crit = GroupCriterion(pair_loss=pair)
    n = 5
    aff = torch.randn(1, n, n)
    aff = (aff + aff.transpose(1, 2)) / 2
    outputs = {"pred_logits": torch.randn(1, n, 3), "pred_affinity": aff,
               "pad_mask": torch.zeros(1, n, dtype=torch.bool),
               "pred_assign": torch.randn(1, n, 4).softmax(-1),
               "pred_embed": torch.randn(1, n, 6)}
    targets = {"categories": torch.tensor([[0, 0, 1, 1, 2]]),
               "groups": torch.tensor([[0, 0, 1, 1, 2]]),
               "group_known": torch.tensor([[True, True, True, False, True]])}
    base = crit(outputs, targets)
    changed = {**outputs, "pred_affinity": aff.clone(), "pred_embed": outputs["pred_embed"].clone(),
               "pred_assign": outputs["pred_assign"].clone()}
    changed["pred_affinity"][0, 3, :] = changed["pred_affinity"][0, :, 3] = 50.0
    changed["pred_embed"][0, 3] = 100.0
    changed["pred_assign"][0, 3] = torch.tensor([0.97, 0.01, 0.01, 0.01])
    other = crit(changed, targets)
    torch.testing.assert_close(base["loss_pair"], other["loss_pair"])
    torch.testing.assert_close(base["loss_cls"], other["loss_cls"])
    # without the mask the same change moves the loss: the test can fail
    unmasked = {k: v for k, v in targets.items() if k != "group_known"}
    assert not torch.allclose(crit(outputs, unmasked)["loss_pair"],
                              crit(changed, unmasked)["loss_pair"])


def test_dataset_marks_boxes_of_unknown_group(tmp_path) -> None:
    import json

    import cv2
    import numpy as np

    from detgroup.data.dataset import GroupDataset, collate_groups
    from detgroup.losses import pair_prior_log_odds

    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img/a.png"), np.full((40, 40, 3), 90, np.uint8))
    anns = [{"id": k + 1, "image_id": 1, "category_id": 1, "bbox": [k * 8, 0, 6, 6], **g}
            for k, g in enumerate([{"group_id": 3}, {"group_id": 3}, {"group_id": -1},
                                   {"group_id": -1}, {}])]
    (tmp_path / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 40}],
        "categories": [{"id": 1, "name": "cat"}], "annotations": anns}))
    ds = GroupDataset(tmp_path / "ann.json", tmp_path / "img")
    item = ds[0]
    assert item["group_known"].tolist() == [True, True, False, False, True]
    assert len(set(item["groups"][2:4].tolist())) == 2  # -1 boxes are not one group
    batch = collate_groups([item, {**item, "boxes": item["boxes"][:1],
                                   "categories": item["categories"][:1],
                                   "groups": item["groups"][:1],
                                   "group_known": item["group_known"][:1]}])
    assert batch["group_known"][1].tolist() == [True, False, False, False, False]  # padding
    # the calibrated prior counts the pairs among the 3 known boxes only: 2 same, 4 different
    assert pair_prior_log_odds(ds.coco) == pytest.approx(np.log(4 / 2))
