"""The configuration schema: dataclasses with working defaults, YAML files and dotted overrides.

The defaults are the recipe for the built-in synthetic set. A YAML file only overrides fields;
``key=value`` arguments override both. An unknown key or a value of the wrong type is a
:class:`~detgroup.errors.DetgroupError` that names the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from detgroup.errors import DetgroupError

# The choices of a key are its Literal type. OmegaConf >= 2.4 refuses any other value itself;
# OmegaConf 2.3 (which detectron2 requires, see the detectron2 extra) cannot read a Literal field,
# so there the same names are bound to str below and _check_choices refuses the value with the
# same one-line message.
Backbone = Literal["small", "resnet18", "resnet34", "resnet50", "none"]  # none: no pixels
Fusion = Literal["sum", "concat"]
CropFusion = Literal["add", "replace"]  # model.crop.fusion
PairPriorKind = Literal["none", "attribute_cosine", "same_line"]  # model.pair_prior.kind
DetectorBackbone = Literal["resnet50_fpn", "mobilenet_v3_large_fpn"]
PairLoss = Literal["bce", "kcl", "mcl", "ae"]
PairBalance = Literal["pairs", "groups"]
DecoderMethod = Literal["gaec-kl", "average", "components", "exact"]
Consistency = Literal["joint", "forbid"]
PairBiasSearch = Literal["none", "silhouette"]  # decoder.pair_bias_search
PairCandidateMode = Literal["dense", "sparse", "auto"]
TrainDevice = Literal["auto", "cpu", "cuda"]
# the val metrics training logs after each evaluation; train.select_by picks best.pt by one
ValMetric = Literal["cat_acc", "ari", "pair_f1", "exact_group_f1", "group_pq"]

BACKBONES = get_args(Backbone)
FUSIONS = get_args(Fusion)
DETECTOR_BACKBONES = get_args(DetectorBackbone)
PAIR_LOSSES = get_args(PairLoss)
DECODERS = get_args(DecoderMethod)
CONSISTENCY = get_args(Consistency)
PAIR_CANDIDATE_MODES = get_args(PairCandidateMode)
VAL_METRICS = get_args(ValMetric)
PAIR_PRIOR_KINDS = get_args(PairPriorKind)

# The Literal of each choice type, whichever type OmegaConf is given (read by _choices).
_LITERALS: dict[str, Any] = {
    "Backbone": Backbone, "Fusion": Fusion, "CropFusion": CropFusion,
    "PairPriorKind": PairPriorKind,
    "DetectorBackbone": DetectorBackbone,
    "PairLoss": PairLoss, "PairBalance": PairBalance, "DecoderMethod": DecoderMethod,
    "Consistency": Consistency, "PairCandidateMode": PairCandidateMode,
    "TrainDevice": TrainDevice, "ValMetric": ValMetric, "PairBiasSearch": PairBiasSearch,
}


def _omegaconf_reads_literal() -> bool:
    """Whether the installed OmegaConf accepts a ``Literal`` field (2.4 does, 2.3 does not)."""

    @dataclass
    class _Probe:
        x: Literal["a"] = "a"

    try:
        OmegaConf.structured(_Probe)
    except OmegaConfBaseException:
        return False
    return True


if not _omegaconf_reads_literal():  # pragma: no cover - depends on the installed OmegaConf
    Backbone = Fusion = CropFusion = DetectorBackbone = PairBalance = str  # type: ignore[misc]
    PairLoss = PairPriorKind = str  # type: ignore[misc]
    DecoderMethod = Consistency = PairCandidateMode = TrainDevice = ValMetric = str  # type: ignore[misc]
    PairBiasSearch = str  # type: ignore[misc]


@dataclass
class SynthConfig:
    """Knobs of the synthetic set. Sizes are fractions of ``image_size`` unless named ``_px``.

    ``min_size``/``max_size``: range of the per-image body length (animals vary +-10 % around
    it; a crowded image shrinks it). ``lone_prob``: probability that a group is a lone animal;
    other groups have ``min_members..max_members`` animals. ``ambiguous_fraction``: probability
    that an animal is drawn with the category-independent middle shape (every group keeps one
    clear member). ``clutter``: number of unannotated background objects per image.
    ``box_jitter``: std of the ground-truth box side noise as a fraction of the box size.
    ``group_spread``: std of member offsets around the group centre, times sqrt(group size).
    ``max_overlap``: largest intersection of two boxes over the smaller box's area.
    ``tiles``: big scenes for measuring quality at scale: each image is a ``tiles`` x ``tiles``
    grid of independently drawn scenes of ``image_size`` px (``tiles`` x ``image_size`` px
    square, about ``tiles``² times the groups and boxes); groups never cross tiles.
    """

    image_size: int = 256
    categories: list[str] = field(default_factory=lambda: ["cat", "dog"])
    num_train: int = 1000
    num_val: int = 200
    min_groups: int = 1
    max_groups: int = 6
    min_members: int = 2
    max_members: int = 8
    lone_prob: float = 0.15
    ambiguous_fraction: float = 0.4
    clutter: int = 8
    box_jitter: float = 0.04
    group_spread: float = 0.045
    min_size: float = 0.07
    max_size: float = 0.11
    max_overlap: float = 0.3
    seed: int = 0
    tiles: int = 1
    # > 0: every box gets a "text", its category's name with each letter replaced by a random
    # one with this probability (a noisy OCR word tied to the category; drawn from a separate
    # generator, so the scenes stay the same); 0: no texts
    text_noise: float = 0.0


@dataclass
class DataConfig:
    """Where the COCO-with-groups files and their images are, and how to batch them."""

    train_ann: str = "runs/synth/train/annotations.json"
    train_images: str = "runs/synth/train/images"
    val_ann: str = "runs/synth/val/annotations.json"
    val_images: str = "runs/synth/val/images"
    batch_size: int = 8
    max_boxes_per_batch: int = 0  # 0: no cap; else batches are cut so B * Nmax stays below it
    num_workers: int = 0
    hflip_prob: float = 0.5
    # training augmentation, each drawn per image: the image and its boxes are rescaled by a
    # factor in [1 - scale_jitter, 1 + scale_jitter]; every box side moves by up to
    # box_jitter x the box's height; brightness and contrast change by up to +-photometric;
    # each box is left out with probability box_dropout (a missed detection: its pixels stay)
    scale_jitter: float = 0.0
    box_jitter: float = 0.0
    photometric: float = 0.0
    box_dropout: float = 0.0
    # categories left out of the entity_* metrics (LayoutLM / FUNSD protocol: ["other"])
    unscored_categories: list[str] = field(default_factory=list)
    # score val by the grouping alone (as `detgroup eval --ignore-categories`): every val box of
    # one category, decoded by the pair logits alone, so val may hold categories never trained
    # on (e.g. Omniglot's `unseen` alphabets) and best.pt is chosen on how those are grouped
    val_ignore_categories: bool = False


@dataclass
class BackboneConfig:
    """A torchvision backbone; ``weights`` is a local state-dict file (never downloaded).

    ``name: none``: no image at all; each token is built from the box geometry and the box's
    text and attributes (``model.text``, ``model.attributes``), and images are never read.
    """

    name: Backbone = "small"
    weights: str | None = None
    frozen: bool = False
    width: int = 32  # channels of the small convnet at stride 4 (ResNets ignore it)
    out_channels: int = 64  # channels of the feature maps given to RoIAlign


@dataclass
class RelationConfig:
    """The relational transformer over the boxes of one image (layers = 0: per-box only)."""

    layers: int = 3
    heads: int = 4
    ffn_mult: int = 4
    dropout: float = 0.0


@dataclass
class PairCandidatesConfig:
    """Score, attend and decode only candidate pairs instead of all N x N (big scenes).

    ``mode``: "dense" (every pair, as without this block), "sparse" (always the candidate
    graph) or "auto" (the candidate graph when an image batch holds more than
    ``auto_min_boxes`` boxes, else dense; training with "auto" or "sparse" always uses the
    candidate graph so that the embedding and the edge loss are trained). Candidates of a box:
    its ``gap_k`` nearest boxes by the gap between box edges and its ``embed_k`` nearest in a
    learned ``embed_dim``-dimensional projection of its token, symmetrised
    (``detgroup.ops.candidates``). Training adds ``random_pairs`` random pairs per box to the
    pairs the loss sees, and trains the embedding with weight ``embed_weight``. Distances are
    computed ``block`` rows at a time.
    """

    mode: PairCandidateMode = "dense"
    auto_min_boxes: int = 1000
    gap_k: int = 8
    embed_k: int = 8
    embed_dim: int = 16
    random_pairs: int = 4
    embed_weight: float = 1.0
    block: int = 1024


@dataclass
class DetectorConfig:
    """A torchvision Faster R-CNN that finds the boxes itself (``GroupingFasterRCNN``).

    ``backbone`` None: no detector, the model groups given boxes. Else one of
    ``DETECTOR_BACKBONES``: the model detects, and the grouping branch pools its RoI tokens from
    the detector's own FPN (``model.backbone`` is then unused). ``weights`` is a local
    torchvision Faster R-CNN state-dict file of that backbone (never downloaded; its box
    predictor is replaced when its number of classes differs); random init without one.
    """

    backbone: DetectorBackbone | None = None
    weights: str | None = None
    min_size: int = 800  # the detector resizes each image so its shorter side is this (px)
    max_size: int = 1333  # ... and its longer side at most this
    score_threshold: float = 0.5  # detections below this score are dropped before grouping
    nms_iou: float = 0.5  # per-category non-maximum suppression of the detector
    # detections of different categories on one object (box IoU above this) are merged into
    # the higher-scored one before grouping; 1.0: keep them all
    agnostic_nms_iou: float = 0.7
    detections_per_image: int = 100
    # torchvision's proposal and RoI sample counts (fewer: faster on a CPU, small images)
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    box_batch_size_per_image: int = 512
    # training: the grouping branch sees the truth boxes plus up to this many proposals per
    # image that overlap a truth box at IoU >= proposal_iou (labelled as that truth box)
    proposal_tokens: int = 32
    proposal_iou: float = 0.5
    # torchvision stage indices the FPN levels sit on; None: torchvision's builder (MobileNet:
    # the last two stages, both at stride 32). [2, 3, 5] (MobileNet) / [2, 3, 4] (ResNet-50):
    # strides 8, 16, 32, for small objects
    returned_layers: list[int] | None = None
    # anchor sizes (px) per feature map (one list per FPN level, plus one for the max-pooled
    # level), aspect ratios 0.5 / 1 / 2; None: torchvision's (MobileNet: 32-512 on each)
    anchor_sizes: list[list[int]] | None = None


@dataclass
class TextConfig:
    """A learned embedding of each box's ``text`` (hashed character n-grams, detgroup.ops.text)."""

    enabled: bool = False
    buckets: int = 50_000  # hash buckets of the n-gram embedding (+ one row for no text)
    embed_dim: int = 64  # width of the n-gram embedding, projected to model.dim


