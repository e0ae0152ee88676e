"""Run specifications: frozen data that fully determine a run's numbers, and the run id hashed from them.

A :class:`RunSpec` holds everything that changes the numbers (method and its version and hyperparameters,
model, teacher weights identity, normalisation, quantizer, schedule, seed) and nothing that does not
(paths, device, log frequency, the protocol's name). Its :func:`run_id` is a hash of those fields, so
asking for the same run twice finds the same folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from dfqbench.errors import DfqbenchError
from dfqbench.validate import check_finite, check_int, check_real, is_int, is_real, short_repr


@dataclass(frozen=True)
class TrainConfig:
    """The trainer's schedule; defaults are GDFQ's CIFAR hocon and ``trainer.py`` (L48-78, L181-241)."""

    epochs: int = 400
    iters_per_epoch: int = 200
    batch_size: int = 200
    warmup_epochs: int = 4  # generator-only epochs: the student is not stepped before this epoch
    range_update_epochs: int = 4  # activation ranges update in epochs [0, n) then freeze (hard-coded 4 in GDFQ)
    lr_q: float = 1e-4
    lr_g: float = 1e-3
    q_momentum: float = 0.9
    q_nesterov: bool = True
    q_weight_decay: float = 1e-4
    g_betas: tuple[float, float] = (0.5, 0.999)
    milestones_q: tuple[int, ...] = (100, 200, 300)
    milestones_g: tuple[int, ...] = (100, 200, 300)
    lr_gamma: float = 0.1
    eval_start_epoch: int = 0  # GDFQ ImageNet evaluates only once epoch > warmup − 2
    eval_max_images: int | None = None  # None: the full test set; else a fixed seeded subset

    def __post_init__(self) -> None:
        check_train_config(self)


# Upper bounds of the schedule's counts: far above any published protocol (GDFQ: 400 epochs × 200 iterations,
# batch 200), low enough that every count derived from them (evaluations, GPU-hour estimates) stays small.
MAX_EPOCHS = 100_000
MAX_ITERS_PER_EPOCH = 1_000_000
MAX_BATCH_SIZE = 65_536
MAX_EVAL_IMAGES = 10_000_000
MAX_MILESTONES = 1_000
# Learning rates and weight decay: the optimizers hold them as float32 scalars (largest 3.4e38), so 1e300 would
# overflow inside torch. A bound against that, not a plausibility check: 1e30 is how a test makes a run diverge.
MAX_RATE = 1e30


def check_train_config(cfg: TrainConfig) -> None:
    """Types and ranges of every field, as one-line errors naming ``train.<field>`` and the valid range."""
    check_int("train.epochs", cfg.epochs, 1, MAX_EPOCHS)
    check_int("train.iters_per_epoch", cfg.iters_per_epoch, 1, MAX_ITERS_PER_EPOCH)
    check_int("train.batch_size", cfg.batch_size, 1, MAX_BATCH_SIZE)
    for name in ("warmup_epochs", "range_update_epochs", "eval_start_epoch"):
        check_int(f"train.{name}", getattr(cfg, name), 0, MAX_EPOCHS)
    if cfg.warmup_epochs > cfg.epochs:
        raise DfqbenchError(f"invalid train.warmup_epochs={cfg.warmup_epochs} > train.epochs={cfg.epochs}: the "
                            "student would never be fine-tuned; use warmup_epochs <= epochs (equal: calibration only)")
    if cfg.eval_max_images is not None:
        check_int("train.eval_max_images", cfg.eval_max_images, 1, MAX_EVAL_IMAGES)
    for name in ("lr_q", "lr_g"):
        check_real(f"train.{name}", getattr(cfg, name), 0.0, MAX_RATE, low_open=True, high_open=False)
    check_real("train.q_momentum", cfg.q_momentum, 0.0, 1.0)
    check_real("train.q_weight_decay", cfg.q_weight_decay, 0.0, MAX_RATE, high_open=False)
    check_real("train.lr_gamma", cfg.lr_gamma, 0.0, 1.0, low_open=True, high_open=False)
    if not isinstance(cfg.q_nesterov, bool):
        raise DfqbenchError(f"invalid train.q_nesterov={cfg.q_nesterov!r}: expected true or false")
    betas = cfg.g_betas
    if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(is_real(b) and 0 <= b < 1 for b in betas):
        raise DfqbenchError(f"invalid train.g_betas={betas!r}: expected two finite numbers in [0, 1), "
                            "e.g. [0.5, 0.999]")
    for name in ("milestones_q", "milestones_g"):
        value = getattr(cfg, name)
        if not isinstance(value, (list, tuple)) or len(value) > MAX_MILESTONES or not all(
                is_int(m) and 0 <= m <= MAX_EPOCHS for m in value):
            raise DfqbenchError(f"invalid train.{name}={short_repr(value)}: expected a list of at most "
                                f"{MAX_MILESTONES:,} integers in [0, {MAX_EPOCHS:,}], e.g. [100, 200]")


@dataclass(frozen=True)
class RunSpec:
    """Everything that changes a run's numbers. ``protocol`` (a label) and ``changed`` (derived) are left out
    of the hash."""

    method: str
    method_version: str
    model: str
    dataset: str
    bits: str
    seed: int
    teacher: dict[str, Any]
    normalization: dict[str, Any]
    quant: dict[str, Any]
    train: dict[str, Any]
    method_config: dict[str, Any]
    protocol: str = field(default="custom", compare=False)
    # How train/method_config/quant differ from the cell's default ({override key: value}; {} = the default;
    # None = not recorded), :mod:`dfqbench.configuration`. Follows from the hashed fields: not hashed.
    changed: dict[str, Any] | None = field(default=None, compare=False)

    def hashed(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("protocol")
        data.pop("changed")
        return data

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, **dataclasses.asdict(self)}

    @property
    def run_id(self) -> str:
        return hashlib.sha256(canonical_json(self.hashed()).encode()).hexdigest()[:12]

    @property
    def run_name(self) -> str:
        return f"{self.method}_{self.model}_{self.bits}_s{self.seed}_{self.run_id}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSpec":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no whitespace: the form that is hashed. NaN and infinity are refused (they are
    not JSON, and no valid spec holds them)."""
    try:
        return json.dumps(data, sort_keys=True, separators=(",", ":"), default=list, allow_nan=False)
    except ValueError as exc:
        raise DfqbenchError(f"run spec is not valid JSON ({exc}); NaN and infinity are not allowed") from None


