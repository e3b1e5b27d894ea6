"""Is a trained model's exact-group F1 really above the same-line rule's? A paired bootstrap.

Runs the model once over a COCO-with-groups split and decodes it with its checkpoint's decoder
settings (method, pair bias, neighbour graph); groups the same boxes with the same-line rule
(:class:`detgroup.baselines.LineLinker`, thresholds given, e.g. those the benchmark tuned on
train) whose groups take the category vote of a classifier checkpoint (``--rule-categories``,
the benchmark's per-box ablation) and, as a second baseline, of the model's own category head.
Then resamples the images with replacement (paired: both methods on the same draw) and prints
the 95 % interval of the difference in pooled exact-group F1 and the share of draws where the
model is not ahead. Also prints the model's category-agnostic exact-group F1 (every category
set to one) next to the rule's, and, for the model and both rule variants, the summary
metrics of :class:`detgroup.metrics.GroupingEvaluator` (with ``--unscored-categories``, e.g.
``other``, left out of the LayoutLM-protocol entity F1).

    python tools/paired_bootstrap.py --checkpoint runs/benchmark6/funsd/models/full/last.pt \\
        --rule-categories runs/benchmark6/funsd/models/no_relation/last.pt \\
        --ann runs/funsd_data/val/annotations.json --images runs/funsd_data/val/images \\
        --rule-gap 0.796 --rule-overlap 0.7
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from benchlib.methods import per_box_outputs, vote_categories
from torch.utils.data import DataLoader

from detgroup.baselines import LineLinker
from detgroup.config import parse_pair_prior
from detgroup.data.dataset import GroupDataset, collate_groups
from detgroup.engine.checkpoint import checkpoint_config, load_checkpoint
from detgroup.engine.evaluate import PostProcess
from detgroup.metrics import GroupingEvaluator, image_metrics

SUMMARY_KEYS = ("cat_acc", "cat_macro_f1", "ari", "exact_group_f1", "agnostic_exact_group_f1",
                "entity_f1", "group_pq")


def exact_counts(gt_categories: np.ndarray, gt_groups: np.ndarray, pred_categories: np.ndarray,
                 pred_groups: np.ndarray) -> tuple[int, int, int]:
    """(exactly recovered groups, predicted groups, true groups) of one image, from
    :func:`detgroup.metrics.image_metrics` (a group is its (category, group id) pair)."""
    m = image_metrics(gt_categories, gt_groups, pred_categories, pred_groups)
    return int(m["exact_group_tp"]), int(m["num_pred_groups"]), int(m["num_gt_groups"])


def pooled_f1(counts: np.ndarray) -> np.ndarray:
    """Exact-group F1 pooled over images: counts [..., images, 3] -> [...]."""
    found, pred, true = counts[..., 0].sum(-1), counts[..., 1].sum(-1), counts[..., 2].sum(-1)
    return 2 * found / np.maximum(pred + true, 1)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, draws: int = 10000, seed: int = 0
                     ) -> dict[str, float]:
    """Pooled exact-group F1 of ``a`` minus ``b`` (per-image counts [images, 3] each, same
    images in the same order) and its bootstrap over images: ``difference``, ``low``, ``high``
    (2.5 / 97.5 percentiles) and ``share_not_ahead`` (draws where a - b <= 0)."""
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 3 or len(a) == 0:
        raise ValueError(f"counts must both be [images > 0, 3], got {a.shape} and {b.shape}")
    idx = np.random.default_rng(seed).integers(0, len(a), size=(draws, len(a)))  # [draws, I]
    diff = pooled_f1(a[idx]) - pooled_f1(b[idx])  # [draws]
    low, high = np.percentile(diff, [2.5, 97.5])
    return {"difference": float(pooled_f1(a) - pooled_f1(b)), "low": float(low),
            "high": float(high), "share_not_ahead": float((diff <= 0).mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="the model to test")
    ap.add_argument("--rule-categories", type=Path, required=True,
                    help="checkpoint whose category head votes the rule's groups' categories")
    ap.add_argument("--ann", type=Path, required=True, help="COCO-with-groups file")
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--rule-gap", type=float, required=True,
                    help="LineLinker max_gap (x mean box height)")
    ap.add_argument("--rule-overlap", type=float, required=True,
                    help="LineLinker min_overlap (of the smaller height)")
    ap.add_argument("--draws", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--unscored-categories", nargs="*", default=[], metavar="NAME",
                    help="categories left out of the entity F1 (LayoutLM / FUNSD: other)")
    ap.add_argument("--pair-prior", default=None, metavar="KIND[:WEIGHT[:OFFSET[:...]]]",
                    help="replace the model's pair prior at inference, as detgroup eval "
                         "--pair-prior (e.g. same_line:4:0.5:0.796:0.7)")
    args = ap.parse_args(argv)
    if args.draws < 1:
        ap.error("--draws must be >= 1")
    torch.set_num_threads(args.threads)
    post = PostProcess.from_config(
        checkpoint_config(load_checkpoint(args.checkpoint), args.checkpoint).decoder)
    bias = post.pair_bias  # decode() takes the logits with it added
    loader = DataLoader(GroupDataset(args.ann, args.images), batch_size=8,
                        collate_fn=collate_groups)
    prior = parse_pair_prior(args.pair_prior) if args.pair_prior else None
    model = per_box_outputs(args.checkpoint, loader, torch.device("cpu"), prior)[0]
    classifier = per_box_outputs(args.rule_categories, loader, torch.device("cpu"))[0]
    if not model:
        raise SystemExit(f"{args.ann}: no images")
    rule = LineLinker(max_gap=args.rule_gap, min_overlap=args.rule_overlap)
    config = checkpoint_config(load_checkpoint(args.checkpoint), args.checkpoint)
    unscored = [config.category_names.index(n) for n in args.unscored_categories]
    evaluators = {name: GroupingEvaluator(num_classes=len(config.category_names),
                                          unscored_categories=unscored)
                  for name in ("model", "rule", "rule, model's categories")}
    rows: dict[str, list[tuple[int, int, int]]] = {
        "model": [], "rule": [], "rule, model's categories": [], "model, agnostic": [],
        "rule, agnostic": []}
    for im, cl in zip(model, classifier, strict=True):
        pair = im.affinity + bias  # [N, N], symmetric (per_box_outputs averages both ways)
        part = post.decode(pair, im.logits, im.boxes)
        rows["model"].append(exact_counts(im.categories, im.groups, part.categories,
                                          part.groups))
        groups = rule(im.boxes)  # [N]
        evaluators["model"].update(im.categories, im.groups, part.categories, part.groups)
        evaluators["rule"].update(im.categories, im.groups, vote_categories(cl.logits, groups),
                                  groups)
        evaluators["rule, model's categories"].update(
            im.categories, im.groups, vote_categories(im.logits, groups), groups)
        rows["rule"].append(exact_counts(im.categories, im.groups,
                                         vote_categories(cl.logits, groups), groups))
        rows["rule, model's categories"].append(exact_counts(
            im.categories, im.groups, vote_categories(im.logits, groups), groups))
        zeros = np.zeros(len(im.groups), dtype=np.int64)
        agnostic = post.decode(pair, None, im.boxes)
        rows["model, agnostic"].append(exact_counts(zeros, im.groups, zeros, agnostic.groups))
        rows["rule, agnostic"].append(exact_counts(zeros, im.groups, zeros, groups))
    counts = {k: np.array(v, dtype=np.int64) for k, v in rows.items()}  # each [images, 3]
    with_prior = f" + pair prior {args.pair_prior}" if prior else ""
    print(f"{args.checkpoint}{with_prior} on {args.ann} ({len(model)} images), {post.method}, "
          f"{post.neighbors} neighbours, pair bias {bias:+.3f}; rule gap <= {args.rule_gap} x "
          f"height, overlap >= {args.rule_overlap}, categories of {args.rule_categories}\n")
    print("| method | exact-group F1 |\n|---|---|")
    for name, c in counts.items():
        print(f"| {name} | {pooled_f1(c):.3f} |")
    print(f"\n| model minus | difference | 95 % interval ({args.draws} draws over images) "
          "| share of draws not ahead |\n|---|---|---|---|")
    for base in ("rule", "rule, model's categories"):
        r = paired_bootstrap(counts["model"], counts[base], args.draws, args.seed)
        print(f"| {base} | {r['difference']:+.3f} | [{r['low']:+.3f}, {r['high']:+.3f}] "
              f"| {r['share_not_ahead']:.3f} |")
    print(f"\n| method | {' | '.join(SUMMARY_KEYS)} |\n|---{'|---' * len(SUMMARY_KEYS)}|")
    for name, evaluator in evaluators.items():
        summary = evaluator.summary()
        print(f"| {name} | {' | '.join(f'{summary[k]:.3f}' for k in SUMMARY_KEYS)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
