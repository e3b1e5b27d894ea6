"""FUNSD and Omniglot converters: on tiny fake copies of each source layout, then once on the real
data in ../shared/data (skipped when it is absent)."""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from detgroup.data.coco_groups import load_coco_groups
from detgroup.data.funsd import CATEGORIES, convert_funsd, split_forms
from detgroup.data.omniglot import (
    convert_omniglot,
    glyph_sample,
    load_glyphs,
    read_alphabets,
    render_glyph_scene,
    split_characters,
    unseen_runs,
)
from detgroup.errors import DetgroupError

ROOT = Path(__file__).parents[1]
SHARED = ROOT.parent / "shared/data"
REAL_FUNSD = SHARED / "funsd/training_data"
REAL_OMNIGLOT = SHARED / "omniglot"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _load(path: Path) -> tuple[dict[str, Any], Any]:
    """The raw JSON of a converted split, after both our loader and pycocotools read it."""
    load_coco_groups(path, images_dir=path.parent / "images")
    COCO(str(path))
    return json.loads(path.read_text()), load_coco_groups(path)


# ----------------------------------------------------------------------------------------
# FUNSD


def _entity(eid: int, label: str, boxes: list[list[int]], links: list[list[int]] = ()) -> dict:
    words = [{"box": b, "text": f"w{eid}_{k}"} for k, b in enumerate(boxes)]
    return {"id": eid, "label": label, "box": [0, 0, 1, 1], "text": "", "words": words,
            "linking": [list(p) for p in links]}


FAKE_FORMS = {
    "form_a": [
        _entity(0, "question", [[10, 10, 40, 20], [45, 10, 70, 20]], [[0, 1]]),
        _entity(1, "answer", [[80, 10, 110, 20], []], [[0, 1]]),  # an empty word box
        _entity(2, "header", [[5, 30, 5, 40]]),  # only a degenerate box: entity skipped
        _entity(3, "other", []),  # no words
    ],
    "form_b": [
        _entity(7, "other", [[100, 50, 125, 61]]),  # reaches 5 px outside the 120 px image
        _entity(4, "question", [[10, 10, 30, 20]], [[4, 4]]),  # a self-link
    ],
    "form_c": [_entity(5, "answer", [[1, 1, 9, 9], [12, 1, 19, 9], [30, 30, 40, 45]])],
}


def _fake_funsd(root: Path, forms: dict[str, list[dict]] = FAKE_FORMS) -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    for stem, entities in forms.items():
        (root / "annotations" / f"{stem}.json").write_text(json.dumps({"form": entities}))
        cv2.imwrite(str(root / "images" / f"{stem}.png"), np.full((80, 120), 255, np.uint8))
    return root


