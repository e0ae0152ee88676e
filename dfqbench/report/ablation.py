"""Which generator-loss terms a run had on: the row of AdaSG Table 2 a record belongs to.

AdaSG's L_G = w_b·L_b + w_ds·L_ds + w_as·L_as + w_bns·L_BNS (AdaSG ``CIFAR/trainer.py`` L239-256) and AdaDFQ's
L_G = L_b + β·(α_ds·L_ds + α_as·L_as) + γ·L_BNS (AdaDFQ ``CIFAR/trainer.py`` L241-252); the ablation of AdaSG
Table 2 switches a term off, which in dfqbench is its weight set to 0 in ``spec.method_config``. A term is on
when the product of its weight fields is non-zero. The first candidate whose fields are all present in the
config is used, so the mapping covers the AdaSG plugin's names (``ds_weight``, ``as_weight``,
``bound_weight``, ``bns_weight``) and AdaDFQ's (``alpha_ds``·``beta``, ``alpha_as``·``beta``, ``gamma``, and
L_b with a fixed weight of 1).
"""

from __future__ import annotations

from typing import Any

from dfqbench.report.published import ABLATION_TERMS

TERM_LABELS = {"ds": "L_ds", "as": "L_as", "b": "L_b", "bns": "L_BNS"}

# term → candidate tuples of weight fields whose product is the term's effective weight, first match wins
TERM_WEIGHT_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "ds": (("ds_weight", "beta"), ("ds_weight",), ("alpha_ds", "beta"), ("alpha_ds",)),
    "as": (("as_weight", "beta"), ("as_weight",), ("alpha_as", "beta"), ("alpha_as",)),
    "b": (("bound_weight",), ()),  # AdaDFQ has no weight on L_b: always on
    "bns": (("bns_weight",), ("gamma",)),
}


def ablation_terms(method_config: dict[str, Any]) -> tuple[bool, ...] | None:
    """(L_ds, L_as, L_b, L_BNS) on/off for a game-method config, or None when a term has no weight field
    (not an AdaSG-family config, so the record has no ablation row)."""
    row = []
    for term in ABLATION_TERMS:
        fields = next((f for f in TERM_WEIGHT_FIELDS[term] if all(k in method_config for k in f)), None)
        if fields is None:
            return None
        weight = 1.0
        for name in fields:
            weight *= float(method_config[name])
        row.append(weight != 0.0)
    return tuple(row)


def is_full(method_config: dict[str, Any]) -> bool:
    """True unless the config is an ablation (a game-method config with some generator-loss term off).

    Main tables (AdaSG Table 1, Qimera Table 2) show only full configurations.
    """
    terms = ablation_terms(method_config)
    return terms is None or all(terms)


def terms_label(terms: tuple[bool, ...]) -> str:
    """``(False, True, True, True)`` → ``"w/o L_ds"``; all on → ``"full"``."""
    off = [TERM_LABELS[t] for t, on in zip(ABLATION_TERMS, terms) if not on]
    return "full" if not off else "w/o " + ", ".join(off)
