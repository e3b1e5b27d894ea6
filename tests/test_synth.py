"""Synthetic "pets in groups": determinism by seed, splits, and the guarantees the set promises."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from detgroup.data.coco_groups import load_coco_groups
from detgroup.data.synth import SynthConfig, generate_synthetic, render_scene
from detgroup.errors import DetgroupError

SMALL = dict(image_size=128, num_train=4, num_val=2)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _scenes(cfg: SynthConfig, count: int) -> list[tuple[np.ndarray, list[dict]]]:
    return [render_scene(np.random.default_rng([cfg.seed, 0, i]), cfg) for i in range(count)]


@pytest.fixture(scope="module")
def scenes() -> list[tuple[np.ndarray, list[dict]]]:
    return _scenes(SynthConfig(), 40)


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    cfg = SynthConfig(**SMALL, seed=3)
    generate_synthetic(tmp_path / "a", cfg)
    generate_synthetic(tmp_path / "b", cfg)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys()
    assert a == b


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "a", SynthConfig(**SMALL, seed=0))
    generate_synthetic(tmp_path / "b", SynthConfig(**SMALL, seed=1))
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if k.endswith(".png"))
    assert a["train/annotations.json"] != b["train/annotations.json"]


def test_subset_regenerates_identically() -> None:
    """Image i depends only on (seed, split, i), not on how many images were drawn before."""
    cfg = SynthConfig(**SMALL)
    image, anns = render_scene(np.random.default_rng([cfg.seed, 1, 7]), cfg)
    again, anns_again = render_scene(np.random.default_rng([cfg.seed, 1, 7]), cfg)
    assert np.array_equal(image, again)
    assert anns == anns_again


def test_splits_layout_and_sizes(tmp_path: Path) -> None:
    cfg = SynthConfig(**SMALL, categories=["cat", "dog", "rabbit"])
    paths = generate_synthetic(tmp_path, cfg)
    assert set(paths) == {"train", "val"}
    for split, count in (("train", cfg.num_train), ("val", cfg.num_val)):
        assert paths[split] == tmp_path / split / "annotations.json"
        coco = load_coco_groups(paths[split], images_dir=tmp_path / split / "images")
        assert len(coco) == count
        assert len(list((tmp_path / split / "images").glob("*.png"))) == count
        assert coco.category_names == ["cat", "dog", "rabbit"]
        assert coco.category_ids == [1, 2, 3]
        raw = json.loads(paths[split].read_text())
        assert all(isinstance(a["ambiguous"], bool) for a in raw["annotations"])
        assert all(a["iscrowd"] == 0 and a["area"] > 0 for a in raw["annotations"])
    # train and val are different images
    assert (tmp_path / "train/images/000000.png").read_bytes() != (
        tmp_path / "val/images/000000.png").read_bytes()


def test_scene_guarantees(scenes: list[tuple[np.ndarray, list[dict]]]) -> None:
    cfg = SynthConfig()
    lone = 0
    for image, anns in scenes:
        assert image.shape == (cfg.image_size, cfg.image_size, 3) and image.dtype == np.uint8
        groups: dict[int, list[dict]] = defaultdict(list)
        for a in anns:
            groups[a["group"]].append(a)
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0
            assert 0 <= x and 0 <= y and x + w <= cfg.image_size and y + h <= cfg.image_size
            assert 0 <= a["category"] < len(cfg.categories)
        assert cfg.min_groups <= len(groups) <= cfg.max_groups
        assert sorted(groups) == list(range(len(groups)))
        identities = set()
        for members in groups.values():
            assert len({m["category"] for m in members}) == 1, "a group spans categories"
            assert any(not m["ambiguous"] for m in members), "a group without a clear member"
            assert len({m["cues"] for m in members}) == 1
            identities.add(members[0]["cues"])
            assert len(members) == 1 or cfg.min_members <= len(members) <= cfg.max_members
            lone += len(members) == 1
        assert len(identities) == len(groups), "two groups of one image share every cue"
    assert lone > 0
    all_anns = [a for _, anns in scenes for a in anns]
    assert {a["category"] for a in all_anns} == {0, 1}
    assert 0.2 < np.mean([a["ambiguous"] for a in all_anns]) < 0.5


def test_knobs_bound_the_scene() -> None:
    cfg = SynthConfig(min_groups=2, max_groups=2, min_members=3, max_members=3, lone_prob=0.0,
                      ambiguous_fraction=0.0, clutter=0)
    for _, anns in _scenes(cfg, 5):
        assert len(anns) == 6
        assert not any(a["ambiguous"] for a in anns)


@pytest.mark.parametrize(
    "override",
    [dict(categories=["cat"]), dict(categories=["cat", "cat"]), dict(min_groups=3, max_groups=2),
     dict(min_members=1), dict(lone_prob=1.5), dict(image_size=16), dict(max_size=0.5)],
)
def test_bad_config_is_a_user_error(tmp_path: Path, override: dict) -> None:
    with pytest.raises(DetgroupError, match="synthetic dataset config"):
        generate_synthetic(tmp_path, SynthConfig(**{**SMALL, **override}))
