"""Normalizing flows: RealNVP / Glow invertible layers and exact-likelihood flow models."""

from .layers import (
    ActNorm,
    AffineCoupling,
    InvConv1x1,
    Invert,
    Squeeze,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
)
from .realnvp import RealNVP, RealNVPImage, coupling_convnet, coupling_mlp

__all__ = [
    "RealNVP",
    "RealNVPImage",
    "AffineCoupling",
    "Squeeze",
    "Invert",
    "ActNorm",
    "InvConv1x1",
    "alternating_mask",
    "checkerboard_mask",
    "channel_mask",
    "coupling_mlp",
    "coupling_convnet",
]
