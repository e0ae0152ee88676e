"""Grid files: YAML lists of run cells, expanded into one :class:`Cell` per run (issue 4, item 1).

A grid file has these top-level keys (all optional except that every cell must end up with a method,
a model and bits)::

    name: paper_table1            # defaults to the file name
    description: free text
    base:                         # every cell starts from these values
      protocol: paper
      train.eval_max_images: 10000      # dotted keys are overrides (train.* / method.* / quant.*)
      overrides: ["quant.tracker=ema"]  # the same, as CLI-style KEY=VALUE strings
    axes:                         # crossed as a product, in the order given
      method: [gdfq, adasg]
      bits: [w3a3, w4a4]
      seed: [0, 1, 2]
    together:                     # each entry is one more axis whose keys vary together
      - {model: [resnet18, resnet50], profile: [imagenet, imagenet_big]}   # zipped lists
      - [{variant: full}, {variant: no_ds, method.w_ds: 0.0}]              # or a list of records
    exclude:                      # cells matching every given key are excluded, with the reason shown
      - {method: zaq, bits: w3a3, reason: "not reported (dash in the paper)"}
    presets:                      # per-cell method presets: overrides for the matching cells
      - match: {method: adasg, dataset: imagenet}
        set: {train.eval_max_images: 10000}
        profile: imagenet         # optional: the Slurm profile of the matching cells

Cell keys: ``method model bits seed protocol variant profile`` plus dotted override keys; matches may
also use ``dataset`` (from the model). Match values are a value or a list of values (any of them).
Precedence of overrides: base < presets (in file order) < axes/together values < command-line overrides.
``variant`` is a label only (it does not change the run id); ``profile`` picks a Slurm resource profile.
Structural mistakes raise :class:`DfqbenchError` naming the file, the key and the valid choices; whether a
cell can run (registered method, valid bits, method support) is decided later, per cell, by the planner.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from dfqbench.errors import DfqbenchError
from dfqbench.grids import GRID_DIR, shipped_grids
from dfqbench.registry import unknown_choice
from dfqbench.specs import TrainConfig, parse_override, read_flag_value, read_yaml
from dfqbench.specs.validate import MAX_SEED, check_path_name

TOP_KEYS = ("name", "description", "base", "axes", "together", "exclude", "presets")
CELL_KEYS = ("method", "model", "bits", "seed", "protocol", "variant", "profile")
MATCH_ONLY_KEYS = ("dataset",)
SECTIONS = ("train", "method", "quant")
DEFAULTS: dict[str, Any] = {"seed": 0, "protocol": "paper", "variant": None, "profile": None}
PRESET_KEYS = ("match", "set", "profile")
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
MAX_SEEDS = 10_000  # seeds per grid (--seeds or the file's own list): bounds what a typo can make us build
MAX_GRID_CELLS = 10_000  # cells per grid (the product of its axes), refused before any is built
PATH_KEYS = ("method", "model", "bits", "protocol", "profile")  # cell values that end up in folder names


@dataclass(frozen=True)
class Cell:
    """One expanded grid cell: what to run (before the planner checks that it can run)."""

    method: str
    model: str
    bits: str
    seed: int
    protocol: str
    variant: str | None
    profile: str | None
    overrides: tuple[str, ...]
    excluded: str | None  # the grid's reason when an exclude entry matches
    values: dict[str, Any] = field(compare=False)  # every key, for filters and display (incl. dataset)

    @property
    def label(self) -> str:
        parts = [self.method, self.model, self.bits, f"s{self.seed}"]
        if self.variant:
            parts.append(self.variant)
        return " ".join(parts)


@dataclass
class Grid:
    """A parsed, structurally validated grid file."""

    name: str
    path: Path
    description: str
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    together: list[list[dict[str, Any]]]
    exclude: list[dict[str, Any]]
    presets: list[dict[str, Any]]

    def varying(self) -> dict[str, int]:
        """Keys that vary across cells, with the number of distinct values each takes."""
        counts = {key: len(values) for key, values in self.axes.items()}
        for records in self.together:
            for key in dict.fromkeys(k for r in records for k in r):
                counts[key] = len({json.dumps(r.get(key), sort_keys=True) for r in records})
        return counts


def is_dotted(key: str) -> bool:
    section, dot, name = str(key).partition(".")
    return bool(dot) and section in SECTIONS and bool(name)


def find_grid(text: str) -> Path:
    """A shipped grid by name, or a grid file by path."""
    path = Path(text).expanduser()
    if path.suffix in (".yaml", ".yml") or "/" in text or path.is_file():
        if not path.is_file():
            raise DfqbenchError(f"grid file '{path}' not found; shipped grids: {', '.join(shipped_grids())}")
        return path
    if text in shipped_grids():
        return GRID_DIR / f"{text}.yaml"
    raise DfqbenchError(unknown_choice("grid", text, shipped_grids()) + ", or a path to a YAML grid file")


def _bad_key(src: Path, where: str, key: Any, choices: list[str], extra: str = "") -> DfqbenchError:
    close = difflib.get_close_matches(str(key), choices, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return DfqbenchError(f"grid file '{src}': unknown key {where}{key!r}{hint} choices: {', '.join(choices)}{extra}")


def _check_cell_key(src: Path, where: str, key: Any, allowed: tuple[str, ...]) -> None:
    if key in allowed:
        return
    if is_dotted(key):
        section, _, name = key.partition(".")
        if section == "train" and name not in TRAIN_FIELDS:
            raise _bad_key(src, where, key, [f"train.{f}" for f in TRAIN_FIELDS])
        return
    raise _bad_key(src, where, key, list(allowed), ", or a dotted override key train.X, method.X or quant.X")


def _check_value(src: Path, where: str, key: str, value: Any) -> Any:
    """Type-check a cell value; bits are lower-cased."""
    if key == "seed":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
            raise DfqbenchError(f"grid file '{src}': {where}seed={value!r} must be an integer in [0, 2**63 - 1]")
        return value
    if key in ("method", "model", "bits", "protocol", "variant", "profile", "dataset"):
        if not isinstance(value, str) or not value:
            raise DfqbenchError(f"grid file '{src}': {where}{key}={value!r} must be a non-empty string")
        if key in PATH_KEYS:
            check_path_name(f"grid file '{src}': {where}{key}", value)
        return value.lower() if key == "bits" else value
    return value


def _mapping(src: Path, where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DfqbenchError(f"grid file '{src}': {where} must be a mapping, got {type(value).__name__}")
    return value


def _values(src: Path, where: str, key: str, value: Any) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise DfqbenchError(f"grid file '{src}': {where}{key} must be a non-empty list, got {value!r}")
    if key == "seed" and len(value) > MAX_SEEDS:
        raise DfqbenchError(f"grid file '{src}': {where}seed lists {len(value)} seeds; at most {MAX_SEEDS} per grid")
    return [_check_value(src, f"{where}", key, v) for v in value]


def _no_duplicates(src: Path, where: str, key: str, values: list[Any]) -> None:
    """An axis listing a value twice would plan the same runs twice."""
    seen: set[str] = set()
    for value in values:
        text = json.dumps(value, sort_keys=True, default=str)
        if text in seen:
            raise DfqbenchError(f"grid file '{src}': {where}{key} lists {value!r} more than once")
        seen.add(text)


def _parse_base(src: Path, raw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {}
    for key, value in _mapping(src, "base", raw).items():
        if key == "overrides":
            if not isinstance(value, list):
                raise DfqbenchError(f"grid file '{src}': base.overrides must be a list of KEY=VALUE strings")
            for text in value:
                okey, ovalue = parse_override(str(text))
                _check_cell_key(src, "base.overrides: ", okey, ())
                base[okey] = ovalue
            continue
        _check_cell_key(src, "base.", key, CELL_KEYS + ("overrides",))
        base[key] = _check_value(src, "base.", key, value)
    return base


def _parse_together(src: Path, raw: Any, taken: set[str]) -> list[list[dict[str, Any]]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise DfqbenchError(f"grid file '{src}': together must be a list of groups (zipped lists or records)")
    groups = []
    for i, group in enumerate(raw):
        where = f"together[{i}]."
        if isinstance(group, dict):
            lists = {k: _values(src, where, k, v) for k, v in group.items()}
            lengths = {k: len(v) for k, v in lists.items()}
            if len(set(lengths.values())) > 1:
                raise DfqbenchError(f"grid file '{src}': {where[:-1]} lists must have the same length, got {lengths}")
            records = [dict(zip(lists, row)) for row in zip(*lists.values())]
        elif isinstance(group, list) and group and all(isinstance(r, dict) for r in group):
            records = [{k: _check_value(src, where, k, v) for k, v in r.items()} for r in group]
        else:
            raise DfqbenchError(f"grid file '{src}': {where[:-1]} must be a mapping of equal-length lists "
                                "or a non-empty list of mappings")
        keys = set(k for r in records for k in r)
        for key in keys:
            _check_cell_key(src, where, key, CELL_KEYS)
        if keys & taken:
            raise DfqbenchError(f"grid file '{src}': {sorted(keys & taken)} vary in more than one of axes/together")
        taken |= keys
        groups.append(records)
    return groups


def _parse_matches(src: Path, raw: Any, name: str, extra_keys: tuple[str, ...]) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise DfqbenchError(f"grid file '{src}': {name} must be a list of mappings")
    for i, entry in enumerate(raw):
        for key in entry:
            if key not in extra_keys:
                _check_cell_key(src, f"{name}[{i}].", key, CELL_KEYS + MATCH_ONLY_KEYS + extra_keys)
    return raw


def _parse_presets(src: Path, raw: Any) -> list[dict[str, Any]]:
    presets = []
    for i, entry in enumerate(_parse_matches(src, raw, "presets", PRESET_KEYS)):
        extra = sorted(set(entry) - set(PRESET_KEYS))
        if extra:
            raise _bad_key(src, f"presets[{i}].", extra[0], list(PRESET_KEYS))
        match = _mapping(src, f"presets[{i}].match", entry.get("match"))
        for key in match:
            _check_cell_key(src, f"presets[{i}].match.", key, CELL_KEYS + MATCH_ONLY_KEYS)
        settings = _mapping(src, f"presets[{i}].set", entry.get("set"))
        for key in settings:
            if not is_dotted(key):
                raise DfqbenchError(f"grid file '{src}': presets[{i}].set.{key} must be a dotted override key "
                                    "(train.X, method.X or quant.X)")
            _check_cell_key(src, f"presets[{i}].set.", key, ())
        presets.append({"match": match, "set": settings, "profile": entry.get("profile")})
    return presets


def load_grid(text: str | Path) -> Grid:
    """Read and structurally validate a grid (shipped name or file path)."""
    path = find_grid(str(text))
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DfqbenchError(f"grid file '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    except UnicodeDecodeError as exc:
        raise DfqbenchError(f"grid file '{path}' is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise DfqbenchError(f"cannot read grid file '{path}' ({exc.strerror or type(exc).__name__})") from None
    raw = _mapping(path, "the file", raw)
    for key in raw:
        if key not in TOP_KEYS:
            raise _bad_key(path, "", key, list(TOP_KEYS))
    axes = {}
    for key, values in _mapping(path, "axes", raw.get("axes")).items():
        _check_cell_key(path, "axes.", key, CELL_KEYS)
        axes[key] = _values(path, "axes.", key, values)
        _no_duplicates(path, "axes.", key, axes[key])
    name = str(raw.get("name") or path.stem)
    check_path_name(f"grid file '{path}': name", name)  # launch/<name>/ and slurm/<name>/ are folders
    return Grid(
        name=name, path=path.resolve(), description=str(raw.get("description") or ""),
        base=_parse_base(path, raw.get("base")), axes=axes,
        together=_parse_together(path, raw.get("together"), set(axes)),
        exclude=_parse_matches(path, raw.get("exclude"), "exclude", ("reason",)),
        presets=_parse_presets(path, raw.get("presets")),
    )


@functools.lru_cache(maxsize=None)
def dataset_of(model: str) -> str | None:
    """The model's dataset, or None for a model the zoo does not know (the planner reports it)."""
    from dfqbench.zoo import model_info

    try:
        return model_info(model).dataset
    except DfqbenchError:
        return None


