"""Sample-quality metrics: FID and KID on pluggable features, Fréchet and sliced Wasserstein
distances, and the 8x8 digits classifier behind the "digits" features."""

from .digits import (
    DigitsClassifier,
    DigitsTraining,
    default_digits_classifier_path,
    ensure_digits_classifier,
    load_digits_classifier,
    save_digits_classifier,
    train_digits_classifier,
)
from .distances import (
    frechet_distance,
    frechet_distance_from_samples,
    frechet_distance_to_moments,
    gaussian_moments,
    sliced_wasserstein,
)
from .features import (
    FEATURES,
    FeatureFn,
    digits_features,
    get_features,
    inception_features,
    load_inception,
    raw_features,
)
from .fid import KIDResult, fid, fid_to_moments, kid, polynomial_mmd2
from .inception_score import (
    CLASSIFIERS,
    InceptionScore,
    digits_probabilities,
    inception_probabilities,
    inception_score,
    inception_score_from_probs,
)

__all__ = [
    "gaussian_moments",
    "frechet_distance",
    "frechet_distance_from_samples",
    "frechet_distance_to_moments",
    "sliced_wasserstein",
    "fid",
    "fid_to_moments",
    "kid",
    "KIDResult",
    "polynomial_mmd2",
    "inception_score",
    "inception_score_from_probs",
    "InceptionScore",
    "CLASSIFIERS",
    "digits_probabilities",
    "inception_probabilities",
    "FEATURES",
    "FeatureFn",
    "get_features",
    "raw_features",
    "digits_features",
    "inception_features",
    "load_inception",
    "DigitsClassifier",
    "DigitsTraining",
    "default_digits_classifier_path",
    "train_digits_classifier",
    "save_digits_classifier",
    "load_digits_classifier",
    "ensure_digits_classifier",
]
