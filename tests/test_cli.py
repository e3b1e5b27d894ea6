"""The command line end to end on a tiny synthetic set, and its errors."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from detgroup.cli import EXIT_USER_ERROR, main
from detgroup.data.coco_groups import load_coco_groups
from tests.conftest import TINY_MODEL


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_synth_then_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", "--out", str(tmp_path), "--images", "5", "--seed", "2",
                 "--set", "image_size=96"]) == 0
    ann = tmp_path / "train/annotations.json"
    assert main(["validate", str(ann), "--images", str(tmp_path / "train/images")]) == 0
    assert "valid: 5 images" in capsys.readouterr().out


def test_train_cli_with_overrides(tiny_data: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--out", str(tmp_path), "--device", "cpu", *TINY_MODEL, "train.epochs=1",
            f"data.train_ann={tiny_data / 'train/annotations.json'}",
            f"data.train_images={tiny_data / 'train/images'}",
            f"data.val_ann={tiny_data / 'val/annotations.json'}",
            f"data.val_images={tiny_data / 'val/images'}"]
    assert main(args) == 0
    assert "model.pt" in capsys.readouterr().out
    assert (tmp_path / "model.pt").is_file()


def test_eval_json_summary(tiny_checkpoint: Path, tiny_data: Path,
                           capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    per_image = tmp_path / "per_image.json"
    code = main(["eval", "--checkpoint", str(tiny_checkpoint),
                 "--data", str(tiny_data / "val/annotations.json"),
                 "--images", str(tiny_data / "val/images"), "--json",
                 "--per-image", str(per_image)])
    assert code == 0
    summary = _last_json(capsys.readouterr().out)
    assert summary["num_images"] == 4
    for key in ("cat_acc", "nmi", "pair_f1", "exact_group_f1", "group_pq"):
        assert 0.0 <= summary[key] <= 1.0
    rows = json.loads(per_image.read_text())
    assert len(rows) == 4
    # ARI may be negative: the summary's is the mean of the images' (all have boxes)
    assert summary["ari"] == pytest.approx(sum(r["ari"] for r in rows) / len(rows))
    # a very negative pair bias cuts every pair: no same-group pair is predicted
    code = main(["eval", "--checkpoint", str(tiny_checkpoint),
                 "--data", str(tiny_data / "val/annotations.json"),
                 "--images", str(tiny_data / "val/images"), "--json", "--pair-bias", "-1000"])
    assert code == 0
    assert _last_json(capsys.readouterr().out)["pair_recall"] == 0.0
    # decoding on the 1-nearest-neighbour graph can only link neighbours
    code = main(["eval", "--checkpoint", str(tiny_checkpoint),
                 "--data", str(tiny_data / "val/annotations.json"),
                 "--images", str(tiny_data / "val/images"), "--json", "--neighbors", "1"])
    assert code == 0
    assert 0.0 <= _last_json(capsys.readouterr().out)["exact_group_f1"] <= 1.0
    with pytest.raises(SystemExit) as err:
        main(["eval", "--checkpoint", str(tiny_checkpoint), "--data", "x", "--images", "y",
              "--neighbors", "-2"])
    assert err.value.code == 2
    assert "integer >= 0" in capsys.readouterr().err


def test_infer_writes_results_overlays_and_resumes(tiny_checkpoint: Path, tiny_data: Path,
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "infer"
    args = ["infer", "--checkpoint", str(tiny_checkpoint),
            "--images", str(tiny_data / "val/images"),
            "--boxes", str(tiny_data / "val/annotations.json"), "--out", str(out), "--json"]
    assert main(args) == 0
    summary = _last_json(capsys.readouterr().out)
    assert summary["images_done"] == 4 and summary["images_failed"] == 0
    assert len(list((out / "overlays").glob("*.png"))) == 4
    record = json.loads(next((out / "per_image").glob("*.json")).read_text())
    assert {"groups", "boxes", "file_name"} <= set(record)
    for group in record["groups"]:
        assert {"label", "category", "score", "members", "box"} <= set(group)
    results = json.loads((out / "results.json").read_text())
    assert {"image_id", "bbox", "category_id", "score", "group_id", "group_score"} <= set(
        results[0])
    # predictions.json is COCO with groups: pycocotools and our reader both take it.
    COCO(str(out / "predictions.json"))
    load_coco_groups(out / "predictions.json")
    # A second run skips what is done.
    assert main(args) == 0
    assert _last_json(capsys.readouterr().out)["images_skipped"] == 4
    # And viz draws the predictions file like ground truth.
    assert main(["viz", "--data", str(out / "predictions.json"),
                 "--images", str(tiny_data / "val/images"), "--out", str(tmp_path / "viz")]) == 0
    assert len(list((tmp_path / "viz").glob("*.png"))) == 4


def test_infer_per_image_box_files_and_a_failing_image(
    tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    src = sorted((tiny_data / "val/images").glob("*.png"))
    for p in src[:3]:
        shutil.copy(p, images / p.name)
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    (boxes / f"{src[0].stem}.json").write_text(json.dumps([[10, 10, 40, 40], [50, 50, 80, 90]]))
    (boxes / f"{src[1].stem}.csv").write_text("x1,y1,x2,y2\n5,5,30,30\n40,40,60,70\n")
    (boxes / f"{src[2].stem}.json").write_text(json.dumps([[10, 10, 5, 40]]))  # x2 < x1
    out = tmp_path / "out"
    code = main(["infer", "--checkpoint", str(tiny_checkpoint), "--images", str(images),
                 "--boxes", str(boxes), "--out", str(out), "--json"])
    assert code == EXIT_USER_ERROR
    captured = capsys.readouterr().out
    summary = _last_json(captured)
    assert summary["images_done"] == 2 and summary["images_failed"] == 1
    assert "box 0" in summary["failures"][0] and src[2].stem in summary["failures"][0]
    assert not (out / "per_image" / f"{src[2].stem}.json").exists()
    assert not (out / "overlays" / f"{src[2].stem}.png").exists()
    assert not list(out.rglob(".*.tmp"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["validate", "{tmp}/broken.json"], "malformed JSON at line 1"),
        (["train", "model.nope=1"], "model.nope"),
        (["eval", "--checkpoint", "{tmp}/broken.json", "--data", "x", "--images", "y"],
         "not a readable checkpoint"),
        (["infer", "--checkpoint", "{tmp}/missing.pt", "--images", "{tmp}", "--boxes", "x",
          "--out", "{tmp}/o"], "missing.pt: checkpoint file not found"),
    ],
)
def test_user_errors_exit_2_with_one_line_and_no_traceback(tmp_path: Path, args: list[str],
                                                           message: str) -> None:
    (tmp_path / "broken.json").write_text("{oops")
    (tmp_path / "img.png").write_bytes(b"")
    cmd = [sys.executable, "-m", "detgroup.cli", *[a.format(tmp=tmp_path) for a in args]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], proc.stderr


def test_help_for_every_command() -> None:
    for command in ("demo", "synth", "data", "validate", "train", "eval", "infer", "viz",
                    "export"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0


def test_infer_with_a_local_detector_weights_file(tiny_checkpoint: Path, tiny_data: Path,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Boxes from a torchvision Faster R-CNN whose weights the user gives as a file."""
    import torch
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    torch.manual_seed(0)
    detector = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None,
                                                 num_classes=3)
    weights = tmp_path / "detector.pt"
    torch.save(detector.state_dict(), weights)
    image = sorted((tiny_data / "val/images").glob("*.png"))[0]
    out = tmp_path / "out"
    code = main(["infer", "--checkpoint", str(tiny_checkpoint), "--images", str(image),
                 "--detector", str(weights), "--detector-arch",
                 "fasterrcnn_mobilenet_v3_large_fpn", "--detector-score", "0.0",
                 "--out", str(out), "--json"])
    summary = _last_json(capsys.readouterr().out)
    assert code == 0 and summary["images_done"] == 1, summary
    record = json.loads((out / "per_image" / f"{image.stem}.json").read_text())
    assert len(record["boxes"]) == summary["boxes"]


