"""Train and evaluate a detectron2 model with detgroup's ``GroupingROIHeads`` (issue 20).

A thin ``DefaultTrainer``: the COCO-with-groups train / val files are registered by
``register_coco_groups_instances`` (validated by detgroup), batches come from
``GroupingDatasetMapper`` (``Instances.gt_groups``), evaluation is ``GroupingEvaluator`` (groups
on detected boxes + COCO AP). Random init: no weights are downloaded (``MODEL.WEIGHTS`` may name
a local file). ``--optimizer``: ``adamw`` (default; what ``detgroup train`` uses, with
``SOLVER.BASE_LR`` and ``SOLVER.WEIGHT_DECAY``) or ``sgd`` (detectron2's own).

Writes into ``--out``: detectron2's checkpoints and logs, ``config.yaml``, and ``metrics.json``
(the val metrics, train seconds and, with ``--time-images``, milliseconds per image at batch 1
on the CPU after one warm-up image).

Usage::

    detgroup synth --out runs/synth
    PYTHONPATH=. python tools/train_detectron2.py \\
        --config configs/detectron2/synth_mobilenet.yaml --data runs/synth --out runs/d2_synth
    PYTHONPATH=. python tools/train_detectron2.py \\
        --config configs/detectron2/synth_mobilenet.yaml --data runs/synth --out runs/d2_synth \\
        --eval-only --time-images 50
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils.logger import setup_logger

from detgroup.atomic import atomic_write_json
from detgroup.errors import DetgroupError
from detgroup.integrations.detectron2 import (
    GroupingDatasetMapper,
    GroupingEvaluator,
    add_grouping_config,
    register_coco_groups_instances,
)


class GroupingTrainer(DefaultTrainer):
    """``DefaultTrainer`` with the grouping mapper, the grouping evaluator and AdamW."""

    optimizer_name = "adamw"  # or "sgd"

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        return build_detection_train_loader(cfg, mapper=GroupingDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None):
        return GroupingEvaluator(dataset_name)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        if cls.optimizer_name == "sgd":
            return super().build_optimizer(cfg, model)
        params = get_default_optimizer_params(
            model, base_lr=cfg.SOLVER.BASE_LR, weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM)
        return maybe_add_gradient_clipping(
            cfg, torch.optim.AdamW(params, lr=cfg.SOLVER.BASE_LR,
                                   weight_decay=cfg.SOLVER.WEIGHT_DECAY))


def setup(config: str | None, data: Path, out: Path, opts: list[str]) -> CfgNode:
    """The config: detectron2's defaults + MODEL.GROUPING + the file + ``opts``; the synthetic
    (or any COCO-with-groups) ``data`` folder registered as ``dg_train`` / ``dg_val``."""
    cfg = get_cfg()
    add_grouping_config(cfg)
    if config:
        cfg.merge_from_file(config)
    cfg.merge_from_list(opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    for name in ("dg_train", "dg_val"):  # a second setup in one process replaces them
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    train = register_coco_groups_instances("dg_train", data / "train/annotations.json",
                                           data / "train/images")
    register_coco_groups_instances("dg_val", data / "val/annotations.json", data / "val/images")
    cfg.DATASETS.TRAIN = ("dg_train",)
    cfg.DATASETS.TEST = ("dg_val",)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(train.category_names)
    cfg.OUTPUT_DIR = str(out)
    cfg.freeze()
    return cfg


@torch.no_grad()
def time_images(cfg: CfgNode, model: torch.nn.Module, count: int) -> float:
    """Milliseconds per image at batch 1 over ``count`` val images, after one warm-up image."""
    model.eval()
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    seconds, seen = 0.0, -1
    for inputs in loader:
        start = time.perf_counter()
        model(inputs)
        if seen >= 0:
            seconds += time.perf_counter() - start
        seen += 1
        if seen >= count:
            break
    return 1000.0 * seconds / max(seen, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="a detectron2 YAML (configs/detectron2/*.yaml)")
    p.add_argument("--data", type=Path, required=True,
                   help="folder with train/ and val/ (annotations.json + images/)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--eval-only", action="store_true", help="evaluate OUT/model_final.pth")
    p.add_argument("--time-images", type=int, default=0,
                   help="also time this many val images at batch 1 (ms per image)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw",
                   help="adamw (as detgroup train) or sgd (detectron2's)")
    p.add_argument("opts", nargs="*", help="config overrides: KEY VALUE pairs")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    GroupingTrainer.optimizer_name = args.optimizer
    try:
        cfg = setup(args.config, args.data, args.out, args.opts)
    except DetgroupError as err:
        print(f"train_detectron2: error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    setup_logger(output=str(args.out), name="detectron2")
    setup_logger(output=str(args.out), name="detgroup")
    (args.out / "config.yaml").write_text(cfg.dump())
    record: dict[str, Any] = {"config": args.config, "threads": torch.get_num_threads()}
    if args.eval_only:
        model = GroupingTrainer.build_model(cfg)
        DetectionCheckpointer(model).load(str(args.out / "model_final.pth"))
    else:
        trainer = GroupingTrainer(cfg)
        trainer.resume_or_load(resume=False)
        start = time.perf_counter()
        trainer.train()
        record["train_seconds"] = time.perf_counter() - start
        model = trainer.model
    record["val"] = GroupingTrainer.test(cfg, model)["groups"]
    if args.time_images:
        record["ms_per_image"] = time_images(cfg, model, args.time_images)
    previous = args.out / "metrics.json"
    if args.eval_only and previous.is_file():
        record = {**json.loads(previous.read_text()), **record}
    atomic_write_json(args.out / "metrics.json", record)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
