"""The box source ``detgroup infer --detector``: a torchvision Faster R-CNN whose weights the
user gives as a local file (never downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from detgroup.errors import DetgroupError
from detgroup.model.backbone import read_state_dict
from detgroup.model.grouping_rcnn import load_detector_state

_CLS_SCORE = "roi_heads.box_predictor.cls_score.weight"


class BoxDetector:
    """Boxes of an image from a torchvision Faster R-CNN ``arch`` (a name in
    ``torchvision.models.detection``) with the weights file ``weights``, as many classes as the
    file has; kept: score >= ``score`` and, when given, a label in ``classes``."""

    def __init__(self, weights: Path, *, arch: str, score: float, classes: list[int] | None,
                 device: str) -> None:
        from torchvision.models import detection

        state = read_state_dict(weights, "detector weights")
        if _CLS_SCORE not in state:
            raise DetgroupError(f"{weights}: not a torchvision Faster R-CNN state dict")
        ctor = getattr(detection, arch)
        model = ctor(weights=None, weights_backbone=None, num_classes=state[_CLS_SCORE].shape[0])
        load_detector_state(model, state, file=weights, backbone=arch.removeprefix("fasterrcnn_"))
        self.model = model.eval().to(device)
        self.device = device
        self.score = score
        self.classes = set(classes) if classes else None

    @torch.no_grad()
    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """pixels [H, W, 3] uint8 RGB → kept boxes [N, 4] xyxy px."""
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255).to(self.device)
        det = self.model([tensor])[0]
        keep = det["scores"] >= self.score
        if self.classes is not None:
            keep &= torch.tensor([int(c) in self.classes for c in det["labels"]], dtype=torch.bool,
                                 device=keep.device)
        return det["boxes"][keep].cpu().numpy()
