"""The training loop: read it top to bottom.

One process, or many under ``torchrun`` (PyTorch DDP: gloo on CPU, NCCL on GPU) with the same
config. Each epoch draws a batch order from (seed, epoch), so a run resumed from any checkpoint,
even one written mid-epoch, sees the same batches as an uninterrupted run. Rank 0 evaluates,
logs and writes checkpoints (atomically: ``last.pt`` and ``best.pt`` by the val metric
``train.select_by``, ARI by default).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from detgroup.atomic import atomic_open, atomic_write_json, remove_stale_temp_files
from detgroup.config import VAL_METRICS, Config, config_to_dict, config_to_yaml, reads_attributes
from detgroup.data.dataset import GroupDataset, collate_groups, model_inputs
from detgroup.engine.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from detgroup.engine.evaluate import evaluate, move_batch, unscored_indices
from detgroup.errors import DetgroupError
from detgroup.losses import calibrated_pair_bias
from detgroup.model.postprocess import AGNOSTIC_CATEGORY, PostProcess, build

log = logging.getLogger(__name__)

LOG_FIELDS = [
    "epoch", "step", "lr", "loss", "loss_cls", "loss_pair", "epoch_seconds",
    *(f"val_{name}" for name in VAL_METRICS),
]


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device_name == "cuda" and not torch.cuda.is_available():
        raise DetgroupError("train.device=cuda but no CUDA device is available")
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{info.local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info, device


def epoch_batches(
    sizes: list[int], *, batch_size: int, max_boxes: int, seed: int, epoch: int, info: DistInfo
) -> list[list[int]]:
    """This rank's batches of dataset indices for one epoch.

    The order is a permutation drawn from (seed, epoch), dealt to ranks round robin. With
    ``max_boxes`` > 0 a batch is closed early once ``B * Nmax`` would exceed it, so images with
    very different box counts do not blow up the padding. Every rank gets the same number of
    batches (the smallest), which DDP needs.
    """
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(sizes), generator=gen).tolist()
    per_rank = []
    for rank in range(info.world):
        batches: list[list[int]] = []
        current: list[int] = []
        n_max = 0
        for index in order[rank :: info.world]:
            n_new = max(n_max, sizes[index])
            full = len(current) >= batch_size
            too_big = max_boxes > 0 and current and (len(current) + 1) * n_new > max_boxes
            if full or too_big:
                batches.append(current)
                current, n_new = [], sizes[index]
            current.append(index)
            n_max = n_new
        if current:
            batches.append(current)
        per_rank.append(batches)
    count = min(len(b) for b in per_rank)
    return per_rank[info.rank][:count]


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup over ``warmup`` steps to 1, then a cosine to 0.01 at step ``total``.

    Kept as a LambdaLR closed form rather than ``SequentialLR(LinearLR, CosineAnnealingLR)``:
    the library's chained cosine agrees only to rounding (tests/test_train.py), cycles back up
    past ``total``, and its state would not load from the ``last.pt`` files written so far.
    """
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_open(path, "w") as f:
        f.write(buffer.getvalue())


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _ranks_max_weight_diff(model: nn.Module, info: DistInfo) -> float:
    """Largest difference between this run's weights on any rank and rank 0's (0 = in sync)."""
    vec = torch.cat([p.detach().flatten().double() for p in _unwrap(model).parameters()])
    if info.world == 1:
        return 0.0
    ref = vec.clone()
    dist.broadcast(ref, 0)
    diff = (vec - ref).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


