"""Post-processing of model outputs into per-image groups, and the evaluation loop."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.special import expit
from torch import Tensor, nn
from tqdm import tqdm

from detgroup.data.dataset import model_inputs
from detgroup.decoder import Partition, decode, decode_sparse, neighbor_edges
from detgroup.errors import DetgroupError
from detgroup.metrics import GroupingEvaluator


@dataclass
class ImagePrediction:
    """Decoded prediction of one image (numpy, CPU).

    ``boxes`` [N, 4] xyxy px; ``class_probs`` [N, C]; ``categories`` [N] class indices;
    ``groups`` [N] group ids numbered from 0 within each category; ``scores`` [N] probability of
    the chosen category; ``group_scores`` maps (category, group) → confidence;
    ``affinity`` [N, N] same-group probabilities.
    """

    image_id: int
    boxes: np.ndarray
    class_probs: np.ndarray
    categories: np.ndarray
    groups: np.ndarray
    scores: np.ndarray
    group_scores: dict[tuple[int, int], float]
    affinity: np.ndarray


def unscored_indices(names: list[str], unscored: list[str], *, source: str) -> list[int]:
    """Class indices of the category names in ``unscored``; an unknown name is an error."""
    unknown = [u for u in unscored if u not in names]
    if unknown:
        raise DetgroupError(f"{source}: unscored categories {unknown} are not among {names}")
    return [names.index(u) for u in unscored]


class PostProcess:
    """Turns the model's batched logits into :class:`ImagePrediction` per image."""

    def __init__(self, *, method: str = "gaec-kl", consistency: str = "joint",
                 pair_bias: float = 0.0, neighbors: int = 0) -> None:
        if neighbors and method == "exact":
            raise DetgroupError("decoder method 'exact' decodes every pair; it cannot be used "
                                f"with neighbors={neighbors} (use neighbors 0)")
        self.method = method
        self.consistency = consistency
        self.pair_bias = pair_bias  # added to the pair logits (see DecoderConfig.pair_bias)
        self.neighbors = neighbors  # 0: every pair; k: each box's k nearest (DecoderConfig)

    @classmethod
    def from_config(cls, decoder: Any, *, method: str | None = None,
                    consistency: str | None = None, pair_bias: float | None = None,
                    neighbors: int | None = None) -> PostProcess:
        """From a :class:`~detgroup.config.DecoderConfig`, each field overridable."""
        return cls(method=method or decoder.method,
                   consistency=consistency or decoder.consistency,
                   pair_bias=decoder.pair_bias if pair_bias is None else pair_bias,
                   neighbors=decoder.neighbors if neighbors is None else neighbors)

    def decode(self, pair_logits: np.ndarray, class_logits: np.ndarray | None,
               boxes: np.ndarray) -> Partition:
        """Partition of one image: pair_logits [N, N] (bias added), class_logits [N, C] or None,
        boxes [N, 4] xyxy px; on the k-nearest-neighbour graph when ``neighbors`` > 0."""
        if self.neighbors <= 0 or len(boxes) <= self.neighbors + 1:
            return decode(pair_logits, class_logits, method=self.method,
                          consistency=self.consistency, boxes=boxes)
        edges = neighbor_edges(boxes, self.neighbors)  # [E, 2]
        return decode_sparse(len(boxes), edges, pair_logits[edges[:, 0], edges[:, 1]],
                             class_logits, method=self.method, consistency=self.consistency,
                             boxes=boxes)

    @torch.no_grad()
    def __call__(
        self, outputs: dict[str, Tensor], boxes: Tensor, image_ids: list[int]
    ) -> list[ImagePrediction]:
        """outputs: the model's dict; boxes [B, N, 4]; image_ids [B]."""
        logits = outputs["pred_logits"].float().cpu().numpy()  # [B, N, C]
        pair = outputs["pred_affinity"].float().cpu().numpy() + self.pair_bias  # [B, N, N]
        real = (~outputs["pad_mask"]).cpu().numpy()  # [B, N]
        boxes_np = boxes.float().cpu().numpy()
        results = []
        for b, image_id in enumerate(image_ids):
            keep = np.flatnonzero(real[b])
            pair_b = pair[b][np.ix_(keep, keep)]
            pair_b = (pair_b + pair_b.T) / 2  # exact symmetry for the decoder
            cls_b = logits[b][keep]
            part = self.decode(pair_b, cls_b, boxes_np[b][keep])
            probs = _softmax(cls_b)
            scores = probs[np.arange(len(keep)), part.categories] if len(keep) else np.zeros(0)
            results.append(
                ImagePrediction(
                    image_id=int(image_id),
                    boxes=boxes_np[b][keep],
                    class_probs=probs,
                    categories=part.categories,
                    groups=part.groups,
                    scores=scores,
                    group_scores=_group_score_map(part),
                    affinity=expit(pair_b),
                )
            )
        return results


def _group_score_map(part: Partition) -> dict[tuple[int, int], float]:
    """{(category, group): score} from the decoder's per-cluster scores."""
    scores: dict[tuple[int, int], float] = {}
    for i, k in enumerate(part.cluster):
        scores.setdefault((int(part.categories[i]), int(part.groups[i])),
                          float(part.group_scores[k]))
    return scores


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True) if x.size else x
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True) if x.size else e


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v
            for k, v in batch.items()}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[dict[str, Any]],
    *,
    num_classes: int,
    postprocess: PostProcess,
    device: torch.device,
    progress: bool = False,
    unscored_categories: list[int] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Run the model on every batch, decode, and score against the batch's ground truth.

    Returns the summary (see :class:`detgroup.metrics.GroupingEvaluator`, plus
    ``model_seconds`` and ``decode_seconds`` per image) and per-image metric dicts.
    ``unscored_categories``: class indices left out of the ``entity_*`` metrics.
    """
    was_training = model.training
    model.eval()
    evaluator = GroupingEvaluator(num_classes=num_classes,
                                  unscored_categories=unscored_categories or ())
    per_image: list[dict[str, Any]] = []
    model_time = decode_time = 0.0
    for batch in tqdm(loader, desc="eval", disable=not progress, leave=False):
        batch = move_batch(batch, device)
        start = time.perf_counter()
        outputs = model(**model_inputs(batch))
        mid = time.perf_counter()
        preds = postprocess(outputs, batch["boxes"], batch["image_ids"])
        decode_time += time.perf_counter() - mid
        model_time += mid - start
        for b, pred in enumerate(preds):
            real = ~batch["pad_mask"][b]
            gt_cat = batch["categories"][b][real].cpu().numpy()
            gt_grp = batch["groups"][b][real].cpu().numpy()
            metrics = evaluator.update(gt_cat, gt_grp, pred.categories, pred.groups)
            per_image.append({"image_id": pred.image_id, **metrics})
    model.train(was_training)
    summary = evaluator.summary()
    n = max(len(per_image), 1)
    summary["model_seconds"] = model_time / n
    summary["decode_seconds"] = decode_time / n
    return summary, per_image
