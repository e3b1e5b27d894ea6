"""A fixed (non-learned) pair prior added to the pair logits: the learned head models the rest.

``model.pair_prior`` (``kind: none`` by default) adds ``weight * (s_ij - offset)`` to every
pair logit before the loss and the decoder, where ``s_ij`` is a classical similarity of boxes
i and j:

* ``attribute_cosine``: the cosine of the two boxes' ``attributes`` vectors, e.g. the HOG
  descriptor of each glyph (:func:`detgroup.data.crop_descriptors.write_hog_attributes`); HOG +
  Ward is the status quo on Omniglot, so the learned affinity starts from it;
* ``same_line``: 1 when the same-line layout rule links the two boxes (vertical overlap at least
  ``min_overlap`` of the smaller height and a horizontal gap at most ``max_gap`` times their
  mean height; :class:`detgroup.baselines.LineLinker`'s links), else 0; the rule is the status
  quo on forms (FUNSD).

The prior has no parameters, so training learns a residual on top of the rule: with the head's
logits at zero, the model decodes as the rule (or the descriptor) does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

PAIR_PRIOR_KINDS = ("none", "attribute_cosine", "same_line")


def same_line_link(a: Tensor, b: Tensor, max_gap: float, min_overlap: float) -> Tensor:
    """Whether the same-line rule links boxes ``a`` and ``b`` (broadcast [..., 4] xyxy px
    against each other): [...] float in {0, 1}."""
    ha = (a[..., 3] - a[..., 1]).clamp(min=1e-6)  # [...]
    hb = (b[..., 3] - b[..., 1]).clamp(min=1e-6)
    v_overlap = torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])
    h_gap = torch.maximum(a[..., 0], b[..., 0]) - torch.minimum(a[..., 2], b[..., 2])
    links = (v_overlap >= min_overlap * torch.minimum(ha, hb)) & (h_gap <= max_gap * (ha + hb) / 2)
    return links.to(a.dtype)


def same_line_links(boxes: Tensor, max_gap: float, min_overlap: float) -> Tensor:
    """The same-line rule's links of every two boxes: [B, N, N] float in {0, 1} (diagonal 0).

    Args:
        boxes: [B, N, 4] xyxy px.
    """
    links = same_line_link(boxes[:, :, None], boxes[:, None, :], max_gap, min_overlap)
    eye = torch.eye(boxes.shape[1], dtype=torch.bool, device=boxes.device)
    return links.masked_fill(eye, 0.0)  # [B, N, N]


def attribute_cosine(attributes: Tensor) -> Tensor:
    """Cosine similarity of every two boxes' attribute vectors: [B, N, N].

    Args:
        attributes: [B, N, A].
    """
    unit = nn.functional.normalize(attributes, dim=-1, eps=1e-12)  # [B, N, A]
    return unit @ unit.transpose(1, 2)


class PairPrior(nn.Module):
    """``weight * (s_ij - offset)`` [B, N, N] for the ``kind`` of the module docstring."""

    def __init__(self, *, kind: str, weight: float, offset: float, max_gap: float = 1.0,
                 min_overlap: float = 0.5) -> None:
        super().__init__()
        if kind not in PAIR_PRIOR_KINDS[1:]:
            raise ValueError(f"model.pair_prior.kind must be one of {PAIR_PRIOR_KINDS}, "
                             f"got {kind!r}")
        self.kind = kind
        self.weight = float(weight)
        self.offset = float(offset)
        self.max_gap = float(max_gap)
        self.min_overlap = float(min_overlap)

    @property
    def uses_attributes(self) -> bool:
        return self.kind == "attribute_cosine"

    def similarity(self, boxes: Tensor, attributes: Tensor | None) -> Tensor:
        """The classical similarity s_ij of every two boxes: [B, N, N] (attribute cosine, or
        the same-line rule's 0 / 1 link).

        Args:
            boxes: [B, N, 4] xyxy px; attributes: [B, N, A] (needed by ``attribute_cosine``).
        """
        if self.kind == "attribute_cosine":
            return attribute_cosine(self._attributes(attributes).to(boxes.dtype))
        return same_line_links(boxes, self.max_gap, self.min_overlap)

    def offsets(self, similarity: Tensor) -> Tensor:
        """The logit offsets ``weight * (s - offset)`` of a :meth:`similarity`: same shape."""
        return self.weight * (similarity - self.offset)

    def forward(self, boxes: Tensor, attributes: Tensor | None) -> Tensor:
        """
        Args:
            boxes: [B, N, 4] xyxy px; attributes: [B, N, A] (needed by ``attribute_cosine``).

        Returns:
            [B, N, N] logit offsets.
        """
        return self.offsets(self.similarity(boxes, attributes))

    def on_edges(self, boxes: Tensor, attributes: Tensor | None, edges: Tensor) -> Tensor:
        """The prior of candidate pairs ``edges`` [E, 2] (flat indices b * N + i): [E]."""
        flat = boxes.reshape(-1, 4)  # [B * N, 4]
        if self.kind == "attribute_cosine":
            unit = nn.functional.normalize(
                self._attributes(attributes).reshape(flat.shape[0], -1).to(boxes.dtype),
                dim=-1, eps=1e-12)  # [B * N, A]
            s = (unit[edges[:, 0]] * unit[edges[:, 1]]).sum(-1)  # [E]
        else:
            s = same_line_link(flat[edges[:, 0]], flat[edges[:, 1]], self.max_gap,
                               self.min_overlap)  # [E]
        return self.weight * (s - self.offset)

    @staticmethod
    def _attributes(attributes: Tensor | None) -> Tensor:
        if attributes is None or attributes.shape[-1] == 0:
            raise ValueError("model.pair_prior.kind = attribute_cosine reads box attributes: "
                             "give attributes")
        return attributes