def build_loaders(cfg: Config) -> tuple[GroupDataset, GroupDataset]:
    """Training set (images with no boxes dropped: nothing to learn) and validation set."""
    train_set = GroupDataset(
        cfg.data.train_ann, cfg.data.train_images, hflip_prob=cfg.data.hflip_prob,
        scale_jitter=cfg.data.scale_jitter, box_jitter=cfg.data.box_jitter,
        photometric=cfg.data.photometric, box_dropout=cfg.data.box_dropout,
        seed=cfg.train.seed, load_images=cfg.model.backbone.name != "none",
    )
    val_set = GroupDataset(cfg.data.val_ann, cfg.data.val_images,
                           load_images=cfg.model.backbone.name != "none")
    for ann, dataset, what in ((cfg.data.train_ann, train_set, "to learn from"),
                               (cfg.data.val_ann, val_set, "to score (every val metric would "
                                "be undefined)")):
        if dataset.coco.group_label_counts()["boxes"] == 0:
            raise DetgroupError(f"{ann}: no boxes in its {len(dataset)} images: nothing {what}")
    if cfg.data.val_ignore_categories and cfg.data.unscored_categories:
        raise DetgroupError("data.val_ignore_categories scores one category: set no "
                            "data.unscored_categories")
    if (train_set.category_names != val_set.category_names
            and not cfg.data.val_ignore_categories):
        raise DetgroupError(
            f"{cfg.data.val_ann}: categories {val_set.category_names} differ from the training "
            f"set's {train_set.category_names} (data.val_ignore_categories=true scores val by "
            "the grouping alone)"
        )
    if reads_attributes(cfg):
        names = train_set.coco.attribute_names
        if not names:
            raise DetgroupError(f"{cfg.data.train_ann}: model.attributes is on but the file "
                                "declares no top-level 'attribute_names'")
        if val_set.coco.attribute_names != names:
            raise DetgroupError(
                f"{cfg.data.val_ann}: attribute_names {val_set.coco.attribute_names} differ "
                f"from the training set's {names}"
            )
    if cfg.model.text.enabled and not any(
        "text" in a for anns in train_set.coco.anns_by_image.values() for a in anns
    ):
        raise DetgroupError(f"{cfg.data.train_ann}: model.text is on but no annotation has a "
                            "'text'")
    return train_set, val_set


class _NonEmpty(Dataset):
    def __init__(self, base: GroupDataset) -> None:
        self.base = base
        self.indices = [i for i in range(len(base)) if base.num_boxes(i) > 0]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.base[self.indices[i]]

    def num_boxes(self, i: int) -> int:
        return self.base.num_boxes(self.indices[i])


