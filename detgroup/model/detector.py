"""GroupingModel: image + boxes → class logits and same-group pair logits."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from detgroup.config import Config
from detgroup.model.backbone import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from detgroup.model.heads import AssignmentHead, CategoryHead, EmbeddingHead, PairAffinityHead
from detgroup.model.item_encoders import AttributeEncoder, TextEncoder, TokenFusion
from detgroup.model.relation import RelationEncoder
from detgroup.model.roi_extractor import LayoutTokenizer, RoITokenizer
from detgroup.ops.boxes import pairwise_geometry


class GroupingModel(nn.Module):
    """Backbone → RoI tokens → relational transformer → category and pair heads.

    ``forward`` returns a dict with ``pred_logits`` [B, N, C], ``pred_affinity`` [B, N, N]
    (symmetric same-group logits), ``pad_mask`` [B, N], ``features`` [B, N, D] (the relational
    features h, e.g. for clustering baselines), plus the raw output of the pair head
    (``pred_assign`` [B, N, K] or ``pred_embed`` [B, N, E]) that its loss needs.

    ``backbone=None`` (with a :class:`LayoutTokenizer`): the image is never looked at; only
    ``image_sizes`` (the frame the boxes are normalised by) is used. ``text_encoder`` and
    ``attribute_encoder`` (optional) add the box's text and attributes to its token through
    ``fusion`` before the relational transformer; a model with them must get those inputs.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module | None,
        tokenizer: RoITokenizer | LayoutTokenizer,
        relation: RelationEncoder,
        category_head: CategoryHead,
        pair_head: nn.Module,
        text_encoder: TextEncoder | None = None,
        attribute_encoder: AttributeEncoder | None = None,
        fusion: TokenFusion | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        # registered only when used, so that a model without them keeps its old state-dict keys
        if text_encoder is not None:
            self.text_encoder = text_encoder
        if attribute_encoder is not None:
            self.attribute_encoder = attribute_encoder
        if fusion is not None:
            self.fusion = fusion
        self.relation = relation
        self.category_head = category_head
        self.pair_head = pair_head
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)

    @property
    def uses_text(self) -> bool:
        return hasattr(self, "text_encoder")

    @property
    def uses_attributes(self) -> bool:
        return hasattr(self, "attribute_encoder")

    def features(self, images: Tensor, image_sizes: Tensor):
        """Backbone maps of a padded batch; pixels outside each image are zero after norm."""
        if self.backbone is None:
            return OrderedDict()
        h, w = images.shape[-2:]
        x = (images - self.pixel_mean) / self.pixel_std  # [B, 3, H, W]
        rows = torch.arange(h, device=images.device)[None, :, None] < image_sizes[:, 0, None, None]
        cols = torch.arange(w, device=images.device)[None, None, :] < image_sizes[:, 1, None, None]
        x = x * (rows & cols)[:, None].to(x.dtype)
        return self.backbone(x)

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
        feats = self.features(images, image_sizes)
        tokens = self.tokenizer(feats, boxes, image_sizes, tuple(images.shape[-2:]))  # [B, N, D]
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
        h = self.relation(tokens, pairwise_geometry(boxes), pad_mask)  # [B, N, D]
        out = {"pred_logits": self.category_head(h), "pad_mask": pad_mask, "features": h}
        out.update(self.pair_head(h, boxes))
        return out


def build_model(cfg: Config) -> GroupingModel:
    """The one place that reads the config to build a model (``cfg.category_names`` set)."""
    if not cfg.category_names:
        raise ValueError("cfg.category_names must be filled (from the training data) first")
    m = cfg.model
    if m.attributes.enabled and not cfg.attribute_names:
        raise ValueError("model.attributes needs cfg.attribute_names (from the training data)")
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
    relation = RelationEncoder(
        dim=m.dim,
        layers=m.relation.layers,
        heads=m.relation.heads,
        ffn_mult=m.relation.ffn_mult,
        dropout=m.relation.dropout,
    )
    if cfg.loss.pair == "bce":
        pair_head: nn.Module = PairAffinityHead(
            dim=m.dim, hidden=m.pair_hidden, chunk=m.pair_chunk, layout=m.pair_layout_features
        )
    elif cfg.loss.pair in ("kcl", "mcl"):
        pair_head = AssignmentHead(dim=m.dim, num_clusters=m.num_clusters)
    else:
        pair_head = EmbeddingHead(dim=m.dim, embed_dim=m.embed_dim, margin=cfg.loss.ae_margin)
    return GroupingModel(
        backbone=backbone,
        tokenizer=tokenizer,
        relation=relation,
        category_head=CategoryHead(dim=m.dim, num_classes=len(cfg.category_names)),
        pair_head=pair_head,
        text_encoder=text_encoder,
        attribute_encoder=attribute_encoder,
        fusion=fusion,
    )