class _Yaml12FloatLoader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1) plus YAML 1.2's float syntax, so that 1e-4 and 1e30 are numbers."""


_Yaml12FloatLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


# Bounds of a YAML document as users write it (grid files, overrides, filters): the nodes it expands to, an
# alias counted again at every use (nine nested anchors of ten aliases each are 10^9 nodes in a 300-byte
# file), and its nesting depth.
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 64


class YamlRefused(yaml.YAMLError):
    """A YAML document that :func:`read_yaml` refuses: over :data:`MAX_YAML_NODES` expanded nodes or
    :data:`MAX_YAML_DEPTH` levels, recursive, with a key given twice in one mapping (YAML forbids it; PyYAML
    would silently keep the last value), or holding a value Python cannot read (an integer of > 4,300 digits)."""


def _check_yaml_size(root: yaml.Node) -> None:
    """Refuse a composed document whose expansion (every alias expanded) has more than :data:`MAX_YAML_NODES`
    values or is deeper than :data:`MAX_YAML_DEPTH`, or that is recursive or repeats a key, without constructing
    it: a depth-first walk that sizes each distinct node once, so its time is linear in the file."""
    sizes: dict[int, int] = {}
    heights: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)], heights[id(node)] = 1, 1
            continue
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
        if children_done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            heights[id(node)] = 1 + max((heights[id(c)] for c in children), default=0)
            if sizes[id(node)] > MAX_YAML_NODES:
                raise YamlRefused(f"expands to more than {MAX_YAML_NODES:,} values (an alias counts at every use)")
            if heights[id(node)] > MAX_YAML_DEPTH:
                raise YamlRefused(f"nested deeper than {MAX_YAML_DEPTH} levels")
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise YamlRefused("an alias refers to a node that contains it (a recursive structure)")
        if isinstance(node, yaml.MappingNode):
            _check_unique_keys(node)
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
        if len(open_nodes) > MAX_YAML_DEPTH:  # the path from the root: refuse before walking further down
            raise YamlRefused(f"nested deeper than {MAX_YAML_DEPTH} levels")


