"""Scoring the methods on val with ``detgroup.metrics``: one :class:`Row` per method, and the
headline comparison."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchlib.methods import (
    DECODER,
    METHODS,
    GroupFn,
    PerBoxOutputs,
    make_scenes,
    per_box_outputs,
    tune_method,
    vote_categories,
)
from detgroup.baselines import (
    Scene,
)
from detgroup.engine.checkpoint import (
    load_model_from_checkpoint,
)
from detgroup.engine.evaluate import PostProcess, evaluate
from detgroup.metrics import GroupingEvaluator

if TYPE_CHECKING:
    from benchlib.datasets import DatasetSpec


METRICS = (
    "cat_acc", "cat_macro_f1", "ari", "nmi", "ami", "hungarian_acc", "pair_precision",
    "pair_recall", "pair_f1", "group_precision", "group_recall", "group_f1",
    "exact_group_precision", "exact_group_recall", "exact_group_f1", "group_pq", "num_groups_mae",
)


# (metric, threshold, label) targets for the full model; plus the error-ratio target
TARGETS = (("cat_acc", 0.99, "category accuracy"), ("ari", 0.97, "ARI"),
           ("exact_group_f1", 0.90, "exact-group F1"))


ERROR_RATIO_TARGET = 2.0


@dataclass
class Row:
    """One method's results on one val set."""

    key: str
    family: str
    name: str
    categories: str  # where the categories come from
    setting: str
    metrics: dict[str, float]
    train_seconds: float | None
    tune_seconds: float | None
    infer_ms: float  # per image, wall: model forward + grouping
    infer_cpu_ms: float  # per image, process CPU time of the val pass (image loading included)
    oracle: bool = False


def score_model(ckpt: Path, loader: DataLoader, num_classes: int,
                device: torch.device, bias: float = 0.0, neighbors: int = 0
                ) -> tuple[dict[str, float], float, float, int]:
    """Val metrics of a checkpoint decoded by DECODER with pair-logit bias ``bias`` (on each
    box's ``neighbors`` nearest boxes when > 0, else on every pair), inference wall ms and CPU
    ms per image (see :class:`Row`), and its training epochs."""
    model, cfg = load_model_from_checkpoint(ckpt)
    cpu = time.process_time()
    post = PostProcess(method=DECODER, pair_bias=bias, neighbors=neighbors)
    summary, _ = evaluate(model.to(device), loader, num_classes=num_classes,
                          postprocess=post, device=device)
    cpu_ms = 1000.0 * (time.process_time() - cpu) / max(summary["num_images"], 1)
    wall_ms = 1000.0 * (summary["model_seconds"] + summary["decode_seconds"])
    return summary, wall_ms, cpu_ms, cfg.train.epochs


def score_grouping(group_fn: GroupFn, scenes: list[Scene], gt: list[PerBoxOutputs],
                   num_classes: int, *, vote: bool = False
                   ) -> tuple[dict[str, float], float, float]:
    """Metrics of ``group_fn`` on ``scenes`` (truth: the scenes' own partition, categories as
    the scenes have them), and its wall ms and CPU ms per image. ``vote``: each group's
    category is voted from the per-box logits (:func:`vote_categories`) instead of taken from
    the scene."""
    evaluator = GroupingEvaluator(num_classes=num_classes)
    seconds = cpu = 0.0
    for scene, im in zip(scenes, gt, strict=True):
        start, start_cpu = time.perf_counter(), time.process_time()
        groups = group_fn(scene)
        categories = vote_categories(im.logits, groups) if vote else scene.categories
        seconds += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        truth_categories = scene.categories * 0 if num_classes == 1 else im.categories
        evaluator.update(truth_categories, im.groups, categories, groups)
    count = max(len(gt), 1)
    return evaluator.summary(), 1000.0 * seconds / count, 1000.0 * cpu / count


def score_clustering(
    method: str, tune_scenes: list[Scene], val_scenes: list[Scene], gt: list[PerBoxOutputs],
    num_classes: int, score: str = "ari",
) -> tuple[dict[str, float], str, float, float, float, GroupFn]:
    """Tune ``method`` on ``tune_scenes`` (for ``score``), score it on ``val_scenes``.

    Returns the val metrics, the chosen setting, tuning seconds, the grouping's wall ms and
    CPU ms per image, and the tuned grouping function.
    """
    group_fn, setting_text, tune_seconds = tune_method(method, tune_scenes, score)
    metrics, ms, cpu_ms = score_grouping(group_fn, val_scenes, gt, num_classes)
    return metrics, setting_text, tune_seconds, ms, cpu_ms, group_fn