def test_funsd_converts_words_entities_and_links(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    src = _fake_funsd(tmp_path / "training_data")
    with caplog.at_level(logging.WARNING, logger="detgroup.data.funsd"):
        paths = convert_funsd(src, tmp_path / "out", val_forms=0)
    assert set(paths) == {"train", "val"}
    data, coco = _load(paths["train"])
    assert coco.category_names == list(CATEGORIES)
    assert [im["file_name"] for im in data["images"]] == ["form_a.png", "form_b.png",
                                                          "form_c.png"]
    assert (tmp_path / "out/train/images/form_b.png").read_bytes() == (
        src / "images/form_b.png").read_bytes()
    by_text = {a["text"]: a for a in data["annotations"]}
    assert sorted(by_text) == ["w0_0", "w0_1", "w1_0", "w4_0", "w5_0", "w5_1", "w5_2", "w7_0"]
    assert by_text["w0_1"]["bbox"] == [45.0, 10.0, 25.0, 10.0]
    assert by_text["w1_0"]["category_id"] == CATEGORIES.index("answer") + 1
    assert by_text["w7_0"]["bbox"] == [100.0, 50.0, 20.0, 11.0]  # clipped to the image
    for ann in data["annotations"]:
        assert ann["group_id"] == ann["entity_id"]
    assert len(data["annotations"]) == 8
    # One group per (image, entity), holding one category.
    groups = defaultdict(set)
    for ann in data["annotations"]:
        groups[(ann["image_id"], ann["group_id"])].add(ann["category_id"])
    assert len(groups) == 5 and all(len(c) == 1 for c in groups.values())
    assert data["funsd_links"] == [[1, 0, 1]]  # deduplicated; the self-link is dropped
    stats = data["info"]["stats"]
    assert stats == {**stats, "forms": 3, "words_in": 10, "words": 8, "words_skipped": 2,
                     "boxes_clipped": 1, "entities_in": 7, "entities": 5,
                     "entities_skipped": 2, "links": 1, "links_dropped": 1}
    warnings = [r.getMessage() for r in caplog.records]
    assert any("form_a.json: entity id 1: skipped a word: empty" in w for w in warnings)
    assert any("form_a.json: entity id 2: skipped a word: degenerate" in w for w in warnings)
    assert any("form_a.json: entity id 3: skipped, it has no words" in w for w in warnings)
    empty_val, _ = _load(paths["val"])
    assert empty_val["images"] == [] and empty_val["annotations"] == []


def test_funsd_split_is_seeded_disjoint_and_independent_of_limit(tmp_path: Path) -> None:
    forms = {f"f{k:02d}": [_entity(0, "other", [[1, 1, 9, 9]])] for k in range(12)}
    src = _fake_funsd(tmp_path / "src", forms)
    paths = convert_funsd(src, tmp_path / "a", val_forms=4, seed=5)
    names = {s: {im["file_name"] for im in _load(p)[0]["images"]} for s, p in paths.items()}
    assert len(names["val"]) == 4 and len(names["train"]) == 8
    assert names["train"] | names["val"] == {f"{s}.png" for s in forms}
    train, val = split_forms(list(forms), val_forms=4, seed=5)
    assert names["val"] == {f"{s}.png" for s in val}
    assert split_forms(list(reversed(forms)), val_forms=4, seed=5) == (train, val)
    assert split_forms(list(forms), val_forms=4, seed=6) != (train, val)
    convert_funsd(src, tmp_path / "b", val_forms=4, seed=5)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    limited = convert_funsd(src, tmp_path / "c", val_forms=4, seed=5, limit=6)
    for split, path in limited.items():
        got = {im["file_name"] for im in _load(path)[0]["images"]}
        assert got == {n for n in names[split] if n < "f06"}


def test_funsd_testing_data_layout_goes_to_one_test_split(tmp_path: Path) -> None:
    src = _fake_funsd(tmp_path / "testing_data")
    paths = convert_funsd(src, tmp_path / "out")
    assert set(paths) == {"test"} and paths["test"] == tmp_path / "out/test/annotations.json"
    assert len(_load(paths["test"])[0]["images"]) == 3
    renamed = src.rename(tmp_path / "official_test")
    assert set(convert_funsd(renamed, tmp_path / "out2", split="test")) == {"test"}


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda src: (src / "annotations/form_b.json").write_text("{oops"), "form_b.json"),
        (lambda src: (src / "annotations/form_b.json").write_text('{"form": 3}'),
         "form_b.json: not a FUNSD annotation"),
        (lambda src: (src / "images/form_c.png").unlink(), "form_c.png: image file not found"),
        (lambda src: (src / "images/form_c.png").write_bytes(b"junk"), "form_c.png: not a"),
        (lambda src: (src / "annotations/form_c.json").write_text(json.dumps(
            {"form": [_entity(0, "title", [[1, 1, 5, 5]])]})), "entity id 0: unknown label"),
        (lambda src: (src / "annotations/form_c.json").write_text(json.dumps(
            {"form": [_entity(2, "other", []), _entity(2, "other", [])]})),
         "form_c.json: entity id 2: duplicate"),
    ],
)
def test_funsd_bad_sources_name_the_file(tmp_path: Path, break_it, message: str) -> None:
    src = _fake_funsd(tmp_path / "src")
    break_it(src)
    with pytest.raises(DetgroupError, match=re.escape(message)):
        convert_funsd(src, tmp_path / "out", val_forms=1)