def test_detector_weights_that_do_not_fit(tiny_checkpoint: Path, tiny_data: Path,
                                          tmp_path: Path) -> None:
    import torch

    weights = tmp_path / "other.pt"
    torch.save({"some.weight": torch.zeros(2)}, weights)
    code = main(["infer", "--checkpoint", str(tiny_checkpoint),
                 "--images", str(tiny_data / "val/images"), "--detector", str(weights),
                 "--out", str(tmp_path / "out")])
    assert code == EXIT_USER_ERROR


# --- images keyed by relative file name and COCO id; the input file's category ids ------------


def _two_folders_same_name(tiny_data: Path, root: Path) -> tuple[Path, Path, dict]:
    """Images ``a/x.png`` and ``b/x.png`` (two different val images) and a COCO file naming
    them, with foreign category ids 7 and 42 and image ids 30 and 20."""
    images = root / "images"
    src = load_coco_groups(tiny_data / "val/annotations.json")
    data = {"images": [], "annotations": [],
            "categories": [{"id": 42, "name": "dog"}, {"id": 7, "name": "cat"}]}
    cat_id = {"cat": 7, "dog": 42}
    for folder, info, new_id in zip(("a", "b"), src.images[:2], (30, 20), strict=True):
        (images / folder).mkdir(parents=True)
        shutil.copy(tiny_data / "val/images" / info["file_name"], images / folder / "x.png")
        data["images"].append({**info, "id": new_id, "file_name": f"{folder}/x.png"})
        for ann in src.anns_by_image[info["id"]]:
            name = src.category_names[src.category_ids.index(ann["category_id"])]
            data["annotations"].append({**ann, "id": len(data["annotations"]) + 1,
                                        "image_id": new_id, "category_id": cat_id[name]})
    ann_path = root / "ann.json"
    ann_path.write_text(json.dumps(data))
    return images, ann_path, data


