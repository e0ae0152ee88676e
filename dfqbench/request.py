"""What a user asks for: the run options and the run request, checked by one function (torch-free).

Every way into a run ends here: ``dfqbench run`` flags, :func:`dfqbench.run` / :func:`dfqbench.run_grid`
keywords, a grid's cells and a Slurm or local grid task all become a :class:`RunRequest` (a grid's shared
options are a :class:`RunOptions`, resolved per launch as :class:`dfqbench.launch.plan.LaunchOptions`,
which makes each cell's request). :func:`check_options` is the one check of the options that are not
validated by building the run (``log_every``, ``engine``, ``log``); the command line and the API call it
before anything is imported or written, and :func:`dfqbench.runner.prepare` calls :func:`check_request`
for requests that come from elsewhere (a task, a test, a script). Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from dfqbench.errors import DfqbenchError


@dataclass(kw_only=True)
class RunOptions:
    """How runs are run and where they go: every field of a request but its cell (method, model, bits, seed).

    A single run's options, or the options a grid launch gives every cell (``protocol`` then replaces the
    cells' protocol when given, ``overrides`` come after the grid's own). Only ``protocol``, ``overrides``
    and the teacher weights (``weights``, ``weights_dir``, ``weights_norm``) can change a run's numbers;
    ``device``, ``engine``, ``log`` and ``log_every`` are recorded but not part of the run id.
    """

    protocol: str | None = None
    overrides: list[str] = field(default_factory=list)
    weights: str | None = None
    weights_dir: str | None = None
    weights_norm: str | None = None
    data_root: str | None = None
    results: Any = None  # str | PathLike | None: --results (env DFQBENCH_RESULTS; default ./results)
    device: str = "auto"
    log_every: int = 50
    engine: str = "auto"  # auto | eager | compiled (dfqbench.core.engine); recorded, not hashed, like the device
    log: list[str] = field(default_factory=list)  # experiment loggers: tensorboard, wandb (dfqbench.core.loggers)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The option fields (those of :class:`RunOptions`; the ``dfqbench run`` flags' destinations too)."""
        return tuple(f.name for f in fields(RunOptions))

    def option_values(self) -> dict[str, Any]:
        """The option fields and their values (lists copied)."""
        return {name: _copy(getattr(self, name)) for name in RunOptions.option_names()}


@dataclass(kw_only=True)
class RunRequest(RunOptions):
    """One run: its cell and its options. Only the fields that change numbers end up in the RunSpec."""

    method: str
    model: str
    bits: str
    seed: int = 0
    protocol: str = "paper"
    results: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.bits, str):  # one spelling per cell: "W4A4 " and "w4a4" are the same run
            self.bits = self.bits.strip().lower()

    @classmethod
    def of(cls, options: RunOptions, **cell: Any) -> "RunRequest":
        """The request for ``cell`` (method, model, bits, seed, and any option to replace) with ``options``."""
        values = {k: v for k, v in options.option_values().items() if k != "protocol" or v is not None}
        return cls(**{**values, **cell})


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def check_options(options: RunOptions) -> tuple[str, ...]:
    """The one check of a request's options that building the run does not do, torch-free and before anything
    is written: ``log_every`` >= 1, a known ``engine``, known and installed loggers (``log``). Returns the
    logger names, each once. Bad values raise a one-line :class:`DfqbenchError` naming the choices."""
    from dfqbench.core.engine_names import check_engine
    from dfqbench.core.loggers import check_loggers

    log_every = getattr(options, "log_every", 50)
    if log_every < 1:
        raise DfqbenchError(f"invalid --log-every {log_every}: must be >= 1")
    check_engine(getattr(options, "engine", "auto"))  # a request pickled before a field existed has its default
    return check_loggers(getattr(options, "log", ()))


def check_request(request: RunRequest) -> tuple[str, ...]:
    """:func:`check_options` and the seed (an integer torch accepts); returns the logger names."""
    from dfqbench.specs.validate import check_seed

    check_seed("seed", request.seed)
    return check_options(request)
