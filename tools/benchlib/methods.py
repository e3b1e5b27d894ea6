"""The benchmark's methods: the trained variants (trained or reused), their per-box outputs,
and the tuned clustering / layout baselines that group them."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from detgroup.baselines import (
    Agglomerative,
    DBSCANClusterer,
    HDBSCANClusterer,
    LineLinker,
    Scene,
    Setting,
    Singletons,
    box_centres,
    cluster_labels,
    kmeans_oracle_groups,
    l2_normalise,
    scene_groups,
    tune,
)
from detgroup.config import Config, PairPriorConfig, config_to_dict, load_config
from detgroup.data.coco_groups import load_coco_groups
from detgroup.data.dataset import GroupDataset, collate_groups, model_inputs
from detgroup.engine.checkpoint import (
    checkpoint_config,
    load_checkpoint,
    load_model_from_checkpoint,
)
from detgroup.engine.evaluate import move_batch
from detgroup.engine.train import train
from detgroup.losses import calibrated_pair_bias

if TYPE_CHECKING:
    from benchlib.datasets import DatasetSpec

log = logging.getLogger("benchmark")


DECODER = "gaec-kl"


# config overrides of every trained model, in training order (the headline's two first, so an
# interrupted run already has them; --reuse picks up where it stopped)
VARIANTS: dict[str, tuple[str, ...]] = {
    "full": (),
    "classifier": ("model.relation.layers=0", "loss.pair_weight=0"),
    "no_relation": ("model.relation.layers=0",),
    "l2c_mcl": ("model.relation.layers=0", "loss.pair=mcl"),
    "l2c_kcl": ("model.relation.layers=0", "loss.pair=kcl"),
}


FAMILIES = {
    "position": "geometry / position only",
    "status_quo": "status quo: classify, then cluster",
    "l2c": "learned pairs, no set context (L2C)",
    "detgroup": "detgroup",
}


@dataclass(frozen=True)
class Method:
    family: str
    name: str
    variant: str  # the trained model it needs


METHODS: dict[str, Method] = {
    "geo_alone": Method("position", "each box alone", "classifier"),
    "geo_line": Method("position", "same-line / small-gap linking of boxes", "classifier"),
    "pos_dbscan": Method("position", "DBSCAN on box centres", "classifier"),
    "pos_agglo": Method("position", "agglomerative on box centres", "classifier"),
    "pos_kmeans": Method("position", "k-means on box centres, true number of groups (oracle)",
                         "classifier"),
    "sq_agglo": Method("status_quo", "per-box classifier + agglomerative on its features",
                       "classifier"),
    "sq_hdbscan": Method("status_quo", "per-box classifier + HDBSCAN on its features",
                         "classifier"),
    "l2c_kcl": Method("l2c", "KCL on per-box features + decoder", "l2c_kcl"),
    "l2c_mcl": Method("l2c", "MCL on per-box features + decoder", "l2c_mcl"),
    "no_relation": Method("detgroup", "detgroup without relation layers (ablation)",
                          "no_relation"),
    "full": Method("detgroup", "detgroup (relational transformer)", "full"),
}


# the methods of a set whose DatasetSpec does not name its own
DEFAULT_METHODS = tuple(m for m in METHODS if not m.startswith("geo_"))


# layout-rule grid (gaps in units of the box height)
LINE_GAPS = np.geomspace(0.05, 4.0, 20)


LINE_OVERLAPS = (0.3, 0.5, 0.7)


NEXT_LINE_GAPS = (0.0, 0.25, 0.5, 1.0)


# tuning grids of the clustering baselines
THRESHOLDS_POSITION = np.geomspace(0.01, 2.0, 36)


THRESHOLDS_FEATURES = np.geomspace(0.02, 16.0, 48)


EPS_POSITION = np.geomspace(0.01, 0.4, 30)


# up to weights where the centres dominate the unit-norm features (→ position only)
POSITION_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


@dataclass
class PerBoxOutputs:
    """A model's per-box outputs and the ground truth of one image (numpy).

    ``logits`` [N, C]; ``features`` [N, D]; ``centres`` [N, 2] (fractions of the image size);
    ``boxes`` [N, 4] xyxy px; ``categories``, ``groups`` [N] ground truth; ``affinity`` [N, N]
    the pair logits, symmetrised ((a + a.T) / 2, what the decoder takes); ``clusters`` [N] the
    argmax of a KCL/MCL assignment head (else None).
    """

    logits: np.ndarray
    features: np.ndarray
    centres: np.ndarray
    boxes: np.ndarray
    categories: np.ndarray
    groups: np.ndarray
    affinity: np.ndarray
    clusters: np.ndarray | None = None


def variant_config(variant: str, spec: DatasetSpec, args: argparse.Namespace) -> Config:
    """The training config of ``variant`` on ``spec``."""
    epochs = [f"train.epochs={spec.epochs}"] if spec.epochs is not None else []
    cfg = load_config(spec.config, [
        f"data.train_ann={spec.train_ann}", f"data.train_images={spec.train_images}",
        f"data.val_ann={spec.val_ann}", f"data.val_images={spec.val_images}",
        *spec.overrides, *args.set, *VARIANTS[variant],
        *spec.variant_overrides.get(variant, ()), *epochs,
        f"train.seed={args.seed}", f"train.threads={args.threads}",
        # One val pass, after the last epoch: model.pt is the final weights for every variant
        # (no choice of epoch by val score), and a few images suffice for that pass's log line
        # because this tool scores the whole val set itself.
        "train.max_val_images=8",
    ])
    cfg.train.eval_every = cfg.train.epochs
    return cfg


def recipe_of(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict without what does not change the trained weights (file locations, threads,
    device, how often and on how many images val is scored or checkpoints are written, which
    val metric picks best.pt, the decoder settings, the category names filled in by
    training)."""
    recipe = json.loads(json.dumps(config))
    recipe.pop("category_names", None)
    recipe.pop("decoder", None)  # how the logits are decoded; the benchmark sets it itself
    for key in ("train_ann", "train_images", "val_ann", "val_images"):
        recipe["data"].pop(key, None)
    for key in ("threads", "device", "eval_every", "max_val_images", "save_every_steps",
                "tensorboard", "select_by"):
        recipe["train"].pop(key, None)
    return recipe


