"""GroupingFasterRCNN: one torchvision Faster R-CNN that detects, classifies and groups.

The grouping branch sits on the detector's own features: its RoI tokens are pooled from the
detector's FPN maps by the detector's own ``MultiScaleRoIAlign`` (``roi_heads.box_roi_pool``),
then go through the same :class:`~detgroup.model.roi_extractor.RoITokenizer` projection,
:class:`~detgroup.model.relation.RelationEncoder`, category head and pair head as
:class:`~detgroup.model.detector.GroupingModel`, and the same partition decoder reads the
outputs. One backbone pass gives boxes, categories and groups.

Which boxes become tokens:

* training: the truth boxes of each image plus up to ``proposal_tokens`` of the RPN's proposals
  (highest objectness first) whose best truth box overlaps them at IoU >= ``proposal_iou``;
  a proposal takes that truth box's category and group. The detector's own losses are computed
  as torchvision does, on the same forward pass;
* inference with ``boxes``: those boxes (the detector's features, given boxes);
* inference without ``boxes``: the detector's detections (score >= its ``box_score_thresh``,
  per-category NMS, then detections of different categories on one object merged by a
  category-agnostic NMS at ``agnostic_nms_iou``).

The detector resizes every image (``min_size`` / ``max_size``); the grouping branch works in
the resized coordinates, and boxes come back in the caller's pixels.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import mobilenet_v3_large, resnet50
from torchvision.models.detection import (
    FasterRCNN,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import (
    _mobilenet_extractor,
    _resnet_fpn_extractor,
)
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import MultiScaleRoIAlign, box_iou, nms

from detgroup.errors import DetgroupError
from detgroup.model.backbone import read_state_dict
from detgroup.model.heads import CategoryHead
from detgroup.model.relation import RelationEncoder
from detgroup.model.roi_extractor import RoITokenizer
from detgroup.ops.boxes import pairwise_geometry

DETECTION_LOSSES = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
_BUILDERS = {
    "resnet50_fpn": fasterrcnn_resnet50_fpn,
    "mobilenet_v3_large_fpn": fasterrcnn_mobilenet_v3_large_fpn,
}
_PREDICTOR = "roi_heads.box_predictor."
# torchvision's stage indices that give strides 8 / 16 / 32 on a 256 px image (verified by
# tests/test_grouping_rcnn.py): MobileNetV3-Large's stages 2, 3, 5 (outputs of features[4],
# [7], [16]); ResNet-50's layer2, layer3, layer4
SMALL_OBJECT_LAYERS = {"mobilenet_v3_large_fpn": [2, 3, 5], "resnet50_fpn": [2, 3, 4]}
_ASPECT_RATIOS = (0.5, 1.0, 2.0)


def _fpn_backbone(backbone: str, returned_layers: list[int]) -> nn.Module:
    """A randomly initialised, fully trainable (BatchNorm) FPN backbone whose FPN levels
    ``0``, ``1``, ... sit on torchvision's stages ``returned_layers``, plus ``pool``."""
    if backbone == "mobilenet_v3_large_fpn":
        body = mobilenet_v3_large(weights=None, norm_layer=nn.BatchNorm2d)
        return _mobilenet_extractor(body, True, 6, returned_layers=returned_layers)
    return _resnet_fpn_extractor(resnet50(weights=None, norm_layer=nn.BatchNorm2d), 5,
                                 returned_layers=returned_layers)


