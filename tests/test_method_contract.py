"""The contract every registered method plugin keeps, checked on the tiny BN network (issue 3, item 6).

For each method: it builds from its own presets; two iterations of its public step (its G steps and Q steps) give
finite losses; gradients reach the generator (when the method trains one) and the quantized student (when
its schedule fine-tunes); the teacher is unchanged; the same seed repeats bit for bit. The checks live in
:mod:`dfqbench.testing` (plugin packages call them in their own tests); every registered method is checked
here, installed entry-point plugins included: ``pytest tests/test_method_contract.py -k NAME`` for one.
"""

from __future__ import annotations

import pytest

from dfqbench.plugins import load_methods
from dfqbench.testing import check_registration, check_repeats_bit_for_bit, check_step_contract

METHODS = sorted(load_methods().names())


@pytest.mark.parametrize("method", METHODS)
def test_method_contract(method, tmp_path):
    check_step_contract(method, tmp_path)


@pytest.mark.parametrize("method", METHODS)
def test_method_repeats_bit_for_bit(method, tmp_path):
    check_repeats_bit_for_bit(method, tmp_path)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_states_its_paper_and_version(method):
    check_registration(method)
