"""Training engine: checkpoints, exact resume, interruption, DDP with two CPU processes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detgroup.engine.checkpoint import load_checkpoint, load_model_from_checkpoint
from detgroup.engine.train import DistInfo, epoch_batches, train
from detgroup.errors import DetgroupError
from tests.conftest import TINY_MODEL, tiny_config


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_train_writes_checkpoints_log_and_summary(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_data)
    result = train(cfg, out_dir=tmp_path, progress=False)
    assert result["steps"] == 6 and not result["interrupted"]  # 12 images / batch 4 * 2 epochs
    for name in ("last.pt", "best.pt", "model.pt", "config.yaml", "log.csv", "summary.json"):
        assert (tmp_path / name).is_file(), name
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    # best.pt (so model.pt) is the epoch of the best val ARI (train.select_by: ari)
    assert result["best_val_ari"] == pytest.approx(max(float(r["val_ari"]) for r in rows),
                                                   rel=1e-4)
    model, loaded_cfg = load_model_from_checkpoint(tmp_path / "model.pt")
    assert loaded_cfg.category_names == ["cat", "dog"]
    assert loaded_cfg.model.dim == 32  # the config travels inside the checkpoint
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_best_checkpoint_follows_select_by(tiny_data: Path, tmp_path: Path) -> None:
    from detgroup.engine.checkpoint import load_checkpoint

    cfg = tiny_config(tiny_data, "train.epochs=3", "train.select_by=exact_group_f1")
    result = train(cfg, out_dir=tmp_path, progress=False)
    scores = [float(r["val_exact_group_f1"]) for r in csv.DictReader((tmp_path / "log.csv").open())]
    assert result["best_val"] == {"metric": "exact_group_f1", "value": pytest.approx(max(scores))}
    assert result["best_val_ari"] is None  # not picked by ARI
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1 + scores.index(max(scores))


def test_resume_mid_epoch_matches_uninterrupted_run(tiny_data: Path, tmp_path: Path) -> None:
    full = tmp_path / "full"
    train(tiny_config(tiny_data), out_dir=full, progress=False)
    part = tmp_path / "part"
    stopped = train(tiny_config(tiny_data), out_dir=part, progress=False,
                    should_stop=lambda step: step == 4)  # mid second epoch
    assert stopped["interrupted"] and stopped["steps"] == 4
    assert load_checkpoint(part / "last.pt")["batch_in_epoch"] == 1
    resumed = train(tiny_config(tiny_data), out_dir=part, resume=True, progress=False)
    assert resumed["steps"] == 6
    a, b = _weights(full / "last.pt"), _weights(part / "last.pt")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_resume_without_checkpoint_is_a_clear_error(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(DetgroupError, match="last.pt: checkpoint file not found"):
        train(tiny_config(tiny_data), out_dir=tmp_path, resume=True, progress=False)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(DetgroupError, match="model.pt: not a readable checkpoint"):
        load_model_from_checkpoint(bad)


def test_epoch_batches_cap_boxes_and_agree_across_ranks() -> None:
    sizes = [1, 50, 3, 40, 2, 2, 60, 5, 5, 5]
    batches = epoch_batches(sizes, batch_size=4, max_boxes=100, seed=0, epoch=0, info=DistInfo())
    assert sorted(i for b in batches for i in b) == list(range(10))
    for b in batches:
        assert len(b) == 1 or len(b) * max(sizes[i] for i in b) <= 100
    ranks = [epoch_batches(sizes, batch_size=2, max_boxes=0, seed=0, epoch=1,
                           info=DistInfo(rank=r, world=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    assert not set(i for b in ranks[0] for i in b) & set(i for b in ranks[1] for i in b)


def test_ddp_two_cpu_processes_end_with_identical_weights(tiny_data: Path,
                                                           tmp_path: Path) -> None:
    overrides = [o for o in TINY_MODEL if not o.startswith("train.epochs")] + [
        "train.epochs=1",
        f"data.train_ann={tiny_data / 'train/annotations.json'}",
        f"data.train_images={tiny_data / 'train/images'}",
        f"data.val_ann={tiny_data / 'val/annotations.json'}",
        f"data.val_images={tiny_data / 'val/images'}",
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "detgroup.cli", "train", "--device", "cpu", "--out", str(tmp_path), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["steps"] == 2  # 12 images, 2 ranks, batch 4 -> 2 steps each
    assert summary["ranks_max_weight_diff"] == 0.0


def test_calibrate_writes_the_train_pair_prior_into_the_checkpoint(tiny_data: Path,
                                                                   tmp_path: Path) -> None:
    from detgroup.data.coco_groups import load_coco_groups
    from detgroup.losses import pair_prior_log_odds

    train(tiny_config(tiny_data, "decoder.calibrate=true", "train.epochs=1"), out_dir=tmp_path,
          progress=False)
    coco = load_coco_groups(tiny_data / "train/annotations.json")
    expected = -pair_prior_log_odds(coco)
    # by hand: ordered pairs of distinct boxes in one group vs the others, pooled over images
    pos = neg = 0
    for info in coco.images:
        groups = coco.targets(info["id"])["groups"].tolist()
        same = sum(a == b for i, a in enumerate(groups) for j, b in enumerate(groups) if i != j)
        pos, neg = pos + same, neg + len(groups) * (len(groups) - 1) - same
    assert expected == pytest.approx(-float(np.log(neg / pos)))
    assert expected < 0
    for name in ("model.pt", "last.pt"):
        assert load_model_from_checkpoint(tmp_path / name)[1].decoder.pair_bias == pytest.approx(
            expected)
    # without calibrate (and for the other pair losses) the bias stays as configured
    train(tiny_config(tiny_data, "decoder.calibrate=true", "loss.pair=mcl", "train.epochs=1"),
          out_dir=tmp_path / "mcl", progress=False)
    assert load_model_from_checkpoint(tmp_path / "mcl/model.pt")[1].decoder.pair_bias == 0.0


def test_lr_schedule_is_warmup_then_cosine_as_torch_builds_it() -> None:
    """The closed-form schedule agrees with SequentialLR(LinearLR, CosineAnnealingLR) over the
    whole training span (it is kept for exactness and for resuming old checkpoints)."""
    import warnings

    from detgroup.engine.train import _lr_lambda

    warmup, total, lr = 7, 60, 1e-3
    ours = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    lambda_lr = torch.optim.lr_scheduler.LambdaLR(ours, _lr_lambda(warmup, total))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about the chained schedulers' epoch arg
        sequential = torch.optim.lr_scheduler.SequentialLR(theirs, [
            torch.optim.lr_scheduler.LinearLR(theirs, 1 / warmup, 1.0, warmup - 1),
            torch.optim.lr_scheduler.CosineAnnealingLR(theirs, total - warmup, eta_min=0.01 * lr),
        ], milestones=[warmup])
        for _ in range(total):
            assert ours.param_groups[0]["lr"] == pytest.approx(theirs.param_groups[0]["lr"],
                                                               rel=1e-9)
            ours.step()
            theirs.step()
            lambda_lr.step()
            sequential.step()


def test_calibrate_with_candidate_pairs_counts_the_geometric_candidates() -> None:
    # The edge loss is balanced over candidate pairs and decode_sparse sees only those, so the
    # calibrated bias of a candidate model is the prior among each box's gap_k nearest boxes
    # (symmetrised), not among all pairs.
    from detgroup.config import load_config
    from detgroup.data.coco_groups import from_dict
    from detgroup.losses import calibrated_pair_bias, pair_prior_log_odds

    # one row of six 10 px boxes with gaps 2, 3, 4, 5, 6; groups {0, 1, 2} and {3, 4, 5}
    left = [0, 12, 25, 39, 54, 70]
    coco = from_dict({
        "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 20}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "group_id": i // 3,
                         "bbox": [x, 5, 10, 10], "area": 100, "iscrowd": 0}
                        for i, x in enumerate(left)],
    })
    # nearest of each box: 0-1, 1-0, 2-1, 3-2, 4-3, 5-4 -> pairs 01 12 23 34 45, one across
    assert pair_prior_log_odds(coco, gap_k=1) == pytest.approx(np.log(1 / 4))
    assert pair_prior_log_odds(coco) == pytest.approx(np.log(18 / 12))  # every ordered pair
    sparse = load_config(None, ["decoder.calibrate=true", "model.pair_candidates.mode=sparse",
                                "model.pair_candidates.gap_k=1"])
    dense = load_config(None, ["decoder.calibrate=true"])
    assert calibrated_pair_bias(sparse, coco) == pytest.approx(np.log(4))
    assert calibrated_pair_bias(dense, coco) == pytest.approx(-np.log(1.5))
