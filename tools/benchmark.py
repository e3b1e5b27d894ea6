"""Learned grouping vs the status quo: every method on the same boxes, splits and metrics.

Methods (``--only`` takes these keys):

* position only — ``pos_dbscan``, ``pos_agglo``: DBSCAN / agglomerative clustering of box
  centres, settings tuned on train; ``pos_kmeans``: k-means given the true number of groups (an
  oracle). Each runs twice: within the per-box classifier's predicted categories (the realistic
  row) and within the true categories (marked oracle; it flatters them).
* the status quo — ``sq_agglo``, ``sq_hdbscan``: a per-box classifier (same backbone, no set
  context; ``model.relation.layers=0 loss.pair_weight=0``), then agglomerative clustering /
  scikit-learn HDBSCAN of its L2-normalised features (optionally with the weighted box centres)
  within each predicted category, settings tuned on train.
* learned pairwise similarity without set context (L2C, Hsu et al.) — ``l2c_kcl``, ``l2c_mcl``:
  KCL / MCL on a cluster-assignment head over per-box features, decoded by detgroup's decoder.
* detgroup — ``no_relation`` (``model.relation.layers=0``, the ablation) and ``full``.

Every trained model is scored on the whole val set with the same decoder (``gaec-kl``) and
``detgroup.metrics``. Results go to ``OUT/<dataset>/results.json``, ``OUT/<dataset>/section.md``
and the dataset's section of BENCHMARKS.md.

Trained models live in ``OUT/<dataset>/models/<variant>``. Running the same command again
resumes an interrupted training (``last.pt``) and reuses finished ones (``model.pt``), so an
interrupted benchmark is finished by re-running it; ``--reuse DIR`` takes finished models (and
the data) from an earlier ``--out``. A model trained with another recipe is an error.

Usage::

    python tools/benchmark.py                      # 1000 train / 200 val synthetic, 8 epochs
    python tools/benchmark.py --quick              # tiny smoke run (1-3 minutes)
    python tools/benchmark.py --reuse runs/benchmark --only full,sq_agglo   # re-score only
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchmarks_md import write_section
from torch.utils.data import DataLoader, Subset

from detgroup.atomic import atomic_open
from detgroup.baselines import (
    Agglomerative,
    DBSCANClusterer,
    HDBSCANClusterer,
    Scene,
    Setting,
    box_centres,
    cluster_labels,
    kmeans_oracle_groups,
    l2_normalise,
    scene_groups,
    tune,
)
from detgroup.config import Config, config_to_dict, load_config
from detgroup.data.coco_groups import load_coco_groups
from detgroup.data.dataset import GroupDataset, collate_groups
from detgroup.data.synth import SynthConfig, generate_synthetic
from detgroup.engine.checkpoint import load_checkpoint, load_model_from_checkpoint
from detgroup.engine.evaluate import PostProcess, evaluate, move_batch
from detgroup.engine.train import train
from detgroup.metrics import GroupingEvaluator

log = logging.getLogger("benchmark")

ROOT = Path(__file__).resolve().parent.parent
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
    "position": "position only",
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

METRICS = (
    "cat_acc", "cat_macro_f1", "ari", "nmi", "ami", "hungarian_acc", "pair_precision",
    "pair_recall", "pair_f1", "group_precision", "group_recall", "group_f1",
    "exact_group_precision", "exact_group_recall", "exact_group_f1", "group_pq", "num_groups_mae",
)

# (metric, threshold, label) targets for the full model; plus the error-ratio target
TARGETS = (("cat_acc", 0.99, "category accuracy"), ("ari", 0.97, "ARI"),
           ("exact_group_f1", 0.90, "exact-group F1"))
ERROR_RATIO_TARGET = 2.0

# tuning grids of the clustering baselines
THRESHOLDS_POSITION = np.geomspace(0.01, 2.0, 36)
THRESHOLDS_FEATURES = np.geomspace(0.02, 16.0, 48)
EPS_POSITION = np.geomspace(0.01, 0.4, 30)
# up to weights where the centres dominate the unit-norm features (→ position only)
POSITION_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


@dataclass
class DatasetSpec:
    """A set to benchmark on: its COCO-with-groups files and its recipe's config overrides."""

    key: str
    title: str
    description: str
    train_ann: Path
    train_images: Path
    val_ann: Path
    val_images: Path
    overrides: list[str] = field(default_factory=list)


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


