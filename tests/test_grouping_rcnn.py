"""GroupingFasterRCNN: one torchvision Faster R-CNN that detects, classifies and groups."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from detgroup.cli import EXIT_USER_ERROR, main
from detgroup.data.dataset import GroupDataset, collate_groups
from detgroup.errors import DetgroupError
from detgroup.inference import Grouper
from detgroup.losses import DetectionGroupCriterion, build_criterion
from detgroup.model.detector import build_model
from detgroup.model.grouping_rcnn import (
    DETECTION_LOSSES,
    GroupingFasterRCNN,
    build_faster_rcnn,
    load_detector_weights,
)
from tests.conftest import tiny_config

DETECTOR = ["model.detector.min_size=128", "model.detector.max_size=128",
            "model.detector.rpn_post_nms_top_n_train=200",
            "model.detector.rpn_post_nms_top_n_test=100",
            "model.detector.box_batch_size_per_image=64"]


def detector_config(data: Path, backbone: str = "mobilenet_v3_large_fpn", *extra: str):
    return tiny_config(data, f"model.detector.backbone={backbone}", *DETECTOR, *extra)


def tiny_batch(data: Path, count: int = 2) -> dict:
    dataset = GroupDataset(data / "train/annotations.json", data / "train/images")
    return collate_groups([dataset[i] for i in range(count)])


def is_partition_per_category(categories: np.ndarray, groups: np.ndarray, num_classes: int
                              ) -> bool:
    """Every category's group ids are 0..k-1 (so a group holds one category only)."""
    for c in np.unique(categories):
        if not 0 <= c < num_classes:
            return False
        if sorted(set(groups[categories == c].tolist())) != list(range(
                len(set(groups[categories == c].tolist())))):
            return False
    return True


@pytest.mark.parametrize("backbone", ["mobilenet_v3_large_fpn", "resnet50_fpn"])
def test_forward_train_and_eval(tiny_data: Path, backbone: str) -> None:
    torch.manual_seed(0)
    cfg = detector_config(tiny_data, backbone)
    model = build_model(cfg)
    assert isinstance(model, GroupingFasterRCNN)
    batch = tiny_batch(tiny_data)
    model.train()
    out = model(batch["images"], batch["boxes"], batch["pad_mask"], batch["image_sizes"],
                categories=batch["categories"], groups=batch["groups"])
    n_truth = (~batch["pad_mask"]).sum(1)  # [B]
    b, n = out["pad_mask"].shape
    assert out["pred_logits"].shape == (b, n, 2) and out["pred_affinity"].shape == (b, n, n)
    assert ((~out["pad_mask"]).sum(1) >= n_truth).all()
    for i in range(b):  # truth boxes come first, with their own labels
        k = int(n_truth[i])
        assert torch.equal(out["token_categories"][i, :k], batch["categories"][i, :k])
        assert torch.equal(out["token_groups"][i, :k], batch["groups"][i, :k])
    criterion = build_criterion(cfg)
    assert isinstance(criterion, DetectionGroupCriterion)
    losses = criterion(out, batch)
    assert set(losses) == {*DETECTION_LOSSES, "loss_cls", "loss_pair"}
    criterion.total(losses).backward()
    backbone_grad = next(p.grad for p in model.detector.backbone.parameters()
                         if p.requires_grad)
    assert backbone_grad is not None and backbone_grad.abs().sum() > 0
    assert model.pair_head.mlp[0].weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        given = model(batch["images"], batch["boxes"], batch["pad_mask"], batch["image_sizes"])
        assert given["pred_logits"].shape[:2] == batch["boxes"].shape[:2]
        assert torch.equal(given["pred_boxes"], batch["boxes"])
        found = model(batch["images"], image_sizes=batch["image_sizes"])
    n = found["pad_mask"].shape[1]
    assert found["pred_boxes"].shape == (b, n, 4) and found["pred_scores"].shape == (b, n)
    real = ~found["pad_mask"]
    assert (found["pred_scores"][real] >= cfg.model.detector.score_threshold).all()


def test_given_boxes_permutation_equivariant(tiny_data: Path) -> None:
    torch.manual_seed(1)
    model = build_model(detector_config(tiny_data)).eval()
    batch = tiny_batch(tiny_data, 1)
    n = batch["boxes"].shape[1]
    perm = torch.randperm(n)
    with torch.no_grad():
        a = model(batch["images"], batch["boxes"])
        b = model(batch["images"], batch["boxes"][:, perm])
    torch.testing.assert_close(b["pred_logits"], a["pred_logits"][:, perm], atol=1e-4, rtol=0)
    torch.testing.assert_close(b["pred_affinity"], a["pred_affinity"][:, perm][:, :, perm],
                               atol=1e-4, rtol=0)