def test_infer_keys_images_by_relative_file_name_and_writes_the_files_ids(
    tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, ann, data = _two_folders_same_name(tiny_data, tmp_path)
    n_boxes = {im["id"]: sum(a["image_id"] == im["id"] for a in data["annotations"])
               for im in data["images"]}
    assert len(set(n_boxes.values())) == 2  # the two images are told apart by their boxes
    out = tmp_path / "out"
    args = ["infer", "--checkpoint", str(tiny_checkpoint), "--images", str(images),
            "--boxes", str(ann), "--out", str(out), "--json"]
    assert main(args) == 0
    summary = _last_json(capsys.readouterr().out)
    assert summary["images_done"] == 2 and summary["images_skipped"] == 0
    for folder in ("a", "b"):
        assert (out / "per_image" / folder / "x.json").is_file()
        assert (out / "overlays" / folder / "x.png").is_file()
    pred = json.loads((out / "predictions.json").read_text())
    assert sorted((im["id"], im["file_name"]) for im in pred["images"]) == [
        (20, "b/x.png"), (30, "a/x.png")]
    for im in pred["images"]:
        assert sum(a["image_id"] == im["id"] for a in pred["annotations"]) == n_boxes[im["id"]]
    # category ids are the input file's, matched by name
    assert {c["id"]: c["name"] for c in pred["categories"]} == {7: "cat", 42: "dog"}
    results = json.loads((out / "results.json").read_text())
    assert {r["category_id"] for r in results} <= {7, 42}
    assert summary["category_ids"] == [7, 42]  # the model's [cat, dog]
    # COCOeval against the user's own file finds the results' categories and images
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(ann))
        evaluator = COCOeval(truth, truth.loadRes(str(out / "results.json")), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    matched = [e for e in evaluator.evalImgs if e is not None and len(e["dtIds"])]
    assert matched, "COCOeval matched no result to the truth's categories"
    # a re-run skips both (not one of them)
    assert main(args) == 0
    assert _last_json(capsys.readouterr().out)["images_skipped"] == 2
    # one of the two files given alone gets its own id, not the other's
    single = tmp_path / "single"
    assert main(["infer", "--checkpoint", str(tiny_checkpoint), "--images",
                 str(images / "b/x.png"), "--boxes", str(ann), "--out", str(single)]) == 0
    pred = json.loads((single / "predictions.json").read_text())
    assert [(im["id"], im["file_name"]) for im in pred["images"]] == [(20, "b/x.png")]
    # viz reads the subfolders and writes two overlays
    viz = tmp_path / "viz"
    assert main(["viz", "--data", str(out / "predictions.json"), "--images", str(images),
                 "--out", str(viz)]) == 0
    assert "2 overlays" in capsys.readouterr().out
    assert sorted(p.relative_to(viz).as_posix() for p in viz.rglob("*.png")) == [
        "a/x.png", "b/x.png"]


def test_infer_box_folders_with_subfolders_and_names_that_would_collide(
    tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import cv2

    src = sorted((tiny_data / "val/images").glob("*.png"))
    images, boxes = tmp_path / "images", tmp_path / "boxes"
    for d in (images / "a", images / "b", boxes / "a", boxes / "b"):
        d.mkdir(parents=True)
    shutil.copy(src[0], images / "a/x.png")
    shutil.copy(src[1], images / "b/x.png")
    cv2.imwrite(str(images / "a/x.jpg"), cv2.imread(str(src[2])))  # same stem as a/x.png
    (boxes / "a/x.csv").write_text("x,y,w,h\n5,5,20,20\n40,40,20,20\n")
    (boxes / "b/x.json").write_text(json.dumps([[1, 1, 30, 30]]))
    out = tmp_path / "out"
    code = main(["infer", "--checkpoint", str(tiny_checkpoint), "--images", str(images),
                 "--boxes", str(boxes), "--out", str(out), "--json"])
    summary = _last_json(capsys.readouterr().out)
    assert code == 0 and summary["images_done"] == 3, summary  # a/x.jpg shares a/x.csv
    names = sorted(p.relative_to(out / "per_image").as_posix()
                   for p in (out / "per_image").rglob("*.json"))
    assert names == ["a/x.jpg.json", "a/x.png.json", "b/x.json"]
    records = {n: json.loads((out / "per_image" / n).read_text()) for n in names}
    assert records["a/x.png.json"]["file_name"] == "a/x.png"
    assert records["a/x.png.json"]["boxes"][0]["box"] == [5, 5, 25, 25]  # xywh header read
    assert len(records["b/x.json"]["boxes"]) == 1
    ids = [im["id"] for im in json.loads((out / "predictions.json").read_text())["images"]]
    assert len(ids) == len(set(ids)) == 3


def test_infer_help_says_which_category_ids_results_use() -> None:
    help_text = build_parser_help("infer")
    assert "category ids 1..C" in help_text and "COCO file's category ids" in help_text


def build_parser_help(command: str) -> str:
    from detgroup.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return " ".join(sub.choices[command].format_help().split())


def test_help_shows_defaults() -> None:
    assert "(default: 0.5)" in build_parser_help("infer")  # --detector-score
    assert "(default: 1.0)" in build_parser_help("validate")  # --tolerance
    assert "(default: cpu)" in build_parser_help("eval")  # --device


# --- clip, empty files, partly labelled files ---------------------------------------------------


def _one_image_file(tmp_path: Path, anns: list[dict]) -> tuple[Path, Path]:
    import cv2
    import numpy as np

    images = tmp_path / "img"
    images.mkdir(exist_ok=True)
    cv2.imwrite(str(images / "a.png"), np.full((64, 80, 3), 120, np.uint8))
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 80, "height": 64}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [{"id": k + 1, "image_id": 1, "category_id": 1, **a}
                        for k, a in enumerate(anns)]}))
    return path, images


