"""Choose ``decoder.neighbors`` (and check ``decoder.pair_bias``) for a trained model.

Runs the model once over a COCO-with-groups split, then decodes its pair and class logits on
each box's k nearest boxes for every k given (0: every pair) and prints one Markdown row per
(k, bias) with the metrics an entity-level user reads. Choose on training data, report on val:

    python tools/decoder_sweep.py --checkpoint runs/funsd/last.pt \
        --ann runs/funsd_data/train/annotations.json --images runs/funsd_data/train/images
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from benchlib.methods import per_box_outputs
from torch.utils.data import DataLoader

from detgroup.data.dataset import GroupDataset, collate_groups
from detgroup.engine.checkpoint import load_checkpoint
from detgroup.engine.evaluate import PostProcess
from detgroup.metrics import GroupingEvaluator

COLUMNS = ("exact_group_f1", "group_f1", "group_pq", "ari", "pair_f1", "cat_acc")


def sweep(outputs: list, num_classes: int, neighbors: list[int], biases: list[float],
          method: str = "gaec-kl") -> list[dict[str, float]]:
    """One summary per (k, bias): the metrics of ``outputs`` (benchmark.PerBoxOutputs, raw pair
    logits) decoded on each box's k nearest boxes (0: every pair) with the bias added."""
    rows = []
    for bias in biases:
        for k in neighbors:
            post = PostProcess(method=method, neighbors=k)
            evaluator = GroupingEvaluator(num_classes=num_classes)
            for im in outputs:
                pair = im.affinity + bias  # [N, N], symmetric as per_box_outputs gives it
                part = post.decode(pair, im.logits, im.boxes)
                evaluator.update(im.categories, im.groups, part.categories, part.groups)
            summary = evaluator.summary()
            rows.append({"neighbors": k, "bias": bias, **{c: summary[c] for c in COLUMNS}})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--ann", type=Path, required=True, help="COCO-with-groups file")
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--neighbors", type=int, nargs="+", default=[0, 2, 4, 6, 8, 12, 16, 32])
    ap.add_argument("--pair-bias", type=float, nargs="+", default=None,
                    help="biases to try (default: the checkpoint's decoder.pair_bias)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if min(args.neighbors) < 0:
        ap.error("--neighbors must be >= 0")
    torch.set_num_threads(args.threads)
    cfg = load_checkpoint(args.checkpoint)["config"]
    biases = args.pair_bias or [float(cfg["decoder"]["pair_bias"])]
    dataset = GroupDataset(args.ann, args.images)
    loader = DataLoader(dataset, batch_size=8, collate_fn=collate_groups)
    outputs, _, _ = per_box_outputs(args.checkpoint, loader, torch.device("cpu"))
    rows = sweep(outputs, len(dataset.category_names), args.neighbors, biases,
                 cfg["decoder"]["method"])
    print(f"{args.checkpoint} on {args.ann} ({len(outputs)} images)\n")
    print("| neighbors | pair bias | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for r in rows:
        print(f"| {r['neighbors']} | {r['bias']:+.3f} | "
              + " | ".join(f"{r[c]:.3f}" for c in COLUMNS) + " |")
    best = max(rows, key=lambda r: (r["exact_group_f1"], -r["neighbors"]))
    print(f"\nbest exact-entity F1: neighbors {best['neighbors']}, bias {best['bias']:+.3f} "
          f"({best['exact_group_f1']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