def vote_row(method: str, tune_out: list[PerBoxOutputs], val_out: list[PerBoxOutputs],
             num_classes: int, spec: DatasetSpec, clf_train_s: float | None, clf_ms: float,
             clf_cpu_ms: float) -> Row:
    """``method`` grouping all boxes regardless of category (tuned on train for the grouping
    alone), then each group voting its category from the per-box model's probabilities."""
    group_fn, setting, tune_s = tune_method(
        method, make_scenes(tune_out, true_categories=False, appearance=False, agnostic=True),
        spec.tune_score)
    scenes = make_scenes(val_out, true_categories=False, appearance=False, agnostic=True)
    metrics, ms, cpu_ms = score_grouping(group_fn, scenes, val_out, num_classes, vote=True)
    clf = spec.aliases.get("classifier", "classifier")
    return Row(
        key=method + "_vote", family=METHODS[method].family,
        name=METHODS[method].name + ", then a category vote per group",
        categories=f"{clf} model's category head, voted per group", setting=setting,
        metrics=metrics, train_seconds=clf_train_s, tune_seconds=tune_s,
        infer_ms=ms + clf_ms, infer_cpu_ms=cpu_ms + clf_cpu_ms,
    )


def score_model_agnostic(ckpt: Path, loader: DataLoader, device: torch.device,
                         bias: float = 0.0, neighbors: int = 0) -> dict[str, dict[str, float]]:
    """Metrics of a checkpoint with categories ignored (truth = the groups): ``"decoder"``, the
    pair logits (plus ``bias``) alone decoded by DECODER (on each box's ``neighbors`` nearest
    boxes when > 0); and for a cluster-assignment head (KCL/MCL), ``"argmax"``: each box in its
    most probable cluster, L2C's own inference."""
    outputs, _, _ = per_box_outputs(ckpt, loader, device)
    post = PostProcess(method=DECODER, neighbors=neighbors)
    evaluator = GroupingEvaluator(num_classes=1)
    argmax = GroupingEvaluator(num_classes=1)
    for im in outputs:
        zeros = np.zeros(len(im.groups), dtype=np.int64)
        evaluator.update(zeros, im.groups, zeros,
                         post.decode(im.affinity + bias, None, im.boxes).groups)
        if im.clusters is not None:
            argmax.update(zeros, im.groups, zeros, im.clusters)
    result = {"decoder": evaluator.summary()}
    if argmax.per_image:
        result["argmax"] = argmax.summary()
    return result


def error_ratio(baseline_ari: float, ari: float) -> float:
    """(1 − baseline ARI) / (1 − ARI): how many times fewer grouping errors; inf at ARI = 1."""
    return math.inf if ari >= 1.0 else (1.0 - baseline_ari) / (1.0 - ari)


def best_row(rows: list[Row], *families: str) -> Row | None:
    """The non-oracle row of ``families`` with the highest val ARI (None if there is none)."""
    pool = [r for r in rows if r.family in families and not r.oracle and r.key != "full"]
    return max(pool, key=lambda r: r.metrics["ari"], default=None)


def headline(rows: list[Row], families: Sequence[str] = ("status_quo", "position")
             ) -> dict[str, Any] | None:
    """The full model against the best realistic row of ``families`` (by val ARI; by default
    the "classify each box, then cluster without supervision" rows: feature or position
    clustering within the per-box classifier's categories), or None if one is missing."""
    full = next((r for r in rows if r.key == "full"), None)
    best = best_row(rows, *families)
    if full is None or best is None:
        return None
    f, b = full.metrics, best.metrics
    return {
        "baseline": best.key, "baseline_name": best.name,
        "ari": f["ari"], "baseline_ari": b["ari"],
        "exact_group_f1": f["exact_group_f1"], "baseline_exact_group_f1": b["exact_group_f1"],
        "ari_ratio": f["ari"] / b["ari"] if b["ari"] > 0 else math.inf,
        "exact_group_f1_ratio": (f["exact_group_f1"] / b["exact_group_f1"]
                                 if b["exact_group_f1"] > 0 else math.inf),
        "error_ratio": error_ratio(b["ari"], f["ari"]),
    }
