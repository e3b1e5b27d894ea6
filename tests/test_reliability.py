"""Reliability promises: fuzzed input never crashes the reader, kill -9 loses nothing."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO

from detgroup.data.coco_groups import from_dict, validate_coco_groups
from detgroup.engine.checkpoint import load_checkpoint
from detgroup.engine.train import train
from tests.conftest import TINY_MODEL, tiny_config

# --- fuzzing the COCO-with-groups validator ------------------------------------------------------

_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
)
_number = st.one_of(st.integers(-5, 80), st.floats(-5, 80), _scalar)
_bbox = st.one_of(st.lists(_number, min_size=0, max_size=5), _scalar)
_image = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(0, 4), _scalar), "file_name": st.one_of(st.just("a.png"), _scalar),
     "width": st.one_of(st.integers(1, 64), _scalar), "height": st.one_of(st.integers(1, 64),
                                                                         _scalar)}
)
_category = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(1, 3), _scalar), "name": st.sampled_from(["cat", "dog", "", 3])}
)
_annotation = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(0, 20), _scalar), "image_id": st.one_of(st.integers(0, 4),
                                                                         _scalar),
     "category_id": st.one_of(st.integers(1, 3), _scalar), "bbox": _bbox},
    optional={"group_id": st.one_of(st.integers(0, 3), _scalar), "iscrowd": _scalar},
)
_document = st.one_of(
    st.fixed_dictionaries({"images": st.lists(_image, max_size=4),
                           "categories": st.lists(_category, max_size=3),
                           "annotations": st.lists(_annotation, max_size=8)}),
    st.dictionaries(st.sampled_from(["images", "annotations", "categories", "x"]), _scalar),
    _scalar,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_document)
def test_fuzzed_documents_never_crash_and_accepted_ones_read_the_same_in_pycocotools(
    doc: object, tmp_path_factory
) -> None:
    problems = validate_coco_groups(doc, path="fuzz.json")
    assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)
    if problems:
        return
    assert isinstance(doc, dict)
    coco = from_dict(doc)
    path = tmp_path_factory.mktemp("fuzz") / "ann.json"
    path.write_text(json.dumps(doc))
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCO(str(path))
    for info in coco.images:
        ours = coco.targets(info["id"])
        theirs = reference.loadAnns(reference.getAnnIds(imgIds=[info["id"]]))
        assert len(theirs) == len(ours["boxes"])
        assert np.isfinite(ours["boxes"]).all()
        assert (ours["boxes"][:, 2] > ours["boxes"][:, 0]).all()
        assert (ours["boxes"][:, 3] > ours["boxes"][:, 1]).all()
        by_id = {a["id"]: a for a in theirs}
        for ann_id, box, cat in zip(ours["ann_ids"], ours["boxes"], ours["categories"],
                                    strict=True):
            x, y, w, h = by_id[int(ann_id)]["bbox"]
            assert np.allclose(box, [x, y, x + w, y + h], rtol=1e-6)
            assert coco.category_ids[cat] == by_id[int(ann_id)]["category_id"]
        for box in ours["boxes"]:
            assert box[0] >= -1.0 - 1e-6 and box[2] <= info["width"] + 1.0 + 1e-6
            assert not math.isnan(float(box.sum()))


# --- kill -9 during training, then --resume ------------------------------------------------------


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "detgroup.cli", "train", "--device", "cpu", "--out", str(out),
        *[o for o in TINY_MODEL if not o.startswith("train.epochs")],
        f"data.train_ann={data / 'train/annotations.json'}",
        f"data.train_images={data / 'train/images'}",
        f"data.val_ann={data / 'val/annotations.json'}",
        f"data.val_images={data / 'val/images'}", *extra,
    ]


def _kill_9_when(cmd: list[str], env: dict[str, str], ready) -> None:
    """Start ``cmd``, wait (at most 120 s) until ``ready()`` holds, then SIGKILL it; the process
    must still be running at that moment."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.01)
        assert proc.poll() is None, "the command finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)


def test_kill_9_mid_training_then_resume_matches_uninterrupted_run(
    tiny_data: Path, tmp_path: Path
) -> None:
    extra = ("train.epochs=6", "train.eval_every=6", "train.save_every_steps=1",
             "model.relation.layers=1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "killed"

    def a_few_steps_saved() -> bool:
        if not (out / "last.pt").exists():
            return False
        time.sleep(0.3)  # let it get a few steps further, into some write or other
        return True

    _kill_9_when(_args(tiny_data, out, *extra), env, a_few_steps_saved)
    killed_at = load_checkpoint(out / "last.pt")["step"]  # always loadable: atomic writes
    assert 0 < killed_at < 18
    assert not (out / "model.pt").exists()
    resumed = subprocess.run([*_args(tiny_data, out, *extra), "--resume"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    reference = tmp_path / "reference"
    train(tiny_config(tiny_data, *extra), out_dir=reference, progress=False)
    a, b = load_checkpoint(reference / "last.pt"), load_checkpoint(out / "last.pt")
    assert a["step"] == b["step"] == 18
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    assert not list(out.glob(".*.tmp"))  # a temp file left by the kill is cleaned on resume


# --- kill -9 during inference over a folder, then run again -------------------------------------


def test_kill_9_mid_inference_then_rerun_skips_done_images(
    tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path
) -> None:
    import cv2

    images, boxes = tmp_path / "images", tmp_path / "boxes"
    images.mkdir()
    boxes.mkdir()
    sources = sorted((tiny_data / "train/images").glob("*.png"))
    for k in range(60):
        name = f"img{k:03d}"
        (images / f"{name}.png").write_bytes(sources[k % len(sources)].read_bytes())
        (boxes / f"{name}.json").write_text(json.dumps([[4, 4, 40, 40], [50, 50, 90, 100]]))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "detgroup.cli", "infer", "--checkpoint", str(tiny_checkpoint),
           "--images", str(images), "--boxes", str(boxes), "--out", str(out), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    _kill_9_when(cmd, env, lambda: len(list(out.glob("per_image/*.json"))) >= 3)
    done_before = sorted(p.stem for p in (out / "per_image").glob("*.json"))
    assert 3 <= len(done_before) < 60
    for stem in done_before:  # every result file present is complete
        json.loads((out / "per_image" / f"{stem}.json").read_text())
        assert cv2.imread(str(out / "overlays" / f"{stem}.png")) is not None
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["images_skipped"] == len(done_before)
    assert summary["images_done"] == 60 - len(done_before)
    assert len(list((out / "per_image").glob("*.json"))) == 60
    assert len(json.loads((out / "predictions.json").read_text())["images"]) == 60
    assert not list(out.rglob(".*.tmp"))  # temp files a kill may leave are removed on rerun
