"""The detectron2 model with ``GroupingROIHeads`` vs the torchvision ``GroupingFasterRCNN`` of
the same size, scored by the same code on the same val images (issue 20).

Both models are trained first: ``tools/train_detectron2.py`` (``configs/detectron2/
synth_mobilenet.yaml``) and ``detgroup train`` (``configs/synth_detector.yaml``, same data).
Each one then runs on every val image at batch 1 with ``--threads`` torch threads on the CPU,
at the same detection score threshold (``--score``; both models multiply the detector's score
by the grouping head's category probability). Their COCO results with ``group_id`` are written
to ``--out`` and scored by ``detgroup.engine.evaluate.evaluate_detections`` (the code of
``detgroup eval --detections``): box recall / precision at IoU 0.5, COCO AP, class-agnostic box
AP, category accuracy on matched boxes, group F1, exact-group F1, Group PQ, ARI. Milliseconds
per image: the mean model call after one warm-up image, over ``--timing-images`` images.
Noise: a paired bootstrap over val images (``--bootstrap`` resamples) of the difference in
per-image ARI on matched boxes, per-image Group PQ, group F1 and box recall, as a 95 % interval.
``--rescore`` scores the results files of an earlier run instead of running the models.

Usage::

    PYTHONPATH=. python tools/bench_detectron2.py --data runs/synth --detectron2 runs/d2_synth \\
        --torchvision runs/synth_detector/model.pt --out runs/bench_d2 --score 0.05
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper
from detectron2.modeling import build_model

from detgroup.atomic import atomic_write_json
from detgroup.data.coco_groups import detection_results, load_coco_groups
from detgroup.data.images import read_image_rgb
from detgroup.engine.evaluate import evaluate_detections
from detgroup.inference import Grouper
from detgroup.integrations.detectron2 import GroupingEvaluator, add_grouping_config
from detgroup.integrations.detectron2.data import (
    coco_groups_dataset_dicts,
    register_coco_groups_instances,
)

METRICS = ("box_recall", "box_precision", "cat_ap50", "cat_ap", "box_ap50", "box_ap", "cat_acc",
           "group_f1", "exact_group_f1", "group_pq", "ari")


def run_detectron2(run: Path, data: Path, score: float, timing: int
                   ) -> tuple[list[dict[str, Any]], float]:
    """COCO results of the detectron2 model in ``run`` on the val images, and ms / image."""
    cfg = get_cfg()
    add_grouping_config(cfg)
    cfg.merge_from_file(str(run / "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(str(run / "model_final.pth"))
    val = data / "val"
    truth = register_coco_groups_instances("bench_val", val / "annotations.json", val / "images")
    mapper = DatasetMapper(cfg, is_train=False)
    evaluator = GroupingEvaluator("bench_val")
    evaluator.reset()
    seconds, timed = 0.0, 0
    with torch.no_grad():
        for k, record in enumerate(coco_groups_dataset_dicts(truth, val / "images")):
            inputs = [mapper(record)]
            if k == 0:
                model(inputs)  # warm-up
            start = time.perf_counter()
            outputs = model(inputs)
            if k < timing:
                seconds += time.perf_counter() - start
                timed += 1
            evaluator.process(inputs, outputs)
    return evaluator.results, 1000.0 * seconds / max(timed, 1)


def run_torchvision(checkpoint: Path, data: Path, score: float, timing: int
                    ) -> tuple[list[dict[str, Any]], float]:
    """COCO results of the ``GroupingFasterRCNN`` checkpoint on the val images, and ms / image."""
    grouper = Grouper.from_checkpoint(checkpoint)
    grouper.model.detector.roi_heads.score_thresh = score
    truth = load_coco_groups(data / "val/annotations.json")
    results: list[dict[str, Any]] = []
    seconds, timed = 0.0, 0
    for k, info in enumerate(truth.images):
        pixels = read_image_rgb(data / "val/images" / info["file_name"])
        if k == 0:
            grouper.predict(pixels)  # warm-up
        start = time.perf_counter()
        result = grouper.predict(pixels)
        if k < timing:
            seconds += time.perf_counter() - start
            timed += 1
        results += detection_results(info["id"], result.boxes, result.categories,
                                     result.groups, result.scores, truth.category_ids)
    return results, 1000.0 * seconds / max(timed, 1)


def paired_interval(a: list[float | None], b: list[float | None], resamples: int,
                    seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b over the images where both are defined, and its 95 % bootstrap interval."""
    pairs = np.array([(x, y) for x, y in zip(a, b, strict=True)
                      if x is not None and y is not None], dtype=np.float64).reshape(-1, 2)
    diff = pairs[:, 0] - pairs[:, 1]
    if len(diff) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="folder with val/")
    p.add_argument("--detectron2", type=Path, required=True,
                   help="output folder of tools/train_detectron2.py")
    p.add_argument("--torchvision", type=Path, required=True,
                   help="model.pt of detgroup train with configs/synth_detector.yaml")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--score", type=float, default=0.5, help="detection score threshold")
    p.add_argument("--timing-images", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--rescore", action="store_true",
                   help="score OUT/results_*.json of an earlier run (no model is run)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, float]] = {}
    per_image: dict[str, list[dict[str, Any]]] = {}
    earlier = {}
    if args.rescore:
        earlier = json.loads((args.out / "bench_detectron2.json").read_text())["models"]
    for name, run in (("detectron2", lambda: run_detectron2(args.detectron2, args.data,
                                                             args.score, args.timing_images)),
                      ("torchvision", lambda: run_torchvision(args.torchvision, args.data,
                                                              args.score, args.timing_images))):
        path = args.out / f"results_{name}.json"
        if args.rescore:
            ms = earlier[name]["ms_per_image"]
        else:
            results, ms = run()
            atomic_write_json(path, results)
        summary, per_image[name] = evaluate_detections(path, args.data / "val/annotations.json")
        rows[name] = {**{k: float(summary[k]) for k in METRICS}, "ms_per_image": ms,
                      "detections": int(summary["num_detections"])}
        print(name, json.dumps(rows[name]), flush=True)
    noise = {}
    for key in ("ari", "group_pq", "group_f1", "box_recall"):
        mean, low, high = paired_interval([r[key] for r in per_image["detectron2"]],
                                          [r[key] for r in per_image["torchvision"]],
                                          args.bootstrap)
        noise[key] = {"mean_difference": mean, "low": low, "high": high}
        print(f"{key}: detectron2 - torchvision per image = {mean:.3f} "
              f"(95 % bootstrap interval {low:.3f} .. {high:.3f})")
    atomic_write_json(args.out / "bench_detectron2.json",
                      {"args": {k: str(v) for k, v in vars(args).items()}, "models": rows,
                       "paired_differences": noise},
                      indent=1)
    header = ["model", *METRICS, "ms_per_image"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, row in rows.items():
        print("| " + " | ".join([name, *(f"{row[k]:.3f}" for k in METRICS),
                                 f"{row['ms_per_image']:.0f}"]) + " |")


if __name__ == "__main__":
    main()
