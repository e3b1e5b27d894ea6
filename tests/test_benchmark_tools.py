"""Tests for the benchmark scripts in tools/: category votes, error breakdown, a tiny run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"
sys.path.insert(0, str(TOOLS))

import benchmark  # noqa: E402
import error_analysis  # noqa: E402


def test_vote_gives_each_group_its_most_probable_category() -> None:
    logits = np.log(np.array([
        [0.6, 0.4], [0.1, 0.9], [0.2, 0.8],  # group 0: summed probs 0.9 / 2.1 -> category 1
        [0.7, 0.3],  # group 5 alone -> category 0
    ]))
    groups = np.array([0, 0, 0, 5])
    assert benchmark.vote_categories(logits, groups).tolist() == [1, 1, 1, 0]
    assert benchmark.vote_categories(np.zeros((0, 2)), np.zeros(0, int)).tolist() == []


def test_group_fates_tell_category_split_and_merge_errors_apart() -> None:
    gt_cat = np.array([0, 0, 1, 1, 0, 0, 1])
    gt_grp = np.array([0, 0, 1, 1, 2, 2, 3])
    # group 0 exact; group 1 right members, wrong category; group 2 split in two; group 3 merged
    # into a predicted group that also holds one of group 2's boxes
    pred_cat = np.array([0, 0, 0, 0, 0, 1, 1])
    pred_grp = np.array([0, 0, 1, 1, 2, 3, 3])
    fates = error_analysis.group_fates(gt_cat, gt_grp, pred_cat, pred_grp)
    assert fates == {"exact": 1, "wrong category": 1, "split + merged": 1, "merged": 1}
    same = error_analysis.group_fates(gt_cat, gt_grp, gt_cat, gt_grp)
    assert same == {"exact": 4}


def test_benchmark_runs_layout_rules_and_the_model_on_a_tiny_set(tmp_path: Path) -> None:
    benchmark.main(["--quick", "--threads", "1", "--out", str(tmp_path),
                    "--only", "geo_alone,geo_line,full"])
    results = json.loads((tmp_path / "synth" / "results.json").read_text())
    keys = {row["key"] for row in results["rows"]}
    assert keys == {"geo_alone", "geo_alone_true_categories", "geo_line",
                    "geo_line_true_categories", "full"}
    by_key = {row["key"]: row for row in results["rows"]}
    # every box alone: no same-group pairs predicted, as many groups as boxes
    assert by_key["geo_alone_true_categories"]["metrics"]["pair_recall"] == 0.0
    assert by_key["geo_alone_true_categories"]["metrics"]["cat_acc"] == 1.0
    assert "same-line linking" in by_key["geo_line"]["setting"]
    section = (tmp_path / "synth" / "section.md").read_text()
    assert "Partial results" in section  # --only left methods out, and says how to finish
    # the models are reused by a second run, not retrained (the decoder settings are not part
    # of the recipe); with a k-nearest-neighbour decoder the full model is also decoded on every
    # pair, which must reproduce the first run
    benchmark.main(["--quick", "--threads", "1", "--out", str(tmp_path), "--only", "full",
                    "--set", "decoder.neighbors=2"])
    again = {row["key"]: row for row in
             json.loads((tmp_path / "synth" / "results.json").read_text())["rows"]}
    assert set(again) == {"full", "full_all_pairs"}
    assert "each box's 2 nearest boxes" in again["full"]["setting"]
    assert {k: again["full_all_pairs"]["metrics"][k] for k in benchmark.METRICS} == {
        k: by_key["full"]["metrics"][k] for k in benchmark.METRICS}


def test_benchmark_rejects_unknown_methods() -> None:
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--only", "nonsense"])
