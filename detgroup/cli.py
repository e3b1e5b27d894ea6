"""The ``detgroup`` command line: parse, call, print.

Exit codes: 0 success; 2 user error (bad file, bad config, bad boxes: one line on stderr, no
traceback); 1 internal error (a bug: traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detgroup.errors import DetgroupError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _print_table(rows: list[tuple[str, Any]]) -> None:
    if not rows:
        return
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {text}")


def _print_json_last(summary: dict[str, Any]) -> None:
    print(json.dumps(summary, sort_keys=True, default=float))


# --- synth / validate -------------------------------------------------------------------------


def cmd_synth(args: argparse.Namespace) -> int:
    from detgroup.config import load_config
    from detgroup.data.synth import generate_synthetic

    cfg = load_config(args.config, [f"synth.{o}" for o in args.set])
    if args.images is not None:
        cfg.synth.num_train = args.images
        cfg.synth.num_val = max(1, args.images // 5)
    if args.seed is not None:
        cfg.synth.seed = args.seed
    paths = generate_synthetic(args.out, cfg.synth, progress=True)
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from detgroup.data.coco_groups import load_coco_groups

    coco = load_coco_groups(args.ann, images_dir=args.images, tolerance=args.tolerance,
                            clip=args.clip)
    counts = coco.group_label_counts()
    print(f"{args.ann}: valid: {len(coco)} images, {counts['boxes']} boxes, categories "
          f"{coco.category_names}" + (" (image files checked)" if args.images else "")
          + (" (boxes clipped to their images)" if args.clip else ""))
    print(f"  {counts['without_group_id']} boxes without group_id (each a group of its own), "
          f"{counts['group_unknown']} with group_id -1 (group unknown: left out of the pair "
          "loss and the grouping metrics)")
    if counts["boxes"] == 0:
        print("  warning: no boxes: nothing to train on or score")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.dataset == "funsd":
        from detgroup.data.funsd import convert_funsd

        paths = convert_funsd(args.src, args.out, val_forms=args.val_forms, seed=args.seed,
                              split=args.split)
    else:
        from detgroup.data.omniglot import convert_omniglot

        paths = convert_omniglot(args.src, args.out, seed=args.seed,
                                 train_scenes=args.train_scenes, canvas=args.canvas,
                                 glyph_size=tuple(args.glyph_size),
                                 eval_max_chars=args.eval_max_chars,
                                 unlisted_train_runs=args.unlisted_train_runs,
                                 eval_alphabets=tuple(args.eval_alphabets),
                                 chars_per_scene=tuple(args.chars_per_scene),
                                 samples_per_char=tuple(args.samples_per_char),
                                 alphabets_per_scene=tuple(args.alphabets_per_scene),
                                 rotations=args.rotations, progress=True)
        if args.hog_attributes:
            from detgroup.data.crop_descriptors import write_hog_attributes

            for split, path in list(paths.items()):
                paths[f"{split} (HOG attributes)"] = write_hog_attributes(
                    path, path.parent / "images", path.with_name("annotations_hog.json"))
    for split, path in paths.items():
        stats = json.loads(path.read_text()).get("info", {}).get("stats", {})
        summary = ", ".join(f"{k} {v}" for k, v in stats.items())
        print(f"{split}: {path}" + (f" ({summary})" if summary else ""))
    return 0


# --- train / eval -----------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from detgroup.config import load_config
    from detgroup.engine.train import train

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"train.device={args.device}")
    cfg = load_config(args.config, overrides)
    out = args.out or Path("runs") / (Path(args.config).stem if args.config else "default")
    result = train(cfg, out_dir=out, resume=args.resume)
    if result["rank"] != 0:
        return 0
    if result["interrupted"]:
        print(f"interrupted at step {result['steps']}; checkpoint saved to {out}/last.pt "
              f"(continue with --resume)")
        return EXIT_INTERRUPTED
    print(f"trained {result['steps']} steps in {result['train_seconds']:.0f} s -> {out}/model.pt")
    _print_table([(k, v) for k, v in result["final"].items()])
    return 0


def _pair_prior_arg(spec: str) -> Any:
    from detgroup.config import parse_pair_prior

    try:
        return parse_pair_prior(spec)
    except DetgroupError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_pair_prior(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pair-prior", type=_pair_prior_arg, default=None,
                   metavar="KIND[:WEIGHT[:OFFSET[:MAX_GAP[:MIN_OVERLAP]]]]",
                   help="replace the checkpoint's model.pair_prior (no weights: any bce model "
                        "takes one), e.g. attribute_cosine:16:0.65 (the boxes' attributes, "
                        "e.g. HOG), same_line:4:0.5:0.796:0.7, or none")


def _eval_coco(args: argparse.Namespace) -> Any:
    from detgroup.data.coco_groups import load_coco_groups

    coco = load_coco_groups(args.data, clip=args.clip)
    counts = coco.group_label_counts()
    if counts["boxes"] == 0:
        raise DetgroupError(f"{args.data}: no boxes in its {len(coco)} images: there is nothing "
                            "to score (every metric would be undefined)")
    if counts["group_unknown"] == counts["boxes"]:
        raise DetgroupError(f"{args.data}: every box has group_id -1 (group unknown): the "
                            "grouping metrics are undefined")
    return coco


def _eval_loader(args: argparse.Namespace, coco: Any, batch_size: int,
                 load_images: bool = True) -> Any:
    from torch.utils.data import DataLoader

    from detgroup.data.dataset import GroupDataset, collate_groups

    dataset = GroupDataset(coco, args.images, load_images=load_images)
    return dataset, DataLoader(dataset, batch_size=batch_size, collate_fn=collate_groups)


def cmd_eval_detections(args: argparse.Namespace) -> int:
    from detgroup.atomic import atomic_write_json
    from detgroup.engine.evaluate import evaluate_detections

    if args.checkpoint is not None or args.images is not None:
        raise DetgroupError("--detections scores a results file; give it without --checkpoint "
                            "and --images")
    if args.ignore_categories:
        raise DetgroupError("--ignore-categories scores a checkpoint's grouping; it does not "
                            "apply to --detections")
    summary, per_image = evaluate_detections(args.detections, args.data,
                                             min_score=args.min_score)
    if args.per_image:
        atomic_write_json(args.per_image, per_image, indent=1)
    print(f"{args.detections} against {args.data}: {summary['num_images']} images, "
          f"{summary['num_detections']} detections, {summary['num_truth']} truth boxes, "
          f"{summary['num_matched']} matched at IoU >= 0.5")
    _print_table([(k, v) for k, v in summary.items() if isinstance(v, float)])
    if args.json:
        _print_json_last(summary)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.detections is not None:
        return cmd_eval_detections(args)
    if args.checkpoint is None or args.images is None:
        raise DetgroupError("give --checkpoint and --images (score a model), or --detections "
                            "(score a results file)")
    from detgroup.atomic import atomic_write_json
    from detgroup.checkpoint import load_checkpoint, model_from_checkpoint_state
    from detgroup.config import reads_attributes
    from detgroup.engine.device import resolve_device
    from detgroup.engine.evaluate import PostProcess, evaluate, unscored_indices
    from detgroup.model.postprocess import AGNOSTIC_CATEGORY

    device = resolve_device(args.device)
    state = load_checkpoint(args.checkpoint)  # a bad checkpoint is named before the data
    coco = _eval_coco(args)
    # a --pair-prior on attributes of a checkpoint that reads none: the data file's names
    model, cfg = model_from_checkpoint_state(state, args.checkpoint, pair_prior=args.pair_prior,
                                             attribute_names=coco.attribute_names or None,
                                             source=args.data)
    dataset, loader = _eval_loader(args, coco, args.batch_size or cfg.data.batch_size,
                                   load_images=cfg.model.backbone.name != "none")
    if dataset.category_names != cfg.category_names and not args.ignore_categories:
        raise DetgroupError(
            f"{args.data}: categories {dataset.category_names} differ from the checkpoint's "
            f"{cfg.category_names} (--ignore-categories scores the grouping alone)"
        )
    if args.ignore_categories and args.unscored_categories:
        raise DetgroupError("--ignore-categories scores one category: give no "
                            "--unscored-categories")
    if reads_attributes(cfg) and dataset.coco.attribute_names != cfg.attribute_names:
        raise DetgroupError(
            f"{args.data}: attribute_names {dataset.coco.attribute_names} differ from the "
            f"checkpoint's {cfg.attribute_names}"
        )
    # --ignore-categories: every box of one category, decoded by the pair logits alone
    scored = [AGNOSTIC_CATEGORY] if args.ignore_categories else list(cfg.category_names)
    names = (cfg.data.unscored_categories if args.unscored_categories is None
             else args.unscored_categories)
    unscored = ([] if args.ignore_categories else
                unscored_indices(cfg.category_names, names, source="--unscored-categories"))
    post = PostProcess.from_config(cfg.decoder, method=args.method,
                                   consistency=args.consistency, pair_bias=args.pair_bias,
                                   neighbors=args.neighbors,
                                   ignore_categories=args.ignore_categories,
                                   pair_bias_search=args.pair_bias_search,
                                   prior_weight_grid=args.prior_weight_grid)
    report = None
    if args.report:
        from detgroup.report import ReportBuilder

        report = ReportBuilder(
            category_names=scored,
            image_files={info["id"]: Path(args.images) / info["file_name"]
                         for info in dataset.coco.images},
            sort=args.report_sort, max_images=args.report_images,
            meta=[("data", str(args.data)), ("images", str(args.images)),
                  ("checkpoint", str(args.checkpoint)),
                  ("decoder", f"{post.method}, {post.consistency}, pair bias "
                              f"{post.pair_bias:+.3f}, neighbors {post.neighbors}")])
    summary, per_image = evaluate(
        model, loader, num_classes=len(scored), postprocess=post,
        device=device, progress=True, unscored_categories=unscored,
        on_image=None if report is None else report.add,
    )
    if args.per_image:
        atomic_write_json(args.per_image, per_image, indent=1)
    index = None if report is None else report.write(args.report, summary)
    unknown = summary["num_boxes"] - summary["num_grouped_boxes"]
    print(f"{args.data}: {summary['num_images']} images, {summary['num_boxes']} boxes"
          + (f" ({unknown} of unknown group: in the category metrics only)" if unknown else ""))
    counts = ("num_images", "num_boxes", "num_grouped_boxes")
    _print_table([(k, v) for k, v in summary.items() if k not in counts])
    if index is not None:
        print(f"report -> {index}")
    if args.json:
        _print_json_last(summary)
    return 0


# --- infer / viz / export / demo ---------------------------------------------------------------


def cmd_infer(args: argparse.Namespace) -> int:
    from detgroup.engine.infer import run_inference

    summary = run_inference(
        checkpoint=args.checkpoint, images=args.images, out_dir=args.out, boxes=args.boxes,
        detector=args.detector, detector_arch=args.detector_arch,
        detector_score=args.detector_score, detector_classes=args.detector_classes,
        device=args.device, method=args.method, neighbors=args.neighbors,
        pair_bias_search=args.pair_bias_search, prior_weight_grid=args.prior_weight_grid,
        overlays=not args.no_overlays,
        heatmap=args.heatmap, resume=not args.no_resume, clip=args.clip,
        pair_prior=args.pair_prior, ignore_categories=args.ignore_categories,
    )
    print(f"{summary['images_done']} images grouped, {summary['images_skipped']} already done, "
          f"{summary['images_failed']} failed -> {args.out}")
    for failure in summary["failures"]:
        print(f"  failed: {failure}")
    if args.json:
        _print_json_last(summary)
    return 0 if not summary["images_failed"] else EXIT_USER_ERROR


def cmd_viz(args: argparse.Namespace) -> int:
    if args.truth:
        from detgroup.report import write_comparisons

        written = write_comparisons(args.data, args.truth, args.images, args.out,
                                    limit=args.limit)
        print(f"{written} truth | prediction comparisons -> {args.out}")
        return 0
    from detgroup.engine.infer import draw_annotations

    written = draw_annotations(args.data, args.images, args.out, limit=args.limit,
                               label_text=args.label_text)
    print(f"{written} overlays -> {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from detgroup.export import decoder_settings_path, export_model

    path = export_model(args.checkpoint, args.format, args.out)
    settings = decoder_settings_path(path)
    print(f"exported {args.format} -> {path}; decoder settings -> {settings}")
    load = {"torch-export": f"import torchvision; torch.export.load({str(path)!r}).module()",
            "torchscript": f"import torchvision (first: it registers roi_align); "
                           f"torch.jit.load({str(path)!r})",
            "onnx": f"onnxruntime.InferenceSession({str(path)!r})"}[args.format]
    print(f"  load: {load}")
    print("  decode: detgroup.partition(pair_logits, class_logits, boxes=boxes, "
          f"**json.load(open({str(settings)!r})))")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from detgroup.demo import run_demo

    run_demo(args.out, quick=args.quick, overrides=list(args.overrides))
    return 0


# --- parser -----------------------------------------------------------------------------------


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _weights(text: str) -> list[float]:
    """``--prior-weight-grid``: comma-separated finite weights >= 0, e.g. ``0,2,4,8,16``."""
    try:
        weights = [float(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers"
                                         ) from None
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise argparse.ArgumentTypeError(f"{text!r}: every weight must be finite and >= 0")
    return weights


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, except where there is none to show (None, a
    flag that is off) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def _add_neighbors(p: argparse.ArgumentParser) -> None:
    p.add_argument("--neighbors", type=_non_negative_int, default=None,
                   help="decode only the pairs among each box's k nearest boxes; 0: every pair "
                        "(default: the checkpoint's decoder.neighbors)")


def _add_decoder(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=["gaec-kl", "average", "components", "exact"],
                   help="partition decoder (default: the checkpoint's decoder.method)")
    _add_neighbors(p)
    p.add_argument("--pair-bias-search", choices=["none", "silhouette"],
                   help="per image, shift the pair logits by the value of the checkpoint's "
                        "decoder.pair_bias_grid whose partition has the highest silhouette "
                        "(no labels; for logits miscalibrated on new data; every pair only) "
                        "(default: the checkpoint's decoder.pair_bias_search)")
    p.add_argument("--prior-weight-grid", type=_weights, default=None, metavar="W,W,...",
                   help="with --pair-bias-search: also search the weight of the model's pair "
                        "prior (e.g. --pair-prior attribute_cosine:0 on HOG attributes) over "
                        "these weights, each image's (weight, shift) of highest silhouette "
                        "(default: the checkpoint's decoder.prior_weight_grid, [0.0])")


def _add_clip(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clip", action="store_true",
                   help="clip boxes that extend outside their image (more than 1 px) instead of "
                        "refusing them")


def _add_device(p: argparse.ArgumentParser) -> None:
    from detgroup.engine.device import DEVICE_HELP

    p.add_argument("--device", default="cpu", help=DEVICE_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detgroup",
        description="Supervised grouping of detected objects: a category and a group per box.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter)

    p = command("demo", "synth -> train -> eval -> infer -> overlays, one folder")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    p.add_argument("--quick", action="store_true", help="a tiny run (seconds) to check set-up")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.set_defaults(func=cmd_demo)

    p = command("synth", "generate the synthetic 'pets in groups' set")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--images", type=int,
                   help="training images; val gets a fifth as many (default: synth.num_train)")
    p.add_argument("--seed", type=int, help="generator seed (default: synth.seed)")
    p.add_argument("--config", help="YAML config whose 'synth' section is used")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="synth knobs, e.g. --set ambiguous_fraction=0.2 clutter=4")
    p.set_defaults(func=cmd_synth)

    p = command("data", "convert a real data set to COCO with groups")
    p.add_argument("dataset", choices=["funsd", "omniglot"], help="which set")
    p.add_argument("--src", type=Path, required=True,
                   help="FUNSD training_data or testing_data folder; Omniglot folder with the npz")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the scenes")
    p.add_argument("--val-forms", type=int, default=30, help="FUNSD: forms held out for val")
    p.add_argument("--split", choices=["train", "test"],
                   help="FUNSD: force train/val or test (default: testing_data -> test)")
    p.add_argument("--train-scenes", type=int, default=2000, help="Omniglot: training scenes")
    p.add_argument("--canvas", type=int, default=512, help="Omniglot: smallest scene side, px")
    p.add_argument("--glyph-size", type=int, nargs=2, default=[40, 56], metavar=("MIN", "MAX"),
                   help="Omniglot: range of a glyph's longer side, px")
    p.add_argument("--eval-max-chars", type=int, default=10,
                   help="Omniglot: most characters of a val/test/unseen scene")
    p.add_argument("--unlisted-train-runs", type=int, default=0,
                   help="Omniglot: runs of unlisted characters trained as category 'other' "
                        "instead of held out as unseen")
    p.add_argument("--eval-alphabets", nargs="+", default=[], metavar="NAME",
                   help="Omniglot: listed alphabets left out of training, one whole-alphabet "
                        "scene each (split 'alphabets')")
    p.add_argument("--chars-per-scene", type=int, nargs=2, default=[4, 10], metavar=("MIN", "MAX"),
                   help="Omniglot: characters of a train scene")
    p.add_argument("--samples-per-char", type=int, nargs=2, default=[2, 6],
                   metavar=("MIN", "MAX"), help="Omniglot: samples of a character in a train scene")
    p.add_argument("--alphabets-per-scene", type=int, nargs=2, default=[1, 3],
                   metavar=("MIN", "MAX"), help="Omniglot: alphabets of a train scene")
    p.add_argument("--rotations", type=int, choices=[1, 2, 4], default=1,
                   help="Omniglot: 2 or 4: every train character also trains turned by 180 "
                        "(or 90, 180, 270) degrees, each turn a character of its own")
    p.add_argument("--hog-attributes", action="store_true",
                   help="Omniglot: also write annotations_hog.json beside each split's file, "
                        "each glyph's HOG descriptor as its attributes (for --pair-prior "
                        "attribute_cosine and model.attributes)")
    p.set_defaults(func=cmd_data)

    p = command("validate", "check a COCO-with-groups file (and its images)")
    p.add_argument("ann", type=Path, help="COCO-with-groups JSON file")
    p.add_argument("--images", type=Path, help="folder of the images: decode and size-check each")
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="pixels a box may extend outside its image")
    _add_clip(p)
    p.set_defaults(func=cmd_validate)

    p = command("train", "train a model from a config")
    p.add_argument("--config", help="YAML recipe (configs/*.yaml); default: the synthetic recipe")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--device", help="auto, cpu or cuda (default: the config's train.device)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.set_defaults(func=cmd_train)

    p = command("eval", "score a checkpoint, or a detections file, on a COCO-with-groups file")
    p.description = (
        "Score a checkpoint on a COCO-with-groups file (--checkpoint, --images), or score "
        "detected, classified and grouped boxes (--detections: COCO results with group_id, e.g. "
        "the results.json of infer) against it: detections are matched one-to-one to truth boxes "
        "at IoU >= 0.5 in order of score; category and box AP by pycocotools; group "
        "precision/recall/F1, exact-group F1 and Group PQ with unmatched detections as false "
        "members and missed boxes as missing members."
    )
    p.add_argument("--checkpoint", type=Path, help="model.pt of a run (with --images)")
    p.add_argument("--data", type=Path, required=True, help="COCO-with-groups file (the truth)")
    p.add_argument("--images", type=Path, help="folder its file_names are under")
    p.add_argument("--detections", type=Path,
                   help="COCO results JSON (image_id, bbox, category_id, score, group_id) to "
                        "score instead of a checkpoint; image_id and category_id must be the "
                        "truth file's ids")
    p.add_argument("--min-score", type=float, default=0.0,
                   help="with --detections: group metrics use detections of at least this score "
                        "(AP uses all)")
    _add_device(p)
    _add_decoder(p)
    p.add_argument("--consistency", choices=["joint", "forbid"],
                   help="category consistency of groups (default: the checkpoint's "
                        "decoder.consistency)")
    p.add_argument("--pair-bias", type=float, default=None,
                   help="added to the pair logits before decoding (default: the checkpoint's "
                        "decoder.pair_bias)")
    _add_pair_prior(p)
    _add_clip(p)
    p.add_argument("--per-image", type=Path, help="write per-image metrics JSON here")
    p.add_argument("--report", type=Path, metavar="DIR",
                   help="write an HTML report into DIR (DIR/index.html: metrics, worst images "
                        "with truth | prediction, group fates, confusion, heat maps)")
    p.add_argument("--report-images", type=_non_negative_int, default=100, metavar="K",
                   help="pictures and pages for the K worst images only; the table lists all "
                        "(default: 100)")
    p.add_argument("--report-sort", choices=["ari", "exact_group_f1", "cat_acc"],
                   default="ari", help="metric the report sorts by, worst first (default: ari)")
    p.add_argument("--unscored-categories", nargs="*", metavar="NAME", default=None,
                   help="categories left out of the entity_* metrics (LayoutLM / FUNSD: other); "
                        "default: the checkpoint's data.unscored_categories")
    p.add_argument("--batch-size", type=_positive_int, default=None, metavar="B",
                   help="images per forward (default: the checkpoint's data.batch_size). A "
                        "resnet* backbone trained from scratch (group norm) normalises over the "
                        "padded batch, so a scene's scores move slightly with the sizes of the "
                        "images batched with it; 1 scores each image alone, as infer does")
    p.add_argument("--ignore-categories", action="store_true",
                   help="score the grouping alone: decode by the pair logits only and count "
                        "every box as one category, so the data's categories need not be the "
                        "checkpoint's (e.g. alphabets or classes never trained on); cat_acc is "
                        "then 1 by construction")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.set_defaults(func=cmd_eval)

    p = command("infer", "group the boxes of new images")
    p.add_argument("--checkpoint", type=Path, required=True, help="model.pt of a run")
    p.add_argument("--images", required=True,
                   help="an image, a folder (searched with its subfolders; with a COCO --boxes "
                        "file each image is matched to the file_name of its relative path) "
                        "or a glob")
    p.add_argument("--boxes", type=Path,
                   help="COCO(-with-groups) JSON, or a folder / file of per-image box lists "
                        "(CSV header x1,y1,x2,y2 or x,y,w,h; JSON [[x1, y1, x2, y2], ...]); "
                        "results.json then uses the COCO file's category ids (by name). Without "
                        "--boxes and --detector: a model trained with model.detector detects the "
                        "boxes itself")
    p.add_argument("--detector", type=Path,
                   help="local torchvision detector weights file; results.json then uses "
                        "category ids 1..C in the order of the checkpoint's category_names")
    p.add_argument("--detector-arch", default="fasterrcnn_resnet50_fpn",
                   choices=["fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn"],
                   help="architecture of the detector weights")
    p.add_argument("--detector-score", type=float, default=0.5,
                   help="keep detections scoring at least this")
    p.add_argument("--detector-classes", type=int, nargs="*", help="keep only these labels")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    _add_device(p)
    _add_decoder(p)
    _add_pair_prior(p)
    _add_clip(p)
    p.add_argument("--no-overlays", action="store_true", help="write no overlay PNGs")
    p.add_argument("--heatmap", action="store_true", help="add the affinity heat map to overlays")
    p.add_argument("--no-resume", action="store_true", help="redo images already done in OUT")
    p.add_argument("--ignore-categories", action="store_true",
                   help="group by the pair logits alone: every box is of the one category "
                        "'object' (boxes of classes the model never learnt)")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.set_defaults(func=cmd_infer)

    p = command("viz", "draw ground truth or results as overlays")
    p.add_argument("--data", type=Path, required=True,
                   help="COCO-with-groups file or detgroup results JSON")
    p.add_argument("--images", type=Path, required=True, help="folder its file_names are under")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--truth", type=Path, metavar="ANN.json",
                   help="ground truth of the same images: --data is then the predictions, and "
                        "each PNG shows truth | prediction with matched group colours")
    p.add_argument("--limit", type=int, default=0, help="draw at most this many images (0: all)")
    p.add_argument("--label-text", action="store_true",
                   help="write each box's 'text' inside it")
    p.set_defaults(func=cmd_viz)

    p = command("export", "export the network to torch.export (.pt2), TorchScript or ONNX")
    p.add_argument("--checkpoint", type=Path, required=True, help="model.pt of a run")
    p.add_argument("--format", choices=["torch-export", "torchscript", "onnx"], required=True,
                   help="torch-export: an ExportedProgram (.pt2, torch.export.load; the "
                        "recommended one); torchscript: torch.jit.load after import "
                        "torchvision; onnx: needs the export extra")
    p.add_argument("--out", type=Path, required=True,
                   help="file to write; the decoder settings go beside it as "
                        "<out without suffix>.decoder.json")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except DetgroupError as err:
        print(f"detgroup {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"detgroup {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