def test_funsd_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DetgroupError, match="annotations: folder not found"):
        convert_funsd(tmp_path / "nothing", tmp_path / "out")


# ----------------------------------------------------------------------------------------
# Omniglot

FAKE_ALPHABETS = [("Alpha", 0, 10), ("Beta", 15, 10)]  # characters 10..14, 25..29 unlisted


def _fake_omniglot(root: Path, num_chars: int = 30, num_samples: int = 20) -> Path:
    """An npz of random ink blobs (bool, True = paper) and an alphabets.csv."""
    rng = np.random.default_rng(0)
    images = np.full((num_chars, num_samples, 105, 105), 255, np.uint8)
    for c in range(num_chars):
        for s in range(num_samples):
            for _ in range(3):
                p, q = rng.integers(10, 95, 2), rng.integers(10, 95, 2)
                cv2.line(images[c, s], (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), 0, 3)
    root.mkdir(parents=True)
    np.savez_compressed(root / "images_background.npz", images=images > 0,
                        labels=np.repeat(np.arange(num_chars)[:, None], num_samples, 1))
    with (root / "alphabets.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["alphabet", "first", "count", "evidence"])
        writer.writerows([*row, "made up"] for row in FAKE_ALPHABETS)
    return root


SMALL = dict(train_scenes=6, canvas=128, glyph_size=(16, 24), eval_max_chars=3)


@pytest.fixture(scope="module")
def fake_omniglot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fake_omniglot(tmp_path_factory.mktemp("omniglot_src") / "omniglot")


@pytest.fixture(scope="module")
def omniglot_out(fake_omniglot: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("omniglot_out")
    convert_omniglot(fake_omniglot, out, seed=1, **SMALL)
    return out


def _splits(out: Path) -> dict[str, tuple[dict[str, Any], Any]]:
    return {s: _load(out / s / "annotations.json") for s in ("train", "val", "test", "unseen")}


def test_omniglot_splits_load_and_keep_characters_apart(omniglot_out: Path) -> None:
    splits = _splits(omniglot_out)
    chars = {s: {a["character"] for a in d["annotations"]} for s, (d, _) in splits.items()}
    assert chars["train"] <= set(range(6)) | set(range(15, 21))
    assert chars["val"] == {6, 7, 21, 22} and chars["test"] == {8, 9, 23, 24}
    assert chars["unseen"] == set(range(10, 15)) | set(range(25, 30))
    for s, (data, coco) in splits.items():
        assert coco.category_names == (["glyph"] if s == "unseen" else ["Alpha", "Beta"])
        assert data["info"]["characters"] == sorted(chars[s])
        members = defaultdict(list)
        for ann in data["annotations"]:
            members[(ann["image_id"], ann["group_id"])].append(ann)
        for group in members.values():  # a group is one character, of one alphabet
            assert len({a["character"] for a in group}) == 1
            assert len({a["category_id"] for a in group}) == 1
            if s != "unseen":
                alphabet = FAKE_ALPHABETS[group[0]["category_id"] - 1]
                assert alphabet[1] <= group[0]["character"] < alphabet[1] + alphabet[2]
            if s != "train":  # held-out scenes hold every sample of their characters
                assert sorted(a["sample"] for a in group) == list(range(20))
        per_image = defaultdict(set)
        for (image_id, _), group in members.items():
            per_image[image_id].add(group[0]["character"])
        assert len({frozenset(v) for v in per_image.values()}) == len(per_image)
    # 5 unseen characters per run → parts of 3 + 2; 2 held-out characters per alphabet part.
    assert len(splits["unseen"][0]["images"]) == 4
    assert len(splits["val"][0]["images"]) == len(splits["test"][0]["images"]) == 2


def test_omniglot_train_scenes_follow_the_knobs(omniglot_out: Path) -> None:
    data, coco = _load(omniglot_out / "train/annotations.json")
    assert len(data["images"]) == SMALL["train_scenes"]
    for image in data["images"]:
        anns = coco.anns_by_image[image["id"]]
        by_char = defaultdict(list)
        for ann in anns:
            by_char[ann["character"]].append(ann["sample"])
        assert 4 <= len(by_char) <= 10
        assert all(2 <= len(s) <= 6 and len(set(s)) == len(s) for s in by_char.values())
        assert 1 <= len({a["category_id"] for a in anns}) <= 3
        assert image["width"] == image["height"] >= SMALL["canvas"]
        for ann in anns:
            assert max(ann["bbox"][2:]) in range(16, 25)  # longer side = glyph size


def test_omniglot_glyph_boxes_hold_ink_on_grey_paper(omniglot_out: Path) -> None:
    data, _ = _load(omniglot_out / "val/annotations.json")
    image = cv2.imread(str(omniglot_out / "val/images" / data["images"][0]["file_name"]),
                       cv2.IMREAD_UNCHANGED)
    assert image.ndim == 2 and image.dtype == np.uint8
    paper = int(np.median(image))
    assert 190 <= paper <= 235
    covered = np.zeros(image.shape, bool)
    for ann in (a for a in data["annotations"] if a["image_id"] == data["images"][0]["id"]):
        x, y, w, h = (int(v) for v in ann["bbox"])
        assert image[y:y + h, x:x + w].min() < paper - 60
        covered[y:y + h, x:x + w] = True
    assert (image[~covered] == paper).all()  # no ink outside the boxes


def test_omniglot_is_deterministic_by_seed(fake_omniglot: Path, omniglot_out: Path,
                                           tmp_path: Path) -> None:
    convert_omniglot(fake_omniglot, tmp_path / "same", seed=1, **SMALL)
    assert _files(tmp_path / "same") == _files(omniglot_out)
    convert_omniglot(fake_omniglot, tmp_path / "other", seed=2, **SMALL)
    other = _files(tmp_path / "other")
    assert other["train/annotations.json"] != _files(omniglot_out)["train/annotations.json"]
    scene = [np.ones((105, 105), bool) for _ in range(3)]
    for s in scene:
        s[40:60, 30:70] = False
    a = render_glyph_scene(np.random.default_rng(4), scene, canvas=64, glyph_size=(20, 30))
    b = render_glyph_scene(np.random.default_rng(4), scene, canvas=64, glyph_size=(20, 30))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("Alpha", 0, 10), ("Beta", 5, 10)], "line 3: alphabet 'Beta' repeats or overlaps"),
        ([("Alpha", 25, 10)], "line 2: alphabet 'Alpha' with characters 25..34 does not fit"),
        ([("Alpha", "x", 10)], "line 2: needs columns"),
    ],
)
def test_omniglot_bad_alphabets_csv(tmp_path: Path, rows: list[tuple], message: str) -> None:
    path = tmp_path / "alphabets.csv"
    path.write_text("alphabet,first,count\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    with pytest.raises(DetgroupError, match=re.escape(f"{path}: {message}")):
        read_alphabets(path, 30)


def test_omniglot_missing_or_bad_npz(tmp_path: Path) -> None:
    with pytest.raises(DetgroupError, match="images_background.npz: file not found"):
        convert_omniglot(tmp_path, tmp_path / "out")
    (tmp_path / "images_background.npz").write_bytes(b"not a zip")
    with pytest.raises(DetgroupError, match="images_background.npz: not a readable npz"):
        convert_omniglot(tmp_path, tmp_path / "out")
    np.savez(tmp_path / "blank.npz", images=np.ones((2, 3, 8, 8), bool))
    with pytest.raises(DetgroupError, match="character 0, sample 0 has no ink"):
        load_glyphs(tmp_path / "blank.npz")


# ----------------------------------------------------------------------------------------
# The real data (../shared/data), when present


@pytest.mark.skipif(not REAL_FUNSD.is_dir(), reason=f"FUNSD not found at {REAL_FUNSD}")
def test_real_funsd_counts_and_documented_split(tmp_path: Path) -> None:
    paths = convert_funsd(REAL_FUNSD, tmp_path)
    stats = {s: json.loads(p.read_text())["info"]["stats"] for s, p in paths.items()}
    total = {k: stats["train"][k] + stats["val"][k] for k in stats["train"]}
    assert (stats["train"]["forms"], stats["val"]["forms"]) == (119, 30)
    assert total["words_in"] == 22512 and total["entities_in"] == 7411
    assert total["words"] == 22512 - total["words_skipped"]
    assert total["entities"] == 7411 - total["entities_skipped"]
    documented = (ROOT / "datasets/README_funsd.md").read_text()
    _, val = split_forms([p.stem for p in (REAL_FUNSD / "annotations").glob("*.json")],
                         val_forms=30, seed=0)
    listed = re.search(r"<!-- val-forms -->\n```\n(.*?)\n```", documented, re.S)
    assert listed and listed.group(1).split() == val


@pytest.mark.skipif(not REAL_OMNIGLOT.is_dir(), reason=f"Omniglot not found at {REAL_OMNIGLOT}")
def test_real_omniglot_split_and_one_scene() -> None:
    glyphs = load_glyphs(REAL_OMNIGLOT / "images_background.npz")
    assert glyphs.shape == (964, 20, 105, 105)
    alphabets = read_alphabets(REAL_OMNIGLOT / "alphabets.csv", len(glyphs))
    split = split_characters(alphabets)
    counts = {s: sum(map(len, parts)) for s, parts in split.items()}
    unseen = sum(map(len, unseen_runs(alphabets, len(glyphs))))
    assert len(alphabets) == 10 and sum(counts.values()) + unseen == 964
    assert counts == {"train": 189, "val": 62, "test": 66} and unseen == 647
    picks = [glyphs[c, s] for c in split["test"][0] for s in range(20)]
    image, boxes = render_glyph_scene(np.random.default_rng(0), picks, canvas=512,
                                      glyph_size=(40, 56))
    assert image.shape[0] == image.shape[1] >= 512 and len(boxes) == len(picks)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= image.shape[0]).all()


