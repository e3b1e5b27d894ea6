"""GroupCriterion: a loss dict plus a weight dict (DETR style).

``loss_cls``: cross-entropy on the categories of real (non-padding) boxes.

``loss_pair``, one of:

* ``bce`` — class-balanced binary cross-entropy on the pair logits: positives (same group) and
  negatives each carry half of the weight, pooled over the batch. Pairs of different categories
  are negatives (groups hold one category), which teaches the category constraint. Within each
  half, every pair weighs the same (``pair_balance="pairs"``), so a group of k boxes counts
  k(k - 1) times; ``pair_balance="groups"`` weighs each group's pairs by 1 / (k(k - 1)) and each
  pair of groups' pairs by 1 / (k l), so that every group (and every pair of groups) counts
  once, as in the per-group metrics.
* ``mcl`` — Meta Classification Likelihood (Hsu et al., ICLR 2019, "Multi-class classification
  without multi-class labels"): BCE on s_ij = p_i · p_j of a soft cluster-assignment head.
* ``kcl`` — KL-divergence contrastive loss (Hsu et al., ICLR 2018, "Learning to cluster in order
  to transfer across domains and tasks"): KL(p_i ‖ p_j) is pulled to 0 for same-group pairs and
  pushed above a margin (hinge) for others, each direction with one side held fixed, as in the
  paper.
* ``ae`` — associative embedding pull/push (Newell et al., 2017): members pulled to their
  group's mean embedding, group means of one image pushed at least ``margin`` apart.

The diagonal and every pair involving a padding box, or a box of unknown group (``group_id``
-1, ``targets["group_known"]`` False), are masked out of all pair losses.

On the candidate-pair path (``model.pair_candidates``) the model lists its pairs
(``pair_edges``: the candidates plus random pairs) and ``loss_pair`` is the same balanced BCE
on those pairs only; ``loss_embed`` trains the candidate embedding: a balanced BCE on the
logit ``EMBED_LOGIT_SCALE`` x (1 − ‖e_i − e_j‖²) over the listed pairs plus one random
same-group partner per box, so that members of a group are near in the embedding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detgroup.ops.candidates import gap_knn, unique_edges

if TYPE_CHECKING:
    from detgroup.config import Config
    from detgroup.data.coco_groups import CocoGroups


def pair_targets(groups: Tensor, pad_mask: Tensor,
                 group_known: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Same-group targets and the mask of pairs that count.

    Args:
        groups: [B, N] dense group indices per image (padding: any value).
        pad_mask: [B, N] bool, True where padding.
        group_known: [B, N] bool, False where a box's group is unknown (its pairs do not
            count); None: every real box is known.

    Returns:
        target [B, N, N] float (1 = same group), valid [B, N, N] bool (off-diagonal, both real
        and of known group).
    """
    real = ~pad_mask
    if group_known is not None:
        real = real & group_known
    valid = real[:, :, None] & real[:, None, :]
    eye = torch.eye(groups.shape[1], dtype=torch.bool, device=groups.device)
    valid = valid & ~eye
    target = (groups[:, :, None] == groups[:, None, :]).float()
    return target, valid


def group_pair_weights(target: Tensor, valid: Tensor) -> Tensor:
    """[B, N, N] weights that make every group count once (``pair_balance="groups"``).

    Same-group pairs of a group of k boxes weigh 1 / (k(k - 1)); pairs across groups of k and
    l boxes weigh 1 / (k l); pairs outside ``valid`` weigh 0.
    """
    size = (target * valid).sum(-1) + 1  # [B, N] the size of each box's group (itself too)
    cross = size[:, :, None] * size[:, None, :]  # [B, N, N]: k l (k^2 on same-group pairs)
    same = size[:, :, None] * (size[:, :, None] - 1).clamp_min(1)  # k(k - 1)
    weights = torch.where(target > 0.5, 1 / same, 1 / cross)
    return weights * valid


def balanced_bce(logits: Tensor, target: Tensor, valid: Tensor,
                 weights: Tensor | None = None) -> Tensor:
    """BCE where positives and negatives each weigh half (over the pairs in ``valid``); within
    each half a weighted mean by ``weights`` [B, N, N] when given, else a plain mean."""
    pos = valid & (target > 0.5)
    neg = valid & (target <= 0.5)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    total = logits.new_zeros(())
    parts = 0
    for part in (pos, neg):
        if part.any():
            if weights is None:
                total = total + loss[part].mean()
            else:
                total = total + (loss[part] * weights[part]).sum() / weights[part].sum()
            parts += 1
    return total / max(parts, 1)


