"""Per-box text and attributes, end to end: hashing, the model, the format, infer, no backbone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from detgroup.cli import EXIT_USER_ERROR, main
from detgroup.data.coco_groups import load_coco_groups, validate_coco_groups
from detgroup.data.dataset import GroupDataset, collate_groups, model_inputs
from detgroup.data.synth import SynthConfig, generate_synthetic
from detgroup.engine.train import train
from detgroup.errors import DetgroupError
from detgroup.inference import Grouper
from detgroup.model.detector import build_model
from detgroup.ops.text import EMPTY_HASH, SHAPE_FEATURES, encode_texts, text_hashes, word_shape
from tests.conftest import tiny_config

_TEXTS = ["Date:", "", "TOTAL", "12/05/98", "Lorillard Corporation", "é", "No.", "x"]


def test_hashes_identical_across_processes() -> None:
    code = ("import json, sys; from detgroup.ops.text import encode_texts; "
            f"print(json.dumps(encode_texts({_TEXTS!r})['text_hashes'].tolist()))")
    runs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(Path.cwd())}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout
        runs.append(json.loads(out))
    assert runs[0] == runs[1] == encode_texts(_TEXTS)["text_hashes"].tolist()
    # the scheme itself (a change of it breaks every trained model): crc32 of "w:<date:>"
    assert text_hashes("Date:")[0] == zlib.crc32(b"w:<date:>")
    assert text_hashes("Date:")[1] == zlib.crc32(b"2:<d")


def test_text_hashes_and_shape() -> None:
    assert text_hashes("") == text_hashes(None) == text_hashes("  ") == [EMPTY_HASH]
    assert text_hashes("Date:") == text_hashes("DATE:")  # case-folded
    assert text_hashes("ab") != text_hashes("ba")
    # "<ab>": the whole token, 3 bigrams, 2 trigrams, 1 four-gram
    assert len(text_hashes("ab")) == 1 + 3 + 2 + 1
    assert len(text_hashes("ab cd")) == 2 * 7
    assert all(0 <= h < 2**32 for h in text_hashes("Lorillard"))
    shape = word_shape("Date:")
    assert len(shape) == SHAPE_FEATURES
    assert shape[0] == 0 and shape[1] == 1 and shape[3] == 1 and shape[7] == 1  # capital, colon
    assert word_shape("")[0] == 1.0 and word_shape("1998")[5] == 1.0
    enc = encode_texts(["ab", "", "ab cd"])
    assert enc["text_offsets"].tolist() == [0, 7, 8]
    assert enc["text_hashes"][7] == EMPTY_HASH and len(enc["text_hashes"]) == 22


def _text_cfg(tiny_data: Path, *extra: str):
    return tiny_config(tiny_data, "model.text.enabled=true", "model.text.buckets=101",
                       "model.text.embed_dim=8", *extra)


def _batch(items: list[tuple[int, list[str]]], image_size: int = 64) -> dict:
    g = torch.Generator().manual_seed(0)
    out = []
    for k, (n, texts) in enumerate(items):
        xy = torch.rand(n, 2, generator=g) * (image_size - 20)
        wh = torch.rand(n, 2, generator=g) * 14 + 4
        out.append({"image": torch.rand(3, image_size, image_size, generator=g),
                    "boxes": torch.cat([xy, xy + wh], 1), "categories": torch.zeros(n).long(),
                    "groups": torch.zeros(n).long(), "texts": texts, "image_id": k})
    return collate_groups(out)


@pytest.mark.parametrize("fusion", ["sum", "concat"])
@pytest.mark.parametrize("backbone", ["small", "none"])
def test_text_model_permutation_equivariant(tiny_data: Path, fusion: str, backbone: str) -> None:
    cfg = _text_cfg(tiny_data, f"model.fusion={fusion}", f"model.backbone.name={backbone}")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    batch = _batch([(6, _TEXTS[:6])])
    perm = [3, 0, 5, 1, 4, 2]
    shuffled = _batch([(6, _TEXTS[:6])])
    shuffled["boxes"] = batch["boxes"][:, perm]
    shuffled.update({k: torch.from_numpy(v) for k, v in
                     encode_texts([_TEXTS[i] for i in perm]).items()})
    shuffled["text_shape"] = shuffled["text_shape"][None]
    shuffled["images"] = batch["images"]
    with torch.no_grad():
        a = model(**model_inputs(batch))
        b = model(**model_inputs(shuffled))
    assert torch.allclose(a["pred_logits"][:, perm], b["pred_logits"], atol=1e-5)
    assert torch.allclose(a["pred_affinity"][:, perm][:, :, perm], b["pred_affinity"], atol=1e-5)
    # and the text matters
    other = dict(batch)
    other.update({k: torch.from_numpy(v) for k, v in encode_texts(["zz"] * 6).items()})
    other["text_shape"] = other["text_shape"][None]
    with torch.no_grad():
        assert not torch.allclose(model(**model_inputs(other))["pred_logits"], a["pred_logits"])


def test_text_model_batched_equals_one_by_one(tiny_data: Path) -> None:
    cfg = _text_cfg(tiny_data)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    items = [(5, _TEXTS[:5]), (2, _TEXTS[5:7]), (7, _TEXTS[1:8])]
    batch = _batch(items)
    with torch.no_grad():
        together = model(**model_inputs(batch))
        for b, (n, _) in enumerate(items):
            one = {k: v[b:b + 1] if torch.is_tensor(v) and k != "text_hashes"
                   and k != "text_offsets" else v for k, v in batch.items()}
            one["images"] = batch["images"][b:b + 1]
            one["boxes"] = batch["boxes"][b:b + 1, :n]
            one["pad_mask"] = batch["pad_mask"][b:b + 1, :n]
            one.update({k: torch.from_numpy(v) for k, v in encode_texts(items[b][1]).items()})
            one["text_shape"] = one["text_shape"][None]
            alone = model(**model_inputs(one))
            assert torch.allclose(alone["pred_logits"][0], together["pred_logits"][b, :n],
                                  atol=1e-5)
            assert torch.allclose(alone["pred_affinity"][0],
                                  together["pred_affinity"][b, :n, :n], atol=1e-5)


def test_defaults_keep_the_old_model(tiny_data: Path) -> None:
    """Without model.text / model.attributes the state dict has exactly the old keys."""
    cfg = tiny_config(tiny_data)
    keys = set(build_model(cfg).state_dict())
    assert not any(k.startswith(("text_encoder", "attribute_encoder", "fusion")) for k in keys)
    assert any(k.startswith("backbone.") for k in keys)
    text = set(build_model(_text_cfg(tiny_data)).state_dict())
    assert keys < text and any(k.startswith("text_encoder.bag") for k in text)


# --- the format -------------------------------------------------------------------------------


def _doc(**extra) -> dict:
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 80}],
           "categories": [{"id": 1, "name": "word"}],
           "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 5],
                            "group_id": 1, "text": "Date:", "attributes": [0.9, 2.0]},
                           {"id": 8, "image_id": 1, "category_id": 1, "bbox": [20, 2, 10, 5],
                            "text": "", "attributes": [0.1, -1.0]}],
           "attribute_names": ["score", "size"]}
    doc.update(extra)
    return doc


def test_text_and_attributes_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(_doc()))
    coco = load_coco_groups(path)
    target = coco.targets(1)
    assert target["texts"] == ["Date:", ""]
    assert target["attributes"].tolist() == [[pytest.approx(0.9), 2.0], [pytest.approx(0.1),
                                                                         -1.0]]
    assert coco.attribute_names == ["score", "size"]
    COCO(str(path))  # pycocotools still reads it


@pytest.mark.parametrize(("change", "message"), [
    ({"text": 5}, "annotation id 7 (image id 1): 'text' must be a string, got int 5"),
    ({"text": ["a"]}, "annotation id 7 (image id 1): 'text' must be a string"),
    ({"attributes": [1.0]}, "annotation id 7 (image id 1): 'attributes' has 1 values but "
                            "attribute_names declares 2"),
    ({"attributes": [1.0, float("nan")]}, "annotation id 7 (image id 1): 'attributes' has a "
                                          "non-finite value for ['size']"),
    ({"attributes": [float("inf"), 1.0]}, "non-finite value for ['score']"),
    ({"attributes": [1.0, "x"]}, "annotation id 7 (image id 1): 'attributes' must be a list of "
                                 "numbers"),
    ({"attributes": None}, "'attributes' must be a list of numbers"),
])
def test_validator_item_field_errors(tmp_path: Path, change: dict, message: str) -> None:
    doc = _doc()
    doc["annotations"][0].update(change)
    problems = validate_coco_groups(doc, path=tmp_path / "ann.json")
    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'ann.json'}: ")
    assert message in problems[0]


def test_validator_attribute_names_disagreeing(tmp_path: Path) -> None:
    where = tmp_path / "ann.json"
    doc = _doc()
    del doc["attribute_names"]
    assert validate_coco_groups(doc, path=where) == [
        f"{where}: annotation id 7 (image id 1): has 'attributes' but the file declares no "
        "top-level 'attribute_names'",
        f"{where}: annotation id 8 (image id 1): has 'attributes' but the file declares no "
        "top-level 'attribute_names'"]
    doc = _doc(attribute_names=["score", "score"])
    assert validate_coco_groups(doc, path=where) == [
        f"{where}: 'attribute_names' must be a list of distinct non-empty strings, got "
        "['score', 'score']"]
    doc = _doc()
    del doc["annotations"][1]["attributes"]
    assert validate_coco_groups(doc, path=where) == [
        f"{where}: annotation id 8 (image id 1): missing 'attributes' (the file declares "
        "attribute_names ['score', 'size'])"]


def test_validate_cli_item_error_is_one_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc()
    doc["annotations"][1]["text"] = 3.5
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    assert main(["validate", str(path)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "annotation id 8 (image id 1): 'text' must be a string, got float 3.5" in err


# --- a no-backbone text model, end to end ------------------------------------------------------


@pytest.fixture(scope="module")
def text_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 train + 4 val 64 px synthetic images whose boxes carry a noisy word of their
    category ("cat" / "dog"), plus an attribute vector (a box's side length, in 100 px)."""
    out = tmp_path_factory.mktemp("synth_text")
    generate_synthetic(out, SynthConfig(image_size=64, num_train=12, num_val=4, seed=5,
                                        text_noise=0.2, min_size=0.14, max_size=0.2))
    for split in ("train", "val"):
        path = out / split / "annotations.json"
        doc = json.loads(path.read_text())
        doc["attribute_names"] = ["width", "height"]
        for ann in doc["annotations"]:
            ann["attributes"] = [ann["bbox"][2] / 100, ann["bbox"][3] / 100]
        path.write_text(json.dumps(doc))
    return out


