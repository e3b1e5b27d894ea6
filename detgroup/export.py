"""``detgroup export``: the network of a checkpoint as torch.export, TorchScript or ONNX.

The exported graph is :class:`SingleImageNetwork`: one image and its boxes in, class logits and
pair logits out. The partition decoder is not part of it: it stays in numpy
(:func:`detgroup.decoder.partition` / ``decode``) and reads the two outputs.

* Inputs: ``image`` float32 [1, 3, H, W] RGB in [0, 1] (a model without a backbone takes
  ``image_size`` int64 [2], (H, W), instead); ``boxes`` float32 [N, 4] xyxy pixels; a model
  with ``model.text`` also ``text_hashes`` int64 [T], ``text_offsets`` int64 [N] and
  ``text_shape`` float32 [N, S], which :func:`detgroup.ops.text.encode_texts` computes from the
  N box texts (stable crc32 hashes of character n-grams; the graph maps them to embedding
  rows); a model with ``model.attributes`` also ``attributes`` float32 [N, A]. The names and
  their order are :func:`input_names` of the model, also listed in the metadata (``inputs``).
* Outputs: ``class_logits`` [N, C]; ``pair_logits`` [N, N] (symmetric same-group logits).
* N and H, W are dynamic. N must be at least 1: with no boxes the torch.export and
  TorchScript graphs raise :data:`NO_BOXES` (the eager model's empty shortcut cannot be
  traced), so callers skip empty images. float64 boxes are cast to float32 by the TorchScript
  graph; an ExportedProgram refuses them ("Tensor dtype mismatch"), as ONNX runtimes do.
* All N² pairs are computed at once (the eager model's row chunking for large N is not traced).
* ``torch-export`` (recommended; TorchScript is deprecated): ``torch.export.export`` with
  symbolic N (1 to :data:`MAX_BOXES`), H and W (32 to 32768), saved by ``torch.export.save``;
  load with ``torch.export.load(path).module()`` (after ``import torchvision``, as below).
  Its RoI pooling is :class:`FixedScaleRoIAlign` (the same values without data-dependent
  indexing).
* ``torchscript`` and ``onnx`` are traced (``torch.jit.trace``; ONNX with the TorchScript-based
  exporter, opset :data:`ONNX_OPSET`, which needs the ``onnx`` package:
  ``pip install 'detgroup[export]'``). The TorchScript graph calls ``torchvision::roi_align``:
  ``import torchvision`` before ``torch.jit.load``, else it fails with "Unknown builtin op".
* A checkpoint trained with ``model.detector`` (``GroupingFasterRCNN``) is refused: a trace
  cannot follow its per-image number of detections.
* Metadata travels inside: JSON ``{"format", "category_names", "config"}``, as the extra file
  ``detgroup.json`` of the archive (``torch.export.load(f, extra_files=...)``,
  ``torch.jit.load(f, _extra_files=...)``) or the ``detgroup`` entry of the ONNX model's
  ``metadata_props``. The decoder settings go beside the export
  (:func:`decoder_settings_path`), for ``detgroup.partition(..., **settings)``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import LevelMapper

from detgroup.atomic import atomic_write_bytes, atomic_write_json
from detgroup.config import Config, config_to_dict
from detgroup.engine.checkpoint import load_model_from_checkpoint
from detgroup.errors import DetgroupError
from detgroup.model.detector import GroupingModel
from detgroup.model.heads import PairAffinityHead
from detgroup.ops.text import encode_texts

FORMATS = ("torch-export", "torchscript", "onnx")
EXPORT_FORMAT = "detgroup-export-v1"
ONNX_OPSET = 17
INPUT_NAMES = ["image", "boxes"]
OUTPUT_NAMES = ["class_logits", "pair_logits"]
_EXAMPLE_SIZE = 256  # divisible by every backbone stride, so the traced RoI scales are exact
_EXAMPLE_BOXES = 8
NO_BOXES = "detgroup export: no boxes (N = 0); skip images without boxes (nothing to group)"


def input_names(model: GroupingModel) -> list[str]:
    """The exported graph's inputs, in order, for ``model``."""
    names = ["image" if model.backbone is not None else "image_size", "boxes"]
    if model.uses_text:
        names += ["text_hashes", "text_offsets", "text_shape"]
    if model.reads_attributes:
        names.append("attributes")
    return names


