"""model.pair_prior: a fixed classical similarity added to the learned pair logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from detgroup.baselines import LineLinker
from detgroup.config import load_config
from detgroup.errors import DetgroupError
from detgroup.model.detector import build_model
from detgroup.model.pair_prior import PairPrior, attribute_cosine, same_line_links
from tests.conftest import tiny_config


def _words(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.uniform(0, 400, n)
    y = rng.choice([10.0, 30.0, 31.0, 60.0], n) + rng.uniform(-3, 3, n)
    w, h = rng.uniform(10, 60, n), rng.uniform(8, 14, n)
    return np.stack([x, y, x + w, y + h], 1)


@pytest.mark.parametrize("seed", range(5))
def test_same_line_links_are_the_rule_s_links(seed: int) -> None:
    """The rule's groups are the connected components of these links (LineLinker)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    boxes = _words(np.random.default_rng(seed), 40)
    links = same_line_links(torch.tensor(boxes)[None], 1.5, 0.5)[0].numpy()
    assert (links == links.T).all() and (np.diag(links) == 0).all()
    ours = connected_components(csr_matrix(links), directed=False)[1]
    rule = LineLinker(max_gap=1.5, min_overlap=0.5)(boxes)
    assert (ours[:, None] == ours[None]).tolist() == (rule[:, None] == rule[None]).tolist()


def test_edges_equal_the_dense_prior() -> None:
    rng = np.random.default_rng(0)
    boxes = torch.tensor(np.stack([_words(rng, 12), _words(rng, 12)]), dtype=torch.float32)
    attrs = torch.randn(2, 12, 5)
    edges = torch.tensor([[0, 3], [1, 11], [12, 20], [13, 14], [5, 6]])
    for kind in ("same_line", "attribute_cosine"):
        prior = PairPrior(kind=kind, weight=3.0, offset=0.4, max_gap=1.5)
        dense = prior(boxes, attrs).reshape(24, 12)
        expect = dense[edges[:, 0], edges[:, 1] % 12]
        torch.testing.assert_close(prior.on_edges(boxes, attrs, edges), expect)


def test_attribute_cosine_and_missing_attributes() -> None:
    a = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]]])
    torch.testing.assert_close(attribute_cosine(a)[0], torch.tensor(
        [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    prior = PairPrior(kind="attribute_cosine", weight=2.0, offset=0.5)
    with pytest.raises(ValueError, match="attribute_cosine reads box attributes"):
        prior(torch.zeros(1, 3, 4), None)


def test_model_logits_are_head_plus_prior(tiny_data: Path) -> None:
    """With a prior the pair logits move by exactly weight * (link - offset)."""
    torch.manual_seed(0)
    base = build_model(tiny_config(tiny_data), pretrained=False).eval()
    cfg = tiny_config(tiny_data, "model.pair_prior.kind=same_line", "model.pair_prior.weight=4",
                      "model.pair_prior.offset=0.5", "model.pair_prior.max_gap=2")
    with_prior = build_model(cfg, pretrained=False).eval()
    with_prior.load_state_dict(base.state_dict())  # a parameter-free prior: same keys
    boxes = torch.tensor([[[10.0, 10, 30, 20], [32, 11, 50, 21], [10, 80, 40, 95]]])
    images = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        a = base(images, boxes)["pred_affinity"]
        b = with_prior(images, boxes)["pred_affinity"]
    links = torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 0]])
    torch.testing.assert_close(b - a, 4 * (links - 0.5)[None])


def test_prior_trains_and_scripts(tiny_data: Path, tmp_path: Path) -> None:
    from detgroup.engine.train import train

    cfg = tiny_config(tiny_data, "train.epochs=1", "model.pair_prior.kind=same_line",
                      "model.pair_prior.weight=2", "model.pair_prior.offset=0.5")
    train(cfg, out_dir=tmp_path, progress=False)
    from detgroup.engine.checkpoint import load_model_from_checkpoint

    model, loaded = load_model_from_checkpoint(tmp_path / "model.pt")
    assert loaded.model.pair_prior.kind == "same_line" and model.pair_prior is not None
    from detgroup.export import SingleImageNetwork, export_model

    out = export_model(tmp_path / "model.pt", "torchscript", tmp_path / "model.ts")
    boxes = torch.tensor([[10.0, 10, 30, 20], [32, 11, 50, 21], [10, 80, 40, 95]])
    image = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        got = torch.jit.load(str(out))(image, boxes)[1]
        expect = SingleImageNetwork(model.eval())(image, boxes)[1]
    torch.testing.assert_close(got, expect, atol=1e-4, rtol=1e-4)


def test_prior_config_errors(tiny_data: Path) -> None:
    with pytest.raises(DetgroupError, match="model.pair_prior"):
        load_config(None, ["model.pair_prior.kind=hog"])
    with pytest.raises(DetgroupError, match="pair_prior adds to pair logits"):
        load_config(None, ["model.pair_prior.kind=same_line", "loss.pair=kcl"])
    cfg = tiny_config(tiny_data, "model.pair_prior.kind=attribute_cosine")
    with pytest.raises(ValueError, match="attribute_cosine needs"):
        build_model(cfg, pretrained=False)