def test_omniglot_cli_passes_the_scene_knobs(fake_omniglot: Path, omniglot_out: Path,
                                             tmp_path: Path) -> None:
    from detgroup.cli import main

    code = main(["data", "omniglot", "--src", str(fake_omniglot), "--out", str(tmp_path / "cli"),
                 "--seed", "1", "--train-scenes", "6", "--canvas", "128", "--glyph-size", "16",
                 "24", "--eval-max-chars", "3"])
    assert code == 0
    assert _files(tmp_path / "cli") == _files(omniglot_out)  # same as the Python call


def test_omniglot_unlisted_runs_can_train_as_other(fake_omniglot: Path, tmp_path: Path) -> None:
    convert_omniglot(fake_omniglot, tmp_path, seed=1, **{**SMALL, "train_scenes": 40},
                     unlisted_train_runs=1)
    splits = _splits(tmp_path)
    chars = {s: {a["character"] for a in d["annotations"]} for s, (d, _) in splits.items()}
    # the first unlisted run (10..14) trains as "other"; unseen keeps the second run only
    assert chars["unseen"] == set(range(25, 30))
    assert chars["train"] & set(range(10, 15)) and chars["train"] <= (
        set(range(6)) | set(range(10, 15)) | set(range(15, 21)))
    assert chars["val"] == {6, 7, 21, 22} and chars["test"] == {8, 9, 23, 24}
    data, coco = splits["train"]
    assert coco.category_names == ["Alpha", "Beta", "other"]
    assert splits["val"][1].category_names == ["Alpha", "Beta", "other"]
    for ann in data["annotations"]:
        assert (ann["category_id"] == 3) == (10 <= ann["character"] < 15)
    with pytest.raises(DetgroupError, match="unlisted_train_runs"):
        convert_omniglot(fake_omniglot, tmp_path / "bad", unlisted_train_runs=3, **SMALL)


