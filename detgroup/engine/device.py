"""Moved to :mod:`detgroup.device` (the API resolves devices without the training engine)."""

from detgroup.device import DEVICE_HELP, resolve_device

__all__ = ["DEVICE_HELP", "resolve_device"]
