"""``add_grouping_config``: the ``MODEL.GROUPING`` node of a detectron2 config.

Every field maps onto a field of detgroup's own schema (:mod:`detgroup.config`), and
:func:`grouping_config` turns the node into a :class:`detgroup.config.Config`, so that the
modules are built by detgroup's own factories (``build_relation``, ``build_pair_head``,
``build_criterion``) and checked by detgroup's own validation.
"""

from __future__ import annotations

from typing import Any

from detectron2.config import CfgNode

from detgroup.config import Config, config_from_dict
from detgroup.errors import DetgroupError


def add_grouping_config(cfg: CfgNode) -> CfgNode:
    """Add ``MODEL.GROUPING`` (defaults that work) to a detectron2 config, in place.

    Fields (detgroup's schema in brackets):

    * ``DIM`` [model.dim], ``RELATION_LAYERS`` / ``RELATION_HEADS`` / ``RELATION_FFN_MULT`` /
      ``RELATION_DROPOUT`` [model.relation.*], ``ROI_CONTEXT`` [model.roi_context]: the
      relational transformer over the RoI tokens of one image;
    * ``PAIR_LOSS`` (bce | kcl | mcl | ae) [loss.pair], ``PAIR_BALANCE`` [loss.pair_balance],
      ``PAIR_HIDDEN`` [model.pair_hidden], ``NUM_CLUSTERS``, ``EMBED_DIM``, ``KCL_MARGIN``,
      ``AE_MARGIN``: the pair head and its loss;
    * ``CLS_WEIGHT`` / ``PAIR_WEIGHT`` [loss.cls_weight / loss.pair_weight]: the weights of
      ``loss_group_cls`` and ``loss_group_pair`` in detectron2's summed loss;
    * ``DECODER_METHOD`` / ``CONSISTENCY`` / ``PAIR_BIAS`` / ``NEIGHBORS`` [decoder.*]: the
      partition decoder;
    * ``TRAIN_ON_GT``: in training the heads also see each image's truth boxes (so that they
      see whole scenes, as at inference), besides up to ``PROPOSAL_TOKENS`` of the sampled
      foreground proposals per image (each labelled with its matched truth box's category
      and group); background proposals are never tokens;
    * ``AGNOSTIC_NMS_IOU``: at inference, detections of different categories on one object
      (box IoU above it) are merged into the higher-scored one before grouping; 1.0 keeps all.

    Also ``MODEL.MOBILENET_FPN.RETURNED_LAYERS`` (``build_mobilenet_v3_fpn_backbone``'s FPN
    stages; see :mod:`detgroup.integrations.detectron2.backbone`).
    """
    d = Config()  # detgroup's own defaults, so that the two cannot drift apart
    g = CfgNode()
    g.DIM = d.model.dim
    g.RELATION_LAYERS = d.model.relation.layers
    g.RELATION_HEADS = d.model.relation.heads
    g.RELATION_FFN_MULT = d.model.relation.ffn_mult
    g.RELATION_DROPOUT = d.model.relation.dropout
    g.ROI_CONTEXT = d.model.roi_context
    g.PAIR_LOSS = d.loss.pair
    g.PAIR_BALANCE = d.loss.pair_balance
    g.PAIR_HIDDEN = d.model.pair_hidden
    g.NUM_CLUSTERS = d.model.num_clusters
    g.EMBED_DIM = d.model.embed_dim
    g.KCL_MARGIN = d.loss.kcl_margin
    g.AE_MARGIN = d.loss.ae_margin
    g.CLS_WEIGHT = d.loss.cls_weight
    g.PAIR_WEIGHT = d.loss.pair_weight
    g.DECODER_METHOD = d.decoder.method
    g.CONSISTENCY = d.decoder.consistency
    g.PAIR_BIAS = d.decoder.pair_bias
    g.NEIGHBORS = d.decoder.neighbors
    g.TRAIN_ON_GT = True
    g.PROPOSAL_TOKENS = 32
    g.AGNOSTIC_NMS_IOU = 0.7
    cfg.MODEL.GROUPING = g
    # build_mobilenet_v3_fpn_backbone's FPN stages (torchvision's stage indices, as
    # model.detector.returned_layers); empty: torchvision's, the last two (both stride 32)
    m = CfgNode()
    m.RETURNED_LAYERS = []
    cfg.MODEL.MOBILENET_FPN = m
    return cfg


def grouping_config(cfg: CfgNode) -> Config:
    """The :class:`detgroup.config.Config` that ``cfg.MODEL.GROUPING`` stands for.

    Raises:
        DetgroupError: ``add_grouping_config`` was not called, or a value is out of range
            (the message names the ``MODEL.GROUPING`` key's detgroup counterpart).
    """
    if "GROUPING" not in cfg.MODEL:
        raise DetgroupError("cfg.MODEL.GROUPING is missing: call "
                            "detgroup.integrations.detectron2.add_grouping_config(cfg) first")
    g = cfg.MODEL.GROUPING
    data: dict[str, Any] = {
        "model": {
            "dim": g.DIM,
            "relation": {"layers": g.RELATION_LAYERS, "heads": g.RELATION_HEADS,
                         "ffn_mult": g.RELATION_FFN_MULT, "dropout": g.RELATION_DROPOUT},
            "roi_context": g.ROI_CONTEXT,
            "pair_hidden": g.PAIR_HIDDEN,
            "num_clusters": g.NUM_CLUSTERS,
            "embed_dim": g.EMBED_DIM,
        },
        "loss": {"pair": g.PAIR_LOSS, "pair_balance": g.PAIR_BALANCE,
                 "cls_weight": g.CLS_WEIGHT, "pair_weight": g.PAIR_WEIGHT,
                 "kcl_margin": g.KCL_MARGIN, "ae_margin": g.AE_MARGIN},
        "decoder": {"method": g.DECODER_METHOD, "consistency": g.CONSISTENCY,
                    "pair_bias": g.PAIR_BIAS, "neighbors": g.NEIGHBORS},
    }
    try:
        return config_from_dict(data)
    except DetgroupError as err:
        raise DetgroupError(f"cfg.MODEL.GROUPING: {err}") from None
