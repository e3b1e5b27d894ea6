"""How hard is the synthetic "pets in groups" set? Baselines side by side on one generated set.

Generates train/val splits with ``detgroup.data.synth`` and measures on val:

1. position only: DBSCAN and agglomerative clustering (single / average / ward) on box centres,
   eps / distance threshold tuned by grid on train; k-means given the true number of groups as
   an oracle. Score: adjusted Rand index per image, averaged over val images.
2. one box alone: a small CNN trained on 32x32 crops of train boxes; val accuracy overall and on
   clear vs ambiguous animals. Set-level rule: sum the CNN's log-probabilities over the members
   of each ground-truth group, argmax → one category per group.
3. appearance + geometry: average-linkage clustering on [box centre, median Lab colour and
   texture of the box's central region], weights and threshold tuned on train; the same
   without the centre (appearance only).

Usage::

    PYTHONPATH=. python tools/bench_synth.py --train 600 --val 200 [--set key=value ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import DBSCAN, KMeans
from sklearn.metrics import adjusted_rand_score
from torch import nn

from detgroup.baselines import adjusted_rand
from detgroup.data.coco_groups import load_coco_groups
from detgroup.data.images import read_image_rgb
from detgroup.data.synth import SynthConfig, generate_synthetic

CROP = 32


def load_split(ann_path: Path) -> list[dict]:
    """Per image: ``image`` uint8 [S, S, 3], ``boxes`` [N, 4] xyxy, ``categories``, ``groups``,
    ``ambiguous`` [N] bool."""
    coco = load_coco_groups(ann_path)
    ambiguous = {}
    for anns in coco.anns_by_image.values():
        for a in anns:
            ambiguous[a["id"]] = bool(a["ambiguous"])
    scenes = []
    for info in coco.images:
        t = coco.targets(info["id"])
        t["image"] = read_image_rgb(ann_path.parent / "images" / info["file_name"])
        t["ambiguous"] = np.array([ambiguous[i] for i in t["ann_ids"]], bool)
        t["size"] = info["width"]
        scenes.append(t)
    return scenes


def mean_ari(scenes: list[dict], labels: list[np.ndarray]) -> float:
    return float(np.mean([adjusted_rand_score(s["groups"], p)
                          for s, p in zip(scenes, labels, strict=True)]))


def centres(scene: dict) -> np.ndarray:
    """Box centres [N, 2] in units of the image size."""
    b = scene["boxes"]
    return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1) / scene["size"]


def cut_linkage(feats: np.ndarray, method: str, thresholds: np.ndarray) -> list[np.ndarray]:
    """Cluster labels of ``feats`` [N, D] for every threshold of one linkage tree."""
    if len(feats) < 2:
        return [np.zeros(len(feats), int) for _ in thresholds]
    z = linkage(feats, method=method)
    return [fcluster(z, t, criterion="distance") for t in thresholds]


def tune_threshold(train: list[dict], feat_fn, method: str,
                   thresholds: np.ndarray) -> tuple[float, float]:
    """Threshold with the best mean train ARI → (threshold, train mean ARI)."""
    per_t = np.zeros(len(thresholds))
    for s in train:
        for k, lab in enumerate(cut_linkage(feat_fn(s), method, thresholds)):
            per_t[k] += adjusted_rand(s["groups"], lab)
    best = int(per_t.argmax())
    return float(thresholds[best]), float(per_t[best] / len(train))


def eval_linkage(val: list[dict], feat_fn, method: str, threshold: float) -> float:
    t = np.array([threshold])
    return mean_ari(val, [cut_linkage(feat_fn(s), method, t)[0] for s in val])


def dbscan_labels(feats: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN (euclidean) labels [N] with every noise point as a singleton group.

    Same clusters as ``sklearn.cluster.DBSCAN`` (a border point joins the cluster sklearn's scan
    reaches first: the one whose lowest core index is smallest), without its per-call overhead,
    which dominates on a few dozen points and a grid of thousands of calls.
    """
    n = len(feats)
    near = np.linalg.norm(feats[:, None] - feats[None], axis=-1) <= eps  # [N, N]
    core = near.sum(1) >= min_samples
    _, comp = connected_components(csr_matrix(near & core[:, None] & core[None]), directed=False)
    labels = np.full(n, -1)
    labels[core] = comp[core]
    first_core = {c: int(np.flatnonzero(core & (comp == c))[0]) for c in np.unique(comp[core])}
    for i in np.flatnonzero(~core):
        reach = np.unique(comp[near[i] & core])
        if len(reach):
            labels[i] = min(reach, key=first_core.__getitem__)
    noise = labels < 0
    labels[noise] = comp.max() + 1 + np.arange(noise.sum())
    return labels


