"""detgroup's grouping heads inside detectron2 (an optional extra).

A detectron2 user keeps their backbone, dataset registry, trainer and evaluators and adds::

    from detgroup.integrations.detectron2 import add_grouping_config
    add_grouping_config(cfg)
    cfg.MODEL.ROI_HEADS.NAME = "GroupingROIHeads"

``GroupingROIHeads`` runs detgroup's relational transformer, category head and pair head (the
modules of :mod:`detgroup.model`) on the pooled box features of the boxes, adds
``loss_group_*`` terms to the loss dict in training, and writes ``pred_groups`` and
``group_scores`` into each image's ``Instances`` at inference (the partition decoder of
:mod:`detgroup.decoder`). ``register_coco_groups_instances`` registers a COCO-with-groups file
(validated by detgroup) and :class:`GroupingDatasetMapper` carries ``group_id`` into
``Instances.gt_groups``; :class:`GroupingEvaluator` scores groups on the detected boxes next to
COCO AP.
"""

try:
    import detectron2  # noqa: F401
except ImportError:
    raise ImportError(
        "detgroup.integrations.detectron2 needs detectron2, which is not installed: pip install "
        "-e '.[detectron2]' ../shared/vendor/detectron2/detectron2-0.6-cp311-cp311-linux_x86_64.whl"
        " (README, 'Inside detectron2')"
    ) from None

from detgroup.integrations.detectron2.backbone import build_mobilenet_v3_fpn_backbone
from detgroup.integrations.detectron2.config import add_grouping_config, grouping_config
from detgroup.integrations.detectron2.data import (
    GroupingDatasetMapper,
    coco_groups_dataset_dicts,
    register_coco_groups_instances,
)
from detgroup.integrations.detectron2.evaluator import GroupingEvaluator
from detgroup.integrations.detectron2.roi_heads import GroupingROIHeads

__all__ = [
    "GroupingDatasetMapper",
    "GroupingEvaluator",
    "GroupingROIHeads",
    "add_grouping_config",
    "build_mobilenet_v3_fpn_backbone",
    "coco_groups_dataset_dicts",
    "grouping_config",
    "register_coco_groups_instances",
]
