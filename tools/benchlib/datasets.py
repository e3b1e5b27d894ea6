"""The sets the benchmark runs on: where their COCO-with-groups files are (generated or
converted), their recipe and the methods each runs."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchlib.methods import DEFAULT_METHODS
from benchlib.scoring import TARGETS
from detgroup.data.synth import SynthConfig, generate_synthetic

log = logging.getLogger("benchmark")

ROOT = Path(__file__).resolve().parents[2]  # the repository


@dataclass
class DatasetSpec:
    """A set to benchmark on: its COCO-with-groups files and its recipe's config overrides."""

    key: str
    title: str
    description: str
    train_ann: Path
    train_images: Path
    val_ann: Path
    val_images: Path
    overrides: list[str] = field(default_factory=list)
    variant_overrides: dict[str, list[str]] = field(default_factory=dict)  # per variant, last
    config: Path | None = None  # the set's recipe (configs/*.yaml); None: the built-in defaults
    epochs: int | None = None  # None: the recipe's
    methods: tuple[str, ...] = DEFAULT_METHODS  # run when --only is not given
    # variant -> the trained variant that stands in for it (e.g. the ablation's category head
    # as the per-box classifier of the clustering rows, to save a training on a costly set)
    aliases: dict[str, str] = field(default_factory=dict)
    targets: tuple[tuple[str, float, str], ...] = TARGETS
    tune_score: str = "ari"  # what the clustering baselines are tuned for (baselines.SCORES)
    headline_families: tuple[str, ...] = ("status_quo", "position")
    # also run the position/geometry methods category-agnostic, each group then taking the
    # category with the highest summed probability of its boxes ("group, then vote")
    vote: bool = False
    extra: list[ExtraSplit] = field(default_factory=list)  # more splits scored the same way


@dataclass
class ExtraSplit:
    """Another split scored with the models and settings chosen on train/val (e.g. test, or
    scenes of classes never seen). ``agnostic``: categories are ignored (all set to one) in the
    truth, the decoder and the clustering."""

    name: str
    ann: Path
    images: Path
    agnostic: bool = False


def synth_dataset(args: argparse.Namespace, data_dir: Path) -> DatasetSpec:
    """The synthetic "pets in groups" set, generated into ``data_dir`` unless already there."""
    cfg = SynthConfig(num_train=args.train_images, num_val=args.val_images, seed=args.seed,
                      image_size=128 if args.quick else 256)
    ann = {split: data_dir / split / "annotations.json" for split in ("train", "val")}
    if all(p.is_file() for p in ann.values()):
        stored = json.loads(ann["val"].read_text())["info"]["synth_config"]
        if stored != asdict(cfg):
            raise SystemExit(f"{data_dir}: holds a synthetic set made with {stored}, "
                             f"not {asdict(cfg)}; use another --out or matching flags")
        log.info("reusing the synthetic set in %s", data_dir)
    else:
        log.info("generating %d train / %d val synthetic images into %s",
                 cfg.num_train, cfg.num_val, data_dir)
        generate_synthetic(data_dir, cfg)
    return DatasetSpec(
        key="synth", title="synthetic", epochs=args.epochs or 8,
        description=(f"synthetic pets in groups: {cfg.num_train} train / {cfg.num_val} val "
                     f"images of {cfg.image_size} px, seed {cfg.seed}, categories "
                     f"{', '.join(cfg.categories)}"),
        train_ann=ann["train"], train_images=data_dir / "train" / "images",
        val_ann=ann["val"], val_images=data_dir / "val" / "images",
    )


# Every set with a recipe is benchmarked. A real set joins by adding a function that returns its
# DatasetSpec (converted files + its configs/ recipe as overrides) under its key here.
SHARED_DATA = ROOT.parent / "shared" / "data"


def converted(data_dir: Path, splits: Sequence[str], convert: Callable[[], object]) -> None:
    if all((data_dir / s / "annotations.json").is_file() for s in splits):
        log.info("reusing the converted set in %s", data_dir)
    else:
        log.info("converting into %s", data_dir)
        convert()


