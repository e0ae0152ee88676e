"""Shared by golden-b's fixture makers (make_adasg/zaq/zeroq.py) and tests (test_golden_adasg/zaq/zeroq.py).

No official code here: deterministic seeded weights, the name maps between dfqbench's generators and the
official ``Generator`` classes, the per-tensor digests the whole-iteration fixtures store, and the
fixture loader. Everything that draws random numbers uses its own ``torch.Generator`` (never the global
one) through ``golden_common.portable_randn`` / ``portable_uniform`` (float64 draws with mean 0 / std 1 or
U(0, 1), then separate elementwise operations and a cast: the same bits on every CPU kernel), so a fixture's
weights are rebuilt exactly from a seed in both the maker and the test; each fixture also stores digests of
the initial weights, and the tests check those first, so a change in how torch draws numbers fails loudly as
"initial weights differ" instead of as a method mismatch.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from golden_common import default_dtype, portable_randn, portable_uniform  # noqa: E402,F401  (default_dtype: re-exported)

GOLDEN = Path(__file__).resolve().parent.parent  # tests/golden


@contextlib.contextmanager
def official_imports(folder: Path, top_level: Iterable[str]) -> Iterator[None]:
    """Imports inside the block come from the official ``folder``: modules under the ``top_level`` names that an
    earlier folder left in ``sys.modules`` are dropped first, and ``folder`` is on ``sys.path`` for the block only."""
    names = set(top_level)
    for name in list(sys.modules):
        if name.split(".")[0] in names:
            del sys.modules[name]
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


SAMPLE_VALUES = 32  # values sampled per tensor in a digest


def seeded_state(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A state dict for ``module`` with every float entry drawn from ``seed`` (keys in state_dict order), in each
    entry's own dtype (a float64 module gets float64 draws, not float32 ones widened).

    Rules by name and shape: running_var ~ U(0.5, 1.5); running_mean ~ N(0, 0.1²); 1-D ``weight`` (BN γ)
    ~ U(0.5, 1.5); ``bias`` ~ N(0, 0.05²); embedding tables ~ N(0, 1); other ≥2-D weights ~ N(0, 2/fan_in).
    Portable draws (``portable_randn`` / ``portable_uniform``): the same bits on every CPU.
    Integer entries (num_batches_tracked) are kept.
    """
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict().items():
        if not value.is_floating_point():
            out[key] = value.clone()
            continue
        shape, dtype = tuple(value.shape), value.dtype
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "running_var":
            t = portable_uniform(shape, gen, 0.5, 1.5, dtype)
        elif leaf == "running_mean":
            t = portable_randn(shape, gen, dtype, 0.1)
        elif leaf == "weight" and len(shape) == 1:
            t = portable_uniform(shape, gen, 0.5, 1.5, dtype)
        elif leaf == "bias":
            t = portable_randn(shape, gen, dtype, 0.05)
        elif "emb" in key:
            t = portable_randn(shape, gen, dtype)
        elif leaf == "weight":
            fan_in = math.prod(shape[1:])
            t = portable_randn(shape, gen, dtype, math.sqrt(2.0 / fan_in))
        else:
            raise KeyError(f"seeded_state: no rule for {key} {tuple(shape)}")
        out[key] = t
    return out


