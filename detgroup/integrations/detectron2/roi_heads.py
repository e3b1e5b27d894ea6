"""``GroupingROIHeads``: detectron2's ``StandardROIHeads`` plus detgroup's grouping heads.

Which boxes become tokens of the relational transformer (one image = one set):

* training: the image's truth boxes (``MODEL.GROUPING.TRAIN_ON_GT``) and up to
  ``PROPOSAL_TOKENS`` of the proposals that ``label_and_sample_proposals`` sampled as
  foreground, each labelled with the category and ``gt_groups`` entry of its matched truth
  box; background proposals are never tokens, so they take no part in the group losses. A truth
  box of unknown group (``gt_groups`` -1) keeps its category loss and leaves the pair loss;
* inference: the final detections of the box predictor (score threshold, per-category NMS),
  after a category-agnostic NMS at ``AGNOSTIC_NMS_IOU``.

Tokens are pooled by the heads' own ``box_pooler`` (detectron2's ``ROIPooler``) and go through
detgroup's :class:`~detgroup.model.roi_extractor.RoITokenizer` projection,
:class:`~detgroup.model.relation.RelationEncoder`, category head and pair head, built by
detgroup's own factories from ``MODEL.GROUPING``. The decoder (:mod:`detgroup.decoder`) turns the
logits into one category and one group per detection: ``pred_classes`` becomes the decoded
category (groups hold one category each, so ``pred_groups`` is numbered within
``pred_classes``), ``scores`` the detector's score times that category's probability; the
detector's own class and score stay in ``det_classes`` and ``det_scores``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes, ImageList, Instances
from scipy.special import log_softmax
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import nms

from detgroup.decoder import decode_on_neighbors
from detgroup.integrations.detectron2.config import grouping_config
from detgroup.losses import GroupCriterion, build_criterion
from detgroup.model.detector import build_pair_head, build_relation
from detgroup.model.heads import CategoryHead
from detgroup.model.relation import RelationEncoder
from detgroup.model.roi_extractor import RoITokenizer
from detgroup.ops.boxes import pairwise_geometry


class PoolerAsMultiScaleRoIAlign(nn.Module):
    """detectron2's ``ROIPooler`` called as torchvision's ``MultiScaleRoIAlign`` is (what
    :class:`RoITokenizer` calls): (features dict, list of [N_b, 4] xyxy boxes, image shapes) →
    [sum N_b, C, h, w]. Holds no weights."""

    def __init__(self, *, pooler: ROIPooler, in_features: list[str]) -> None:
        super().__init__()
        self.pooler = pooler
        self.in_features = list(in_features)

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
        del image_shapes  # the pooler's scales are fixed by the backbone's strides
        return self.pooler([features[f] for f in self.in_features], [Boxes(b) for b in boxes])


def pad_boxes(boxes: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-image boxes [N_b, 4] → boxes [B, N, 4] and pad_mask [B, N] (True: padding).

    Padding rows are the unit box (0, 0, 1, 1), so that pooling and geometry stay finite.
    """
    sizes = torch.tensor([len(b) for b in boxes], device=boxes[0].device)
    padded = pad_sequence(boxes, batch_first=True)  # [B, N, 4]
    pad_mask = torch.arange(padded.shape[1], device=padded.device)[None] >= sizes[:, None]
    unit = padded.new_tensor([0.0, 0.0, 1.0, 1.0])
    return torch.where(pad_mask[..., None], unit, padded), pad_mask


def _pad_labels(labels: list[Tensor]) -> Tensor:
    """Per-image int labels [N_b] → [B, N], padding -1."""
    return pad_sequence(labels, batch_first=True, padding_value=-1)


