"""Assembly: names and configs -> objects (SDEs, networks, data, models, runs).

The layer above the library and below its users: the `sdegen` command line, the benchmarks
and the tests build everything through it, so a name means the same thing everywhere.

- `tables.py`: one table per kind of thing, SDES, NETWORKS and DATA, and their builders;
- `config.py`: the run config, TrainConfig, read from YAML/TOML with KEY=VALUE overrides;
- `runs.py`: the model and Trainer a config describes, and a trained run loaded from its folder;
- `likelihood.py`: the likelihood of a data set as `sdegen likelihood` reports it.

Two submodules are imported by name only: `plots` (the PNG figures; it loads matplotlib) and
`harness` (what every benchmark script shares).

    from sdegen.assembly import SDES, load_data, load_run
    sde = SDES["edm"]()
    run = load_run("runs/digits")  # config.json and the latest checkpoint, EMA weights
"""

from .config import (
    TrainConfig,
    describe_keys,
    from_dict,
    load_config,
    read_run_config,
    save_config,
)
from .likelihood import EXACT_TRACE_MAX_DIM, evaluate_likelihood, resolve_trace
from .runs import (
    MODEL_KEYS,
    LoadedRun,
    RunSetup,
    build_model,
    load_foreign,
    load_run,
    make_trainer,
    run_classes,
    run_text,
    set_data_std,
    setup_run,
)
from .tables import (
    DATA,
    DATA_KINDS,
    NETWORKS,
    SDES,
    TEST_SIZE_TOY,
    Data,
    DataSource,
    build_network,
    build_sde,
    load_data,
)

__all__ = [
    "load_foreign",
    "SDES",
    "NETWORKS",
    "DATA",
    "DATA_KINDS",
    "DataSource",
    "TEST_SIZE_TOY",
    "Data",
    "load_data",
    "build_sde",
    "build_network",
    "TrainConfig",
    "describe_keys",
    "from_dict",
    "load_config",
    "read_run_config",
    "save_config",
    "MODEL_KEYS",
    "LoadedRun",
    "build_model",
    "set_data_std",
    "run_classes",
    "run_text",
    "load_run",
    "make_trainer",
    "setup_run",
    "RunSetup",
    "EXACT_TRACE_MAX_DIM",
    "resolve_trace",
    "evaluate_likelihood",
]
