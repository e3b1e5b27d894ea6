"""Backbones from torchvision: a small convnet for low-resolution scenes, or ResNet + FPN.

Weights are random by default; a local torchvision state-dict file can be named. Nothing is
ever downloaded.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet18, resnet34, resnet50
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.misc import Conv2dNormActivation, FrozenBatchNorm2d

from detgroup.errors import DetgroupError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4), channels)


class SmallConvNet(nn.Module):
    """A light convnet for low-resolution scenes, with stride-4 and stride-8 outputs.

    Three stride-2 stages; the stride-8 map is added to the stride-4 one after a 1x1
    projection and upsampling (a top-down FPN path without the costly 3x3 output convs).
    Output: ``OrderedDict`` ``{"0": [B, C, H/4, W/4], "1": [B, C, H/8, W/8]}``.
    """

    def __init__(self, *, width: int = 32, out_channels: int = 64) -> None:
        super().__init__()
        self.stem = Conv2dNormActivation(3, width // 2, 3, 2, norm_layer=_gn)  # stride 2
        self.stage2 = nn.Sequential(
            Conv2dNormActivation(width // 2, width, 3, 2, norm_layer=_gn),
            Conv2dNormActivation(width, width, 3, 1, norm_layer=_gn),
        )  # stride 4
        self.stage3 = nn.Sequential(
            Conv2dNormActivation(width, 2 * width, 3, 2, norm_layer=_gn),
            Conv2dNormActivation(2 * width, 2 * width, 3, 1, norm_layer=_gn),
        )  # stride 8
        self.lateral4 = nn.Conv2d(width, out_channels, 1)
        self.lateral8 = nn.Conv2d(2 * width, out_channels, 1)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        c2 = self.stage2(self.stem(x))  # [B, width, H/4, W/4]
        c3 = self.stage3(c2)  # [B, 2 width, H/8, W/8]
        p3 = self.lateral8(c3)  # [B, C, H/8, W/8]
        top_down = F.interpolate(p3, size=c2.shape[-2:], mode="nearest")
        p2 = self.lateral4(c2) + top_down  # [B, C, H/4, W/4]
        return OrderedDict([("0", p2), ("1", p3)])


def read_state_dict(path: str | Path, what: str) -> dict[str, Tensor]:
    """The state dict in a local weights file (a ``{"state_dict": ...}`` or ``{"model": ...}``
    wrapper is unwrapped); loaded with ``weights_only=True`` (no code runs).

    Raises:
        DetgroupError: naming the file and ``what`` it should hold (e.g. "backbone weights"):
            missing, unreadable, or not a mapping of names to tensors.
    """
    file = Path(path)
    if not file.is_file():
        raise DetgroupError(f"{file}: {what} file not found")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt file
        raise DetgroupError(f"{file}: cannot read {what} ({err})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise DetgroupError(f"{file}: not a state dict (a mapping of names to tensors)")
    return state


def _load_state_dict(module: nn.Module, path: str) -> None:
    file = Path(path)
    state = read_state_dict(file, "backbone weights")
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing:
        raise DetgroupError(
            f"{file}: weights do not fit the backbone: {len(missing)} missing keys, e.g. "
            f"{missing[:3]}"
        )


def build_backbone(
    *,
    name: str,
    weights: str | None = None,
    frozen: bool = False,
    width: int = 32,
    out_channels: int = 64,
) -> nn.Module:
    """Build a feature extractor whose output is an ordered dict of maps, finest first.

    ``small``: stride 4 and 8. ``resnet18/34/50``: ResNet + FPN at strides 4, 8, 16, 32, with
    frozen batch norm when weights are given (as in torchvision detection) and group norm when
    trained from scratch. ``weights`` is a torchvision state-dict file of the network
    (ImageNet classification checkpoints fit: their ``fc`` is ignored).
    """
    if name == "small":
        model: nn.Module = SmallConvNet(width=width, out_channels=out_channels)
        if weights:
            _load_state_dict(model, weights)
    elif name in _RESNETS:
        norm = FrozenBatchNorm2d if weights else _gn
        body = _RESNETS[name](weights=None, norm_layer=norm)
        if weights:
            _load_state_dict(body, weights)
        c5 = body.fc.in_features
        in_channels = [c5 // 8, c5 // 4, c5 // 2, c5]
        return_layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
        model = BackboneWithFPN(body, return_layers, in_channels, out_channels)
    else:
        raise DetgroupError(f"unknown backbone {name!r}; choose small or {sorted(_RESNETS)}")
    if frozen:
        trunk = model.body if isinstance(model, BackboneWithFPN) else model
        for pname, p in trunk.named_parameters():
            if not pname.startswith("fpn."):
                p.requires_grad_(False)
    return model
