"""Omniglot in the "Learning to cluster" protocol: every method on the same whole-alphabet scenes.

Data: ``detgroup data omniglot ... --eval-alphabets ...`` (datasets/README_omniglot.md, "The
L2C protocol"): split ``alphabets`` holds one scene per alphabet never trained on (all of its
characters x all 20 drawers); ``test`` (and ``val``) hold the held-out characters of the trained
alphabets, one scene per alphabet. The number of characters is never given, except to the
rows marked "oracle K". Every method sees the true glyph boxes and ignores categories (a scene
is one alphabet).

Rows:

* ``HOG + Ward (tuned on train)``: the HOG descriptor of each glyph's square 32 px crop
  (:mod:`detgroup.data.crop_descriptors`), L2-normalised, Ward linkage cut at the threshold with
  the best mean ARI over ``--tune-scenes`` training scenes; also tuned on ``val`` (held-out
  characters of the trained alphabets, all 20 drawers: closer in size to the evaluation scenes),
  and raw pixels + Ward; ``HOG + k-means (oracle K)`` is given the true number of characters.
* one row per ``--model NAME=CHECKPOINT``: the model's pair logits decoded by the partition
  decoder (gaec-kl, categories ignored, the checkpoint's ``decoder.pair_bias``; ``--methods
  gaec-kl average`` adds rows ``NAME [average]``, average linkage, for this and the tuned
  rows below, each tuned for its own decoder); a model trained
  with ``loss.pair`` kcl or mcl also gets ``NAME, argmax of the cluster head (L2C)``, each glyph
  in the cluster of its largest output node (L2C's decoding, K^ = the nodes used); and with
  ``--hog-prior`` also ``NAME, pair bias tuned on val`` (the pair logits shifted by the
  constant of the best val ARI) and ``NAME + HOG prior``: pair logits + alpha x (cosine of
  the two HOG descriptors - tau), a fixed (non-learned) layer on top of the model, alpha and
  tau tuned on ``val`` by mean ARI. A checkpoint trained with ``model.attributes`` reads each
  split's ``annotations_hog.json`` (:func:`~detgroup.data.crop_descriptors.write_hog_attributes`).

``--tune-split unseen`` tunes every "tuned on" row (Ward threshold, pair bias, HOG prior) on the
``unseen`` split instead of ``val``: characters of alphabets never trained on (data written with
``--unlisted-train-runs 4``, so that one run of unlisted characters stays out of training),
which is what the evaluation alphabets are, where ``val`` holds new characters of trained ones.

Prints per-scene and mean Hungarian accuracy, NMI, ARI and |K^ - K|, and (``--memory``) the
wall time and peak memory (VmHWM of a fresh process) of one forward + decode of each model on
the largest scene. ``--json`` writes every number.

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=. python tools/bench_omniglot_l2c.py --data runs/omniglot_l2c \\
        --model crop=runs/l2c_crop/model.pt --hog-prior --memory --json runs/l2c_bench.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detgroup.baselines import Agglomerative, Scene, Setting, kmeans_oracle_groups, l2_normalise
from detgroup.baselines import tune as tune_setting
from detgroup.config import DecoderConfig, reads_attributes
from detgroup.data.crop_descriptors import crop_hog, crop_pixels
from detgroup.data.dataset import GroupDataset, collate_groups, model_inputs
from detgroup.decoder import partition
from detgroup.engine.checkpoint import load_model_from_checkpoint
from detgroup.metrics import image_metrics
from detgroup.model.postprocess import PostProcess

METRICS = ("hungarian_acc", "nmi", "ari", "num_groups_error")
WARD_GRID = np.geomspace(0.2, 12.0, 48)
PRIOR_ALPHA = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
BIAS_GRID = (-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0)
SHIFT_GRID = tuple(float(b) for b in np.arange(-3.0, 1.01, 0.5))  # --shift-sweep
HOG_ANNOTATIONS = "annotations_hog.json"  # write_hog_attributes of each split's file
PRIOR_SEARCH_WEIGHTS = (0.0, 2.0, 4.0, 8.0, 16.0)  # --pair-bias-search: the HOG weights searched
PRIOR_TAU = tuple(np.round(np.linspace(0.3, 0.9, 13), 3))


@dataclass
class SceneData:
    """One scene: its glyph boxes [N, 4] xyxy, true groups [N], HOG [N, 324], pixels [N, 1024],
    and its index in the split."""

    index: int
    boxes: np.ndarray
    groups: np.ndarray
    hog: np.ndarray
    pixels: np.ndarray


def load_scenes(ann: Path, images: Path, limit: int = 0) -> list[SceneData]:
    data = GroupDataset(ann, images)
    count = len(data) if limit <= 0 else min(limit, len(data))
    scenes = []
    for i in range(count):
        item = data[i]
        grey = np.round(item["image"].mean(0).numpy() * 255).astype(np.uint8)  # [H, W]
        boxes = item["boxes"].numpy().astype(np.float64)
        scenes.append(SceneData(i, boxes, item["groups"].numpy(),
                                l2_normalise(crop_hog(grey, boxes)),
                                l2_normalise(crop_pixels(grey, boxes))))
    return scenes


def as_scene(s: SceneData, features: np.ndarray) -> Scene:
    n = len(s.groups)
    return Scene(centres=np.zeros((n, 2)), categories=np.zeros(n, np.int64), truth=s.groups,
                 appearance=features)


def scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    zeros = np.zeros(len(truth), np.int64)
    m = image_metrics(zeros, truth, zeros, np.asarray(pred, np.int64))
    out = {k: float(m[k]) for k in METRICS}
    out.update(k_true=int(m["num_gt_groups"]), k_pred=int(m["num_pred_groups"]))
    return out


def ward_row(tune_on: list[SceneData], evaluate: dict[str, list[SceneData]], feature: str
             ) -> tuple[float, dict[str, list[dict[str, float]]]]:
    candidates = [Setting(Agglomerative(float(t), "ward"), position_weight=0.0)
                  for t in WARD_GRID]
    best, _ = tune_setting([as_scene(s, getattr(s, feature)) for s in tune_on], candidates)
    threshold = best.clusterer.threshold  # type: ignore[attr-defined]
    result = {split: [scores(s.groups, best.clusterer(getattr(s, feature))) for s in scenes]
              for split, scenes in evaluate.items()}
    return threshold, result


@torch.no_grad()
def model_logits(ckpt: Path, ann: Path, images: Path
                 ) -> tuple[list[np.ndarray], float, float, list[np.ndarray] | None]:
    """Symmetric pair logits [N, N] (plus the checkpoint's pair_bias) per scene, the
    checkpoint's mean forward seconds per scene, its pair bias, and for a model with a cluster
    head (``loss.pair`` kcl / mcl) the argmax of that head per scene ([N]: L2C's clustering)."""
    model, cfg = load_model_from_checkpoint(ckpt)
    model.eval()
    if reads_attributes(cfg):  # trained on HOG attributes: the file that carries them
        ann = ann.with_name(HOG_ANNOTATIONS)
    data = GroupDataset(ann, images)
    out, seconds = [], 0.0
    assign: list[np.ndarray] = []
    for i in range(len(data)):
        batch = collate_groups([data[i]])
        start = time.perf_counter()
        pred = model(**model_inputs(batch))
        seconds += time.perf_counter() - start
        logits = pred["pred_affinity"][0].float().numpy() + cfg.decoder.pair_bias
        out.append((logits + logits.T) / 2)
        if "pred_assign" in pred:
            assign.append(pred["pred_assign"][0].argmax(-1).numpy())
    return (out, seconds / max(len(data), 1), float(cfg.decoder.pair_bias),
            assign if assign else None)


def decode(logits: np.ndarray, method: str = "gaec-kl") -> np.ndarray:
    return partition(logits, None, method)[1]


def scored_splits(logits: dict[str, tuple], evaluate: dict[str, list[SceneData]], method: str,
                  shift: Callable[[np.ndarray, SceneData], np.ndarray] | None = None,
                  decoder: Callable[[np.ndarray, str], np.ndarray] = decode,
                  ) -> dict[str, list[dict[str, float]]]:
    """Per split (in the order of ``evaluate``), the scores of each scene's pair logits
    (``model_logits``' first item), changed by ``shift`` when given, decoded by ``decoder``
    with ``method``."""
    return {s: [scores(sc.groups, decoder(w if shift is None else shift(w, sc), method))
                for sc, w in zip(scenes, logits[s][0], strict=True)]
            for s, scenes in evaluate.items()}


def searched(logits: np.ndarray, method: str) -> np.ndarray:
    """Groups [N] of ``decoder.pair_bias_search: silhouette`` over the default grid."""
    post = PostProcess(method=method, pair_bias_search="silhouette",
                       pair_bias_grid=DecoderConfig().pair_bias_grid)
    return post.decode_searched(logits, None, np.zeros((len(logits), 4)))[0].cluster


def prior_searched(logits: np.ndarray, hog: np.ndarray, method: str) -> np.ndarray:
    """Groups [N] of the search over shifts and HOG weights (``decoder.prior_weight_grid``
    :data:`PRIOR_SEARCH_WEIGHTS`; the prior's similarity: the cosine of the HOG descriptors
    [N, 324], as ``--pair-prior attribute_cosine:0`` gives it)."""
    post = PostProcess(method=method, pair_bias_search="silhouette",
                       pair_bias_grid=DecoderConfig().pair_bias_grid,
                       prior_weight_grid=PRIOR_SEARCH_WEIGHTS)
    return post.search(logits, None, np.zeros((len(logits), 4)), hog @ hog.T)[0].cluster


def hog_prior(logits: np.ndarray, hog: np.ndarray, alpha: float, tau: float) -> np.ndarray:
    return logits + alpha * (hog @ hog.T - tau)


def tune_bias(logits: list[np.ndarray], scenes: list[SceneData], method: str = "gaec-kl"
              ) -> float:
    """The pair-logit shift (of :data:`BIAS_GRID`) with the best mean ARI on ``scenes``."""
    aris = [np.mean([scores(s.groups, decode(w + b, method))["ari"]
                     for w, s in zip(logits, scenes, strict=True)]) for b in BIAS_GRID]
    return float(BIAS_GRID[int(np.argmax(aris))])


def tune_prior(logits: list[np.ndarray], scenes: list[SceneData], method: str = "gaec-kl"
               ) -> tuple[float, float]:
    best, best_ari = (0.0, 0.0), -np.inf
    for alpha in PRIOR_ALPHA:
        for tau in PRIOR_TAU if alpha else (0.0,):
            ari = np.mean([scores(s.groups, decode(hog_prior(w, s.hog, alpha, tau), method))["ari"]
                           for w, s in zip(logits, scenes, strict=True)])
            if ari > best_ari:
                best, best_ari = (alpha, float(tau)), ari
    return best


MEMORY_CHILD = r"""
import json, sys, time, torch
from detgroup.config import reads_attributes
from detgroup.data.dataset import GroupDataset, collate_groups, model_inputs
from detgroup.decoder import partition
from detgroup.engine.checkpoint import load_model_from_checkpoint
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
ckpt, ann, images, index = sys.argv[1:5]
model, cfg = load_model_from_checkpoint(ckpt)
model.eval()
if reads_attributes(cfg):
    ann = ann.replace("annotations.json", "annotations_hog.json")
item = GroupDataset(ann, images)[int(index)]
batch = collate_groups([item])
before = hwm()
with torch.no_grad():
    start = time.perf_counter()
    out = model(**model_inputs(batch))
    forward = time.perf_counter() - start
    w = out["pred_affinity"][0].numpy()
    start = time.perf_counter()
    partition(w, None, "gaec-kl")
    decode = time.perf_counter() - start
print(json.dumps({"boxes": len(item["boxes"]), "forward_s": forward, "decode_s": decode,
                  "peak_mib_before": before, "peak_mib": hwm()}))
"""


def memory_probe(ckpt: Path, ann: Path, images: Path, index: int) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(ckpt), str(ann), str(images),
                           str(index)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def mean_of(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in METRICS}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("runs/omniglot_l2c"))
    p.add_argument("--model", action="append", default=[], metavar="NAME=CHECKPOINT")
    p.add_argument("--splits", nargs="+", default=["alphabets", "test"])
    p.add_argument("--tune-scenes", type=int, default=300,
                   help="training scenes the Ward threshold is tuned on")
    p.add_argument("--hog-prior", action="store_true")
    p.add_argument("--tune-split", default="val",
                   help="the split the 'tuned on' rows (Ward threshold, pair bias, HOG prior) "
                        "are tuned on: val (held-out characters of trained alphabets) or "
                        "unseen (characters of alphabets never trained on, written with "
                        "--unlisted-train-runs below 5)")
    p.add_argument("--methods", nargs="+", default=["gaec-kl"], choices=["gaec-kl", "average"],
                   help="partition decoders of the model rows; a method other than the first "
                        "names its rows 'NAME [METHOD]'")
    p.add_argument("--memory", action="store_true")
    p.add_argument("--shift-sweep", action="store_true",
                   help="a diagnostic: each model's mean Hungarian accuracy on the first split "
                        "at every constant shift of its pair logits (chosen on that split "
                        "itself, so no result), beside HOG + Ward at every threshold")
    p.add_argument("--pair-bias-search", action="store_true",
                   help="rows of decoder.pair_bias_search silhouette: each scene's shift chosen "
                        "without labels (with --hog-prior also on the HOG-prior logits)")
    p.add_argument("--skip-baselines", action="store_true",
                   help="models only (the baselines are deterministic: same rows every run)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    def split_files(split: str) -> tuple[Path, Path]:
        return args.data / split / "annotations.json", args.data / split / "images"

    start = time.perf_counter()
    tune_split = args.tune_split
    tune = load_scenes(*split_files(tune_split))
    if not tune:
        raise SystemExit(f"{split_files(tune_split)[0]}: split {tune_split!r} has no scenes to "
                         "tune on")
    evaluate = {s: load_scenes(*split_files(s)) for s in args.splits}
    rows: dict[str, dict[str, object]] = {}
    if not args.skip_baselines:
        train = load_scenes(*split_files("train"), limit=args.tune_scenes)
        for name, tune_on, feature in (("HOG + Ward (tuned on train)", train, "hog"),
                                       (f"HOG + Ward (tuned on {tune_split})", tune, "hog"),
                                       ("pixels + Ward (tuned on train)", train, "pixels")):
            threshold, result = ward_row(tune_on, evaluate, feature)
            rows[name] = {"setting": f"threshold {threshold:.3g}", "scenes": result}
        rows["HOG + k-means (oracle K)"] = {"setting": "k = true K", "scenes": {
            split: [scores(s.groups, kmeans_oracle_groups(as_scene(s, s.hog),
                                                          position_weight=0.0))
                    for s in scenes] for split, scenes in evaluate.items()}}
    memory: dict[str, dict[str, float]] = {}
    sweep: dict[str, list[float]] = {}
    if args.shift_sweep:
        first = evaluate[args.splits[0]]
        sweep["HOG + Ward, threshold"] = [float(np.mean([scores(
            s.groups, Agglomerative(float(t), "ward")(s.hog))["hungarian_acc"] for s in first]))
            for t in WARD_GRID]
    for spec in args.model:
        name, _, ckpt = spec.partition("=")
        ckpt_path = Path(ckpt)
        logits = {s: model_logits(ckpt_path, *split_files(s)) for s in args.splits}

        tags = {m: "" if m == args.methods[0] else f" [{m}]" for m in args.methods}
        for method, tag in tags.items():
            rows[name + tag] = {"setting": f"{method}, pair_bias {logits[args.splits[0]][2]:g}, "
                                           f"{logits[args.splits[0]][1]:.2f} s forward per scene",
                                "scenes": scored_splits(logits, evaluate, method)}
        if logits[args.splits[0]][3] is not None:  # L2C's own decoding: the cluster head
            rows[f"{name}, argmax of the cluster head (L2C)"] = {
                "setting": "K^ = output nodes used",
                "scenes": {s: [scores(sc.groups, a) for sc, a in
                               zip(evaluate[s], logits[s][3], strict=True)]
                           for s in args.splits}}
        priors: dict[str, tuple[float, float]] = {}  # method: (alpha, tau) tuned
        if args.hog_prior:
            tune_logits = (logits[tune_split] if tune_split in logits
                           else model_logits(ckpt_path, *split_files(tune_split)))[0]
            for method, tag in tags.items():
                bias = tune_bias(tune_logits, tune, method)
                rows[f"{name}, pair bias tuned on {tune_split}{tag}"] = {
                    "setting": f"{method}, pair logits {bias:+g}",
                    "scenes": scored_splits(logits, evaluate, method,
                                            lambda w, sc, b=bias: w + b)}
                alpha, tau = priors[method] = tune_prior(tune_logits, tune, method)
                rows[f"{name} + HOG prior{tag}"] = {
                    "setting": f"{method}, alpha {alpha:g}, tau {tau:g} "
                               f"(tuned on {tune_split})",
                    "scenes": scored_splits(logits, evaluate, method,
                                            lambda w, sc, a=alpha, t=tau: hog_prior(
                                                w, sc.hog, a, t))}
        if args.pair_bias_search:
            for method, tag in tags.items():
                first = logits[args.splits[0]][0]
                start_plain = time.perf_counter()
                for w in first:
                    decode(w, method)
                plain_s = time.perf_counter() - start_plain
                seconds: list[float] = []  # of each search, the first split's scenes first

                def timed_search(w: np.ndarray, m: str, out: list[float] = seconds
                                 ) -> np.ndarray:
                    start = time.perf_counter()
                    groups = searched(w, m)
                    out.append(time.perf_counter() - start)
                    return groups

                result = scored_splits(logits, evaluate, method, decoder=timed_search)
                search_s = sum(seconds[:len(first)])
                rows[f"{name}, pair bias searched (silhouette){tag}"] = {
                    "setting": f"{method}, per scene, no labels; {search_s / len(first):.2f} s "
                               f"per {args.splits[0]} scene ({search_s / plain_s:.0f} x the "
                               "plain decode)",
                    "scenes": result}
                start_prior = time.perf_counter()
                result = {s: [scores(sc.groups, prior_searched(w, sc.hog, method))
                              for sc, w in zip(evaluate[s], logits[s][0], strict=True)]
                          for s in args.splits}
                prior_s = time.perf_counter() - start_prior
                scenes_n = sum(len(v) for v in evaluate.values())
                rows[f"{name}, pair bias and HOG weight searched (silhouette){tag}"] = {
                    "setting": f"{method}, weights {list(PRIOR_SEARCH_WEIGHTS)}, per scene, no "
                               f"labels; {prior_s / scenes_n:.2f} s per scene",
                    "scenes": result}
                if method in priors:
                    alpha, tau = priors[method]
                    rows[f"{name} + HOG prior, pair bias searched (silhouette){tag}"] = {
                        "setting": f"{method}, alpha {alpha:g}, tau {tau:g} (tuned on "
                                   f"{tune_split}), then per scene",
                        "scenes": scored_splits(logits, evaluate, method,
                                                lambda w, sc, a=alpha, t=tau: hog_prior(
                                                    w, sc.hog, a, t), decoder=searched)}
        if args.shift_sweep:
            for method, tag in tags.items():
                sweep[f"{name}{tag}, shift"] = [float(np.mean([
                    scores(sc.groups, decode(w + b, method))["hungarian_acc"]
                    for sc, w in zip(evaluate[args.splits[0]], logits[args.splits[0]][0],
                                     strict=True)])) for b in SHIFT_GRID]
        if args.memory:
            split = args.splits[0]
            largest = max(evaluate[split], key=lambda s: len(s.groups)).index
            memory[name] = memory_probe(ckpt_path, *split_files(split), largest)

    print(f"# Omniglot, L2C protocol ({args.data}); {time.perf_counter() - start:.0f} s")
    for split in args.splits:
        print(f"\n## {split}: mean over {len(evaluate[split])} scenes")
        print("| method | setting | Hungarian acc | NMI | ARI | abs(K^ - K) |")
        print("|---|---|---|---|---|---|")
        for name, row in rows.items():
            m = mean_of(row["scenes"][split])  # type: ignore[index]
            print(f"| {name} | {row['setting']} | {m['hungarian_acc']:.3f} | {m['nmi']:.3f} | "
                  f"{m['ari']:.3f} | {m['num_groups_error']:.1f} |")
    split = args.splits[0]
    print(f"\n## {split}: per scene (Hungarian acc / ARI / K^ of K)")
    header = [f"scene {s.index} ({len(s.groups)} glyphs, K {len(np.unique(s.groups))})"
              for s in evaluate[split]]
    print("| method | " + " | ".join(header) + " |")
    print("|---|" + "---|" * len(header))
    for name, row in rows.items():
        cells = [f"{r['hungarian_acc']:.3f} / {r['ari']:.3f} / {r['k_pred']}"
                 for r in row["scenes"][split]]  # type: ignore[index]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if sweep:
        print(f"\n## {split}: Hungarian acc at every shift / threshold (a diagnostic: chosen "
              "on this split itself)")
        for name, values in sweep.items():
            if name.startswith("HOG"):  # 48 thresholds: the best and its neighbours
                k = int(np.argmax(values))
                cells = [(float(WARD_GRID[i]), values[i])
                         for i in range(max(k - 2, 0), min(k + 3, len(values)))]
            else:
                cells = list(zip(SHIFT_GRID, values, strict=True))
            print(f"* {name}: " + ", ".join(f"{g:+.3g}: {v:.3f}" for g, v in cells))
    if memory:
        print("\n## one forward + decode on the largest scene (fresh process)")
        for name, m in memory.items():
            print(f"* {name}: {m['boxes']} boxes, forward {m['forward_s']:.2f} s, decode "
                  f"{m['decode_s']:.2f} s, peak memory {m['peak_mib']:.0f} MiB "
                  f"({m['peak_mib_before']:.0f} MiB after loading)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "memory": memory, "sweep": sweep},
                                        indent=1))


if __name__ == "__main__":
    main()
