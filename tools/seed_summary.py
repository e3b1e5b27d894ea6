"""Mean ± sd over seeds of ``detgroup eval --json`` summaries, as one Markdown table row.

Each argument is ``EVAL_JSON[:RUN_DIR]``: a file holding the last line that ``detgroup eval
--json`` printed, and optionally the training folder whose ``log.csv`` gives the training time
(the sum of its epochs' seconds, so a run stopped and resumed counts each whole epoch once).
Columns: word category accuracy, macro-F1, ARI, exact-entity F1 (categories must match),
category-agnostic exact-entity F1, entity F1 of the LayoutLM protocol, Group PQ, train
minutes, ms per form (model forward + decoding).

    python tools/seed_summary.py --name "layout + text" \\
        runs/s0/eval.json:runs/s0 runs/s1/eval.json:runs/s1 runs/s2/eval.json:runs/s2
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

COLUMNS = [("cat_acc", "word cat acc"), ("cat_macro_f1", "macro-F1"), ("ari", "ARI"),
           ("exact_group_f1", "exact-entity F1"),
           ("agnostic_exact_group_f1", "exact-entity F1, categories ignored"),
           ("entity_f1", "LayoutLM entity F1"), ("group_pq", "Group PQ")]


def mean_sd(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± sd`` (sample sd) of ``values``, or the one value alone."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="EVAL_JSON[:RUN_DIR]")
    ap.add_argument("--name", default="model")
    ap.add_argument("--header", action="store_true", help="print the table header first")
    args = ap.parse_args(argv)
    evals, minutes = [], []
    for spec in args.runs:
        eval_path, _, run_dir = spec.partition(":")
        lines = Path(eval_path).read_text().strip().splitlines()
        evals.append(json.loads(lines[-1]))
        if run_dir:
            with (Path(run_dir) / "log.csv").open(newline="") as f:
                minutes.append(sum(float(r["epoch_seconds"]) for r in csv.DictReader(f)) / 60)
    if args.header:
        names = [name for _, name in COLUMNS] + ["train min", "ms per form"]
        print(f"| method (seeds) | {' | '.join(names)} |")
        print("|---" * (len(names) + 1) + "|")
    cells = [mean_sd([e[key] for e in evals]) for key, _ in COLUMNS]
    cells.append(mean_sd(minutes, 1) if minutes else "–")
    cells.append(mean_sd([1000 * (e["model_seconds"] + e["decode_seconds"]) for e in evals], 1))
    print(f"| {args.name} ({len(evals)}) | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
