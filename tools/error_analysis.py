"""What errors remain: a trained model on a val set, broken down, and its worst image drawn.

Prints (Markdown) the word/box category confusion matrix, what happened to every true group
that was not recovered exactly (right members but wrong category, split, merged with others,
both), and the images sorted by exact-group F1; writes the worst image as ground truth beside
prediction, groups matched (``detgroup.visualize.draw_comparison``).

Usage::

    python tools/error_analysis.py --checkpoint runs/funsd/last.pt \\
        --ann runs/funsd_data/val/annotations.json --images runs/funsd_data/val/images \\
        --out docs/funsd_worst_val.png
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from detgroup.data.dataset import GroupDataset, collate_groups, model_inputs
from detgroup.data.images import read_image_rgb
from detgroup.engine.checkpoint import load_model_from_checkpoint
from detgroup.engine.evaluate import PostProcess, move_batch
from detgroup.metrics import image_metrics
from detgroup.report import group_fates as report_group_fates
from detgroup.visualize import compare, draw_comparison, save_rgb_png


def group_fates(gt_cat: np.ndarray, gt_grp: np.ndarray, pred_cat: np.ndarray,
                pred_grp: np.ndarray) -> Counter[str]:
    """For every true group [N labels], as counted from :func:`detgroup.report.group_fates`:
    ``exact`` (same members, same category), ``wrong category`` (same members), ``split`` (its
    members are spread over several predicted groups that hold nothing else), ``merged`` (one
    predicted group holds all of it and more), ``split + merged`` (both)."""
    comparison = compare(np.zeros((len(gt_cat), 4)), gt_cat, gt_grp, pred_cat, pred_grp)
    fates: Counter[str] = Counter()
    for fate in report_group_fates(comparison, gt_cat, pred_cat):
        split, merged = fate.split_into > 1, bool(fate.merged_with)
        if not split and not merged:
            fates["wrong category" if fate.category_wrong else "exact"] += 1
        else:
            fates["split + merged" if split and merged else "split" if split else "merged"] += 1
    return fates


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--ann", type=Path, required=True, help="COCO-with-groups val file")
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="PNG of the worst image")
    ap.add_argument("--pair-bias", type=float, default=None,
                    help="added to the pair logits (default: the checkpoint's decoder.pair_bias)")
    ap.add_argument("--neighbors", type=int, default=None,
                    help="decode on each box's k nearest boxes, 0: every pair (default: the "
                         "checkpoint's decoder.neighbors)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, cfg = load_model_from_checkpoint(args.checkpoint)
    dataset = GroupDataset(args.ann, args.images)
    names = dataset.category_names
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate_groups)
    post = PostProcess.from_config(cfg.decoder, pair_bias=args.pair_bias,
                                   neighbors=args.neighbors)
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    fates: Counter[str] = Counter()
    per_image = []
    with torch.no_grad():
        for batch in loader:
            batch = move_batch(batch, torch.device("cpu"))
            out = model(**model_inputs(batch))
            for b, pred in enumerate(post(out, batch["boxes"], batch["image_ids"])):
                real = ~batch["pad_mask"][b]
                gt_cat = batch["categories"][b][real].numpy()
                gt_grp = batch["groups"][b][real].numpy()
                np.add.at(confusion, (gt_cat, pred.categories), 1)
                fates += group_fates(gt_cat, gt_grp, pred.categories, pred.groups)
                m = image_metrics(gt_cat, gt_grp, pred.categories, pred.groups)
                per_image.append((m["exact_group_f1"], m, pred, gt_cat, gt_grp))

    print(f"checkpoint {args.checkpoint}, {len(per_image)} images of {args.ann}, pair-logit "
          f"bias {post.pair_bias:+.3f}\n")
    print("| true \\ predicted | " + " | ".join(names) + " | recall |")
    print("|---|" + "---|" * (len(names) + 1))
    for i, name in enumerate(names):
        row = confusion[i]
        recall = row[i] / max(row.sum(), 1)
        print(f"| {name} | " + " | ".join(str(v) for v in row) + f" | {recall:.3f} |")
    total = sum(fates.values())
    print(f"\n{total} true groups: " + ", ".join(
        f"{k} {v} ({v / max(total, 1):.1%})" for k, v in fates.most_common()))
    per_image.sort(key=lambda item: item[0])
    files = {im["id"]: im["file_name"] for im in dataset.coco.images}
    print("\n| image | boxes | true / predicted groups | cat acc | ARI | exact-group F1 |")
    print("|---|---|---|---|---|---|")
    for f1, m, pred, _, _ in per_image:
        print(f"| {files[pred.image_id]} | {m['num_boxes']} | {m['num_gt_groups']} / "
              f"{m['num_pred_groups']} | {m['cat_acc']:.3f} | {m['ari']:.3f} | {f1:.3f} |")

    f1, m, pred, gt_cat, gt_grp = per_image[0]
    pixels = read_image_rgb(args.images / files[pred.image_id])
    title = (f"{files[pred.image_id]}, category acc {m['cat_acc']:.2f}, ARI {m['ari']:.2f}, "
             f"exact-group F1 {f1:.2f}")
    save_rgb_png(args.out, draw_comparison(pixels, pred.boxes, gt_cat, gt_grp, pred.categories,
                                           pred.groups, names, group_scores=pred.group_scores,
                                           title=title))
    print(f"\nworst image (exact-group F1 {f1:.3f}): {files[pred.image_id]} -> {args.out}")


if __name__ == "__main__":
    main()
