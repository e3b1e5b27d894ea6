"""``detgroup export``: the network of a checkpoint as TorchScript or ONNX.

The exported graph is :class:`SingleImageNetwork`: one image and its boxes in, class logits and
pair logits out. The partition decoder is not part of it: it stays in numpy
(:func:`detgroup.decoder.partition` / ``decode``) and reads the two outputs.

* Inputs: ``image`` float32 [1, 3, H, W] RGB in [0, 1]; ``boxes`` float32 [N, 4] xyxy pixels.
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

FORMATS = ("torchscript", "onnx")
EXPORT_FORMAT = "detgroup-export-v1"
ONNX_OPSET = 17
INPUT_NAMES = ["image", "boxes"]
OUTPUT_NAMES = ["class_logits", "pair_logits"]
_EXAMPLE_SIZE = 256  # divisible by every backbone stride, so the traced RoI scales are exact
_EXAMPLE_BOXES = 8


class SingleImageNetwork(nn.Module):
    """The exported network: :class:`GroupingModel` on one image, without batch or padding."""

    def __init__(self, model: GroupingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """
        Args:
            image: [1, 3, H, W] RGB in [0, 1].
            boxes: [N, 4] xyxy absolute pixels, N >= 1.

        Returns:
            class_logits [N, C] and pair_logits [N, N].
        """
        # A tensor read of the shape (not Python ints), so that H, W stay symbolic in a trace.
        image_sizes = torch._shape_as_tensor(image)[2:].unsqueeze(0)  # [1, 2] (H, W)
        out = self.model(image, boxes.unsqueeze(0), None, image_sizes)
        return out["pred_logits"][0], out["pred_affinity"][0]


def _example_inputs() -> tuple[Tensor, Tensor]:
    """A fixed image and boxes of varied sizes (every RoI level gets some), to trace with."""
    image = torch.full((1, 3, _EXAMPLE_SIZE, _EXAMPLE_SIZE), 0.5)
    step = torch.arange(_EXAMPLE_BOXES, dtype=torch.float32)[:, None]  # [N, 1]
    corner = step * 12
    size = 16 + step * 20
    boxes = torch.cat([corner, corner, corner + size, corner + size * 0.75], dim=1)  # [N, 4]
    return image, boxes


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


def _torchscript_bytes(network: SingleImageNetwork, metadata: str) -> bytes:
    with torch.no_grad():
        traced = torch.jit.trace(network, _example_inputs(), check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={"detgroup.json": metadata})
    return buffer.getvalue()


def _onnx_bytes(network: SingleImageNetwork, metadata: str) -> bytes:
    import onnx

    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            network, _example_inputs(), buffer, dynamo=False, opset_version=ONNX_OPSET,
            input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
            dynamic_axes={"image": {2: "height", 3: "width"}, "boxes": {0: "num_boxes"},
                          "class_logits": {0: "num_boxes"},
                          "pair_logits": {0: "num_boxes", 1: "num_boxes"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, {"detgroup": metadata})
    return proto.SerializeToString()


def _metadata(cfg: Config) -> str:
    return json.dumps({"format": EXPORT_FORMAT, "category_names": list(cfg.category_names),
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
        data = export(network, _metadata(cfg))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, data)
    except OSError as err:
        raise DetgroupError(f"{out}: cannot write the export ({err.strerror or err})") from None
    return out
