"""Per-call cost of the hand-written macro F1 and pair counts of detgroup.metrics vs the
scikit-learn functions that give the same values (tests/test_metrics.py checks the values).

Usage::

    python tools/bench_metrics.py [--boxes 40] [--calls 2000]
"""

from __future__ import annotations

import argparse
import timeit

import numpy as np
from sklearn.metrics import f1_score
from sklearn.metrics.cluster import pair_confusion_matrix

from detgroup.metrics import image_metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boxes", type=int, default=40)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    gt_cat, pred_cat = rng.integers(0, 3, args.boxes), rng.integers(0, 3, args.boxes)
    gt_grp, pred_grp = rng.integers(0, 6, args.boxes), rng.integers(0, 6, args.boxes)
    gt_ids, pred_ids = gt_cat * 6 + gt_grp, pred_cat * 6 + pred_grp
    cases = {
        "detgroup image_metrics (all metrics)": lambda: image_metrics(gt_cat, gt_grp, pred_cat,
                                                                      pred_grp),
        "sklearn f1_score(average='macro')": lambda: f1_score(gt_cat, pred_cat, average="macro"),
        "sklearn pair_confusion_matrix": lambda: pair_confusion_matrix(gt_ids, pred_ids),
    }
    print(f"| call ({args.boxes} boxes) | µs per call |\n|---|---|")
    for name, fn in cases.items():
        n = max(args.calls // 10, 1)
        print(f"| {name} | {1e6 * timeit.timeit(fn, number=n) / n:.0f} |")


if __name__ == "__main__":
    main()
