"""Training: objectives, the trainer, checkpoints."""

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .hybrid import hybrid_loss, hybrid_objective
from .losses import (
    TIME_SAMPLINGS,
    WEIGHTINGS,
    classifier_loss,
    dsm_loss,
    sample_times,
    times_from_uniform,
)
from .objectives import (
    annealed_vae_loss,
    classifier_training,
    density_loss,
    latent_score_matching,
    score_matching,
)
from .sliced import PROJECTIONS, sliced_score_matching, sliced_score_matching_loss, ssm_loss
from .trainer import (
    Player,
    StepRandom,
    Trainer,
    adversarial_loss,
    held_out_loss,
    init_distributed,
    leave_distributed,
)
from .vlb import VLB_VARIANCES, VLBTerms, vlb_loss, vlb_objective, vlb_terms

__all__ = [
    "dsm_loss",
    "classifier_loss",
    "classifier_training",
    "sample_times",
    "times_from_uniform",
    "WEIGHTINGS",
    "score_matching",
    "density_loss",
    "annealed_vae_loss",
    "latent_score_matching",
    "Trainer",
    "Player",
    "adversarial_loss",
    "held_out_loss",
    "StepRandom",
    "init_distributed",
    "leave_distributed",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "TIME_SAMPLINGS",
    "VLB_VARIANCES",
    "VLBTerms",
    "vlb_terms",
    "vlb_loss",
    "vlb_objective",
    "hybrid_loss",
    "hybrid_objective",
    "sliced_score_matching",
    "sliced_score_matching_loss",
    "ssm_loss",
    "PROJECTIONS",
]