@dataclass
class PerBoxOutputs:
    """A model's per-box outputs and the ground truth of one image (numpy).

    ``logits`` [N, C]; ``features`` [N, D]; ``centres`` [N, 2] (fractions of the image size);
    ``categories``, ``groups`` [N] ground truth.
    """

    logits: np.ndarray
    features: np.ndarray
    centres: np.ndarray
    categories: np.ndarray
    groups: np.ndarray


def synth_dataset(args: argparse.Namespace, data_dir: Path) -> DatasetSpec:
    """The synthetic "pets in groups" set, generated into ``data_dir`` unless already there."""
    cfg = SynthConfig(num_train=args.train_images, num_val=args.val_images, seed=args.seed,
                      image_size=128 if args.quick else 256)
    ann = {split: data_dir / split / "annotations.json" for split in ("train", "val")}
    if all(p.is_file() for p in ann.values()):
        stored = json.loads(ann["val"].read_text())["info"]["synth_config"]
        if stored != asdict(cfg):
            raise SystemExit(f"{data_dir}: holds a synthetic set made with {stored}, "
                             f"not {asdict(cfg)}; use another --out or matching flags")
        log.info("reusing the synthetic set in %s", data_dir)
    else:
        log.info("generating %d train / %d val synthetic images into %s",
                 cfg.num_train, cfg.num_val, data_dir)
        generate_synthetic(data_dir, cfg)
    return DatasetSpec(
        key="synth", title="synthetic",
        description=(f"synthetic pets in groups: {cfg.num_train} train / {cfg.num_val} val "
                     f"images of {cfg.image_size} px, seed {cfg.seed}, categories "
                     f"{', '.join(cfg.categories)}"),
        train_ann=ann["train"], train_images=data_dir / "train" / "images",
        val_ann=ann["val"], val_images=data_dir / "val" / "images",
    )


# Every set with a recipe is benchmarked. A real set joins by adding a function that returns its
# DatasetSpec (converted files + its configs/ recipe as overrides) under its key here.
DATASETS: dict[str, Callable[[argparse.Namespace, Path], DatasetSpec]] = {
    "synth": synth_dataset,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-images", type=int, default=1000, help="synthetic train images")
    ap.add_argument("--val-images", type=int, default=200, help="synthetic val images")
    ap.add_argument("--epochs", type=int, default=8, help="training epochs of every model")
    ap.add_argument("--seed", type=int, default=0, help="data and training seed")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmark",
                    help="output folder (data, models, results)")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="earlier --out folder: its data and trained models are used, not redone")
    ap.add_argument("--only", default=",".join(METHODS),
                    help=f"comma-separated subset of: {', '.join(METHODS)}")
    ap.add_argument("--datasets", default=",".join(DATASETS),
                    help=f"comma-separated subset of: {', '.join(DATASETS)}")
    ap.add_argument("--tune-images", type=int, default=200,
                    help="train images the clustering baselines are tuned on")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--benchmarks-md", type=Path, default=None,
                    help="Markdown file whose section is replaced (default: BENCHMARKS.md at the "
                         "repository root; with --quick: none)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny smoke run: 32 train / 12 val 128 px images, tiny models, 1 epoch")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for every trained model")
    args = ap.parse_args(argv)
    args.methods = [m.strip() for m in args.only.split(",") if m.strip()]
    args.dataset_keys = [d.strip() for d in args.datasets.split(",") if d.strip()]
    for name, chosen, known in (("--only", args.methods, METHODS),
                                ("--datasets", args.dataset_keys, DATASETS)):
        unknown = [c for c in chosen if c not in known]
        if unknown or not chosen:
            ap.error(f"{name}: unknown or empty choice {unknown}; pick from {', '.join(known)}")
    if args.quick:
        args.train_images, args.val_images = 32, 12
        args.epochs, args.tune_images = 1, 32
        args.set = [
            "model.dim=32", "model.relation.layers=2", "model.pair_hidden=32",
            "model.backbone.width=16", "model.backbone.out_channels=16",
            "data.batch_size=4", "train.warmup_steps=2", *args.set,
        ]
    if args.benchmarks_md is None and not args.quick:
        args.benchmarks_md = ROOT / "BENCHMARKS.md"
    return args


