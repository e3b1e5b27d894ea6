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


def image_extents(x: Tensor) -> tuple[Tensor, Tensor]:
    """Height and width [B, 1] of each image of a padded batch ``x`` [B, C, H, W]: up to its
    last row / column that is non-zero in some channel (the padding of
    :meth:`GroupingModel.normalised` is zero; a real pixel of an 8-bit image is never exactly the
    ImageNet mean in all three channels, so never zero after normalisation)."""
    h, w = x.shape[-2:]
    nonzero = (x != 0).any(1)  # [B, H, W]
    rows = nonzero.any(2).to(x.dtype) * torch.arange(1, h + 1, device=x.device, dtype=x.dtype)
    cols = nonzero.any(1).to(x.dtype) * torch.arange(1, w + 1, device=x.device, dtype=x.dtype)
    return rows.amax(1, keepdim=True), cols.amax(1, keepdim=True)


def level_mask(feature: Tensor, height: Tensor, width: Tensor, stride: int) -> Tensor:
    """[B, 1, h, w] 1.0 where a cell of the stride-``stride`` map ``feature`` [B, C, h, w]
    lies inside its image (cell i covers pixel i * stride), else 0.0."""
    h, w = feature.shape[-2:]
    r = (torch.arange(h, device=feature.device, dtype=height.dtype) * stride)[None] < height
    c = (torch.arange(w, device=feature.device, dtype=width.dtype) * stride)[None] < width
    return (r[:, None, :, None] & c[:, None, None, :]).to(feature.dtype)