def pair_prior_log_odds(coco: CocoGroups, gap_k: int = 0) -> float:
    """log(#negative / #positive) over the ordered pairs of distinct boxes of every image of
    ``coco``, pooled (what :func:`balanced_bce` shifts the pair logits by); 0.0 when the set has
    no positive or no negative pair.

    ``gap_k`` > 0: only the pairs of the candidate graph's geometric half, each box with its
    ``gap_k`` nearest boxes by the gap between box edges, symmetrised
    (:func:`detgroup.ops.candidates.gap_knn`): the pairs the edge loss and ``decode_sparse``
    see, less the learned-embedding half, which is not known before training.

    The same shift holds for the per-group weights of :func:`group_pair_weights` where the
    weights do not depend on what the head sees: the mean weight of the positive pairs is
    W+ / #positive, of the negative ones W- / #negative, and each half is divided by its total
    W. (With groups of equal size the two losses are identical.)
    """
    pos = neg = 0
    for info in coco.images:
        target = coco.targets(info["id"])
        known = target["group_known"]
        groups = target["groups"][known]  # pairs of unknown boxes do not count
        n = len(groups)
        if gap_k > 0:
            near = gap_knn(torch.as_tensor(target["boxes"][known], dtype=torch.float32), gap_k)
            i = torch.arange(n).repeat_interleave(near.shape[1])
            edges = unique_edges(torch.stack([i, near.reshape(-1)], dim=1), max(n, 1))  # [E, 2]
            same = int((groups[edges[:, 0].numpy()] == groups[edges[:, 1].numpy()]).sum())
            pos, neg = pos + 2 * same, neg + 2 * (edges.shape[0] - same)
            continue
        counts = np.unique(groups, return_counts=True)[1]
        same = int((counts * (counts - 1)).sum())
        pos += same
        neg += n * (n - 1) - same
    return float(np.log(neg / pos)) if pos and neg else 0.0


def calibrated_pair_bias(cfg: Config, train: CocoGroups) -> float:
    """The decoder's pair-logit bias for ``cfg``: with ``decoder.calibrate`` and the balanced
    ``bce`` pair loss, -:func:`pair_prior_log_odds` of the training set ``train`` (over the
    geometric candidate pairs when ``model.pair_candidates.mode`` is not "dense": the edge loss
    is balanced over candidate pairs, and the sparse decoder sees only those); else
    ``decoder.pair_bias`` as configured."""
    if cfg.decoder.calibrate and cfg.loss.pair == "bce":
        candidates = cfg.model.pair_candidates
        gap_k = candidates.gap_k if candidates.mode != "dense" else 0
        return -pair_prior_log_odds(train, gap_k=gap_k)
    return cfg.decoder.pair_bias


EMBED_LOGIT_SCALE = 4.0


def edge_targets(groups: Tensor, edges: Tensor) -> Tensor:
    """Same-group targets [E] float of flat pairs ``edges`` [E, 2] into groups [B, N]."""
    flat = groups.reshape(-1)
    return (flat[edges[:, 0]] == flat[edges[:, 1]]).float()


def edge_group_weights(groups: Tensor, pad_mask: Tensor, edges: Tensor) -> Tensor:
    """:func:`group_pair_weights` at the listed pairs: [E] (1 / (k(k - 1)) within a group of
    k, 1 / (k l) across groups of k and l)."""
    b, n = groups.shape
    key = (groups.clamp_min(0) + (torch.arange(b, device=groups.device) * (n + 1))[:, None])
    key = key.masked_fill(pad_mask, -1).reshape(-1)  # [B * N] image-unique group key
    _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    size = counts[inverse].float()  # [B * N] group size of each box
    si, sj = size[edges[:, 0]], size[edges[:, 1]]
    same = key[edges[:, 0]] == key[edges[:, 1]]
    return torch.where(same, 1 / (si * (si - 1)).clamp_min(1), 1 / (si * sj))


