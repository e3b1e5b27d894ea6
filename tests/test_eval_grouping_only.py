"""``detgroup eval --ignore-categories`` (the grouping of boxes of categories never trained on)
and ``--batch-size``; a scene's logits do not depend on the images it is batched with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detgroup.cli import main
from detgroup.decoder import partition
from detgroup.model.detector import build_model
from detgroup.model.postprocess import PostProcess
from tests.conftest import tiny_config


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def _renamed(tiny_data: Path, tmp_path: Path) -> Path:
    """The val file with categories the checkpoint never saw."""
    doc = json.loads((tiny_data / "val/annotations.json").read_text())
    for k, c in enumerate(doc["categories"]):
        c["name"] = f"unseen_{k}"
    out = tmp_path / "renamed.json"
    out.write_text(json.dumps(doc))
    return out


def test_ignore_categories_scores_the_grouping_of_unseen_categories(
        tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    renamed = _renamed(tiny_data, tmp_path)
    images = str(tiny_data / "val/images")
    base = ["eval", "--checkpoint", str(tiny_checkpoint), "--images", images, "--json"]
    assert main([*base, "--data", str(renamed)]) != 0
    assert "--ignore-categories" in capsys.readouterr().err  # the error names the way out
    assert main([*base, "--data", str(renamed), "--ignore-categories"]) == 0
    unseen = _last_json(capsys.readouterr().out)
    assert main([*base, "--data", str(tiny_data / "val/annotations.json"),
                 "--ignore-categories", "--batch-size", "1"]) == 0
    seen = _last_json(capsys.readouterr().out)
    assert unseen["cat_acc"] == 1.0 and unseen["num_images"] == 4
    # the names do not matter, nor (equal-size images: no padding) the batch size
    for key in ("ari", "nmi", "hungarian_acc", "exact_group_f1", "num_groups_mae"):
        assert unseen[key] == pytest.approx(seen[key])
    assert main([*base, "--data", str(renamed), "--ignore-categories",
                 "--unscored-categories", "unseen_0"]) != 0
    assert "--unscored-categories" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main([*base, "--data", str(renamed), "--batch-size", "0"])
    assert err.value.code == 2
    assert "integer >= 1" in capsys.readouterr().err


def test_postprocess_ignoring_categories_partitions_by_the_pair_logits_alone() -> None:
    rng = np.random.default_rng(0)
    n = 9
    pair = rng.normal(0, 3, (1, n, n)).astype(np.float32)
    pair = (pair + pair.transpose(0, 2, 1)) / 2
    # class logits that, decoded jointly, would split the boxes by category
    logits = np.zeros((1, n, 3), np.float32)
    logits[0, np.arange(n), np.arange(n) % 3] = 20.0
    outputs = {"pred_logits": torch.from_numpy(logits), "pred_affinity": torch.from_numpy(pair),
               "pad_mask": torch.zeros(1, n, dtype=torch.bool)}
    boxes = torch.from_numpy(rng.uniform(0, 50, (1, n, 4)).astype(np.float32)).sort(-1).values
    pred = PostProcess(ignore_categories=True)(outputs, boxes, [7])[0]
    assert (pred.categories == 0).all()
    expect = partition(pair[0].astype(np.float64), None, "gaec-kl")[1]
    same = expect[:, None] == expect[None, :]
    assert ((pred.groups[:, None] == pred.groups[None, :]) == same).all()
    joint = PostProcess()(outputs, boxes, [7])[0]
    assert len(set(joint.categories.tolist())) == 3


@pytest.mark.parametrize("backbone", ["small", "resnet18"])
def test_a_scene_s_logits_do_not_depend_on_the_padding(tiny_data: Path, backbone: str) -> None:
    """Batched with a larger image (zero padding to 256 x 256), a 128 px scene gets the logits
    it gets alone: the small backbone's group norms count only the image's own cells, and a
    from-scratch ResNet (torchvision's group norm) runs on each image at its own size."""
    torch.manual_seed(0)
    cfg = tiny_config(tiny_data, f"model.backbone.name={backbone}")
    model = build_model(cfg, pretrained=False).eval()
    boxes = torch.tensor([[[8.0, 8.0, 40.0, 40.0], [50.0, 20.0, 90.0, 60.0],
                           [20.0, 70.0, 60.0, 110.0]]])  # [1, 3, 4]
    image = torch.rand(1, 3, 128, 128)
    padded = torch.zeros(1, 3, 256, 256)
    padded[..., :128, :128] = image
    size = torch.tensor([[128, 128]])
    mask = torch.zeros(1, 3, dtype=torch.bool)
    with torch.no_grad():
        alone = model(images=image, boxes=boxes, pad_mask=mask, image_sizes=size)
        batched = model(images=padded, boxes=boxes, pad_mask=mask, image_sizes=size)
    torch.testing.assert_close(alone["pred_affinity"], batched["pred_affinity"],
                               atol=1e-4, rtol=1e-4)


def test_infer_ignoring_categories_writes_one_category_and_redoes_other_results(
        tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from detgroup.data.coco_groups import load_coco_groups
    from detgroup.inference import AGNOSTIC_CATEGORY, Grouper

    renamed = _renamed(tiny_data, tmp_path)
    out = tmp_path / "infer"
    base = ["infer", "--checkpoint", str(tiny_checkpoint), "--images",
            str(tiny_data / "val/images"), "--boxes", str(renamed), "--out", str(out), "--json"]
    assert main([*base, "--ignore-categories"]) == 0
    assert _last_json(capsys.readouterr().out)["images_done"] == 4
    predictions = load_coco_groups(out / "predictions.json")
    assert predictions.category_names == [AGNOSTIC_CATEGORY]
    records = [json.loads(p.read_text()) for p in sorted((out / "per_image").glob("*.json"))]
    assert {g["category"] for r in records for g in r["groups"]} == {AGNOSTIC_CATEGORY}
    # the same boxes grouped by the API: one category, the pair logits' partition
    grouper = Grouper.from_checkpoint(tiny_checkpoint, ignore_categories=True)
    doc = json.loads(renamed.read_text())
    first = doc["images"][0]
    xywh = np.array([a["bbox"] for a in doc["annotations"] if a["image_id"] == first["id"]])
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    pred = grouper.predict(str(tiny_data / "val/images" / first["file_name"]), boxes)
    assert (pred.categories == 0).all() and grouper.category_names == [AGNOSTIC_CATEGORY]
    # a later run with the model's categories redoes those results instead of failing on them
    assert main(base) == 0
    summary = _last_json(capsys.readouterr().out)
    assert summary["images_done"] == 4 and summary["images_skipped"] == 0
    predictions = load_coco_groups(out / "predictions.json")
    assert predictions.category_names == grouper.cfg.category_names


@pytest.mark.parametrize("h, w", [(100, 77), (64, 64), (33, 130)])
def test_per_image_resnet_maps_have_the_batch_s_sizes(h: int, w: int) -> None:
    """backbone_features pads each image's maps to exactly the sizes of the batched maps, and
    an image that fills the batch gets the batched maps unchanged."""
    from detgroup.model.backbone import backbone_features, build_backbone

    torch.manual_seed(0)
    net = build_backbone(name="resnet18", out_channels=16).eval()
    assert net.per_image
    x = torch.zeros(2, 3, 128, 136)
    x[0] = torch.randn(3, 128, 136)
    x[1, :, :h, :w] = torch.randn(3, h, w)
    sizes = torch.tensor([[128, 136], [h, w]])
    with torch.no_grad():
        batched, per_image = net(x), backbone_features(net, x, sizes)
        alone = net(x[1:, :, :h, :w])
    assert list(per_image) == list(batched)
    for name in batched:
        assert per_image[name].shape == batched[name].shape
        torch.testing.assert_close(per_image[name][:1], net(x[:1])[name])
        a = alone[name]
        torch.testing.assert_close(per_image[name][1:, :, :a.shape[-2], :a.shape[-1]], a)
        assert not per_image[name][1:, :, a.shape[-2]:].any()


def test_train_scores_a_val_set_of_unseen_categories_by_its_grouping(
        tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``data.val_ignore_categories``: training's val is what ``eval --ignore-categories``
    reports for the same checkpoint, on a val file of categories never trained on."""
    import csv

    from detgroup.engine.train import train
    from detgroup.errors import DetgroupError

    renamed = _renamed(tiny_data, tmp_path)
    with pytest.raises(DetgroupError, match="val_ignore_categories"):
        train(tiny_config(tiny_data, f"data.val_ann={renamed}", "train.epochs=1"),
              out_dir=tmp_path / "refused", progress=False)
    with pytest.raises(DetgroupError, match="set no data.unscored_categories"):
        train(tiny_config(tiny_data, f"data.val_ann={renamed}", "train.epochs=1",
                          "data.val_ignore_categories=true", "data.unscored_categories=[cat]"),
              out_dir=tmp_path / "refused2", progress=False)
    out = tmp_path / "run"
    train(tiny_config(tiny_data, f"data.val_ann={renamed}", "train.epochs=1",
                      "data.val_ignore_categories=true"), out_dir=out, progress=False)
    row = next(csv.DictReader((out / "log.csv").open()))
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data", str(renamed),
                 "--images", str(tiny_data / "val/images"), "--ignore-categories",
                 "--json"]) == 0
    report = _last_json(capsys.readouterr().out)
    assert float(row["val_cat_acc"]) == 1.0  # every box of the one category
    for key in ("ari", "exact_group_f1", "group_pq"):
        assert float(row[f"val_{key}"]) == pytest.approx(report[key], abs=1e-4), key
