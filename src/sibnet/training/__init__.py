"""Training: the loop, checkpoints (safe to load), exact resume and distributed training."""

from .checkpoint import load_checkpoint, load_model_from_checkpoint, save_checkpoint
from .loop import Run, TrainState, fit, train_step, validate
from .trainer import Trainer

__all__ = ["Run", "TrainState", "Trainer", "fit", "load_checkpoint", "load_model_from_checkpoint",
           "save_checkpoint", "train_step", "validate"]
