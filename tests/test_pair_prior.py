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


def test_parse_pair_prior() -> None:
    from detgroup.config import parse_pair_prior

    p = parse_pair_prior("attribute_cosine:16:0.65")
    assert (p.kind, p.weight, p.offset) == ("attribute_cosine", 16.0, 0.65)
    p = parse_pair_prior("same_line:4:0.5:0.796:0.7")
    assert (p.kind, p.weight, p.offset, p.max_gap, p.min_overlap) == (
        "same_line", 4.0, 0.5, 0.796, 0.7)
    assert parse_pair_prior("none").kind == "none"
    assert parse_pair_prior("same_line").weight == 1.0  # omitted fields: the defaults
    for bad, why in (("hog:1", "kind must be one of"), ("same_line:x", "weight 'x' is not"),
                     ("same_line:1:0:1:0.5:9", "at most"), ("same_line:nan", "finite"),
                     ("same_line:1:0:1:2", "min_overlap in")):
        with pytest.raises(DetgroupError, match=why):
            parse_pair_prior(bad)


def test_prior_at_inference_on_a_checkpoint_trained_without(tiny_checkpoint: Path) -> None:
    """--pair-prior: any bce checkpoint takes a prior at inference, logits move by exactly
    weight * (s - offset); an attribute prior needs attribute names."""
    from detgroup.config import PairPriorConfig
    from detgroup.engine.checkpoint import load_model_from_checkpoint

    base, cfg = load_model_from_checkpoint(tiny_checkpoint)
    assert cfg.model.pair_prior.kind == "none"
    line = PairPriorConfig(kind="same_line", weight=4, offset=0.5, max_gap=2)
    with_line, cfg_line = load_model_from_checkpoint(tiny_checkpoint, pair_prior=line)
    assert cfg_line.model.pair_prior.kind == "same_line"
    boxes = torch.tensor([[[10.0, 10, 30, 20], [32, 11, 50, 21], [10, 80, 40, 95]]])
    images = torch.rand(1, 3, 128, 128)
    attrs = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]])
    cos = attribute_cosine(attrs)
    hog = PairPriorConfig(kind="attribute_cosine", weight=3, offset=0.25)
    with pytest.raises(DetgroupError, match="reads box attributes"):
        load_model_from_checkpoint(tiny_checkpoint, pair_prior=hog)
    with_hog, cfg_hog = load_model_from_checkpoint(tiny_checkpoint, pair_prior=hog,
                                                   attribute_names=["a", "b"])
    assert cfg_hog.attribute_names == ["a", "b"]
    links = torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 0]])
    with torch.no_grad():
        a = base(images, boxes)["pred_affinity"]
        b = with_line(images, boxes)["pred_affinity"]
        c = with_hog(images, boxes, attributes=attrs)["pred_affinity"]
    torch.testing.assert_close(b - a, 4 * (links - 0.5)[None])
    # the prior's similarity is an output too (decoder.prior_weight_grid weighs it again)
    with torch.no_grad():
        torch.testing.assert_close(with_line(images, boxes)["pair_prior_similarity"],
                                   links[None])
        torch.testing.assert_close(with_hog(images, boxes, attributes=attrs)[
            "pair_prior_similarity"], cos)
    assert "pair_prior_similarity" not in base(images, boxes)
    off_diagonal = ~torch.eye(3, dtype=torch.bool)
    torch.testing.assert_close((c - a)[0][off_diagonal], (3 * (cos - 0.25))[0][off_diagonal])


def test_eval_and_grouper_take_a_prior(tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from detgroup.cli import main
    from detgroup.data.crop_descriptors import write_hog_attributes
    from detgroup.inference import Grouper

    hog = write_hog_attributes(tiny_data / "val/annotations.json", tiny_data / "val/images",
                               tmp_path / "hog.json")
    args = ["eval", "--checkpoint", str(tiny_checkpoint), "--images",
            str(tiny_data / "val/images"), "--json"]
    # HOG cosines are >= 0: offset -1 links every pair, offset 1.01 cuts every pair
    assert main([*args, "--data", str(hog), "--pair-prior", "attribute_cosine:1000:-1"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pair_recall"] == 1.0
    assert main([*args, "--data", str(hog), "--pair-prior", "attribute_cosine:1000:1.01"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pair_recall"] == 0.0
    plain = str(tiny_data / "val/annotations.json")
    assert main([*args, "--data", plain, "--pair-prior", "attribute_cosine:16:0.6"]) == 2
    err = capsys.readouterr().err
    assert plain in err and "reads box attributes" in err
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--data", plain, "--pair-prior", "hog:16"])
    assert exit_.value.code == 2 and "kind must be one of" in capsys.readouterr().err

    data = json.loads(hog.read_text())
    image = data["images"][0]
    anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
    boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
              a["bbox"][1] + a["bbox"][3]] for a in anns]
    grouper = Grouper.from_checkpoint(tiny_checkpoint, pair_prior="attribute_cosine:1000:1.01",
                                      attribute_names=data["attribute_names"])
    result = grouper.predict(tiny_data / "val/images" / image["file_name"], boxes,
                             attributes=[a["attributes"] for a in anns])
    assert len(set(result.groups.tolist())) == len(boxes)  # every pair cut: singletons

    # infer: the COCO box file names the attributes the prior reads
    out = tmp_path / "infer"
    assert main(["infer", "--checkpoint", str(tiny_checkpoint), "--images",
                 str(tiny_data / "val/images"), "--boxes", str(hog), "--out", str(out),
                 "--no-overlays", "--pair-prior", "attribute_cosine:1000:1.01"]) == 0
    predicted = json.loads((out / "predictions.json").read_text())
    assert predicted["attribute_names"] == data["attribute_names"]
    pairs = {(a["image_id"], a["group_id"]) for a in predicted["annotations"]}
    assert len(pairs) == len(predicted["annotations"]) == len(data["annotations"])
