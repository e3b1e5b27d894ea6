"""Moved to :mod:`detgroup.checkpoint` (the API reads checkpoints without the training engine)."""

from detgroup.checkpoint import (
    FORMAT,
    checkpoint_config,
    load_checkpoint,
    load_model_from_checkpoint,
    load_model_weights,
    save_checkpoint,
)

__all__ = ["FORMAT", "checkpoint_config", "load_checkpoint", "load_model_from_checkpoint",
           "load_model_weights", "save_checkpoint"]
