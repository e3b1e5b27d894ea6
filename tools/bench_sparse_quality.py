"""Quality of the candidate-pair path against the dense path, one model, the same images.

Loads a checkpoint whose config has a ``model.pair_candidates`` block and evaluates it on a
COCO-with-groups set twice in one run: every pair (dense attention, dense pair head, dense
decoder) and the candidate graph only (``mode`` sparse), with the checkpoint's decoder
settings. Prints category accuracy, ARI, Group PQ, exact-group F1 and seconds per image side
by side, and the differences.

    python tools/bench_sparse_quality.py --checkpoint runs/big3_model/model.pt \\
        --data runs/big7/val/annotations.json --images runs/big7/val/images
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

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
    for name, net, path, net_cfg, net_post in runs:
        if net.candidates is not None:
            net.candidates.mode = path
        summary, _ = evaluate(net, loader, num_classes=len(net_cfg.category_names),
                              postprocess=net_post, device=torch.device("cpu"))
        results[name] = {k: float(summary[k]) for k in METRICS}
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
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