def train(
    cfg: Config,
    *,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    should_stop: Callable[[int], bool] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into ``out_dir``; return the run summary (also written to summary.json).

    ``should_stop(step)`` is asked after every optimiser step (Ctrl-C sets it too); when it says
    yes, ``last.pt`` is written at that exact position and training returns early with
    ``summary["interrupted"] = True``; ``resume=True`` continues from there.
    """
    info, device = _init_distributed(cfg.train.device)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    out = Path(out_dir)
    if info.main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DetgroupError(f"{out}: cannot create output folder ({err.strerror})") from None
        if not os.access(out, os.W_OK):
            raise DetgroupError(f"{out}: output folder is not writable")
        remove_stale_temp_files(out)

    train_set, val_set = build_loaders(cfg)
    names = train_set.category_names
    if cfg.category_names and cfg.category_names != names:
        raise DetgroupError(
            f"{cfg.data.train_ann}: categories {names} differ from the config's "
            f"{cfg.category_names}"
        )
    cfg.category_names = list(names)
    if reads_attributes(cfg):
        if cfg.attribute_names and cfg.attribute_names != train_set.coco.attribute_names:
            raise DetgroupError(
                f"{cfg.data.train_ann}: attribute_names {train_set.coco.attribute_names} differ "
                f"from the config's {cfg.attribute_names}"
            )
        cfg.attribute_names = list(train_set.coco.attribute_names)
    if cfg.decoder.calibrate:
        cfg.decoder.pair_bias = calibrated_pair_bias(cfg, train_set.coco)
        log.info("decoder.pair_bias = %.3f (calibrated on %s, pair loss %s)",
                 cfg.decoder.pair_bias, cfg.data.train_ann, cfg.loss.pair)
    fit_set = _NonEmpty(train_set)
    if len(fit_set) == 0:
        raise DetgroupError(f"{cfg.data.train_ann}: no image with boxes to train on")

    torch.manual_seed(cfg.train.seed)
    model, criterion, postprocess = build(cfg)
    val_classes = len(cfg.category_names)
    if cfg.data.val_ignore_categories:  # val by the pair logits alone, one category
        postprocess = PostProcess.from_config(cfg.decoder, category_names=[AGNOSTIC_CATEGORY],
                                              ignore_categories=True)
        val_classes = 1
    model = model.to(device)
    detects = cfg.model.detector.backbone is not None  # the model needs the truth to train
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sizes = [fit_set.num_boxes(i) for i in range(len(fit_set))]

    def batches_of(epoch: int) -> list[list[int]]:
        return epoch_batches(
            sizes, batch_size=cfg.data.batch_size, max_boxes=cfg.data.max_boxes_per_batch,
            seed=cfg.train.seed, epoch=epoch, info=info,
        )

    steps_per_epoch = len(batches_of(0))
    total_steps = steps_per_epoch * cfg.train.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(min(cfg.train.warmup_steps, total_steps // 4 + 1), total_steps)
    )
    amp = cfg.train.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)

    epoch, batch_in_epoch, step, best, rows = 0, 0, 0, -math.inf, []
    if resume:
        last = out / "last.pt"
        state = load_checkpoint(last)
        if state["config"].get("category_names") != names:
            raise DetgroupError(f"{last}: checkpoint categories differ from the training data")
        load_model_weights(model, state, last)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], device)
        epoch, batch_in_epoch, step = state["epoch"], state["batch_in_epoch"], state["step"]
        best, rows = state["best"], list(state["log"])
        log.info("resumed from %s at epoch %d, batch %d, step %d", last, epoch, batch_in_epoch,
                 step)

    if info.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=ids)
    unscored = unscored_indices(names, cfg.data.unscored_categories,
                                source="config data.unscored_categories")
    val_items = range(len(val_set)) if cfg.train.max_val_images <= 0 else range(
        min(cfg.train.max_val_images, len(val_set)))
    val_loader = DataLoader(
        torch.utils.data.Subset(val_set, list(val_items)), batch_size=cfg.data.batch_size,
        collate_fn=collate_groups, num_workers=cfg.data.num_workers,
    )
    writer = _tensorboard(out, cfg.train.tensorboard and info.main)

    def state_dict() -> dict[str, Any]:
        return {
            "config": config_to_dict(cfg), "model": _unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": _rng_state(device), "epoch": epoch,
            "batch_in_epoch": batch_in_epoch, "step": step, "best": best, "log": rows,
        }

    if info.main:
        with atomic_open(out / "config.yaml", "w") as f:
            f.write(config_to_yaml(cfg))

    stop_flag = {"stop": False}
    previous_handler = _install_sigint(stop_flag)
    interrupted = False
    start_time = time.perf_counter()
    try:
        model.train()
        while epoch < cfg.train.epochs:
            train_set.set_epoch(epoch)
            batches = batches_of(epoch)
            loader = DataLoader(
                fit_set, batch_sampler=batches[batch_in_epoch:], collate_fn=collate_groups,
                num_workers=cfg.data.num_workers,
            )
            sums = {"loss": 0.0, "loss_cls": 0.0, "loss_pair": 0.0}
            count = 0
            epoch_start = time.perf_counter()
            bar = tqdm(loader, total=len(batches), initial=batch_in_epoch,
                       desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                       disable=not (progress and info.main), leave=False)
            for batch in bar:
                batch = move_batch(batch, device)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                    if detects:  # the detecting model needs the truth to train
                        outputs = model(batch["images"], batch["boxes"], batch["pad_mask"],
                                        batch["image_sizes"], categories=batch["categories"],
                                        groups=batch["groups"])
                    else:
                        outputs = model(**model_inputs(batch))
                losses = criterion(outputs, batch)
                loss = criterion.total(losses)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss at step {step}: {losses}")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                if cfg.train.clip_grad > 0:
                    nn.utils.clip_grad_norm_(params, cfg.train.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                batch_in_epoch += 1
                count += 1
                sums["loss"] += float(loss.detach())
                for k in ("loss_cls", "loss_pair"):
                    sums[k] += float(losses[k].detach())
                bar.set_postfix(loss=f"{sums['loss'] / count:.3f}")
                if writer is not None:
                    writer.add_scalar("train/loss", float(loss.detach()), step)
                every = cfg.train.save_every_steps
                if info.main and every and step % every == 0:
                    save_checkpoint(out / "last.pt", state_dict())
                if stop_flag["stop"] or (should_stop is not None and should_stop(step)):
                    interrupted = True
                    break
            if interrupted:
                break
            row: dict[str, Any] = {
                "epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0],
                "epoch_seconds": round(time.perf_counter() - epoch_start, 2),
                **{k: v / max(count, 1) for k, v in sums.items()},
            }
            epoch += 1
            batch_in_epoch = 0
            is_eval = epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs
            if is_eval and info.main:
                summary, _ = evaluate(
                    _unwrap(model), val_loader, num_classes=val_classes, postprocess=postprocess,
                    device=device, progress=progress, unscored_categories=unscored,
                )
                row.update({f"val_{k}": summary[k] for k in VAL_METRICS})
                if writer is not None:
                    for k, v in row.items():
                        writer.add_scalar(f"epoch/{k}", v, epoch)
                log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
                rows.append(row)
                if summary[cfg.train.select_by] > best:
                    best = summary[cfg.train.select_by]
                    save_checkpoint(out / "best.pt", {**state_dict(), "optimizer": None,
                                                      "scheduler": None, "scaler": None})
            elif info.main:
                rows.append(row)
            if info.main:
                save_checkpoint(out / "last.pt", state_dict())
                _write_log(out / "log.csv", rows)
            if info.world > 1:
                dist.barrier()
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        if writer is not None:
            writer.close()

    result: dict[str, Any] = {
        "epochs_done": epoch, "steps": step, "interrupted": interrupted,
        "train_seconds": round(time.perf_counter() - start_time, 2),
        "world_size": info.world, "rank": info.rank,
        "best_val_ari": (best if best > -math.inf and cfg.train.select_by == "ari" else None),
        "best_val": ({"metric": cfg.train.select_by, "value": best} if best > -math.inf
                     else None),
        "ranks_max_weight_diff": _ranks_max_weight_diff(model, info),
        "final": rows[-1] if rows else {},
    }
    if info.main:
        if interrupted:
            save_checkpoint(out / "last.pt", state_dict())
            _write_log(out / "log.csv", rows)
        else:
            export_inference_checkpoint(out / "best.pt", out / "model.pt")
        atomic_write_json(out / "summary.json", result, indent=2)
    if info.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def export_inference_checkpoint(src: Path, dst: Path) -> None:
    """Write the weights + config of ``src`` (no optimiser state) to ``dst``."""
    state = load_checkpoint(src)
    save_checkpoint(dst, {"config": state["config"], "model": state["model"],
                          "epoch": state["epoch"], "step": state["step"]})


def _install_sigint(flag: dict[str, bool]) -> Any:
    """First Ctrl-C asks the loop to save and stop after the current step; a second one kills."""

    def handler(signum: int, frame: Any) -> None:
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True
        log.warning("interrupt: saving a checkpoint after this step (Ctrl-C again to abort)")

    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:  # not in the main thread
        return signal.getsignal(signal.SIGINT)


def _tensorboard(out: Path, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise DetgroupError("train.tensorboard=true needs the 'tensorboard' package: "
                            "pip install 'detgroup[tensorboard]'") from None
    return SummaryWriter(str(out / "tensorboard"))
