"""Checkpoints: written atomically, read with a clear error when corrupt or foreign.

A checkpoint is a dict saved with ``torch.save``: ``format`` (this module's tag), ``config``
(the resolved config as a plain dict; it travels with the weights), ``model`` (state dict) and,
for training checkpoints, ``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``step``,
``batch_in_epoch``, ``rng`` and ``best``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detgroup.atomic import atomic_write_bytes
from detgroup.config import Config, PairPriorConfig, config_from_dict, reads_attributes
from detgroup.errors import DetgroupError
from detgroup.model.detector import build_model

FORMAT = "detgroup-checkpoint-v1"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip container
_PICKLE_PROTO = b"\x80"  # the legacy (non-zip) torch.save format starts with a pickle opcode


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Serialise ``state`` (plus the format tag) and write it atomically to ``path``."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU; a missing, truncated or foreign file is a DetgroupError."""
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise DetgroupError(f"{path}: is a folder, not a checkpoint file")
        raise DetgroupError(f"{path}: checkpoint file not found")
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as err:
        raise DetgroupError(f"{path}: cannot read checkpoint ({err.strerror or err})") from None
    if not head:
        raise DetgroupError(f"{path}: checkpoint file is empty")
    if head != _ZIP_MAGIC and head[:1] != _PICKLE_PROTO:
        raise DetgroupError(
            f"{path}: not a readable checkpoint (not a file written by torch.save: it starts "
            f"with {head!r}); give the model.pt or last.pt of a run"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt data
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise DetgroupError(
            f"{path}: not a readable checkpoint (corrupt, truncated or not detgroup's: {reason})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DetgroupError(f"{path}: not a detgroup checkpoint (no '{FORMAT}' tag)")
    return state


def checkpoint_config(state: dict[str, Any], path: str | Path) -> Config:
    """The config stored in a checkpoint."""
    try:
        return config_from_dict(state["config"])
    except (KeyError, DetgroupError) as err:
        raise DetgroupError(f"{path}: checkpoint config is unusable ({err})") from None


def load_model_weights(model: nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """Load ``state['model']`` into ``model``; a shape or key mismatch names the file."""
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else repr(err)
        raise DetgroupError(f"{path}: weights do not fit the model of its config ({first})") \
            from None


def load_model_from_checkpoint(path: str | Path, *, pair_prior: PairPriorConfig | None = None,
                               attribute_names: list[str] | None = None,
                               source: str | Path | None = None) -> tuple[nn.Module, Config]:
    """Model (eval mode, CPU) and its config from any detgroup checkpoint.

    ``pair_prior``: replaces the checkpoint's ``model.pair_prior`` (it has no weights, so any
    checkpoint takes any prior at inference: e.g. HOG cosine on a model trained without it, or
    ``kind none`` to see a trained model's residual alone). A prior on the pair logits needs a
    model trained with ``loss.pair = bce`` (logits of a same-group probability). When such a
    prior reads attributes and the checkpoint names none, ``attribute_names`` (those of
    ``source``, the data the boxes come from) name them."""
    return model_from_checkpoint_state(load_checkpoint(path), path, pair_prior=pair_prior,
                                       attribute_names=attribute_names, source=source)


def model_from_checkpoint_state(state: dict[str, Any], path: str | Path, *,
                                pair_prior: PairPriorConfig | None = None,
                                attribute_names: list[str] | None = None,
                                source: str | Path | None = None) -> tuple[nn.Module, Config]:
    """:func:`load_model_from_checkpoint` on a :func:`load_checkpoint` result (read from
    ``path``)."""
    cfg = checkpoint_config(state, path)
    if pair_prior is not None:
        if pair_prior.kind != "none" and cfg.loss.pair != "bce":
            raise DetgroupError(f"{path}: a pair prior adds to pair logits of a model trained "
                                f"with loss.pair = bce; this one has {cfg.loss.pair}")
        cfg.model.pair_prior = pair_prior
        if reads_attributes(cfg) and not cfg.attribute_names:
            if not attribute_names:
                where = f"{source}: " if source is not None else ""
                raise DetgroupError(f"{where}the pair prior {pair_prior.kind} reads box "
                                    f"attributes; {path} names none and neither do the boxes "
                                    "(no attribute_names)")
            cfg.attribute_names = list(attribute_names)
    model = build_model(cfg, pretrained=False)  # the checkpoint's weights replace them
    load_model_weights(model, state, path)
    return model.eval(), cfg
