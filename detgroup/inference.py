"""The Python API: ``Grouper.from_checkpoint(path).predict(image, boxes)``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detgroup.checkpoint import load_checkpoint, model_from_checkpoint_state
from detgroup.config import Config, PairPriorConfig, parse_pair_prior, reads_attributes
from detgroup.data.dataset import collate_groups, model_inputs
from detgroup.data.images import read_image_rgb, to_rgb_uint8
from detgroup.device import resolve_device
from detgroup.errors import DetgroupError
from detgroup.model.detector import GroupingModel
from detgroup.model.grouping_rcnn import GroupingFasterRCNN
from detgroup.model.postprocess import AGNOSTIC_CATEGORY, PostProcess, Prediction
from detgroup.ops.boxes import check_boxes

__all__ = ["GroupResult", "Grouper", "check_boxes"]

GroupResult = Prediction  # the API's name for the one prediction type



class Grouper:
    """A trained model plus its decoder, ready for images and boxes."""

    def __init__(
        self,
        model: GroupingModel | GroupingFasterRCNN,
        cfg: Config,
        *,
        device: str | torch.device = "cpu",
        method: str | None = None,
        consistency: str | None = None,
        neighbors: int | None = None,
        pair_bias: float | None = None,
        clip: bool = False,
        ignore_categories: bool = False,
        pair_bias_search: str | None = None,
        prior_weight_grid: Sequence[float] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.clip = clip  # clip boxes that leave the image (else they are an error)
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        # group by the pair logits alone, every box of the one category AGNOSTIC_CATEGORY
        self.ignore_categories = ignore_categories
        self.postprocess = PostProcess.from_config(cfg.decoder, method=method,
                                                   consistency=consistency, neighbors=neighbors,
                                                   pair_bias=pair_bias,
                                                   category_names=self.category_names,
                                                   ignore_categories=ignore_categories,
                                                   pair_bias_search=pair_bias_search,
                                                   prior_weight_grid=prior_weight_grid)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, device: str = "cpu", method: str | None = None,
        consistency: str | None = None, neighbors: int | None = None,
        pair_bias: float | None = None, clip: bool = False,
        pair_prior: PairPriorConfig | str | None = None,
        attribute_names: list[str] | None = None, state: dict[str, Any] | None = None,
        ignore_categories: bool = False, pair_bias_search: str | None = None,
        prior_weight_grid: Sequence[float] | None = None,
    ) -> Grouper:
        """Load a checkpoint written by ``detgroup train`` (the config travels inside).

        ``device``: ``cpu``, ``cuda`` or ``cuda:K``; the decoder settings default to the
        checkpoint's ``decoder`` section; ``clip``: clip boxes that leave their image instead of
        refusing them (:func:`check_boxes`). ``pair_prior`` (a :class:`PairPriorConfig` or a
        spec such as ``"attribute_cosine:16:0.65"``, :func:`detgroup.config.parse_pair_prior`)
        replaces the checkpoint's ``model.pair_prior``; ``attribute_names`` names the
        attribute vectors such a prior reads when the checkpoint itself reads none. ``state``:
        the checkpoint already read by :func:`detgroup.checkpoint.load_checkpoint` (not read
        again). ``ignore_categories``: group by the pair logits alone, every box of the one
        category ``"object"`` (boxes of classes the model never learnt, e.g. new alphabets).
        ``pair_bias_search``: replaces the checkpoint's ``decoder.pair_bias_search``, and
        ``prior_weight_grid`` its ``decoder.prior_weight_grid`` (the weights of the pair prior
        searched with the shift, e.g. ``[0, 2, 4, 8, 16]`` with ``pair_prior=
        "attribute_cosine:0"``).
        """
        torch_device = resolve_device(device)
        if isinstance(pair_prior, str):
            pair_prior = parse_pair_prior(pair_prior)
        model, cfg = model_from_checkpoint_state(
            load_checkpoint(path) if state is None else state, path, pair_prior=pair_prior,
            attribute_names=attribute_names)
        return cls(model, cfg, device=torch_device, method=method, consistency=consistency,
                   neighbors=neighbors, pair_bias=pair_bias, clip=clip,
                   ignore_categories=ignore_categories, pair_bias_search=pair_bias_search,
                   prior_weight_grid=prior_weight_grid)

    @property
    def decoder_settings(self) -> dict[str, Any]:
        """The decoder's settings as keyword arguments of :func:`detgroup.decoder.partition`
        (``method``, ``consistency``, ``pair_bias``, ``neighbors``)."""
        return self.postprocess.settings()

    @property
    def category_names(self) -> list[str]:
        """The names of the predicted categories: the checkpoint's, or ``["object"]`` with
        ``ignore_categories``."""
        if self.ignore_categories:
            return [AGNOSTIC_CATEGORY]
        return list(self.cfg.category_names)

    @property
    def detects(self) -> bool:
        """True when the model finds the boxes itself (``model.detector``): boxes optional."""
        return isinstance(self.model, GroupingFasterRCNN)

    @property
    def needs_image(self) -> bool:
        """False for a model without a backbone (``model.backbone.name: none``)."""
        return self.cfg.model.backbone.name != "none"

    @property
    def uses_text(self) -> bool:
        return self.cfg.model.text.enabled

    @property
    def attribute_names(self) -> list[str]:
        """Names of the attribute vector the model reads ([] when it reads none)."""
        return list(self.cfg.attribute_names) if reads_attributes(self.cfg) else []

    def _item(self, image: str | Path | np.ndarray | None, boxes: Any, index: int,
              texts: Any = None, attributes: Any = None,
              image_size: tuple[int, int] | None = None) -> dict[str, Any]:
        tensor = None
        if image is None:
            source = f"image {index}"
            if self.needs_image:
                raise DetgroupError(f"{source}: this model reads pixels; give an image (only a "
                                    "model with model.backbone.name none takes image=None)")
            if image_size is None:
                arr = check_boxes(boxes, 1 << 30, 1 << 30, source=source)
                # no frame given: the boxes' own extent (training used the image's size)
                h = int(np.ceil(arr[:, 3].max())) if len(arr) else 1
                w = int(np.ceil(arr[:, 2].max())) if len(arr) else 1
            else:
                h, w = int(image_size[0]), int(image_size[1])
        else:
            if isinstance(image, (str, Path)):
                pixels = read_image_rgb(image) if self.needs_image or image_size is None else None
                source = str(image)
            else:
                source = f"image {index}"
                pixels = to_rgb_uint8(np.asarray(image), source=source)
            if pixels is not None:
                h, w = pixels.shape[:2]
                if self.needs_image:
                    tensor = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0
            else:
                h, w = int(image_size[0]), int(image_size[1])  # type: ignore[index]
        arr = (np.zeros((0, 4), dtype=np.float32) if boxes is None
               else check_boxes(boxes, h, w, source=source, clip=self.clip))
        n = len(arr)
        return {"image": tensor, "image_size": (h, w), "boxes": torch.from_numpy(arr),
                "categories": torch.zeros(n, dtype=torch.long),
                "groups": torch.zeros(n, dtype=torch.long), "image_id": index,
                "texts": self._texts(texts, n, source),
                "attributes": self._attributes(attributes, n, source)}

    def _texts(self, texts: Any, n: int, source: str) -> list[str]:
        if texts is None:
            if self.uses_text and n:
                raise DetgroupError(
                    f"{source}: this model was trained with box texts (model.text); give texts "
                    "(one string per box, \"\" where a box has none)"
                )
            return [""] * n
        texts = list(texts)
        if len(texts) != n:
            raise DetgroupError(f"{source}: {len(texts)} texts for {n} boxes")
        bad = [i for i, t in enumerate(texts) if t is not None and not isinstance(t, str)]
        if bad:
            raise DetgroupError(f"{source}: text of box {bad[0]} is not a string: "
                                f"{texts[bad[0]]!r}")
        return ["" if t is None else t for t in texts]

    def _attributes(self, attributes: Any, n: int, source: str) -> np.ndarray:
        names = self.attribute_names
        if attributes is None:
            if names and n:
                raise DetgroupError(f"{source}: this model reads box attributes {names}; give "
                                    f"attributes [N, {len(names)}]")
            return np.zeros((n, len(names)), dtype=np.float32)
        try:
            arr = np.asarray(attributes, dtype=np.float32)
        except (TypeError, ValueError):
            raise DetgroupError(f"{source}: attributes must be numbers in an [N, A] array") \
                from None
        if n == 0 and arr.size == 0:
            return np.zeros((0, len(names)), dtype=np.float32)
        if arr.ndim != 2 or arr.shape != (n, len(names)):
            raise DetgroupError(f"{source}: attributes must have shape [{n}, {len(names)}] "
                                f"({names}), got {list(arr.shape)}")
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        if bad.size:
            raise DetgroupError(f"{source}: attributes of box {bad[0]} are not finite "
                                f"{arr[bad[0]].tolist()}")
        return arr

    @torch.no_grad()
    def predict(self, image: str | Path | np.ndarray | None, boxes: Any = None, texts: Any = None,
                attributes: Any = None, *, image_size: tuple[int, int] | None = None
                ) -> Prediction:
        """Group ``boxes`` [N, 4] (xyxy pixels) of ``image`` (a path or HxWx3 uint8 RGB).

        ``boxes=None``: the model detects the boxes itself (a checkpoint trained with
        ``model.detector``), classifies and groups them.
        ``texts``: N strings (``""`` or None for a box without text), required by a model
        trained with ``model.text`` (a clear error otherwise; pass ``[""] * N`` to run it
        without text deliberately). ``attributes``: [N, A] numbers in the order of
        :attr:`attribute_names`, required by a model with ``model.attributes``. ``image`` may
        be None for a model without a backbone; the boxes are then normalised by
        ``image_size`` (H, W), the frame the training data declared (default: the boxes'
        extent).
        """
        return self.predict_batch([image], None if boxes is None else [boxes],
                                  texts=None if texts is None else [texts],
                                  attributes=None if attributes is None else [attributes],
                                  image_sizes=None if image_size is None else [image_size])[0]

    @torch.no_grad()
    def predict_batch(
        self, images: list[str | Path | np.ndarray | None], boxes: list[Any] | None = None, *,
        batch_size: int = 8, texts: list[Any] | None = None,
        attributes: list[Any] | None = None,
        image_sizes: list[tuple[int, int] | None] | None = None,
    ) -> list[Prediction]:
        """:meth:`predict` for many images, run ``batch_size`` at a time (``boxes=None``: the
        model detects them)."""
        if boxes is None and not self.detects:
            raise DetgroupError("this model groups given boxes (it was trained without "
                                "model.detector): give the boxes")
        if boxes is not None and len(images) != len(boxes):
            raise DetgroupError(f"got {len(images)} images but {len(boxes)} box arrays")
        for name, extra in (("texts", texts), ("attributes", attributes),
                            ("image sizes", image_sizes)):
            if extra is not None and len(extra) != len(images):
                raise DetgroupError(f"got {len(images)} images but {len(extra)} {name} lists")
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            items = [self._item(images[i], None if boxes is None else boxes[i], i,
                                None if texts is None else texts[i],
                                None if attributes is None else attributes[i],
                                None if image_sizes is None else image_sizes[i])
                     for i in range(start, min(start + batch_size, len(images)))]
            batch = collate_groups(items)
            dev = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            if boxes is None:
                out = self.model(dev["images"], image_sizes=dev["image_sizes"])
                preds = self.postprocess(out, out["pred_boxes"], batch["image_ids"])
                det_scores = (~out["pad_mask"]).cpu().numpy(), out["pred_scores"].cpu().numpy()
                for pred, real, scores in zip(preds, *det_scores, strict=True):
                    pred.detection_scores = scores[real]
                    pred.scores = pred.scores * pred.detection_scores
                    results.append(pred)
                continue
            out = self.model(**model_inputs(dev))
            results.extend(self.postprocess(out, dev["boxes"], batch["image_ids"]))
        return results
