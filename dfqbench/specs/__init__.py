"""The run-specification layer: what a run is, as frozen, validated data, torch-free.

- :mod:`~dfqbench.specs.runspec`: :class:`RunSpec` (everything that changes a run's numbers, hashed into its
  id) and the trainer schedule :class:`TrainConfig` with its bounds;
- :mod:`~dfqbench.specs.configuration`: a method's hyperparameters as a canonical, hashable mapping;
- :mod:`~dfqbench.specs.protocols`: the named schedules (``paper``, ``quick``, …);
- :mod:`~dfqbench.specs.yaml_reader` and :mod:`~dfqbench.specs.overrides`: bounded YAML as users write it,
  and ``section.field=value`` overrides;
- :mod:`~dfqbench.specs.validate`: the value checks every layer above shares.

The names below are this package's face (``from dfqbench.specs import RunSpec``, as before the folder).
"""

from dfqbench.specs.overrides import apply_overrides, parse_override
from dfqbench.specs.runspec import (MAX_BATCH_SIZE, MAX_EPOCHS, MAX_EVAL_IMAGES, MAX_ITERS_PER_EPOCH,
                                    MAX_MILESTONES, MAX_RATE, RunSpec, TrainConfig, canonical_json,
                                    check_train_config)
from dfqbench.specs.yaml_reader import MAX_YAML_DEPTH, MAX_YAML_NODES, YamlRefused, read_flag_value, read_yaml

__all__ = ["MAX_BATCH_SIZE", "MAX_EPOCHS", "MAX_EVAL_IMAGES", "MAX_ITERS_PER_EPOCH", "MAX_MILESTONES",
           "MAX_RATE", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "RunSpec", "TrainConfig", "YamlRefused",
           "apply_overrides", "canonical_json", "check_train_config", "parse_override", "read_flag_value",
           "read_yaml"]
