"""Deprecated: moved to `sdegen.assembly` (sdegen/assembly/config.py); import from there. Kept,
warning, for code written against sdegen 0.1.0, whose README named sdegen/cli/config.py."""

import warnings

from ..assembly.config import (
    TrainConfig,
    describe_keys,
    from_dict,
    load_config,
    read_run_config,
    save_config,
)

warnings.warn(
    "sdegen.cli.config is deprecated: import from sdegen.assembly",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "TrainConfig",
    "describe_keys",
    "from_dict",
    "load_config",
    "read_run_config",
    "save_config",
]
