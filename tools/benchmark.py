"""Learned grouping vs the status quo: every method on the same boxes, splits and metrics.

Data sets (``--datasets``): ``synth`` (default; generated), ``funsd`` and ``omniglot`` (converted
from ``../shared/data/`` with the settings of their recipes ``configs/funsd.yaml`` and
``configs/omniglot.yaml``, whose epochs they train for unless ``--epochs`` is given). Each set
names the methods it runs (FUNSD: the layout rules, position clustering, the ablation and the
full model; Omniglot: the status quo, L2C and detgroup) and may score more splits (Omniglot:
test, and alphabets never trained on, categories ignored).

Methods (``--only`` takes these keys):

* layout rules on the boxes — ``geo_alone`` (every box alone), ``geo_line`` (same-line /
  small-gap linking, optionally onto the next line, ``baselines.LineLinker``), tuned on train;
* position only — ``pos_dbscan``, ``pos_agglo``: DBSCAN / agglomerative clustering of box
  centres, settings tuned on train; ``pos_kmeans``: k-means given the true number of groups (an
  oracle). Each runs twice: within the per-box classifier's predicted categories (the realistic
  row) and within the true categories (marked oracle; it flatters them). On FUNSD (``vote``)
  also category-agnostic, each group then voting its category from the per-box probabilities.
* the status quo — ``sq_agglo``, ``sq_hdbscan``: a per-box classifier (same backbone, no set
  context; ``model.relation.layers=0 loss.pair_weight=0``), then agglomerative clustering /
  scikit-learn HDBSCAN of its L2-normalised features (optionally with the weighted box centres)
  within each predicted category, settings tuned on train.
* learned pairwise similarity without set context (L2C, Hsu et al.) — ``l2c_kcl``, ``l2c_mcl``:
  KCL / MCL on a cluster-assignment head over per-box features, decoded by detgroup's decoder.
* detgroup — ``no_relation`` (``model.relation.layers=0``, the ablation) and ``full``.

Every trained model is scored on the whole val set with its weights after the last epoch, the
same decoder (``gaec-kl``; pair-logit bias from the recipe's ``decoder.calibrate``) and
``detgroup.metrics``. A set may stand one trained model in for another (FUNSD and Omniglot: the
ablation's category head and features serve the clustering rows, saving a training). Results go
to ``OUT/<dataset>/results.json``, ``OUT/<dataset>/section.md`` and the dataset's section of
BENCHMARKS.md.

Trained models live in ``OUT/<dataset>/models/<variant>``. Running the same command again
resumes an interrupted training (``last.pt``) and reuses finished ones (``model.pt``), so an
interrupted benchmark is finished by re-running it; ``--reuse DIR`` takes finished models (and
the data) from an earlier ``--out``. A model trained with another recipe is an error.

Usage::

    python tools/benchmark.py                      # 1000 train / 200 val synthetic, 8 epochs
    python tools/benchmark.py --quick              # tiny smoke run (1-3 minutes)
    python tools/benchmark.py --reuse runs/benchmark --only full,sq_agglo   # re-score only
    python tools/benchmark.py --datasets funsd     # FUNSD, the recipe's 30 epochs (hours on CPU)
    python tools/benchmark.py --datasets omniglot  # Omniglot and the L2C baselines
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
from detgroup.config import Config, config_to_dict, load_config
from detgroup.data.coco_groups import load_coco_groups
from detgroup.data.dataset import GroupDataset, collate_groups, model_inputs
from detgroup.data.synth import SynthConfig, generate_synthetic
from detgroup.engine.checkpoint import (
    checkpoint_config,
    load_checkpoint,
    load_model_from_checkpoint,
)
from detgroup.engine.evaluate import PostProcess, evaluate, move_batch
from detgroup.engine.train import train
from detgroup.losses import calibrated_pair_bias
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

METRICS = (
    "cat_acc", "cat_macro_f1", "ari", "nmi", "ami", "hungarian_acc", "pair_precision",
    "pair_recall", "pair_f1", "group_precision", "group_recall", "group_f1",
    "exact_group_precision", "exact_group_recall", "exact_group_f1", "group_pq", "num_groups_mae",
)

# (metric, threshold, label) targets for the full model; plus the error-ratio target
TARGETS = (("cat_acc", 0.99, "category accuracy"), ("ari", 0.97, "ARI"),
           ("exact_group_f1", 0.90, "exact-group F1"))
ERROR_RATIO_TARGET = 2.0

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
    variant_overrides: dict[str, list[str]] = field(default_factory=dict)  # per variant, last
    config: Path | None = None  # the set's recipe (configs/*.yaml); None: the built-in defaults
    epochs: int | None = None  # None: the recipe's
    methods: tuple[str, ...] = DEFAULT_METHODS  # run when --only is not given
    # variant -> the trained variant that stands in for it (e.g. the ablation's category head
    # as the per-box classifier of the clustering rows, to save a training on a costly set)
    aliases: dict[str, str] = field(default_factory=dict)
    targets: tuple[tuple[str, float, str], ...] = TARGETS
    tune_score: str = "ari"  # what the clustering baselines are tuned for (baselines.SCORES)
    headline_families: tuple[str, ...] = ("status_quo", "position")
    # also run the position/geometry methods category-agnostic, each group then taking the
    # category with the highest summed probability of its boxes ("group, then vote")
    vote: bool = False
    extra: list[ExtraSplit] = field(default_factory=list)  # more splits scored the same way


@dataclass
class ExtraSplit:
    """Another split scored with the models and settings chosen on train/val (e.g. test, or
    scenes of classes never seen). ``agnostic``: categories are ignored (all set to one) in the
    truth, the decoder and the clustering."""

    name: str
    ann: Path
    images: Path
    agnostic: bool = False


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
        key="synth", title="synthetic", epochs=args.epochs or 8,
        description=(f"synthetic pets in groups: {cfg.num_train} train / {cfg.num_val} val "
                     f"images of {cfg.image_size} px, seed {cfg.seed}, categories "
                     f"{', '.join(cfg.categories)}"),
        train_ann=ann["train"], train_images=data_dir / "train" / "images",
        val_ann=ann["val"], val_images=data_dir / "val" / "images",
    )


# Every set with a recipe is benchmarked. A real set joins by adding a function that returns its
# DatasetSpec (converted files + its configs/ recipe as overrides) under its key here.
SHARED_DATA = ROOT.parent / "shared" / "data"


def _converted(data_dir: Path, splits: Sequence[str], convert: Callable[[], object]) -> None:
    if all((data_dir / s / "annotations.json").is_file() for s in splits):
        log.info("reusing the converted set in %s", data_dir)
    else:
        log.info("converting into %s", data_dir)
        convert()


def funsd_dataset(args: argparse.Namespace, data_dir: Path) -> DatasetSpec:
    """FUNSD words -> entities (``configs/funsd.yaml``), split as ``datasets/README_funsd.md``."""
    from detgroup.data.funsd import convert_funsd

    src = SHARED_DATA / "funsd" / "training_data"
    if not src.is_dir():
        raise SystemExit(f"{src}: not found; FUNSD is read from ../shared/data (see its README)")
    _converted(data_dir, ("train", "val"), lambda: convert_funsd(src, data_dir))
    return DatasetSpec(
        key="funsd", title="FUNSD",
        description="FUNSD training forms, box = word, category = its entity's label "
                    "(question / answer / header / other), group = the entity; 119 train / 30 val "
                    "forms (the fixed split of datasets/README_funsd.md), 18,284 / 4,228 words",
        train_ann=data_dir / "train" / "annotations.json",
        train_images=data_dir / "train" / "images",
        val_ann=data_dir / "val" / "annotations.json", val_images=data_dir / "val" / "images",
        config=ROOT / "configs" / "funsd.yaml", epochs=args.epochs,
        methods=("geo_alone", "geo_line", "pos_agglo", "pos_dbscan", "no_relation", "full"),
        aliases={"classifier": "no_relation"}, vote=True,
        targets=(("cat_acc", 0.80, "word category accuracy"),),
        tune_score="exact_f1", headline_families=("position",),
    )


def omniglot_dataset(args: argparse.Namespace, data_dir: Path) -> DatasetSpec:
    """Omniglot glyph scenes (``configs/omniglot.yaml``; datasets/README_omniglot.md)."""
    from detgroup.data.omniglot import convert_omniglot

    src = SHARED_DATA / "omniglot"
    if not (src / "images_background.npz").is_file():
        raise SystemExit(f"{src}: no images_background.npz; Omniglot is read from ../shared/data")
    _converted(data_dir, ("train", "val", "test", "unseen"), lambda: convert_omniglot(
        src, data_dir, canvas=256, glyph_size=(20, 28), eval_max_chars=20,
        unlisted_train_runs=3))
    split = {s: (data_dir / s / "annotations.json", data_dir / s / "images")
             for s in ("train", "val", "test", "unseen")}
    return DatasetSpec(
        key="omniglot", title="Omniglot",
        description="Omniglot glyph scenes (`detgroup data omniglot --canvas 256 --glyph-size 20 "
                    "28 --eval-max-chars 20 --unlisted-train-runs 3`), box = glyph, category = "
                    "alphabet (10 listed + `other`), group = character; train: 2,000 scenes of "
                    "536 characters (189 of the listed alphabets, 347 unlisted as `other`); val: "
                    "10 scenes, one per alphabet, of all 20 samples of its 62 held-out characters "
                    "(3..11 per scene); unseen: 16 scenes of 17..20 characters of the 300 "
                    "characters of alphabets never trained on",
        train_ann=split["train"][0], train_images=split["train"][1],
        val_ann=split["val"][0], val_images=split["val"][1],
        config=ROOT / "configs" / "omniglot.yaml", epochs=args.epochs,
        methods=("sq_agglo", "sq_hdbscan", "l2c_kcl", "l2c_mcl", "no_relation", "full"),
        # L2C's cluster-assignment head over-estimates the number of characters (K = 100)
        variant_overrides={v: ["model.num_clusters=100"] for v in ("l2c_kcl", "l2c_mcl")},
        aliases={"classifier": "no_relation"}, targets=(), headline_families=("status_quo",),
        extra=[
            ExtraSplit("val, categories ignored", *split["val"], agnostic=True),
            ExtraSplit("test", *split["test"]),
            ExtraSplit("test, categories ignored", *split["test"], agnostic=True),
            ExtraSplit("unseen alphabets (categories ignored)", *split["unseen"], agnostic=True),
        ],
    )


# Every set with a recipe is benchmarked. A real set joins by adding a function that returns its
# DatasetSpec (converted files + its configs/ recipe) under its key here.
DATASETS: dict[str, Callable[[argparse.Namespace, Path], DatasetSpec]] = {
    "synth": synth_dataset,
    "funsd": funsd_dataset,
    "omniglot": omniglot_dataset,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-images", type=int, default=1000, help="synthetic train images")
    ap.add_argument("--val-images", type=int, default=200, help="synthetic val images")
    ap.add_argument("--epochs", type=int, default=None,
                    help="training epochs of every model (default: 8 on synth, the recipe's on "
                         "real sets)")
    ap.add_argument("--seed", type=int, default=0, help="data and training seed")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmark",
                    help="output folder (data, models, results)")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="earlier --out folder: its data and trained models are used, not redone")
    ap.add_argument("--only", default=None,
                    help=f"comma-separated subset of: {', '.join(METHODS)} (default: the "
                         "dataset's methods)")
    ap.add_argument("--datasets", default="synth",
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
    args.methods = (None if args.only is None
                    else [m.strip() for m in args.only.split(",") if m.strip()])
    args.dataset_keys = [d.strip() for d in args.datasets.split(",") if d.strip()]
    for name, chosen, known in (("--only", args.methods or list(METHODS), METHODS),
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


def _recipe(config: dict[str, Any]) -> dict[str, Any]:
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
    wanted = _recipe(config_to_dict(cfg))
    run = args.out / spec.key / "models" / variant
    for base in ([args.reuse] if args.reuse is not None else []) + [args.out]:
        found = base / spec.key / "models" / variant
        for name in ("model.pt", "last.pt") if base == args.out else ("model.pt",):
            path = found / name
            if not path.is_file():
                continue
            # through the schema, so that keys added since the checkpoint take their defaults
            trained = config_to_dict(checkpoint_config(load_checkpoint(path), path))
            if _recipe(trained) != wanted:
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


def run_dataset(
    spec: DatasetSpec, args: argparse.Namespace, device: torch.device
) -> tuple[list[Row], list[str], list[dict[str, Any]]]:
    """Train (or reuse) what the chosen methods need, and score every method on val (and on the
    spec's extra splits).

    Returns the rows, the variants whose models were trained by an earlier invocation, and the
    extra-split results (``{"split", "method", "metrics"}`` each).
    """
    methods = args.methods or list(spec.methods)
    num_classes = len(load_coco_groups(spec.val_ann).category_names)
    loader = val_loader(spec)

    def variant_of(method: str) -> str:
        variant = METHODS[method].variant
        return spec.aliases.get(variant, variant)

    needed = [v for v in VARIANTS if any(variant_of(m) == v for m in methods)]
    trained = {v: train_or_reuse(v, spec, args) for v in needed}
    rows: list[Row] = []
    tuned: dict[str, GroupFn] = {}

    clustering = [m for m in methods if METHODS[m].variant == "classifier"]
    clf_variant = spec.aliases.get("classifier", "classifier")
    if clustering:
        ckpt, clf_train_s, _ = trained[clf_variant]
        tune_set = GroupDataset(spec.train_ann, spec.train_images)
        tune_items = list(range(min(args.tune_images, len(tune_set))))
        tune_loader = DataLoader(Subset(tune_set, tune_items), batch_size=8,
                                 collate_fn=collate_groups)
        log.info("per-box outputs of %s on %d train and %d val images", clf_variant,
                 len(tune_items), len(loader.dataset))
        tune_out, _, _ = per_box_outputs(ckpt, tune_loader, device)
        val_out, clf_ms, clf_cpu_ms = per_box_outputs(ckpt, loader, device)
        source = ("per-box classifier" if clf_variant == "classifier"
                  else f"{clf_variant} model's category head")
        for method in clustering:
            appearance = method.startswith("sq_")
            for true_cats in ([False, True] if not appearance else [False]):
                log.info("%s within the %s categories", method,
                         "true" if true_cats else "predicted")
                metrics, setting, tune_s, group_ms, group_cpu_ms, group_fn = score_clustering(
                    method,
                    make_scenes(tune_out, true_categories=true_cats, appearance=appearance),
                    make_scenes(val_out, true_categories=true_cats, appearance=appearance),
                    val_out, num_classes, spec.tune_score,
                )
                if not true_cats:
                    tuned[method] = group_fn
                if spec.vote and not true_cats and not appearance and method != "pos_kmeans":
                    rows.append(vote_row(method, tune_out, val_out, num_classes, spec,
                                         clf_train_s, clf_ms, clf_cpu_ms))
                rows.append(Row(
                    key=method + ("_true_categories" if true_cats else ""),
                    family=METHODS[method].family, name=METHODS[method].name,
                    categories="true (oracle)" if true_cats else source,
                    setting=setting, metrics=metrics,
                    train_seconds=None if true_cats else clf_train_s, tune_seconds=tune_s,
                    infer_ms=group_ms + (0.0 if true_cats else clf_ms),
                    infer_cpu_ms=group_cpu_ms + (0.0 if true_cats else clf_cpu_ms),
                    oracle=true_cats or method == "pos_kmeans",
                ))

    for method in methods:
        if METHODS[method].variant == "classifier":
            continue
        ckpt, train_s, _ = trained[variant_of(method)]
        bias, neighbors = decoder_settings(variant_of(method), spec, args)
        # with a k-nearest-neighbour decoder in the recipe, the full model is also decoded on
        # every pair (a diagnostic row: what the sparse graph changes)
        graphs = [neighbors] + ([0] if neighbors and method == "full" else [])
        for k in graphs:
            log.info("%s: scoring on val%s", method, f", {k} neighbours" if k else "")
            metrics, infer_ms, cpu_ms, epochs = score_model(ckpt, loader, num_classes, device,
                                                            bias, k)
            graph = (f", on each box's {k} nearest boxes" if k
                     else ", on every pair" if neighbors else "")
            rows.append(Row(
                key=method if k == neighbors else f"{method}_all_pairs",
                family=METHODS[method].family,
                name=METHODS[method].name + ("" if k == neighbors else ", decoded on every pair"),
                categories="own category head",
                setting=f"{epochs} epochs, decoder {DECODER}{graph}, pair-logit bias {bias:+.3f}",
                metrics=metrics, train_seconds=train_s, tune_seconds=None, infer_ms=infer_ms,
                infer_cpu_ms=cpu_ms,
            ))
    order = list(FAMILIES)
    rows.sort(key=lambda r: (order.index(r.family), r.oracle))

    extra: list[dict[str, Any]] = []
    for split in spec.extra:
        split_loader = DataLoader(GroupDataset(split.ann, split.images), batch_size=8,
                                  collate_fn=collate_groups)
        split_classes = 1 if split.agnostic else num_classes
        if tuned:
            outputs, _, _ = per_box_outputs(trained[clf_variant][0], split_loader, device)
            for method, group_fn in tuned.items():
                scenes = make_scenes(outputs, true_categories=False,
                                     appearance=method.startswith("sq_"), agnostic=split.agnostic)
                log.info("%s: scoring on %s", method, split.name)
                metrics, _, _ = score_grouping(group_fn, scenes, outputs, split_classes)
                extra.append({"split": split.name, "method": method, "metrics": metrics})
        for method in methods:
            if METHODS[method].variant == "classifier":
                continue
            ckpt = trained[variant_of(method)][0]
            bias, neighbors = decoder_settings(variant_of(method), spec, args)
            log.info("%s: scoring on %s", method, split.name)
            if split.agnostic:
                scores = score_model_agnostic(ckpt, split_loader, device, bias, neighbors)
                metrics = scores["decoder"]
                if "argmax" in scores:
                    extra.append({"split": split.name, "method": f"{method} (argmax of its "
                                  "assignment head, L2C's inference)",
                                  "metrics": scores["argmax"]})
            else:
                metrics = score_model(ckpt, split_loader, num_classes, device, bias,
                                      neighbors)[0]
            extra.append({"split": split.name, "method": method, "metrics": metrics})
    return rows, [v for v, (_, _, earlier) in trained.items() if earlier], extra


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


def render(spec: DatasetSpec, rows: list[Row], meta: dict[str, Any],
           extra: Sequence[dict[str, Any]] = ()) -> str:
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
        "Clustering baselines are tuned on train images (grid search for the best mean "
        f"{'ARI' if spec.tune_score == 'ari' else 'exact-group F1'}); trained models decode with "
        f"`{DECODER}` and are scored with their weights after the last epoch.",
        "",
    ]
    head = headline(rows, spec.headline_families)
    full = next((r for r in rows if r.key == "full"), None)
    if head is not None:
        lines += [
            f"**Headline**: detgroup ARI {head['ari']:.3f} vs {head['baseline_ari']:.3f} for the "
            "best realistic baseline by ARI among "
            f"{' and '.join(FAMILIES[f] for f in spec.headline_families)} "
            f"({head['baseline_name']}), "
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
    if full is not None and spec.targets:
        lines += [f"| target (detgroup, {spec.title} val) | value | met |", "|---|---|---|"]
        for key, threshold, label in spec.targets:
            value = full.metrics[key]
            lines.append(f"| {label} ≥ {threshold:.2f} | {value:.3f} | "
                         f"{'yes' if value >= threshold else '**missed**'} |")
        if head is not None and spec.key == "synth":
            ok = head["error_ratio"] >= ERROR_RATIO_TARGET
            lines.append(f"| (1 − ARI) ≥ {ERROR_RATIO_TARGET:g}× lower than the best status quo "
                         f"| ×{_fmt(head['error_ratio'], 1)} | {'yes' if ok else '**missed**'} |")
        lines.append("")
    lines += [
        "| family | method | categories | cat acc | cat macro-F1 | ARI | NMI | Hungarian acc | "
        "exact-group F1 | group F1 | pair F1 | group PQ | train s | tune s | infer ms/img | "
        "CPU ms/img |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r.metrics
        name = f"{r.name} †" if r.oracle else r.name
        lines.append(
            f"| {FAMILIES[r.family]} | {name} | {r.categories} | {m['cat_acc']:.3f} | "
            f"{m['cat_macro_f1']:.3f} | {m['ari']:.3f} | {m['nmi']:.3f} | "
            f"{m['hungarian_acc']:.3f} | {m['exact_group_f1']:.3f} | {m['group_f1']:.3f} | "
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
    if extra:
        lines += ["", "Other splits (same models and tuned settings; *categories ignored*: truth, "
                  "decoder and clustering see one category, only the grouping is scored):", "",
                  "| split | method | Hungarian acc | NMI | ARI | exact-group F1 | pair F1 | "
                  "\\|predicted − true\\| groups per image |", "|---|---|---|---|---|---|---|---|"]
        for e in extra:
            m = e["metrics"]
            lines.append(
                f"| {e['split']} | {e['method']} | {m['hungarian_acc']:.3f} | {m['nmi']:.3f} | "
                f"{m['ari']:.3f} | {m['exact_group_f1']:.3f} | {m['pair_f1']:.3f} | "
                f"{m['num_groups_mae']:.1f} |")
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
        rows, reused, extra = run_dataset(spec, args, device)
        methods = args.methods or list(spec.methods)
        meta = {
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "machine": machine_text(device, args.threads), "command": command,
            "load_start": load_start, "load_end": os.getloadavg()[0],
            "partial": "" if set(spec.methods) <= set(methods) else
            f"only {', '.join(methods)} were run (--only); missing: "
            f"{', '.join(m for m in spec.methods if m not in methods)}. Finish with `{finish}` "
            "(it reuses the finished models and resumes an interrupted training).",
            "reused": f"the models {', '.join(reused)} were trained by an earlier invocation "
                      "(their train s come from their log.csv); all tuning and scoring ran in "
                      "this one" if reused else "",
        }
        text = render(spec, rows, meta, extra)
        out = args.out / key
        out.mkdir(parents=True, exist_ok=True)
        with atomic_open(out / "results.json", "w") as f:  # json.dump: an ∞ ratio is allowed
            json.dump({
                "meta": meta, "dataset": {k: str(v) for k, v in asdict(spec).items()},
                "rows": [asdict(r) for r in rows],
                "headline": headline(rows, spec.headline_families), "extra": extra,
            }, f, indent=2)
        with atomic_open(out / "section.md", "w") as f:
            f.write(text)
        if args.benchmarks_md is not None:
            write_section(args.benchmarks_md, text)
            log.info("updated the %s section of %s", spec.title, args.benchmarks_md)
        print(text)


if __name__ == "__main__":
    main()
