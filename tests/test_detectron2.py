"""The detectron2 integration (detgroup.integrations.detectron2), an optional extra.

Every test that needs detectron2 asks for the ``d2`` fixture, which skips it with the reason when
detectron2 is not installed; the one test that checks the message for a missing detectron2 runs
everywhere.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from detgroup.errors import DetgroupError

ROOT = Path(__file__).resolve().parents[1]
SKIP_REASON = ("detectron2 is not installed (optional extra; README 'Inside detectron2': "
               "pip install -e '.[detectron2]' plus the wheel in ../shared/vendor/detectron2)")


@pytest.fixture(scope="module")
def d2() -> Any:
    pytest.importorskip("detectron2", reason=SKIP_REASON)
    import detgroup.integrations.detectron2 as integration

    return integration


def test_import_without_detectron2_says_how_to_install() -> None:
    code = ("import sys; sys.modules['detectron2'] = None\n"
            "try:\n    import detgroup.integrations.detectron2\n"
            "except ImportError as err:\n    print(str(err))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.strip()
    assert len(out.splitlines()) == 1
    assert "needs detectron2" in out and "pip install" in out and ".whl" in out


TINY_OPTS: list[Any] = [
    "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64, "MODEL.RPN.POST_NMS_TOPK_TEST", 32,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
    "MODEL.GROUPING.DIM", 32, "MODEL.GROUPING.RELATION_LAYERS", 1,
    "MODEL.GROUPING.RELATION_HEADS", 2, "MODEL.GROUPING.PAIR_HIDDEN", 32,
    "INPUT.MIN_SIZE_TRAIN", (128,), "INPUT.MAX_SIZE_TRAIN", 128, "INPUT.MIN_SIZE_TEST", 128,
    "INPUT.MAX_SIZE_TEST", 128,
]


def tiny_cfg(d2: Any, num_classes: int = 2) -> Any:
    """A small detectron2 Faster R-CNN (MobileNetV3 FPN with 32 channels, 128 px) with the
    grouping heads, on the CPU."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    d2.add_grouping_config(cfg)
    cfg.merge_from_file(str(ROOT / "configs/detectron2/synth_mobilenet.yaml"))
    cfg.merge_from_list([*TINY_OPTS, "MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.NUM_CLASSES",
                         num_classes])
    return cfg


def _batch(d2: Any, dataset: str, count: int) -> list[dict[str, Any]]:
    from detectron2.data import DatasetCatalog

    mapper = d2.GroupingDatasetMapper(tiny_cfg(d2), is_train=True)
    return [mapper(r) for r in DatasetCatalog.get(dataset)[:count]]


@pytest.fixture(scope="module")
def registered(d2: Any, tiny_data: Path) -> str:
    """The tiny synthetic train set, registered as ``tiny_d2_train``."""
    from detectron2.data import DatasetCatalog

    if "tiny_d2_train" not in DatasetCatalog.list():
        d2.register_coco_groups_instances("tiny_d2_train", tiny_data / "train/annotations.json",
                                          tiny_data / "train/images")
    return "tiny_d2_train"


def _model(d2: Any, seed: int = 0) -> Any:
    from detectron2.modeling import build_model

    torch.manual_seed(seed)
    return build_model(tiny_cfg(d2))


def test_heads_forward_in_training_and_eval_mode(d2: Any, registered: str) -> None:
    from detectron2.utils.events import EventStorage

    model = _model(d2)
    assert isinstance(model.roi_heads, d2.GroupingROIHeads)
    batch = _batch(d2, registered, 2)
    with EventStorage():
        losses = model(batch)
    assert {"loss_group_cls", "loss_group_pair", "loss_cls", "loss_rpn_cls"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    relation = model.roi_heads.group_relation
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in relation.parameters())
    model.eval()
    with torch.no_grad():
        outputs = model([{"image": b["image"]} for b in batch])
    for out in outputs:
        inst = out["instances"]
        assert len(inst) > 0  # SCORE_THRESH_TEST 0: random boxes pass
        for field in ("pred_groups", "group_scores", "det_classes", "det_scores"):
            assert inst.has(field) and len(inst.get(field)) == len(inst)


