"""Batched vs per-image forward of a from-scratch ResNet18 + FPN (group norm) on a padded batch.

``backbone_features`` runs such a backbone on each image at its own size (so that no image's
group norms count the batch padding); this measures what that costs against one batched call on
the same tensors, side by side, median of 5 runs each after a warm-up.

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=. python tools/bench_backbone_padding.py
"""

from __future__ import annotations

import time

import torch

from detgroup.model.backbone import backbone_features, build_backbone

SIZES = [[256, 256], [320, 288], [288, 320], [256, 320], [320, 320], [256, 288], [288, 256],
         [320, 256]]  # (h, w) of the 8 images of the batch


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = build_backbone(name="resnet18", out_channels=64).eval()
    sizes = torch.tensor(SIZES)
    x = torch.zeros(len(SIZES), 3, 320, 320)  # [B, 3, H, W], zero-padded
    for i, (h, w) in enumerate(SIZES):
        x[i, :, :h, :w] = torch.randn(3, h, w)
    times: dict[str, list[float]] = {"batched": [], "per_image": []}
    with torch.no_grad():
        for run in range(6):
            for kind, seconds in times.items():
                start = time.perf_counter()
                if kind == "batched":
                    net(x)
                else:
                    backbone_features(net, x, sizes)
                if run:  # run 0 warms up
                    seconds.append(time.perf_counter() - start)
    batched, per_image = (sorted(v)[len(v) // 2] for v in times.values())
    print(f"batch {len(SIZES)}, 256..320 px, 1 thread: batched {batched * 1000:.0f} ms, "
          f"per image {per_image * 1000:.0f} ms, per-image / batched {per_image / batched:.2f}")


if __name__ == "__main__":
    main()