def test_clip_on_validate_eval_and_infer(tiny_checkpoint: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    ann, images = _one_image_file(tmp_path, [{"bbox": [60, 10, 40, 20], "group_id": 1},
                                             {"bbox": [5, 5, 20, 20], "group_id": 1}])
    base = {"validate": ["validate", str(ann)],
            "eval": ["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(ann),
                     "--images", str(images)],
            "infer": ["infer", "--checkpoint", str(tiny_checkpoint), "--images", str(images),
                      "--boxes", str(ann), "--out", str(tmp_path / "o")]}
    for name, args in base.items():
        assert main(args) == EXIT_USER_ERROR, name
        assert "extends outside the 80x64 image" in capsys.readouterr().err, name
        assert main([*args, "--clip"]) == 0, name
        capsys.readouterr()
    record = json.loads((tmp_path / "o/per_image/a.json").read_text())
    assert record["boxes"][0]["box"] == [60, 10, 80, 30]  # clipped
    # a per-image CSV box outside the image fails that image the same way, unless --clip
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    (boxes / "a.csv").write_text("x1,y1,x2,y2\n60,10,100,30\n")
    args = ["infer", "--checkpoint", str(tiny_checkpoint), "--images", str(images),
            "--boxes", str(boxes), "--out", str(tmp_path / "o2"), "--json"]
    assert main(args) == EXIT_USER_ERROR
    assert "extends outside" in _last_json(capsys.readouterr().out)["failures"][0]
    assert main([*args, "--clip"]) == 0


def test_eval_and_train_refuse_files_without_boxes(tiny_checkpoint: Path, tiny_data: Path,
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    ann, images = _one_image_file(tmp_path, [])
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(ann),
                 "--images", str(images), "--json"]) == EXIT_USER_ERROR
    captured = capsys.readouterr()
    assert "no boxes" in captured.err and "1.0" not in captured.out
    assert main(["validate", str(ann)]) == 0
    assert "warning: no boxes" in capsys.readouterr().out
    assert main(["train", "--out", str(tmp_path / "run"), *TINY_MODEL,
                 f"data.train_ann={tiny_data / 'train/annotations.json'}",
                 f"data.train_images={tiny_data / 'train/images'}",
                 f"data.val_ann={ann}", f"data.val_images={images}"]) == EXIT_USER_ERROR
    assert "no boxes" in capsys.readouterr().err
    unknown, _ = _one_image_file(tmp_path, [{"bbox": [5, 5, 20, 20], "group_id": -1}])
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(unknown),
                 "--images", str(images)]) == EXIT_USER_ERROR
    assert "grouping metrics are undefined" in capsys.readouterr().err


