"""Big scenes: inference time and peak memory, dense path vs candidate pairs, on the CPU.

Each (N, threads, path) runs in a fresh process (so its peak resident memory is its own), on an
``--image-size`` square image with N random boxes of 8-40 px, through the model forward and
``PostProcess`` (``gaec-kl``): the dense path (every pair, chunked pair head, dense decoder) or
the candidate-pair path (``model.pair_candidates``: attention, pair head and ``decode_sparse``
on the candidate graph). The backbone alone is timed too (it is part of ``forward``). The model
is the default synthetic recipe with random weights unless ``--checkpoint`` names a trained
one (timing does not depend on weights). The 1-minute load average (``/proc/loadavg``) is
recorded beside every row: the machine is shared.

    python tools/bench_scale.py --sizes 500 1000 2000 5000 10000 --threads 1 2 \\
        --paths dense sparse --dense-max 2000
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _one(n: int, checkpoint: str | None, threads: int, path: str, size: int) -> dict[str, float]:
    import numpy as np
    import torch

    from detgroup.config import config_to_dict, load_config
    from detgroup.data.dataset import collate_groups, model_inputs
    from detgroup.engine.checkpoint import save_checkpoint
    from detgroup.inference import Grouper
    from detgroup.model.detector import build_model

    torch.set_num_threads(threads)
    if checkpoint is None:
        cfg = load_config(None, ["model.pair_candidates.mode=sparse"])
        cfg.category_names = ["cat", "dog"]
        checkpoint = str(Path(tempfile.mkdtemp()) / "random.pt")
        torch.manual_seed(0)
        save_checkpoint(checkpoint, {"config": config_to_dict(cfg),
                                     "model": build_model(cfg).state_dict()})
    grouper = Grouper.from_checkpoint(checkpoint)
    if grouper.model.candidates is not None:
        grouper.model.candidates.mode = path
    elif path == "sparse":
        raise SystemExit(f"{checkpoint}: the model has no model.pair_candidates block")
    rng = np.random.default_rng(n)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    xy = rng.uniform(0, size - 45, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(8, 40, (n, 2))], axis=1)
    load_before = _load()
    batch = collate_groups([grouper._item(image, boxes, 0)])
    with torch.no_grad():
        start = time.perf_counter()
        grouper.model.features(batch["images"], batch["image_sizes"])
        backbone = time.perf_counter() - start
        start = time.perf_counter()
        out = grouper.model(**model_inputs(batch))
        forward = time.perf_counter() - start
    start = time.perf_counter()
    result = grouper.postprocess(out, batch["boxes"], batch["image_ids"])[0]
    decode = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pairs = len(out["pair_edges"]) if "pair_edges" in out else n * (n - 1) // 2
    return {"n": n, "threads": threads, "path": path, "backbone_s": backbone,
            "forward_s": forward, "decode_s": decode, "peak_mb": peak, "pairs": pairs,
            "groups": len(result.group_scores), "load": (load_before + _load()) / 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--checkpoint")
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--paths", nargs="+", default=["dense", "sparse"],
                        choices=["dense", "sparse"])
    parser.add_argument("--dense-max", type=int, default=2000,
                        help="skip the dense path above this many boxes")
    parser.add_argument("--image-size", type=int, default=2048)
    parser.add_argument("--json-out", help="also write every row to this JSON file")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_one(args.child, args.checkpoint, args.threads[0], args.paths[0],
                              args.image_size)))
        return
    print(f"Command: `python {' '.join(sys.argv)}`; {datetime.datetime.now():%Y-%m-%d %H:%M}; "
          f"image {args.image_size} px\n")
    print("| N boxes | threads | path | pairs scored | backbone s | forward s (incl. backbone) "
          "| decode s | total s | peak RSS MB | groups | load 1 min |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for n in args.sizes:
        for threads in args.threads:
            for path in args.paths:
                if path == "dense" and n > args.dense_max:
                    continue
                cmd = [sys.executable, __file__, "--child", str(n), "--threads", str(threads),
                       "--paths", path, "--image-size", str(args.image_size)]
                if args.checkpoint:
                    cmd += ["--checkpoint", args.checkpoint]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    reason = (proc.stderr.strip().splitlines() or ["?"])[-1]
                    print(f"| {n} | {threads} | {path} | failed: {reason} |", flush=True)
                    continue
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"| {n} | {threads} | {path} | {row['pairs']} | {row['backbone_s']:.2f} | "
                      f"{row['forward_s']:.2f} | {row['decode_s']:.2f} | "
                      f"{row['forward_s'] + row['decode_s']:.2f} | {row['peak_mb']:.0f} | "
                      f"{row['groups']} | {row['load']:.1f} |", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