@dataclass
class AttributesConfig:
    """A small MLP on each box's ``attributes`` vector (names from the data's attribute_names)."""

    enabled: bool = False
    hidden: int = 64


@dataclass
class CropAugmentConfig:
    """The random affine map of each crop in training (:class:`~detgroup.model.crop_encoder.
    CropAugment`): uniform in +- ``rotate`` and +- ``shear`` degrees, 1 +- ``scale``, and +-
    ``translate`` x the crop's side. All 0 (the default): no augmentation. Evaluation and
    inference never warp."""

    rotate: float = 0.0
    shear: float = 0.0
    scale: float = 0.0
    translate: float = 0.0


@dataclass
class CropConfig:
    """A crop of each box cut from the image pixels and encoded by a small CNN
    (:mod:`detgroup.model.crop_encoder`): for small items, seen at their own resolution.

    The box is padded to the grid's aspect (its own aspect is kept) and grown by ``context`` x
    each side on both ends, then pooled to ``size`` x ``size`` px, or ``size`` x ``width`` px
    when ``width`` > 0 (a word: 16 x 64); the CNN has ``channels`` channels in its first
    stages, each convolution followed by a GroupNorm when ``norm``. ``fusion``: ``add`` (crop
    token + RoI token) or ``replace`` (the crop token instead of the RoI appearance; the
    backbone is then not run). ``augment``: each training crop warped by its own random affine
    map (:class:`CropAugmentConfig`; off by default).
    """

    enabled: bool = False
    size: int = 32
    width: int = 0  # 0: square (size x size)
    context: float = 0.0
    channels: int = 32
    norm: bool = False  # GroupNorm after each convolution of the crop CNN
    fusion: CropFusion = "add"
    augment: CropAugmentConfig = field(default_factory=lambda: CropAugmentConfig())