def masked_group_norm(x: Tensor, mask: Tensor, norm: nn.GroupNorm) -> Tensor:
    """``norm`` (an ``nn.GroupNorm``) of ``x`` [B, C, H, W] with statistics that count only the
    positions where ``mask`` [B, 1, H, W] is 1 (equal to ``norm(x)`` when the mask is all ones)."""
    groups, eps = norm.num_groups, norm.eps
    b, ch, h, w = x.shape
    # statistics in float32 whatever autocast gives (a float16 sum over a map overflows)
    xg = x.float().reshape(b, groups, ch // groups, h, w)
    m = mask.float().reshape(b, 1, 1, h, w)
    count = (m.sum((2, 3, 4), keepdim=True) * (ch // groups)).clamp(min=1.0)  # [B, G, 1, 1, 1]
    mean = (xg * m).sum((2, 3, 4), keepdim=True) / count
    var = (((xg - mean) ** 2) * m).sum((2, 3, 4), keepdim=True) / count
    y = ((xg - mean) / torch.sqrt(var + eps)).reshape(b, ch, h, w)
    return (y * norm.weight.float()[None, :, None, None]
            + norm.bias.float()[None, :, None, None]).to(x.dtype)


def masked_conv_block(block: nn.Module, x: Tensor, height: Tensor, width: Tensor, stride: int
                      ) -> tuple[Tensor, Tensor]:
    """One ``Conv2dNormActivation`` (conv, group norm, ReLU) of a padded batch, its norm's
    statistics inside each image (:func:`masked_group_norm`) and its output zero outside them.

    Args:
        x: [B, C, H, W]; height, width: [B, 1] px of each image (:func:`image_extents`);
        stride: of the block's output relative to the image.

    Returns:
        the output [B, C', H', W'] and its mask [B, 1, H', W'].
    """
    x = block[0](x)
    mask = level_mask(x, height, width, stride)
    return F.relu(masked_group_norm(x, mask, block[1])) * mask, mask


class SmallConvNet(nn.Module):
    """A light convnet for low-resolution scenes, with stride-4 and stride-8 outputs.

    Three stride-2 stages; the stride-8 map is added to the stride-4 one after a 1x1
    projection and upsampling (a top-down FPN path without the costly 3x3 output convs).
    Output: ``OrderedDict`` ``{"0": [B, C, H/4, W/4], "1": [B, C, H/8, W/8]}``.

    Padding-invariant: the group norms take their statistics inside each image only
    (:func:`image_extents`) and every activation outside it is zeroed, so an image's maps are
    those it gets alone (up to float rounding), whatever it is batched with.
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
        height, width = image_extents(x)  # [B, 1] each: where each image is
        x, _ = masked_conv_block(self.stem, x, height, width, 2)  # [B, width / 2, H/2, W/2]
        x, _ = masked_conv_block(self.stage2[0], x, height, width, 4)
        c2, m2 = masked_conv_block(self.stage2[1], x, height, width, 4)  # [B, width, H/4, W/4]
        x, _ = masked_conv_block(self.stage3[0], c2, height, width, 8)
        c3, m3 = masked_conv_block(self.stage3[1], x, height, width, 8)  # [B, 2 width, H/8, W/8]
        p3 = self.lateral8(c3) * m3  # [B, C, H/8, W/8]
        # nearest x2: cell (i, j) of the stride-4 map reads (i // 2, j // 2) whatever the size
        rows = torch.arange(c2.shape[-2], device=c2.device) // 2
        cols = torch.arange(c2.shape[-1], device=c2.device) // 2
        top_down = p3.index_select(-2, rows).index_select(-1, cols)  # [B, C, H/4, W/4]
        p2 = (self.lateral4(c2) + top_down) * m2  # [B, C, H/4, W/4]
        return OrderedDict([("0", p2), ("1", p3)])


def _halved(n: int, times: int) -> int:
    """Side of a map after ``times`` stride-2 steps of ``ceil(n / 2)`` (3x3 / 7x7 convs with
    padding, ResNet's max pool, FPN's last-level pool)."""
    for _ in range(times):
        n = -(-n // 2)
    return n


def backbone_features(backbone: nn.Module, x: Tensor, image_sizes: Tensor
                      ) -> OrderedDict[str, Tensor]:
    """``backbone(x)`` for a padded batch ``x`` [B, 3, H, W] whose images are ``image_sizes``
    [B, 2] (h, w) px, so that each image gets the maps it gets alone.

    A backbone built with ``per_image = True`` (ResNet + FPN with group norm, trained from
    scratch: torchvision's ``nn.GroupNorm`` takes its statistics over the whole padded map) runs
    on each image at its own size, and each level is zero-padded to the batch's size (level
    ``k`` of ``"0".."3"``: ``k + 2`` halvings; ``"pool"``: 6). Every other backbone (frozen
    batch norm, or the masked group norms of :class:`SmallConvNet`) runs batched. A traced or
    exported graph runs batched too (its images are not padded).
    """
    if (not getattr(backbone, "per_image", False) or torch.jit.is_tracing()
            or torch.jit.is_scripting() or torch.compiler.is_compiling()):
        return backbone(x)
    sizes = image_sizes.tolist()
    if all(h == x.shape[-2] and w == x.shape[-1] for h, w in sizes):
        return backbone(x)
    maps = [backbone(x[i:i + 1, :, :int(h), :int(w)]) for i, (h, w) in enumerate(sizes)]
    out: OrderedDict[str, Tensor] = OrderedDict()
    for name in maps[0]:
        times = 6 if name == "pool" else int(name) + 2  # level "k": stride 2 ** (k + 2)
        th, tw = _halved(x.shape[-2], times), _halved(x.shape[-1], times)
        out[name] = torch.cat([F.pad(m[name], (0, tw - m[name].shape[-1],
                                               0, th - m[name].shape[-2])) for m in maps])
    return out  # each [B, C, H_k, W_k]


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
        model.per_image = not weights  # group norm over the padded batch: backbone_features
    else:
        raise DetgroupError(f"unknown backbone {name!r}; choose small or {sorted(_RESNETS)}")
    if frozen:
        trunk = model.body if isinstance(model, BackboneWithFPN) else model
        for pname, p in trunk.named_parameters():
            if not pname.startswith("fpn."):
                p.requires_grad_(False)
    return model
