"""The results store: the layout of a results folder, the typed run record, run state and leases, and
atomic writes. One module per job:

- :mod:`~dfqbench.store.files` — atomic writes, :class:`StoreError`
- :mod:`~dfqbench.store.layout` — ``<results>/runs/<run name>/``, the files of a run folder, the ``--results`` check
- :mod:`~dfqbench.store.records` — ``record.json`` as a typed, versioned :class:`RunRecord`
- :mod:`~dfqbench.store.checkpoint` — ``checkpoint.pt`` (the only module that imports torch, lazily)
- :mod:`~dfqbench.store.lease` — who runs a run now (``lease.json``)
- :mod:`~dfqbench.store.state` — done / running / failed / lost / pending, from the folder alone
- :mod:`~dfqbench.store.provenance` — git commit and package versions for the record
- :mod:`~dfqbench.store.codestamp` — the digest of a run's method code, and whether it is stale
- :mod:`~dfqbench.store.bank` — image banks shared by runs (``<results>/banks/<bank name>/``)

Importing this package never imports torch (``dfqbench status`` and ``dfqbench report`` stay torch-free).
"""

from dfqbench.store.bank import BankFolder, BankKey, BankReader, BankState, build_bank
from dfqbench.store.checkpoint import atomic_torch_save, unreadable_checkpoint
from dfqbench.store.files import StoreError, StoreWriteError, atomic_write_bytes, atomic_write_json
from dfqbench.store.layout import (RESULTS_ENV, ResultsStore, RunFolder, check_results_root, default_results_root,
                                   results_root)
from dfqbench.store.provenance import git_state, package_versions
from dfqbench.store.records import RECORD_VERSION, RecordError, RunRecord
from dfqbench.store.state import CELL_ONLY_STATES, RUN_STATES, RunState, error_reason, run_state

__all__ = [
    "BankFolder", "BankKey", "BankReader", "BankState", "build_bank", "CELL_ONLY_STATES", "RECORD_VERSION", "RESULTS_ENV", "RUN_STATES", "RecordError", "ResultsStore", "RunFolder",
    "RunRecord", "RunState", "StoreError", "StoreWriteError", "atomic_torch_save", "atomic_write_bytes", "atomic_write_json",
    "check_results_root", "default_results_root", "error_reason", "git_state", "package_versions", "results_root",
    "run_state", "unreadable_checkpoint",
]