class SingleImageNetwork(nn.Module):
    """The exported network: :class:`GroupingModel` on one image, without batch or padding.

    ``forward(image, boxes, *items)``: the inputs of :func:`input_names`.
    """

    def __init__(self, model: GroupingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor, boxes: Tensor, *items: Tensor) -> tuple[Tensor, Tensor]:
        """
        Args:
            image: [1, 3, H, W] RGB in [0, 1]; for a model without a backbone, int64 [2] (H, W).
            boxes: [N, 4] xyxy absolute pixels, N >= 1.
            items: ``text_hashes`` [T], ``text_offsets`` [N], ``text_shape`` [N, S] (a text
                model), then ``attributes`` [N, A] (a model with attributes).

        Returns:
            class_logits [N, C] and pair_logits [N, N].
        """
        if self.model.backbone is None:
            image_sizes = image.view(1, 2)  # [1, 2] (H, W)
            image = boxes.new_zeros(1, 3, 0, 0, dtype=torch.float32)
        elif torch.compiler.is_exporting():
            # torch.export keeps H, W symbolic as they are
            image_sizes = torch.tensor([[image.shape[2], image.shape[3]]], device=image.device)
        else:
            # A tensor read of the shape (not Python ints), so that H, W stay symbolic in a trace.
            image_sizes = torch._shape_as_tensor(image)[2:].unsqueeze(0)  # [1, 2] (H, W)
        if not torch.onnx.is_in_onnx_export():  # (ONNX has no such assertion)
            # a runtime check inside the exported graph: its N = 0 fails in a reshape otherwise
            torch._assert_async(boxes.new_ones(boxes.shape[0]).sum() > 0, NO_BOXES)
        boxes = boxes.to(image.dtype)  # float64 boxes (numpy's default) are cast, not refused
        extra: dict[str, Tensor] = {}
        rest = list(items)
        if self.model.uses_text:
            extra.update(text_hashes=rest[0], text_offsets=rest[1],
                         text_shape=rest[2].unsqueeze(0))
            rest = rest[3:]
        if self.model.reads_attributes:
            extra["attributes"] = rest[0].unsqueeze(0)
        out = self.model(image, boxes.unsqueeze(0), None, image_sizes, **extra)
        return out["pred_logits"][0], out["pred_affinity"][0]




class FixedScaleRoIAlign(nn.Module):
    """:class:`~torchvision.ops.MultiScaleRoIAlign` with its scales and level mapper fixed (as
    the first call sets them) and without its data-dependent indexing, so that
    ``torch.export`` keeps N symbolic: every RoI is pooled on every level and each keeps the
    level the mapper picks (RoIAlign of one RoI does not depend on the others, so the output is
    the same, at L times the pooling work)."""

    def __init__(self, pool: MultiScaleRoIAlign, scales: list[float],
                 mapper: LevelMapper | None) -> None:
        super().__init__()
        self.featmap_names = list(pool.featmap_names)
        self.output_size = tuple(pool.output_size)
        self.sampling_ratio = pool.sampling_ratio
        self.scales = list(scales)
        self.mapper = mapper

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
        """As :class:`~torchvision.ops.MultiScaleRoIAlign`: [sum N, C, out_h, out_w]."""
        feats = [v for k, v in x.items() if k in self.featmap_names]
        ids = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)], dim=0)
        rois = torch.cat([ids, torch.cat(boxes, dim=0)], dim=1)  # [R, 5]
        if len(feats) == 1:
            return roi_align(feats[0], rois, self.output_size, self.scales[0],
                             self.sampling_ratio)
        assert self.mapper is not None
        levels = self.mapper(boxes)[:, None, None, None]  # [R, 1, 1, 1]
        result = torch.zeros(())
        for level, (feat, scale) in enumerate(zip(feats, self.scales, strict=True)):
            pooled = roi_align(feat, rois, self.output_size, scale, self.sampling_ratio)
            result = pooled if level == 0 else torch.where(levels == level, pooled, result)
        return result


def _fix_roi_scales(network: SingleImageNetwork) -> SingleImageNetwork:
    """Replace every MultiScaleRoIAlign of ``network`` (in place) by a
    :class:`FixedScaleRoIAlign` with the scales that one call on the example inputs sets."""
    with torch.no_grad():
        network(*_example_inputs())
    for name, module in list(network.named_modules()):
        if isinstance(module, MultiScaleRoIAlign):
            parent = network.get_submodule(name.rpartition(".")[0])
            assert module.scales is not None
            setattr(parent, name.rpartition(".")[2],
                    FixedScaleRoIAlign(module, module.scales, module.map_levels))
    return network