def test_validate_and_eval_report_boxes_without_a_known_group(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann, images = _one_image_file(tmp_path, [
        {"bbox": [5, 5, 10, 10], "group_id": 1}, {"bbox": [20, 5, 10, 10], "group_id": 1},
        {"bbox": [40, 5, 10, 10]}, {"bbox": [5, 30, 10, 10], "group_id": -1},
        {"bbox": [30, 30, 10, 10], "group_id": -1, "category_id": 2}])
    assert main(["validate", str(ann)]) == 0
    out = capsys.readouterr().out
    assert "5 boxes" in out and "1 boxes without group_id" in out
    assert "2 with group_id -1" in out
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(ann),
                 "--images", str(images), "--json"]) == 0
    captured = capsys.readouterr().out
    summary = _last_json(captured)
    assert summary["num_boxes"] == 5 and summary["num_grouped_boxes"] == 3
    assert "2 of unknown group" in captured


# --- every command x every config / device / checkpoint path: one line, exit 2 ------------------

BAD_YAML = {
    "syntax": ("model:\n  dim: [1, 2\n", "YAML syntax error at line"),
    "tab": ("model:\n\tdim: 8\n", "a tab character"),
    "list": ("- model\n- train\n", "top level of a config must be a mapping"),
    "scalar": ("just text\n", "top level of a config must be a mapping"),
    "section_scalar": ("model: 5\n", "config"),
    "unknown_key": ("model:\n  dimm: 8\n", "model.dimm"),
    "bad_value": ("model:\n  dim: many\n", "model.dim"),
    "binary": (b"\xff\xfe\x00", "cannot read config file"),
}