def calibrate_bn_stats(model: nn.Module, seed: int, batch: int = 64, size: int = 32) -> dict[str, torch.Tensor]:
    """Running statistics for ``model``'s BNs that fit its seeded weights: the exact batch mean and (unbiased)
    variance of each BN input over one seeded N(0, 1) batch (in the model's dtype), BNs in train mode (run by
    the fixture makers only; the fixtures store the result as ``net_bn/<key>``, so tests never recompute it:
    it is a computation with reductions, whose last bits differ between CPU kernels)."""
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    x = portable_randn((batch, 3, size, size), gen, dtype)
    work = copy.deepcopy(model)
    bns = [m for m in work.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    work.train()
    with torch.no_grad():
        work(x)
    return {k: v.clone() for k, v in work.state_dict().items() if k.endswith(("running_mean", "running_var"))}


# Activation-quantizer ranges whose scale (2^k − 1)/(hi − lo) is a power of two 2^m, so that s·x − z is exact in
# float32 and float64 and the rounding ties below are exact: (bits k, m, a) with lo = −a/2^m, hi = lo + (2^k − 1)/2^m,
# zero point z = −a + 2^(k−1) (both parities), plus one range with an ordinary scale.
TIE_RANGES = ((4, 2, 5), (4, 2, 4), (6, 3, 11), (8, 4, 37), (8, 4, 0))
TIE_SEED = 1234


def tie_cases() -> list[tuple[int, float, float, torch.Tensor]]:
    """(bits, lo, hi, x) for the quantizer-ties fixtures (float64 x): for each range of :data:`TIE_RANGES` every
    half-way point j + 1/2 of the integer grid, (j + 1/2 + z)/2^m, including points beyond both clamps, and 64
    portable uniform draws over [lo − 0.5, hi + 0.5]; then a range with an ordinary scale and 64 draws. In the
    whole iterations (float64) exact ties do not occur, so these are what tells half-to-even rounding (torch.round,
    the official quantizer's) from half-up."""
    gen = torch.Generator().manual_seed(TIE_SEED)
    cases = []
    for bits, m, a in TIE_RANGES:
        step = 2.0 ** -m
        lo = -a * step
        hi = lo + ((1 << bits) - 1) * step
        zero = -a + (1 << (bits - 1))
        half = 1 << (bits - 1)
        ties = (torch.arange(-half - 2, half + 2, dtype=torch.float64) + 0.5 + zero) * step
        x = torch.cat([ties, portable_uniform((64,), gen, lo - 0.5, hi + 0.5, torch.float64)])
        cases.append((bits, lo, hi, x))
    cases.append((4, -0.37, 1.91, portable_uniform((64,), gen, -0.9, 2.4, torch.float64)))
    return cases


def tie_fixture(quant_act_class, make_act) -> dict[str, torch.Tensor]:
    """The official activation quantizer (``make_act(quant_act_class, bits)``: a QuantAct with its range frozen)
    on :func:`tie_cases`, in float32 and float64: ``ties/bits``, ``ties/range``, ``ties/{i}/x{32,64}``,
    ``ties/{i}/y{32,64}``."""
    out: dict[str, torch.Tensor] = {}
    cases = tie_cases()
    out["ties/bits"] = torch.tensor([c[0] for c in cases])
    out["ties/range"] = torch.tensor([[c[1], c[2]] for c in cases], dtype=torch.float64)
    for i, (bits, lo, hi, x) in enumerate(cases):
        for tag, dtype in (("32", torch.float32), ("64", torch.float64)):
            with default_dtype(dtype):
                act = make_act(quant_act_class, bits)
                act.x_min = torch.tensor([lo])
                act.x_max = torch.tensor([hi])
                xd = x.to(dtype)
                y = act(xd.clone())
            assert y.dtype == dtype
            out[f"ties/{i}/x{tag}"], out[f"ties/{i}/y{tag}"] = xd, y.detach()
    return out


def net_bn_entries(stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"net_bn/{k}": v for k, v in stats.items()}


def net_state_from_fixture(module: nn.Module, seed: int, fixture: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`seeded_state` with the BN running statistics the fixture stores (``net_bn/<key>``)."""
    state = seeded_state(module, seed)
    for key in state:
        if f"net_bn/{key}" in fixture:
            state[key] = fixture[f"net_bn/{key}"].clone()
    return state


# dfqbench CifarGenerator / DAFLGenerator names → official GDFQ-family / ZAQ ``Generator`` names
GENERATOR_NAMES = {
    "label_emb": "label_emb", "l1": "l1.0", "bn0": "conv_blocks0.0", "conv1": "conv_blocks1.0",
    "bn1": "conv_blocks1.1", "conv2": "conv_blocks2.0", "bn2": "conv_blocks2.1", "conv3": "conv_blocks2.3",
    "out_bn": "conv_blocks2.5",
}


def to_official_generator(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a dfqbench generator state dict to the official ``Generator``'s module names."""
    out = {}
    for key, value in state.items():
        head, leaf = key.split(".", 1)
        out[f"{GENERATOR_NAMES[head]}.{leaf}"] = value
    return out


def to_dfqbench_generator(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`to_official_generator`."""
    back = {v: k for k, v in GENERATOR_NAMES.items()}
    out = {}
    for key, value in state.items():
        for official, ours in back.items():
            if key.startswith(official + "."):
                out[ours + key[len(official):]] = value
                break
        else:
            raise KeyError(key)
    return out


def digest(t: torch.Tensor) -> torch.Tensor:
    """sum, abs-sum, then :data:`SAMPLE_VALUES` values at fixed evenly spaced flat positions (float64)."""
    flat = t.detach().double().flatten()
    n = flat.numel()
    # float64 positions whatever the default dtype (float32 linspace rounds large positions differently)
    idx = torch.linspace(0, n - 1, min(SAMPLE_VALUES, n), dtype=torch.float64).round().long()
    return torch.cat([flat.sum().view(1), flat.abs().sum().view(1), flat[idx]])


def digests(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``{prefix + name: digest}`` for every float tensor."""
    return {prefix + k: digest(v) for k, v in tensors.items() if v.is_floating_point()}


def load_fixture(method: str, name: str) -> dict[str, torch.Tensor]:
    """tests/golden/<method>/<name>.pt, loaded with weights_only=True."""
    return torch.load(GOLDEN / method / f"{name}.pt", weights_only=True)


def save_fixture(method: str, name: str, data: dict[str, torch.Tensor]) -> Path:
    """Save a dict of tensors (contiguous CPU copies) as tests/golden/<method>/<name>.pt."""
    path = GOLDEN / method / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {}
    for k, v in data.items():
        t = torch.as_tensor(v)
        clean[k] = t.detach().cpu().clone().contiguous()
    torch.save(clean, path)
    return path


def copy_patched(src: Path, dst: Path, patches: dict[str, list[tuple[str, str]]]) -> None:
    """Copy the official tree ``src`` to ``dst`` and apply literal replacements per file (each must match)."""
    import shutil

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for rel, subs in patches.items():
        path = dst / rel
        text = path.read_text()
        for old, new in subs:
            if old not in text:
                raise RuntimeError(f"patch target not found in {rel}: {old!r}")
            text = text.replace(old, new)
        path.write_text(text)


def pytorchcv_name(fp_model: nn.Module, official_name: str) -> str:
    """Translate a name in a model rebuilt by the official ``quantize_model`` (which turns every nn.Sequential
    into a new one, so its children are named 0, 1, ...) back to the FP model's names: each index under a
    Sequential of ``fp_model`` becomes that child's name. Parts below a module the FP model lacks (the
    QuantAct inside the ``Sequential(ReLU, QuantAct)`` that replaces a ReLU) are kept."""
    parts = official_name.split(".")
    module: nn.Module | None = fp_model
    out = []
    for part in parts:
        if module is not None and isinstance(module, nn.Sequential) and part.isdigit():
            name, module = list(module.named_children())[int(part)]
            out.append(name)
            continue
        out.append(part)
        module = getattr(module, part, None) if module is not None else None
        if not isinstance(module, nn.Module):
            module = None
    return ".".join(out)