def test_omniglot_eval_alphabets_are_whole_alphabet_scenes_never_trained(
        fake_omniglot: Path, tmp_path: Path) -> None:
    """The L2C protocol: a held-out alphabet is one scene of all its characters x all samples;
    train, val and test never see its characters."""
    paths = convert_omniglot(fake_omniglot, tmp_path, seed=1, **{**SMALL, "train_scenes": 20},
                             unlisted_train_runs=2, eval_alphabets=("Beta",))
    assert set(paths) == {"train", "val", "test", "unseen", "alphabets"}
    data, coco = _load(paths["alphabets"])
    assert len(data["images"]) == 1 and coco.category_names == ["glyph"]
    assert sorted({(a["character"], a["sample"]) for a in data["annotations"]}) == [
        (c, s) for c in range(15, 25) for s in range(20)]
    groups = {a["character"]: set() for a in data["annotations"]}
    for a in data["annotations"]:
        groups[a["character"]].add(a["group_id"])
    assert all(len(g) == 1 for g in groups.values()) and len(set.union(*groups.values())) == 10
    splits = _splits(tmp_path)
    chars = {s: {a["character"] for a in d["annotations"]} for s, (d, _) in splits.items()}
    assert not (chars["train"] | chars["val"] | chars["test"]) & set(range(15, 25))
    assert chars["val"] == {6, 7} and chars["test"] == {8, 9} and not chars["unseen"]
    assert splits["train"][1].category_names == ["Alpha", "other"]
    with pytest.raises(DetgroupError, match="'Gamma' is not listed"):
        convert_omniglot(fake_omniglot, tmp_path / "bad", eval_alphabets=("Gamma",), **SMALL)
    with pytest.raises(DetgroupError, match="every listed alphabet"):
        convert_omniglot(fake_omniglot, tmp_path / "bad", eval_alphabets=("Alpha", "Beta"),
                         **SMALL)


