"""Validation of numeric numpy inputs shared by the decoder and the numpy box geometry."""

from __future__ import annotations

import numpy as np

from detgroup.errors import DetgroupError


def as_float_array(x: object, name: str) -> np.ndarray:
    try:
        return np.array(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DetgroupError(f"{name} must be a numeric array: {exc}") from exc


def require_finite(x: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DetgroupError(
            f"{name} must be finite; {int(bad.sum())} entries are NaN or inf, first at "
            f"{list(where)} = {x[where]}"
        )
