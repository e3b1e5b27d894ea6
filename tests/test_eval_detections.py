"""``detgroup eval --detections``: detected, classified and grouped boxes against a truth file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detgroup.cli import EXIT_USER_ERROR, main
from detgroup.data.coco_groups import load_coco_groups


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def _truth_as_results(truth: Path) -> list[dict]:
    """The truth annotations written as COCO results (score 1, the truth's group ids)."""
    coco = load_coco_groups(truth)
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 1.0, "group_id": a["group_id"]}
            for anns in coco.anns_by_image.values() for a in anns]


def _eval(dets: list[dict] | str, truth: Path, tmp_path: Path, *extra: str) -> int:
    path = tmp_path / "dets.json"
    path.write_text(dets if isinstance(dets, str) else json.dumps(dets))
    return main(["eval", "--detections", str(path), "--data", str(truth), *extra])


def test_truth_as_detections_scores_perfect(tiny_data: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    truth = tiny_data / "val/annotations.json"
    dets = _truth_as_results(truth)
    per_image = tmp_path / "per_image.json"
    assert _eval(dets, truth, tmp_path, "--json", "--per-image", str(per_image)) == 0
    summary = _last_json(capsys.readouterr().out)
    for key in ("box_recall", "box_precision", "cat_acc", "group_f1", "exact_group_f1",
                "group_pq", "ari", "cat_ap50", "box_ap50"):
        assert summary[key] == pytest.approx(1.0), key
    assert summary["num_images"] == 4 and summary["num_matched"] == len(dets)
    assert len(json.loads(per_image.read_text())) == 4


def test_dropped_and_low_scored_detections(tiny_data: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    truth = tiny_data / "val/annotations.json"
    dets = _truth_as_results(truth)
    dets[0]["score"] = 0.1
    assert _eval(dets[1:], truth, tmp_path, "--json") == 0
    dropped = _last_json(capsys.readouterr().out)
    assert dropped["num_matched"] == len(dets) - 1
    assert dropped["box_recall"] == pytest.approx((len(dets) - 1) / len(dets))
    assert dropped["group_pq"] < 1.0
    # --min-score leaves the low-scored detection out of the group metrics only
    assert _eval(dets, truth, tmp_path, "--json", "--min-score", "0.5") == 0
    filtered = _last_json(capsys.readouterr().out)
    for key in ("num_matched", "group_pq", "group_f1", "box_recall"):
        assert filtered[key] == dropped[key], key
    assert filtered["cat_ap50"] == pytest.approx(1.0)


def test_infer_results_against_the_truth_equal_checkpoint_eval(
    tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth = tiny_data / "val/annotations.json"
    out = tmp_path / "infer"
    assert main(["infer", "--checkpoint", str(tiny_checkpoint), "--images",
                 str(tiny_data / "val/images"), "--boxes", str(truth), "--out", str(out),
                 "--no-overlays"]) == 0
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(truth),
                 "--images", str(tiny_data / "val/images"), "--json"]) == 0
    on_truth = _last_json(capsys.readouterr().out)
    assert main(["eval", "--detections", str(out / "results.json"), "--data", str(truth),
                 "--json"]) == 0
    on_dets = _last_json(capsys.readouterr().out)
    assert on_dets["box_recall"] == 1.0
    for key in ("cat_acc", "group_f1", "exact_group_f1", "group_pq", "pair_f1"):
        assert on_dets[key] == pytest.approx(on_truth[key]), key


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(image_id=999), "detection 0 (id 7): image id 999 is not in"),
    (lambda d: d.update(category_id=9), "detection 0 (id 7) (image id {image}): category id 9"),
    (lambda d: d.pop("score"), "detection 0 (id 7) (image id {image}): no 'score'"),
    (lambda d: d.update(bbox=[1.0, float("nan"), 4.0, 4.0]), "'bbox' has a non-finite value"),
    (lambda d: d.update(group_id="a"), "'group_id' must be an integer"),
])
def test_bad_detections_one_line_exit_2(tiny_data: Path, tmp_path: Path, change, message: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    truth = tiny_data / "val/annotations.json"
    dets = _truth_as_results(truth)
    dets[0]["id"] = 7
    change(dets[0])
    assert _eval(json.dumps(dets), truth, tmp_path) == EXIT_USER_ERROR  # NaN written as NaN
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"detgroup eval: error: {tmp_path / 'dets.json'}: ")
    assert message.format(image=_truth_as_results(truth)[0]["image_id"]) in err


def test_eval_needs_a_checkpoint_or_detections(tiny_data: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    truth = tiny_data / "val/annotations.json"
    assert main(["eval", "--data", str(truth)]) == EXIT_USER_ERROR
    assert "--detections" in capsys.readouterr().err
    assert _eval({"not": "a list"}.__repr__(), truth, tmp_path) == EXIT_USER_ERROR
    assert "malformed JSON" in capsys.readouterr().err
    assert _eval(json.dumps({"a": 1}), truth, tmp_path) == EXIT_USER_ERROR
    assert "expected COCO results" in capsys.readouterr().err