@pytest.fixture(scope="module")
def layout_text_checkpoint(text_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("layout_text_run")
    cfg = tiny_config(text_data, "model.backbone.name=none", "model.text.enabled=true",
                      "model.text.buckets=101", "model.text.embed_dim=8",
                      "model.attributes.enabled=true", "model.fusion=concat",
                      "train.epochs=3", "train.lr=0.01", "data.box_dropout=0.2")
    cfg.category_names = []
    summary = train(cfg, out_dir=out, progress=False)
    assert summary["epochs_done"] == 3
    return out / "model.pt"


def test_no_backbone_text_model_never_reads_images(text_data: Path) -> None:
    data = GroupDataset(text_data / "train/annotations.json", text_data / "missing_folder",
                        load_images=False, box_dropout=0.5, scale_jitter=0.2)
    item = data[0]
    assert item["image"] is None and len(item["texts"]) == len(item["boxes"])
    assert item["attributes"].shape == (len(item["boxes"]), 2)
    batch = collate_groups([data[0], data[1]])
    assert batch["images"].shape[-2:] == (0, 0)
    assert batch["text_offsets"].shape == (batch["boxes"].shape[0] * batch["boxes"].shape[1],)
    assert batch["attributes"].shape == (*batch["boxes"].shape[:2], 2)


def test_no_backbone_text_model_trains_and_predicts(layout_text_checkpoint: Path,
                                                    text_data: Path) -> None:
    grouper = Grouper.from_checkpoint(layout_text_checkpoint)
    assert not grouper.needs_image and grouper.uses_text
    assert grouper.attribute_names == ["width", "height"]
    coco = load_coco_groups(text_data / "val/annotations.json")
    target = coco.targets(coco.images[0]["id"])
    n = len(target["boxes"])
    result = grouper.predict(None, target["boxes"], target["texts"], target["attributes"],
                             image_size=(64, 64))
    assert result.categories.shape == (n,) and result.affinity.shape == (n, n)
    # the same with the image given (it is not read for its pixels, only its size)
    image = text_data / "val/images" / coco.images[0]["file_name"]
    again = grouper.predict(image, target["boxes"], target["texts"], target["attributes"])
    assert np.allclose(again.class_probs, result.class_probs, atol=1e-6)
    # the text is used: the category words swapped, other categories
    swapped = [t.lower().replace("cat", "#").replace("dog", "cat").replace("#", "dog")
               for t in target["texts"]]
    flipped = grouper.predict(None, target["boxes"], swapped, target["attributes"],
                              image_size=(64, 64))
    assert not np.allclose(flipped.class_probs, result.class_probs)
    empty = grouper.predict(None, [], [], np.zeros((0, 2)), image_size=(64, 64))
    assert empty.categories.shape == (0,)
    with pytest.raises(DetgroupError, match="trained with box texts"):
        grouper.predict(None, target["boxes"], None, target["attributes"])
    with pytest.raises(DetgroupError, match=f"{n - 1} texts for {n} boxes"):
        grouper.predict(None, target["boxes"], target["texts"][:-1], target["attributes"])
    with pytest.raises(DetgroupError, match=r"attributes must have shape"):
        grouper.predict(None, target["boxes"], target["texts"], target["attributes"][:, :1])
    with pytest.raises(DetgroupError, match="not finite"):
        grouper.predict(None, target["boxes"], target["texts"],
                        np.full_like(target["attributes"], np.nan))


def test_eval_and_infer_with_texts(layout_text_checkpoint: Path, text_data: Path,
                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    val = text_data / "val"
    assert main(["eval", "--checkpoint", str(layout_text_checkpoint), "--data",
                 str(val / "annotations.json"), "--images", str(val / "images"), "--json",
                 "--unscored-categories", "dog"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("entity_f1", "agnostic_exact_group_f1", "cat_acc"):
        assert 0.0 <= summary[key] <= 1.0
    out = tmp_path / "out"
    assert main(["infer", "--checkpoint", str(layout_text_checkpoint), "--images",
                 str(val / "images"), "--boxes", str(val / "annotations.json"), "--out",
                 str(out), "--no-overlays"]) == 0
    predictions = json.loads((out / "predictions.json").read_text())
    truth = load_coco_groups(val / "annotations.json")
    assert [a["text"] for a in predictions["annotations"]] == [
        t for info in truth.images for t in truth.targets(info["id"])["texts"]]
    assert predictions["attribute_names"] == ["width", "height"]
    load_coco_groups(out / "predictions.json")  # a valid COCO-with-groups file
    first = json.loads(next((out / "per_image").iterdir()).read_text())
    assert "text" in first["boxes"][0] and len(first["boxes"][0]["attributes"]) == 2


def test_infer_box_file_with_too_few_texts(layout_text_checkpoint: Path, text_data: Path,
                                           tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    val = text_data / "val"
    coco = load_coco_groups(val / "annotations.json")
    boxes_dir = tmp_path / "boxes"
    boxes_dir.mkdir()
    for k, info in enumerate(coco.images):
        target = coco.targets(info["id"])
        texts = target["texts"][:-1] if k == 2 else target["texts"]
        record = {"boxes": target["boxes"].tolist(), "texts": texts,
                  "attributes": target["attributes"].tolist()}
        (boxes_dir / f"{Path(info['file_name']).stem}.json").write_text(json.dumps(record))
    out = tmp_path / "out"
    code = main(["infer", "--checkpoint", str(layout_text_checkpoint), "--images",
                 str(val / "images"), "--boxes", str(boxes_dir), "--out", str(out)])
    assert code == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    bad = boxes_dir / f"{Path(coco.images[2]['file_name']).stem}.json"
    n = len(coco.targets(coco.images[2]["id"])["boxes"])
    assert err[-1] == (f"detgroup infer: error: {bad}: 'texts' has {n - 1} entries for {n} "
                       "boxes (one string per box)")
    assert not out.exists()  # nothing written
    # a CSV with a text column is read too
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    info = coco.images[0]
    target = coco.targets(info["id"])
    rows = ["x1,y1,x2,y2,text"] + [f"{b[0]},{b[1]},{b[2]},{b[3]},{t}"
                                   for b, t in zip(target["boxes"], target["texts"], strict=True)]
    (csv_dir / f"{Path(info['file_name']).stem}.csv").write_text("\n".join(rows))
    image = val / "images" / info["file_name"]
    code = main(["infer", "--checkpoint", str(layout_text_checkpoint), "--images", str(image),
                 "--boxes", str(csv_dir), "--out", str(out), "--no-overlays"])
    # the model also reads attributes, which a CSV cannot carry: one clear failure
    assert code == EXIT_USER_ERROR
    assert "reads box attributes" in capsys.readouterr().out
