"""Inference time per image on CPU: backbone vs grouping overhead (RoI tokens, relational
transformer, heads, decoder), side by side in one run.

For each backbone setting (the default small convnet on 256 px images; ResNet-50 + FPN with
256 channels on 800 px images) and each box count N, one image is timed stage by stage:

* backbone: ``GroupingModel.features`` (normalisation + backbone + FPN);
* RoI tokens: ``MultiScaleRoIAlign`` + appearance / position MLPs (``model.tokenizer``);
* transformer: pairwise geometry + relational transformer (``model.relation``);
* heads: category head + pair affinity head;
* decoder: ``detgroup.decoder.decode(method="gaec-kl")`` in numpy.

Weights are random (timing does not depend on them). The decoder's running time does depend on
the logits, and a random network gives near-constant ones, so the decoder is timed on logits
with planted groups (sizes 1-8, +-2 log-odds plus noise), like a trained model's. Stages are
interleaved within each repeat (backbone, then every N) so that load from other processes
spreads over all of them; the median over repeats after warm-up is reported.

On a shared machine, set ``OMP_WAIT_POLICY=PASSIVE`` and add ``--threads 2 1``: when other
processes load the cores, spinning OpenMP threads make multi-threaded timings of small ops wait
for descheduled threads, and the 1-thread rows are the control.

Usage::

    OMP_WAIT_POLICY=PASSIVE nice -n 5 .venv/bin/python tools/bench_inference.py
        [--threads 2 1] [--repeats 7] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchmarks_md import write_section

from detgroup.config import load_config
from detgroup.decoder import decode
from detgroup.model.detector import GroupingModel, build_model
from detgroup.ops.boxes import pairwise_geometry

SECTION = "## Inference time: backbone vs grouping overhead"
OVERHEAD_STAGES = ["tokens", "transformer", "heads", "decoder"]
# (label, image side in px, config overrides)
SETTINGS = [
    ("small convnet (default), 256 px", 256, []),
    ("ResNet-50 + FPN (256 ch), 800 px", 800,
     ["model.backbone.name=resnet50", "model.backbone.out_channels=256"]),
]
TARGET_N = 50
TARGET_RATIO = 0.10


def random_boxes(n: int, side: int, gen: torch.Generator) -> torch.Tensor:
    """[1, N, 4] xyxy px, sides 4-15 % of the image."""
    wh = (0.04 + 0.11 * torch.rand(n, 2, generator=gen)) * side
    xy = torch.rand(n, 2, generator=gen) * (side - wh)
    return torch.cat([xy, xy + wh], dim=1)[None]


def planted_logits(n: int, num_classes: int, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Pair logits [N, N] and class logits [N, C] of groups of 1-8 boxes, with noise."""
    sizes = rng.integers(1, 9, size=n)
    group = np.repeat(np.arange(n), sizes)[:n]
    category = rng.integers(0, num_classes, size=n)[group]
    same = group[:, None] == group[None, :]
    noise = rng.normal(0.0, 1.5, size=(n, n))
    pair = np.where(same, 2.0, -2.0) + (noise + noise.T) / 2
    np.fill_diagonal(pair, 0.0)
    cls = 2.0 * np.eye(num_classes)[category] + rng.normal(0.0, 1.0, size=(n, num_classes))
    return pair.astype(np.float32), cls.astype(np.float32)


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


