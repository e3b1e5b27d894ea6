"""COCO with groups in detectron2's dataset registry, and a mapper that keeps the groups.

``register_coco_groups_instances(name, json_file, image_root)`` reads and validates the file
with detgroup's own validator when it is called (a group that spans two categories, an unknown
id, a bad box: one :class:`~detgroup.errors.DetgroupError` naming the file and the ids, before
any detectron2 code sees the data), then registers the detectron2 dataset dicts and the metadata
(``thing_classes``, ``thing_dataset_id_to_contiguous_id``, ``json_file``, ``image_root``,
``evaluator_type = "coco_groups"``).

Each annotation of a dataset dict carries ``group_id``: the box's group as a dense index within
its image (an annotation without ``group_id`` is a group of its own), or -1 where the file says
``group_id: -1`` (group unknown). :class:`GroupingDatasetMapper` is detectron2's
``DatasetMapper`` that also writes ``Instances.gt_groups`` (int64 [R]); it is set before
detectron2 drops the boxes that augmentations emptied, so ``gt_groups`` stays aligned with
``gt_boxes`` and ``gt_classes``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.structures import BoxMode

from detgroup.data.coco_groups import CocoGroups, load_coco_groups


def coco_groups_dataset_dicts(coco: CocoGroups, image_root: str | Path) -> list[dict[str, Any]]:
    """detectron2 dataset dicts of a validated COCO-with-groups file (one per image, by id).

    ``category_id`` is the contiguous class index (categories sorted by COCO id), ``bbox`` is
    ``[x, y, w, h]`` absolute pixels (``BoxMode.XYWH_ABS``), ``group_id`` as the module
    docstring says, ``ann_id`` the annotation's id.
    """
    root = Path(image_root)
    records = []
    for info in coco.images:
        target = coco.targets(info["id"])
        anns = coco.anns_by_image.get(info["id"], [])
        annotations = []
        for k, ann in enumerate(anns):
            group = int(target["groups"][k]) if target["group_known"][k] else -1
            annotations.append({
                "bbox": [float(v) for v in ann["bbox"]], "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": int(target["categories"][k]), "group_id": group,
                "iscrowd": int(ann.get("iscrowd", 0)), "ann_id": int(ann["id"]),
            })
        records.append({"file_name": str(root / info["file_name"]), "image_id": int(info["id"]),
                        "height": int(info["height"]), "width": int(info["width"]),
                        "annotations": annotations})
    return records


def register_coco_groups_instances(name: str, json_file: str | Path, image_root: str | Path,
                                   *, check_images: bool = False) -> CocoGroups:
    """Validate a COCO-with-groups file now and register it as detectron2 dataset ``name``.

    Args:
        name: the dataset's name in ``DatasetCatalog`` / ``MetadataCatalog``.
        json_file: the COCO-with-groups annotations.
        image_root: the folder the ``file_name`` entries are relative to.
        check_images: also decode every image and check its size (slower).

    Returns:
        The validated file.

    Raises:
        DetgroupError: every problem of the file (detgroup's validator), naming file and ids.
    """
    coco = load_coco_groups(json_file, images_dir=image_root if check_images else None)
    DatasetCatalog.register(name, lambda: coco_groups_dataset_dicts(coco, image_root))
    MetadataCatalog.get(name).set(
        thing_classes=coco.category_names,
        thing_dataset_id_to_contiguous_id={cid: k for k, cid in enumerate(coco.category_ids)},
        json_file=str(json_file), image_root=str(image_root), evaluator_type="coco_groups",
    )
    return coco


class GroupingDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` that also fills ``Instances.gt_groups`` (int64 [R], -1 for
    an unknown group) from the annotations' ``group_id``."""

    def _transform_annotations(self, dataset_dict: dict[str, Any], transforms: Any,
                               image_shape: tuple[int, int]) -> None:
        # DatasetMapper's own steps, with gt_groups set before the empty boxes are dropped
        for anno in dataset_dict["annotations"]:
            if not self.use_instance_mask:
                anno.pop("segmentation", None)
            if not self.use_keypoint:
                anno.pop("keypoints", None)
        annos = [
            utils.transform_instance_annotations(
                obj, transforms, image_shape, keypoint_hflip_indices=self.keypoint_hflip_indices
            )
            for obj in dataset_dict.pop("annotations")
            if obj.get("iscrowd", 0) == 0
        ]
        instances = utils.annotations_to_instances(annos, image_shape,
                                                   mask_format=self.instance_mask_format)
        instances.gt_groups = torch.tensor([int(a.get("group_id", -1)) for a in annos],
                                           dtype=torch.int64)
        if self.recompute_boxes:
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