def funsd_dataset(args: argparse.Namespace, data_dir: Path) -> DatasetSpec:
    """FUNSD words -> entities (``configs/funsd.yaml``), split as ``datasets/README_funsd.md``."""
    from detgroup.data.funsd import convert_funsd

    src = SHARED_DATA / "funsd" / "training_data"
    if not src.is_dir():
        raise SystemExit(f"{src}: not found; FUNSD is read from ../shared/data (see its README)")
    converted(data_dir, ("train", "val"), lambda: convert_funsd(src, data_dir))
    return DatasetSpec(
        key="funsd", title="FUNSD",
        description="FUNSD training forms, box = word, category = its entity's label "
                    "(question / answer / header / other), group = the entity; 119 train / 30 val "
                    "forms (the fixed split of datasets/README_funsd.md), 18,284 / 4,228 words",
        train_ann=data_dir / "train" / "annotations.json",
        train_images=data_dir / "train" / "images",
        val_ann=data_dir / "val" / "annotations.json", val_images=data_dir / "val" / "images",
        config=ROOT / "configs" / "funsd.yaml", epochs=args.epochs,
        methods=("geo_alone", "geo_line", "pos_agglo", "pos_dbscan", "no_relation", "full"),
        aliases={"classifier": "no_relation"}, vote=True,
        targets=(("cat_acc", 0.80, "word category accuracy"),),
        tune_score="exact_f1", headline_families=("position",),
    )


def omniglot_dataset(args: argparse.Namespace, data_dir: Path) -> DatasetSpec:
    """Omniglot glyph scenes (``configs/omniglot.yaml``; datasets/README_omniglot.md)."""
    from detgroup.data.omniglot import convert_omniglot

    src = SHARED_DATA / "omniglot"
    if not (src / "images_background.npz").is_file():
        raise SystemExit(f"{src}: no images_background.npz; Omniglot is read from ../shared/data")
    converted(data_dir, ("train", "val", "test", "unseen"), lambda: convert_omniglot(
        src, data_dir, canvas=256, glyph_size=(20, 28), eval_max_chars=20,
        unlisted_train_runs=3))
    split = {s: (data_dir / s / "annotations.json", data_dir / s / "images")
             for s in ("train", "val", "test", "unseen")}
    return DatasetSpec(
        key="omniglot", title="Omniglot",
        description="Omniglot glyph scenes (`detgroup data omniglot --canvas 256 --glyph-size 20 "
                    "28 --eval-max-chars 20 --unlisted-train-runs 3`), box = glyph, category = "
                    "alphabet (10 listed + `other`), group = character; train: 2,000 scenes of "
                    "536 characters (189 of the listed alphabets, 347 unlisted as `other`); val: "
                    "10 scenes, one per alphabet, of all 20 samples of its 62 held-out characters "
                    "(3..11 per scene); unseen: 16 scenes of 17..20 characters of the 300 "
                    "characters of alphabets never trained on",
        train_ann=split["train"][0], train_images=split["train"][1],
        val_ann=split["val"][0], val_images=split["val"][1],
        config=ROOT / "configs" / "omniglot.yaml", epochs=args.epochs,
        methods=("sq_agglo", "sq_hdbscan", "l2c_kcl", "l2c_mcl", "no_relation", "full"),
        # L2C's cluster-assignment head over-estimates the number of characters (K = 100)
        variant_overrides={v: ["model.num_clusters=100"] for v in ("l2c_kcl", "l2c_mcl")},
        aliases={"classifier": "no_relation"}, targets=(), headline_families=("status_quo",),
        extra=[
            ExtraSplit("val, categories ignored", *split["val"], agnostic=True),
            ExtraSplit("test", *split["test"]),
            ExtraSplit("test, categories ignored", *split["test"], agnostic=True),
            ExtraSplit("unseen alphabets (categories ignored)", *split["unseen"], agnostic=True),
        ],
    )


# Every set with a recipe is benchmarked. A real set joins by adding a function that returns its
# DatasetSpec (converted files + its configs/ recipe) under its key here.
DATASETS: dict[str, Callable[[argparse.Namespace, Path], DatasetSpec]] = {
    "synth": synth_dataset,
    "funsd": funsd_dataset,
    "omniglot": omniglot_dataset,
}
