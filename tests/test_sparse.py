"""The candidate-pair path (model.pair_candidates): candidates, graph attention, edge head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from detgroup.config import Config, load_config
from detgroup.data.synth import SynthConfig, render_scene, render_tiled_scene
from detgroup.errors import DetgroupError
from detgroup.losses import GroupCriterion
from detgroup.model.detector import build_model
from detgroup.model.heads import PairAffinityHead
from detgroup.model.relation import RelationEncoder
from detgroup.model.sparse import check_dense_fits, edge_pair_logits, graph_relation
from detgroup.ops.boxes import pairwise_geometry
from detgroup.ops.candidates import (
    GAP_TIE_BREAK,
    blocked_knn,
    candidate_edges,
    embedding_distance,
    gap_knn,
)
from tests.conftest import TINY_MODEL, tiny_config


def _boxes(n: int, seed: int, size: float = 300.0) -> torch.Tensor:
    """[n, 4] float64 boxes, a few of them big, many overlapping."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(4, 30, (n, 2))
    wh[: max(1, n // 10)] *= 4
    return torch.tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float64)


def _gap_reference(boxes: np.ndarray, k: int) -> list[set[int]]:
    """Brute force by the definition: the shortest segment between two rectangles, ties by
    centre distance, k smallest per box."""
    n = len(boxes)
    out = []
    for i in range(n):
        keys = []
        for j in range(n):
            if j == i:
                continue
            gx = max(0.0, max(boxes[i, 0], boxes[j, 0]) - min(boxes[i, 2], boxes[j, 2]))
            gy = max(0.0, max(boxes[i, 1], boxes[j, 1]) - min(boxes[i, 3], boxes[j, 3]))
            ci = (boxes[i, :2] + boxes[i, 2:]) / 2
            cj = (boxes[j, :2] + boxes[j, 2:]) / 2
            keys.append((np.hypot(gx, gy) + GAP_TIE_BREAK * np.linalg.norm(ci - cj), j))
        out.append({j for _, j in sorted(keys)[:k]})
    return out


def _edge_set(edges: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in edges.tolist()}


def _symmetrised(neighbours: list[set[int]], offset: int = 0) -> set[tuple[int, int]]:
    return {(min(i, j) + offset, max(i, j) + offset)
            for i, row in enumerate(neighbours) for j in row}


@pytest.mark.parametrize(("n", "k", "block"), [(40, 3, 7), (40, 8, 1024), (25, 24, 4),
                                                (6, 10, 2)])
def test_gap_knn_equals_brute_force(n: int, k: int, block: int) -> None:
    boxes = _boxes(n, seed=n + k)
    got = gap_knn(boxes, k, block=block)
    assert got.shape == (n, min(k, n - 1))
    reference = _gap_reference(boxes.numpy(), k)
    assert [set(row) for row in got.tolist()] == reference
    # the blocked full scan gives the same neighbours, nearest first
    assert torch.equal(got, blocked_knn_gap(boxes, k))


def blocked_knn_gap(boxes: torch.Tensor, k: int) -> torch.Tensor:
    from detgroup.ops.candidates import gap_distance

    return blocked_knn(gap_distance, boxes, k, block=5)


@pytest.mark.parametrize("k", [1, 4, 30])
def test_embedding_knn_equals_brute_force(k: int) -> None:
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    got = blocked_knn(embedding_distance, x, k, block=7)
    d = ((x[:, None] - x[None]) ** 2).sum(-1).numpy()
    np.fill_diagonal(d, np.inf)
    reference = [set(np.argsort(row)[: min(k, 29)].tolist()) for row in d]
    assert [set(row) for row in got.tolist()] == reference


def test_candidate_edges_are_the_symmetrised_union_per_image() -> None:
    sizes = (17, 30)
    boxes = torch.zeros(2, 30, 4, dtype=torch.float64)
    embed = torch.randn(2, 30, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pad = torch.ones(2, 30, dtype=torch.bool)
    expected: set[tuple[int, int]] = set()
    for b, n in enumerate(sizes):
        boxes[b, :n] = _boxes(n, seed=b)
        boxes[b, n:] = boxes[b, 0]  # padding sits on a real box: must never be a candidate
        pad[b, :n] = False
        expected |= _symmetrised(_gap_reference(boxes[b, :n].numpy(), 3), b * 30)
        d = ((embed[b, :n, None] - embed[b, None, :n]) ** 2).sum(-1).numpy()
        np.fill_diagonal(d, np.inf)
        expected |= _symmetrised([set(np.argsort(r)[:2].tolist()) for r in d], b * 30)
    edges = candidate_edges(boxes, embed, pad, gap_k=3, embed_k=2, block=8)
    assert _edge_set(edges) == expected
    assert (edges[:, 0] < edges[:, 1]).all()
    assert len(_edge_set(edges)) == len(edges)  # no duplicates


def test_candidate_edges_bad_k_and_tiny_scenes() -> None:
    boxes = _boxes(5, seed=1)[None]
    pad = torch.zeros(1, 5, dtype=torch.bool)
    # k > N - 1: every pair; k = 0: none of that kind
    assert len(candidate_edges(boxes, None, pad, gap_k=50, embed_k=0)) == 10
    assert len(candidate_edges(boxes, None, pad, gap_k=0, embed_k=3)) == 0
    # one box, or none: no pair
    for n in (0, 1):
        one = candidate_edges(boxes[:, :n], None, pad[:, :n], gap_k=4, embed_k=4)
        assert one.shape == (0, 2)


def _dense_inputs(n: int = 12, dim: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    tokens = torch.randn(2, n, dim, generator=g)
    xy = torch.rand(2, n, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 5 + torch.rand(2, n, 2, generator=g) * 40], -1)
    pad = torch.zeros(2, n, dtype=torch.bool)
    pad[1, n - 4:] = True
    return tokens, boxes, pad


def _complete_graph(pad: torch.Tensor) -> torch.Tensor:
    b, n = pad.shape
    edges = []
    for image in range(b):
        real = torch.nonzero(~pad[image]).squeeze(1) + image * n
        i, j = torch.triu_indices(len(real), len(real), 1)
        edges.append(torch.stack([real[i], real[j]], 1))
    return torch.cat(edges)


def test_graph_attention_equals_dense_attention_on_the_complete_graph() -> None:
    torch.manual_seed(0)
    relation = RelationEncoder(dim=32, layers=2, heads=4).eval()
    tokens, boxes, pad = _dense_inputs()
    with torch.no_grad():
        dense = relation(tokens, pairwise_geometry(boxes), pad)
        sparse = graph_relation(relation, tokens, boxes, _complete_graph(pad))
    real = ~pad
    torch.testing.assert_close(sparse[real], dense[real], atol=2e-5, rtol=1e-4)
    # with fewer edges attention changes (the test can fail)
    with torch.no_grad():
        fewer = graph_relation(relation, tokens, boxes, _complete_graph(pad)[::3])
    assert not torch.allclose(fewer[real], dense[real], atol=1e-3)


@pytest.mark.parametrize("layout", [False, True])
def test_edge_pair_logits_equal_dense_pair_logits(layout: bool) -> None:
    torch.manual_seed(1)
    head = PairAffinityHead(dim=32, hidden=16, layout=layout).eval()
    h, boxes, pad = _dense_inputs()
    edges = _complete_graph(pad)
    with torch.no_grad():
        dense = head(h, boxes)["pred_affinity"].reshape(-1, 1)  # [B * N * N]
        got = edge_pair_logits(head, h, boxes, edges)
    n = h.shape[1]
    b, i = edges[:, 0] // n, edges[:, 0] % n
    flat = (b * n + i) * n + edges[:, 1] % n
    torch.testing.assert_close(got, dense[flat, 0], atol=1e-5, rtol=1e-5)


def _sparse_cfg(data: Path, *extra: str) -> Config:
    return tiny_config(data, "model.pair_candidates.mode=sparse", "model.pair_candidates.gap_k=3",
                       "model.pair_candidates.embed_k=2", *extra)


def test_sparse_path_is_permutation_equivariant(tiny_data: Path) -> None:
    torch.manual_seed(0)
    model = build_model(_sparse_cfg(tiny_data)).eval()
    _, boxes, _ = _dense_inputs(n=15)
    boxes = boxes[:1]
    image = torch.rand(1, 3, 256, 256)
    perm = torch.randperm(15, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(image, boxes)
        shuffled = model(image, boxes[:, perm])
    torch.testing.assert_close(shuffled["pred_logits"][0], out["pred_logits"][0][perm],
                               atol=1e-5, rtol=1e-5)

    def pair_map(o: dict[str, torch.Tensor], ids: torch.Tensor) -> dict[tuple[int, int], float]:
        return {tuple(sorted((int(ids[i]), int(ids[j])))): float(v)
                for (i, j), v in zip(o["pair_edges"].tolist(), o["pred_edge_logits"],
                                     strict=True)}

    a, b = pair_map(out, torch.arange(15)), pair_map(shuffled, perm)
    assert a.keys() == b.keys() and len(a) > 15
    assert max(abs(a[key] - b[key]) for key in a) < 1e-4


def test_dense_mode_is_the_dense_path_bit_for_bit(tiny_cfg: Config, tiny_data: Path) -> None:
    torch.manual_seed(0)
    dense = build_model(tiny_cfg).eval()
    assert dense.candidates is None
    assert not any(k.startswith("candidates") for k in dense.state_dict())
    image = torch.rand(2, 3, 128, 128)
    _, boxes, pad = _dense_inputs()
    with torch.no_grad():
        out = dense(image, boxes, pad)
        feats = dense.features(image, torch.tensor([[128, 128]] * 2))
        tokens = dense.tokenizer(feats, boxes, torch.tensor([[128, 128]] * 2), (128, 128))
        h = dense.relation(tokens, pairwise_geometry(boxes), pad)
        assert torch.equal(out["features"], h)
        assert torch.equal(out["pred_affinity"], dense.pair_head(h, boxes)["pred_affinity"])
        # "auto" below its threshold runs the same dense computation with the same weights
        auto = build_model(_sparse_cfg(tiny_data, "model.pair_candidates.mode=auto")).eval()
        auto.load_state_dict(dense.state_dict(), strict=False)
        out_auto = auto(image, boxes, pad)
    assert "pair_edges" not in out_auto
    assert torch.equal(out_auto["pred_affinity"], out["pred_affinity"])
    assert torch.equal(out_auto["pred_logits"], out["pred_logits"])


def test_auto_mode_switches_above_its_threshold(tiny_data: Path) -> None:
    cfg = _sparse_cfg(tiny_data, "model.pair_candidates.mode=auto",
                      "model.pair_candidates.auto_min_boxes=10")
    model = build_model(cfg).eval()
    _, boxes, pad = _dense_inputs(n=12)
    with torch.no_grad():
        assert "pair_edges" in model(torch.rand(2, 3, 128, 128), boxes, pad)
        assert "pred_affinity" in model(torch.rand(2, 3, 128, 128), boxes[:, :10], pad[:, :10])
    model.train()  # training always takes the candidate path
    assert "pair_edges" in model(torch.rand(2, 3, 128, 128), boxes[:, :10], pad[:, :10])


def test_edge_loss_on_every_pair_equals_the_dense_loss(tiny_cfg: Config) -> None:
    torch.manual_seed(0)
    _, _, pad = _dense_inputs()
    groups = torch.randint(0, 3, pad.shape)
    logits = torch.randn(2, 12, 12)
    logits = logits + logits.transpose(1, 2)
    edges = _complete_graph(pad)
    n = 12
    flat = logits.reshape(-1)[(edges[:, 0] // n * n + edges[:, 0] % n) * n + edges[:, 1] % n]
    targets = {"groups": groups, "categories": torch.zeros_like(groups)}
    base = {"pred_logits": torch.zeros(2, 12, 2), "pad_mask": pad}
    for balance in ("pairs", "groups"):
        criterion = GroupCriterion(pair_balance=balance)
        dense = criterion({**base, "pred_affinity": logits}, targets)["loss_pair"]
        sparse = criterion({**base, "pair_edges": edges, "pred_edge_logits": flat},
                           targets)["loss_pair"]
        torch.testing.assert_close(sparse, dense)


def test_dense_path_too_big_for_memory_says_so() -> None:
    with pytest.raises(DetgroupError, match="pair_candidates"):
        check_dense_fits(1, 10_000_000, torch.device("cpu"))
    check_dense_fits(1, 2000, torch.device("cpu"))  # fits: no error


@pytest.mark.parametrize("bad", [
    ["model.pair_candidates.mode=maybe"],
    ["model.pair_candidates.mode=sparse", "model.pair_candidates.gap_k=0",
     "model.pair_candidates.embed_k=0"],
    ["model.pair_candidates.mode=sparse", "loss.pair=kcl"],
    ["model.pair_candidates.mode=sparse", "decoder.method=exact"],
    ["model.pair_candidates.mode=sparse", "model.pair_candidates.gap_k=-1"],
    ["model.pair_candidates.mode=sparse", "model.detector.backbone=mobilenet_v3_large_fpn"],
])
def test_bad_candidate_config_is_an_error(bad: list[str]) -> None:
    with pytest.raises(DetgroupError, match="pair_candidates"):
        load_config(None, [*TINY_MODEL, *bad])


def test_train_and_predict_end_to_end_with_candidates(tiny_data: Path, tmp_path: Path) -> None:
    from detgroup.engine.train import train
    from detgroup.inference import Grouper

    cfg = _sparse_cfg(tiny_data, "train.epochs=1")
    train(cfg, out_dir=tmp_path, progress=False)
    grouper = Grouper.from_checkpoint(tmp_path / "model.pt")
    assert grouper.model.candidates is not None
    image = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    boxes = _boxes(20, seed=2, size=90).numpy()
    result = grouper.predict(image, boxes)
    assert result.groups.shape == (20,) and result.categories.shape == (20,)
    assert sp.issparse(result.affinity) and result.affinity.shape == (20, 20)
    assert 0 < result.affinity.nnz < 20 * 19
    one = grouper.predict(image, boxes[:1])  # one box: its own group
    assert one.groups.tolist() == [0] and one.affinity.nnz == 0
    assert grouper.predict(image, np.zeros((0, 4))).groups.shape == (0,)


def test_tiled_synthetic_scenes() -> None:
    cfg = SynthConfig(image_size=96, tiles=1, seed=4)
    image, anns = render_tiled_scene((4, 0, 0), cfg)
    same, same_anns = render_scene(np.random.default_rng([4, 0, 0]), cfg)
    assert np.array_equal(image, same) and anns == same_anns
    cfg.tiles = 2
    image, anns = render_tiled_scene((4, 0, 0), cfg)
    assert image.shape == (192, 192, 3)
    boxes = np.array([a["bbox"] for a in anns])
    assert (boxes[:, 0] + boxes[:, 2] <= 192).all() and (boxes[:, 0] >= 96).any()
    assert (boxes[:, 1] >= 96).any()
    # groups never cross tiles: every group's boxes lie in one tile
    for g in {a["group"] for a in anns}:
        tiles = {(int(b[0] // 96), int(b[1] // 96)) for a, b in zip(anns, boxes, strict=True)
                 if a["group"] == g}
        assert len(tiles) == 1