def build_faster_rcnn(
    *,
    backbone: str,
    num_classes: int,
    min_size: int = 800,
    max_size: int = 1333,
    score_threshold: float = 0.05,
    nms_iou: float = 0.5,
    detections_per_image: int = 100,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_test: int = 1000,
    box_batch_size_per_image: int = 512,
    returned_layers: list[int] | None = None,
    anchor_sizes: list[list[int]] | None = None,
) -> FasterRCNN:
    """A randomly initialised torchvision Faster R-CNN (nothing is downloaded).

    Args:
        backbone: ``resnet50_fpn`` or ``mobilenet_v3_large_fpn``.
        num_classes: C object categories (the detector adds its background class).
        returned_layers: torchvision's stage indices the FPN levels ``0``, ``1``, ... sit on
            (``pool`` is added above the last); None: torchvision's own builder (MobileNet:
            the last two stages, both stride 32; ResNet-50: layer1-4). ``SMALL_OBJECT_LAYERS``
            gives strides 8 / 16 / 32.
        anchor_sizes: anchor sizes (px) per feature map, one list per FPN level plus one for
            ``pool``, each with aspect ratios 0.5 / 1 / 2; None: torchvision's (MobileNet:
            32-512 on every level; ResNet-50: 32, 64, ..., 512, one per level). The RoI heads
            pool from every FPN level but ``pool``.

    Raises:
        DetgroupError: an unknown backbone or stage index, or anchor sizes that do not give
            one list per feature map of equal length.
    """
    if backbone not in _BUILDERS:
        raise DetgroupError(f"unknown detector backbone {backbone!r}; choose one of "
                            f"{sorted(_BUILDERS)}")
    kwargs = dict(
        num_classes=num_classes + 1, min_size=min_size,
        max_size=max_size, box_score_thresh=score_threshold, box_nms_thresh=nms_iou,
        box_detections_per_img=detections_per_image,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        box_batch_size_per_image=box_batch_size_per_image,
    )
    if returned_layers is None and anchor_sizes is None:
        return _BUILDERS[backbone](weights=None, weights_backbone=None, **kwargs)
    stages = 6 if backbone == "mobilenet_v3_large_fpn" else 5
    low = 0 if backbone == "mobilenet_v3_large_fpn" else 1
    if returned_layers is None:
        returned_layers = [stages - 2, stages - 1] if low == 0 else [1, 2, 3, 4]
    if (not returned_layers or sorted(set(returned_layers)) != list(returned_layers)
            or returned_layers[0] < low or returned_layers[-1] >= stages):
        raise DetgroupError(f"model.detector.returned_layers {list(returned_layers)}: must be "
                            f"increasing stage indices in [{low}, {stages - 1}] for {backbone}")
    levels = len(returned_layers) + 1  # the FPN levels and "pool"
    if anchor_sizes is None:
        anchor_sizes = ([[32, 64, 128, 256, 512]] * levels if low == 0
                        else [[32 * 2 ** i] for i in range(levels)])
    if len(anchor_sizes) != levels or len({len(a) for a in anchor_sizes}) != 1 or not all(
            s > 0 for a in anchor_sizes for s in a) or not anchor_sizes[0]:
        raise DetgroupError(
            f"model.detector.anchor_sizes {anchor_sizes}: need {levels} lists (one per FPN "
            f"level of returned_layers {list(returned_layers)}, plus pool) of equal, non-zero "
            f"length of sizes > 0")
    anchors = AnchorGenerator(tuple(tuple(int(s) for s in a) for a in anchor_sizes),
                              (_ASPECT_RATIOS,) * levels)
    pool = MultiScaleRoIAlign([str(i) for i in range(len(returned_layers))], 7, 2)
    return FasterRCNN(_fpn_backbone(backbone, list(returned_layers)),
                      rpn_anchor_generator=anchors, box_roi_pool=pool, **kwargs)


def load_detector_weights(detector: FasterRCNN, path: str | Path, *, backbone: str) -> None:
    """Load a local torchvision Faster R-CNN state dict of ``backbone`` into ``detector``.

    The box predictor is kept as initialised when the file has another number of classes (the
    usual fine-tuning start, e.g. from COCO weights); every other weight must fit.

    Raises:
        DetgroupError: the file is missing, unreadable, not a state dict, or the state dict of
            another architecture (named as such, with the keys that do not fit).
    """
    file = Path(path)
    load_detector_state(detector, read_state_dict(file, "detector weights"), file=file,
                        backbone=backbone)


