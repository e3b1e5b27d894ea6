"""``detgroup export``: the exported graphs match eager PyTorch for other N and image sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detgroup.cli import EXIT_USER_ERROR, main
from detgroup.config import config_to_dict
from detgroup.engine.checkpoint import load_model_from_checkpoint, save_checkpoint
from detgroup.errors import DetgroupError
from detgroup.export import SingleImageNetwork, export_model
from detgroup.model.detector import build_model
from tests.conftest import tiny_config

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

# (N, H, W): none equals the trace's example (8 boxes, 256 x 256); 5 and 17 exceed the
# checkpoint's pair_chunk, so the eager model chunks rows where the export does not.
CASES = [(1, 96, 96), (5, 128, 96), (17, 64, 160)]


def _boxes(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """[N, 4] xyxy px inside an H x W image."""
    g = torch.Generator().manual_seed(seed)
    wh = torch.rand(n, 2, generator=g) * 28 + 4
    xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh)
    return torch.cat([xy, xy + wh], dim=1)


def _checkpoint(root: Path, pair: str, *extra: str) -> Path:
    cfg = tiny_config(root, f"loss.pair={pair}", "model.pair_chunk=4", *extra)
    torch.manual_seed(0)
    model = build_model(cfg)
    path = root / f"{pair}{len(extra)}.pt"
    save_checkpoint(path, {"config": config_to_dict(cfg), "model": model.state_dict()})
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random-init tiny models, one per pair head, the pair head with layout features, and the
    word recipe's RoIs (a wide grid and a second grid on the surroundings)."""
    root = tmp_path_factory.mktemp("export")
    found = {pair: _checkpoint(root, pair) for pair in ("bce", "mcl", "ae")}
    found["bce_layout"] = _checkpoint(root, "bce", "model.pair_layout_features=true")
    found["bce_word_roi"] = _checkpoint(root, "bce", "model.pair_layout_features=true",
                                        "model.roi_size=3", "model.roi_width=6",
                                        "model.roi_context=1.0")
    crop = ("model.crop.enabled=true", "model.crop.size=8", "model.crop.channels=4",
            "model.crop.context=0.25")
    found["bce_crop"] = _checkpoint(root, "bce", *crop)
    found["bce_crop_replace"] = _checkpoint(root, "bce", *crop, "model.crop.fusion=replace",
                                            "model.crop.width=16",  # a wide (word) crop
                                            "model.crop.norm=true")  # GroupNorm in the CNN
    return found


def _eager(checkpoint: Path, image: torch.Tensor, boxes: torch.Tensor) -> list[np.ndarray]:
    model, _ = load_model_from_checkpoint(checkpoint)
    with torch.no_grad():
        return [t.numpy() for t in SingleImageNetwork(model)(image, boxes)]


def _run_torchscript(path: Path, image: torch.Tensor, boxes: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in torch.jit.load(str(path))(image, boxes)]


def _check_against_eager(checkpoint: Path, path: Path, run) -> None:
    for n, h, w in CASES:
        torch.manual_seed(n)
        image, boxes = torch.rand(1, 3, h, w), _boxes(n, h, w, seed=n)
        expected = _eager(checkpoint, image, boxes)
        got = run(path, image, boxes)
        assert [g.shape for g in got] == [(n, 2), (n, n)]
        for g, e in zip(got, expected, strict=True):
            assert np.abs(g - e).max() <= 1e-4, (n, h, w)


@pytest.mark.parametrize("pair", ["bce", "mcl", "ae", "bce_layout", "bce_word_roi", "bce_crop",
                                  "bce_crop_replace"])
def test_torchscript_matches_eager(checkpoints: dict[str, Path], tmp_path: Path,
                                   pair: str) -> None:
    out = tmp_path / "sub/model.ts"
    assert export_model(checkpoints[pair], "torchscript", out) == out
    _check_against_eager(checkpoints[pair], out, _run_torchscript)
    extra = {"detgroup.json": ""}
    torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["detgroup.json"])["category_names"] == ["cat", "dog"]
    # no temporary file left; the decoder settings beside the graph
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.decoder.json", "model.ts"]