def training_seconds(run: Path) -> float | None:
    """Sum of the epoch times in ``run``/log.csv (training only, across resumes), or None."""
    path = run / "log.csv"
    if not path.is_file():
        return None
    with path.open() as f:
        return sum(float(row["epoch_seconds"]) for row in csv.DictReader(f))


def train_or_reuse(
    variant: str, spec: DatasetSpec, args: argparse.Namespace
) -> tuple[Path, float | None, bool]:
    """Checkpoint of ``variant``, its training seconds (None when unknown) and whether it was
    trained by an earlier invocation.

    A finished model (``model.pt``) in ``--reuse`` or ``--out`` is used as it is; an unfinished
    one in ``--out`` (``last.pt``) is resumed; else the variant is trained into ``--out``. A
    model trained with another recipe (e.g. other ``--epochs``) is an error, never silently used.
    """
    cfg = variant_config(variant, spec, args)
    wanted = recipe_of(config_to_dict(cfg))
    run = args.out / spec.key / "models" / variant
    for base in ([args.reuse] if args.reuse is not None else []) + [args.out]:
        found = base / spec.key / "models" / variant
        for name in ("model.pt", "last.pt") if base == args.out else ("model.pt",):
            path = found / name
            if not path.is_file():
                continue
            # through the schema, so that keys added since the checkpoint take their defaults
            trained = config_to_dict(checkpoint_config(load_checkpoint(path), path))
            if recipe_of(trained) != wanted:
                raise SystemExit(f"{path}: trained with another recipe than this run's "
                                 f"(e.g. --epochs, --set); use another --out")
            if name == "model.pt":
                log.info("%s: reusing %s", variant, path)
                return final_weights(found), training_seconds(found), True
    resume = (run / "last.pt").is_file()
    log.info("%s: %s %d epochs in %s", variant, "resuming" if resume else "training",
             cfg.train.epochs, run)
    train(cfg, out_dir=run, resume=resume, progress=False)
    seconds = training_seconds(run)
    log.info("%s: trained in %.0f s", variant, seconds or 0.0)
    return final_weights(run), seconds, False


def final_weights(run: Path) -> Path:
    """The weights after the last epoch: ``last.pt`` when the run kept it, else ``model.pt``
    (the same when val was scored only after the last epoch). Never a checkpoint chosen by its
    val score, since the benchmark reports on val."""
    return run / "last.pt" if (run / "last.pt").is_file() else run / "model.pt"


def val_loader(spec: DatasetSpec) -> DataLoader:
    return DataLoader(GroupDataset(spec.val_ann, spec.val_images), batch_size=8,
                      collate_fn=collate_groups)


def decoder_settings(variant: str, spec: DatasetSpec, args: argparse.Namespace
                     ) -> tuple[float, int]:
    """The decoder's pair-logit bias and neighbour graph for ``variant``, from its recipe. The
    bias: with ``decoder.calibrate`` and the balanced BCE pair loss, -log(#negative / #positive
    pairs) of the training set (what training writes into new checkpoints); else the recipe's
    ``decoder.pair_bias``. The graph: ``decoder.neighbors`` (0: every pair)."""
    cfg = variant_config(variant, spec, args)
    return calibrated_pair_bias(cfg, load_coco_groups(spec.train_ann)), cfg.decoder.neighbors