_EXAMPLE_TEXTS = ["Date:", "", "TOTAL", "12/05/98", "Lorillard corporation", "a", "No.", "x-1"]


def _example_inputs(model: GroupingModel | None = None) -> tuple[Tensor, ...]:
    """A fixed image and boxes of varied sizes (every RoI level gets some), to trace with;
    plus example texts and attributes when ``model`` reads them."""
    image = torch.full((1, 3, _EXAMPLE_SIZE, _EXAMPLE_SIZE), 0.5)
    step = torch.arange(_EXAMPLE_BOXES, dtype=torch.float32)[:, None]  # [N, 1]
    corner = step * 12
    size = 16 + step * 20
    boxes = torch.cat([corner, corner, corner + size, corner + size * 0.75], dim=1)  # [N, 4]
    if model is None:
        return image, boxes
    inputs: list[Tensor] = [
        image if model.backbone is not None else torch.tensor([_EXAMPLE_SIZE] * 2), boxes]
    if model.uses_text:
        encoded = encode_texts(_EXAMPLE_TEXTS[:_EXAMPLE_BOXES])
        inputs += [torch.from_numpy(encoded[k])
                   for k in ("text_hashes", "text_offsets", "text_shape")]
    if model.reads_attributes:
        count = model.attribute_encoder.mlp[0].in_features
        inputs.append(torch.linspace(-1, 1, _EXAMPLE_BOXES * count).view(_EXAMPLE_BOXES, count))
    return tuple(inputs)


def _traceable(model: GroupingModel) -> SingleImageNetwork:
    """Wrap ``model`` (changed in place: eval, CPU) so that one trace holds for every N."""
    model = model.eval().cpu()
    if isinstance(model.pair_head, PairAffinityHead):
        # A trace keeps one branch of the chunking test: keep the all-pairs one for any N.
        model.pair_head.chunk = max(model.pair_head.chunk, _EXAMPLE_BOXES)
    if model.candidates is not None:
        # the exported contract is dense pair logits [N, N]: export the every-pair path
        model.candidates.mode = "dense"
    return SingleImageNetwork(model).eval()


MAX_BOXES = 1 << 20  # the largest N an ExportedProgram accepts (its N is symbolic below it)


def _exported_program_bytes(network: SingleImageNetwork, metadata: str) -> bytes:
    from torch.export import Dim

    if isinstance(network.model.pair_head, PairAffinityHead):
        network.model.pair_head.chunk = MAX_BOXES  # the all-pairs branch for every N
    network = _fix_roi_scales(network)
    # H, W >= 32: the coarsest backbone map must keep a pixel
    dims = {"image": {2: Dim("height", min=32, max=1 << 15), 3: Dim("width", min=32,
                                                                     max=1 << 15)},
            "boxes": {0: Dim("num_boxes", min=1, max=MAX_BOXES)}}
    with torch.no_grad():
        program = torch.export.export(network, _example_inputs(), dynamic_shapes=dims,
                                      strict=False)
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={"detgroup.json": metadata})
    return buffer.getvalue()


def _has_item_inputs(model: GroupingModel) -> bool:
    """True when the exported graph takes more than (image, boxes)."""
    return model.backbone is None or model.uses_text or model.reads_attributes


class _CheckedNetwork(nn.Module):
    """A scripted guard around the traced network: a trace drops the N = 0 assertion."""

    def __init__(self, traced: nn.Module) -> None:
        super().__init__()
        self.network = traced

    def forward(self, image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        if boxes.dim() != 2 or boxes.size(1) != 4:
            raise RuntimeError("detgroup export: boxes must be [N, 4] xyxy pixels")
        if boxes.size(0) == 0:
            # the text of NO_BOXES (TorchScript reads no module constants)
            raise RuntimeError("detgroup export: no boxes (N = 0); skip images without boxes "
                               "(nothing to group)")
        return self.network(image, boxes)


def _torchscript_bytes(network: SingleImageNetwork, metadata: str) -> bytes:
    with torch.no_grad():
        traced = torch.jit.trace(network, _example_inputs(network.model), check_trace=False)
    # the guard's signature is (image, boxes): a model with item inputs keeps the bare trace
    scripted = traced if _has_item_inputs(network.model) else torch.jit.script(
        _CheckedNetwork(traced))
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer, _extra_files={"detgroup.json": metadata})
    return buffer.getvalue()


