"""The ``detgroup`` command line: parse, call, print.

Exit codes: 0 success; 2 user error (bad file, bad config, bad boxes: one line on stderr, no
traceback); 1 internal error (a bug: traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
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

    coco = load_coco_groups(args.ann, images_dir=args.images, tolerance=args.tolerance)
    boxes = sum(len(v) for v in coco.anns_by_image.values())
    print(f"{args.ann}: valid: {len(coco)} images, {boxes} boxes, categories "
          f"{coco.category_names}" + (" (image files checked)" if args.images else ""))
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
                                 unlisted_train_runs=args.unlisted_train_runs, progress=True)
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


def _eval_loader(args: argparse.Namespace, batch_size: int, load_images: bool = True) -> Any:
    from torch.utils.data import DataLoader

    from detgroup.data.dataset import GroupDataset, collate_groups

    dataset = GroupDataset(args.data, args.images, load_images=load_images)
    return dataset, DataLoader(dataset, batch_size=batch_size, collate_fn=collate_groups)


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from detgroup.atomic import atomic_write_json
    from detgroup.engine.checkpoint import load_model_from_checkpoint
    from detgroup.engine.evaluate import PostProcess, evaluate, unscored_indices

    model, cfg = load_model_from_checkpoint(args.checkpoint)
    dataset, loader = _eval_loader(args, cfg.data.batch_size,
                                   load_images=cfg.model.backbone.name != "none")
    if dataset.category_names != cfg.category_names:
        raise DetgroupError(
            f"{args.data}: categories {dataset.category_names} differ from the checkpoint's "
            f"{cfg.category_names}"
        )
    if cfg.model.attributes.enabled and dataset.coco.attribute_names != cfg.attribute_names:
        raise DetgroupError(
            f"{args.data}: attribute_names {dataset.coco.attribute_names} differ from the "
            f"checkpoint's {cfg.attribute_names}"
        )
    names = (cfg.data.unscored_categories if args.unscored_categories is None
             else args.unscored_categories)
    unscored = unscored_indices(cfg.category_names, names, source="--unscored-categories")
    post = PostProcess.from_config(cfg.decoder, method=args.method,
                                   consistency=args.consistency, pair_bias=args.pair_bias,
                                   neighbors=args.neighbors)
    summary, per_image = evaluate(
        model, loader, num_classes=len(cfg.category_names), postprocess=post,
        device=torch.device(args.device), progress=True, unscored_categories=unscored,
    )
    if args.per_image:
        atomic_write_json(args.per_image, per_image, indent=1)
    print(f"{args.data}: {summary['num_images']} images, {summary['num_boxes']} boxes")
    _print_table([(k, v) for k, v in summary.items() if k not in ("num_images", "num_boxes")])
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
        overlays=not args.no_overlays,
        heatmap=args.heatmap, resume=not args.no_resume,
    )
    print(f"{summary['images_done']} images grouped, {summary['images_skipped']} already done, "
          f"{summary['images_failed']} failed -> {args.out}")
    for failure in summary["failures"]:
        print(f"  failed: {failure}")
    if args.json:
        _print_json_last(summary)
    return 0 if not summary["images_failed"] else EXIT_USER_ERROR


def cmd_viz(args: argparse.Namespace) -> int:
    from detgroup.engine.infer import draw_annotations

    written = draw_annotations(args.data, args.images, args.out, limit=args.limit,
                               label_text=args.label_text)
    print(f"{written} overlays -> {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from detgroup.export import export_model

    path = export_model(args.checkpoint, args.format, args.out)
    print(f"exported {args.format} -> {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from detgroup.demo import run_demo

    run_demo(args.out, quick=args.quick, overrides=list(args.overrides))
    return 0


# --- parser -----------------------------------------------------------------------------------


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _add_neighbors(p: argparse.ArgumentParser) -> None:
    p.add_argument("--neighbors", type=_non_negative_int, default=None,
                   help="decode only the pairs among each box's k nearest boxes; 0: every pair "
                        "(default: the checkpoint's decoder.neighbors)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detgroup",
        description="Supervised grouping of detected objects: a category and a group per box.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="synth -> train -> eval -> infer -> overlays, one folder")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--quick", action="store_true", help="a tiny run (seconds) to check set-up")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth", help="generate the synthetic 'pets in groups' set")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--images", type=int, help="training images (val gets a fifth as many)")
    p.add_argument("--seed", type=int)
    p.add_argument("--config", help="YAML config whose 'synth' section is used")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="synth knobs, e.g. --set ambiguous_fraction=0.2 clutter=4")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("data", help="convert a real data set to COCO with groups")
    p.add_argument("dataset", choices=["funsd", "omniglot"])
    p.add_argument("--src", type=Path, required=True,
                   help="FUNSD training_data or testing_data folder; Omniglot folder with the npz")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
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
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("validate", help="check a COCO-with-groups file (and its images)")
    p.add_argument("ann", type=Path)
    p.add_argument("--images", type=Path, help="folder of the images: decode and size-check each")
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="pixels a box may extend outside its image")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("train", help="train a model from a config")
    p.add_argument("--config", help="YAML recipe (configs/*.yaml); defaults: synthetic recipe")
    p.add_argument("--out", type=Path)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="score a checkpoint on a COCO-with-groups file")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--method", choices=["gaec-kl", "average", "components", "exact"])
    p.add_argument("--consistency", choices=["joint", "forbid"])
    _add_neighbors(p)
    p.add_argument("--pair-bias", type=float, default=None,
                   help="added to the pair logits before decoding (default: the checkpoint's "
                        "decoder.pair_bias)")
    p.add_argument("--per-image", type=Path, help="write per-image metrics JSON here")
    p.add_argument("--unscored-categories", nargs="*", metavar="NAME", default=None,
                   help="categories left out of the entity_* metrics (LayoutLM / FUNSD: other); "
                        "default: the checkpoint's data.unscored_categories")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("infer", help="group the boxes of new images")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--images", required=True, help="an image, a folder or a glob")
    p.add_argument("--boxes", type=Path,
                   help="COCO(-with-groups) JSON, or a folder / file of per-image box lists")
    p.add_argument("--detector", type=Path, help="local torchvision detector weights file")
    p.add_argument("--detector-arch", default="fasterrcnn_resnet50_fpn",
                   choices=["fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn"])
    p.add_argument("--detector-score", type=float, default=0.5)
    p.add_argument("--detector-classes", type=int, nargs="*", help="keep only these labels")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--method", choices=["gaec-kl", "average", "components", "exact"])
    _add_neighbors(p)
    p.add_argument("--no-overlays", action="store_true")
    p.add_argument("--heatmap", action="store_true", help="add the affinity heat map to overlays")
    p.add_argument("--no-resume", action="store_true", help="redo images already done in OUT")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("viz", help="draw ground truth or results as overlays")
    p.add_argument("--data", type=Path, required=True,
                   help="COCO-with-groups file or detgroup results JSON")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--limit", type=int, default=0, help="draw at most this many images")
    p.add_argument("--label-text", action="store_true",
                   help="write each box's 'text' inside it")
    p.set_defaults(func=cmd_viz)

    p = sub.add_parser("export", help="export the network to TorchScript or ONNX")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--format", choices=["torchscript", "onnx"], required=True)
    p.add_argument("--out", type=Path, required=True)
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