@torch.no_grad()
def per_box_outputs(ckpt: Path, loader: DataLoader, device: torch.device,
                    pair_prior: PairPriorConfig | None = None,
                    ) -> tuple[list[PerBoxOutputs], float, float]:
    """The per-box outputs of every image of ``loader``, and per image the model's wall ms
    (forward only) and the pass's CPU ms (image loading included), as :func:`score_model`.
    ``pair_prior``: replaces the checkpoint's (as ``detgroup eval --pair-prior``)."""
    model, _ = load_model_from_checkpoint(ckpt, pair_prior=pair_prior)
    model = model.to(device)
    images: list[PerBoxOutputs] = []
    seconds = 0.0
    cpu = time.process_time()
    for batch in loader:
        batch = move_batch(batch, device)
        start = time.perf_counter()
        out = model(**model_inputs(batch))
        seconds += time.perf_counter() - start
        for b in range(len(batch["image_ids"])):
            real = ~batch["pad_mask"][b]
            height, width = batch["image_sizes"][b].tolist()
            boxes = batch["boxes"][b][real].cpu().numpy()
            pair = out["pred_affinity"][b][real][:, real].float().cpu().numpy()  # [N, N]
            images.append(PerBoxOutputs(
                logits=out["pred_logits"][b][real].float().cpu().numpy(),
                features=out["features"][b][real].float().cpu().numpy(),
                centres=box_centres(boxes, width, height),
                boxes=boxes,
                categories=batch["categories"][b][real].cpu().numpy(),
                groups=batch["groups"][b][real].cpu().numpy(),
                affinity=(pair + pair.T) / 2,
                clusters=(out["pred_assign"][b][real].argmax(-1).cpu().numpy()
                          if "pred_assign" in out else None),
            ))
    count = max(len(images), 1)
    return images, 1000.0 * seconds / count, 1000.0 * (time.process_time() - cpu) / count


def make_scenes(images: list[PerBoxOutputs], *, true_categories: bool,
                appearance: bool, agnostic: bool = False) -> list[Scene]:
    """Scenes split by the true or the predicted categories (or all one with ``agnostic``), with
    the L2-normalised features as appearance or none (position only), and the boxes."""
    scenes = []
    for im in images:
        zeros = np.zeros(len(im.categories), dtype=np.int64)
        scenes.append(Scene(
            centres=im.centres,
            categories=zeros if agnostic else (
                im.categories if true_categories else im.logits.argmax(1)),
            truth=cluster_labels(zeros if agnostic else im.categories, im.groups),
            appearance=l2_normalise(im.features) if appearance else np.zeros((0, 0)),
            boxes=im.boxes,
        ))
    return scenes


def candidates(method: str) -> list[Setting]:
    """The settings a clustering baseline is tuned over."""
    if method == "geo_alone":
        return [Setting(Singletons(), on="boxes")]
    if method == "geo_line":
        return [Setting(LineLinker(max_gap=float(g), min_overlap=o, max_line_gap=v), on="boxes")
                for o in LINE_OVERLAPS for v in NEXT_LINE_GAPS for g in LINE_GAPS]
    if method == "pos_agglo":
        return [Setting(Agglomerative(threshold=float(t), linkage=link))
                for link in ("single", "average", "ward") for t in THRESHOLDS_POSITION]
    if method == "pos_dbscan":
        return [Setting(DBSCANClusterer(eps=float(e), min_samples=m))
                for m in (1, 2, 3) for e in EPS_POSITION]
    if method == "sq_agglo":
        return [Setting(Agglomerative(threshold=float(t), linkage=link), position_weight=w)
                for link in ("single", "average", "ward") for w in POSITION_WEIGHTS
                for t in THRESHOLDS_FEATURES]
    if method == "sq_hdbscan":
        return [Setting(HDBSCANClusterer(min_cluster_size=mcs, min_samples=ms,
                                         allow_single_cluster=single), position_weight=w)
                for w in POSITION_WEIGHTS for mcs in (2, 3, 4)
                for ms in (1, None) for single in (False, True)]
    raise ValueError(method)


GroupFn = Callable[[Scene], np.ndarray]


def tune_method(method: str, tune_scenes: list[Scene], score: str) -> tuple[GroupFn, str, float]:
    """The grouping function of ``method`` tuned on ``tune_scenes`` for ``score``, its setting
    in words, and the tuning seconds."""
    start = time.perf_counter()
    if method == "pos_kmeans":
        return kmeans_oracle_groups, "k = true number of groups per category", 0.0
    best, train_score = tune(tune_scenes, candidates(method), score)
    label = {"ari": "ARI", "exact_f1": "exact-group F1"}[score]
    setting_text = f"{best.describe()} (train {label} {train_score:.3f})"
    if method.startswith("pos_"):
        setting_text = best.clusterer.describe() + f" (train {label} {train_score:.3f})"

    def group_fn(scene: Scene, best: Setting = best) -> np.ndarray:
        return scene_groups(scene, best)

    return group_fn, setting_text, time.perf_counter() - start


def vote_categories(logits: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """int64 [N]: each group's category = argmax of the summed softmax of its boxes' logits
    [N, C] (``groups`` [N] one partition, categories ignored)."""
    if len(groups) == 0:
        return np.zeros(0, dtype=np.int64)
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    _, ids = np.unique(groups, return_inverse=True)
    sums = np.zeros((ids.max() + 1, logits.shape[1]))
    np.add.at(sums, ids, prob)
    return sums.argmax(1)[ids].astype(np.int64)