def load_detector_state(detector: FasterRCNN, state: dict[str, Tensor], *, file: str | Path,
                        backbone: str) -> None:
    """:func:`load_detector_weights` for a state dict already read from ``file``."""
    own = detector.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshapen = [k for k in own if k in state and state[k].shape != own[k].shape
                 and not k.startswith(_PREDICTOR)]
    if missing or unexpected or misshapen:
        example = (missing or unexpected or misshapen)[:2]
        raise DetgroupError(
            f"{file}: not the weights of a torchvision Faster R-CNN {backbone} (wrong "
            f"architecture: {len(missing)} of its {len(own)} keys missing, {len(unexpected)} "
            f"unknown, {len(misshapen)} of another shape; e.g. {example})"
        )
    predictor_fits = all(state[k].shape == v.shape for k, v in own.items()
                         if k.startswith(_PREDICTOR))
    if not predictor_fits:
        state = {k: v for k, v in state.items() if not k.startswith(_PREDICTOR)}
    detector.load_state_dict(state, strict=predictor_fits)


def _pad(rows: list[Tensor], n: int, fill: float | int, width: int | None = None) -> Tensor:
    """Stack per-image tensors [N_b] or [N_b, width] into [B, n] or [B, n, width]."""
    ref = rows[0]
    shape = (len(rows), n) if width is None else (len(rows), n, width)
    out = ref.new_full(shape, fill)
    for b, row in enumerate(rows):
        out[b, : len(row)] = row
    return out


def _pad_boxes(rows: list[Tensor], n: int) -> Tensor:
    """[B, n, 4] boxes; padding rows are a unit box, so RoIAlign stays finite."""
    out = _pad(rows, n, 0.0, 4) if rows else torch.zeros(0, n, 4)
    real = torch.arange(n, device=out.device)[None, :] < torch.tensor(
        [len(r) for r in rows], device=out.device)[:, None]  # [B, n]
    out[..., 2:] = torch.where(real[..., None], out[..., 2:], torch.ones_like(out[..., 2:]))
    return out


