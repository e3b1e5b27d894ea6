"""The command line end to end on a tiny synthetic set, and its errors."""

from __future__ import annotations

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
    for key in ("cat_acc", "ari", "nmi", "pair_f1", "exact_group_f1", "group_pq"):
        assert 0.0 <= summary[key] <= 1.0 or key == "ari"
    assert len(json.loads(per_image.read_text())) == 4
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
