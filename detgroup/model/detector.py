"""GroupingModel: image + boxes → class logits and same-group pair logits."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from detgroup.config import Config, reads_attributes
from detgroup.model.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    backbone_features,
    build_backbone,
)
from detgroup.model.crop_encoder import CropAugment, CropEncoder, check_crop_inputs
from detgroup.model.heads import AssignmentHead, CategoryHead, EmbeddingHead, PairAffinityHead
from detgroup.model.item_encoders import AttributeEncoder, TextEncoder, TokenFusion
from detgroup.model.pair_prior import PairPrior
from detgroup.model.relation import RelationEncoder
from detgroup.model.roi_extractor import LayoutTokenizer, RoITokenizer
from detgroup.model.sparse import (
    PairCandidates,
    check_dense_fits,
    edge_pair_logits,
    graph_relation,
)
from detgroup.ops.boxes import box_features, pairwise_geometry


class GroupingModel(nn.Module):
    """Backbone → RoI tokens → relational transformer → category and pair heads.

    ``forward`` returns a dict with ``pred_logits`` [B, N, C], ``pred_affinity`` [B, N, N]
    (symmetric same-group logits), ``pad_mask`` [B, N], ``features`` [B, N, D] (the relational
    features h, e.g. for clustering baselines), plus the raw output of the pair head
    (``pred_assign`` [B, N, K] or ``pred_embed`` [B, N, E]) that its loss needs.

    With ``candidates`` (``model.pair_candidates``) and a batch it applies to, attention and the
    pair head see only candidate pairs (:mod:`detgroup.model.sparse`): the dict then holds
    ``pair_edges`` int64 [E, 2] (flat indices b * N + i, i < j) and ``pred_edge_logits`` [E]
    instead of ``pred_affinity``, and ``candidate_embed`` [B, N, E]. In training the edges are
    the candidates plus random pairs.

    ``backbone=None`` (with a :class:`LayoutTokenizer`): the image is never looked at; only
    ``image_sizes`` (the frame the boxes are normalised by) is used. ``text_encoder`` and
    ``attribute_encoder`` (optional) add the box's text and attributes to its token through
    ``fusion`` before the relational transformer; a model with them must get those inputs.
    ``crop_encoder`` (optional, ``model.crop``) gives each box a token of its own pixels
    (:mod:`detgroup.model.crop_encoder`), added to the RoI token (``crop_fusion="add"``) or
    instead of its appearance (``"replace"``: box position + crop; the backbone is not run).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module | None,
        tokenizer: RoITokenizer | LayoutTokenizer,
        relation: RelationEncoder,
        category_head: CategoryHead,
        pair_head: nn.Module,
        candidates: PairCandidates | None = None,
        text_encoder: TextEncoder | None = None,
        attribute_encoder: AttributeEncoder | None = None,
        fusion: TokenFusion | None = None,
        crop_encoder: CropEncoder | None = None,
        crop_fusion: str = "add",
        pair_prior: PairPrior | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.crop_fusion = crop_fusion
        if crop_encoder is not None:
            if backbone is None:
                raise ValueError("a crop encoder needs the image: give a backbone")
            self.crop_encoder = crop_encoder
            self.crop_norm = nn.LayerNorm(crop_encoder.norm.normalized_shape[0])
        # registered only when used, so that a model without them keeps its old state-dict keys
        if text_encoder is not None:
            self.text_encoder = text_encoder
        if attribute_encoder is not None:
            self.attribute_encoder = attribute_encoder
        if fusion is not None:
            self.fusion = fusion
        self.pair_prior = pair_prior
        self.relation = relation
        self.category_head = category_head
        self.pair_head = pair_head
        self.candidates = candidates
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)

    @property
    def uses_text(self) -> bool:
        return hasattr(self, "text_encoder")

    @property
    def uses_attributes(self) -> bool:
        return hasattr(self, "attribute_encoder")

    @property
    def reads_attributes(self) -> bool:
        """Whether ``forward`` needs ``attributes`` (the attribute encoder or the pair prior)."""
        return self.uses_attributes or (self.pair_prior is not None
                                        and self.pair_prior.uses_attributes)

    @property
    def uses_crops(self) -> bool:
        return hasattr(self, "crop_encoder")

    def normalised(self, images: Tensor, image_sizes: Tensor) -> Tensor:
        """The padded batch [B, 3, H, W] normalised; pixels outside each image are zero."""
        h, w = images.shape[-2:]
        x = (images - self.pixel_mean) / self.pixel_std  # [B, 3, H, W]
        rows = torch.arange(h, device=images.device)[None, :, None] < image_sizes[:, 0, None, None]
        cols = torch.arange(w, device=images.device)[None, None, :] < image_sizes[:, 1, None, None]
        return x * (rows & cols)[:, None].to(x.dtype)

    def features(self, images: Tensor, image_sizes: Tensor):
        """Backbone maps of a padded batch; pixels outside each image are zero after norm."""
        if self.backbone is None:
            return OrderedDict()
        return backbone_features(self.backbone, self.normalised(images, image_sizes), image_sizes)

    def _crop_tokens(self, images: Tensor, boxes: Tensor, pad_mask: Tensor, image_sizes: Tensor
                     ) -> Tensor:
        """RoI tokens fused with crop tokens: [B, N, D]."""
        if not (torch.jit.is_tracing() or torch.jit.is_scripting()
                or torch.compiler.is_compiling()):  # (a graph cannot raise a user error)
            check_crop_inputs(boxes, pad_mask, image_sizes, self.crop_encoder.size,
                              self.crop_encoder.width)
        pixels = self.normalised(images, image_sizes)  # [B, 3, H, W]
        crop = self.crop_encoder(pixels, boxes, pad_mask)  # [B, N, D]
        if self.crop_fusion == "replace":
            return self.crop_norm(crop + self.tokenizer.position(box_features(boxes, image_sizes)))
        assert self.backbone is not None
        feats = backbone_features(self.backbone, pixels, image_sizes)
        tokens = self.tokenizer(feats, boxes, image_sizes, tuple(images.shape[-2:]))  # [B, N, D]
        return self.crop_norm(tokens + crop)

    def forward(
        self,
        images: Tensor,
        boxes: Tensor,
        pad_mask: Tensor | None = None,
        image_sizes: Tensor | None = None,
        text_hashes: Tensor | None = None,
        text_offsets: Tensor | None = None,
        text_shape: Tensor | None = None,
        attributes: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """
        Args:
            images: [B, 3, H, W] RGB in [0, 1], zero-padded bottom/right (any [B, 3, h, w],
                e.g. h = w = 0, when the model has no backbone).
            boxes: [B, N, 4] xyxy absolute pixels.
            pad_mask: [B, N] bool, True where a box is padding (default: none).
            image_sizes: [B, 2] (H, W) before padding (default: the tensor's size).
            text_hashes, text_offsets, text_shape: the texts of the B * N boxes, row-major
                (:func:`detgroup.ops.text.encode_texts` on them, padding boxes as empty
                texts): [T] int64, [B * N] int64, [B, N, S] float. Required by a text model.
            attributes: [B, N, A] float. Required by a model with attributes.
        """
        b, n = boxes.shape[:2]
        if pad_mask is None:
            pad_mask = torch.zeros(b, n, dtype=torch.bool, device=boxes.device)
        if image_sizes is None:
            image_sizes = torch.tensor([images.shape[-2:]] * b, device=images.device)
        if self.uses_crops:
            tokens = self._crop_tokens(images, boxes, pad_mask, image_sizes)  # [B, N, D]
        else:
            feats = self.features(images, image_sizes)
            tokens = self.tokenizer(feats, boxes, image_sizes, tuple(images.shape[-2:]))
        if hasattr(self, "fusion"):
            parts = [tokens]
            if self.uses_text:
                if text_hashes is None or text_offsets is None or text_shape is None:
                    raise ValueError("this model reads box texts: give text_hashes, "
                                     "text_offsets and text_shape")
                parts.append(self.text_encoder(text_hashes, text_offsets, text_shape))
            if self.uses_attributes:
                if attributes is None:
                    raise ValueError("this model reads box attributes: give attributes")
                parts.append(self.attribute_encoder(attributes.to(tokens.dtype)))
            tokens = self.fusion(parts)  # [B, N, D]
        if self.candidates is not None and self.candidates.active(n):
            out = self._forward_candidates(tokens, boxes, pad_mask)
            if self.pair_prior is not None:
                out["pred_edge_logits"] = out["pred_edge_logits"] + self.pair_prior.on_edges(
                    boxes, attributes, out["pair_edges"])  # [E]
            return out
        if not torch.compiler.is_compiling():  # a symbolic N (torch.export) has no size yet
            check_dense_fits(b, n, boxes.device)
        h = self.relation(tokens, pairwise_geometry(boxes), pad_mask)  # [B, N, D]
        out = {"pred_logits": self.category_head(h), "pad_mask": pad_mask, "features": h}
        out.update(self.pair_head(h, boxes))
        if self.pair_prior is not None and "pred_affinity" in out:
            similarity = self.pair_prior.similarity(boxes, attributes)  # [B, N, N]
            out["pred_affinity"] = out["pred_affinity"] + self.pair_prior.offsets(similarity)
            if not self.training:  # for decoder.prior_weight_grid (the post-processor); not
                out["pair_prior_similarity"] = similarity  # held through a training backward
        return out

    def _forward_candidates(self, tokens: Tensor, boxes: Tensor, pad_mask: Tensor
                            ) -> dict[str, Tensor]:
        """The candidate-pair path of ``forward`` (tokens [B, N, D])."""
        assert self.candidates is not None and isinstance(self.pair_head, PairAffinityHead)
        embed, edges = self.candidates(tokens, boxes, pad_mask)  # [B, N, E], [E, 2]
        h = graph_relation(self.relation, tokens, boxes, edges)  # [B, N, D]
        if self.training:
            edges = self.candidates.training_pairs(edges, pad_mask)
        return {"pred_logits": self.category_head(h), "pad_mask": pad_mask, "features": h,
                "candidate_embed": embed, "pair_edges": edges,
                "pred_edge_logits": edge_pair_logits(self.pair_head, h, boxes, edges)}


def build_relation(cfg: Config) -> RelationEncoder:
    """The relational transformer of ``cfg`` (shared by every model that groups)."""
    m = cfg.model
    return RelationEncoder(
        dim=m.dim,
        layers=m.relation.layers,
        heads=m.relation.heads,
        ffn_mult=m.relation.ffn_mult,
        dropout=m.relation.dropout,
    )


def build_pair_head(cfg: Config) -> nn.Module:
    """The pair head that ``cfg.loss.pair`` trains (shared by every model that groups)."""
    m = cfg.model
    if cfg.loss.pair == "bce":
        return PairAffinityHead(
            dim=m.dim, hidden=m.pair_hidden, chunk=m.pair_chunk, layout=m.pair_layout_features
        )
    if cfg.loss.pair in ("kcl", "mcl"):
        return AssignmentHead(dim=m.dim, num_clusters=m.num_clusters)
    return EmbeddingHead(dim=m.dim, embed_dim=m.embed_dim, margin=cfg.loss.ae_margin)


def build_model(cfg: Config, *, pretrained: bool = True) -> nn.Module:
    """The one place that reads the config to build a model (``cfg.category_names`` set).

    A :class:`GroupingModel`, or with ``model.detector.backbone`` set a
    :class:`~detgroup.model.grouping_rcnn.GroupingFasterRCNN`. ``pretrained=False`` skips
    reading ``model.detector.weights`` (a checkpoint's weights replace them anyway).
    """
    if not cfg.category_names:
        raise ValueError("cfg.category_names must be filled (from the training data) first")
    m = cfg.model
    if reads_attributes(cfg) and not cfg.attribute_names:
        raise ValueError("model.attributes / pair_prior attribute_cosine needs "
                         "cfg.attribute_names (from the training data)")
    if m.detector.backbone is not None:
        from detgroup.model.grouping_rcnn import build_grouping_faster_rcnn

        d = m.detector
        return build_grouping_faster_rcnn(
            backbone=d.backbone, num_classes=len(cfg.category_names), dim=m.dim,
            relation=build_relation(cfg), pair_head=build_pair_head(cfg),
            weights=d.weights if pretrained else None, min_size=d.min_size,
            max_size=d.max_size, score_threshold=d.score_threshold, nms_iou=d.nms_iou,
            agnostic_nms_iou=d.agnostic_nms_iou, detections_per_image=d.detections_per_image,
            rpn_post_nms_top_n_train=d.rpn_post_nms_top_n_train,
            rpn_post_nms_top_n_test=d.rpn_post_nms_top_n_test,
            box_batch_size_per_image=d.box_batch_size_per_image,
            proposal_tokens=d.proposal_tokens, proposal_iou=d.proposal_iou,
            roi_context=m.roi_context,
            returned_layers=None if d.returned_layers is None else list(d.returned_layers),
            anchor_sizes=None if d.anchor_sizes is None else [list(a) for a in d.anchor_sizes],
        )
    backbone: nn.Module | None = None
    tokenizer: RoITokenizer | LayoutTokenizer
    if m.backbone.name == "none":
        tokenizer = LayoutTokenizer(dim=m.dim)
    else:
        backbone = build_backbone(
            name=m.backbone.name,
            weights=m.backbone.weights,
            frozen=m.backbone.frozen,
            width=m.backbone.width,
            out_channels=m.backbone.out_channels,
        )
        levels = ["0", "1"] if m.backbone.name == "small" else ["0", "1", "2", "3"]
        tokenizer = RoITokenizer(
            in_channels=m.backbone.out_channels,
            featmap_names=levels,
            dim=m.dim,
            roi_size=m.roi_size,
            roi_width=m.roi_width,
            context=m.roi_context,
            canonical_scale=m.roi_canonical_scale,
        )
    text_encoder = (TextEncoder(buckets=m.text.buckets, embed_dim=m.text.embed_dim, dim=m.dim)
                    if m.text.enabled else None)
    attribute_encoder = (AttributeEncoder(num_attributes=len(cfg.attribute_names),
                                          hidden=m.attributes.hidden, dim=m.dim)
                         if m.attributes.enabled else None)
    parts = 1 + (text_encoder is not None) + (attribute_encoder is not None)
    fusion = TokenFusion(dim=m.dim, parts=parts, mode=m.fusion) if parts > 1 else None
    crop_encoder = (CropEncoder(size=m.crop.size, context=m.crop.context,
                                channels=m.crop.channels, dim=m.dim, width=m.crop.width,
                                augment=CropAugment(**vars(m.crop.augment)), norm=m.crop.norm)
                    if m.crop.enabled else None)
    pc = m.pair_candidates
    candidates = None if pc.mode == "dense" else PairCandidates(
        dim=m.dim, mode=pc.mode, auto_min_boxes=pc.auto_min_boxes, gap_k=pc.gap_k,
        embed_k=pc.embed_k, embed_dim=pc.embed_dim, random_pairs=pc.random_pairs, block=pc.block,
    )
    return GroupingModel(
        backbone=backbone,
        tokenizer=tokenizer,
        relation=build_relation(cfg),
        category_head=CategoryHead(dim=m.dim, num_classes=len(cfg.category_names)),
        pair_head=build_pair_head(cfg),
        candidates=candidates,
        text_encoder=text_encoder,
        attribute_encoder=attribute_encoder,
        fusion=fusion,
        crop_encoder=crop_encoder,
        crop_fusion=m.crop.fusion,
        pair_prior=None if m.pair_prior.kind == "none" else PairPrior(
            kind=m.pair_prior.kind, weight=m.pair_prior.weight, offset=m.pair_prior.offset,
            max_gap=m.pair_prior.max_gap, min_overlap=m.pair_prior.min_overlap),
    )
