"""Tests for the benchmark scripts in tools/: category votes, error breakdown, a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import benchmark  # tools/ is on the path (pyproject: pytest pythonpath), as for `python tools/X.py`
import error_analysis
import numpy as np
import pytest
from benchlib.methods import PerBoxOutputs, vote_categories
from benchlib.scoring import METRICS

from detgroup.config import DecoderConfig
from detgroup.engine.checkpoint import load_checkpoint, save_checkpoint
from detgroup.model.postprocess import PostProcess


def test_vote_gives_each_group_its_most_probable_category() -> None:
    logits = np.log(np.array([
        [0.6, 0.4], [0.1, 0.9], [0.2, 0.8],  # group 0: summed probs 0.9 / 2.1 -> category 1
        [0.7, 0.3],  # group 5 alone -> category 0
    ]))
    groups = np.array([0, 0, 0, 5])
    assert vote_categories(logits, groups).tolist() == [1, 1, 1, 0]
    assert vote_categories(np.zeros((0, 2)), np.zeros(0, int)).tolist() == []


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
    # pair, which must reproduce the first run. The checkpoint is rewritten as one saved before
    # data.box_dropout existed: a key added later takes its default, the recipe still matches
    model_pt = tmp_path / "synth" / "models" / "full" / "model.pt"
    state = load_checkpoint(model_pt)
    del state["config"]["data"]["box_dropout"]
    save_checkpoint(model_pt, {k: v for k, v in state.items() if k != "format"})
    benchmark.main(["--quick", "--threads", "1", "--out", str(tmp_path), "--only", "full",
                    "--set", "decoder.neighbors=2"])
    again = {row["key"]: row for row in
             json.loads((tmp_path / "synth" / "results.json").read_text())["rows"]}
    assert set(again) == {"full", "full_all_pairs"}
    assert "each box's 2 nearest boxes" in again["full"]["setting"]
    assert {k: again["full_all_pairs"]["metrics"][k] for k in METRICS} == {
        k: by_key["full"]["metrics"][k] for k in METRICS}


def test_benchmark_rejects_unknown_methods() -> None:
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--only", "nonsense"])


def test_decoder_sweep_scores_every_k_and_the_chain_needs_neighbours() -> None:
    import decoder_sweep

    n = 6  # six words in a row, one entity: neighbours sure, far pairs mildly against
    idx = np.arange(n)
    pair = np.where(np.abs(idx[:, None] - idx[None, :]) == 1, 3.0, -1.0)
    np.fill_diagonal(pair, 0.0)
    im = PerBoxOutputs(
        logits=np.zeros((n, 2)), features=np.zeros((n, 4)), centres=np.zeros((n, 2)),
        boxes=np.array([[12.0 * i, 0, 12 * i + 10, 10] for i in range(n)]),
        categories=np.zeros(n, dtype=np.int64), groups=np.zeros(n, dtype=np.int64),
        affinity=pair)
    rows = decoder_sweep.sweep([im], 2, [0, 1, 2], [0.0, -5.0])
    assert [(r["neighbors"], r["bias"]) for r in rows] == [
        (0, 0.0), (1, 0.0), (2, 0.0), (0, -5.0), (1, -5.0), (2, -5.0)]
    score = {(r["neighbors"], r["bias"]): r["exact_group_f1"] for r in rows}
    assert score[(1, 0.0)] == 1.0 and score[(2, 0.0)] == 1.0  # the chain is kept whole
    assert score[(0, 0.0)] == 0.0  # every pair: split
    assert score[(1, -5.0)] == 0.0  # a bias that cuts every link


def test_decoder_sweep_runs_on_a_checkpoint(tiny_checkpoint: Path, tiny_data: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import decoder_sweep

    assert decoder_sweep.main([
        "--checkpoint", str(tiny_checkpoint), "--ann", str(tiny_data / "val/annotations.json"),
        "--images", str(tiny_data / "val/images"), "--neighbors", "0", "3", "--threads", "1",
    ]) == 0
    out = capsys.readouterr().out
    assert out.count("\n| 0 |") == 1 and out.count("\n| 3 |") == 1
    assert "best exact-entity F1: neighbors" in out


def test_paired_bootstrap_pools_like_the_evaluator_and_brackets_the_difference() -> None:
    import paired_bootstrap as pb

    from detgroup.metrics import GroupingEvaluator

    rng = np.random.default_rng(0)
    evaluator, counts = GroupingEvaluator(num_classes=3), []
    for n in (5, 9, 1, 12):  # random images: the pooled F1 must be the evaluator's
        truth = rng.integers(0, 3, n), rng.integers(0, 4, n)
        pred = rng.integers(0, 3, n), rng.integers(0, 4, n)
        evaluator.update(*truth, *pred)
        counts.append(pb.exact_counts(*truth, *pred))
    counts = np.array(counts)  # [4, 3]
    assert pb.pooled_f1(counts) == pytest.approx(evaluator.summary()["exact_group_f1"])

    same = pb.paired_bootstrap(counts, counts, draws=200)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0, "share_not_ahead": 1.0}
    better = counts.copy()
    better[:, 0] = np.minimum(better[:, 1], better[:, 2])  # as many exact groups as possible
    better[0, 0] = max(better[0, 0], counts[0, 0] + 1)  # and strictly more on one image
    better[0, 1:] = np.maximum(better[0, 1:], better[0, 0])
    r = pb.paired_bootstrap(better, counts, draws=500)
    assert r["difference"] > 0 and r["low"] >= 0 and r["share_not_ahead"] < 0.5
    with pytest.raises(ValueError, match="images > 0, 3"):
        pb.paired_bootstrap(counts, counts[:2])


def test_paired_bootstrap_runs_on_a_checkpoint(tiny_checkpoint: Path, tiny_data: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import paired_bootstrap as pb

    assert pb.main([
        "--checkpoint", str(tiny_checkpoint), "--rule-categories", str(tiny_checkpoint),
        "--ann", str(tiny_data / "val/annotations.json"),
        "--images", str(tiny_data / "val/images"), "--rule-gap", "1.0", "--rule-overlap", "0.5",
        "--draws", "50", "--threads", "1",
    ]) == 0
    out = capsys.readouterr().out
    for row in ("| model |", "| rule |", "| model, agnostic |", "| rule, model's categories | "):
        assert row in out
    assert out.count("] |") == 2  # two bootstrap intervals


def test_seed_summary_mean_and_sd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import seed_summary

    keys = [k for k, _ in seed_summary.COLUMNS]
    runs = []
    for seed, value in enumerate((0.6, 0.8)):
        run = tmp_path / f"s{seed}"
        run.mkdir()
        summary = {k: value for k in keys} | {"model_seconds": 0.1, "decode_seconds": 0.1}
        (run / "eval.json").write_text("progress line\n" + json.dumps(summary))
        (run / "log.csv").write_text("epoch,epoch_seconds\n1,60\n2,60\n")
        runs.append(f"{run / 'eval.json'}:{run}")
    assert seed_summary.main(["--name", "m", *runs]) == 0
    row = capsys.readouterr().out.strip()
    # mean 0.7, sample sd 0.141; 2 minutes of epochs; 200 ms per form
    assert row == "| m (2) | " + " | ".join(["0.700 ± 0.141"] * len(keys)) + \
        " | 2.0 ± 0.0 | 200.0 ± 0.0 |"


def test_bench_omniglot_l2c_scores_every_row_on_the_same_scenes(tmp_path: Path) -> None:
    import bench_omniglot_l2c
    import torch

    from detgroup.config import config_to_dict
    from detgroup.data.omniglot import convert_omniglot
    from detgroup.model.detector import build_model
    from tests.conftest import tiny_config
    from tests.test_real_data import SMALL, _fake_omniglot

    data = tmp_path / "data"
    convert_omniglot(_fake_omniglot(tmp_path / "src"), data, seed=1,
                     **{**SMALL, "train_scenes": 8}, unlisted_train_runs=2,
                     eval_alphabets=("Beta",))
    cfg = tiny_config(data, "model.crop.enabled=true", "model.crop.size=8",
                      "model.crop.channels=4")
    cfg.category_names = ["Alpha", "other"]
    torch.manual_seed(0)
    ckpt = tmp_path / "crop.pt"
    save_checkpoint(ckpt, {"config": config_to_dict(cfg), "model": build_model(cfg).state_dict()})
    out = tmp_path / "bench.json"
    bench_omniglot_l2c.main(["--data", str(data), "--model", f"crop={ckpt}", "--hog-prior",
                             "--tune-scenes", "8", "--json", str(out),
                             "--methods", "gaec-kl", "average"])
    rows = json.loads(out.read_text())["rows"]
    assert list(rows) == ["HOG + Ward (tuned on train)", "HOG + Ward (tuned on val)",
                          "pixels + Ward (tuned on train)", "HOG + k-means (oracle K)", "crop",
                          "crop [average]", "crop, pair bias tuned on val",
                          "crop + HOG prior", "crop, pair bias tuned on val [average]",
                          "crop + HOG prior [average]"]
    assert rows["crop [average]"]["setting"].startswith("average, ")
    # the [average] row is average linkage of the same logits: detgroup's decoder, by hand here
    from bench_omniglot_l2c import decode, load_scenes, model_logits
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.special import expit
    from sklearn.metrics import adjusted_rand_score

    (w,), *_ = model_logits(ckpt, data / "alphabets/annotations.json", data / "alphabets/images")
    iu = np.triu_indices(len(w), 1)
    by_hand = fcluster(linkage(expit(-w[iu]), "average"), np.nextafter(0.5, 0), "distance")
    assert adjusted_rand_score(by_hand, decode(w, "average")) == 1.0
    (scene,) = load_scenes(data / "alphabets/annotations.json", data / "alphabets/images")
    assert rows["crop [average]"]["scenes"]["alphabets"][0]["ari"] == pytest.approx(
        adjusted_rand_score(scene.groups, by_hand))
    for row in rows.values():
        (scene,) = row["scenes"]["alphabets"]  # the one whole-alphabet scene: Beta
        assert scene["k_true"] == 10 and 0 <= scene["hungarian_acc"] <= 1
        assert scene["num_groups_error"] == abs(scene["k_pred"] - 10)
        assert len(row["scenes"]["test"]) == 1
    assert rows["HOG + k-means (oracle K)"]["scenes"]["alphabets"][0]["k_pred"] == 10
    # --tune-split unseen: the tuned rows are tuned on characters of alphabets never trained on
    held = tmp_path / "held"  # one of the two unlisted runs stays out of training: unseen
    convert_omniglot(tmp_path / "src", held, seed=1, **{**SMALL, "train_scenes": 8},
                     unlisted_train_runs=1, eval_alphabets=("Beta",))
    assert json.loads((held / "unseen/annotations.json").read_text())["images"]
    out2 = tmp_path / "bench_unseen.json"
    bench_omniglot_l2c.main(["--data", str(held), "--model", f"crop={ckpt}", "--hog-prior",
                             "--tune-scenes", "8", "--json", str(out2), "--tune-split", "unseen",
                             "--shift-sweep", "--pair-bias-search"])
    rows2 = json.loads(out2.read_text())["rows"]
    assert list(rows2) == ["HOG + Ward (tuned on train)", "HOG + Ward (tuned on unseen)",
                           "pixels + Ward (tuned on train)", "HOG + k-means (oracle K)", "crop",
                           "crop, pair bias tuned on unseen", "crop + HOG prior",
                           "crop, pair bias searched (silhouette)",
                           "crop, pair bias and HOG weight searched (silhouette)",
                           "crop + HOG prior, pair bias searched (silhouette)"]
    # the searched row is PostProcess's own search on the same logits
    post = PostProcess(pair_bias_search="silhouette",
                       pair_bias_grid=DecoderConfig().pair_bias_grid)
    part, _ = post.decode_searched(w, None, np.zeros((len(w), 4)))
    (beta,) = load_scenes(data / "alphabets/annotations.json", data / "alphabets/images")
    assert rows2["crop, pair bias searched (silhouette)"]["scenes"]["alphabets"][0]["ari"] == \
        pytest.approx(adjusted_rand_score(beta.groups, part.cluster))
    # and the row searching the HOG weight too is that search given the HOG cosines
    joint = PostProcess(pair_bias_search="silhouette",
                        pair_bias_grid=DecoderConfig().pair_bias_grid,
                        prior_weight_grid=bench_omniglot_l2c.PRIOR_SEARCH_WEIGHTS)
    part, _, _ = joint.search(w, None, np.zeros((len(w), 4)), beta.hog @ beta.hog.T)
    assert rows2["crop, pair bias and HOG weight searched (silhouette)"]["scenes"][
        "alphabets"][0]["ari"] == pytest.approx(adjusted_rand_score(beta.groups, part.cluster))
    assert "(tuned on unseen)" in rows2["crop + HOG prior"]["setting"]
    # the alphabets are the same scenes, so the untuned row is the same
    assert rows2["crop"]["scenes"]["alphabets"] == rows["crop"]["scenes"]["alphabets"]
    # --shift-sweep: at shift 0 the sweep is the untuned row
    sweep = json.loads(out2.read_text())["sweep"]
    assert list(sweep) == ["HOG + Ward, threshold", "crop, shift"]
    assert sweep["crop, shift"][bench_omniglot_l2c.SHIFT_GRID.index(0.0)] == \
        rows2["crop"]["scenes"]["alphabets"][0]["hungarian_acc"]
    hog = rows2["HOG + Ward (tuned on unseen)"]["scenes"]["alphabets"][0]["hungarian_acc"]
    assert max(sweep["HOG + Ward, threshold"]) >= hog  # the best threshold of all


def test_omniglot_seed_summary_pairs_a_recipe_with_a_baseline_of_seeds(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import omniglot_seed_summary

    def row(accs: list[float]) -> dict:
        return {"setting": "", "scenes": {"alphabets": [
            {"hungarian_acc": a, "nmi": a, "ari": a, "num_groups_error": 1.0} for a in accs]}}

    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"rows": {
        "a_s0": row([0.6, 0.7, 0.8]), "a_s1": row([0.8, 0.7, 0.6]),
        "b_s0": row([0.7, 0.8, 0.9]), "b_s1": row([0.7, 0.8, 0.9]),
        "hog": row([0.5, 0.5, 0.5])}}))
    omniglot_seed_summary.main([str(bench), "--recipe", "b=b_s0;b_s1", "--baseline", "a_s0;a_s1",
                                "--draws", "200"])
    out = capsys.readouterr().out
    assert "| a_s0;a_s1 (2) | 0.700 ± 0.000 |" in out  # seed means 0.7 and 0.7
    # per scene: b 0.7 / 0.8 / 0.9 minus a 0.7 / 0.7 / 0.7, never behind: no draw below 0
    assert "| b | +0.100 | [+0.000, +0.200] | 0.0" in out
    with pytest.raises(SystemExit, match="no row named"):
        omniglot_seed_summary.main([str(bench), "--recipe", "b=b_s0", "--baseline", "a_s0;zz"])
