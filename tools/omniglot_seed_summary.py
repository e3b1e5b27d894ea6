"""Mean ± sd over seeds of rows of ``bench_omniglot_l2c.py --json``, and a paired bootstrap
against a baseline row on the same scenes.

Each ``--recipe NAME=ROW[;ROW...]`` names the rows (one per seed) of one recipe. Per split it
prints the mean ± sd over seeds of the per-split means (Hungarian accuracy, NMI, ARI,
abs(K^ - K)); then, for the Hungarian accuracy, the recipe (per scene averaged over its seeds)
minus the ``--baseline`` row: the mean difference, its 95 % interval over ``--draws``
resamplings of the scenes (paired: both on the same draw) and the share of draws where the
recipe is not ahead. With 5 scenes per split the interval is wide: it says how far the scenes
agree, not more. A ``--baseline`` of several rows (``ROW;ROW...``, e.g. the same seeds decoded
another way) is averaged per scene over them like a recipe, so the difference is paired by
seed and scene.

    python tools/omniglot_seed_summary.py runs/l2c/bench.json \\
        --recipe "crop + HOG prior=crop_s0 + HOG prior;crop_s1 + HOG prior;crop_s2 + HOG prior" \\
        --baseline "HOG + Ward (tuned on val)"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from seed_summary import mean_sd

METRICS = [("hungarian_acc", "Hungarian acc"), ("nmi", "NMI"), ("ari", "ARI"),
           ("num_groups_error", "abs(K^ - K)")]


def per_scene(row: dict, split: str, key: str) -> np.ndarray:
    """One row's ``key`` on every scene of ``split``.  # [S]"""
    return np.array([s[key] for s in row["scenes"][split]], dtype=np.float64)


def members_of(spec: str, rows: dict) -> tuple[list[str], list[str]]:
    """The row names of ``ROW;ROW...`` and those of them ``rows`` does not hold."""
    names = [m.strip() for m in spec.split(";") if m.strip()]
    return names, [m for m in names if m not in rows]


def scene_mean(rows: dict, members: list[str], split: str) -> np.ndarray:
    """The Hungarian accuracy of every scene of ``split``, averaged over ``members``. # [S]"""
    return np.mean([per_scene(rows[m], split, "hungarian_acc") for m in members], 0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path, help="the --json file of tools/bench_omniglot_l2c.py")
    ap.add_argument("--recipe", action="append", required=True, metavar="NAME=ROW[;ROW...]")
    ap.add_argument("--baseline", required=True,
                    help="the row to compare against, or rows (ROW;ROW...) averaged per scene")
    ap.add_argument("--draws", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rows = json.loads(args.bench.read_text())["rows"]
    recipes: dict[str, list[str]] = {}
    for spec in args.recipe:
        name, _, members = spec.rpartition("=")  # a name may hold "=", a row does not
        recipes[name], missing = members_of(members, rows)
        if not name or not recipes[name] or missing:
            raise SystemExit(f"{args.bench}: --recipe {spec!r}: no row named {missing or spec!r}"
                             f"; rows: {sorted(rows)}")
    baseline, missing = members_of(args.baseline, rows)
    if not baseline or missing:
        raise SystemExit(f"{args.bench}: no row named {missing or args.baseline!r}; rows: "
                         f"{sorted(rows)}")
    rng = np.random.default_rng(args.seed)
    for split in rows[baseline[0]]["scenes"]:
        print(f"\n#### {split}: mean over scenes, mean ± sd over seeds")
        print("| method (seeds) | " + " | ".join(t for _, t in METRICS) + " |")
        print("|---" * (len(METRICS) + 1) + "|")
        label = args.baseline if len(baseline) == 1 else f"{args.baseline} ({len(baseline)})"
        print(f"| {label} | " + " | ".join(
            mean_sd([per_scene(rows[m], split, k).mean() for m in baseline])
            for k, _ in METRICS) + " |")
        for name, members in recipes.items():
            means = {k: np.array([per_scene(rows[m], split, k).mean() for m in members])
                     for k, _ in METRICS}
            print(f"| {name} ({len(members)}) | "
                  + " | ".join(mean_sd(means[k]) for k, _ in METRICS) + " |")
        base = scene_mean(rows, baseline, split)  # [S]
        print(f"\n| {split}: Hungarian acc, recipe minus {args.baseline} | difference | "
              f"95 % interval ({args.draws} draws over scenes) | share of draws not ahead |")
        print("|---|---|---|---|")
        for name, members in recipes.items():
            diff = scene_mean(rows, members, split) - base  # [S]
            draws = rng.integers(0, len(diff), size=(args.draws, len(diff)))
            boot = diff[draws].mean(1)  # [draws]
            low, high = np.percentile(boot, [2.5, 97.5])
            print(f"| {name} | {diff.mean():+.3f} | [{low:+.3f}, {high:+.3f}] | "
                  f"{(boot <= 0).mean():.3f} |")


if __name__ == "__main__":
    main()
