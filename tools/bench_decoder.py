"""Partition decoders on planted partitions: objective gap to the exact ILP, ARI, and time.

Each instance plants groups of 1-8 boxes and draws pair logits ``+2`` (same group) or ``-2``
(different) plus Gaussian noise of standard deviation ``noise``; with classes, each group has
one of 3 categories and each box's class logits are noise plus 1.5 on its group's category.

1. Quality, N <= 30: objective gap of every method to ``exact`` (``(opt - obj) / |opt|``) and
   ARI to the planted groups, per noise level.
2. Joint vs forbid with class logits: gap to the exact joint optimum, ARI, category accuracy.
3. Time per call (median of repeats) for dense N = 10 … 3000, and sparse k-nearest-neighbour
   input, with the objective relative to gaec-kl and ARI.

When ``bioimage_cpp`` (the compiled multicut backend of python-elf) imports, its GAEC and
GAEC + Kernighan-Lin run side by side ("elf gaec", "elf gaec-kl").

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=. python tools/bench_decoder.py [--quick] [--update BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from benchmarks_md import write_section
from scipy.spatial import cKDTree
from sklearn.metrics import adjusted_rand_score

from detgroup.decoder import decode, decode_sparse, objective
from detgroup.decoder.dense import gaec_dense
from detgroup.decoder.local_search import local_search

try:
    import bioimage_cpp
except ImportError:
    bioimage_cpp = None

SECTION = "## Partition decoder"
NOTES = """Notes.

* "gaec only" and "gaec + search" are gaec-kl's own parts (GAEC alone; GAEC then the local
  search, one start); gaec-kl keeps the best of the local search from three starts (GAEC,
  average linkage, and up to 500 boxes all singletons).
* python-elf: `pip download python-elf` finds 0.9.2 on PyPI (a pure-Python wheel); it installs
  on Python 3.11, pulling in its compiled multicut backend bioimage-cpp 0.10.0 plus numba, h5py,
  zarr, pandas, matplotlib and scikit-image, so it was installed in a separate virtualenv
  (`pip install python-elf==0.9.2 scikit-learn`) and this table was made with that
  environment's `python` (the project's own environment gives the same table without the elf
  columns). The elf rows call bioimage-cpp's GreedyAdditiveMulticut and GAEC +
  KernighanLinMulticut (what `elf.segmentation.multicut.multicut_kernighan_lin` runs) on the
  complete graph; "elf gaec" matching "gaec only" cross-checks this module's GAEC. The project
  keeps its numpy decoder: against the exact optimum it is as close or closer than elf's GAEC +
  Kernighan-Lin, on large graphs the two land within a fraction of a percent of each other
  either way, it is several times faster at N = 1000 (elf is faster at N <= 100 and about as
  fast at N = 300, where both take milliseconds), it handles the joint category term, which
  elf's multicut objective cannot express, and it adds no dependency.
* The dense problems get harder with N at a fixed noise level (each box has more
  wrong-signed pairs), so ARI falls with N for every method; the sparse k-nearest-neighbour
  rows (neighbours in a plane where groups are compact) drop the far pairs and score better."""
CLASSES = 3


def planted(
    n: int, noise: float, rng: np.random.Generator, with_classes: bool = False
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Pair logits [N, N], class logits [N, 3] or None, true groups [N], true classes [N]."""
    truth = np.repeat(np.arange(n), rng.integers(1, 9, size=n))[:n]
    truth = truth[rng.permutation(n)]
    same = truth[:, None] == truth[None, :]
    upper = np.triu(np.where(same, 2.0, -2.0) + noise * rng.standard_normal((n, n)), 1)
    classes = rng.integers(0, CLASSES, size=n)[truth]
    if not with_classes:
        return upper + upper.T, None, truth, classes
    class_logits = noise * rng.standard_normal((n, CLASSES))
    class_logits[np.arange(n), classes] += 1.5
    return upper + upper.T, class_logits, truth, classes