@dataclass
class PairPriorConfig:
    """A fixed classical similarity added to the pair logits (:mod:`detgroup.model.pair_prior`):
    ``weight * (s_ij - offset)``, with ``s_ij`` the attribute cosine (e.g. HOG of each glyph)
    or the same-line rule's link (``max_gap`` x height, ``min_overlap`` of the smaller height).
    The learned pair head then models a residual on top of the status quo."""

    kind: PairPriorKind = "none"
    weight: float = 1.0
    offset: float = 0.0
    max_gap: float = 1.0  # same_line
    min_overlap: float = 0.5  # same_line


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    relation: RelationConfig = field(default_factory=RelationConfig)
    dim: int = 128
    roi_size: int = 7  # RoIAlign bins down a box (and across it when roi_width is 0)
    # bins across a box; 0: roi_size (square). For boxes much wider than tall, such as words
    roi_width: int = 0
    # > 0: a second RoI grid on each box grown by roi_context x its height on every side (the
    # rules, frames and blanks around a word), concatenated to the box's own; 0: the box only
    roi_context: float = 0.0
    roi_canonical_scale: int = 224
    pair_hidden: int = 128
    num_clusters: int = 16  # assignment head size for the KCL/MCL losses
    embed_dim: int = 16  # embedding size for the associative-embedding loss
    pair_chunk: int = 256  # rows of the pair head computed at once at inference
    # give the pair head (loss.pair = bce) the gaps and overlaps of two boxes in units of their
    # text height, as a same-line linking rule sees them (documents; off by default)
    pair_layout_features: bool = False
    pair_candidates: PairCandidatesConfig = field(default_factory=PairCandidatesConfig)
    text: TextConfig = field(default_factory=TextConfig)
    attributes: AttributesConfig = field(default_factory=AttributesConfig)
    # how the text and attribute tokens join the box token: sum, or concat + linear
    fusion: Fusion = "sum"
    crop: CropConfig = field(default_factory=CropConfig)
    pair_prior: PairPriorConfig = field(default_factory=PairPriorConfig)


