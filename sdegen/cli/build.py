"""Deprecated: moved to `sdegen.assembly`; import from there. Kept, warning, for code written
against sdegen 0.1.0, whose README pointed at sdegen/cli for the run config and its factories."""

import warnings

from ..assembly.runs import MODEL_KEYS, LoadedRun, build_model, load_run, make_trainer, run_classes
from ..assembly.tables import (
    DATA_KINDS,
    NETWORKS,
    SDES,
    TEST_SIZE_TOY,
    Data,
    build_network,
    build_sde,
    load_data,
)

warnings.warn(
    "sdegen.cli.build is deprecated: import from sdegen.assembly",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "SDES",
    "NETWORKS",
    "DATA_KINDS",
    "TEST_SIZE_TOY",
    "Data",
    "load_data",
    "build_sde",
    "build_network",
    "build_model",
    "run_classes",
    "MODEL_KEYS",
    "LoadedRun",
    "load_run",
    "make_trainer",
]