@ROI_HEADS_REGISTRY.register()
class GroupingROIHeads(StandardROIHeads):
    """``StandardROIHeads`` whose boxes also get a category and a group (module docstring).

    Training adds ``loss_group_cls`` and ``loss_group_pair`` (weighted by
    ``MODEL.GROUPING.CLS_WEIGHT`` / ``PAIR_WEIGHT``) to the loss dict. Inference adds to each
    image's ``Instances``: ``pred_groups`` int64 [R] (group id, numbered from 0 within each
    ``pred_classes``), ``group_scores`` float [R] (the confidence of the instance's group),
    ``det_classes`` / ``det_scores`` (the box predictor's own), with ``pred_classes`` and
    ``scores`` as decoded.
    """

    @configurable
    def __init__(
        self,
        *,
        tokenizer: RoITokenizer,
        relation: RelationEncoder,
        category_head: CategoryHead,
        pair_head: nn.Module,
        criterion: GroupCriterion,
        decoder: dict[str, Any],
        train_on_gt: bool = True,
        proposal_tokens: int = 32,
        agnostic_nms_iou: float = 0.7,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            tokenizer, relation, category_head, pair_head: detgroup's modules; the tokenizer's
                ``pool`` is the heads' ``box_pooler`` behind :class:`PoolerAsMultiScaleRoIAlign`.
            criterion: detgroup's :class:`GroupCriterion` (its weight dict weighs the losses).
            decoder: keyword arguments of :func:`detgroup.decoder.decode_on_neighbors`
                (``method``, ``consistency``, ``neighbors``) plus ``pair_bias``.
            train_on_gt, proposal_tokens, agnostic_nms_iou: ``MODEL.GROUPING`` (config.py).
            kwargs: those of ``StandardROIHeads``.
        """
        super().__init__(**kwargs)
        self.group_tokenizer = tokenizer
        self.group_relation = relation
        self.group_category_head = category_head
        self.group_pair_head = pair_head
        self.group_criterion = criterion
        self.decoder = dict(decoder)
        self.pair_bias = float(self.decoder.pop("pair_bias", 0.0))
        self.train_on_gt = train_on_gt
        self.proposal_tokens = proposal_tokens
        self.agnostic_nms_iou = agnostic_nms_iou

    @classmethod
    def from_config(cls, cfg, input_shape) -> dict[str, Any]:
        ret = super().from_config(cfg, input_shape)
        dg = grouping_config(cfg)
        in_features = ret["box_in_features"]
        channels = input_shape[in_features[0]].channels
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        tokenizer = RoITokenizer(in_channels=channels, featmap_names=list(in_features),
                                 dim=dg.model.dim, roi_size=resolution,
                                 context=dg.model.roi_context)
        tokenizer.pool = PoolerAsMultiScaleRoIAlign(pooler=ret["box_pooler"],
                                                    in_features=in_features)
        num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        g = cfg.MODEL.GROUPING
        ret.update(
            tokenizer=tokenizer,
            relation=build_relation(dg),
            category_head=CategoryHead(dim=dg.model.dim, num_classes=num_classes),
            pair_head=build_pair_head(dg),
            criterion=build_criterion(dg),
            decoder={"method": dg.decoder.method, "consistency": dg.decoder.consistency,
                     "neighbors": dg.decoder.neighbors, "pair_bias": dg.decoder.pair_bias},
            train_on_gt=g.TRAIN_ON_GT,
            proposal_tokens=g.PROPOSAL_TOKENS,
            agnostic_nms_iou=g.AGNOSTIC_NMS_IOU,
        )
        return ret

    def group_outputs(self, features: dict[str, Tensor], boxes: list[Tensor],
                      image_sizes: list[tuple[int, int]]) -> dict[str, Tensor]:
        """detgroup's model dict on per-image boxes [N_b, 4] xyxy (network-input pixels):
        ``pred_logits`` [B, N, C], ``pred_affinity`` [B, N, N], ``pad_mask`` [B, N], ``boxes``
        [B, N, 4] (padded), and the pair head's raw output."""
        padded, pad_mask = pad_boxes(boxes)
        sizes = torch.tensor(image_sizes, device=padded.device).reshape(-1, 2)  # [B, 2] (H, W)
        tokens = self.group_tokenizer(features, padded, sizes, (0, 0))  # [B, N, D]
        h = self.group_relation(tokens, pairwise_geometry(padded), pad_mask)  # [B, N, D]
        out = {"pred_logits": self.group_category_head(h), "pad_mask": pad_mask,
               "boxes": padded}
        out.update(self.group_pair_head(h, padded))
        return out

    def _training_tokens(self, proposals: list[Instances], targets: list[Instances]
                         ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per image: token boxes [N_b, 4], categories [N_b], groups [N_b] (-1: unknown)."""
        boxes, cats, groups = [], [], []
        for props, target in zip(proposals, targets, strict=True):
            fg = torch.nonzero(props.gt_classes < self.num_classes).flatten()
            fg = fg[: self.proposal_tokens]
            b, c = [props.proposal_boxes.tensor[fg].detach()], [props.gt_classes[fg]]
            if len(fg) and not props.has("gt_groups"):
                raise ValueError("GroupingROIHeads needs Instances.gt_groups in training: map "
                                 "the data with GroupingDatasetMapper")
            g = [props.gt_groups[fg]] if len(fg) else [fg.new_zeros(0)]
            if self.train_on_gt and len(target):
                if not target.has("gt_groups"):
                    raise ValueError("GroupingROIHeads needs Instances.gt_groups in training: "
                                     "map the data with GroupingDatasetMapper")
                b.append(target.gt_boxes.tensor)
                c.append(target.gt_classes)
                g.append(target.gt_groups)
            boxes.append(torch.cat(b))
            cats.append(torch.cat(c))
            groups.append(torch.cat(g).long())
        return boxes, cats, groups

    def forward(
        self,
        images: ImageList,
        features: dict[str, Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
    ) -> tuple[list[Instances], dict[str, Tensor]]:
        """As ``StandardROIHeads.forward``, plus the group losses (training) or the groups of
        the detections (inference; in ``forward_with_given_boxes``)."""
        if not self.training:
            return super().forward(images, features, proposals, targets)
        assert targets, "'targets' argument is required during training"
        proposals = self.label_and_sample_proposals(proposals, targets)
        losses = self._forward_box(features, proposals)
        losses.update(self._forward_mask(features, proposals))
        losses.update(self._forward_keypoint(features, proposals))
        losses.update(self._group_losses(features, proposals, targets))
        return proposals, losses

    def _group_losses(self, features: dict[str, Tensor], proposals: list[Instances],
                      targets: list[Instances]) -> dict[str, Tensor]:
        boxes, cats, groups = self._training_tokens(proposals, targets)
        sizes = [t.image_size for t in targets]
        out = self.group_outputs(features, boxes, sizes)
        groups_pad = _pad_labels(groups)  # [B, N], -1: padding or unknown group
        # pairs with a box of unknown group (or padding) are masked by group_known
        losses = self.group_criterion(out, {"categories": _pad_labels(cats), "groups": groups_pad,
                                            "group_known": groups_pad >= 0})
        weights = self.group_criterion.weight_dict
        return {k.replace("loss_", "loss_group_"): v * weights[k] for k, v in losses.items()}

    def forward_with_given_boxes(self, features: dict[str, Tensor], instances: list[Instances]
                                 ) -> list[Instances]:
        """``StandardROIHeads.forward_with_given_boxes`` after the category-agnostic NMS, then
        the groups of the boxes (fields in the class docstring)."""
        assert not self.training
        instances = [self._merge_categories(x) for x in instances]
        instances = super().forward_with_given_boxes(features, instances)
        return self.group_instances(features, instances)

    def _merge_categories(self, instances: Instances) -> Instances:
        if self.agnostic_nms_iou >= 1.0 or len(instances) == 0:
            return instances
        keep = nms(instances.pred_boxes.tensor, instances.scores, self.agnostic_nms_iou)
        return instances[keep]

    @torch.no_grad()
    def group_instances(self, features: dict[str, Tensor], instances: list[Instances]
                        ) -> list[Instances]:
        """Write ``pred_groups``, ``group_scores``, ``det_classes``, ``det_scores`` and the
        decoded ``pred_classes``, ``scores`` into each image's ``Instances`` (in place)."""
        if not instances:
            return instances
        out = self.group_outputs(features, [x.pred_boxes.tensor for x in instances],
                                 [x.image_size for x in instances])
        logits = out["pred_logits"].float().cpu().numpy()  # [B, N, C]
        pair = out["pred_affinity"].float().cpu().numpy() + self.pair_bias  # [B, N, N]
        boxes = out["boxes"].float().cpu().numpy()  # [B, N, 4]
        for b, inst in enumerate(instances):
            n = len(inst)
            w = pair[b, :n, :n]
            part = decode_on_neighbors((w + w.T) / 2, logits[b, :n], boxes=boxes[b, :n],
                                       **self.decoder)
            log_probs = log_softmax(logits[b, :n], axis=-1) if n else np.zeros((0, 1))
            chosen = np.exp(log_probs[np.arange(n), part.categories])  # [n]
            device = inst.scores.device
            inst.det_classes = inst.pred_classes
            inst.det_scores = inst.scores
            inst.pred_classes = torch.as_tensor(part.categories, device=device)
            inst.scores = inst.scores * torch.as_tensor(chosen, dtype=inst.scores.dtype,
                                                        device=device)
            inst.pred_groups = torch.as_tensor(part.groups, device=device)
            inst.group_scores = torch.as_tensor(part.group_scores[part.cluster],
                                                dtype=torch.float32, device=device)
        return instances