@pytest.mark.parametrize("pair", ["bce", "bce_layout", "bce_word_roi", "bce_crop",
                                  "bce_crop_replace"])
def test_onnx_matches_eager(checkpoints: dict[str, Path], tmp_path: Path, pair: str) -> None:
    pytest.importorskip("onnx", reason="ONNX export needs the 'export' extra (onnx)")
    ort = pytest.importorskip("onnxruntime", reason="checking ONNX needs the 'export' extra")
    out = export_model(checkpoints[pair], "onnx", tmp_path / "model.onnx")

    def run(path: Path, image: torch.Tensor, boxes: torch.Tensor) -> list[np.ndarray]:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"image": image.numpy(), "boxes": boxes.numpy()})

    _check_against_eager(checkpoints[pair], out, run)
    meta = ort.InferenceSession(str(out)).get_modelmeta().custom_metadata_map
    assert json.loads(meta["detgroup"])["category_names"] == ["cat", "dog"]


def test_cli_export(checkpoints: dict[str, Path], tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model.ts"
    assert main(["export", "--checkpoint", str(checkpoints["bce"]), "--format", "torchscript",
                 "--out", str(out)]) == 0
    assert out.is_file() and "exported torchscript" in capsys.readouterr().out
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    assert main(["export", "--checkpoint", str(corrupt), "--format", "torchscript",
                 "--out", str(tmp_path / "x.ts")]) == EXIT_USER_ERROR
    assert "corrupt.pt" in capsys.readouterr().err


def test_export_errors(checkpoints: dict[str, Path], tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = checkpoints["bce"]
    with pytest.raises(DetgroupError, match="unknown export format"):
        export_model(ckpt, "tflite", tmp_path / "m")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(DetgroupError, match="corrupt.pt"):
        export_model(corrupt, "torchscript", tmp_path / "m.ts")
    with pytest.raises(DetgroupError, match="not found"):
        export_model(tmp_path / "missing.pt", "torchscript", tmp_path / "m.ts")
    with pytest.raises(DetgroupError, match="is a folder"):
        export_model(ckpt, "torchscript", tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DetgroupError, match="cannot write"):
        export_model(ckpt, "torchscript", blocker / "m.ts")
    assert not (tmp_path / "m.ts").exists()
    monkeypatch.setattr("detgroup.export.importlib.util.find_spec", lambda name: None)
    with pytest.raises(DetgroupError, match="onnx package"):
        export_model(ckpt, "onnx", tmp_path / "m.onnx")


def _run_exported_program(path: Path, image: torch.Tensor,
                          boxes: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in torch.export.load(str(path)).module()(image, boxes)]


@pytest.mark.parametrize("pair", ["bce", "bce_word_roi", "bce_crop"])
def test_torch_export_matches_eager_for_any_box_count(checkpoints: dict[str, Path],
                                                      tmp_path: Path, pair: str) -> None:
    """The ExportedProgram keeps N, H and W symbolic: other N and sizes than the example."""
    out = export_model(checkpoints[pair], "torch-export", tmp_path / "model.pt2")
    _check_against_eager(checkpoints[pair], out, _run_exported_program)
    extra = {"detgroup.json": ""}
    torch.export.load(str(out), extra_files=extra)
    assert json.loads(extra["detgroup.json"])["category_names"] == ["cat", "dog"]


def test_exported_graph_plus_partition_equals_grouper(tiny_data: Path, tmp_path: Path) -> None:
    """The decoder settings written beside the graph (a calibrated pair bias and a neighbour
    graph here) let ``partition`` reproduce ``Grouper.predict`` from the exported logits."""
    from detgroup import Grouper, partition
    from detgroup.export import decoder_settings_path

    ckpt = _checkpoint(tmp_path, "bce", "decoder.pair_bias=4.0", "decoder.neighbors=2")
    out = export_model(ckpt, "torch-export", tmp_path / "model.pt2")
    settings = json.loads(decoder_settings_path(out).read_text())
    assert settings == {"method": "gaec-kl", "consistency": "joint", "pair_bias": 4.0,
                        "neighbors": 2}
    grouper = Grouper.from_checkpoint(ckpt)
    assert grouper.decoder_settings == settings
    program = torch.export.load(str(out)).module()
    rng = np.random.default_rng(0)
    differs = False
    for n, (h, w) in zip((3, 9, 14), ((96, 96), (128, 96), (64, 160)), strict=True):
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        boxes = _boxes(n, h, w, seed=n).numpy()
        expected = grouper.predict(pixels, boxes)
        image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0
        with torch.no_grad():
            class_logits, pair_logits = program(image, torch.from_numpy(boxes))
        categories, groups = partition(pair_logits.numpy(), class_logits.numpy(), boxes=boxes,
                                       **settings)
        np.testing.assert_array_equal(categories, expected.categories)
        np.testing.assert_array_equal(groups, expected.groups)
        wrong = partition(pair_logits.numpy(), class_logits.numpy(), boxes=boxes,
                          **{**settings, "pair_bias": -settings["pair_bias"]})
        differs |= not np.array_equal(wrong[1], expected.groups)
    assert differs  # with other settings the groups are not Grouper's: the test can fail


def test_exported_graphs_cast_float64_boxes_and_refuse_no_boxes(checkpoints: dict[str, Path],
                                                                tmp_path: Path) -> None:
    from detgroup.export import NO_BOXES

    image, boxes = torch.rand(1, 3, 96, 96), _boxes(4, 96, 96, seed=1)
    script = torch.jit.load(str(export_model(checkpoints["bce"], "torchscript",
                                             tmp_path / "m.ts")))
    program = torch.export.load(str(export_model(checkpoints["bce"], "torch-export",
                                                 tmp_path / "m.pt2"))).module()
    with torch.no_grad():
        for a, b in zip(script(image, boxes), script(image, boxes.double()), strict=True):
            torch.testing.assert_close(a, b)
        with pytest.raises(RuntimeError, match="dtype mismatch"):  # refused, with its reason
            program(image, boxes.double())
        for graph in (script, program):
            with pytest.raises((RuntimeError, torch.jit.Error),
                               match=r"no boxes \(N = 0\)") as err:
                graph(image, torch.zeros(0, 4))
            assert NO_BOXES.split(";")[0] in str(err.value)


def test_cli_export_says_how_to_load_and_decode(checkpoints: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model.ts"
    assert main(["export", "--checkpoint", str(checkpoints["bce"]), "--format", "torchscript",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "import torchvision" in text and "torch.jit.load" in text
    assert "model.decoder.json" in text and "partition(" in text


@pytest.mark.parametrize(("fmt", "load"), [("torch-export", "torch.export.load(p).module()"),
                                           ("torchscript", "torch.jit.load(p)")])
def test_exports_load_in_a_fresh_process_after_import_torchvision(
    checkpoints: dict[str, Path], tmp_path: Path, fmt: str, load: str
) -> None:
    """What the README and the export message say: torchvision registers roi_align, so it is
    imported before loading; without it loading fails."""
    import os
    import subprocess
    import sys

    out = export_model(checkpoints["bce"], fmt, tmp_path / "model.bin")
    run = ("import sys, torch{extra}; p = sys.argv[1]; net = " + load + "; print(tuple(net("
           "torch.rand(1, 3, 64, 64), torch.tensor([[1., 2, 30, 40]]))[1].shape))")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    ok = subprocess.run([sys.executable, "-c", run.format(extra=", torchvision"), str(out)],
                        capture_output=True, text=True, timeout=300, env=env)
    assert ok.returncode == 0 and "(1, 1)" in ok.stdout, ok.stderr[-2000:]
    bare = subprocess.run([sys.executable, "-c", run.format(extra=""), str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert bare.returncode != 0 and "roi_align" in bare.stderr


_WORDS = ["Date:", "", "TOTAL", "12/05/98", "Lorillard corp.", "é", "No.", "x", "RE:", "answer"]


def _item_checkpoint(root: Path, name: str, *extra: str, attributes: bool = False) -> Path:
    cfg = tiny_config(root, "model.text.enabled=true", "model.text.buckets=97",
                      "model.text.embed_dim=8", "model.pair_chunk=4", *extra)
    if attributes:
        cfg.attribute_names = ["score", "area"]
    torch.manual_seed(0)
    path = root / f"{name}.pt"
    save_checkpoint(path, {"config": config_to_dict(cfg), "model": build_model(cfg).state_dict()})
    return path


@pytest.fixture(scope="module")
def item_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Text models: pixels + text (sum), and no backbone with text + attributes (concat)."""
    root = tmp_path_factory.mktemp("export_items")
    return {
        "pixels_text": _item_checkpoint(root, "pixels_text"),
        "layout_text_attrs": _item_checkpoint(
            root, "layout_text_attrs", "model.backbone.name=none", "model.fusion=concat",
            "model.attributes.enabled=true", attributes=True),
    }


def _item_inputs(model, n: int, h: int, w: int) -> tuple[torch.Tensor, ...]:
    """The exported graph's inputs for N boxes with texts (and attributes) in an H x W frame."""
    from detgroup.ops.text import encode_texts

    torch.manual_seed(n)
    first = torch.rand(1, 3, h, w) if model.backbone is not None else torch.tensor([h, w])
    encoded = encode_texts([_WORDS[(3 * k) % len(_WORDS)] for k in range(n)])
    inputs = [first, _boxes(n, h, w, seed=n)]
    inputs += [torch.from_numpy(encoded[k]) for k in ("text_hashes", "text_offsets",
                                                      "text_shape")]
    if model.uses_attributes:
        inputs.append(torch.rand(n, 2))
    return tuple(inputs)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("name", ["pixels_text", "layout_text_attrs"])
def test_export_with_texts_matches_eager(item_checkpoints: dict[str, Path], tmp_path: Path,
                                         fmt: str, name: str) -> None:
    from detgroup.export import input_names

    if fmt == "onnx":
        pytest.importorskip("onnx", reason="ONNX export needs the 'export' extra (onnx)")
        ort = pytest.importorskip("onnxruntime", reason="checking ONNX needs the 'export' extra")
    checkpoint = item_checkpoints[name]
    out = export_model(checkpoint, fmt, tmp_path / f"model.{fmt}")
    model, _ = load_model_from_checkpoint(checkpoint)
    names = input_names(model)
    assert names[1:5] == ["boxes", "text_hashes", "text_offsets", "text_shape"]
    for n, h, w in CASES:
        inputs = _item_inputs(model, n, h, w)
        with torch.no_grad():
            expected = [t.numpy() for t in SingleImageNetwork(model)(*inputs)]
        if fmt == "torchscript":
            with torch.no_grad():
                got = [t.numpy() for t in torch.jit.load(str(out))(*inputs)]
        else:
            session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            got = session.run(None, {k: v.numpy() for k, v in zip(names, inputs, strict=True)})
        assert [g.shape for g in got] == [(n, 2), (n, n)]
        for g, e in zip(got, expected, strict=True):
            assert np.abs(g - e).max() <= 1e-4, (name, n, h, w)
    # the texts matter: other texts, other logits
    inputs = list(_item_inputs(model, 5, 64, 64))
    with torch.no_grad():
        base = SingleImageNetwork(model)(*inputs)[0]
        inputs[2] = inputs[2] + 1
        assert not torch.allclose(base, SingleImageNetwork(model)(*inputs)[0])
