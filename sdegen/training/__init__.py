"""Training objectives (and, later, the trainer)."""

from .losses import WEIGHTINGS, dsm_loss, sample_times

__all__ = ["dsm_loss", "sample_times", "WEIGHTINGS"]
