"""``decoder.pair_bias_search: silhouette``: a per-image shift of the pair logits chosen without
labels (the partition of highest silhouette under the unshifted pair distances)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import expit
from sklearn.metrics import adjusted_rand_score, silhouette_score

from detgroup.cli import main
from detgroup.config import load_config
from detgroup.errors import DetgroupError
from detgroup.model.postprocess import PostProcess

GRID = tuple(k / 4 for k in range(-24, 9))  # -6 .. 2


def _overconfident(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pair logits [N, N] of 4 groups of 6 that a model ranks right but calibrates 5 too high:
    at shift 0 every pair links (one group), the groups reappear only below -3."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(4), 6)  # [N]
    same = truth[:, None] == truth[None, :]
    logits = np.where(same, 3.0, -2.0) + rng.normal(0, 0.3, same.shape) + 5.0
    return (logits + logits.T) / 2, truth


@pytest.mark.parametrize("method", ["gaec-kl", "average"])
def test_search_undoes_a_constant_miscalibration(method: str) -> None:
    logits, truth = _overconfident()
    plain = PostProcess(method=method).decode(logits, None, np.zeros((len(truth), 4)))
    assert len(np.unique(plain.cluster)) == 1  # as calibrated: one group of everything
    post = PostProcess(method=method, pair_bias_search="silhouette", pair_bias_grid=GRID)
    part, shift = post.decode_searched(logits, None, np.zeros((len(truth), 4)))
    assert adjusted_rand_score(truth, part.cluster) == 1.0
    assert shift < -3.0
    # the chosen shift is the grid's silhouette maximum, recomputed here with scikit-learn
    distance = 1.0 - expit(logits)
    np.fill_diagonal(distance, 0.0)

    def score(s: float) -> float:
        c = PostProcess(method=method).decode(logits + s, None, np.zeros((24, 4))).cluster
        return silhouette_score(distance, c, metric="precomputed") if 1 < len(
            np.unique(c)) < 24 else -1.0

    assert score(shift) == pytest.approx(max(score(s) for s in GRID))


def test_no_structure_keeps_the_smallest_shift() -> None:
    """Two boxes: no partition has a silhouette, so the shift nearest 0 wins (the plain
    decoding)."""
    logits = np.array([[0.0, 1.5], [1.5, 0.0]])
    post = PostProcess(pair_bias_search="silhouette", pair_bias_grid=(-2.0, 0.0, 1.0))
    part, shift = post.decode_searched(logits, None, np.zeros((2, 4)))
    assert shift == 0.0 and len(np.unique(part.cluster)) == 1


def test_search_runs_inside_the_batched_call() -> None:
    logits, truth = _overconfident(1)
    n = len(truth)
    outputs = {"pred_logits": torch.zeros(1, n, 1),
               "pred_affinity": torch.from_numpy(logits).float()[None],
               "pad_mask": torch.zeros(1, n, dtype=torch.bool)}
    boxes = torch.zeros(1, n, 4)
    searched = PostProcess(pair_bias_search="silhouette", pair_bias_grid=GRID)(
        outputs, boxes, [7])[0]
    plain = PostProcess()(outputs, boxes, [7])[0]
    assert adjusted_rand_score(truth, searched.groups) == 1.0
    assert len(np.unique(plain.groups)) == 1


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(DetgroupError, match="neighbors=6"):
        PostProcess(pair_bias_search="silhouette", neighbors=6)
    with pytest.raises(DetgroupError, match="pair_bias_grid is empty"):
        PostProcess(pair_bias_search="silhouette", pair_bias_grid=())
    with pytest.raises(DetgroupError, match="none or silhouette"):
        PostProcess(pair_bias_search="modularity")
    with pytest.raises(DetgroupError, match="pair_bias_search"):
        load_config(None, ["decoder.pair_bias_search=modularity"])


def test_eval_and_infer_take_the_flag(tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    base = ["eval", "--checkpoint", str(tiny_checkpoint), "--images",
            str(tiny_data / "val/images"), "--data", str(tiny_data / "val/annotations.json"),
            "--json"]
    assert main([*base, "--pair-bias-search", "silhouette"]) == 0
    searched = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert searched["num_images"] == 4 and 0.0 <= searched["ari"] <= 1.0
    assert main([*base, "--pair-bias-search", "silhouette", "--neighbors", "3"]) != 0
    assert "pair_bias_search" in capsys.readouterr().err
    out = tmp_path / "infer"
    assert main(["infer", "--checkpoint", str(tiny_checkpoint), "--images",
                 str(tiny_data / "val/images"), "--boxes", str(tiny_data / "val/annotations.json"),
                 "--out", str(out), "--no-overlays", "--pair-bias-search", "silhouette"]) == 0
    assert (out / "predictions.json").is_file()


def _noisy_with_a_clean_prior(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """5 groups of 8: pair logits [N, N] with heavy symmetric noise (sd 2 / sqrt 2 around
    +-1.5), and a clean prior similarity [N, N] (the cosine of one-hot group codes + noise)."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(5), 8)  # [N]
    same = truth[:, None] == truth[None, :]
    noise = rng.normal(0, 2.0, same.shape)
    logits = np.where(same, 1.5, -1.5) + (noise + noise.T) / 2
    code = np.eye(5)[truth] + rng.normal(0, 0.15, (len(truth), 5))  # [N, 5]
    code /= np.linalg.norm(code, axis=1, keepdims=True)
    return logits, code @ code.T, truth