class GroupingFasterRCNN(nn.Module):
    """A torchvision ``FasterRCNN`` with a grouping branch on its own FPN features.

    ``forward`` returns the dict of :class:`~detgroup.model.detector.GroupingModel`
    (``pred_logits`` [B, N, C], ``pred_affinity`` [B, N, N], ``pad_mask`` [B, N], ``features``
    [B, N, D] and the pair head's raw output) over the tokens, plus:

    * training: ``token_categories``, ``token_groups`` [B, N] (the labels of the tokens, padding
      -1) and ``detector_losses`` (torchvision's four Faster R-CNN losses);
    * inference: ``pred_boxes`` [B, N, 4] xyxy in the caller's pixels; without given boxes also
      ``pred_scores`` [B, N] (the detector's score) and ``pred_labels`` [B, N] (the detector's
      category index, 0-based).
    """

    def __init__(
        self,
        *,
        detector: FasterRCNN,
        tokenizer: RoITokenizer,
        relation: RelationEncoder,
        category_head: CategoryHead,
        pair_head: nn.Module,
        agnostic_nms_iou: float = 0.7,
        proposal_tokens: int = 32,
        proposal_iou: float = 0.5,
    ) -> None:
        super().__init__()
        self.detector = detector
        self.tokenizer = tokenizer
        self.relation = relation
        self.category_head = category_head
        self.pair_head = pair_head
        self.agnostic_nms_iou = agnostic_nms_iou
        self.proposal_tokens = proposal_tokens
        self.proposal_iou = proposal_iou

    def _group(self, features: dict[str, Tensor], images: ImageList, boxes: Tensor,
               pad_mask: Tensor) -> dict[str, Tensor]:
        """Tokens, relation and heads on boxes [B, N, 4] in the resized images' pixels."""
        sizes = torch.tensor(images.image_sizes, device=boxes.device).reshape(-1, 2)  # [B, 2]
        padded_hw = (int(images.tensors.shape[-2]), int(images.tensors.shape[-1]))
        tokens = self.tokenizer(features, boxes, sizes, padded_hw)  # [B, N, D]
        h = self.relation(tokens, pairwise_geometry(boxes), pad_mask)  # [B, N, D]
        out = {"pred_logits": self.category_head(h), "pad_mask": pad_mask, "features": h}
        out.update(self.pair_head(h, boxes))
        return out

    def _training_tokens(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Truth boxes + matched proposals per image → boxes [B, N, 4], categories, groups
        [B, N] (padding -1) and pad_mask [B, N]."""
        boxes, cats, groups = [], [], []
        for props, target in zip(proposals, targets, strict=True):
            gt = target["boxes"]  # [G, 4] resized px
            keep = props.new_zeros(0, dtype=torch.long)
            best = props.new_zeros(0, dtype=torch.long)
            if len(gt) and len(props) and self.proposal_tokens:
                overlap, match = box_iou(props, gt).max(dim=1)  # [P]
                keep = torch.nonzero(overlap >= self.proposal_iou).flatten()
                keep = keep[: self.proposal_tokens]  # proposals come by decreasing objectness
                best = match[keep]
            boxes.append(torch.cat([gt, props[keep].detach()]))
            cats.append(torch.cat([target["labels"] - 1, target["labels"][best] - 1]))
            groups.append(torch.cat([target["groups"], target["groups"][best]]))
        n = max(len(b) for b in boxes)
        pad_mask = _pad([torch.zeros(len(b), dtype=torch.bool, device=b.device) for b in boxes],
                        n, True)
        return _pad_boxes(boxes, n), _pad(cats, n, -1), _pad(groups, n, -1), pad_mask

    def _merge_categories(self, detection: dict[str, Tensor]) -> dict[str, Tensor]:
        """Keep the best-scored of the detections of different categories on one object."""
        if self.agnostic_nms_iou >= 1.0 or len(detection["boxes"]) == 0:
            return detection
        keep = nms(detection["boxes"], detection["scores"], self.agnostic_nms_iou)
        return {k: v[keep] for k, v in detection.items()}

    def forward(
        self,
        images: Tensor,
        boxes: Tensor | None = None,
        pad_mask: Tensor | None = None,
        image_sizes: Tensor | None = None,
        *,
        categories: Tensor | None = None,
        groups: Tensor | None = None,
        text_hashes: Tensor | None = None,
        text_offsets: Tensor | None = None,
        text_shape: Tensor | None = None,
        attributes: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """
        ``text_hashes``, ``text_offsets``, ``text_shape`` and ``attributes`` are accepted so that
        a batch's ``model_inputs`` can be passed, and not used: the config refuses ``model.text``
        and ``model.attributes`` with ``model.detector``.

        Args:
            images: [B, 3, H, W] RGB in [0, 1], zero-padded bottom/right.
            boxes: [B, N, 4] xyxy absolute pixels: the truth boxes (training), boxes to group
                (inference), or None to group the detector's detections (inference).
            pad_mask: [B, N] bool, True where a box is padding (default: none).
            image_sizes: [B, 2] (H, W) before padding (default: the tensor's size).
            categories, groups: [B, N] int (padding -1), the truth of ``boxes``; training only.
        """
        b = images.shape[0]
        if image_sizes is None:
            image_sizes = torch.tensor([images.shape[-2:]] * b, device=images.device)
        sizes = [(int(h), int(w)) for h, w in image_sizes.tolist()]
        pixels = [images[i, :, :h, :w] for i, (h, w) in enumerate(sizes)]
        if boxes is not None and pad_mask is None:
            pad_mask = torch.zeros(boxes.shape[:2], dtype=torch.bool, device=boxes.device)
        transform = self.detector.transform
        if self.training:
            if boxes is None or categories is None or groups is None:
                raise ValueError("training needs boxes, categories and groups")
            real = ~pad_mask
            targets = [{"boxes": boxes[i][real[i]], "labels": categories[i][real[i]] + 1,
                        "groups": groups[i][real[i]]} for i in range(b)]
            resized, targets = transform(pixels, targets)
            features = self.detector.backbone(resized.tensors)
            proposals, rpn_losses = self.detector.rpn(resized, features, targets)
            _, head_losses = self.detector.roi_heads(features, proposals, resized.image_sizes,
                                                     targets)
            token_boxes, token_cats, token_groups, token_pad = self._training_tokens(
                proposals, targets)
            out = self._group(features, resized, token_boxes, token_pad)
            out.update(token_categories=token_cats, token_groups=token_groups,
                       detector_losses={**rpn_losses, **head_losses})
            return out
        if boxes is not None:  # group the given boxes on the detector's features
            resized, targets = transform(pixels, [{"boxes": boxes[i]} for i in range(b)])
            features = self.detector.backbone(resized.tensors)
            scaled = torch.stack([t["boxes"] for t in targets]) if b else boxes  # [B, N, 4]
            out = self._group(features, resized, scaled, pad_mask)
            out["pred_boxes"] = boxes
            return out
        resized, _ = transform(pixels)
        features = self.detector.backbone(resized.tensors)
        proposals, _ = self.detector.rpn(resized, features)
        detections, _ = self.detector.roi_heads(features, proposals, resized.image_sizes)
        detections = [self._merge_categories(d) for d in detections]
        n = max(len(d["boxes"]) for d in detections)
        pad_mask = _pad([torch.zeros(len(d["boxes"]), dtype=torch.bool, device=images.device)
                         for d in detections], n, True)
        out = self._group(features, resized, _pad_boxes([d["boxes"] for d in detections], n),
                          pad_mask)
        original = transform.postprocess([{"boxes": d["boxes"]} for d in detections],
                                         resized.image_sizes, sizes)
        out["pred_boxes"] = _pad_boxes([d["boxes"] for d in original], n)
        out["pred_scores"] = _pad([d["scores"] for d in detections], n, 0.0)
        out["pred_labels"] = _pad([d["labels"] - 1 for d in detections], n, -1)
        return out


def build_grouping_faster_rcnn(
    *,
    backbone: str,
    num_classes: int,
    dim: int,
    relation: RelationEncoder,
    pair_head: nn.Module,
    weights: str | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    score_threshold: float = 0.5,
    nms_iou: float = 0.5,
    agnostic_nms_iou: float = 0.7,
    detections_per_image: int = 100,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_test: int = 1000,
    box_batch_size_per_image: int = 512,
    proposal_tokens: int = 32,
    proposal_iou: float = 0.5,
    roi_context: float = 0.0,
    returned_layers: list[int] | None = None,
    anchor_sizes: list[list[int]] | None = None,
) -> GroupingFasterRCNN:
    """A :class:`GroupingFasterRCNN` whose tokenizer pools with the detector's own RoIAlign.

    ``relation`` and ``pair_head`` are built by the caller (as for ``GroupingModel``);
    ``weights`` is a local torchvision Faster R-CNN state-dict file of ``backbone``.
    """
    detector = build_faster_rcnn(
        backbone=backbone, num_classes=num_classes, min_size=min_size, max_size=max_size,
        score_threshold=score_threshold, nms_iou=nms_iou,
        detections_per_image=detections_per_image,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        box_batch_size_per_image=box_batch_size_per_image,
        returned_layers=returned_layers, anchor_sizes=anchor_sizes,
    )
    if weights:
        load_detector_weights(detector, weights, backbone=backbone)
    pool = detector.roi_heads.box_roi_pool
    height, width = pool.output_size
    tokenizer = RoITokenizer(
        in_channels=detector.backbone.out_channels, featmap_names=list(pool.featmap_names),
        dim=dim, roi_size=height, roi_width=width, context=roi_context,
        sampling_ratio=pool.sampling_ratio, canonical_scale=pool.canonical_scale,
    )
    tokenizer.pool = pool  # the detector's own MultiScaleRoIAlign (no weights of its own)
    return GroupingFasterRCNN(
        detector=detector, tokenizer=tokenizer, relation=relation,
        category_head=CategoryHead(dim=dim, num_classes=num_classes), pair_head=pair_head,
        agnostic_nms_iou=agnostic_nms_iou, proposal_tokens=proposal_tokens,
        proposal_iou=proposal_iou,
    )
