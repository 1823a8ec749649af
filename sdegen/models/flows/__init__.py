"""Normalizing flows: RealNVP / Glow layers and models (exact), and FFJORD (continuous, ODE)."""

from .ffjord import FFJORD, ConcatSquashLinear, FFJORDStats, ODENet
from .layers import (
    ActNorm,
    AffineCoupling,
    Chain,
    FactorOut,
    InvConv1x1,
    Invert,
    Squeeze,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
)
from .realnvp import RealNVP, RealNVPImage, coupling_convnet, coupling_mlp

__all__ = [
    "FFJORD",
    "FFJORDStats",
    "ConcatSquashLinear",
    "ODENet",
    "RealNVP",
    "RealNVPImage",
    "AffineCoupling",
    "Squeeze",
    "Chain",
    "FactorOut",
    "Invert",
    "ActNorm",
    "InvConv1x1",
    "alternating_mask",
    "checkerboard_mask",
    "channel_mask",
    "coupling_mlp",
    "coupling_convnet",
]