@pytest.mark.parametrize("seed", [1, 2])
def test_prior_weight_search_denoises_the_learned_affinity(seed: int) -> None:
    """The shift alone keeps errors of the noisy logits; searching the prior's weight too finds
    the truth, and the chosen (weight, shift) is the silhouette maximum over every candidate
    (recomputed here with scikit-learn, under the model's own distance 1 - p)."""
    logits, sim, truth = _noisy_with_a_clean_prior(seed)
    boxes = np.zeros((len(truth), 4))
    grid = tuple(k / 4 for k in range(-16, 9))
    shift_only = PostProcess(method="average", pair_bias_search="silhouette",
                             pair_bias_grid=grid)
    part, _, weight = shift_only.search(logits, None, boxes, sim)
    assert weight == 0.0 and adjusted_rand_score(truth, part.cluster) < 0.95
    joint = PostProcess(method="average", pair_bias_search="silhouette", pair_bias_grid=grid,
                        prior_weight_grid=(8.0, 0.0, 4.0))
    part, shift, weight = joint.search(logits, None, boxes, sim)
    assert weight > 0 and adjusted_rand_score(truth, part.cluster) == 1.0
    distance = 1.0 - expit(logits)
    np.fill_diagonal(distance, 0.0)
    centred = sim - np.median(sim[np.triu_indices(len(sim), 1)])

    def score(w: float, s: float) -> float:
        c = PostProcess(method="average").decode(logits + w * centred + s, None, boxes).cluster
        return silhouette_score(distance, c, metric="precomputed") if 1 < len(
            np.unique(c)) < len(c) else -1.0

    assert score(weight, shift) == pytest.approx(max(score(w, s) for w in (0, 4, 8)
                                                     for s in grid))
    # the prior is centred on its median: a constant added to it changes nothing
    again = joint.search(logits, None, boxes, sim + 0.3)
    assert again[1:] == (shift, weight)
    assert adjusted_rand_score(part.cluster, again[0].cluster) == 1.0


def test_prior_weights_need_a_prior_and_sound_values() -> None:
    logits, _, truth = _noisy_with_a_clean_prior(1)
    post = PostProcess(pair_bias_search="silhouette", prior_weight_grid=(0.0, 4.0))
    with pytest.raises(DetgroupError, match="prior_weight_grid .* this model has none"):
        post.search(logits, None, np.zeros((len(truth), 4)))
    # a grid of weight 0 alone is the shift search, with or without a prior
    plain = PostProcess(pair_bias_search="silhouette")
    assert plain.search(logits, None, np.zeros((len(truth), 4)))[2] == 0.0
    for bad in ((), (-1.0,), (float("nan"),)):
        with pytest.raises(DetgroupError, match="prior_weight_grid must be"):
            PostProcess(prior_weight_grid=bad)
    with pytest.raises(DetgroupError, match="prior_weight_grid must be"):
        load_config(None, ["decoder.prior_weight_grid=[0.0,-2.0]"])


def test_eval_and_infer_search_the_weight_of_a_hog_prior(
        tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from detgroup.data.crop_descriptors import write_hog_attributes

    hog = write_hog_attributes(tiny_data / "val/annotations.json", tiny_data / "val/images",
                               tmp_path / "hog.json")
    base = ["eval", "--checkpoint", str(tiny_checkpoint), "--images",
            str(tiny_data / "val/images"), "--data", str(hog), "--json",
            "--pair-bias-search", "silhouette"]
    assert main([*base, "--pair-prior", "attribute_cosine:0", "--prior-weight-grid",
                 "0,4,16"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num_images"] == 4 and 0.0 <= summary["ari"] <= 1.0
    assert main([*base, "--prior-weight-grid", "0,4"]) != 0  # no prior to weigh
    assert "prior_weight_grid" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--prior-weight-grid", "0,-4"])
    assert exit_.value.code == 2 and "finite and >= 0" in capsys.readouterr().err
    out = tmp_path / "infer"
    assert main(["infer", "--checkpoint", str(tiny_checkpoint), "--images",
                 str(tiny_data / "val/images"), "--boxes", str(hog), "--out", str(out),
                 "--no-overlays", "--pair-bias-search", "silhouette", "--pair-prior",
                 "attribute_cosine:0", "--prior-weight-grid", "0,4,16"]) == 0
    assert (out / "predictions.json").is_file()