def _bad_checkpoints(root: Path) -> dict[str, tuple[Path, str]]:
    text = root / "notes.txt"
    text.write_text("this is not a model\n")
    empty = root / "empty.pt"
    empty.write_bytes(b"")
    folder = root / "folder.pt"
    folder.mkdir(exist_ok=True)
    import torch

    foreign = root / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    return {"text": (text, "not a readable checkpoint (not a file written by torch.save"),
            "empty": (empty, "checkpoint file is empty"),
            "folder": (folder, "is a folder, not a checkpoint file"),
            "missing": (root / "missing.pt", "checkpoint file not found"),
            "foreign": (foreign, "not a detgroup checkpoint")}


def _run_user_error(args: list[str], capsys: pytest.CaptureFixture[str], *messages: str) -> None:
    code = main(args)  # an exception escaping here is the traceback a user would see
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == EXIT_USER_ERROR, err
    assert len(lines) == 1 and lines[0].startswith(f"detgroup {args[0]}: error: "), err
    for message in messages:
        assert message in lines[0], err


@pytest.mark.parametrize("command", ["train", "synth", "demo"])
@pytest.mark.parametrize("case", sorted(BAD_YAML))
def test_every_config_path_gives_one_line_errors(tmp_path: Path, command: str, case: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    content, message = BAD_YAML[case]
    path = tmp_path / "cfg.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    if command == "demo":  # the demo takes overrides only: a bad one of each kind
        override = {"unknown_key": "model.dimm=8", "bad_value": "model.dim=many",
                    "syntax": "model.dim=[1", "section_scalar": "model=5"}.get(case)
        if override is None:
            pytest.skip("the demo reads no config file")
        message = {"syntax": "YAML syntax error"}.get(case, message)
        _run_user_error(["demo", "--out", str(tmp_path / "d"), "--quick", override], capsys,
                        message)
        return
    args = {"train": ["train", "--config", str(path), "--out", str(tmp_path / "run")],
            "synth": ["synth", "--config", str(path), "--out", str(tmp_path / "s")]}[command]
    if case == "unknown_key" and command == "synth":
        message = "model.dimm"
    _run_user_error(args, capsys, str(path), message)


@pytest.mark.parametrize("command", ["eval", "infer", "export"])
@pytest.mark.parametrize("case", ["text", "empty", "folder", "missing", "foreign"])
def test_every_checkpoint_path_gives_one_line_errors(tmp_path: Path, command: str, case: str,
                                                     tiny_data: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path, message = _bad_checkpoints(tmp_path)[case]
    args = {"eval": ["eval", "--data", str(tiny_data / "val/annotations.json"),
                     "--images", str(tiny_data / "val/images")],
            "infer": ["infer", "--images", str(tiny_data / "val/images"),
                      "--boxes", str(tiny_data / "val/annotations.json"),
                      "--out", str(tmp_path / "o")],
            "export": ["export", "--format", "torchscript", "--out", str(tmp_path / "m.pt")]}
    _run_user_error([*args[command], "--checkpoint", str(path)], capsys, str(path), message)


@pytest.mark.parametrize("command", ["eval", "infer", "train"])
@pytest.mark.parametrize("device", ["gpu0", "cuda", "cuda:7", "tpu"])
def test_every_device_path_gives_one_line_errors(tmp_path: Path, command: str, device: str,
                                                 tiny_checkpoint: Path, tiny_data: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and (
            device == "cuda" or torch.cuda.device_count() > 7):
        pytest.skip("this machine has that GPU")
    args = {"eval": ["eval", "--checkpoint", str(tiny_checkpoint),
                     "--data", str(tiny_data / "val/annotations.json"),
                     "--images", str(tiny_data / "val/images")],
            "infer": ["infer", "--checkpoint", str(tiny_checkpoint),
                      "--images", str(tiny_data / "val/images"),
                      "--boxes", str(tiny_data / "val/annotations.json"),
                      "--out", str(tmp_path / "o")],
            "train": ["train", "--out", str(tmp_path / "run"), *TINY_MODEL]}[command]
    message = "device" if command != "train" or device.startswith("cuda") else "train.device"
    _run_user_error([*args, "--device", device], capsys, message)
