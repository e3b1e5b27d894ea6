"""Config: defaults, YAML + dotted overrides, and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from detgroup.config import config_from_dict, config_to_dict, load_config
from detgroup.errors import DetgroupError


def test_defaults_then_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("model:\n  dim: 64\ntrain:\n  epochs: 3\n")
    cfg = load_config(path, ["train.epochs=5", "model.relation.layers=0"])
    assert cfg.model.dim == 64
    assert cfg.train.epochs == 5
    assert cfg.model.relation.layers == 0
    assert cfg.data.batch_size == 8  # untouched default


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.dimm=3"], "model.dimm"),
        (["train.epochs=many"], "train.epochs"),
        (["loss.pair=triplet"], "loss.pair must be one of"),
        (["decoder.method=kmeans"], "decoder.method must be one of"),
        (["model.dim=30", "model.relation.heads=4"], "divisible"),
        (["train.epochs"], "not of the form key=value"),
        (["data.scale_jitter=1.5"], "data.scale_jitter must be in"),
        (["data.box_jitter=-0.1"], "data.box_jitter must be in"),
        (["data.box_dropout=1.0"], "data.box_dropout must be in"),
        (["loss.pair_balance=boxes"], "loss.pair_balance must be pairs or groups"),
        (["train.select_by=loss"], "train.select_by must be one of"),
        (["decoder.neighbors=-1"], "decoder.neighbors must be >= 0"),
        (["model.roi_width=-4"], "model.roi_width must be >= 0"),
        (["model.roi_context=-1"], "model.roi_context must be >= 0"),
        (["decoder.neighbors=8", "decoder.method=exact"], "exact decodes every pair"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(DetgroupError, match=message) as err:
        load_config(None, overrides)
    assert "\n" not in str(err.value)


def test_unknown_key_in_yaml_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(DetgroupError, match=r"bad.yaml.*train.epochz"):
        load_config(path)


def test_missing_file() -> None:
    with pytest.raises(DetgroupError, match="config file not found"):
        load_config("no/such.yaml")


def test_dict_round_trip() -> None:
    cfg = load_config(None, ["model.dim=48", "model.relation.heads=4"])
    cfg.category_names = ["a", "b"]
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg


def test_shipped_recipes_load() -> None:
    for path in sorted(Path(__file__).parents[1].glob("configs/*.yaml")):
        load_config(path)


def test_choices_are_refused_by_the_schema_with_their_allowed_values(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  detector:\n    backbone: resnet9000\n")
    with pytest.raises(DetgroupError) as err:
        load_config(path)
    assert str(err.value) == (f"{path}: config: model.detector.backbone must be null or one of "
                              "('resnet50_fpn', 'mobilenet_v3_large_fpn'), got 'resnet9000'")
    data = config_to_dict(load_config())
    data["model"]["fusion"] = "product"  # e.g. a checkpoint written by another version
    with pytest.raises(DetgroupError, match=r"^config: model.fusion must be sum or concat, got "
                                            r"'product'$"):
        config_from_dict(data)


def test_choices_are_checked_without_omegaconf_too() -> None:
    # OmegaConf 2.3 (the detectron2 extra's) cannot read Literal fields; the schema's own check
    # refuses a bad choice with the same message whichever OmegaConf is installed.
    from detgroup.config import _check_choices

    cfg = load_config()
    _check_choices(cfg)
    cfg.decoder.method = "spectral"  # type: ignore[assignment]
    with pytest.raises(DetgroupError, match=r"^config: decoder.method must be one of "
                                            r"\('gaec-kl', 'average', 'components', 'exact'\), "
                                            r"got 'spectral'$"):
        _check_choices(cfg)


def test_config_import_does_not_load_opencv() -> None:
    import subprocess
    import sys

    code = "import detgroup.config, sys; assert 'cv2' not in sys.modules, 'cv2 imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
