"""``detgroup export``: the network of a checkpoint as TorchScript or ONNX.

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
* N and H, W are dynamic. N must be at least 1: with no boxes the exported graph raises an
  error (the eager model's empty shortcut cannot be traced), so callers skip empty images.
* All N² pairs are computed at once (the eager model's row chunking for large N is not traced).
* Both formats are traced (``torch.jit.trace``; ONNX with the TorchScript-based exporter,
  opset :data:`ONNX_OPSET`, which needs the ``onnx`` package: ``pip install 'detgroup[export]'``).
* Metadata travels inside: JSON ``{"format", "category_names", "config"}``, as the extra file
  ``detgroup.json`` of the TorchScript archive (``torch.jit.load(f, _extra_files=...)``) or the
  ``detgroup`` entry of the ONNX model's ``metadata_props``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from detgroup.atomic import atomic_write_bytes
from detgroup.config import Config, config_to_dict
from detgroup.engine.checkpoint import load_model_from_checkpoint
from detgroup.errors import DetgroupError
from detgroup.model.detector import GroupingModel
from detgroup.model.heads import PairAffinityHead
from detgroup.ops.text import encode_texts

FORMATS = ("torchscript", "onnx")
EXPORT_FORMAT = "detgroup-export-v1"
ONNX_OPSET = 17
INPUT_NAMES = ["image", "boxes"]
OUTPUT_NAMES = ["class_logits", "pair_logits"]
_EXAMPLE_SIZE = 256  # divisible by every backbone stride, so the traced RoI scales are exact
_EXAMPLE_BOXES = 8


def input_names(model: GroupingModel) -> list[str]:
    """The exported graph's inputs, in order, for ``model``."""
    names = ["image" if model.backbone is not None else "image_size", "boxes"]
    if model.uses_text:
        names += ["text_hashes", "text_offsets", "text_shape"]
    if model.uses_attributes:
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
            image = boxes.new_zeros(1, 3, 0, 0)
        else:
            # A tensor read of the shape (not Python ints), so that H, W stay symbolic in a trace.
            image_sizes = torch._shape_as_tensor(image)[2:].unsqueeze(0)  # [1, 2] (H, W)
        extra: dict[str, Tensor] = {}
        rest = list(items)
        if self.model.uses_text:
            extra.update(text_hashes=rest[0], text_offsets=rest[1],
                         text_shape=rest[2].unsqueeze(0))
            rest = rest[3:]
        if self.model.uses_attributes:
            extra["attributes"] = rest[0].unsqueeze(0)
        out = self.model(image, boxes.unsqueeze(0), None, image_sizes, **extra)
        return out["pred_logits"][0], out["pred_affinity"][0]


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
    if model.uses_attributes:
        count = model.attribute_encoder.mlp[0].in_features
        inputs.append(torch.linspace(-1, 1, _EXAMPLE_BOXES * count).view(_EXAMPLE_BOXES, count))
    return tuple(inputs)


def _traceable(model: GroupingModel) -> SingleImageNetwork:
    """Wrap ``model`` (changed in place: eval, CPU) so that one trace holds for every N."""
    model = model.eval().cpu()
    if isinstance(model.pair_head, PairAffinityHead):
        # A trace keeps one branch of the chunking test: keep the all-pairs one for any N.
        model.pair_head.chunk = max(model.pair_head.chunk, _EXAMPLE_BOXES)
    return SingleImageNetwork(model).eval()


def _torchscript_bytes(network: SingleImageNetwork, metadata: str) -> bytes:
    with torch.no_grad():
        traced = torch.jit.trace(network, _example_inputs(network.model), check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={"detgroup.json": metadata})
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


def export_model(checkpoint: str | Path, fmt: str, out: str | Path) -> Path:
    """Export the network of ``checkpoint`` to ``out`` (written atomically) as ``fmt``.

    ``fmt`` is ``torchscript`` or ``onnx``. Returns ``out``. A bad format, an unreadable
    checkpoint, a missing ``onnx`` package or an unwritable ``out`` is a DetgroupError.
    """
    out = Path(out)
    if fmt not in FORMATS:
        raise DetgroupError(f"unknown export format {fmt!r}; choose one of {list(FORMATS)}")
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
        raise DetgroupError("ONNX export needs the onnx package: pip install 'detgroup[export]'")
    if out.is_dir():
        raise DetgroupError(f"{out}: is a folder; give the file to write")
    model, cfg = load_model_from_checkpoint(checkpoint)
    network = _traceable(model)
    with warnings.catch_warnings():
        # Tracing warns about every Python-level shape read (torchvision's RoI scale set-up,
        # our empty-input shortcuts) and that jit and the TorchScript-based ONNX exporter are
        # deprecated; the export tests check the traced graphs on other N and image sizes.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        export = _torchscript_bytes if fmt == "torchscript" else _onnx_bytes
        data = export(network, _metadata(cfg, network.model))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, data)
    except OSError as err:
        raise DetgroupError(f"{out}: cannot write the export ({err.strerror or err})") from None
    return out