@dataclass
class LossConfig:
    pair: PairLoss = "bce"  # the pair loss: balanced BCE, KCL, MCL or associative embedding
    # bce/mcl: "pairs" (every pair weighs the same) or "groups" (every group and every pair of
    # groups counts once, so small groups count as much as big ones; see detgroup.losses)
    pair_balance: PairBalance = "pairs"
    cls_weight: float = 1.0
    pair_weight: float = 1.0
    detection_weight: float = 1.0  # each torchvision Faster R-CNN loss (with model.detector)
    kcl_margin: float = 2.0
    ae_margin: float = 1.0


@dataclass
class DecoderConfig:
    method: DecoderMethod = "gaec-kl"  # the partition decoder (detgroup.decoder)
    # joint: a group's category from its members' summed log-probabilities; forbid: boxes of
    # different predicted categories cannot link
    consistency: Consistency = "joint"
    # added to the pair logits before decoding (the balanced pair BCE shifts its logits by
    # log(#negative / #positive pairs); the decoder wants calibrated log-odds)
    pair_bias: float = 0.0
    # at train start, set pair_bias to -log(#negative / #positive pairs) of the training set
    # (logit adjustment, Menon et al. 2021) when the pair loss is the balanced "bce"; with
    # model.pair_candidates (not "dense") over each box's gap_k nearest boxes, the pairs the
    # edge loss and the sparse decoder see
    calibrate: bool = False
    # 0: decode on every pair of boxes. k > 0: only on the pairs among each box's k nearest
    # boxes (detgroup.decoder.neighbor_edges; other pairs neutral), so groups grow through
    # chains of neighbours
    neighbors: int = 0
    # a further shift of the pair logits chosen per image without labels. silhouette: of the
    # shifts in pair_bias_grid, the one whose partition has the highest silhouette (scikit-learn)
    # under the distance 1 - p, p the unshifted same-group probabilities; ties go to the
    # smallest shift. For logits miscalibrated on new data (categories never trained on: the
    # learned logits of new Omniglot alphabets are about 2 too high). Every pair (neighbors 0)
    pair_bias_search: PairBiasSearch = "none"
    pair_bias_grid: list[float] = field(default_factory=lambda: [k / 4 for k in range(-16, 9)])
    # with pair_bias_search: weights w of the model's pair prior searched with the shift (the
    # prior of model.pair_prior, or of eval / infer --pair-prior, e.g. attribute_cosine:0 for
    # each box's HOG attributes: a prior of weight 0 that only exposes its similarity). Each
    # candidate decodes logits + w * (s - median s) + shift, s the prior's similarity of two
    # boxes (its median over the image's pairs), scored by the same silhouette under the
    # model's own p; ties go to the smallest weight. [0.0]: the shift alone
    prior_weight_grid: list[float] = field(default_factory=lambda: [0.0])


