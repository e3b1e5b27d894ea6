"""Post-processing: the model's batched logits → one :class:`Prediction` per image.

Model → criterion → post-process, as in DETR: :func:`build` returns the three for a config.
The post-processor symmetrises the pair logits, decodes them (:mod:`detgroup.decoder`) and turns
logits into probabilities; every consumer (the evaluation loop, ``Grouper``, ``detgroup infer``,
the report) reads the same :class:`Prediction`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.special import expit, softmax
from torch import Tensor, nn

from detgroup.decoder import Partition, decode_on_neighbors, decode_sparse
from detgroup.errors import DetgroupError
from detgroup.losses import DetectionGroupCriterion, GroupCriterion, build_criterion
from detgroup.model.detector import build_model

if TYPE_CHECKING:
    from detgroup.config import Config


@dataclass
class Prediction:
    """Decoded prediction of the boxes of one image (numpy, CPU).

    ``boxes`` [N, 4] xyxy px; ``categories`` [N] int (index into ``category_names``);
    ``groups`` [N] int, numbered from 0 within each category; ``scores`` [N] probability of each
    box's category; ``group_scores`` {(category, group): confidence}; ``pair_probs`` [N, N]
    same-group probabilities (a ``scipy.sparse.csr_matrix`` of the candidate pairs when the model
    scored candidate pairs, ``model.pair_candidates``); ``class_probs`` [N, C] category
    probabilities; ``image_id`` the image's id in its batch or file.
    When the model found the boxes itself, ``scores`` is the category probability times the
    detector's score (a confidence in box and category, as COCO results want), and
    ``detection_scores`` [N] holds the detector's score alone (None when the boxes were given).
    """

    boxes: np.ndarray
    categories: np.ndarray
    groups: np.ndarray
    scores: np.ndarray
    group_scores: dict[tuple[int, int], float]
    pair_probs: np.ndarray | sp.csr_matrix
    class_probs: np.ndarray
    category_names: list[str] = field(default_factory=list)
    detection_scores: np.ndarray | None = None
    image_id: int = 0

    @property
    def affinity(self) -> np.ndarray | sp.csr_matrix:
        """``pair_probs`` under the name of the public API (``Grouper`` results)."""
        return self.pair_probs

    def group_list(self) -> list[dict[str, Any]]:
        """One readable record per group: label, category, score, members, enclosing box."""
        records = []
        for (cat, grp), score in sorted(self.group_scores.items()):
            members = np.flatnonzero((self.categories == cat) & (self.groups == grp))
            b = self.boxes[members]
            records.append({
                "label": f"{self.category_names[cat]}/{grp}",
                "category": self.category_names[cat],
                "group_id": int(grp),
                "score": round(float(score), 4),
                "members": [int(i) for i in members],
                "box": [round(float(v), 2) for v in (b[:, 0].min(), b[:, 1].min(),
                                                      b[:, 2].max(), b[:, 3].max())],
            })
        return records


AGNOSTIC_CATEGORY = "object"  # the one category of a PostProcess(ignore_categories=True)


class PostProcess:
    """Turns the model's batched logits into a :class:`Prediction` per image."""

    def __init__(self, *, method: str = "gaec-kl", consistency: str = "joint",
                 pair_bias: float = 0.0, neighbors: int = 0,
                 category_names: list[str] | None = None,
                 ignore_categories: bool = False, pair_bias_search: str = "none",
                 pair_bias_grid: Sequence[float] = (0.0,),
                 prior_weight_grid: Sequence[float] = (0.0,)) -> None:
        if neighbors and method == "exact":
            raise DetgroupError("decoder method 'exact' decodes every pair; it cannot be used "
                                f"with neighbors={neighbors} (use neighbors 0)")
        self.method = method
        self.consistency = consistency
        self.pair_bias = pair_bias  # added to the pair logits (see DecoderConfig.pair_bias)
        self.neighbors = neighbors  # 0: every pair; k: each box's k nearest (DecoderConfig)
        self.category_names = list(category_names or [])  # copied into every Prediction
        # decode the pair logits alone, every box of one category (index 0): the grouping of
        # boxes whose categories the model never learnt (e.g. Omniglot alphabets left out)
        self.ignore_categories = ignore_categories
        if pair_bias_search not in ("none", "silhouette"):
            raise DetgroupError(f"decoder.pair_bias_search must be none or silhouette, got "
                                f"{pair_bias_search!r}")
        if pair_bias_search != "none" and neighbors:
            raise DetgroupError(f"decoder.pair_bias_search {pair_bias_search} scores every pair: "
                                f"it cannot be used with neighbors={neighbors} (use neighbors 0)")
        if pair_bias_search != "none" and not len(pair_bias_grid):
            raise DetgroupError("decoder.pair_bias_grid is empty: give the shifts to search")
        self.pair_bias_search = pair_bias_search
        # ties go to the smallest shift: searched in order of |shift|
        self.pair_bias_grid = sorted((float(g) for g in pair_bias_grid), key=abs)
        weights = [float(w) for w in prior_weight_grid]
        if not weights or not all(np.isfinite(w) and w >= 0 for w in weights):
            raise DetgroupError("decoder.prior_weight_grid must be a non-empty list of finite "
                                f"weights >= 0, got {list(prior_weight_grid)}")
        # searched with the shift (pair_bias_search); ties go to the smallest weight
        self.prior_weight_grid = sorted(set(weights))

    @classmethod
    def from_config(cls, decoder: Any, *, method: str | None = None,
                    consistency: str | None = None, pair_bias: float | None = None,
                    neighbors: int | None = None,
                    category_names: list[str] | None = None,
                    ignore_categories: bool = False,
                    pair_bias_search: str | None = None,
                    prior_weight_grid: Sequence[float] | None = None) -> PostProcess:
        """From a :class:`~detgroup.config.DecoderConfig`, each field overridable."""
        return cls(method=method or decoder.method,
                   consistency=consistency or decoder.consistency,
                   pair_bias=decoder.pair_bias if pair_bias is None else pair_bias,
                   neighbors=decoder.neighbors if neighbors is None else neighbors,
                   category_names=category_names, ignore_categories=ignore_categories,
                   pair_bias_search=pair_bias_search or decoder.pair_bias_search,
                   pair_bias_grid=tuple(decoder.pair_bias_grid),
                   prior_weight_grid=tuple(decoder.prior_weight_grid
                                           if prior_weight_grid is None else prior_weight_grid))

    def settings(self) -> dict[str, Any]:
        """Keyword arguments of :func:`detgroup.decoder.partition` that decode as this does."""
        return {"method": self.method, "consistency": self.consistency,
                "pair_bias": float(self.pair_bias), "neighbors": int(self.neighbors)}

    def decode(self, pair_logits: np.ndarray, class_logits: np.ndarray | None,
               boxes: np.ndarray) -> Partition:
        """Partition of one image: pair_logits [N, N] (bias added), class_logits [N, C] or None,
        boxes [N, 4] xyxy px; on the k-nearest-neighbour graph when ``neighbors`` > 0."""
        return decode_on_neighbors(pair_logits, class_logits, method=self.method,
                                   consistency=self.consistency, boxes=boxes,
                                   neighbors=self.neighbors)

    def decode_searched(self, pair_logits: np.ndarray, class_logits: np.ndarray | None,
                        boxes: np.ndarray, similarity: np.ndarray | None = None
                        ) -> tuple[Partition, float]:
        """``decoder.pair_bias_search: silhouette``: the partition of pair_logits [N, N] + s
        for the shift s of ``pair_bias_grid`` with the highest silhouette under 1 - p (p: the
        unshifted pair probabilities; a partition of one group or of singletons scores -1, so
        with no structure at all the smallest shift wins). Returns (partition, s); with a
        ``prior_weight_grid``, :meth:`search` also returns the weight chosen."""
        part, shift, _ = self.search(pair_logits, class_logits, boxes, similarity)
        return part, shift

    def search(self, pair_logits: np.ndarray, class_logits: np.ndarray | None,
               boxes: np.ndarray, similarity: np.ndarray | None = None
               ) -> tuple[Partition, float, float]:
        """The label-free search of :meth:`decode_searched` over the shifts of
        ``pair_bias_grid`` and the weights w of ``prior_weight_grid``: each candidate decodes
        pair_logits + w * (similarity - its median over the pairs) + shift, every candidate
        scored by the silhouette under the same distance 1 - p (p: ``pair_logits``' own
        probabilities). ``similarity`` [N, N]: the pair prior's (the model output
        ``pair_prior_similarity``), needed when a weight is not 0. Returns (partition, shift,
        weight)."""
        from sklearn.metrics import silhouette_score

        weighted = any(self.prior_weight_grid)
        if weighted and similarity is None:
            raise DetgroupError(
                f"decoder.prior_weight_grid {self.prior_weight_grid} weighs the model's pair "
                "prior, and this model has none: give one (eval / infer --pair-prior, e.g. "
                "attribute_cosine:0 on each box's HOG attributes), or set the grid to [0.0]")
        centred = np.zeros_like(pair_logits)  # [N, N]
        if weighted and len(pair_logits) > 1:
            assert similarity is not None
            pairs = np.triu_indices(len(similarity), 1)
            centred = similarity - float(np.median(similarity[pairs]))
        distance = 1.0 - expit(pair_logits)  # [N, N]
        np.fill_diagonal(distance, 0.0)
        best: tuple[float, Partition, float, float] | None = None
        for weight in self.prior_weight_grid:
            base = pair_logits + weight * centred if weight else pair_logits  # [N, N]
            for shift in self.pair_bias_grid:
                part = self.decode(base + shift, class_logits, boxes)
                k = len(np.unique(part.cluster))
                score = (float(silhouette_score(distance, part.cluster, metric="precomputed"))
                         if 1 < k < len(distance) else -1.0)
                if best is None or score > best[0]:
                    best = (score, part, shift, weight)
        assert best is not None  # both grids are not empty (__init__)
        return best[1], best[2], best[3]

    @torch.no_grad()
    def __call__(
        self, outputs: dict[str, Tensor], boxes: Tensor, image_ids: list[int]
    ) -> list[Prediction]:
        """outputs: the model's dict; boxes [B, N, 4]; image_ids [B]."""
        if "pair_edges" in outputs:
            return self._sparse(outputs, boxes, image_ids)
        logits = self._class_logits(outputs)  # [B, N, C]
        pair = outputs["pred_affinity"].float().cpu().numpy() + self.pair_bias  # [B, N, N]
        real = (~outputs["pad_mask"]).cpu().numpy()  # [B, N]
        boxes_np = boxes.float().cpu().numpy()
        # [B, N, N]: a model with a prior; read only when a prior weight is searched
        similarity = (outputs.get("pair_prior_similarity")
                      if self.pair_bias_search == "silhouette" and any(self.prior_weight_grid)
                      else None)
        similarity_np = None if similarity is None else similarity.float().cpu().numpy()
        results = []
        for b, image_id in enumerate(image_ids):
            keep = np.flatnonzero(real[b])
            pair_b = pair[b][np.ix_(keep, keep)]
            pair_b = (pair_b + pair_b.T) / 2  # exact symmetry for the decoder
            cls_b = logits[b][keep]
            if self.pair_bias_search == "silhouette":
                sim_b = (None if similarity_np is None
                         else similarity_np[b][np.ix_(keep, keep)])  # [n, n]
                part = self.search(pair_b, cls_b, boxes_np[b][keep], sim_b)[0]
            else:
                part = self.decode(pair_b, cls_b, boxes_np[b][keep])
            results.append(self._prediction(image_id, boxes_np[b][keep], cls_b, part,
                                            expit(pair_b)))
        return results

    def _sparse(self, outputs: dict[str, Tensor], boxes: Tensor, image_ids: list[int]
                ) -> list[Prediction]:
        """Decode the candidate pairs (``pair_edges`` [E, 2] flat, ``pred_edge_logits`` [E])
        with ``decode_sparse``; ``neighbors`` does not apply (the graph is the model's)."""
        if self.pair_bias_search != "none":
            raise DetgroupError("decoder.pair_bias_search scores every pair; this model decodes "
                                "candidate pairs (model.pair_candidates): set pair_bias_search "
                                "none")
        logits = self._class_logits(outputs)  # [B, N, C]
        real = (~outputs["pad_mask"]).cpu().numpy()  # [B, N]
        edges = outputs["pair_edges"].cpu().numpy()  # [E, 2]
        edge_logits = outputs["pred_edge_logits"].float().cpu().numpy() + self.pair_bias  # [E]
        boxes_np = boxes.float().cpu().numpy()
        n = real.shape[1]
        image_of = edges[:, 0] // max(n, 1)
        results = []
        for b, image_id in enumerate(image_ids):
            keep = np.flatnonzero(real[b])
            local = np.full(n, -1, dtype=np.int64)
            local[keep] = np.arange(len(keep))
            mine = image_of == b
            e = local[edges[mine] - b * n]  # [E_b, 2] indices into the real boxes
            w = edge_logits[mine]
            cls_b = logits[b][keep]
            part = decode_sparse(len(keep), e, w, cls_b, method=self.method,
                                 consistency=self.consistency, boxes=boxes_np[b][keep])
            p = expit(w)
            pair_probs = sp.csr_matrix((np.concatenate([p, p]),
                                        (np.concatenate([e[:, 0], e[:, 1]]),
                                         np.concatenate([e[:, 1], e[:, 0]]))),
                                       shape=(len(keep), len(keep)))
            results.append(self._prediction(image_id, boxes_np[b][keep], cls_b, part,
                                            pair_probs))
        return results

    def _class_logits(self, outputs: dict[str, Tensor]) -> np.ndarray:
        """The class logits [B, N, C] the decoder sees; [B, N, 1] zeros (one category, so the
        decoder partitions by the pair logits alone) with ``ignore_categories``."""
        logits = outputs["pred_logits"].float().cpu().numpy()  # [B, N, C]
        return np.zeros((*logits.shape[:2], 1), np.float32) if self.ignore_categories else logits

    def _prediction(self, image_id: int, boxes: np.ndarray, class_logits: np.ndarray,
                    part: Partition, pair_probs: np.ndarray | sp.csr_matrix) -> Prediction:
        """One image's :class:`Prediction`: boxes [N, 4], class_logits [N, C], its partition and
        its same-group probabilities [N, N] (dense or the candidate pairs)."""
        probs = softmax(class_logits, axis=-1)  # [N, C]
        scores = probs[np.arange(len(boxes)), part.categories]  # [N]
        return Prediction(boxes=boxes, categories=part.categories, groups=part.groups,
                          scores=scores, group_scores=_group_score_map(part),
                          pair_probs=pair_probs, class_probs=probs,
                          category_names=list(self.category_names), image_id=int(image_id))


def _group_score_map(part: Partition) -> dict[tuple[int, int], float]:
    """{(category, group): score} from the decoder's per-cluster scores."""
    scores: dict[tuple[int, int], float] = {}
    for i, k in enumerate(part.cluster):
        scores.setdefault((int(part.categories[i]), int(part.groups[i])),
                          float(part.group_scores[k]))
    return scores


def build(cfg: Config, *, pretrained: bool = True
          ) -> tuple[nn.Module, GroupCriterion | DetectionGroupCriterion, PostProcess]:
    """Model, criterion and post-processor of ``cfg`` (``cfg.category_names`` set), as DETR's
    ``build``; ``pretrained`` as in :func:`~detgroup.model.detector.build_model`."""
    return (build_model(cfg, pretrained=pretrained), build_criterion(cfg),
            PostProcess.from_config(cfg.decoder, category_names=list(cfg.category_names)))
