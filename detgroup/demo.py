"""``detgroup demo``: the main job in one folder — synth → train → eval (+ the HTML report of
the val images) → infer → truth | prediction overlays."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from detgroup.atomic import atomic_write_json
from detgroup.config import load_config
from detgroup.data.coco_groups import load_coco_groups
from detgroup.data.dataset import GroupDataset, collate_groups
from detgroup.data.synth import generate_synthetic
from detgroup.engine.checkpoint import load_model_from_checkpoint
from detgroup.engine.evaluate import PostProcess, evaluate
from detgroup.engine.infer import run_inference
from detgroup.engine.train import train
from detgroup.report import ReportBuilder, write_comparisons

log = logging.getLogger(__name__)

# A run that fits in about five minutes on two CPU cores (the full recipe is configs/synth.yaml).
DEMO_OVERRIDES = ["synth.num_train=600", "synth.num_val=100", "train.epochs=6"]
QUICK_OVERRIDES = [
    "synth.num_train=24", "synth.num_val=6", "train.epochs=1", "model.dim=32",
    "model.relation.layers=1", "model.pair_hidden=32", "data.batch_size=4",
]
INFER_IMAGES = 6


def run_demo(out: str | Path, *, quick: bool = False, overrides: list[str] | None = None
             ) -> dict[str, Any]:
    """Run the whole pipeline into ``out``; print and return a summary."""
    out = Path(out)
    start = time.perf_counter()
    cfg = load_config(None, (QUICK_OVERRIDES if quick else DEMO_OVERRIDES) + list(overrides or []))
    data = out / "data"
    print(f"[1/5] synthesising {cfg.synth.num_train} + {cfg.synth.num_val} images -> {data}")
    paths = generate_synthetic(data, cfg.synth, progress=True)
    for split, ann in paths.items():
        load_coco_groups(ann, images_dir=ann.parent / "images")
        print(f"      {split}: {ann} validated")
    cfg.data.train_ann, cfg.data.train_images = str(paths["train"]), str(data / "train/images")
    cfg.data.val_ann, cfg.data.val_images = str(paths["val"]), str(data / "val/images")

    print(f"[2/5] training {cfg.train.epochs} epochs -> {out / 'train'}")
    result = train(cfg, out_dir=out / "train")
    checkpoint = out / "train" / "model.pt"

    print("[3/5] evaluating on val (learned decoder vs the connected-components baseline)")
    model, cfg = load_model_from_checkpoint(checkpoint)
    val = GroupDataset(cfg.data.val_ann, cfg.data.val_images)
    loader = DataLoader(val, batch_size=8, collate_fn=collate_groups)
    report = ReportBuilder(
        category_names=cfg.category_names,
        image_files={info["id"]: Path(cfg.data.val_images) / info["file_name"]
                     for info in val.coco.images},
        meta=[("data", cfg.data.val_ann), ("checkpoint", str(checkpoint)),
              ("decoder", cfg.decoder.method)])
    scores = {}
    for method in (cfg.decoder.method, "components"):
        scores[method], _ = evaluate(
            model, loader, num_classes=len(cfg.category_names),
            postprocess=PostProcess.from_config(cfg.decoder, method=method),
            device=torch.device("cpu"),
            on_image=report.add if method == cfg.decoder.method else None,
        )
    index = report.write(out / "report", scores[cfg.decoder.method])
    print(f"      report: {index}")

    print(f"[4/5] inference on {INFER_IMAGES} val images -> {out / 'infer'}")
    subset = out / "infer_input"
    subset.mkdir(parents=True, exist_ok=True)
    coco = load_coco_groups(paths["val"])
    for info in coco.images[:INFER_IMAGES]:
        link = subset / Path(info["file_name"]).name
        if not link.exists():
            link.symlink_to((data / "val/images" / info["file_name"]).resolve())
    infer = run_inference(checkpoint=checkpoint, images=str(subset), out_dir=out / "infer",
                          boxes=paths["val"], resume=False, heatmap=True)

    print(f"[5/5] truth | prediction overlays -> {out / 'compare'}")
    write_comparisons(out / "infer" / "predictions.json", paths["val"], data / "val/images",
                      out / "compare")

    summary = {
        "train_seconds": result["train_seconds"],
        "total_seconds": round(time.perf_counter() - start, 1),
        "val": {m: {k: s[k] for k in ("cat_acc", "ari", "pair_f1", "exact_group_f1", "group_pq")}
                for m, s in scores.items()},
        "infer": {k: infer[k] for k in ("images_done", "images_failed", "seconds_per_image")},
    }
    atomic_write_json(out / "summary.json", summary, indent=2)
    print()
    print(f"detgroup demo finished in {summary['total_seconds']:.0f} s -> {out}")
    keys = ("cat_acc", "ari", "pair_f1", "exact_group_f1", "group_pq")
    print(f"  {'decoder':<12}" + "".join(f"{k:>16}" for k in keys))
    for method, s in summary["val"].items():
        print(f"  {method:<12}" + "".join(f"{s[k]:>16.4f}" for k in keys))
    print(f"  report: {index}")
    print(f"  overlays: {out / 'infer' / 'overlays'} (prediction), {out / 'compare'} "
          "(truth | prediction)")
    return summary
