"""Quality of the candidate-pair path against the dense path, one model, the same images.

Loads a checkpoint whose config has a ``model.pair_candidates`` block and evaluates it on a
COCO-with-groups set twice in one run: every pair (dense attention, dense pair head, dense
decoder) and the candidate graph only (``mode`` sparse), with the checkpoint's decoder
settings. Prints category accuracy, ARI, Group PQ, exact-group F1 and seconds per image side
by side, and the differences; with ``--draws`` also a paired bootstrap over the images of the
sparse path minus the candidate model's dense path (ARI: mean over images; Group PQ: pooled,
Σ matched IoU / half the predicted + true groups): the difference and its 95 % interval.

    python tools/bench_sparse_quality.py --checkpoint runs/big3_model/model.pt \\
        --data runs/big7/val/annotations.json --images runs/big7/val/images
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from detgroup.data.dataset import GroupDataset, collate_groups
from detgroup.engine.checkpoint import load_model_from_checkpoint
from detgroup.engine.evaluate import PostProcess, evaluate

METRICS = ("cat_acc", "ari", "group_pq", "exact_group_f1", "model_seconds", "decode_seconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dense-checkpoint")
    parser.add_argument("--data", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json-out")
    parser.add_argument("--draws", type=int, default=0,
                        help="paired bootstrap draws over images (0: none)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, cfg = load_model_from_checkpoint(args.checkpoint)
    if model.candidates is None:
        raise SystemExit(f"{args.checkpoint}: the model has no model.pair_candidates block")
    dataset = GroupDataset(args.data, args.images)
    loader = DataLoader(dataset, batch_size=1, collate_fn=collate_groups)
    boxes = [dataset.num_boxes(i) for i in range(len(dataset))]
    post = PostProcess.from_config(cfg.decoder)
    runs = [("candidate model, sparse path", model, "sparse", cfg, post),
            ("candidate model, dense path", model, "dense", cfg, post)]
    if args.dense_checkpoint:
        dense_model, dense_cfg = load_model_from_checkpoint(args.dense_checkpoint)
        runs.append(("dense model, dense path", dense_model, "dense", dense_cfg,
                     PostProcess.from_config(dense_cfg.decoder)))
    results = {}
    images = {}
    for name, net, path, net_cfg, net_post in runs:
        if net.candidates is not None:
            net.candidates.mode = path
        summary, per_image = evaluate(net, loader, num_classes=len(net_cfg.category_names),
                                      postprocess=net_post, device=torch.device("cpu"))
        results[name] = {k: float(summary[k]) for k in METRICS}
        images[name] = per_image
    pc = cfg.model.pair_candidates
    print(f"Command: `python {' '.join(sys.argv)}`; {datetime.datetime.now():%Y-%m-%d %H:%M}; "
          f"{len(dataset)} images, {min(boxes)}-{max(boxes)} boxes (mean "
          f"{sum(boxes) / len(boxes):.0f}); gap_k {pc.gap_k}, embed_k {pc.embed_k}; decoder "
          f"{post.method}; {args.threads} thread(s)\n")
    print("| model, path | " + " | ".join(METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.4f}" for k in METRICS) + " |")
    sparse = results[runs[0][0]]
    for name in list(results)[1:]:
        print(f"| sparse path - ({name}) | " + " | ".join(
            f"{sparse[k] - results[name][k]:+.4f}" for k in METRICS) + " |")
    if args.draws:
        first, second = (images[name] for name, *_ in runs[:2])
        print(f"\nPaired bootstrap over {len(first)} images ({args.draws} draws), "
              f"{runs[0][0]} - {runs[1][0]}:\n")
        print("| metric | difference | 95 % interval |\n|---|---|---|")
        for metric, (diff, low, high) in paired_bootstrap(first, second, args.draws).items():
            print(f"| {metric} | {diff:+.4f} | [{low:+.4f}, {high:+.4f}] |")
        results["bootstrap"] = paired_bootstrap(first, second, args.draws)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))


def paired_bootstrap(a: list[dict], b: list[dict], draws: int, seed: int = 0
                     ) -> dict[str, tuple[float, float, float]]:
    """ARI (mean over images) and Group PQ (pooled) of run a minus run b, per-image metric
    records of the same images in the same order, with the 2.5 / 97.5 percentiles of the
    difference over draws of the images with replacement: {metric: (diff, low, high)}."""
    if [m["image_id"] for m in a] != [m["image_id"] for m in b]:
        raise ValueError("the two runs must cover the same images in the same order")

    def columns(run: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ari = np.array([m["ari"] for m in run])  # [I]
        iou = np.array([m["group_iou_sum"] for m in run])  # [I]
        half = np.array([0.5 * (m["num_pred_groups"] + m["num_gt_groups"]) for m in run])
        return ari, iou, half

    (ari_a, iou_a, half_a), (ari_b, iou_b, half_b) = columns(a), columns(b)
    idx = np.random.default_rng(seed).integers(0, len(a), size=(draws, len(a)))  # [D, I]
    stats = {
        "ari": (ari_a.mean() - ari_b.mean(), ari_a[idx].mean(1) - ari_b[idx].mean(1)),
        "group_pq": (iou_a.sum() / half_a.sum() - iou_b.sum() / half_b.sum(),
                     iou_a[idx].sum(1) / half_a[idx].sum(1)
                     - iou_b[idx].sum(1) / half_b[idx].sum(1)),
    }
    return {k: (float(d), *map(float, np.percentile(s, [2.5, 97.5]))) for k, (d, s) in
            stats.items()}


if __name__ == "__main__":
    main()