def _onnx_bytes(network: SingleImageNetwork, metadata: str) -> bytes:
    import onnx

    buffer = io.BytesIO()
    names = input_names(network.model)
    dynamic = {"image": {2: "height", 3: "width"}, "boxes": {0: "num_boxes"},
               "text_hashes": {0: "num_hashes"}, "text_offsets": {0: "num_boxes"},
               "text_shape": {0: "num_boxes"}, "attributes": {0: "num_boxes"},
               "class_logits": {0: "num_boxes"},
               "pair_logits": {0: "num_boxes", 1: "num_boxes"}}
    with torch.no_grad():
        torch.onnx.export(
            network, _example_inputs(network.model), buffer, dynamo=False,
            opset_version=ONNX_OPSET, input_names=names, output_names=OUTPUT_NAMES,
            dynamic_axes={k: v for k, v in dynamic.items() if k in names + OUTPUT_NAMES},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, {"detgroup": metadata})
    return proto.SerializeToString()


def _metadata(cfg: Config, model: GroupingModel) -> str:
    return json.dumps({"format": EXPORT_FORMAT, "category_names": list(cfg.category_names),
                       "inputs": input_names(model),
                       "attribute_names": list(cfg.attribute_names),
                       "config": config_to_dict(cfg)})


def decoder_settings_path(out: str | Path) -> Path:
    """Where :func:`export_model` writes the decoder settings of the export ``out``:
    ``<out without suffix>.decoder.json`` beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}.decoder.json")


def decoder_settings(cfg: Config) -> dict[str, Any]:
    """The decoder settings of ``cfg`` as keyword arguments of
    :func:`detgroup.decoder.partition` (what ``Grouper`` decodes with by default)."""
    d = cfg.decoder
    return {"method": d.method, "consistency": d.consistency, "pair_bias": float(d.pair_bias),
            "neighbors": int(d.neighbors)}


def export_model(checkpoint: str | Path, fmt: str, out: str | Path) -> Path:
    """Export the network of ``checkpoint`` to ``out`` (written atomically) as ``fmt``.

    ``fmt`` is ``torch-export`` (an ExportedProgram, ``.pt2``), ``torchscript`` or ``onnx``.
    The decoder settings (``method``, ``consistency``, ``pair_bias``, ``neighbors``) are
    written beside it to :func:`decoder_settings_path`, as JSON that
    ``partition(pair_logits, class_logits, boxes=boxes, **settings)`` takes. Returns ``out``.
    A bad format, an unreadable checkpoint, a missing ``onnx`` package or an unwritable
    ``out`` is a DetgroupError.
    """
    out = Path(out)
    if fmt not in FORMATS:
        raise DetgroupError(f"unknown export format {fmt!r}; choose one of {list(FORMATS)}")
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
        raise DetgroupError("ONNX export needs the onnx package: pip install 'detgroup[export]'")
    if out.is_dir():
        raise DetgroupError(f"{out}: is a folder; give the file to write")
    model, cfg = load_model_from_checkpoint(checkpoint)
    if not isinstance(model, GroupingModel):
        # A trace of GroupingFasterRCNN would freeze the number of detections and the Python
        # control flow of torchvision's post-processing (score threshold, NMS, padding).
        raise DetgroupError(
            f"{checkpoint}: a model that detects (model.detector) cannot be exported yet: its "
            "detections vary in number per image, which a trace cannot follow; export needs a "
            "checkpoint trained on given boxes"
        )
    network = _traceable(model)
    with warnings.catch_warnings():
        # Tracing warns about every Python-level shape read (torchvision's RoI scale set-up,
        # our empty-input shortcuts) and that jit and the TorchScript-based ONNX exporter are
        # deprecated; the export tests check the traced graphs on other N and image sizes.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        if fmt == "torch-export" and _has_item_inputs(network.model):
            raise DetgroupError(
                f"{checkpoint}: torch-export of a model with texts, attributes or no backbone is "
                "not supported yet; use --format torchscript or onnx"
            )
        export = {"torch-export": _exported_program_bytes, "torchscript": _torchscript_bytes,
                  "onnx": _onnx_bytes}[fmt]
        data = export(network, _metadata(cfg, network.model))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, data)
        atomic_write_json(decoder_settings_path(out), decoder_settings(cfg), indent=1)
    except OSError as err:
        raise DetgroupError(f"{out}: cannot write the export ({err.strerror or err})") from None
    return out