def position_baselines(train: list[dict], val: list[dict]) -> list[tuple[str, str, float]]:
    rows = []
    thresholds = np.linspace(0.02, 0.6, 59)
    for method in ("single", "average", "ward"):
        scale = 3.0 if method == "ward" else 1.0
        t, _ = tune_threshold(train, centres, method, thresholds * scale)
        rows.append((f"agglomerative {method} on centres", f"threshold {t:.3f}",
                     eval_linkage(val, centres, method, t)))
    best = (-1.0, 0.0, 0)
    for min_samples in (1, 2, 3, 4):
        for eps in np.linspace(0.02, 0.3, 29):
            ari = np.mean([adjusted_rand(s["groups"], dbscan_labels(centres(s), eps, min_samples))
                           for s in train])
            best = max(best, (ari, eps, min_samples))
    _, eps, ms = best
    labels = [dbscan_labels(centres(s), eps, ms) for s in val]
    for s, lab in zip(val, labels, strict=True):  # same partition as scikit-learn's DBSCAN
        ref = DBSCAN(eps=eps, min_samples=ms).fit_predict(centres(s))
        ref[ref < 0] = ref.max() + 1 + np.arange((ref < 0).sum())
        assert adjusted_rand(lab, ref) == 1.0
    rows.append((f"DBSCAN on centres (min_samples={ms})", f"eps {eps:.3f}",
                 mean_ari(val, labels)))
    oracle = [KMeans(n_clusters=len(np.unique(s["groups"])), n_init=5, random_state=0)
              .fit_predict(centres(s)) for s in val]
    rows.append(("k-means on centres, true number of groups (oracle)", "-",
                 mean_ari(val, oracle)))
    return rows


def appearance(scene: dict) -> np.ndarray:
    """Hand-made appearance features [N, 4]: median Lab colour and luminance spread of the
    central region of each box (mostly body fur and markings), scaled to ~unit range."""
    lab = cv2.cvtColor(scene["image"], cv2.COLOR_RGB2LAB).astype(np.float32) / 255.0
    feats = []
    for x0, y0, x1, y1 in scene["boxes"]:
        w, h = x1 - x0, y1 - y0
        cx0, cx1 = int(x0 + 0.3 * w), max(int(x0 + 0.3 * w) + 1, int(x1 - 0.3 * w))
        cy0, cy1 = int(y0 + 0.35 * h), max(int(y0 + 0.35 * h) + 1, int(y1 - 0.3 * h))
        patch = lab[cy0:cy1, cx0:cx1].reshape(-1, 3)
        feats.append([*np.median(patch, 0), patch[:, 0].std()])
    return np.array(feats, np.float32).reshape(-1, 4)


def joint(scene: dict, weight: float) -> np.ndarray:
    """Box centres and weighted appearance features [N, 6]."""
    return np.concatenate([centres(scene), weight * scene["appearance"]], 1)


def appearance_baselines(train: list[dict], val: list[dict]) -> list[tuple[str, str, float]]:
    for s in train + val:
        s["appearance"] = appearance(s)
    thresholds = np.linspace(0.02, 0.8, 40)
    rows = []
    t, _ = tune_threshold(train, lambda s: s["appearance"], "average", thresholds)
    rows.append(("agglomerative average on appearance only", f"threshold {t:.3f}",
                 eval_linkage(val, lambda s: s["appearance"], "average", t)))
    best = (-1.0, 0.0, 0.0)
    for w in (1.0, 2.0, 3.0, 5.0, 8.0):
        t, train_ari = tune_threshold(train, lambda s, w=w: joint(s, w), "average", thresholds)
        best = max(best, (train_ari, w, t))
    _, w, t = best
    rows.append(("agglomerative average on centres + appearance",
                 f"colour weight {w:g}, threshold {t:.3f}",
                 eval_linkage(val, lambda s: joint(s, w), "average", t)))
    return rows


