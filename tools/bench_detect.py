"""Grouping on detected boxes, three ways side by side on one synthetic set (issue 19).

1. **truth boxes**: the current model (``GroupingModel``, default synthetic recipe) groups the
   ground-truth boxes;
2. **two-stage**: a trained Faster R-CNN finds the boxes, the current model groups them (two
   backbone passes). The Faster R-CNN is the detector half of (3), saved as a torchvision state
   dict and loaded into a plain torchvision ``FasterRCNN``: both pipelines see the same boxes,
   so the comparison isolates where the grouping features come from;
3. **end to end**: ``GroupingFasterRCNN`` (MobileNetV3-Large FPN) detects, classifies and
   groups in one pass.

Every pipeline writes COCO results with ``group_id`` for the val images and is scored by
``detgroup.engine.evaluate.evaluate_detections`` (the code of ``detgroup eval --detections``):
box recall and precision at IoU 0.5, category and box AP, group F1, exact-group F1, Group PQ.
Milliseconds per image and peak resident memory are measured in a fresh process per pipeline
(``--measure``), after one warm-up image, on the CPU with ``--threads`` torch threads.

Usage::

    PYTHONPATH=. python tools/bench_detect.py --out /tmp/bench_detect --train 800 --val 160 \\
        --epochs-group 4 --epochs-detect 3 --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import nms

from detgroup.atomic import atomic_write_json
from detgroup.config import load_config
from detgroup.data.coco_groups import detection_results, load_coco_groups
from detgroup.data.images import read_image_rgb
from detgroup.data.synth import SynthConfig, generate_synthetic
from detgroup.engine.checkpoint import load_checkpoint
from detgroup.engine.evaluate import evaluate_detections
from detgroup.engine.train import train
from detgroup.inference import Grouper, GroupResult
from detgroup.model.grouping_rcnn import build_faster_rcnn, load_detector_weights

PIPELINES = ("truth_boxes", "two_stage", "end_to_end")
METRICS = ("box_recall", "box_precision", "box_ap50", "box_ap", "cat_ap50", "cat_ap", "cat_acc",
           "group_f1", "exact_group_f1", "group_pq", "ari")


def detector_overrides(args: argparse.Namespace) -> list[str]:
    levels = [] if args.torchvision_levels else [  # as configs/synth_detector.yaml
        "model.detector.returned_layers=[2,3,5]",
        "model.detector.anchor_sizes=[[16],[32],[64],[128]]",
    ]
    return [
        *levels,
        "model.detector.backbone=mobilenet_v3_large_fpn",
        f"model.detector.min_size={args.detector_size}",
        f"model.detector.max_size={args.detector_size}",
        f"model.detector.score_threshold={args.score}",
        "model.detector.rpn_post_nms_top_n_train=300",
        "model.detector.rpn_post_nms_top_n_test=300",
        "model.detector.box_batch_size_per_image=64",
        f"train.epochs={args.epochs_detect}",
        f"train.lr={args.lr_detect}",
        "data.batch_size=4",
    ]


def train_models(args: argparse.Namespace, data: Path) -> dict[str, float]:
    common = [
        f"data.train_ann={data / 'train/annotations.json'}",
        f"data.train_images={data / 'train/images'}",
        f"data.val_ann={data / 'val/annotations.json'}",
        f"data.val_images={data / 'val/images'}",
        f"train.threads={args.threads}", "train.device=cpu", "train.select_by=group_pq",
        f"train.max_val_images={args.max_val_images}", f"train.seed={args.seed}",
    ]
    seconds = {}
    jobs = {
        "grouping_model": [f"train.epochs={args.epochs_group}"],
        "grouping_rcnn": detector_overrides(args),
    }
    for name, extra in jobs.items():
        out = args.out / name
        if (out / "model.pt").is_file():
            print(f"{name}: {out / 'model.pt'} exists, not retrained", flush=True)
            seconds[name] = json.loads((out / "summary.json").read_text())["train_seconds"]
            continue
        cfg = load_config(None, [*common, *extra])
        print(f"training {name} -> {out}", flush=True)
        result = train(cfg, out_dir=out, progress=False)
        seconds[name] = result["train_seconds"]
        print(f"{name}: {result['train_seconds']:.0f} s, last epoch {result['final']}",
              flush=True)
    return seconds


def save_detector_half(rcnn_checkpoint: Path, out: Path) -> None:
    """The Faster R-CNN inside a GroupingFasterRCNN checkpoint, as a torchvision state dict."""
    state = load_checkpoint(rcnn_checkpoint)["model"]
    detector = {k.removeprefix("detector."): v for k, v in state.items()
                if k.startswith("detector.")}
    torch.save(detector, out)


class TwoStage:
    """A torchvision Faster R-CNN (local weights) → boxes → the current model groups them."""

    def __init__(self, args: argparse.Namespace) -> None:
        cfg = load_config(None, detector_overrides(args))
        d = cfg.model.detector
        self.detector = build_faster_rcnn(
            backbone=d.backbone, num_classes=2, min_size=d.min_size, max_size=d.max_size,
            score_threshold=d.score_threshold, nms_iou=d.nms_iou,
            detections_per_image=d.detections_per_image,
            rpn_post_nms_top_n_test=d.rpn_post_nms_top_n_test,
            returned_layers=None if d.returned_layers is None else list(d.returned_layers),
            anchor_sizes=None if d.anchor_sizes is None else [list(a) for a in d.anchor_sizes],
        )
        load_detector_weights(self.detector, args.out / "detector.pt", backbone=d.backbone)
        self.detector.eval()
        self.agnostic_nms_iou = d.agnostic_nms_iou  # the same post-processing as end to end
        self.grouper = Grouper.from_checkpoint(args.out / "grouping_model/model.pt")

    @torch.no_grad()
    def __call__(self, pixels: np.ndarray) -> GroupResult:
        image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0
        det = self.detector([image])[0]
        keep = nms(det["boxes"], det["scores"], self.agnostic_nms_iou)
        result = self.grouper.predict(pixels, det["boxes"][keep].numpy())
        result.detection_scores = det["scores"][keep].numpy()
        result.scores = result.scores * result.detection_scores
        return result


def pipeline(name: str, args: argparse.Namespace) -> Any:
    """A callable image (and truth boxes) → GroupResult."""
    if name == "truth_boxes":
        grouper = Grouper.from_checkpoint(args.out / "grouping_model/model.pt")
        return lambda pixels, boxes: grouper.predict(pixels, boxes)
    if name == "two_stage":
        two_stage = TwoStage(args)
        return lambda pixels, boxes: two_stage(pixels)
    grouper = Grouper.from_checkpoint(args.out / "grouping_rcnn/model.pt")
    grouper.model.detector.roi_heads.score_thresh = args.score  # as for the two-stage detector
    return lambda pixels, boxes: grouper.predict(pixels)


def run_pipeline(name: str, args: argparse.Namespace, limit: int = 0
                 ) -> tuple[list[dict[str, Any]], float]:
    """COCO results of ``name`` on the val images, and seconds per image (after a warm-up)."""
    truth = load_coco_groups(args.out / "data/val/annotations.json")
    images = truth.images[:limit] if limit else truth.images
    run = pipeline(name, args)
    results: list[dict[str, Any]] = []
    seconds = 0.0
    for k, info in enumerate(images):
        pixels = read_image_rgb(args.out / "data/val/images" / info["file_name"])
        boxes = truth.targets(info["id"])["boxes"]
        if k == 0:
            run(pixels, boxes)  # warm-up: first-call set-up is not per-image time
        start = time.perf_counter()
        result = run(pixels, boxes)
        seconds += time.perf_counter() - start
        results += detection_results(info["id"], result.boxes, result.categories,
                                     result.groups, result.scores, truth.category_ids)
    return results, seconds / max(len(images), 1)


def _status_mib(field: str) -> float:
    """A memory field of this process from Linux /proc/self/status (VmRSS: now, VmHWM: peak),
    MiB. (``ru_maxrss`` would not do: Linux keeps it across fork + exec, so a child started by
    a big parent reports the parent's peak.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(name: str, args: argparse.Namespace) -> None:
    """Run in a fresh process: print ms/image and peak memory of one pipeline as JSON.

    ``peak_rss_mib``: the process's peak resident memory less its resident memory after the
    imports (torch's libraries alone hold more than a GiB and are the same for every pipeline).
    """
    torch.set_num_threads(args.threads)
    baseline = _status_mib("VmRSS")
    _, seconds = run_pipeline(name, args, limit=args.timing_images)
    peak = _status_mib("VmHWM")
    print(json.dumps({"ms_per_image": seconds * 1000, "peak_rss_mib": peak - baseline}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=800, help="synthetic training images")
    parser.add_argument("--val", type=int, default=160)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--detector-size", type=int, default=256,
                        help="the detector's input size (model.detector.min_size = max_size)")
    parser.add_argument("--torchvision-levels", action="store_true",
                        help="torchvision's FPN levels and anchors (two stride-32 levels, "
                             "anchors 32-512) instead of strides 8/16/32 with anchors 16-128")
    parser.add_argument("--epochs-group", type=int, default=4)
    parser.add_argument("--epochs-detect", type=int, default=3)
    parser.add_argument("--lr-detect", type=float, default=3e-4)
    parser.add_argument("--score", type=float, default=0.5, help="detection score threshold")
    parser.add_argument("--max-val-images", type=int, default=40,
                        help="val images scored after each training epoch")
    parser.add_argument("--timing-images", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure", choices=PIPELINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.measure:
        measure(args.measure, args)
        return

    data = args.out / "data"
    if not (data / "val/annotations.json").is_file():
        generate_synthetic(data, SynthConfig(image_size=args.image_size, num_train=args.train,
                                             num_val=args.val, seed=args.seed))
    train_seconds = train_models(args, data)
    save_detector_half(args.out / "grouping_rcnn/model.pt", args.out / "detector.pt")

    rows: dict[str, dict[str, float]] = {}
    for name in PIPELINES:
        print(f"scoring {name}", flush=True)
        results, _ = run_pipeline(name, args)
        path = args.out / f"results_{name}.json"
        atomic_write_json(path, results)
        summary, _ = evaluate_detections(path, data / "val/annotations.json")
        timing = subprocess.run(
            [sys.executable, __file__, "--out", str(args.out), "--measure", name,
             "--threads", str(args.threads), "--timing-images", str(args.timing_images),
             "--detector-size", str(args.detector_size), "--score", str(args.score),
             *(["--torchvision-levels"] if args.torchvision_levels else [])],
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]
        rows[name] = {**{k: summary[k] for k in METRICS}, **json.loads(timing)}
        print(name, json.dumps(rows[name]), flush=True)

    report = {
        "date": datetime.date.today().isoformat(), "machine": platform.processor() or
        platform.machine(), "torch_threads": args.threads, "train_seconds": train_seconds,
        "args": {k: str(v) for k, v in vars(args).items()}, "pipelines": rows,
    }
    atomic_write_json(args.out / "bench_detect.json", report, indent=1)
    header = ["pipeline", *METRICS, "ms_per_image", "peak_rss_mib"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, row in rows.items():
        print("| " + " | ".join([name, *(f"{row[k]:.4f}" for k in METRICS),
                                 f"{row['ms_per_image']:.1f}", f"{row['peak_rss_mib']:.0f}"])
              + " |")


if __name__ == "__main__":
    main()