@dataclass
class TrainConfig:
    epochs: int = 12
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    clip_grad: float = 1.0
    seed: int = 0
    device: TrainDevice = "auto"  # auto: CUDA when present
    amp: bool = True  # only on CUDA
    eval_every: int = 1  # epochs
    # the val metric that picks best.pt (and so model.pt)
    select_by: ValMetric = "ari"
    save_every_steps: int = 0  # 0: at the end of every epoch only
    max_val_images: int = 0  # 0: the whole val set
    tensorboard: bool = False
    threads: int = 0  # torch CPU threads; 0: torch's default


@dataclass
class Config:
    """Everything a run needs; saved with every run and inside every checkpoint."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    category_names: list[str] = field(default_factory=list)  # filled from the training data
    # the training data's top-level attribute_names (when model.attributes is on)
    attribute_names: list[str] = field(default_factory=list)


def parse_pair_prior(spec: str) -> PairPriorConfig:
    """A ``model.pair_prior`` from ``KIND[:WEIGHT[:OFFSET[:MAX_GAP[:MIN_OVERLAP]]]]`` (the
    ``--pair-prior`` of ``eval`` / ``infer``), e.g. ``attribute_cosine:16:0.65``,
    ``same_line:4:0.5:0.796:0.7`` or ``none``; omitted fields keep their defaults."""
    parts = spec.split(":")
    kinds = PAIR_PRIOR_KINDS  # not get_args(PairPriorKind): that is str under OmegaConf 2.3
    where = f"--pair-prior {spec!r}"
    if parts[0] not in kinds:
        raise DetgroupError(f"{where}: the kind must be one of {list(kinds)}")
    names = ("weight", "offset", "max_gap", "min_overlap")
    if len(parts) > 1 + len(names):
        raise DetgroupError(f"{where}: at most KIND:WEIGHT:OFFSET:MAX_GAP:MIN_OVERLAP")
    values: dict[str, float] = {}
    for name, text in zip(names, parts[1:], strict=False):
        try:
            values[name] = float(text)
        except ValueError:
            raise DetgroupError(f"{where}: {name} {text!r} is not a number") from None
        if not math.isfinite(values[name]):
            raise DetgroupError(f"{where}: {name} must be finite, got {text}")
    if values.get("max_gap", 1.0) < 0 or not 0 <= values.get("min_overlap", 0.5) <= 1:
        raise DetgroupError(f"{where}: max_gap must be >= 0 and min_overlap in [0, 1]")
    return PairPriorConfig(kind=parts[0], **values)  # type: ignore[arg-type]


def reads_attributes(cfg: Config) -> bool:
    """Whether a model of ``cfg`` reads each box's ``attributes`` (``model.attributes``, or a
    ``model.pair_prior`` on them): its data must declare ``attribute_names``."""
    return cfg.model.attributes.enabled or cfg.model.pair_prior.kind == "attribute_cosine"


def _check(cfg: Config) -> None:
    checks: list[tuple[bool, str]] = [
        (cfg.model.detector.min_size >= 32 and cfg.model.detector.max_size
         >= cfg.model.detector.min_size,
         "model.detector.min_size must be >= 32 and max_size >= min_size"),
        (0.0 <= cfg.model.detector.score_threshold < 1.0,
         "model.detector.score_threshold must be in [0, 1)"),
        (0.0 < cfg.model.detector.nms_iou <= 1.0, "model.detector.nms_iou must be in (0, 1]"),
        (0.0 < cfg.model.detector.agnostic_nms_iou <= 1.0,
         "model.detector.agnostic_nms_iou must be in (0, 1]"),
        (cfg.model.detector.detections_per_image >= 1,
         "model.detector.detections_per_image must be >= 1"),
        (min(cfg.model.detector.rpn_post_nms_top_n_train,
             cfg.model.detector.rpn_post_nms_top_n_test,
             cfg.model.detector.box_batch_size_per_image) >= 1,
         "model.detector.rpn_post_nms_top_n_train/test and box_batch_size_per_image must be >= 1"),
        (cfg.model.detector.proposal_tokens >= 0, "model.detector.proposal_tokens must be >= 0"),
        (0.0 < cfg.model.detector.proposal_iou <= 1.0,
         "model.detector.proposal_iou must be in (0, 1]"),
        (cfg.decoder.neighbors >= 0, "decoder.neighbors must be >= 0 (0: every pair)"),
        (bool(cfg.decoder.prior_weight_grid) and all(
            math.isfinite(w) and w >= 0 for w in cfg.decoder.prior_weight_grid),
         "decoder.prior_weight_grid must be a non-empty list of finite weights >= 0 ([0.0]: "
         "no prior weight searched)"),
        (cfg.decoder.neighbors == 0 or cfg.decoder.method != "exact",
         "decoder.method exact decodes every pair; use decoder.neighbors: 0 with it"),
        (cfg.model.text.buckets >= 1, "model.text.buckets must be >= 1"),
        (cfg.model.text.embed_dim >= 1, "model.text.embed_dim must be >= 1"),
        (cfg.model.attributes.hidden >= 1, "model.attributes.hidden must be >= 1"),
        (cfg.model.backbone.name != "none" or cfg.model.roi_context == 0,
         "model.roi_context needs a backbone (model.backbone.name is none)"),
        (cfg.model.detector.backbone is None
         or not (cfg.model.text.enabled or reads_attributes(cfg)),
         "model.text and model.attributes are not available with model.detector (its boxes are "
         "found, not given, so they carry no text)"),
        (cfg.model.pair_prior.kind == "none" or cfg.loss.pair == "bce",
         "model.pair_prior adds to pair logits: it needs loss.pair = bce"),
        (cfg.model.relation.layers >= 0, "model.relation.layers must be >= 0"),
        (cfg.model.relation.heads >= 1, "model.relation.heads must be >= 1"),
        (cfg.model.dim % cfg.model.relation.heads == 0,
         "model.dim must be divisible by model.relation.heads"),
        (cfg.model.dim >= 8, "model.dim must be >= 8"),
        (cfg.model.roi_size >= 1, "model.roi_size must be >= 1"),
        (cfg.model.roi_width >= 0, "model.roi_width must be >= 0 (0: square, roi_size)"),
        (cfg.model.roi_context >= 0, "model.roi_context must be >= 0 (0: the box only)"),
        (cfg.data.batch_size >= 1, "data.batch_size must be >= 1"),
        (cfg.train.epochs >= 1, "train.epochs must be >= 1"),
        (cfg.train.lr > 0, "train.lr must be > 0"),
        (0.0 <= cfg.data.hflip_prob <= 1.0, "data.hflip_prob must be in [0, 1]"),
        (0.0 <= cfg.data.scale_jitter < 1.0, "data.scale_jitter must be in [0, 1)"),
        (0.0 <= cfg.data.box_jitter < 0.5, "data.box_jitter must be in [0, 0.5)"),
        (0.0 <= cfg.data.photometric < 1.0, "data.photometric must be in [0, 1)"),
        (0.0 <= cfg.data.box_dropout < 1.0, "data.box_dropout must be in [0, 1)"),
        *_candidate_checks(cfg),
        *_crop_checks(cfg),
    ]
    for ok, message in checks:
        if not ok:
            raise DetgroupError(f"config: {message}")


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: where, and what (tabs named as such)."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if "'\\t'" in problem or "\t" in problem:
        problem = "a tab character (YAML indents with spaces only)"
    return f"YAML syntax error at {where}{problem}"


def _read_yaml(path: Path) -> DictConfig:
    """A YAML config file as a mapping; every way it can be unreadable is a DetgroupError."""
    if not path.is_file():
        raise DetgroupError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DetgroupError(f"{path}: cannot read config file ({err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise DetgroupError(f"{path}: {_yaml_problem(err)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DetgroupError(
            f"{path}: the top level of a config must be a mapping of sections (data:, model:, "
            f"...), got a {type(data).__name__}"
        )
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise DetgroupError(f"{path}: config key {bad_keys[0]!r} is not a name")
    return OmegaConf.create(data)


def _candidate_checks(cfg: Config) -> list[tuple[bool, str]]:
    pc = cfg.model.pair_candidates
    key = "model.pair_candidates"
    if pc.mode == "dense":
        return []
    return [
        (pc.gap_k >= 0 and pc.embed_k >= 0, f"{key}.gap_k and embed_k must be >= 0"),
        (pc.gap_k + pc.embed_k >= 1,
         f"{key}: gap_k + embed_k must be >= 1 (k = 0 for both leaves no candidate pair)"),
        (pc.embed_dim >= 1, f"{key}.embed_dim must be >= 1"),
        (pc.random_pairs >= 0, f"{key}.random_pairs must be >= 0"),
        (pc.embed_weight >= 0, f"{key}.embed_weight must be >= 0"),
        (pc.block >= 1, f"{key}.block must be >= 1"),
        (pc.auto_min_boxes >= 0, f"{key}.auto_min_boxes must be >= 0"),
        (cfg.loss.pair == "bce", f"{key} needs loss.pair bce (the pair head scores edges)"),
        (cfg.decoder.method != "exact",
         f"{key}: decoder.method exact decodes every pair; use gaec-kl, average or components"),
        (cfg.model.detector.backbone is None,
         f"{key}: not available with model.detector (the detecting model scores every pair)"),
    ]


def _choices(full_key: str) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal`` key of the schema (None included for an optional
    one), or None when the key has no fixed choices."""
    kind: Any = Config
    for part in full_key.split("."):
        if not (isinstance(kind, type) and dataclasses.is_dataclass(kind)):
            return None
        kind = get_type_hints(kind, globalns={**globals(), **_LITERALS}).get(part)
    if get_origin(kind) in (Union, types.UnionType):
        options = [a for a in get_args(kind) if a is not type(None)]
        if len(options) != 1 or get_origin(options[0]) is not Literal:
            return None
        return (None, *get_args(options[0]))
    return get_args(kind) if get_origin(kind) is Literal else None