def crops(scenes: list[dict]) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """Box crops float [M, 3, CROP, CROP] in [0, 1], categories [M], ambiguous [M], and the
    (scene index, group) key [M, 2] of every box."""
    xs, ys, amb, keys = [], [], [], []
    for k, s in enumerate(scenes):
        for b, c, a, g in zip(s["boxes"], s["categories"], s["ambiguous"], s["groups"],
                              strict=True):
            x0, y0, x1, y1 = np.round(b).astype(int)
            patch = s["image"][y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
            xs.append(cv2.resize(patch, (CROP, CROP), interpolation=cv2.INTER_AREA))
            ys.append(c)
            amb.append(a)
            keys.append((k, g))
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255.0
    return x, np.array(ys), np.array(amb), np.array(keys)


def small_cnn(num_classes: int) -> nn.Module:
    """~6 M multiply-adds per 32x32 crop: 4 conv layers, global average pooling, linear."""
    def conv(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]
    return nn.Sequential(*conv(3, 24), nn.MaxPool2d(2), *conv(24, 48), nn.MaxPool2d(2),
                         *conv(48, 64), nn.MaxPool2d(2), *conv(64, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


def per_box_classifier(train: list[dict], val: list[dict], num_classes: int, epochs: int,
                       seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    xt, yt, _, _ = crops(train)
    xv, yv, av, kv = crops(val)
    yt_t = torch.from_numpy(yt)
    model = small_cnn(num_classes)
    batches = -(-len(xt) // 128)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * batches)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(128):
            xb = xt[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = F.cross_entropy(model(xb), yt_t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        logp = torch.cat([F.log_softmax(model(x), 1) for x in xv.split(512)]).numpy()
    pred = logp.argmax(1)
    # set-level rules, one category per ground-truth group: the members' summed log-probs, and
    # the class of the member the CNN is most sure of
    set_sum, set_max = np.empty_like(pred), np.empty_like(pred)
    for key in np.unique(kv, axis=0):
        members = (kv == key).all(1)
        set_sum[members] = logp[members].sum(0).argmax()
        set_max[members] = pred[members][logp[members].max(1).argmax()]
    return {
        "epochs": epochs,
        "train_boxes": len(xt),
        "acc": float((pred == yv).mean()),
        "acc_clear": float((pred == yv)[~av].mean()),
        "acc_ambiguous": float((pred == yv)[av].mean()),
        "ambiguous_share": float(av.mean()),
        "set_sum": float((set_sum == yv).mean()),
        "set_max": float((set_max == yv).mean()),
        "bayes": float(1 - av.mean() * (1 - 1 / num_classes)),
    }


def write_example(scene: dict, names: list[str], path: Path) -> None:
    """Image and ground truth side by side at 2x: one box colour per group, a dot on the box of
    every ambiguous animal, the category's initial at each group's first box."""
    colours = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
               (145, 30, 180), (70, 240, 240), (240, 50, 230)]
    image = cv2.resize(scene["image"], None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    overlay = image.copy()
    seen = set()
    for box, g, c, amb in zip(scene["boxes"] * 2, scene["groups"], scene["categories"],
                              scene["ambiguous"], strict=True):
        x0, y0, x1, y1 = np.round(box).astype(int)
        col = colours[g % len(colours)]
        cv2.rectangle(overlay, (x0, y0), (x1, y1), col, 2)
        if amb:
            cv2.circle(overlay, (x0 + 5, y0 + 5), 4, (255, 255, 255), -1)
        if g not in seen:
            seen.add(g)
            cv2.putText(overlay, names[c][0], (x1 - 12, y0 + 14),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.5, col, 2)
    gap = np.full((image.shape[0], 8, 3), 255, np.uint8)
    side = np.concatenate([image, gap, overlay], 1)
    cv2.imwrite(str(path), cv2.cvtColor(side, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_PNG_COMPRESSION, 9])


def parse_overrides(pairs: list[str]) -> dict:
    types = {f.name: f.type for f in dataclasses.fields(SynthConfig)}
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in types:
            raise SystemExit(f"unknown SynthConfig field {key!r}")
        if key == "categories":
            out[key] = value.split(",")
        else:
            out[key] = (float if "float" in str(types[key]) else int)(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=600, help="train images")
    ap.add_argument("--val", type=int, default=200, help="val images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="dataset folder (default: temporary)")
    ap.add_argument("--cnn-epochs", type=int, default=8, help="per-box CNN training epochs")
    ap.add_argument("--tune-images", type=int, default=300, help="train images for tuning")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--example", type=Path, default=None,
                    help="also write a val image with its ground truth drawn to this PNG")
    ap.add_argument("--example-index", type=int, default=0, help="which val image --example shows")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="SynthConfig overrides, e.g. group_spread=0.05 categories=cat,dog")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = SynthConfig(num_train=args.train, num_val=args.val, seed=args.seed,
                      **parse_overrides(args.set))

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        t0 = time.time()
        paths = generate_synthetic(out, cfg)
        t_gen = time.time() - t0
        train, val = load_split(paths["train"]), load_split(paths["val"])
    if args.example:
        write_example(val[args.example_index], cfg.categories, args.example)
    n_boxes = np.array([len(s["groups"]) for s in train + val])
    n_groups = np.array([len(np.unique(s["groups"])) for s in train + val])
    lone = np.mean([np.mean(np.bincount(s["groups"])[s["groups"]] == 1) for s in train + val])

    tune = train[: args.tune_images]
    t0 = time.time()
    rows = position_baselines(tune, val)
    t_pos = time.time() - t0
    t0 = time.time()
    rows += appearance_baselines(tune, val)
    t_app = time.time() - t0
    t0 = time.time()
    cnn = per_box_classifier(train, val, len(cfg.categories), args.cnn_epochs, args.seed)
    t_cnn = time.time() - t0

    overrides = " ".join(f"{k}={v}" for k, v in parse_overrides(args.set).items())
    print(f"## Synthetic dataset difficulty ({datetime.date.today()}, "
          f"{platform.machine()} CPU, {args.threads} threads)\n")
    print(f"Set: {args.train} train / {args.val} val images, seed {args.seed}, "
          f"{len(cfg.categories)} categories, image {cfg.image_size} px"
          + (f", overrides: {overrides}" if overrides else "") + ".")
    print(f"Boxes per image {n_boxes.mean():.1f} (min {n_boxes.min()}, max {n_boxes.max()}), "
          f"groups per image {n_groups.mean():.2f}, lone animals {lone:.1%} of boxes, "
          f"ambiguous animals {cnn['ambiguous_share']:.1%} of val boxes. "
          f"Generation {t_gen:.1f} s.\n")
    print("| grouping on val (tuned on train) | setting | mean ARI per image |")
    print("|---|---|---|")
    for name, setting, ari in rows:
        print(f"| {name} | {setting} | {ari:.3f} |")
    print("\n| category on val | accuracy |\n|---|---|")
    print(f"| per-box CNN on {CROP}x{CROP} crops ({cnn['epochs']} epochs, "
          f"{cnn['train_boxes']} train boxes) | {cnn['acc']:.3f} |")
    print(f"| ... on clear animals | {cnn['acc_clear']:.3f} |")
    print(f"| ... on ambiguous animals | {cnn['acc_ambiguous']:.3f} |")
    print(f"| per-box Bayes bound (1 - ambiguous share x (1 - 1/C)) | {cnn['bayes']:.3f} |")
    print("| set-level rule, per true group: summed CNN log-probs of the members | "
          f"{cnn['set_sum']:.3f} |")
    print("| set-level rule, per true group: class of the member the CNN is surest of | "
          f"{cnn['set_max']:.3f} |")
    print(f"\nTimes: position {t_pos:.0f} s, appearance {t_app:.0f} s, CNN {t_cnn:.0f} s.")


if __name__ == "__main__":
    main()