def _check_unique_keys(node: yaml.MappingNode) -> None:
    """Refuse a mapping that gives one plain key twice (``epochs: 3`` … ``epochs: 300``)."""
    seen: set[tuple[str, str]] = set()
    for key, _ in node.value:
        if isinstance(key, yaml.ScalarNode):
            if (key.tag, key.value) in seen:
                raise YamlRefused(f"the key {key.value[:60]!r} is given twice in one mapping "
                                  f"(line {key.start_mark.line + 1})")
            seen.add((key.tag, key.value))


def read_yaml(text: str) -> Any:
    """YAML as users write it in overrides, filters and grid files (safe; ``1e-4`` is a float), bounded: a
    document that would expand past :data:`MAX_YAML_NODES` values or :data:`MAX_YAML_DEPTH` levels, or that
    is recursive, raises :class:`YamlRefused` (a ``yaml.YAMLError``) before anything is built from it."""
    loader = _Yaml12FloatLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YamlRefused(f"nested deeper than {MAX_YAML_DEPTH} levels") from None
        if node is None:
            return None
        _check_yaml_size(node)
        try:
            return loader.construct_document(node)
        except ValueError as exc:  # an integer of more than 4,300 digits (Python's int-from-text limit)
            raise YamlRefused(f"a value cannot be read ({str(exc).split(';')[0]})") from None
    finally:
        loader.dispose()


def read_flag_value(flag: str, text: str) -> Any:
    """One value of a command-line filter (``--only``, ``--where``): YAML read by :func:`read_yaml` (a refused
    document is one line); text that is not YAML, or uses a tag, stays the plain string it is; NaN and
    infinity, which equal nothing, are refused."""
    try:
        value = read_yaml(text)
    except YamlRefused as exc:
        raise DfqbenchError(f"invalid {flag} value {text[:60]!r}: {exc}") from None
    except yaml.YAMLError:
        return text
    check_finite(flag, value)
    return value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=3"`` → ``("train.epochs", 3)``; values are read as YAML (numbers, lists, null, bools)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise DfqbenchError(f"invalid override {text!r}: expected KEY=VALUE, e.g. train.epochs=3")
    try:
        value = read_yaml(raw) if raw.strip() else None
    except YamlRefused as exc:
        raise DfqbenchError(f"invalid override {key.strip()}: {exc}") from None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(sections: dict[str, dict[str, Any]], overrides: list[str]) -> dict[str, dict[str, Any]]:
    """Apply ``section.field=value`` overrides to ``{section: {field: value}}``, rejecting unknown keys."""
    result = {name: dict(values) for name, values in sections.items()}
    for text in overrides:
        key, value = parse_override(text)
        section, _, name = key.partition(".")
        valid = [f"{s}.{f}" for s in sorted(result) for f in sorted(result[s])]
        if section not in result or name not in result[section]:
            from dfqbench.registry import unknown_choice

            raise DfqbenchError(unknown_choice("override key", key, valid))
        current = result[section][name]
        result[section][name] = _coerce(key, value, current)
    return result


def _coerce(key: str, value: Any, current: Any) -> Any:
    """Convert an override value to the type of the field's current value where that is unambiguous."""
    if value is None or current is None:
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise DfqbenchError(f"invalid value {value!r} for {key}: expected true or false")
        return value
    if isinstance(current, (int, float)) and not isinstance(value, bool) and isinstance(value, (int, float)):
        return type(current)(value) if isinstance(current, float) or float(value).is_integer() else value
    if isinstance(current, (list, tuple)):
        if isinstance(value, (int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise DfqbenchError(f"invalid value {value!r} for {key}: expected a list such as [100, 200]")
        return tuple(value)
    if type(current) is not type(value) and not (isinstance(current, str) and isinstance(value, str)):
        raise DfqbenchError(f"invalid value {value!r} for {key}: expected a {type(current).__name__}")
    return value
