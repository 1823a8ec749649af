"""Data: seeded 2-D toy densities, uniform dequantization, and image data sets in [-1, 1].

Nothing is downloaded: toy data are generated, digits ship with scikit-learn, and MNIST /
CIFAR-10 are read from local files.
"""

from .images import ImageData, load_cifar10, load_digits, load_mnist
from .quantize import bin_width, dequantize, to_centres, to_levels
from .toy import TOY_DATASETS, TOY_LOG_PROB_DATASETS, toy_log_prob, toy_sample

__all__ = [
    "TOY_DATASETS",
    "TOY_LOG_PROB_DATASETS",
    "toy_sample",
    "toy_log_prob",
    "bin_width",
    "to_centres",
    "to_levels",
    "dequantize",
    "ImageData",
    "load_digits",
    "load_mnist",
    "load_cifar10",
]
