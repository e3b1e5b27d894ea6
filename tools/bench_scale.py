"""Big scenes: inference time and peak memory for N = 500, 1000, 2000 boxes on the CPU.

Each N runs in a fresh process (so its peak resident memory is its own), on a 1024 x 1024 image
with N random boxes of 8-40 px, through ``Grouper.predict`` (model forward with the chunked
pair head, then the dense ``gaec-kl`` decoder). The model is the default synthetic recipe with
random weights unless ``--checkpoint`` names a trained one (timing does not depend on weights).

    python tools/bench_scale.py --sizes 500 1000 2000
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


def _one(n: int, checkpoint: str | None, threads: int) -> dict[str, float]:
    import numpy as np
    import torch

    from detgroup.config import config_to_dict, load_config
    from detgroup.engine.checkpoint import save_checkpoint
    from detgroup.inference import Grouper
    from detgroup.model.detector import build_model

    torch.set_num_threads(threads)
    if checkpoint is None:
        cfg = load_config()
        cfg.category_names = ["cat", "dog"]
        checkpoint = str(Path(tempfile.mkdtemp()) / "random.pt")
        save_checkpoint(checkpoint, {"config": config_to_dict(cfg),
                                     "model": build_model(cfg).state_dict()})
    grouper = Grouper.from_checkpoint(checkpoint)
    rng = np.random.default_rng(n)
    image = rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    xy = rng.uniform(0, 980, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(8, 40, (n, 2))], axis=1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    items = grouper._item(image, boxes, 0)
    from detgroup.data.dataset import collate_groups, model_inputs

    batch = collate_groups([items])
    with torch.no_grad():
        out = grouper.model(**model_inputs(batch))
    forward = time.perf_counter() - start
    start = time.perf_counter()
    result = grouper.postprocess(out, batch["boxes"], batch["image_ids"])[0]
    decode = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n": n, "forward_s": forward, "decode_s": decode, "peak_mb": peak,
            "before_mb": base, "groups": len(result.group_scores)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--checkpoint")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_one(args.child, args.checkpoint, args.threads)))
        return
    print(f"Command: `python {' '.join(sys.argv)}`; torch threads {args.threads}; "
          f"{datetime.date.today().isoformat()}\n")
    print("| N boxes | forward s | decode s (gaec-kl) | total s | peak RSS MB | groups |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--child", str(n), "--threads", str(args.threads)]
        if args.checkpoint:
            cmd += ["--checkpoint", args.checkpoint]
        row = json.loads(subprocess.run(cmd, capture_output=True, text=True,
                                        check=True).stdout.strip().splitlines()[-1])
        print(f"| {n} | {row['forward_s']:.2f} | {row['decode_s']:.2f} | "
              f"{row['forward_s'] + row['decode_s']:.2f} | {row['peak_mb']:.0f} | "
              f"{row['groups']} |", flush=True)


if __name__ == "__main__":
    main()
