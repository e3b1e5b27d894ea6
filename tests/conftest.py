"""Shared fixtures: a tiny synthetic dataset and a tiny model config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detgroup.config import Config, load_config
from detgroup.data.synth import SynthConfig, generate_synthetic

TINY_MODEL = [
    "model.dim=32",
    "model.relation.layers=2",
    "model.relation.heads=4",
    "model.pair_hidden=32",
    "model.backbone.width=16",
    "model.backbone.out_channels=16",
    "data.batch_size=4",
    "train.epochs=2",
    "train.warmup_steps=2",
    "train.threads=1",
]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 train + 4 val synthetic 128 px images."""
    out = tmp_path_factory.mktemp("synth")
    generate_synthetic(out, SynthConfig(image_size=128, num_train=12, num_val=4, seed=3))
    return out


def tiny_config(data: Path, *extra: str) -> Config:
    cfg = load_config(
        None,
        [
            *TINY_MODEL,
            f"data.train_ann={data / 'train/annotations.json'}",
            f"data.train_images={data / 'train/images'}",
            f"data.val_ann={data / 'val/annotations.json'}",
            f"data.val_images={data / 'val/images'}",
            *extra,
        ],
    )
    cfg.category_names = ["cat", "dog"]
    return cfg


@pytest.fixture
def tiny_cfg(tiny_data: Path) -> Config:
    return tiny_config(tiny_data)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained for one epoch on the tiny set (weights are near random; the plumbing is
    what the tests check)."""
    from detgroup.engine.train import train

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    train(tiny_config(tiny_data, "train.epochs=1"), out_dir=out, progress=False)
    return out / "model.pt"