def test_omniglot_rotations_train_turned_characters_as_their_own(fake_omniglot: Path,
                                                                 tmp_path: Path) -> None:
    """rotations=4: a train glyph may be turned by 90/180/270 degrees; a turn is a character of
    its own, never two turns of one character in a scene; the turned ink is the glyph turned;
    val / test / unseen never turn, and stay byte-identical to a run without rotations."""
    knobs = {**SMALL, "train_scenes": 30}
    convert_omniglot(fake_omniglot, tmp_path / "plain", seed=1, **knobs)
    convert_omniglot(fake_omniglot, tmp_path / "rot", seed=1, rotations=4, **knobs)
    data, coco = _load(tmp_path / "rot/train/annotations.json")
    turns = {a.get("rotation", 0) for a in data["annotations"]}
    assert turns == {0, 90, 180, 270}
    assert all(a["rotation"] != 0 for a in data["annotations"] if "rotation" in a)
    glyphs = np.load(fake_omniglot / "images_background.npz")["images"]
    for image in data["images"]:
        anns = coco.anns_by_image[image["id"]]
        groups = defaultdict(set)
        for a in anns:
            groups[a["group_id"]].add((a["character"], a.get("rotation", 0)))
        assert all(len(g) == 1 for g in groups.values())  # one character, one turn per group
        chars = [next(iter(g))[0] for g in groups.values()]
        assert len(chars) == len(set(chars))  # no two turns of one character in a scene
    n = len(glyphs)
    for k in range(4):
        assert np.array_equal(glyph_sample(glyphs, 3 + k * n, 5), np.rot90(glyphs[3, 5], k))

    def ink_aspect(c: int, s: int) -> float:
        ys, xs = np.nonzero(~glyphs[c, s])
        return (np.ptp(xs) + 1) / (np.ptp(ys) + 1)  # w / h of the ink

    # a glyph turned by 90 or 270 degrees has the ink's width and height swapped in its box
    quarter = [a for a in data["annotations"] if a.get("rotation") in (90, 270)
               and abs(math.log(ink_aspect(a["character"], a["sample"]))) > 0.4]
    assert quarter
    for a in quarter:
        box_aspect = a["bbox"][2] / a["bbox"][3]
        assert (box_aspect > 1) == (ink_aspect(a["character"], a["sample"]) < 1)
    plain, rot = _files(tmp_path / "plain"), _files(tmp_path / "rot")
    for name in plain:
        if not name.startswith("train/"):
            if name.endswith(".json"):  # the same scenes; info records the knob
                a, b = json.loads(plain[name]), json.loads(rot[name])
                assert a["annotations"] == b["annotations"] and a["images"] == b["images"]
                assert b["info"]["params"]["rotations"] == 4
            else:
                assert plain[name] == rot[name]
    with pytest.raises(DetgroupError, match="rotations must be 1, 2 or 4"):
        convert_omniglot(fake_omniglot, tmp_path / "bad", rotations=3, **SMALL)


