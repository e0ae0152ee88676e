"""One bank batch as bytes and back: the compact pixel formats and the two file formats, never pickle.

A batch file holds ``labels`` (int64), ``losses`` (float32, the synthesis loss before each step) and the images
in the bank's storage: ``images`` (float16 or float32), or for ``uint8`` the quantised ``codes`` with a per image
and channel ``offset`` and ``scale`` (x ≈ offset + code · scale, error ≤ scale / 2). It is a safetensors file
when safetensors is installed (metadata: the bank id and batch index), else a ``torch.save`` of plain tensors
read back with ``weights_only=True``. Decoding always gives float32 images. torch is imported lazily.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from dfqbench.errors import DfqbenchError

if TYPE_CHECKING:
    from torch import Tensor

SAFETENSORS, TORCH = ".safetensors", ".pt"


def has_safetensors() -> bool:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


def preferred_suffix() -> str:
    return SAFETENSORS if has_safetensors() else TORCH


def encode_images(images: "Tensor", storage: str) -> dict[str, "Tensor"]:
    """The stored tensors of float ``images`` (N, C, H, W) in ``storage`` (fp16, uint8 or fp32), on the CPU."""
    import torch

    x = images.detach().to("cpu", torch.float32).contiguous()
    if storage == "fp32":
        return {"images": x}
    if storage == "fp16":
        half = x.half()
        if not torch.isfinite(half).all():
            raise DfqbenchError(f"bank pixels up to {x.abs().max().item():.3g} overflow fp16 (max 65504); use bank "
                                "storage fp32")
        return {"images": half}
    if storage == "uint8":
        low = x.amin(dim=(2, 3))
        scale = ((x.amax(dim=(2, 3)) - low) / 255).clamp_min(torch.finfo(torch.float32).tiny)
        codes = ((x - low[:, :, None, None]) / scale[:, :, None, None]).round().clamp(0, 255).to(torch.uint8)
        return {"codes": codes, "offset": low, "scale": scale}
    raise DfqbenchError(f"unknown bank storage {storage!r}: expected fp16, uint8 or fp32")


def decode_images(tensors: dict[str, "Tensor"], rows: Any = slice(None)) -> "Tensor":
    """The float32 images (of ``rows``) of :func:`encode_images`'s tensors."""
    import torch

    if "images" in tensors:
        return tensors["images"][rows].to(torch.float32)
    codes, offset, scale = tensors["codes"][rows], tensors["offset"][rows], tensors["scale"][rows]
    return offset[:, :, None, None] + codes.to(torch.float32) * scale[:, :, None, None]


def roundtrip(images: "Tensor", storage: str) -> "Tensor":
    """What the bank gives back for ``images`` (float32, on their device): the pixels every later step sees."""
    return decode_images(encode_images(images, storage)).to(images.device)


def encode_batch(images: "Tensor", labels: "Tensor", losses: "Tensor", storage: str, bank_id: str, index: int,
                 suffix: str) -> bytes:
    """The bytes of one batch file (``suffix``: :data:`SAFETENSORS` or :data:`TORCH`)."""
    import torch

    tensors = encode_images(images, storage)
    tensors["labels"] = labels.detach().to("cpu", torch.int64).contiguous()
    tensors["losses"] = losses.detach().to("cpu", torch.float32).contiguous()
    meta = {"bank_id": bank_id, "index": str(index), "storage": storage}
    if suffix == SAFETENSORS:
        from safetensors.torch import save

        return save(tensors, metadata=meta)
    buffer = io.BytesIO()
    torch.save({**tensors, **{f"meta_{k}": v for k, v in meta.items()}}, buffer)
    return buffer.getvalue()


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (an 8-byte little-endian header length, then a JSON header)."""
    from dfqbench.store.files import parse_json

    length = int.from_bytes(data[:8], "little")
    if len(data) < 8 + length:
        raise ValueError("truncated safetensors header")
    header = parse_json(data[8:8 + length])
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def decode_batch(data: bytes, suffix: str) -> tuple[dict[str, "Tensor"], dict[str, str]]:
    """The tensors and metadata of a batch file's bytes; anything unreadable is a ValueError (one line)."""
    import torch

    try:
        if suffix == SAFETENSORS:
            if not has_safetensors():
                raise ValueError("a safetensors file, and safetensors is not installed (pip install safetensors)")
            from safetensors.torch import load

            tensors, metadata = load(data), safetensors_metadata(data)
        else:
            loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            if not isinstance(loaded, dict):
                raise ValueError("not a dict of tensors")
            metadata = {k[5:]: v for k, v in loaded.items() if k.startswith("meta_") and isinstance(v, str)}
            tensors = {k: v for k, v in loaded.items() if not k.startswith("meta_")}
    except Exception as exc:  # noqa: BLE001  (safetensors/torch/JSON errors of a damaged file: all unreadable)
        text = str(exc).strip()
        raise ValueError(f"{type(exc).__name__}: {text.splitlines()[0][:160] if text else ''}") from None
    check_tensors(tensors)
    return tensors, metadata


def check_tensors(tensors: dict[str, Any]) -> None:
    """A batch's tensors have the expected names, dtypes and matching lengths (else a ValueError)."""
    import torch

    expected = {"labels": torch.int64, "losses": torch.float32}
    if "images" in tensors:
        if tensors["images"].dtype not in (torch.float16, torch.float32) or tensors["images"].dim() != 4:
            raise ValueError("images are not a float16/float32 (N, C, H, W) tensor")
    else:
        expected.update(codes=torch.uint8, offset=torch.float32, scale=torch.float32)
    for name, dtype in expected.items():
        value = tensors.get(name)
        if not isinstance(value, torch.Tensor) or value.dtype != dtype:
            raise ValueError(f"no {dtype} tensor {name!r}")
    n = tensors["labels"].shape[0]
    first = tensors.get("images", tensors.get("codes"))
    if first.shape[0] != n:
        raise ValueError(f"{first.shape[0]} images for {n} labels")
