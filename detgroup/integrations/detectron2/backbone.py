"""torchvision's MobileNetV3-Large FPN as a detectron2 ``Backbone``.

The backbone of detgroup's torchvision model (``model.detector.backbone:
mobilenet_v3_large_fpn``, randomly initialised, every layer trainable, BatchNorm), behind
detectron2's interface, so that a detectron2 model and a ``GroupingFasterRCNN`` of equal size
can be compared, and so that tests have a small backbone. Select it with
``cfg.MODEL.BACKBONE.NAME = "build_mobilenet_v3_fpn_backbone"``. Its outputs keep torchvision's
names: ``0``, ``1``, ... (FPN levels on the MobileNet stages ``cfg.MODEL.MOBILENET_FPN.
RETURNED_LAYERS``, torchvision's stage indices as ``model.detector.returned_layers``) and
``pool`` (max-pooled above the last), ``cfg.MODEL.FPN.OUT_CHANNELS`` channels each.

* ``RETURNED_LAYERS: []`` (the default): torchvision's choice, the last two stages, ``0`` and
  ``1`` both at stride 32 (``pool`` 64). torchvision's ``MultiScaleRoIAlign`` pools every box
  from ``0`` (its two levels share one scale), so the matching detectron2 setting is
  ``ROI_HEADS.IN_FEATURES: ["0"]``;
* ``RETURNED_LAYERS: [2, 3, 5]``: strides 8 / 16 / 32 (``pool`` 64), for small objects (as
  ``configs/synth_detector.yaml``); ``ROI_HEADS.IN_FEATURES: ["0", "1", "2"]`` then matches
  torchvision's pooling from every FPN level.

Nothing is downloaded.
"""

from __future__ import annotations

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import mobilenet_backbone


class TorchvisionFPNBackbone(Backbone):
    """A torchvision ``BackboneWithFPN`` (dict of maps) as a detectron2 ``Backbone``.

    Strides are read from one forward pass of a 256 x 256 image at construction.
    """

    def __init__(self, *, body: nn.Module, size_divisibility: int = 32) -> None:
        super().__init__()
        self.body = body
        self._size_divisibility = size_divisibility
        was_training = body.training
        body.eval()
        with torch.no_grad():
            probe = body(torch.zeros(1, 3, 256, 256))
        body.train(was_training)
        self._out_features = list(probe)
        self._out_feature_strides = {k: 256 // v.shape[-1] for k, v in probe.items()}
        self._out_feature_channels = {k: v.shape[1] for k, v in probe.items()}

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x [B, 3, H, W] normalised → {name: [B, C, H / stride, W / stride]}."""
        return dict(self.body(x))

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {name: ShapeSpec(channels=self._out_feature_channels[name],
                                stride=self._out_feature_strides[name])
                for name in self._out_features}


@BACKBONE_REGISTRY.register()
def build_mobilenet_v3_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """MobileNetV3-Large + FPN (``cfg.MODEL.FPN.OUT_CHANNELS``), random init, all trainable."""
    del input_shape  # RGB, as torchvision's MobileNetV3 expects
    node = cfg.MODEL.get("MOBILENET_FPN")
    layers = list(node.RETURNED_LAYERS) if node is not None else []
    if not layers and cfg.MODEL.FPN.OUT_CHANNELS == 256:
        body = mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=None, fpn=True,
                                  norm_layer=nn.BatchNorm2d, trainable_layers=6)
    else:
        body = _with_fpn_channels(cfg.MODEL.FPN.OUT_CHANNELS, layers)
    return TorchvisionFPNBackbone(body=body)


def _with_fpn_channels(channels: int, layers: list[int]) -> nn.Module:
    """The same MobileNetV3-Large FPN with ``channels`` FPN channels (e.g. small for tests) on
    torchvision's stages ``layers`` (empty: the last two, torchvision's choice)."""
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    from detgroup.errors import DetgroupError

    features = mobilenet_v3_large(weights=None, norm_layer=nn.BatchNorm2d).features
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)]
    stages.append(len(features) - 1)
    if not layers:
        layers = [len(stages) - 2, len(stages) - 1]
    if sorted(set(layers)) != list(layers) or layers[0] < 0 or layers[-1] >= len(stages):
        raise DetgroupError(f"cfg.MODEL.MOBILENET_FPN.RETURNED_LAYERS {list(layers)}: must be "
                            f"increasing stage indices in [0, {len(stages) - 1}]")
    returned = [stages[k] for k in layers]  # the block whose output each FPN level reads
    in_channels = [features[i].out_channels for i in returned]
    return BackboneWithFPN(features, {str(i): str(k) for k, i in enumerate(returned)},
                           in_channels, channels, extra_blocks=LastLevelMaxPool())