def spatial_knn(truth: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Edges [N * k, 2] from each box to its k nearest boxes in a plane where each group sits
    around its own centre (groups of about 4 boxes per unit area)."""
    n = truth.size
    centre = rng.uniform(0, np.sqrt(n / 4), size=(n, 2))[truth]
    position = centre + 0.3 * rng.standard_normal((n, 2))
    tree = cKDTree(position)
    _, nearest = tree.query(position, k=k + 1)  # the first is the box itself
    return np.stack([np.repeat(np.arange(n), k), nearest[:, 1:].ravel()], axis=1)


def elf_labels(w: np.ndarray, with_kl: bool) -> np.ndarray:
    """python-elf's (bioimage-cpp) multicut on the complete graph of w [N, N] → labels [N]."""
    mc = bioimage_cpp.graph.multicut
    n = w.shape[0]
    i, j = np.triu_indices(n, 1)
    graph = bioimage_cpp.graph.UndirectedGraph.from_edges(
        n, np.stack([i, j], axis=1).astype("uint64")
    )
    problem = mc.MulticutObjective(graph, w[i, j].copy())
    if with_kl:
        solver = mc.ChainedMulticutSolvers([mc.GreedyAdditiveMulticut(), mc.KernighanLinMulticut()])
    else:
        solver = mc.GreedyAdditiveMulticut()
    return np.asarray(solver.optimize(problem))


def methods(
    with_exact: bool, with_ablation: bool = False
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Name → function from dense pair logits [N, N] to cluster labels [N]."""
    out = {
        name: (lambda w, name=name: decode(w, method=name).cluster)
        for name in ("gaec-kl", "average", "components")
    }
    if with_ablation:  # gaec-kl's parts: GAEC alone, and local search from GAEC only
        out["gaec only"] = lambda w: gaec_dense(w, None)
        out["gaec + search"] = lambda w: local_search(w, None, gaec_dense(w, None))
    if bioimage_cpp is not None:
        out["elf gaec"] = lambda w: elf_labels(w, with_kl=False)
        out["elf gaec-kl"] = lambda w: elf_labels(w, with_kl=True)
    if with_exact:
        out["exact"] = lambda w: decode(w, method="exact").cluster
    return out


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def quality(sizes: list[int], noises: list[float], instances: int, seed: int) -> str:
    """Gap to exact and ARI per (noise, N) and method."""
    rng = np.random.default_rng(seed)
    names = [m for m in methods(with_exact=True, with_ablation=True) if m != "exact"]
    gap_rows, ari_rows = [], []
    exact_time = []
    for noise in noises:
        for n in sizes:
            gaps = {m: [] for m in names}
            aris = {m: [] for m in [*names, "exact"]}
            for _ in range(instances):
                w, _, truth, _ = planted(n, noise, rng)
                start = time.perf_counter()
                best = decode(w, method="exact")
                exact_time.append(time.perf_counter() - start)
                aris["exact"].append(adjusted_rand_score(truth, best.cluster))
                for name, solve in methods(with_exact=False, with_ablation=True).items():
                    labels = solve(w)
                    value = objective(w, labels)
                    gaps[name].append(100 * (best.objective - value) / abs(best.objective))
                    aris[name].append(adjusted_rand_score(truth, labels))
            gap_rows.append(
                [f"{noise:g}", str(n)]
                + [
                    f"{np.mean(gaps[m]):.3f} / {np.max(gaps[m]):.2f} / "
                    f"{np.mean(np.array(gaps[m]) <= 1e-9) * 100:.0f}%"
                    for m in names
                ]
            )
            ari_rows.append(
                [f"{noise:g}", str(n)] + [f"{np.mean(aris[m]):.3f}" for m in [*names, "exact"]]
            )
    return "\n\n".join(
        [
            f"Objective gap to the exact optimum, in % of |optimum|: mean / max / share of "
            f"instances solved optimally ({instances} instances per row; exact ILP took "
            f"{np.median(exact_time):.3f} s median, {np.max(exact_time):.2f} s max).",
            table(["noise", "N", *names], gap_rows),
            "ARI to the planted groups (mean):",
            table(["noise", "N", *names, "exact"], ari_rows),
        ]
    )


def joint_vs_forbid(n: int, noises: list[float], instances: int, seed: int) -> str:
    """With class logits: gap to the exact joint optimum, ARI, category accuracy."""
    rng = np.random.default_rng(seed)
    rows = []
    for noise in noises:
        stats: dict[str, list[tuple[float, float, float]]] = {}
        for _ in range(instances):
            w, class_logits, truth, classes = planted(n, noise, rng, with_classes=True)
            best = decode(w, class_logits, method="exact").objective
            for method in ("gaec-kl", "average", "exact"):
                for consistency in ("joint", "forbid"):
                    result = decode(w, class_logits, method, consistency)
                    stats.setdefault(f"{method} {consistency}", []).append(
                        (
                            100 * (best - result.objective) / abs(best),
                            adjusted_rand_score(truth, result.cluster),
                            float(np.mean(result.categories == classes)),
                        )
                    )
            argmax = float(np.mean(class_logits.argmax(1) == classes))
            stats.setdefault("per-box argmax", []).append((np.nan, np.nan, argmax))
        for name, values in stats.items():
            gap, ari, acc = np.mean(np.array(values, dtype=float), axis=0)
            gap_text = "" if np.isnan(gap) else f"{gap:.2f}"
            ari_text = "" if np.isnan(ari) else f"{ari:.3f}"
            rows.append([f"{noise:g}", name, gap_text, ari_text, f"{acc:.3f}"])
    return "\n\n".join(
        [
            f"With class logits (3 categories), N = {n}, {instances} instances per noise level: "
            "gap to the exact joint optimum (%), ARI, category accuracy.",
            table(["noise", "decoder", "gap %", "ARI", "category acc."], rows),
        ]
    )


def timed(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def timing(sizes: list[int], noise: float, elf_max: int, seed: int, k: int) -> str:
    """Dense and sparse time per call, objective relative to gaec-kl, ARI."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        w, _, truth, _ = planted(n, noise, rng)
        repeats = 5 if n <= 300 else (3 if n <= 1000 else 1)
        reference = None
        for name, solve in methods(with_exact=n <= 30).items():
            if name.startswith("elf") and n > elf_max:
                rows.append([str(n), "dense", name, "skipped", "", ""])
                continue
            seconds, labels = timed(lambda solve=solve, w=w: solve(w), repeats)
            value = objective(w, labels)
            reference = value if reference is None else reference
            rows.append(
                [
                    str(n),
                    "dense",
                    name,
                    f"{seconds:.4f}",
                    f"{value / reference:.4f}",
                    f"{adjusted_rand_score(truth, labels):.3f}",
                ]
            )
        if n >= 300:
            edges = spatial_knn(truth, k, rng)
            logits = w[edges[:, 0], edges[:, 1]]
            for name in ("gaec-kl", "average", "components"):
                seconds, labels = timed(
                    lambda n=n, e=edges, x=logits, name=name: (
                        decode_sparse(n, e, x, method=name).cluster
                    ),
                    repeats,
                )
                rows.append(
                    [
                        str(n),
                        f"sparse k={k}",
                        name,
                        f"{seconds:.4f}",
                        f"{objective(w, labels) / reference:.4f}",
                        f"{adjusted_rand_score(truth, labels):.3f}",
                    ]
                )
    return "\n\n".join(
        [
            f"Time per call (median; 5 repeats up to N = 300, 3 up to 1000, then 1), noise "
            f'{noise:g}. "objective" is the dense objective relative to gaec-kl\'s; for sparse '
            "rows it scores the sparse decoder's partition on the full dense logits.",
            table(["N", "input", "method", "seconds", "objective", "ARI"], rows),
        ]
    )


def machine() -> str:
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPU cores ({model}), Python {platform.python_version()}, "
        f"numpy {np.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )


def report(quick: bool) -> str:
    sizes_small = [10, 20] if quick else [10, 20, 30]
    noises = [1.0, 2.0, 3.0]
    instances = 3 if quick else 8
    sizes_time = [10, 100, 300] if quick else [10, 100, 300, 1000, 3000]
    elf = "python-elf / bioimage-cpp " + (
        "present" if bioimage_cpp is not None else "not installed (elf rows absent)"
    )
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    parts = [
        quality(sizes_small, noises, instances, seed=0),
        joint_vs_forbid(20, [1.0, 2.0], instances, seed=1),
        timing(sizes_time, 2.0, elf_max=1000, seed=2, k=16),
    ]
    header = "\n".join(
        [
            SECTION,
            "",
            f"Command: `{' '.join(['OMP_NUM_THREADS=1 PYTHONPATH=. python', *sys.argv])}`",
            f"Date: {datetime.date.today().isoformat()}. Machine: {machine()}. {elf}. "
            f"Total run time {time.perf_counter() - started:.0f} s; load average "
            f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (the machine is "
            "shared, so absolute times are noisy; compare rows of one run).",
            "",
            "Planted partitions: groups of 1-8 boxes, pair logits +2 (same group) / -2 "
            "(different) plus Gaussian noise of the given standard deviation.",
        ]
    )
    return header + "\n\n" + "\n\n".join([*parts, NOTES]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--update", type=Path, help="write the section into this markdown file")
    args = parser.parse_args()
    section = report(args.quick)
    print(section)
    if args.update is not None:
        write_section(args.update, section)


if __name__ == "__main__":
    main()