def variant_config(variant: str, spec: DatasetSpec, args: argparse.Namespace) -> Config:
    """The training config of ``variant`` on ``spec``."""
    return load_config(None, [
        f"data.train_ann={spec.train_ann}", f"data.train_images={spec.train_images}",
        f"data.val_ann={spec.val_ann}", f"data.val_images={spec.val_images}",
        *spec.overrides, *args.set, *VARIANTS[variant],
        f"train.epochs={args.epochs}", f"train.seed={args.seed}", f"train.threads={args.threads}",
        # One val pass, after the last epoch: model.pt is the final weights for every variant
        # (no choice of epoch by val score), and a few images suffice for that pass's log line
        # because this tool scores the whole val set itself.
        f"train.eval_every={args.epochs}", "train.max_val_images=8",
    ])


def _recipe(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict without what does not change the trained model (file locations, threads,
    device, the category names filled in by training)."""
    recipe = json.loads(json.dumps(config))
    recipe.pop("category_names", None)
    for key in ("train_ann", "train_images", "val_ann", "val_images"):
        recipe["data"].pop(key, None)
    for key in ("threads", "device"):
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
    wanted = _recipe(config_to_dict(cfg))
    run = args.out / spec.key / "models" / variant
    for base in ([args.reuse] if args.reuse is not None else []) + [args.out]:
        found = base / spec.key / "models" / variant
        for name in ("model.pt", "last.pt") if base == args.out else ("model.pt",):
            if not (found / name).is_file():
                continue
            if _recipe(load_checkpoint(found / name)["config"]) != wanted:
                raise SystemExit(f"{found / name}: trained with another recipe than this run's "
                                 f"(e.g. --epochs, --set); use another --out")
            if name == "model.pt":
                log.info("%s: reusing %s", variant, found / name)
                return found / name, training_seconds(found), True
    resume = (run / "last.pt").is_file()
    log.info("%s: %s %d epochs in %s", variant, "resuming" if resume else "training",
             args.epochs, run)
    train(cfg, out_dir=run, resume=resume, progress=False)
    seconds = training_seconds(run)
    log.info("%s: trained in %.0f s", variant, seconds or 0.0)
    return run / "model.pt", seconds, False


def val_loader(spec: DatasetSpec) -> DataLoader:
    return DataLoader(GroupDataset(spec.val_ann, spec.val_images), batch_size=8,
                      collate_fn=collate_groups)


def score_model(ckpt: Path, loader: DataLoader, num_classes: int,
                device: torch.device) -> tuple[dict[str, float], float, float, int]:
    """Val metrics of a checkpoint decoded by DECODER, inference wall ms and CPU ms per image
    (see :class:`Row`), and its training epochs."""
    model, cfg = load_model_from_checkpoint(ckpt)
    cpu = time.process_time()
    summary, _ = evaluate(model.to(device), loader, num_classes=num_classes,
                          postprocess=PostProcess(method=DECODER), device=device)
    cpu_ms = 1000.0 * (time.process_time() - cpu) / max(summary["num_images"], 1)
    wall_ms = 1000.0 * (summary["model_seconds"] + summary["decode_seconds"])
    return summary, wall_ms, cpu_ms, cfg.train.epochs


@torch.no_grad()
def per_box_outputs(ckpt: Path, loader: DataLoader,
                    device: torch.device) -> tuple[list[PerBoxOutputs], float, float]:
    """The per-box outputs of every image of ``loader``, and per image the model's wall ms
    (forward only) and the pass's CPU ms (image loading included), as :func:`score_model`."""
    model, _ = load_model_from_checkpoint(ckpt)
    model = model.to(device)
    images: list[PerBoxOutputs] = []
    seconds = 0.0
    cpu = time.process_time()
    for batch in loader:
        batch = move_batch(batch, device)
        start = time.perf_counter()
        out = model(batch["images"], batch["boxes"], batch["pad_mask"], batch["image_sizes"])
        seconds += time.perf_counter() - start
        for b in range(len(batch["image_ids"])):
            real = ~batch["pad_mask"][b]
            height, width = batch["image_sizes"][b].tolist()
            images.append(PerBoxOutputs(
                logits=out["pred_logits"][b][real].float().cpu().numpy(),
                features=out["features"][b][real].float().cpu().numpy(),
                centres=box_centres(batch["boxes"][b][real].cpu().numpy(), width, height),
                categories=batch["categories"][b][real].cpu().numpy(),
                groups=batch["groups"][b][real].cpu().numpy(),
            ))
    count = max(len(images), 1)
    return images, 1000.0 * seconds / count, 1000.0 * (time.process_time() - cpu) / count


def make_scenes(images: list[PerBoxOutputs], *, true_categories: bool,
                appearance: bool) -> list[Scene]:
    """Scenes split by the true or the predicted categories, with the L2-normalised features as
    appearance or none (position only)."""
    return [
        Scene(
            centres=im.centres,
            categories=im.categories if true_categories else im.logits.argmax(1),
            truth=cluster_labels(im.categories, im.groups),
            appearance=l2_normalise(im.features) if appearance else np.zeros((0, 0)),
        )
        for im in images
    ]


def candidates(method: str) -> list[Setting]:
    """The settings a clustering baseline is tuned over."""
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


def score_clustering(
    method: str, tune_scenes: list[Scene], val_scenes: list[Scene], gt: list[PerBoxOutputs],
    num_classes: int,
) -> tuple[dict[str, float], str, float, float, float]:
    """Tune ``method`` on ``tune_scenes``, score it on ``val_scenes``.

    Returns the val metrics, the chosen setting, tuning seconds, and the grouping's wall ms and
    CPU ms per image.
    """
    start = time.perf_counter()
    if method == "pos_kmeans":
        setting_text = "k = true number of groups per category"
        group_fn: Callable[[Scene], np.ndarray] = kmeans_oracle_groups
    else:
        best, train_ari = tune(tune_scenes, candidates(method))
        setting_text = f"{best.describe()} (train ARI {train_ari:.3f})"
        if method.startswith("pos_"):
            setting_text = best.clusterer.describe() + f" (train ARI {train_ari:.3f})"

        def group_fn(scene: Scene, best: Setting = best) -> np.ndarray:
            return scene_groups(scene, best)

    tune_seconds = time.perf_counter() - start
    evaluator = GroupingEvaluator(num_classes=num_classes)
    seconds = cpu = 0.0
    for scene, im in zip(val_scenes, gt, strict=True):
        start, start_cpu = time.perf_counter(), time.process_time()
        groups = group_fn(scene)
        seconds += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        evaluator.update(im.categories, im.groups, scene.categories, groups)
    count = max(len(gt), 1)
    return (evaluator.summary(), setting_text, tune_seconds, 1000.0 * seconds / count,
            1000.0 * cpu / count)


def run_dataset(
    spec: DatasetSpec, args: argparse.Namespace, device: torch.device
) -> tuple[list[Row], list[str]]:
    """Train (or reuse) what the chosen methods need, and score every method on val.

    Returns the rows and the variants whose models were trained by an earlier invocation.
    """
    num_classes = len(load_coco_groups(spec.val_ann).category_names)
    loader = val_loader(spec)
    needed = [v for v in VARIANTS if any(METHODS[m].variant == v for m in args.methods)]
    trained = {v: train_or_reuse(v, spec, args) for v in needed}
    rows: list[Row] = []

    clustering = [m for m in args.methods if METHODS[m].variant == "classifier"]
    if clustering:
        ckpt, clf_train_s, _ = trained["classifier"]
        tune_set = GroupDataset(spec.train_ann, spec.train_images)
        tune_items = list(range(min(args.tune_images, len(tune_set))))
        tune_loader = DataLoader(Subset(tune_set, tune_items), batch_size=8,
                                 collate_fn=collate_groups)
        log.info("per-box classifier outputs on %d train and %d val images", len(tune_items),
                 len(loader.dataset))
        tune_out, _, _ = per_box_outputs(ckpt, tune_loader, device)
        val_out, clf_ms, clf_cpu_ms = per_box_outputs(ckpt, loader, device)
        for method in clustering:
            appearance = method.startswith("sq_")
            for true_cats in ([False, True] if not appearance else [False]):
                log.info("%s within the %s categories", method,
                         "true" if true_cats else "predicted")
                metrics, setting, tune_s, group_ms, group_cpu_ms = score_clustering(
                    method,
                    make_scenes(tune_out, true_categories=true_cats, appearance=appearance),
                    make_scenes(val_out, true_categories=true_cats, appearance=appearance),
                    val_out, num_classes,
                )
                rows.append(Row(
                    key=method + ("_true_categories" if true_cats else ""),
                    family=METHODS[method].family, name=METHODS[method].name,
                    categories="true (oracle)" if true_cats else "per-box classifier",
                    setting=setting, metrics=metrics,
                    train_seconds=None if true_cats else clf_train_s, tune_seconds=tune_s,
                    infer_ms=group_ms + (0.0 if true_cats else clf_ms),
                    infer_cpu_ms=group_cpu_ms + (0.0 if true_cats else clf_cpu_ms),
                    oracle=true_cats or method == "pos_kmeans",
                ))

    for method in args.methods:
        if METHODS[method].variant == "classifier":
            continue
        ckpt, train_s, _ = trained[METHODS[method].variant]
        log.info("%s: scoring on val", method)
        metrics, infer_ms, cpu_ms, epochs = score_model(ckpt, loader, num_classes, device)
        rows.append(Row(
            key=method, family=METHODS[method].family, name=METHODS[method].name,
            categories="own category head", setting=f"{epochs} epochs, decoder {DECODER}",
            metrics=metrics, train_seconds=train_s, tune_seconds=None, infer_ms=infer_ms,
            infer_cpu_ms=cpu_ms,
        ))
    order = list(FAMILIES)
    rows.sort(key=lambda r: (order.index(r.family), r.oracle))
    return rows, [v for v, (_, _, earlier) in trained.items() if earlier]


def error_ratio(baseline_ari: float, ari: float) -> float:
    """(1 − baseline ARI) / (1 − ARI): how many times fewer grouping errors; inf at ARI = 1."""
    return math.inf if ari >= 1.0 else (1.0 - baseline_ari) / (1.0 - ari)


def best_row(rows: list[Row], *families: str) -> Row | None:
    """The non-oracle row of ``families`` with the highest val ARI (None if there is none)."""
    pool = [r for r in rows if r.family in families and not r.oracle and r.key != "full"]
    return max(pool, key=lambda r: r.metrics["ari"], default=None)


def headline(rows: list[Row]) -> dict[str, Any] | None:
    """The full model against the best realistic "classify each box, then cluster without
    supervision" row (by val ARI: feature or position clustering within the per-box classifier's
    categories), or None if one is missing."""
    full = next((r for r in rows if r.key == "full"), None)
    best = best_row(rows, "status_quo", "position")
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


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    return "∞" if math.isinf(x) else f"{x:.{digits}f}"


def _seconds(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"


def machine_text(device: torch.device, threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {threads} torch threads"
    return (f"{cpu}, {os.cpu_count()} cores visible; {where}; Python {platform.python_version()},"
            f" torch {torch.__version__}, {platform.system()} {platform.release()}")


def render(spec: DatasetSpec, rows: list[Row], meta: dict[str, Any]) -> str:
    """The dataset's BENCHMARKS.md section (Markdown, heading included)."""
    lines = [f"## Learned grouping vs the status quo ({spec.title})", ""]
    if meta.get("partial"):
        lines += [f"**Partial results**: {meta['partial']}", ""]
    lines += [
        f"Measured {meta['date']} on {meta['machine']}. The machine is shared: load average "
        f"{meta['load_start']:.1f} at the start, {meta['load_end']:.1f} at the end, so times are "
        "indicative only.",
        "",
        f"Command: `{meta['command']}`" + (f"; {meta['reused']}." if meta["reused"] else ""),
        "",
        f"Data: {spec.description}; every method sees the same ground-truth boxes. Metrics on the "
        "whole val set (`detgroup.metrics`; ARI per image averaged, group/pair F1 pooled). "
        "Clustering baselines are tuned on train images (grid search for the best mean ARI); "
        f"trained models decode with `{DECODER}`.",
        "",
    ]
    head = headline(rows)
    full = next((r for r in rows if r.key == "full"), None)
    if head is not None:
        lines += [
            f"**Headline**: detgroup ARI {head['ari']:.3f} vs {head['baseline_ari']:.3f} for the "
            "best status-quo baseline, i.e. the best realistic row that classifies each box and "
            f"then clusters without supervision ({head['baseline_name']}), "
            f"×{_fmt(head['ari_ratio'], 2)}; "
            f"exact-group F1 {head['exact_group_f1']:.3f} vs "
            f"{head['baseline_exact_group_f1']:.3f}, ×{_fmt(head['exact_group_f1_ratio'], 2)}; "
            f"grouping error (1 − ARI) ×{_fmt(head['error_ratio'], 1)} lower.",
            "",
        ]
    others = [best_row(rows, family) for family in FAMILIES if family != "detgroup"]
    others.append(next((r for r in rows if r.key == "no_relation"), None))
    others = [r for r in others if r is not None]
    if full is not None and others:
        lines += ["| detgroup compared with (best realistic method of each family) | its ARI | "
                  "its (1 − ARI) / detgroup's |", "|---|---|---|"]
        lines += [f"| {r.name} | {r.metrics['ari']:.3f} | "
                  f"×{_fmt(error_ratio(r.metrics['ari'], full.metrics['ari']), 2)} |"
                  for r in others]
        lines.append("")
    if full is not None:
        lines += ["| target (detgroup, synthetic val) | value | met |", "|---|---|---|"]
        for key, threshold, label in TARGETS:
            value = full.metrics[key]
            lines.append(f"| {label} ≥ {threshold:.2f} | {value:.3f} | "
                         f"{'yes' if value >= threshold else '**missed**'} |")
        if head is not None:
            ok = head["error_ratio"] >= ERROR_RATIO_TARGET
            lines.append(f"| (1 − ARI) ≥ {ERROR_RATIO_TARGET:g}× lower than the best status quo "
                         f"| ×{_fmt(head['error_ratio'], 1)} | {'yes' if ok else '**missed**'} |")
        lines.append("")
    lines += [
        "| family | method | categories | cat acc | ARI | exact-group F1 | group F1 | "
        "pair F1 | group PQ | train s | tune s | infer ms/img | CPU ms/img |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r.metrics
        name = f"{r.name} †" if r.oracle else r.name
        lines.append(
            f"| {FAMILIES[r.family]} | {name} | {r.categories} | {m['cat_acc']:.3f} | "
            f"{m['ari']:.3f} | {m['exact_group_f1']:.3f} | {m['group_f1']:.3f} | "
            f"{m['pair_f1']:.3f} | {m['group_pq']:.3f} | {_seconds(r.train_seconds)} | "
            f"{_seconds(r.tune_seconds)} | {r.infer_ms:.1f} | {r.infer_cpu_ms:.1f} |"
        )
    lines += [
        "",
        "† oracle: uses ground truth the user does not have (the true categories, or the true "
        "number of groups); shown for reference, never counted as a baseline to beat. "
        "Position-only rows within the classifier's categories are the realistic ones. "
        "*train s*: training the model the row needs (the per-box classifier for the clustering "
        "rows; sum of its epoch times); *tune s*: the grid search on train; "
        "*infer ms/img*: wall time of the model forward (batches of 8) plus grouping, per val "
        "image; *CPU ms/img*: CPU time of this process for the whole val pass (image loading "
        "included; less sensitive to the other jobs on the machine than wall time).",
        "",
        "Chosen settings:",
        "",
    ]
    lines += [f"* {r.key}: {r.setting}" for r in rows]
    lines += ["", "All metrics:", "",
              "| method | categories | " + " | ".join(METRICS) + " |",
              "|---|---|" + "---|" * len(METRICS)]
    for r in rows:
        lines.append(f"| {r.key} | {r.categories} | "
                     + " | ".join(_fmt(r.metrics[k]) for k in METRICS) + " |")
    return "\n".join(lines) + "\n"


def without_only(argv: list[str]) -> list[str]:
    """``argv`` without its ``--only`` option (the command that runs every method)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--only":
            skip = True
        elif not arg.startswith("--only="):
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    given = list(argv if argv is not None else sys.argv[1:])
    command = shlex.join(["python", "tools/benchmark.py", *given])
    finish = shlex.join(["python", "tools/benchmark.py", *without_only(given)])
    for key in args.dataset_keys:
        load_start = os.getloadavg()[0]
        data_base = args.reuse if args.reuse and (args.reuse / key / "data").is_dir() else args.out
        spec = DATASETS[key](args, data_base / key / "data")
        rows, reused = run_dataset(spec, args, device)
        meta = {
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "machine": machine_text(device, args.threads), "command": command,
            "load_start": load_start, "load_end": os.getloadavg()[0],
            "partial": "" if set(args.methods) == set(METHODS) else
            f"only {', '.join(args.methods)} were run (--only); missing: "
            f"{', '.join(m for m in METHODS if m not in args.methods)}. Finish with `{finish}` "
            "(it reuses the finished models and resumes an interrupted training).",
            "reused": f"the models {', '.join(reused)} were trained by an earlier invocation "
                      "(their train s come from their log.csv); all tuning and scoring ran in "
                      "this one" if reused else "",
        }
        text = render(spec, rows, meta)
        out = args.out / key
        out.mkdir(parents=True, exist_ok=True)
        with atomic_open(out / "results.json", "w") as f:  # json.dump: an ∞ ratio is allowed
            json.dump({
                "meta": meta, "dataset": {k: str(v) for k, v in asdict(spec).items()},
                "rows": [asdict(r) for r in rows], "headline": headline(rows),
            }, f, indent=2)
        with atomic_open(out / "section.md", "w") as f:
            f.write(text)
        if args.benchmarks_md is not None:
            write_section(args.benchmarks_md, text)
            log.info("updated the %s section of %s", spec.title, args.benchmarks_md)
        print(text)


if __name__ == "__main__":
    main()
