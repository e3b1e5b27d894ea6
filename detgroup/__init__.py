"""detgroup: supervised grouping of detected objects.

Public API::

    from detgroup import Grouper, partition
    grouper = Grouper.from_checkpoint("runs/demo/model.pt")
    result = grouper.predict(image, boxes)
    categories, groups = partition(pair_logits, class_logits, method="gaec-kl")

Names are imported lazily so that ``detgroup.decoder`` and ``detgroup.metrics`` stay usable
without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = [
    "DetgroupError",
    "GroupResult",
    "Grouper",
    "Prediction",
    "decode",
    "decode_sparse",
    "neighbor_edges",
    "partition",
    "partition_sparse",
    "__version__",
]

_WHERE = {
    "DetgroupError": "detgroup.errors",
    "GroupResult": "detgroup.inference",
    "Grouper": "detgroup.inference",
    "Prediction": "detgroup.model.postprocess",
    "decode": "detgroup.decoder",
    "decode_sparse": "detgroup.decoder",
    "neighbor_edges": "detgroup.decoder",
    "partition": "detgroup.decoder",
    "partition_sparse": "detgroup.decoder",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'detgroup' has no attribute {name!r}")
