"""decode_sparse on worst-case graphs: most candidate pairs positive, so a few huge clusters.

Random points on a 2048 px square, each linked to its k nearest (scipy cKDTree), a share
``--positive`` of the pairs with logit U(0.5, 4) and the rest U(-4, -0.5); ``--regions R``
instead makes the pair positive when both ends fall in one of R random Voronoi regions
(flipped with probability 0.1): R huge clusters that touch each other. Optionally 3-class
logits N(0, 1). Each row runs in a fresh process (peak RSS is the process's).

    OMP_NUM_THREADS=1 python tools/bench_sparse_worst.py --sizes 5000 10000 [--classes]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _one(n: int, k: int, positive: float, regions: int, classes: bool) -> dict[str, float]:
    import numpy as np
    from scipy.spatial import cKDTree

    from detgroup.decoder import decode_sparse

    rng = np.random.default_rng(0)
    points = rng.uniform(0, 2048, (n, 2))
    nearest = cKDTree(points).query(points, k + 1)[1][:, 1:]  # [N, k]
    pairs = np.stack([np.repeat(np.arange(n), k), nearest.ravel()], axis=1)
    edges = np.unique(np.sort(pairs, axis=1), axis=0)  # [E, 2]
    if regions:
        region = cKDTree(rng.uniform(0, 2048, (regions, 2))).query(points)[1]  # [N]
        same = region[edges[:, 0]] == region[edges[:, 1]]
        same ^= rng.random(len(edges)) < 0.1
    else:
        same = rng.random(len(edges)) < positive
    logits = np.where(same, 1.0, -1.0) * rng.uniform(0.5, 4.0, len(edges))
    class_logits = rng.normal(0, 1, (n, 3)) if classes else None
    start = time.perf_counter()
    result = decode_sparse(n, edges, logits, class_logits)
    seconds = time.perf_counter() - start
    return {"n": n, "pairs": len(edges), "positive": float((logits > 0).mean()),
            "seconds": seconds, "groups": int(result.group_scores.size),
            "largest": int(np.bincount(result.cluster).max()), "objective": result.objective,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000])
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--positive", type=float, default=0.9)
    parser.add_argument("--regions", type=int, default=0)
    parser.add_argument("--classes", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_one(args.child, args.k, args.positive, args.regions, args.classes)))
        return
    print("| N | pairs | positive | classes | decode s | groups | largest | objective "
          "| peak RSS MB | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--child", str(n), "--k", str(args.k),
               "--positive", str(args.positive), "--regions", str(args.regions)]
        cmd += ["--classes"] if args.classes else []
        row = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                        text=True).stdout.splitlines()[-1])
        print(f"| {n} | {row['pairs']} | {row['positive']:.2f} | {'3' if args.classes else '-'} "
              f"| {row['seconds']:.2f} | {row['groups']} | {row['largest']} "
              f"| {row['objective']:.1f} | {row['peak_mb']:.0f} | {row['load']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
