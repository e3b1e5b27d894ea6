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
    LineLinker,
    Scene,
    Setting,
    Singletons,
    adjusted_rand,
    box_centres,
    cluster_labels,
    exact_group_f1,
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


def form_boxes() -> tuple[np.ndarray, np.ndarray]:
    """Words of a toy form (boxes px, true entity): "Name: John Smith" on one line (two entities
    with a wide gap), a two-line answer under it, and a far-away word on the first line."""
    boxes = np.array([
        [10, 10, 50, 22], [54, 11, 62, 22],  # "Name :" (entity 0), gap 4 px
        [120, 10, 160, 22], [165, 10, 210, 22],  # "John Smith" (entity 1), after a 58 px gap
        [120, 26, 170, 38],  # second line of entity 1, 4 px below
        [600, 10, 640, 22],  # a page number (entity 2)
    ], dtype=float)
    return boxes, np.array([0, 0, 1, 1, 1, 2])


def test_line_linker_links_small_gaps_on_one_line_only() -> None:
    boxes, truth = form_boxes()
    same_line = LineLinker(max_gap=1.0)(boxes)
    assert adjusted_rand(np.array([0, 0, 1, 1, 2, 3]), same_line) == 1.0
    with_next = LineLinker(max_gap=1.0, max_line_gap=0.5)(boxes)
    assert adjusted_rand(truth, with_next) == 1.0
    # a gap above the threshold splits; one large enough merges the line but not the far word
    assert len(np.unique(LineLinker(max_gap=0.2)(boxes))) == 6
    assert len(np.unique(LineLinker(max_gap=10.0)(boxes))) == 3
    # the order of the boxes does not matter
    perm = np.random.default_rng(0).permutation(len(boxes))
    assert adjusted_rand(with_next[perm], LineLinker(max_gap=1.0, max_line_gap=0.5)(boxes[perm])
                         ) == 1.0


@pytest.mark.parametrize("n", [0, 1])
def test_line_linker_and_singletons_take_empty_and_single_box(n: int) -> None:
    boxes = np.array([[0, 0, 10, 10]], dtype=float)[:n]
    assert LineLinker(max_gap=1.0)(boxes).tolist() == [0] * n
    assert Singletons()(boxes).tolist() == list(range(n))


def test_box_settings_group_scene_boxes_within_categories() -> None:
    boxes, truth = form_boxes()
    categories = np.array([0, 0, 1, 1, 1, 0])
    scene = Scene(centres=box_centres(boxes, 700, 100), categories=categories,
                  truth=cluster_labels(categories, truth), boxes=boxes)
    setting = Setting(LineLinker(max_gap=1.0, max_line_gap=0.5), on="boxes")
    assert adjusted_rand(scene.truth, cluster_labels(categories, scene_groups(scene, setting))
                         ) == 1.0
    best, score = tune([scene], [Setting(Singletons(), on="boxes"), setting], "exact_f1")
    assert best is setting and score == 1.0
    with pytest.raises(ValueError, match="boxes"):
        scene_groups(Scene(centres=scene.centres, categories=categories, truth=scene.truth),
                      setting)


def test_exact_group_f1_counts_identical_member_sets() -> None:
    truth = np.array([0, 0, 1, 2, 2, 3])
    assert exact_group_f1(truth, truth + 7) == 1.0
    # {0, 1} and {5} recovered; {2} and {3, 4} merged into one predicted group
    pred = np.array([5, 5, 6, 6, 6, 8])
    assert exact_group_f1(truth, pred) == pytest.approx(2 * 2 / (4 + 3))
    assert exact_group_f1(np.zeros(0, int), np.zeros(0, int)) == 1.0
    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.integers(0, 4, 12), rng.integers(0, 4, 12)
        sets_a = {frozenset(np.flatnonzero(a == v)) for v in np.unique(a)}
        sets_b = {frozenset(np.flatnonzero(b == v)) for v in np.unique(b)}
        expected = 2 * len(sets_a & sets_b) / (len(sets_a) + len(sets_b))
        assert exact_group_f1(a, b) == pytest.approx(expected)