def _check_choices(obj: Any, prefix: str = "") -> None:
    """Refuse a value outside its key's choices (OmegaConf 2.4 already has; 2.3 cannot)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_choices(value, f"{key}.")
            continue
        choices = _choices(key)
        if choices is not None and value not in choices:
            raise DetgroupError(_choice_problem(key, choices, value))


def _choice_problem(key: str, choices: tuple[Any, ...], value: Any) -> str:
    """``config: KEY must be one of (...), got VALUE``."""
    got = f", got {value!r}" if value is not None else ""
    named = tuple(c for c in choices if c is not None)
    if None in choices:
        allowed = f"null or one of {named}"
    else:
        allowed = " or ".join(named) if len(named) == 2 else f"one of {named}"
    return f"config: {key} must be {allowed}{got}"


def _omegaconf_problem(err: OmegaConfBaseException) -> str:
    """One line for OmegaConf's refusal: the key, and its allowed values when it has choices."""
    key = getattr(err, "full_key", None)
    first_line = str(err).splitlines()[0]
    choices = _choices(key) if key else None
    if choices is None:
        return f"config key {key!r}: {first_line}" if key else f"config: {first_line}"
    return _choice_problem(key, choices, getattr(err, "value", None))
def _crop_checks(cfg: Config) -> list[tuple[bool, str]]:
    from detgroup.model.crop_encoder import CROP_FUSIONS, MIN_CROP_SIZE

    c = cfg.model.crop
    if not c.enabled:
        return []
    return [
        (c.size >= MIN_CROP_SIZE, f"model.crop.size must be >= {MIN_CROP_SIZE} px, got {c.size}"),
        (c.width == 0 or c.width >= MIN_CROP_SIZE,
         f"model.crop.width must be 0 (square) or >= {MIN_CROP_SIZE} px, got {c.width}"),
        (c.context >= 0, f"model.crop.context must be >= 0, got {c.context}"),
        (c.channels >= 1, f"model.crop.channels must be >= 1, got {c.channels}"),
        (c.fusion in CROP_FUSIONS, f"model.crop.fusion must be one of {CROP_FUSIONS}"),
        *[(0 <= getattr(c.augment, k) <= bound,
           f"model.crop.augment.{k} must be in [0, {bound}], got {getattr(c.augment, k)}")
          for k, bound in (("rotate", 180), ("shear", 60), ("scale", 0.9), ("translate", 1.0))],
        (cfg.model.backbone.name != "none",
         "model.crop needs the image (model.backbone.name is none: images are not read)"),
        (cfg.model.detector.backbone is None, "model.crop is not available with model.detector"),
    ]


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then ``key=value`` overrides."""
    try:
        cfg = OmegaConf.structured(Config)
        if path is not None:
            path = Path(path)
            cfg = OmegaConf.merge(cfg, _read_yaml(path))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise DetgroupError(f"config override {bad[0]!r} is not of the form key=value")
            try:
                dotlist = OmegaConf.from_dotlist(list(overrides))
            except yaml.YAMLError as err:
                raise DetgroupError(f"config overrides: {_yaml_problem(err)}") from None
            cfg = OmegaConf.merge(cfg, dotlist)
        result = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        where = f"{path}: " if path is not None else ""
        raise DetgroupError(f"{where}{_omegaconf_problem(err)}") from None
    try:
        _check_choices(result)
    except DetgroupError as err:
        where = f"{path}: " if path is not None else ""
        raise DetgroupError(f"{where}{err}") from None
    assert isinstance(result, Config)
    _check(result)
    return result


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a :class:`Config` from ``config_to_dict`` output (e.g. inside a checkpoint)."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(data))
        result = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise DetgroupError(_omegaconf_problem(err)) from None
    _check_choices(result)
    assert isinstance(result, Config)
    _check(result)
    return result


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain-dict form of a config (for checkpoints and ``config.yaml``)."""
    container = OmegaConf.to_container(OmegaConf.structured(cfg))
    assert isinstance(container, dict)
    return container


def config_to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
