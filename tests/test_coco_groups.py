"""COCO with groups: round trip through pycocotools, every validator error, dataset + collate."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from detgroup.data.coco_groups import load_coco_groups, validate_coco_groups, write_coco_groups
from detgroup.data.dataset import GroupDataset, collate_groups
from detgroup.errors import DetgroupError

GOOD = {
    "images": [
        {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
        {"id": 2, "file_name": "b.png", "width": 32, "height": 32},
        {"id": 3, "file_name": "c.png", "width": 40, "height": 40},
    ],
    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 8], "group_id": 5},
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [20, 2, 10, 8], "group_id": 5},
        {"id": 12, "image_id": 1, "category_id": 2, "bbox": [40, 20, 10, 8], "group_id": 6},
        {"id": 13, "image_id": 1, "category_id": 1, "bbox": [5, 30, 6, 6]},
        {"id": 14, "image_id": 2, "category_id": 2, "bbox": [0, 0, 32, 32], "group_id": 1},
    ],
}


def _write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for im in GOOD["images"]:
        cv2.imwrite(str(folder / im["file_name"]),
                    np.full((im["height"], im["width"], 3), 100, np.uint8))


def test_round_trip_through_pycocotools(tmp_path: Path) -> None:
    path = tmp_path / "ann.json"
    write_coco_groups(path, GOOD)
    coco = COCO(str(path))
    assert sorted(coco.getImgIds()) == [1, 2, 3]
    assert len(coco.getAnnIds(imgIds=[1])) == 4
    assert coco.loadAnns([10])[0]["group_id"] == 5
    assert coco.loadAnns([10])[0]["area"] == 80
    loaded = load_coco_groups(path)
    t = loaded.targets(1)
    assert t["boxes"].tolist()[0] == [1, 2, 11, 10]
    assert t["categories"].tolist() == [0, 0, 1, 0]
    # 10 and 11 share group 5; 12 is group 6; 13 has no group_id: a group of its own.
    assert t["groups"].tolist() == [0, 0, 1, 2]
    assert loaded.targets(3)["boxes"].shape == (0, 4)
    assert loaded.category_names == ["cat", "dog"]


def _problems(mutate, **kwargs) -> list[str]:
    data = copy.deepcopy(GOOD)
    mutate(data)
    return validate_coco_groups(data, path="bad.json", **kwargs)


def _ann(index: int, **changes):
    return lambda d: d["annotations"][index].update(**changes)


def _spanning(d) -> None:
    d["annotations"][2].update(category_id=1, group_id=5)
    d["annotations"][0].update(category_id=2)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_ann(0, image_id=99), "annotation id 10 (image id 99): unknown image id 99"),
        (_ann(1, category_id=7), "annotation id 11 (image id 1): unknown category id 7"),
        (_ann(2, id=10), "annotation id 10 (image id 1): duplicate annotation id"),
        (lambda d: d["images"].append(dict(d["images"][0])), "image id 1: duplicate image id"),
        (lambda d: d["annotations"][0].pop("bbox"), "annotation id 10 (image id 1): missing"),
        (_ann(0, bbox=["1", 2, 3, 4]), "must be a list of 4 numbers"),
        (_ann(0, bbox=[1, 2, 3]), "must be a list of 4 numbers"),
        (_ann(0, bbox=[1, float("nan"), 3, 4]), "non-finite"),
        (_ann(0, bbox=[1, 2, -3, 4]), "non-positive size"),
        (_ann(0, bbox=[60, 2, 10, 8]), "extends outside the 64x48 image"),
        (_spanning, "group_id 5: one group spans categories"),
        (_ann(0, group_id="a"), "'group_id' must be an integer"),
        (lambda d: d["images"][0].update(width="64"), "'width' must be a positive integer"),
        (lambda d: d.update(annotations={}), "'annotations' must be a list"),
        (lambda d: d.pop("categories"), "missing top-level key 'categories'"),
        (lambda d: d["categories"].append({"id": 3, "name": "cat"}), "duplicate category name"),
    ],
)
def test_each_validator_error_names_the_id(mutate, expected: str) -> None:
    problems = _problems(mutate)
    assert problems, "the bad file passed validation"
    assert any(expected in p for p in problems), problems
    assert all(p.startswith("bad.json") for p in problems)


def test_group_spanning_categories_lists_annotation_ids() -> None:
    def mutate(d):
        d["annotations"][2]["group_id"] = 5  # dog joins a cat group

    (problem,) = _problems(mutate)
    assert "annotation ids 10, 11, 12" in problem


def test_all_problems_are_collected() -> None:
    def mutate(d):
        d["annotations"][0]["image_id"] = 99
        d["annotations"][1]["bbox"] = [1, 2, 0, 4]
        d["annotations"][4]["category_id"] = 9

    assert len(_problems(mutate)) == 3


def test_clip_option_clips_instead_of_failing() -> None:
    data = copy.deepcopy(GOOD)
    data["annotations"][0]["bbox"] = [60, 2, 10, 8]
    assert validate_coco_groups(data, clip=True) == []
    assert data["annotations"][0]["bbox"] == [60, 2, 4, 8]


def test_top_level_not_an_object() -> None:
    assert "top level must be a JSON object" in validate_coco_groups([1, 2], path="x.json")[0]


def test_image_files_checked(tmp_path: Path) -> None:
    _write_images(tmp_path / "img")
    (tmp_path / "img" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "img" / "c.png").unlink()
    problems = validate_coco_groups(GOOD, path="g.json", images_dir=tmp_path / "img")
    assert any("image id 2" in p and "not a readable image" in p for p in problems)
    assert any("image id 3" in p and "not found" in p for p in problems)
    assert len(problems) == 2


def test_image_size_mismatch(tmp_path: Path) -> None:
    _write_images(tmp_path / "img")
    cv2.imwrite(str(tmp_path / "img" / "a.png"), np.zeros((10, 10, 3), np.uint8))
    (problem,) = validate_coco_groups(GOOD, path="g.json", images_dir=tmp_path / "img")
    assert "image id 1" in problem and "is 10x10" in problem


def test_load_raises_one_error_with_all_problems(tmp_path: Path) -> None:
    data = copy.deepcopy(GOOD)
    data["annotations"][0]["image_id"] = 99
    data["annotations"][1]["category_id"] = 99
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DetgroupError, match="2 problem") as err:
        load_coco_groups(path)
    assert "annotation id 10" in str(err.value) and "annotation id 11" in str(err.value)


def test_malformed_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(DetgroupError, match=r"broken.json: malformed JSON at line 2"):
        load_coco_groups(path)


def test_writer_refuses_bad_data_and_leaves_no_file(tmp_path: Path) -> None:
    data = copy.deepcopy(GOOD)
    data["annotations"][0]["bbox"] = [1, 2, -5, 3]
    with pytest.raises(DetgroupError):
        write_coco_groups(tmp_path / "out.json", data)
    assert list(tmp_path.iterdir()) == []


def test_dataset_and_collate_pad_with_mask(tmp_path: Path) -> None:
    _write_images(tmp_path / "img")
    write_coco_groups(tmp_path / "ann.json", GOOD)
    ds = GroupDataset(tmp_path / "ann.json", tmp_path / "img")
    items = [ds[i] for i in range(3)]
    assert [len(it["boxes"]) for it in items] == [4, 1, 0]  # N = 4, 1 and 0 are all legal
    assert items[0]["image"].shape == (3, 48, 64)
    batch = collate_groups(items)
    assert batch["images"].shape == (3, 3, 48, 64)
    assert batch["boxes"].shape == (3, 4, 4)
    assert batch["pad_mask"].tolist() == [[False] * 4, [False, True, True, True], [True] * 4]
    assert batch["categories"][1].tolist() == [1, -1, -1, -1]
    assert batch["groups"][0].tolist() == [0, 0, 1, 2]
    assert batch["image_sizes"].tolist() == [[48, 64], [32, 32], [40, 40]]
    # Images are padded bottom/right with zeros, so box coordinates are unchanged.
    assert torch.all(batch["images"][1, :, 32:, :] == 0)


def test_hflip_moves_boxes_with_pixels(tmp_path: Path) -> None:
    _write_images(tmp_path / "img")
    write_coco_groups(tmp_path / "ann.json", GOOD)
    flipped = GroupDataset(tmp_path / "ann.json", tmp_path / "img", hflip_prob=1.0)[0]
    assert flipped["boxes"][0].tolist() == [64 - 11, 2, 64 - 1, 10]


def test_scale_and_box_jitter_keep_boxes_on_their_pixels(tmp_path: Path) -> None:
    """Each box covers a bright patch; after rescaling and jitter it still covers mostly it."""
    (tmp_path / "img").mkdir()
    pixels = np.zeros((48, 64, 3), np.uint8)
    for ann in GOOD["annotations"][:4]:
        x, y, w, h = ann["bbox"]
        pixels[y:y + h, x:x + w] = 255
    cv2.imwrite(str(tmp_path / "img/a.png"), pixels)
    data = {**GOOD, "images": GOOD["images"][:1], "annotations": GOOD["annotations"][:4]}
    write_coco_groups(tmp_path / "ann.json", data)
    plain = GroupDataset(tmp_path / "ann.json", tmp_path / "img")[0]
    ds = GroupDataset(tmp_path / "ann.json", tmp_path / "img", scale_jitter=0.4, box_jitter=0.1,
                      photometric=0.3, seed=1)
    sizes = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        item = ds[0]
        again = ds[0]
        torch.testing.assert_close(item["boxes"], again["boxes"])  # same draw for (epoch, index)
        _, h, w = item["image"].shape
        sizes.add((h, w))
        scale = w / 64
        assert abs(h / 48 - scale) < 0.05  # one factor for both axes
        boxes = item["boxes"]
        assert torch.all(boxes[:, 2:] - boxes[:, :2] >= 1)
        assert torch.all(boxes[:, 0::2] <= w) and torch.all(boxes[:, 1::2] <= h)
        torch.testing.assert_close(boxes, plain["boxes"] * scale, atol=0.1 * 8 * scale + 0.5,
                                   rtol=0)
        gray = item["image"].mean(0)
        for x1, y1, x2, y2 in boxes.round().int().tolist():
            inside = gray[y1:y2, x1:x2].mean()
            assert inside > gray.mean() + 0.2  # the box still sits on its bright patch
        assert torch.equal(item["categories"], plain["categories"])
    assert len(sizes) > 1  # the scale is drawn anew each epoch


def test_box_dropout_leaves_out_boxes_and_keeps_their_labels(tmp_path: Path) -> None:
    """Each box keeps its own category and its group partners; groups stay dense; the draw is
    fixed by (seed, epoch, index); a one-box image keeps its box; 0 changes nothing."""
    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img/a.png"), np.full((100, 100, 3), 100, np.uint8))
    cv2.imwrite(str(tmp_path / "img/b.png"), np.full((32, 32, 3), 100, np.uint8))
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1 + (i // 5) % 2,
             "bbox": [(i % 10) * 10, (i // 10) * 20, 8, 8], "group_id": i // 5} for i in range(40)]
    anns.append({"id": 99, "image_id": 2, "category_id": 1, "bbox": [0, 0, 8, 8], "group_id": 1})
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 100},
                       {"id": 2, "file_name": "b.png", "width": 32, "height": 32}],
            "categories": GOOD["categories"], "annotations": anns}
    write_coco_groups(tmp_path / "ann.json", data)
    plain = GroupDataset(tmp_path / "ann.json", tmp_path / "img")[0]
    ds = GroupDataset(tmp_path / "ann.json", tmp_path / "img", box_dropout=0.3, seed=2)
    kept_counts = []
    for epoch in range(5):
        ds.set_epoch(epoch)
        item = ds[0]
        torch.testing.assert_close(item["boxes"], ds[0]["boxes"])  # same draw for (epoch, index)
        # every kept box is one of the original boxes, with its category and group partners
        rows = [plain["boxes"].tolist().index(b) for b in item["boxes"].tolist()]
        assert torch.equal(item["categories"], plain["categories"][rows])
        same = item["groups"][:, None] == item["groups"][None, :]
        assert torch.equal(same, plain["groups"][rows][:, None] == plain["groups"][rows][None, :])
        assert item["groups"].unique().tolist() == list(range(int(item["groups"].max()) + 1))
        kept_counts.append(len(rows))
        assert len(ds[1]["boxes"]) == 1  # a one-box image keeps its box
    assert len(set(kept_counts)) > 1  # drawn anew each epoch
    assert 0.5 < np.mean(kept_counts) / 40 < 0.9  # about 70 % kept
    # when every box of an image is drawn out, one of them stays
    almost_all = GroupDataset(tmp_path / "ann.json", tmp_path / "img", box_dropout=0.999)
    for epoch in range(3):
        almost_all.set_epoch(epoch)
        assert len(almost_all[0]["boxes"]) == 1
    unchanged = GroupDataset(tmp_path / "ann.json", tmp_path / "img", box_dropout=0.0, seed=2)[0]
    torch.testing.assert_close(unchanged["boxes"], plain["boxes"])


def test_detection_results_keep_each_category_group_apart() -> None:
    from detgroup.data.coco_groups import detection_results

    boxes = np.array([[0, 0, 10, 5], [20, 0, 30, 8], [40, 0, 41, 1]], dtype=np.float64)
    out = detection_results(7, boxes, np.array([0, 1, 1]), np.array([0, 0, 1]),
                            np.array([0.9, 0.8, 0.7], dtype=np.float32), [3, 5])
    assert [r["category_id"] for r in out] == [3, 5, 5]
    assert out[1]["bbox"] == [20.0, 0.0, 10.0, 8.0] and out[0]["image_id"] == 7
    # group 0 of category 0 and group 0 of category 1 are different groups
    assert len({r["group_id"] for r in out}) == 3