def same_group_partners(groups: Tensor, pad_mask: Tensor) -> Tensor:
    """One random same-group partner per real box (itself for a lone box) → [M, 2] flat."""
    b, n = groups.shape
    key = (groups.clamp_min(0) + (torch.arange(b, device=groups.device) * (n + 1))[:, None])
    key = key.masked_fill(pad_mask, -1).reshape(-1)
    real = torch.nonzero(key >= 0).squeeze(1)  # [M]
    order = real[torch.argsort(key[real], stable=True)]  # real boxes sorted by group
    _, inverse, counts = torch.unique(key[order], return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    draw = torch.rand(order.shape, device=groups.device)
    pick = starts[inverse] + (draw * counts[inverse]).long().clamp_max(counts[inverse] - 1)
    return torch.stack([order, order[pick]], dim=1)


class GroupCriterion(nn.Module):
    """Computes ``{"loss_cls", "loss_pair"}``; ``weight_dict`` says how they add up."""

    def __init__(
        self,
        *,
        pair_loss: str = "bce",
        cls_weight: float = 1.0,
        pair_weight: float = 1.0,
        kcl_margin: float = 2.0,
        ae_margin: float = 1.0,
        pair_balance: str = "pairs",
        embed_weight: float = 0.0,
    ) -> None:
        super().__init__()
        # the pair losses by name (DETR's loss_map); MCL is BCE on logit(p_i · p_j), which is
        # what the assignment head reports as its pair logits
        self.loss_map: dict[str, Callable[..., Tensor]] = {
            "bce": self._pair_bce, "mcl": self._pair_bce, "kcl": self._pair_kcl,
            "ae": self._pair_ae,
        }
        if pair_loss not in self.loss_map:
            raise ValueError(f"unknown pair loss {pair_loss!r}")
        if pair_balance not in ("pairs", "groups"):
            raise ValueError(f"unknown pair balance {pair_balance!r}")
        self.pair_loss = pair_loss
        self.pair_balance = pair_balance
        self.kcl_margin = kcl_margin
        self.ae_margin = ae_margin
        self.weight_dict = {"loss_cls": cls_weight, "loss_pair": pair_weight}
        if embed_weight:  # the candidate embedding of model.pair_candidates
            self.weight_dict["loss_embed"] = embed_weight

    def forward(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """
        Args:
            outputs: the model's dict (``pred_logits`` [B, N, C], ``pred_affinity`` [B, N, N],
                ``pad_mask`` [B, N], and ``pred_assign`` / ``pred_embed`` for those losses).
            targets: ``categories`` [B, N] (padding -1) and ``groups`` [B, N].
        """
        pad_mask = outputs["pad_mask"]
        logits = outputs["pred_logits"].float()
        categories = targets["categories"].masked_fill(pad_mask, -1)
        if (~pad_mask).any():
            loss_cls = F.cross_entropy(logits.flatten(0, 1), categories.flatten(), ignore_index=-1)
        else:
            loss_cls = logits.sum() * 0.0
        known = targets.get("group_known")  # [B, N] or None
        if "pair_edges" in outputs:
            return {"loss_cls": loss_cls, **self._edge_losses(outputs, targets)}
        target, valid = pair_targets(targets["groups"], pad_mask, known)
        if not valid.any():
            loss_pair = outputs["pred_affinity"].sum() * 0.0
        else:
            loss_pair = self.loss_map[self.pair_loss](outputs, targets, target, valid)
        losses = {"loss_cls": loss_cls, "loss_pair": loss_pair}
        if "loss_embed" in self.weight_dict:  # a dense batch of a model with candidates
            losses["loss_embed"] = loss_cls * 0.0
        return losses

    def _pair_bce(self, outputs: dict[str, Tensor], targets: dict[str, Tensor], target: Tensor,
                  valid: Tensor) -> Tensor:
        """Balanced BCE on ``pred_affinity`` [B, N, N] (``bce``, and ``mcl``)."""
        weights = (group_pair_weights(target, valid) if self.pair_balance == "groups"
                   else None)
        return balanced_bce(outputs["pred_affinity"].float(), target, valid, weights)

    def _pair_kcl(self, outputs: dict[str, Tensor], targets: dict[str, Tensor], target: Tensor,
                  valid: Tensor) -> Tensor:
        return self._kcl(outputs["pred_assign"].float(), target, valid)

    def _pair_ae(self, outputs: dict[str, Tensor], targets: dict[str, Tensor], target: Tensor,
                 valid: Tensor) -> Tensor:
        # boxes of unknown group take no part in the pull or the push
        pad_mask, known = outputs["pad_mask"], targets.get("group_known")
        unlabelled = pad_mask if known is None else pad_mask | ~known
        return self._ae(outputs["pred_embed"].float(), targets["groups"], unlabelled)

    def _edge_losses(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]
                     ) -> dict[str, Tensor]:
        """``loss_pair`` on the listed pairs and ``loss_embed`` (module docstring)."""
        edges, logits = outputs["pair_edges"], outputs["pred_edge_logits"].float()
        groups, pad_mask = targets["groups"], outputs["pad_mask"]
        known = targets.get("group_known")  # [B, N] or None
        if known is not None:  # pairs with a box of unknown group take no part
            keep = known.reshape(-1)[edges].all(dim=1)  # [E]
            edges, logits = edges[keep], logits[keep]
        target = edge_targets(groups, edges)
        every = torch.ones_like(target, dtype=torch.bool)[None]
        if edges.shape[0] == 0:
            loss_pair = logits.sum() * 0.0
        else:
            weights = (edge_group_weights(groups, pad_mask, edges)[None]
                       if self.pair_balance == "groups" else None)
            loss_pair = balanced_bce(logits[None], target[None], every, weights)
        losses = {"loss_pair": loss_pair}
        if "loss_embed" in self.weight_dict:
            embed = outputs["candidate_embed"].float().reshape(-1, outputs["candidate_embed"]
                                                               .shape[-1])  # [B * N, E]
            pairs = torch.cat([edges, same_group_partners(groups, pad_mask)])
            pairs = pairs[pairs[:, 0] != pairs[:, 1]]
            dist = (embed[pairs[:, 0]] - embed[pairs[:, 1]]).pow(2).sum(-1)  # [P]
            if pairs.shape[0] == 0:
                losses["loss_embed"] = embed.sum() * 0.0
            else:
                t = edge_targets(groups, pairs)[None]
                losses["loss_embed"] = balanced_bce(EMBED_LOGIT_SCALE * (1 - dist)[None], t,
                                                    torch.ones_like(t, dtype=torch.bool))
        return losses

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        return sum(losses[k] * w for k, w in self.weight_dict.items())

    def _kcl(self, assign_logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        log_p = assign_logits.log_softmax(-1)  # [B, N, K]
        p_fixed, log_p_fixed = log_p.exp().detach(), log_p.detach()
        # KL(p_i ‖ p_j) with p_i held fixed as the target (the paper's KCL); the ordered pair
        # (j, i) is also in ``valid``, which gives the other direction.
        entropy = (p_fixed * log_p_fixed).sum(-1)  # [B, N]
        kl = entropy[:, :, None] - p_fixed @ log_p.transpose(1, 2)  # [B, N, N]
        loss = target * kl + (1 - target) * F.relu(self.kcl_margin - kl)
        pos, neg = valid & (target > 0.5), valid & (target <= 0.5)
        parts = [loss[m].mean() for m in (pos, neg) if m.any()]
        return torch.stack(parts).mean()

    def _ae(self, embed: Tensor, groups: Tensor, pad_mask: Tensor) -> Tensor:
        b, n, _ = embed.shape
        real = (~pad_mask).float()  # [B, N]
        g_max = int(groups.masked_fill(pad_mask, -1).max().item()) + 1
        onehot = F.one_hot(groups.clamp_min(0), g_max).float() * real[..., None]  # [B, N, G]
        count = onehot.sum(1)  # [B, G]
        present = count > 0
        means = (onehot.transpose(1, 2) @ embed) / count.clamp_min(1)[..., None]  # [B, G, E]
        member_mean = onehot @ means  # [B, N, E]
        pull = ((embed - member_mean).pow(2).sum(-1) * real).sum() / real.sum().clamp_min(1)
        dist = torch.cdist(means, means)  # [B, G, G]
        pair_ok = present[:, :, None] & present[:, None, :]
        pair_ok = pair_ok & ~torch.eye(g_max, dtype=torch.bool, device=embed.device)
        push = F.relu(self.ae_margin - dist).pow(2)
        push = push[pair_ok].mean() if pair_ok.any() else embed.sum() * 0.0
        return pull + push


class DetectionGroupCriterion(nn.Module):
    """The losses of a model that detects and groups (``GroupingFasterRCNN``).

    Returns torchvision's Faster R-CNN losses (``loss_classifier``, ``loss_box_reg``,
    ``loss_objectness``, ``loss_rpn_box_reg``, computed inside the model's forward pass and
    handed over as ``outputs["detector_losses"]``) plus :class:`GroupCriterion`'s on the model's
    tokens (``outputs["token_categories"]``, ``outputs["token_groups"]``: truth boxes and matched
    proposals). ``weight_dict`` says how they add up.
    """

    def __init__(self, *, group: GroupCriterion, detection_weight: float = 1.0) -> None:
        super().__init__()
        from detgroup.model.grouping_rcnn import DETECTION_LOSSES

        self.group = group
        self.weight_dict = {**{k: detection_weight for k in DETECTION_LOSSES},
                            **group.weight_dict}

    def forward(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """outputs: the model's training dict; targets: unused (the tokens carry their labels)."""
        losses = dict(outputs["detector_losses"])
        losses.update(self.group(outputs, {"categories": outputs["token_categories"],
                                           "groups": outputs["token_groups"]}))
        return losses

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        return sum(losses[k] * w for k, w in self.weight_dict.items())


def build_criterion(cfg: Config) -> GroupCriterion | DetectionGroupCriterion:
    """The criterion of ``cfg``'s model (with ``model.detector``: detection + grouping)."""
    group = GroupCriterion(
        pair_loss=cfg.loss.pair, cls_weight=cfg.loss.cls_weight, pair_weight=cfg.loss.pair_weight,
        kcl_margin=cfg.loss.kcl_margin, ae_margin=cfg.loss.ae_margin,
        pair_balance=cfg.loss.pair_balance,
        embed_weight=(cfg.model.pair_candidates.embed_weight
                      if cfg.model.pair_candidates.mode != "dense" else 0.0),
    )
    if cfg.model.detector.backbone is None:
        return group
    return DetectionGroupCriterion(group=group, detection_weight=cfg.loss.detection_weight)
