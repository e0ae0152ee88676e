"""Command-line overrides ``section.field=value``: parsed as YAML and applied to a run's sections, with the
value converted to the field's type where that is unambiguous and unknown keys refused with the valid ones."""

from __future__ import annotations

from typing import Any

import yaml

from dfqbench.errors import DfqbenchError
from dfqbench.registry import unknown_choice
from dfqbench.specs.yaml_reader import YamlRefused, read_yaml


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
