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
import datetime
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from benchlib.datasets import DATASETS, ROOT, DatasetSpec
from benchlib.methods import (
    DECODER,
    FAMILIES,
    METHODS,
    VARIANTS,
    GroupFn,
    decoder_settings,
    make_scenes,
    per_box_outputs,
    train_or_reuse,
    val_loader,
)
from benchlib.report import machine_text, render
from benchlib.scoring import (
    Row,
    headline,
    score_clustering,
    score_grouping,
    score_model,
    score_model_agnostic,
    vote_row,
)
from benchmarks_md import write_section
from torch.utils.data import DataLoader, Subset

from detgroup.atomic import atomic_open
from detgroup.data.coco_groups import load_coco_groups
from detgroup.data.dataset import GroupDataset, collate_groups

log = logging.getLogger("benchmark")





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
