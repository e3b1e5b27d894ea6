"""The candidate-pair path of big scenes: attention, pair logits and memory in O(N k), not N².

* :class:`PairCandidates` picks each box's candidate pairs (nearest by edge gap ∪ nearest in a
  learned embedding of its token, :func:`detgroup.ops.candidates.candidate_edges`).
* :func:`graph_relation` runs the weights of a :class:`~detgroup.model.relation.RelationEncoder`
  with every box attending to itself and its candidates only (an edge-wise softmax by scatter
  ops; the geometry bias is computed per edge). On the complete graph it equals the dense
  encoder.
* :func:`edge_pair_logits` runs a :class:`~detgroup.model.heads.PairAffinityHead` on a list of
  pairs; on those pairs it equals the dense head.
* :func:`check_dense_fits` estimates the memory of the dense path from N before it allocates.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detgroup.errors import DetgroupError
from detgroup.model.heads import PairAffinityHead
from detgroup.model.relation import RelationEncoder, RelationLayer
from detgroup.ops.boxes import layout_pair_geometry, pairwise_geometry, symmetric_pair_geometry
from detgroup.ops.candidates import candidate_edges, unique_edges
from detgroup.ops.candidates import random_pairs as draw_random_pairs

# Peak bytes of the dense forward pass per (image, box, box) triple: the pairwise geometry and
# its temporaries, L x H attention biases, the attention weights and the pair head's row
# blocks, in float32 (fitted to the peaks of tools/bench_scale.py at N = 2000 and 5000).
DENSE_BYTES_PER_PAIR = 560
# Edges of the pair head evaluated at once at inference.
EDGE_CHUNK = 1 << 16


class PairCandidates(nn.Module):
    """Candidate pairs and the learned embedding they are partly chosen by.

    ``mode`` "sparse": always; "auto": when N > ``auto_min_boxes`` at inference (always in
    training). The embedding is a linear projection of the box token to ``embed_dim``.
    """

    def __init__(
        self,
        *,
        dim: int,
        mode: str = "sparse",
        auto_min_boxes: int = 1000,
        gap_k: int = 8,
        embed_k: int = 8,
        embed_dim: int = 16,
        random_pairs: int = 4,
        block: int = 1024,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.auto_min_boxes = auto_min_boxes
        self.gap_k = gap_k
        self.embed_k = embed_k
        self.random_pairs = random_pairs
        self.block = block
        self.embed = nn.Linear(dim, embed_dim)

    def active(self, n: int) -> bool:
        """Whether a batch of images with (padded) N boxes takes the candidate path."""
        if self.mode == "dense":
            return False
        return self.mode == "sparse" or self.training or n > self.auto_min_boxes

    def forward(self, tokens: Tensor, boxes: Tensor, pad_mask: Tensor) -> tuple[Tensor, Tensor]:
        """tokens [B, N, D], boxes [B, N, 4], pad_mask [B, N] → (embedding [B, N, E],
        candidate edges int64 [E, 2] flat indices b * N + i, i < j)."""
        embed = self.embed(tokens)  # [B, N, E]
        edges = candidate_edges(boxes, embed.detach(), pad_mask, gap_k=self.gap_k,
                                embed_k=self.embed_k, block=self.block)
        return embed, edges

    def training_pairs(self, edges: Tensor, pad_mask: Tensor) -> Tensor:
        """The pairs the loss sees: the candidate ``edges`` ∪ ``random_pairs`` random pairs
        per box → int64 [E', 2] flat, i < j, unique."""
        extra = draw_random_pairs(pad_mask, self.random_pairs)
        return unique_edges(torch.cat([edges, extra]), pad_mask.numel())


def directed_with_self(edges: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """Undirected edges [E, 2] → (query, key) index pairs [2E + M] each: both directions plus
    every node with itself."""
    nodes = torch.arange(num_nodes, device=edges.device)
    query = torch.cat([edges[:, 0], edges[:, 1], nodes])
    key = torch.cat([edges[:, 1], edges[:, 0], nodes])
    return query, key


def edge_geometry(boxes: Tensor, query: Tensor, key: Tensor) -> Tensor:
    """:func:`~detgroup.ops.boxes.pairwise_geometry` of the listed (query i, key j) pairs.

    Args:
        boxes: [M, 4] xyxy absolute pixels (flat).
        query, key: int64 [E] indices into ``boxes``.

    Returns:
        [E, 7], row e equal to ``pairwise_geometry(boxes[None])[0, query[e], key[e]]``.
    """
    pair = torch.stack([boxes[query], boxes[key]], dim=1)  # [E, 2, 4]
    return pairwise_geometry(pair)[:, 0, 1]  # [E, 7]


def _edge_softmax(logits: Tensor, query: Tensor, num_nodes: int) -> Tensor:
    """Softmax of logits [E, H] over the edges that share a query node."""
    h = logits.shape[1]
    index = query[:, None].expand(-1, h)
    top = logits.new_full((num_nodes, h), -math.inf).scatter_reduce(
        0, index, logits, reduce="amax", include_self=True)  # [M, H]
    weights = (logits - top[query]).exp()  # [E, H]
    total = logits.new_zeros(num_nodes, h).index_add_(0, query, weights)  # [M, H]
    return weights / total[query]


def graph_attention_layer(
    layer: RelationLayer, x: Tensor, query: Tensor, key: Tensor, bias: Tensor
) -> Tensor:
    """``layer`` applied with attention restricted to the listed (query, key) pairs.

    Args:
        x: [M, D] flat box features.
        query, key: int64 [E]; every node must be the query of at least one pair (itself).
        bias: [E, H] additive geometry bias of each pair.

    Returns:
        [M, D].
    """
    m, d = x.shape
    heads = layer.heads
    qkv = layer.qkv(layer.norm1(x)).view(m, 3, heads, d // heads)
    q, k, v = qkv.unbind(1)  # each [M, H, D/H]
    logits = (q[query] * k[key]).sum(-1) / math.sqrt(d // heads) + bias  # [E, H]
    weights = _edge_softmax(logits, query, m)
    if layer.training and layer.dropout > 0:
        weights = F.dropout(weights, layer.dropout)
    attn = x.new_zeros(m, heads, d // heads).index_add_(
        0, query, weights[..., None] * v[key])  # [M, H, D/H]
    x = x + layer.drop(layer.proj(attn.reshape(m, d)))
    return x + layer.drop(layer.ffn(layer.norm2(x)))


def graph_relation(
    relation: RelationEncoder, tokens: Tensor, boxes: Tensor, edges: Tensor
) -> Tensor:
    """The relational transformer with each box attending to itself and its candidates.

    Args:
        relation: the encoder whose weights are used.
        tokens: [B, N, D] box tokens.
        boxes: [B, N, 4] xyxy absolute pixels.
        edges: int64 [E, 2] undirected candidate pairs, flat indices b * N + i.

    Returns:
        h [B, N, D]; equal to ``relation(tokens, pairwise_geometry(boxes), pad_mask)`` on the
        real boxes when ``edges`` holds every pair of real boxes of each image.
    """
    if not relation.layers or tokens.shape[1] == 0:
        return relation.norm(tokens)
    b, n, d = tokens.shape
    query, key = directed_with_self(edges, b * n)
    bias = relation.geometry_bias(edge_geometry(boxes.reshape(-1, 4), query, key))  # [E, L * H]
    bias = bias.view(-1, len(relation.layers), relation.heads)  # [E, L, H]
    x = tokens.reshape(b * n, d)
    for index, layer in enumerate(relation.layers):
        x = graph_attention_layer(layer, x, query, key, bias[:, index])
    return relation.norm(x).view(b, n, d)


def edge_pair_logits(head: PairAffinityHead, h: Tensor, boxes: Tensor, edges: Tensor) -> Tensor:
    """Same-group logits of the listed pairs: ``head`` on (h_i ⊙ h_j, |h_i − h_j|, geometry_ij).

    Args:
        h: [B, N, D] relational features.
        boxes: [B, N, 4] xyxy absolute pixels.
        edges: int64 [E, 2] flat indices b * N + i.

    Returns:
        [E] logits, equal to the dense head's ``pred_affinity`` at those pairs. At inference
        ``EDGE_CHUNK`` edges are evaluated at a time.
    """
    flat_h = h.reshape(-1, h.shape[-1])  # [M, D]
    flat_boxes = boxes.reshape(-1, 4)
    step = edges.shape[0] if head.training else EDGE_CHUNK
    out = []
    for start in range(0, edges.shape[0], max(step, 1)):
        i, j = edges[start:start + step, 0], edges[start:start + step, 1]
        hi, hj = flat_h[i], flat_h[j]  # [e, D]
        bi, bj = flat_boxes[i][:, None], flat_boxes[j][:, None]  # [e, 1, 4]
        geometry = symmetric_pair_geometry(bi, bj)[:, 0, 0]  # [e, 6]
        if head.layout:
            geometry = torch.cat([geometry, layout_pair_geometry(bi, bj)[:, 0, 0]], dim=-1)
        feats = torch.cat([hi * hj, (hi - hj).abs(), geometry.to(h.dtype)], dim=-1)
        out.append(head.mlp(feats).squeeze(-1))
    return torch.cat(out) if out else h.new_zeros(0)


def _available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CPU: MemAvailable of /proc/meminfo), or None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    meminfo = Path("/proc/meminfo")
    if device.type != "cpu" or not meminfo.is_file():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def check_dense_fits(batch: int, n: int, device: torch.device) -> None:
    """Raise :class:`DetgroupError` when the dense path would need more memory than is free.

    The estimate is ``DENSE_BYTES_PER_PAIR`` x B x N², made before anything N x N is allocated.
    """
    need = DENSE_BYTES_PER_PAIR * batch * n * n
    if need < 1 << 30:  # below 1 GiB: not worth a look at the system
        return
    free = _available_bytes(device)
    if free is not None and need > free:
        raise DetgroupError(
            f"{batch} image(s) of {n} boxes: the dense pair path needs about {need / 2**30:.1f} "
            f"GiB but {free / 2**30:.1f} GiB are free; set model.pair_candidates.mode=sparse (or "
            "auto) to score only candidate pairs, or pass fewer boxes per image")
