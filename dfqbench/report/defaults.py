"""Which finished runs are their method's *default configuration* for their cell.

A table cell (protocol, model, teacher, bits, method) shows the method's default configuration: the
settings ``dfqbench run`` resolves without overrides — the method's defaults, then its paper presets for
this dataset / model / bit-width, then the protocol (``runner.resolve_settings``) — at the method version
installed here. A run is default when its spec's ``method_version``, ``train``, ``method_config`` and
``quant`` sections equal those; the teacher, its normalisation and the seed are not configuration.
Everything else is another configuration, named by the override keys it changed (``quant.tracker=ema``,
``method.ds_weight=0``: the spelling of ``dfqbench run``'s overrides and of ``report --where``).

Runs record how they differ (the spec's ``changed``, :mod:`dfqbench.specs.configuration`), so reading a default
needs no method plugin. For specs written before that field existed, the default is resolved from the
installed plugins (importing torch), once per cell; a cell whose default cannot be resolved there (a method
not installed, a protocol or cell it does not support) has no default.
"""

from __future__ import annotations

import functools
from typing import Any

from dfqbench.specs.configuration import differences, flat_configuration, override_key, plain
from dfqbench.errors import DfqbenchError

__all__ = ["configuration_diff", "default_configuration", "diff_text", "override_key", "value_text"]

def _configuration(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec's configuration, flattened to override keys, with its ``method_version``."""
    return {"method_version": spec.get("method_version"), **flat_configuration(spec)}


@functools.lru_cache(maxsize=None)
def _default_configuration(method: str, dataset: str, model: str, bits: str, protocol: str) -> dict[str, Any] | str:
    """The default configuration of a cell (shared: never mutate it), or the reason there is none here."""
    try:
        from dfqbench.plugins import load_methods
        from dfqbench.runner import resolve_settings

        method_cls = load_methods().get(method)
        train, method_config, quant = resolve_settings(method_cls, dataset, model, bits, protocol, [])
    except DfqbenchError as exc:
        return str(exc)
    except ImportError as exc:  # torch or a plugin's dependency missing where the report runs
        return f"cannot load the method plugins here ({exc})"
    spec = {"method_version": method_cls.version, "train": train, "method_config": method_config, "quant": quant}
    return plain(_configuration(spec))


def default_configuration(spec: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """(the default configuration of the spec's cell as ``{override key: value}``, "") or (None, why not)."""
    key = (spec.get("method"), spec.get("dataset"), spec.get("model"), spec.get("bits"), spec.get("protocol", "custom"))
    if not all(isinstance(k, str) for k in key):
        return None, "the spec lacks method, dataset, model, bits or protocol"
    default = _default_configuration(*key)
    return (None, default) if isinstance(default, str) else (dict(default), "")


def configuration_diff(spec: dict[str, Any]) -> list[tuple[str, Any]] | None:
    """``[(override key, the run's value)]`` where the run differs from its cell's default (``[]``: it is the
    default), or None when the cell's default is unknown here.

    Runs record this themselves (the spec's ``changed``, computed by the runner at the method version they
    ran), so a report needs no method plugin; only specs without it (written before dfqbench recorded it)
    are compared with the default resolved from the installed plugins (importing torch, once per cell).
    """
    if isinstance(spec.get("changed"), dict):
        return sorted(spec["changed"].items())
    default, _ = default_configuration(spec)
    if default is None:
        return None
    return sorted(differences(plain(_configuration(spec)), default).items())


def diff_text(diff: list[tuple[str, Any]] | tuple[tuple[str, Any], ...], limit: int | None = 4) -> str:
    """``quant.tracker=ema, method.ds_weight=0.0``: at most ``limit`` items (then ``…``), long values cut with
    ``…``, as labels and footnotes show it; ``limit=None``: every item, every value whole (CSV, the full label)."""
    if limit is None:
        return ", ".join(f"{k}={value_text(v)}" for k, v in diff)
    parts = [f"{k}={_short(v)}" for k, v in diff[:limit]]
    return ", ".join(parts) + (" …" if len(diff) > limit else "")


def value_text(value: Any) -> str:
    """A configuration value as text (a tuple as the list it is stored as)."""
    return str(list(value)) if isinstance(value, (list, tuple)) else str(value)


def _short(value: Any) -> str:
    text = value_text(value)
    return text if len(text) <= 24 else text[:21] + "…"