@torch.no_grad()
def time_stages(model: GroupingModel, image: torch.Tensor, boxes: dict[int, torch.Tensor],
                logits: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict[tuple[int, str], float]:
    """One repeat: seconds per (N, stage); the backbone once (its key has N = 0)."""
    sizes = torch.tensor([image.shape[-2:]])
    padded = tuple(image.shape[-2:])
    feats, t = _timed(model.features, image, sizes)
    times = {(0, "backbone"): t}
    for n, b in boxes.items():
        pad = torch.zeros(1, n, dtype=torch.bool)
        tokens, times[n, "tokens"] = _timed(model.tokenizer, feats, b, sizes, padded)
        start = time.perf_counter()
        h = model.relation(tokens, pairwise_geometry(b), pad)
        times[n, "transformer"] = time.perf_counter() - start
        start = time.perf_counter()
        model.category_head(h)
        model.pair_head(h, b)
        times[n, "heads"] = time.perf_counter() - start
        _, times[n, "decoder"] = _timed(decode, *logits[n], "gaec-kl")
    return times


@torch.no_grad()
def check_split(model: GroupingModel, image: torch.Tensor, boxes: torch.Tensor) -> None:
    """The staged calls compute what ``GroupingModel.forward`` computes."""
    sizes = torch.tensor([image.shape[-2:]])
    feats = model.features(image, sizes)
    tokens = model.tokenizer(feats, boxes, sizes, tuple(image.shape[-2:]))
    h = model.relation(tokens, pairwise_geometry(boxes), torch.zeros(boxes.shape[:2], dtype=bool))
    full = model(image, boxes)
    torch.testing.assert_close(model.pair_head(h, boxes)["pred_affinity"], full["pred_affinity"])


def bench_setting(overrides: list[str], side: int, counts: list[int], threads: int, repeats: int,
                  warmup: int, seed: int) -> dict[tuple[int, str], float]:
    """Median seconds per (N, stage) for one backbone setting on ``threads`` torch threads."""
    torch.set_num_threads(threads)
    cfg = load_config(None, overrides)
    cfg.category_names = ["cat", "dog"]
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    image = torch.rand(1, 3, side, side, generator=gen)
    boxes = {n: random_boxes(n, side, gen) for n in counts}
    logits = {n: planted_logits(n, len(cfg.category_names), rng) for n in counts}
    check_split(model, image, boxes[counts[0]])
    runs = [time_stages(model, image, boxes, logits) for _ in range(warmup + repeats)][warmup:]
    return {key: float(np.median([r[key] for r in runs])) for key in runs[0]}


def machine() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    info = dict(line.split(":", 1) for line in lines.splitlines() if ":" in line)
    return f"{info.get('Model name', '?').strip()}, {info.get('CPU(s)', '?').strip()} CPUs"


def report(results: dict[tuple[str, int], dict[tuple[int, str], float]], counts: list[int],
           args: argparse.Namespace, load: tuple[float, float]) -> str:
    """The BENCHMARKS.md section: setting, table, reading."""
    policy = os.environ.get("OMP_WAIT_POLICY")
    env = [f"OMP_WAIT_POLICY={policy}"] if policy else []
    command = shlex.join([*env, "python", "tools/bench_inference.py", *sys.argv[1:]])
    threads = " and ".join(map(str, args.threads))
    lines = [
        SECTION, "",
        f"Command: `{command}` (niceness {os.nice(0)}), {datetime.date.today()}, {machine()}, "
        f"torch {torch.__version__}, torch threads = {threads}, median of {args.repeats} repeats "
        f"after {args.warmup} warm-up. The machine was shared with training jobs (load average "
        f"{load[0]:.1f} at the start, {load[1]:.1f} at the end), so absolute times are noisy; "
        "the ratios, measured side by side in one run, are what to read. Random-init weights "
        "(timing does not need trained ones); model defaults otherwise (dim 128, 3 relation "
        "layers, pair MLP 128 wide); one image per call. The decoder (`decode`, gaec-kl) runs "
        "on planted-group logits (see the tool's docstring). Overhead = RoI tokens + "
        "transformer + heads + decoder.", "",
        "| backbone, image | threads | N | backbone ms | RoI tokens ms | transformer ms "
        "| heads ms | relation+heads ms | decoder ms | overhead ms | overhead / backbone |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    target, dominant = [], []
    for (label, n_threads), times in results.items():
        backbone = times[0, "backbone"]
        tops = []
        for n in counts:
            parts = {s: times[n, s] for s in OVERHEAD_STAGES}
            overhead = sum(parts.values())
            ms = [f"{parts[s] * 1e3:.1f}" for s in ("tokens", "transformer", "heads")]
            relation_heads = (overhead - parts["decoder"]) * 1e3
            lines.append(
                f"| {label} | {n_threads} | {n} | {backbone * 1e3:.1f} | {' | '.join(ms)} | "
                f"{relation_heads:.1f} | {parts['decoder'] * 1e3:.1f} | {overhead * 1e3:.1f} | "
                f"{overhead / backbone:.1%} |"
            )
            top = max(parts, key=parts.__getitem__)
            tops.append(f"N = {n}: {top} ({parts[top] / overhead:.0%})")
            if n == TARGET_N and "ResNet-50" in label:
                met = "met" if overhead <= TARGET_RATIO * backbone else "missed"
                target.append(f"Target, overhead <= {TARGET_RATIO:.0%} of the backbone at "
                              f"N = {TARGET_N} with ResNet-50 FPN on 800 px, {n_threads} "
                              f"threads: {overhead / backbone:.1%}, {met}.")
        dominant.append(f"{label}, {n_threads} threads, largest overhead stage: "
                        + ", ".join(tops) + ".")
    notes = target + dominant
    if max(load) > (os.cpu_count() or 1) and max(args.threads) > 1:
        notes.append(
            "The load exceeded the core count. Multi-threaded timings then depend on OpenMP's "
            "wait policy: with spinning threads (the default) every parallel region can wait for "
            "a thread that another process holds off the CPU, which inflates the many small ops "
            "of the overhead (up to 100x in trials) far more than the backbone's large "
            "convolutions; `OMP_WAIT_POLICY=PASSIVE` avoids that"
            + (" and was set." if policy == "PASSIVE" else ": re-run with it.")
        )
    return "\n".join(lines + [""] + [f"* {v}" for v in notes]) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[2],
                    help="torch thread counts, measured one after the other")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--boxes", type=int, nargs="+", default=[10, 50, 200])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", type=Path, default=None,
                    help="replace this tool's section of a Markdown file (e.g. BENCHMARKS.md)")
    args = ap.parse_args()
    load_start = os.getloadavg()[0]
    results = {}
    for threads in args.threads:
        for label, side, overrides in SETTINGS:
            print(f"timing {label}, {threads} threads ...", file=sys.stderr, flush=True)
            results[label, threads] = bench_setting(overrides, side, args.boxes, threads,
                                                    args.repeats, args.warmup, args.seed)
    section = report(results, args.boxes, args, (load_start, os.getloadavg()[0]))
    print(section)
    if args.write:
        write_section(args.write, section)


if __name__ == "__main__":
    main()
