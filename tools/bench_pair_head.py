"""Pair head at inference: upper row blocks + mirror vs every row block against all columns.

Both ways run in one process on the same random features (timing does not need trained
weights), with one torch thread; the second repeat is reported.

    python tools/bench_pair_head.py --boxes 1200
"""

from __future__ import annotations

import argparse
import time

import torch

from detgroup.model.heads import PairAffinityHead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=1200)
    parser.add_argument("--chunk", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    n, chunk = args.boxes, args.chunk
    head = PairAffinityHead(dim=128, hidden=128, chunk=chunk).eval()
    h = torch.randn(1, n, 128)  # [1, N, D]
    xy = torch.rand(1, n, 2) * 900
    boxes = torch.cat([xy, xy + 20], dim=-1)  # [1, N, 4]
    with torch.no_grad():
        for _ in range(2):
            start = time.perf_counter()
            upper = head(h, boxes)["pred_affinity"]
            upper_s = time.perf_counter() - start
            start = time.perf_counter()
            rows = [head._block(h, boxes, slice(s, min(s + chunk, n)), slice(None))
                    for s in range(0, n, chunk)]
            full = torch.cat(rows, dim=1)
            full_s = time.perf_counter() - start
    diff = float((upper - full).abs().max())
    print(f"N={n}: upper blocks {upper_s:.2f} s, all rows {full_s:.2f} s, "
          f"ratio {full_s / upper_s:.2f}x, max difference {diff:.1e}")


if __name__ == "__main__":
    main()