def matches(match: dict[str, Any], values: dict[str, Any]) -> bool:
    """True when every key of ``match`` has one of its allowed values in ``values``."""
    for key, allowed in match.items():
        options = allowed if isinstance(allowed, list) else [allowed]
        if key == "bits":
            options = [str(o).lower() for o in options]
        if values.get(key) not in options:
            return False
    return True


def override_text(key: str, value: Any) -> str:
    """``KEY=VALUE`` with the value as flow-style YAML, which :func:`parse_override` reads back unchanged
    (JSON would not do: PyYAML reads ``1e+30`` as a string)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def expand(grid: Grid, seeds: list[int] | None = None,
           datasets: Callable[[str], str | None] = dataset_of) -> list[Cell]:
    """Every cell of the grid, in axis order; ``seeds`` replaces the grid's seeds; ``datasets`` maps a model to
    its dataset (the zoo's, or the plan cache's record of it)."""
    axes = dict(grid.axes)
    if seeds is not None:
        if any("seed" in r for g in grid.together for r in g):
            raise DfqbenchError(f"grid file '{grid.path}': --seeds cannot replace seeds listed under together")
        axes["seed"] = list(seeds)
    dims = [[{key: v} for v in values] for key, values in axes.items()] + grid.together
    count = math.prod(len(d) for d in dims)
    if count > MAX_GRID_CELLS:
        sizes = " × ".join(str(len(d)) for d in dims)
        raise DfqbenchError(f"grid file '{grid.path}': {count:,} cells ({sizes}) exceed the limit of "
                            f"{MAX_GRID_CELLS:,} per grid; split it into several grids or narrow an axis")
    cells = []
    for combo in itertools.product(*dims):
        chosen: dict[str, Any] = {}
        for record in combo:
            chosen.update(record)
        plain = {**DEFAULTS, **{k: v for k, v in grid.base.items() if not is_dotted(k)},
                 **{k: v for k, v in chosen.items() if not is_dotted(k)}}
        missing = [k for k in ("method", "model", "bits") if k not in plain]
        if missing:
            raise DfqbenchError(f"grid file '{grid.path}': cells have no {', '.join(missing)}; set it under base or axes")
        dotted = {k: v for k, v in grid.base.items() if is_dotted(k)}
        view = {**plain, **dotted, **{k: v for k, v in chosen.items() if is_dotted(k)},
                "dataset": datasets(plain["model"])}
        profile = plain["profile"]
        for preset in grid.presets:
            if matches(preset["match"], view):
                dotted.update(preset["set"])
                profile = preset["profile"] or profile
        dotted.update({k: v for k, v in chosen.items() if is_dotted(k)})
        view.update(dotted)
        view["profile"] = profile
        excluded = next((str(e.get("reason") or f"excluded by the grid ({_describe(e)})")
                         for e in grid.exclude if matches({k: v for k, v in e.items() if k != "reason"}, view)), None)
        cells.append(Cell(
            method=plain["method"], model=plain["model"], bits=plain["bits"], seed=plain["seed"],
            protocol=plain["protocol"], variant=plain["variant"], profile=profile,
            overrides=tuple(override_text(k, v) for k, v in dotted.items()), excluded=excluded, values=view,
        ))
    return cells


def _describe(entry: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in entry.items() if k != "reason")


def parse_filters(texts: list[str] | None) -> dict[str, list[Any]]:
    """``["method=adasg,adadfq", "bits=w3a3"]`` → ``{"method": ["adasg", "adadfq"], "bits": ["w3a3"]}``."""
    filters: dict[str, list[Any]] = {}
    for text in texts or []:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise DfqbenchError(f"invalid --only {text!r}: expected KEY=VALUE[,VALUE…], e.g. --only method=adasg --only bits=w3a3")
        values = [read_flag_value(f"--only {key}", v.strip()) for v in raw.split(",")]
        if key == "bits":
            values = [str(v).lower() for v in values]
        filters.setdefault(key, []).extend(values)
    return filters


def apply_filters(cells: list[Cell], filters: dict[str, list[Any]], grid: Grid) -> list[Cell]:
    """The cells matching every filter; unknown keys and values no cell has are errors naming the choices."""
    for key, wanted in filters.items():
        present = [c.values[key] for c in cells if key in c.values]
        if not present:
            raise DfqbenchError(unknown_choice("--only key", key, sorted({k for c in cells for k in c.values})))
        missing = [w for w in wanted if w not in present]
        if missing:
            shown = ", ".join(sorted({str(v) for v in present}))
            raise DfqbenchError(f"--only {key}={missing[0]}: no cell of grid {grid.name!r} has it; values: {shown}")
    return [c for c in cells if matches(filters, c.values)]


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` (or a mix) → a sorted list of distinct non-negative seeds."""
    ranges: list[range] = []
    try:
        for part in text.split(","):
            first, dash, last = part.strip().partition("-")
            lo, hi = int(first), int(last) if dash else int(first)
            if lo < 0 or hi < lo:
                raise ValueError
            ranges.append(range(lo, hi + 1))
    except ValueError:
        raise DfqbenchError(f"invalid --seeds {text!r}: expected e.g. 0,1,2 or 0-4") from None
    if max(r[-1] for r in ranges) > MAX_SEED:
        raise DfqbenchError(f"invalid --seeds {text!r}: seeds must be integers in [0, 2**63 - 1]")
    if sum(len(r) for r in ranges) > MAX_SEEDS:  # counted before any range is materialised
        raise DfqbenchError(f"invalid --seeds {text!r}: at most {MAX_SEEDS} seeds per grid")
    seeds: set[int] = set()
    for r in ranges:
        seeds.update(r)
    return sorted(seeds)