def test_omniglot_cli_scene_composition_knobs(fake_omniglot: Path, tmp_path: Path) -> None:
    from detgroup.cli import main

    args = ["--seed", "1", "--train-scenes", "6", "--canvas", "128", "--glyph-size", "16", "24",
            "--eval-max-chars", "3", "--chars-per-scene", "3", "5", "--samples-per-char", "2",
            "3", "--alphabets-per-scene", "1", "1", "--rotations", "2"]
    assert main(["data", "omniglot", "--src", str(fake_omniglot), "--out",
                 str(tmp_path / "cli"), *args]) == 0
    convert_omniglot(fake_omniglot, tmp_path / "py", seed=1, train_scenes=6, canvas=128,
                     glyph_size=(16, 24), eval_max_chars=3, chars_per_scene=(3, 5),
                     samples_per_char=(2, 3), alphabets_per_scene=(1, 1), rotations=2)
    assert _files(tmp_path / "cli") == _files(tmp_path / "py")
    data, coco = _load(tmp_path / "py/train/annotations.json")
    assert {a.get("rotation", 0) for a in data["annotations"]} <= {0, 180}
    for image in data["images"]:
        anns = coco.anns_by_image[image["id"]]
        assert 3 <= len({a["group_id"] for a in anns}) <= 5
        assert len({a["category_id"] for a in anns}) == 1


def test_omniglot_cli_writes_hog_attributes(fake_omniglot: Path, omniglot_out: Path,
                                            tmp_path: Path) -> None:
    """--hog-attributes: annotations_hog.json beside each split, equal to
    write_hog_attributes of that split; the split files themselves unchanged."""
    from detgroup.cli import main
    from detgroup.data.crop_descriptors import write_hog_attributes

    out = tmp_path / "cli"
    assert main(["data", "omniglot", "--src", str(fake_omniglot), "--out", str(out),
                 "--seed", "1", "--train-scenes", "6", "--canvas", "128", "--glyph-size", "16",
                 "24", "--eval-max-chars", "3", "--hog-attributes"]) == 0
    written = sorted(p.parent.name for p in out.glob("*/annotations_hog.json"))
    assert written == sorted(p.parent.name for p in out.glob("*/annotations.json"))
    for split in written:
        expect = write_hog_attributes(out / split / "annotations.json", out / split / "images",
                                      tmp_path / f"{split}_hog.json")
        assert (out / split / "annotations_hog.json").read_bytes() == expect.read_bytes()
        assert (out / split / "annotations.json").read_bytes() == (
            omniglot_out / split / "annotations.json").read_bytes()
