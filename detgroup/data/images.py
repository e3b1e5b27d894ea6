"""Reading images from disk as HxWx3 uint8 RGB, whatever their channel count or bit depth."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from detgroup.errors import DetgroupError


def to_rgb_uint8(image: np.ndarray, *, source: str = "image") -> np.ndarray:
    """Convert a decoded image to ``[H, W, 3]`` uint8 RGB.

    Accepts grayscale ``[H, W]`` or ``[H, W, 1]``, RGB ``[H, W, 3]`` and RGBA ``[H, W, 4]``
    (alpha dropped), in uint8 or uint16 (scaled by 1/257). Input channel order is taken as RGB.
    """
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DetgroupError(
            f"{source}: unsupported pixel type {image.dtype} (need uint8 or uint16)"
        )
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise DetgroupError(f"{source}: unsupported image shape {tuple(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise DetgroupError(f"{source}: image has zero size {tuple(image.shape)}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as ``[H, W, 3]`` uint8 RGB; a missing or undecodable file is an error."""
    path = Path(path)
    if not path.is_file():
        raise DetgroupError(f"{path}: image file not found")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise DetgroupError(f"{path}: image file is empty")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DetgroupError(f"{path}: not a readable image (truncated or unknown format)")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return to_rgb_uint8(image, source=str(path))
