"""How a run's configuration differs from its cell's default, in override spelling (torch-free).

A cell (method, dataset, model, bit-width, protocol) has one *default configuration*: what ``dfqbench run``
resolves without overrides — the method's defaults, its paper presets for the cell, then the protocol
(:func:`dfqbench.runner.resolve_settings`). A run's *changes* are the settings where its ``train``,
``method_config`` and ``quant`` sections differ from that default, named as overrides are
(``quant.tracker``, ``method.ds_weight``, ``train.epochs``). The runner records them in the spec as
``changed`` (not hashed: it follows from the hashed fields and the code), so that reports tell default
runs from the others without importing the method plugins.
"""

from __future__ import annotations

import json
from typing import Any

from dfqbench.specs.runspec import HASHED_WHEN_SET

# spec section -> the prefix its fields have in `dfqbench run` overrides and `report --where`
SECTION_PREFIX = {"train": "train", "method_config": "method", "quant": "quant"}


def override_key(dotted: str) -> str:
    """A flattened spec key in override spelling: ``method_config.ds_weight`` → ``method.ds_weight``."""
    section, sep, rest = dotted.partition(".")
    return f"{SECTION_PREFIX[section]}.{rest}" if sep and section in SECTION_PREFIX else dotted


def plain(value: Any) -> Any:
    """JSON-normalised (tuples → lists), as specs are stored."""
    return json.loads(json.dumps(value, default=list))


def flat_configuration(sections: dict[str, Any]) -> dict[str, Any]:
    """The ``train``/``method_config``/``quant`` sections of a spec, flattened to override keys; a setting added
    after the spec was written reads as the value runs had before it existed
    (:data:`dfqbench.specs.runspec.HASHED_WHEN_SET`)."""
    out: dict[str, Any] = {}
    for section, prefix in SECTION_PREFIX.items():
        values = sections.get(section)
        if isinstance(values, dict):
            earlier = {name: value for (where, name), value in HASHED_WHEN_SET.items() if where == section}
            out.update({f"{prefix}.{k}": v for k, v in {**earlier, **values}.items()})
        else:
            out[prefix] = values
    return plain(out)


def changes(run: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    """``{override key: the run's value}`` where the run's sections differ from the default's (``{}``: none)."""
    return differences(flat_configuration(run), flat_configuration(default))


def differences(ours: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    """``{key: our value}`` for every key whose value (or presence) differs between two flat configurations."""
    missing = object()
    return {k: ours.get(k) for k in sorted(set(ours) | set(default)) if ours.get(k, missing) != default.get(k, missing)}