def test_loss_decreases_on_a_tiny_set(tiny_data: Path) -> None:
    torch.manual_seed(0)
    cfg = detector_config(tiny_data)
    model = build_model(cfg).train()
    criterion = build_criterion(cfg)
    batch = tiny_batch(tiny_data, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    totals, cls = [], []
    for _ in range(10):
        out = model(batch["images"], batch["boxes"], batch["pad_mask"], batch["image_sizes"],
                    categories=batch["categories"], groups=batch["groups"])
        losses = criterion(out, batch)
        loss = criterion.total(losses)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as the training loop does
        optimizer.step()
        totals.append(float(loss.detach()))
        cls.append(float(losses["loss_cls"].detach() + losses["loss_classifier"].detach()))
    # (the box regression loss may rise at first: more proposals become positives)
    assert np.mean(totals[-3:]) < 0.8 * totals[0], totals
    assert np.mean(cls[-3:]) < 0.5 * cls[0], cls


def test_predict_without_boxes_is_a_partition_and_handles_no_detections(tiny_data: Path
                                                                         ) -> None:
    torch.manual_seed(0)
    cfg = detector_config(tiny_data, "mobilenet_v3_large_fpn",
                          "model.detector.score_threshold=0.0")
    grouper = Grouper(build_model(cfg), cfg)
    assert grouper.detects
    image = (np.random.default_rng(0).random((128, 160, 3)) * 255).astype(np.uint8)
    result = grouper.predict(image)
    n = len(result.boxes)
    assert n > 0 and result.affinity.shape == (n, n) and result.detection_scores.shape == (n,)
    assert is_partition_per_category(result.categories, result.groups, 2)
    assert (result.boxes[:, [0, 2]] <= 160).all() and (result.boxes[:, [1, 3]] <= 128).all()
    assert (result.scores <= result.detection_scores + 1e-6).all()
    given = grouper.predict(image, result.boxes[:3])  # the same model groups given boxes too
    assert len(given.boxes) == 3 and given.detection_scores is None

    grouper.model.detector.roi_heads.score_thresh = 1.0  # nothing passes: N = 0
    empty = grouper.predict(image)
    assert empty.boxes.shape == (0, 4) and empty.categories.shape == (0,)
    assert empty.affinity.shape == (0, 0) and empty.group_list() == []


def test_detector_weights_file(tiny_data: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_faster_rcnn(backbone="mobilenet_v3_large_fpn", num_classes=5)
    fits = tmp_path / "mobilenet_5_classes.pt"
    torch.save(source.state_dict(), fits)
    cfg = detector_config(tiny_data, "mobilenet_v3_large_fpn", f"model.detector.weights={fits}")
    model = build_model(cfg)  # another number of classes: the box predictor starts afresh
    key = "backbone.body.0.0.weight"
    assert torch.equal(model.detector.state_dict()[key], source.state_dict()[key])
    assert model.detector.roi_heads.box_predictor.cls_score.out_features == 3

    wrong = tmp_path / "resnet18.pt"
    torch.save(resnet18(weights=None).state_dict(), wrong)
    target = build_faster_rcnn(backbone="mobilenet_v3_large_fpn", num_classes=2)
    with pytest.raises(DetgroupError, match=r"resnet18\.pt: not the weights of a torchvision "
                                            r"Faster R-CNN mobilenet_v3_large_fpn \(wrong arch"):
        load_detector_weights(target, wrong, backbone="mobilenet_v3_large_fpn")
    with pytest.raises(DetgroupError, match="wrong architecture"):
        load_detector_weights(build_faster_rcnn(backbone="resnet50_fpn", num_classes=2), fits,
                              backbone="resnet50_fpn")
    with pytest.raises(DetgroupError, match="not found"):
        load_detector_weights(target, tmp_path / "missing.pt", backbone="mobilenet_v3_large_fpn")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(DetgroupError, match="cannot read detector weights"):
        load_detector_weights(target, junk, backbone="mobilenet_v3_large_fpn")


def test_config_rejects_an_unknown_detector(tiny_data: Path) -> None:
    with pytest.raises(DetgroupError, match="model.detector.backbone must be null or one of"):
        detector_config(tiny_data, "vgg16")


@pytest.fixture(scope="module")
def detecting_checkpoint(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from detgroup.engine.train import train

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("rcnn_run")
    train(detector_config(tiny_data, "mobilenet_v3_large_fpn", "train.epochs=1",
                          "model.detector.score_threshold=0.0"), out_dir=out, progress=False)
    return out / "model.pt"


def test_train_infer_eval_with_one_model_file(detecting_checkpoint: Path, tiny_data: Path,
                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    out = tmp_path / "infer"
    assert main(["infer", "--checkpoint", str(detecting_checkpoint), "--images",
                 str(tiny_data / "val/images"), "--out", str(out), "--no-overlays",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images_done"] == 4 and summary["boxes"] > 0
    results = json.loads((out / "results.json").read_text())
    assert all({"bbox", "score", "group_id", "category_id"} <= set(r) for r in results)
    # the model also groups given boxes (truth boxes: val metrics during training)
    assert main(["eval", "--checkpoint", str(detecting_checkpoint), "--data",
                 str(tiny_data / "val/annotations.json"), "--images",
                 str(tiny_data / "val/images"), "--json"]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out.strip().splitlines()[-1])["cat_acc"] <= 1
    with pytest.raises(DetgroupError, match="cannot be exported"):
        from detgroup.export import export_model

        export_model(detecting_checkpoint, "torchscript", tmp_path / "x.pt")


def test_infer_without_boxes_needs_a_detecting_model(tiny_checkpoint: Path, tiny_data: Path,
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["infer", "--checkpoint", str(tiny_checkpoint), "--images",
                 str(tiny_data / "val/images"), "--out", str(tmp_path)])
    assert code == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "give --boxes or --detector" in err
    with pytest.raises(DetgroupError, match="give the boxes"):
        Grouper.from_checkpoint(tiny_checkpoint).predict(np.zeros((64, 64, 3), np.uint8))


SMALL = ["model.detector.returned_layers=[2,3,5]",
         "model.detector.anchor_sizes=[[16],[32],[64],[128]]"]


def test_small_object_levels_have_strides_8_16_32() -> None:
    detector = build_faster_rcnn(backbone="mobilenet_v3_large_fpn", num_classes=2, min_size=256,
                                 max_size=256, returned_layers=[2, 3, 5],
                                 anchor_sizes=[[16], [32], [64], [128]])
    with torch.no_grad():
        maps = detector.backbone(torch.zeros(1, 3, 256, 256))
    assert {k: 256 // v.shape[-1] for k, v in maps.items()} == {"0": 8, "1": 16, "2": 32,
                                                                 "pool": 64}
    assert detector.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2"]
    assert detector.rpn.anchor_generator.num_anchors_per_location() == [3, 3, 3, 3]
    old = build_faster_rcnn(backbone="mobilenet_v3_large_fpn", num_classes=2)
    with torch.no_grad():
        old_maps = old.backbone(torch.zeros(1, 3, 256, 256))
    assert {k: 256 // v.shape[-1] for k, v in old_maps.items()} == {"0": 32, "1": 32,
                                                                     "pool": 64}


def test_small_object_detector_trains_and_detects(tiny_data: Path) -> None:
    torch.manual_seed(0)
    cfg = detector_config(tiny_data, "mobilenet_v3_large_fpn", *SMALL,
                          "model.detector.score_threshold=0.0")
    model = build_model(cfg)
    batch = tiny_batch(tiny_data)
    model.train()
    out = model(batch["images"], batch["boxes"], batch["pad_mask"], batch["image_sizes"],
                categories=batch["categories"], groups=batch["groups"])
    losses = build_criterion(cfg)(out, batch)
    assert all(torch.isfinite(losses[k]) for k in DETECTION_LOSSES)
    model.eval()
    with torch.no_grad():
        det = model(batch["images"], image_sizes=batch["image_sizes"])
    assert det["pred_boxes"].shape[:2] == det["pad_mask"].shape
    assert det["pred_logits"].shape[-1] == 2


def test_default_detector_keeps_old_checkpoints_loadable(tiny_data: Path) -> None:
    """A model built without the new keys has torchvision's builder's exact state dict."""
    old = build_faster_rcnn(backbone="mobilenet_v3_large_fpn", num_classes=2)
    new = build_model(detector_config(tiny_data)).detector
    assert {k: v.shape for k, v in old.state_dict().items()} == {
        k: v.shape for k, v in new.state_dict().items()}
    new.load_state_dict(old.state_dict())


def test_bad_returned_layers_and_anchor_sizes_fail_with_the_key(tiny_data: Path) -> None:
    with pytest.raises(DetgroupError, match="returned_layers"):
        build_model(detector_config(tiny_data, "mobilenet_v3_large_fpn",
                                    "model.detector.returned_layers=[3,2]"))
    with pytest.raises(DetgroupError, match="anchor_sizes"):
        build_model(detector_config(tiny_data, "mobilenet_v3_large_fpn",
                                    "model.detector.returned_layers=[2,3,5]",
                                    "model.detector.anchor_sizes=[[16],[32]]"))