def test_training_tokens_are_foreground_proposals_and_truth(d2: Any) -> None:
    from detectron2.structures import Boxes, Instances

    heads = _model(d2).roi_heads
    props = Instances((64, 64))
    props.proposal_boxes = Boxes(torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [30, 30, 40, 40],
                                               [50, 50, 60, 60]], dtype=torch.float32))
    props.gt_classes = torch.tensor([1, 2, 0, 2])  # 2 = background (NUM_CLASSES = 2)
    props.gt_groups = torch.tensor([4, 0, 7, 0])  # background rows: whatever they matched
    truth = Instances((64, 64))
    truth.gt_boxes = Boxes(torch.tensor([[0, 0, 10, 10], [30, 30, 40, 40]], dtype=torch.float32))
    truth.gt_classes = torch.tensor([1, 0])
    truth.gt_groups = torch.tensor([4, -1])
    boxes, cats, groups = heads._training_tokens([props], [truth])
    assert cats[0].tolist() == [1, 0, 1, 0] and groups[0].tolist() == [4, 7, 4, -1]
    assert boxes[0][:, 0].tolist() == [0.0, 30.0, 0.0, 30.0]


def test_group_losses_decrease_on_a_tiny_set(d2: Any, registered: str) -> None:
    from detectron2.utils.events import EventStorage

    model = _model(d2, seed=1)
    batch = _batch(d2, registered, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    with EventStorage():
        for _ in range(12):
            losses = model(batch)
            history.append((losses["loss_group_cls"] + losses["loss_group_pair"]).item())
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    assert np.mean(history[-3:]) < 0.8 * np.mean(history[:3]), history


def test_pred_groups_are_a_per_category_partition(d2: Any, registered: str) -> None:
    model = _model(d2).eval()
    batch = _batch(d2, registered, 2)
    with torch.no_grad():
        outputs = model([{"image": b["image"]} for b in batch])
    for out in outputs:
        inst = out["instances"]
        classes, groups = inst.pred_classes.numpy(), inst.pred_groups.numpy()
        scores = inst.group_scores.numpy()
        assert ((scores >= 0) & (scores <= 1)).all()
        for c in np.unique(classes):
            ids = groups[classes == c]
            assert sorted(set(ids.tolist())) == list(range(len(set(ids.tolist()))))
            for g in np.unique(ids):
                members = (classes == c) & (groups == g)
                assert np.allclose(scores[members], scores[members][0])
        # the decoded class comes with the detector's: scores = det_scores x class probability
        assert (inst.scores <= inst.det_scores + 1e-6).all()


def _image_dict(tmp_path: Path) -> dict[str, Any]:
    import cv2
    from detectron2.structures import BoxMode

    path = tmp_path / "image.png"
    cv2.imwrite(str(path), np.full((100, 200, 3), 127, dtype=np.uint8))
    boxes = [[10, 10, 20, 20], [150, 40, 30, 20], [60, 70, 20, 20]]  # x, y, w, h
    return {"file_name": str(path), "image_id": 1, "height": 100, "width": 200,
            "annotations": [{"bbox": b, "bbox_mode": BoxMode.XYWH_ABS, "category_id": c,
                             "group_id": g, "iscrowd": 0}
                            for b, c, g in zip(boxes, [0, 1, 0], [0, 1, -1], strict=True)]}


def test_mapper_keeps_groups_under_flip_resize_and_crop(d2: Any, tmp_path: Path) -> None:
    from detectron2.data import transforms as T

    record = _image_dict(tmp_path)
    cfg = tiny_cfg(d2)
    flip = d2.GroupingDatasetMapper(cfg, is_train=True, augmentations=[
        T.ResizeShortestEdge(50, 1000), T.RandomFlip(prob=1.0, horizontal=True)])
    inst = flip(record)["instances"]
    assert inst.gt_groups.tolist() == [0, 1, -1] and inst.gt_classes.tolist() == [0, 1, 0]
    # resized by 1/2, then flipped in a 100 px wide image: box 0 (x 10..30) is at x 85..95
    assert torch.allclose(inst.gt_boxes.tensor[0], torch.tensor([85.0, 5.0, 95.0, 15.0]))
    # a crop that leaves the second box out: the others keep their groups
    crop = d2.GroupingDatasetMapper(cfg, is_train=True,
                                    augmentations=[T.CropTransform(0, 0, 100, 100)])
    inst = crop(record)["instances"]
    assert inst.gt_groups.tolist() == [0, -1] and inst.gt_classes.tolist() == [0, 0]


def _groups_file(tmp_path: Path, second_category: int = 1) -> Path:
    data = {"images": [{"id": 3, "file_name": "a.png", "width": 64, "height": 64}],
            "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}],
            "annotations": [
                {"id": 11, "image_id": 3, "category_id": 5, "bbox": [1, 1, 10, 10],
                 "group_id": 7},
                {"id": 12, "image_id": 3, "category_id": [5, 9][second_category],
                 "bbox": [20, 20, 10, 10], "group_id": 7},
                {"id": 13, "image_id": 3, "category_id": 9, "bbox": [40, 5, 10, 10]},
                {"id": 14, "image_id": 3, "category_id": 9, "bbox": [40, 40, 10, 10],
                 "group_id": -1},
            ]}
    path = tmp_path / "groups.json"
    path.write_text(json.dumps(data))
    return path


def test_registered_dataset_round_trips_a_coco_groups_file(d2: Any, tmp_path: Path) -> None:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    path = _groups_file(tmp_path, second_category=0)  # 11 and 12: one group of cats
    d2.register_coco_groups_instances("roundtrip", path, tmp_path)
    (record,) = DatasetCatalog.get("roundtrip")
    assert record["file_name"] == str(tmp_path / "a.png") and record["image_id"] == 3
    anns = record["annotations"]
    assert [a["ann_id"] for a in anns] == [11, 12, 13, 14]
    assert [a["category_id"] for a in anns] == [0, 0, 1, 1]
    groups = [a["group_id"] for a in anns]
    assert groups[0] == groups[1] and len({groups[0], groups[2]}) == 2 and groups[3] == -1
    assert anns[1]["bbox"] == [20.0, 20.0, 10.0, 10.0]
    meta = MetadataCatalog.get("roundtrip")
    assert meta.thing_classes == ["cat", "dog"]
    assert meta.thing_dataset_id_to_contiguous_id == {5: 0, 9: 1}


def test_group_across_two_categories_fails_with_detgroups_message(d2: Any,
                                                                  tmp_path: Path) -> None:
    from detectron2.data import DatasetCatalog

    path = _groups_file(tmp_path, second_category=1)  # group 7 holds a cat and a dog
    with pytest.raises(DetgroupError) as err:
        d2.register_coco_groups_instances("bad_groups", path, tmp_path)
    message = str(err.value)
    assert str(path) in message and "group_id 7" in message
    assert "spans categories" in message and "annotation ids 11, 12" in message
    assert "bad_groups" not in DatasetCatalog.list()


def test_evaluator_scores_groups_on_detected_boxes(d2: Any, tmp_path: Path) -> None:
    from detectron2.structures import Boxes, Instances

    path = _groups_file(tmp_path, second_category=0)
    d2.register_coco_groups_instances("eval_set", path, tmp_path)
    evaluator = d2.GroupingEvaluator("eval_set")

    def outputs(groups: list[int]) -> list[dict[str, Any]]:
        inst = Instances((64, 64))
        inst.pred_boxes = Boxes(torch.tensor([[1, 1, 11, 11], [20, 20, 30, 30], [40, 5, 50, 15],
                                              [40, 40, 50, 50]], dtype=torch.float32))
        inst.scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
        inst.pred_classes = torch.tensor([0, 0, 1, 1])
        inst.pred_groups = torch.tensor(groups)
        return [{"instances": inst}]

    evaluator.reset()
    evaluator.process([{"image_id": 3}], outputs([0, 0, 0, 1]))
    right = evaluator.evaluate()["groups"]
    assert right["cat_ap"] == pytest.approx(1.0) and right["cat_acc"] == 1.0
    assert right["group_f1"] == 1.0 and right["box_recall"] == 1.0
    evaluator.reset()
    evaluator.process([{"image_id": 3}], outputs([0, 1, 0, 1]))  # the cat pair split
    wrong = evaluator.evaluate()["groups"]
    assert wrong["group_f1"] < 1.0 and wrong["cat_ap"] == pytest.approx(1.0)


def test_mobilenet_backbone_matches_torchvisions_strides(d2: Any) -> None:
    model = _model(d2)  # configs/detectron2/synth_mobilenet.yaml: RETURNED_LAYERS [2, 3, 5]
    shapes = model.backbone.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == {"0": 8, "1": 16, "2": 32, "pool": 64}
    assert {v.channels for v in shapes.values()} == {32}
    maps = model.backbone(torch.zeros(1, 3, 256, 256))
    assert {k: 256 // v.shape[-1] for k, v in maps.items()} == {"0": 8, "1": 16, "2": 32,
                                                                 "pool": 64}
    assert model.roi_heads.box_pooler.min_level == 3 and model.roi_heads.box_pooler.max_level == 5
    cfg = tiny_cfg(d2)
    cfg.merge_from_list(["MODEL.MOBILENET_FPN.RETURNED_LAYERS", [],
                         "MODEL.ANCHOR_GENERATOR.SIZES", [[32, 64, 128, 256, 512]],
                         "MODEL.RPN.IN_FEATURES", ["0", "1", "pool"],
                         "MODEL.ROI_HEADS.IN_FEATURES", ["0"]])
    from detectron2.modeling import build_model

    old = build_model(cfg).backbone.output_shape()  # the setting before: torchvision's default
    assert {k: v.stride for k, v in old.items()} == {"0": 32, "1": 32, "pool": 64}


def test_mobilenet_backbone_is_the_torchvision_models_backbone(d2: Any) -> None:
    """Same stages, same FPN, same parameter count as GroupingFasterRCNN's in
    configs/synth_detector.yaml (issue 20's comparison at equal size)."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_backbone

    from detgroup.config import load_config
    from detgroup.model.grouping_rcnn import build_faster_rcnn

    cfg = get_cfg()
    d2.add_grouping_config(cfg)
    cfg.merge_from_file(str(ROOT / "configs/detectron2/synth_mobilenet.yaml"))
    ours = build_backbone(cfg).body
    d = load_config(ROOT / "configs/synth_detector.yaml").model.detector
    theirs = build_faster_rcnn(backbone=d.backbone, num_classes=2,
                               returned_layers=list(d.returned_layers),
                               anchor_sizes=[list(a) for a in d.anchor_sizes]).backbone
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()}
    assert [list(a) for a in cfg.MODEL.ANCHOR_GENERATOR.SIZES] == [list(a) for a in
                                                                    d.anchor_sizes]


def test_readme_snippet_builds_a_grouping_model(d2: Any, tiny_data: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- detectron2-snippet -->", 1)[1]
    code = re.search(r"```python\n(.*?)```", block, re.S).group(1)
    assert len(code.strip().splitlines()) < 15
    code = code.replace("runs/synth", str(tiny_data)).replace('"pets_train"', '"readme_train"')
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    model = namespace["model"]
    assert isinstance(model.roi_heads, d2.GroupingROIHeads)
    assert model.roi_heads.num_classes == 2


def test_train_script_trains_evaluates_and_times(d2: Any, tiny_data: Path,
                                                 tmp_path: Path) -> None:
    opts = [str(v) for v in TINY_OPTS] + ["SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2",
                                          "SOLVER.WARMUP_ITERS", "1"]
    opts[opts.index("INPUT.MIN_SIZE_TRAIN") + 1] = "(128,)"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "tools/train_detectron2.py"), "--config",
           str(ROOT / "configs/detectron2/synth_mobilenet.yaml"), "--data", str(tiny_data),
           "--out", str(tmp_path / "run"), "--threads", "1", "--time-images", "2", *opts]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "run/metrics.json").read_text())
    assert record["val"]["num_images"] == 4
    assert {"cat_ap", "box_ap50", "cat_acc", "group_f1", "group_pq"} <= set(record["val"])
    assert record["ms_per_image"] > 0 and record["train_seconds"] > 0
    assert (tmp_path / "run/model_final.pth").is_file()


def test_no_boxes_give_empty_groups_and_zero_group_losses(d2: Any) -> None:
    from detectron2.structures import Boxes, Instances

    heads = _model(d2).roi_heads
    features = {"0": torch.randn(1, 32, 4, 4), "1": torch.randn(1, 32, 4, 4),
                "pool": torch.randn(1, 32, 2, 2)}
    empty = Instances((128, 128))
    empty.pred_boxes = Boxes(torch.zeros(0, 4))
    empty.scores = torch.zeros(0)
    empty.pred_classes = torch.zeros(0, dtype=torch.int64)
    (inst,) = heads.eval().forward_with_given_boxes(features, [empty])
    assert len(inst.pred_groups) == 0 and len(inst.group_scores) == 0
    background = Instances((128, 128))  # one proposal, background: no token
    background.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    background.gt_classes = torch.tensor([2])
    truth = Instances((128, 128))
    truth.gt_boxes = Boxes(torch.zeros(0, 4))
    truth.gt_classes = torch.zeros(0, dtype=torch.int64)
    truth.gt_groups = torch.zeros(0, dtype=torch.int64)
    losses = heads.train()._group_losses(features, [background], [truth])
    assert {k: v.item() for k, v in losses.items()} == {"loss_group_cls": 0.0,
                                                        "loss_group_pair": 0.0}
