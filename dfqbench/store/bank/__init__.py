"""Image banks: synthetic images stored once and shared by every run that needs them (``<results>/banks/``).

- :mod:`~dfqbench.store.bank.key` — :class:`BankKey`, what changes a bank's pixels, hashed into its folder name
- :mod:`~dfqbench.store.bank.codec` — one batch as bytes (fp16 / uint8 / fp32 pixels; safetensors or plain tensors)
- :mod:`~dfqbench.store.bank.folder` — the files of a bank (manifest with checksums, batch files) and its state
- :mod:`~dfqbench.store.bank.reader` — checked, streamed or memory-mapped reads of a finished bank
- :mod:`~dfqbench.store.bank.build` — making a bank once: leased, atomic per batch, resumable

Importing this package never imports torch. docs/banks.md describes the whole.
"""

from dfqbench.store.bank.build import BankBusy, build_bank
from dfqbench.store.bank.folder import BANK_STATES, BankFolder, BankState
from dfqbench.store.bank.key import DEFAULT_STORAGE, STORAGES, BankKey, stored_image_bytes
from dfqbench.store.bank.reader import BankBatch, BankReader

__all__ = ["BANK_STATES", "DEFAULT_STORAGE", "STORAGES", "BankBatch", "BankBusy", "BankFolder", "BankKey",
           "BankReader", "BankState", "build_bank", "stored_image_bytes"]
