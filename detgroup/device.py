"""The ``--device`` of every command: a name checked against the machine before any work."""

from __future__ import annotations

import re

import torch

from detgroup.errors import DetgroupError

DEVICE_HELP = "cpu, cuda or cuda:K (a GPU by index)"


def resolve_device(name: str | torch.device, *, allow_auto: bool = False) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:K`` (and ``auto`` where allowed: CUDA when present) →
    :class:`torch.device`; a misspelt name or a GPU the machine lacks is a DetgroupError."""
    if isinstance(name, torch.device):
        name = str(name)
    text = str(name).strip().lower()
    if allow_auto and text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        choices = ("auto, " if allow_auto else "") + DEVICE_HELP
        raise DetgroupError(f"device {name!r} is not a device name; use {choices}")
    if not torch.cuda.is_available():
        raise DetgroupError(f"device {name!r}: no CUDA device is available on this machine "
                            "(use cpu)")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise DetgroupError(f"device {name!r}: this machine has {count} CUDA device(s) "
                            f"(cuda:0 to cuda:{count - 1})")
    return torch.device(text)
