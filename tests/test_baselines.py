"""Tests for detgroup.baselines: clusterers on toy groups, tuning, per-category numbering."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score

from detgroup.baselines import (
    Agglomerative,
    DBSCANClusterer,
    HDBSCANClusterer,
    Scene,
    Setting,
    adjusted_rand,
    box_centres,
    cluster_labels,
    group_within_categories,
    kmeans_oracle_groups,
    mean_ari,
    scene_groups,
    tune,
)


def toy_scene(seed: int, *, spread: float = 0.01, gap: float = 0.3) -> Scene:
    """Four tight groups of 3-5 boxes on a line, ``gap`` apart; two categories, alternating, so
    each category holds two groups."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 6, size=4)
    truth = np.repeat(np.arange(4), sizes)
    centres = np.stack([0.1 + gap * truth, np.full(len(truth), 0.5)], 1)
    centres = centres + rng.normal(0, spread, centres.shape)
    return Scene(centres=centres, categories=truth % 2, truth=truth)


CLUSTERERS = [
    Agglomerative(threshold=0.1, linkage="average"),
    Agglomerative(threshold=0.1, linkage="single"),
    DBSCANClusterer(eps=0.1, min_samples=2),
    HDBSCANClusterer(min_cluster_size=3, min_samples=1),
]


@pytest.mark.parametrize("clusterer", CLUSTERERS, ids=lambda c: type(c).__name__)
def test_clusterers_recover_separated_groups(clusterer) -> None:
    for seed in range(3):
        scene = toy_scene(seed)
        groups = scene_groups(scene, Setting(clusterer))
        assert adjusted_rand(scene.truth, cluster_labels(scene.categories, groups)) == 1.0


@pytest.mark.parametrize("clusterer", CLUSTERERS, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("n", [0, 1])
def test_clusterers_take_empty_and_single_box(clusterer, n: int) -> None:
    assert clusterer(np.zeros((n, 3))).shape == (n,)


def test_kmeans_oracle_recovers_groups() -> None:
    scene = toy_scene(1)
    groups = kmeans_oracle_groups(scene)
    assert adjusted_rand(scene.truth, cluster_labels(scene.categories, groups)) == 1.0


def test_groups_are_numbered_per_category_and_never_cross() -> None:
    # every box in one place: one cluster per category, ids from 0 within each
    categories = np.array([2, 0, 2, 0, 2])
    groups = group_within_categories(categories, np.zeros((5, 2)), Agglomerative(threshold=1.0))
    assert groups.tolist() == [0, 0, 0, 0, 0]
    assert len(np.unique(cluster_labels(categories, groups))) == 2


def test_tuning_picks_the_scale_between_spread_and_gap() -> None:
    scenes = [toy_scene(s, spread=0.01, gap=0.3) for s in range(5)]
    candidates = [Setting(Agglomerative(threshold=t)) for t in (0.001, 0.1, 1.0)]
    best, score = tune(scenes, candidates)
    assert best.clusterer.threshold == 0.1
    assert score == 1.0
    assert mean_ari(scenes, candidates[2]) < 1.0  # too coarse merges groups of one category


def test_position_weight_lets_position_break_appearance_ties() -> None:
    # appearance says nothing (identical), position separates the groups
    scene = toy_scene(2)
    scene = Scene(centres=scene.centres, categories=scene.categories, truth=scene.truth,
                  appearance=np.ones((len(scene.truth), 4)))
    candidates = [Setting(Agglomerative(threshold=0.1), position_weight=w) for w in (0.0, 1.0)]
    best, _ = tune([scene], candidates)
    assert best.position_weight == 1.0


def test_dbscan_matches_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.random((25, 2))
        for eps, min_samples in ((0.1, 1), (0.15, 3), (0.2, 4)):
            ref = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(x)
            noise = ref < 0
            ref[noise] = ref.max() + 1 + np.arange(noise.sum())
            ours = DBSCANClusterer(eps=eps, min_samples=min_samples)(x)
            assert adjusted_rand(ref, ours) == 1.0


def test_adjusted_rand_matches_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 30):
        a, b = rng.integers(0, 4, n), rng.integers(0, 5, n)
        assert adjusted_rand(a, b) == pytest.approx(adjusted_rand_score(a, b))


def test_box_centres_are_relative_to_image_size() -> None:
    boxes = np.array([[0, 0, 20, 10], [10, 40, 30, 60]])
    np.testing.assert_allclose(box_centres(boxes, 40, 100), [[0.25, 0.05], [0.5, 0.5]])
