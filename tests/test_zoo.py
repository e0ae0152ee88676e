"""The model zoo, weights resolution, test-set loading/caching and the Evaluator (all offline, fast)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from torch import nn

from dfqbench.errors import DfqbenchError
from dfqbench.zoo import (
    KNOWN_MODELS,
    NORMALIZATIONS,
    Evaluator,
    ModelInfo,
    Normalization,
    build_model,
    clear_memory_cache,
    load_pretrained,
    load_test_set,
    model_info,
    parse_normalization,
    resolve_weights_file,
)
from dfqbench.zoo import data as zoo_data
from dfqbench.zoo import models as zoo_models
from dfqbench.zoo.tiny import build_tiny

IMAGENET = NORMALIZATIONS["imagenet"]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No DFQBENCH_* from the caller's shell, a private cache dir and an empty in-process memo."""
    for var in ("DFQBENCH_WEIGHTS", "DFQBENCH_WEIGHTS_DIR", "DFQBENCH_WEIGHTS_NORM", "DFQBENCH_DATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DFQBENCH_CACHE", str(tmp_path / "cache"))
    clear_memory_cache()
    yield
    clear_memory_cache()


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- normalisation -------------------------------------------------------------------------------------


def test_normalization_presets_and_explicit():
    assert parse_normalization("imagenet") == Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "imagenet")
    assert parse_normalization("CIFAR10").std == (0.2470, 0.2435, 0.2616)
    assert parse_normalization("cifar10_pytorchcv").std == (0.2023, 0.1994, 0.2010)
    assert parse_normalization("cifar100").mean == (0.5071, 0.4867, 0.4408)
    custom = parse_normalization("0.5,0.5,0.5/0.25, 0.25,0.25")
    assert custom == Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "custom")


@pytest.mark.parametrize("text", ["imagnet", "0.5,0.5/0.2,0.2,0.2", "a,b,c/1,1,1", "0.5,0.5,0.5/0.2,0,0.2", "1,2,3"])
def test_normalization_bad_text(text):
    with pytest.raises(DfqbenchError) as excinfo:
        parse_normalization(text)
    message = _one_line_error(excinfo)
    assert repr(text) in message and "m1,m2,m3/s1,s2,s3" in message
    if "/" not in text:
        assert all(name in message for name in NORMALIZATIONS)


# --- model info and building ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, dataset, classes, size, mean, std",
    [
        ("resnet20_cifar10", "cifar10", 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        ("resnet20_cifar100", "cifar100", 100, 32, (0.5071, 0.4867, 0.4408), (0.2675, 0.2557, 0.2761)),
        ("resnet18", "imagenet", 1000, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ("resnet50", "imagenet", 1000, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ("mobilenetv2_w1", "imagenet", 1000, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ("tiny_cifar10", "tiny", 10, 8, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ],
)
def test_model_info_known(name, dataset, classes, size, mean, std):
    info = model_info(name)
    assert (info.name, info.dataset, info.num_classes, info.input_size) == (name, dataset, classes, size)
    assert (info.normalization.mean, info.normalization.std) == (mean, std)
    assert KNOWN_MODELS[name] == info


def test_model_info_any_pytorchcv_name():
    info = model_info("resnet56_cifar100")
    assert (info.dataset, info.num_classes, info.input_size, info.normalization.name) == ("cifar100", 100, 32, "cifar100")
    info = model_info("preresnet20_cifar10")
    assert (info.dataset, info.num_classes, info.normalization.name) == ("cifar10", 10, "cifar10")
    info = model_info("resnet34")
    assert (info.dataset, info.num_classes, info.input_size, info.normalization) == ("imagenet", 1000, 224, IMAGENET)
    assert model_info("inceptionv3").input_size == 299  # from pytorchcv's model_metainfos.csv
    for name in ("resnet20_svhn", "resnet18_cub"):
        with pytest.raises(DfqbenchError, match="not an ImageNet/CIFAR classifier"):
            model_info(name)


@pytest.mark.parametrize("name, suggestion", [("resnet20_cifar", "resnet20_cifar10"), ("resnet56_cifar1", "resnet56_cifar10")])
def test_model_info_unknown_name_suggests(name, suggestion):
    with pytest.raises(DfqbenchError) as excinfo:
        model_info(name)
    message = _one_line_error(excinfo)
    assert f"unknown model {name!r}" in message and f"did you mean {suggestion!r}" in message
    assert "resnet18" in message and "any pytorchcv model name" in message


def test_build_model_random_init():
    net = build_model("resnet20_cifar10")
    assert sum(p.numel() for p in net.parameters()) == 272474  # pytorchcv's metainfo weight count
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    tiny_a, tiny_b = build_model("tiny_cifar10"), build_tiny(seed=0)
    assert set(tiny_a.state_dict()) == set(tiny_b.state_dict())


# --- weights resolution and loading ----------------------------------------------------------------------


def _assert_frozen(loaded):
    assert not loaded.model.training
    assert all(not p.requires_grad for p in loaded.model.parameters())


def test_load_weights_file(tmp_path):
    source = build_tiny(seed=3)
    path = tmp_path / "tiny.pth"
    torch.save(source.state_dict(), path)
    loaded = load_pretrained("tiny_cifar10", weights=str(path))
    _assert_frozen(loaded)
    assert loaded.teacher_id == {"source": "file", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    assert loaded.normalization == IMAGENET


def test_load_wrapped_state_dict_with_module_prefix(tmp_path):
    state = build_model("resnet20_cifar10").state_dict()
    path = tmp_path / "r20.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    loaded = load_pretrained("resnet20_cifar10", weights=str(path), weights_norm="imagenet")
    assert torch.equal(loaded.model.state_dict()["output.weight"], state["output.weight"])
    assert loaded.normalization == IMAGENET and loaded.info.normalization.name == "cifar10"


def test_weights_dir_pytorchcv_style_name(tmp_path):
    torch.save(build_tiny().state_dict(), tmp_path / "other.pth")
    wanted = tmp_path / "resnet20_cifar10-0597-9b0024ac.pth"
    torch.save(build_model("resnet20_cifar10").state_dict(), wanted)
    (tmp_path / "resnet20_cifar100-2964-a5322afe.pth").write_bytes(b"not this one")
    assert resolve_weights_file("resnet20_cifar10", None, str(tmp_path)) == wanted
    loaded = load_pretrained("resnet20_cifar10", weights_dir=str(tmp_path))
    assert loaded.teacher_id["source"] == "file" and loaded.normalization.name == "cifar10"
    torch.save(build_model("resnet20_cifar10").state_dict(), tmp_path / "resnet20_cifar10.pth")
    assert resolve_weights_file("resnet20_cifar10", None, str(tmp_path)) == tmp_path / "resnet20_cifar10.pth"
    with pytest.raises(DfqbenchError) as excinfo:
        resolve_weights_file("resnet20_cifar100", None, str(tmp_path / "nothing-here"))
    assert "weights folder" in _one_line_error(excinfo)


def test_missing_weights_file_error(tmp_path):
    missing = tmp_path / "x.pth"
    with pytest.raises(DfqbenchError) as excinfo:
        load_pretrained("resnet20_cifar10", weights=str(missing))
    assert _one_line_error(excinfo) == (
        f"weights file '{missing}' (from --weights) not found; give an existing file with --weights FILE "
        "(or DFQBENCH_WEIGHTS), or a folder holding resnet20_cifar10.pth with --weights-dir DIR "
        "(or DFQBENCH_WEIGHTS_DIR)"
    )


def test_weights_dir_without_match_names_expected_files(tmp_path):
    (tmp_path / "resnet20_cifar100.pth").write_bytes(b"")
    with pytest.raises(DfqbenchError) as excinfo:
        load_pretrained("resnet20_cifar10", weights_dir=str(tmp_path))
    message = _one_line_error(excinfo)
    assert "resnet20_cifar10.pth" in message and "resnet20_cifar10-NNNN-<hash>.pth" in message and str(tmp_path) in message


def test_weights_that_do_not_fit_or_are_not_a_state_dict(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(build_tiny().state_dict(), path)
    with pytest.raises(DfqbenchError) as excinfo:
        load_pretrained("resnet20_cifar10", weights=str(path))
    message = _one_line_error(excinfo)
    assert str(path) in message and "does not fit model 'resnet20_cifar10'" in message and "missing keys" in message
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(DfqbenchError) as excinfo:
        load_pretrained("tiny_cifar10", weights=str(junk))
    assert "cannot read weights file" in _one_line_error(excinfo)


def test_env_var_routes(tmp_path, monkeypatch):
    state = build_model("resnet20_cifar10").state_dict()
    file_a, folder = tmp_path / "a.pth", tmp_path / "dir"
    folder.mkdir()
    torch.save(state, file_a)
    torch.save(state, folder / "resnet20_cifar10.pth")
    monkeypatch.setenv("DFQBENCH_WEIGHTS_DIR", str(folder))
    assert resolve_weights_file("resnet20_cifar10", None, None) == folder / "resnet20_cifar10.pth"
    monkeypatch.setenv("DFQBENCH_WEIGHTS", str(file_a))
    assert resolve_weights_file("resnet20_cifar10", None, None) == file_a  # a file beats a folder
    assert resolve_weights_file("resnet20_cifar10", str(folder / "resnet20_cifar10.pth"), None) != file_a
    monkeypatch.setenv("DFQBENCH_WEIGHTS_NORM", "imagenet")
    assert load_pretrained("resnet20_cifar10").normalization == IMAGENET
    assert load_pretrained("resnet20_cifar10", weights_norm="cifar10_pytorchcv").normalization.name == "cifar10_pytorchcv"
    monkeypatch.setenv("DFQBENCH_WEIGHTS", str(tmp_path / "gone.pth"))
    with pytest.raises(DfqbenchError, match="from DFQBENCH_WEIGHTS"):
        load_pretrained("resnet20_cifar10")
    tiny = load_pretrained("tiny_cifar10")  # the tiny model ignores the environment
    assert tiny.teacher_id == {"source": "builtin", "seed": 0, "fit": "lda-2"} and tiny.normalization == IMAGENET
    _assert_frozen(tiny)


def test_download_failure_is_one_line(monkeypatch, capsys):
    import pytorchcv.model_provider

    def offline(name, **kwargs):
        print("Downloading something... download failed, retrying, 4 attempts left")
        raise requests.ConnectionError("Max retries exceeded with url")

    monkeypatch.setattr(pytorchcv.model_provider, "get_model", offline)
    with pytest.raises(DfqbenchError) as excinfo:
        load_pretrained("resnet20_cifar10")
    assert _one_line_error(excinfo).startswith(
        "cannot download pretrained 'resnet20_cifar10' from pytorchcv (offline? ConnectionError); give local weights "
        "with --weights FILE (or DFQBENCH_WEIGHTS) or --weights-dir DIR (or DFQBENCH_WEIGHTS_DIR)"
    )
    assert "retrying" not in capsys.readouterr().out


def test_download_success_identity_uses_default_norm(monkeypatch, tmp_path):
    import pytorchcv.model_provider

    state = build_model("resnet20_cifar10").state_dict()
    torch.save(state, tmp_path / "resnet20_cifar10-0597-9b0024ac.pth")
    monkeypatch.setattr(zoo_models, "PYTORCHCV_CACHE", tmp_path)
    real_get_model = pytorchcv.model_provider.get_model
    monkeypatch.setattr(pytorchcv.model_provider, "get_model", lambda name, **kw: real_get_model(name).train())
    loaded = load_pretrained("resnet20_cifar10", weights_norm="imagenet")
    _assert_frozen(loaded)
    assert loaded.normalization.name == "cifar10"  # weights_norm only applies to local files
    sha = hashlib.sha256((tmp_path / "resnet20_cifar10-0597-9b0024ac.pth").read_bytes()).hexdigest()
    assert loaded.teacher_id == {"source": "pytorchcv", "pytorchcv": "0.0.74",
                                 "file": "resnet20_cifar10-0597-9b0024ac.pth", "sha256": sha}


# --- test sets -----------------------------------------------------------------------------------------


def _write_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (32, 32), seed: int = 0) -> dict:
    """Write random PNGs into root/<class>/; returns {path: (class, HWC array)}."""
    rng, written = np.random.default_rng(seed), {}
    for cls, count in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            path = root / cls / f"{i:03d}.png"
            Image.fromarray(pixels).save(path)
            written[path] = (cls, pixels)
    return written


def _info(classes: int, size: int = 32, dataset: str = "cifar10") -> ModelInfo:
    return ModelInfo("folder_model", dataset, classes, size, IMAGENET)


def test_image_folder_decodes_and_caches(tmp_path, monkeypatch):
    root = tmp_path / "data"
    written = _write_folder(root / "cifar10-test", {"dog": 2, "cat": 3, "zebra": 1})
    test_set = load_test_set(_info(3), str(root))
    assert test_set.images.dtype == torch.uint8 and test_set.images.shape == (6, 3, 32, 32)
    assert test_set.labels.tolist() == [0, 0, 0, 1, 1, 2]  # cat, dog, zebra: sorted folder names
    assert torch.equal(test_set.images[0], torch.from_numpy(written[root / "cifar10-test/cat/000.png"][1]).permute(2, 0, 1))
    assert torch.equal(test_set.images[5], torch.from_numpy(written[root / "cifar10-test/zebra/000.png"][1]).permute(2, 0, 1))
    cache_files = list((tmp_path / "cache").rglob("*"))
    assert [p.suffix for p in cache_files if p.is_file()] == [".pt"]  # written atomically, no temp left

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(zoo_data, "_decode_images", no_decoding)
    assert load_test_set(_info(3), str(root)) is test_set  # in-process memo
    clear_memory_cache()
    again = load_test_set(_info(3), str(root))  # on-disk cache, no decoding
    assert again is not test_set and torch.equal(again.images, test_set.images)
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(root / "cifar10-test/dog/new.png")
    with pytest.raises(AssertionError, match="decoded again"):  # a new file changes the key
        load_test_set(_info(3), str(root))
    monkeypatch.undo()
    monkeypatch.setenv("DFQBENCH_CACHE", str(tmp_path / "cache"))
    assert load_test_set(_info(3), str(root)).images.shape[0] == 7


def test_root_itself_as_image_folder_resizes_odd_sizes(tmp_path, monkeypatch):
    _write_folder(tmp_path / "set", {"a": 1, "b": 1}, size=(40, 36))
    monkeypatch.setenv("DFQBENCH_DATA", str(tmp_path / "set"))
    test_set = load_test_set(_info(2))
    assert test_set.images.shape == (2, 3, 32, 32) and test_set.labels.tolist() == [0, 1]
    with pytest.raises(DfqbenchError, match="has 2 class folders, expected 10"):
        (tmp_path / "other" / "cifar10-test").mkdir(parents=True)
        _write_folder(tmp_path / "other" / "cifar10-test", {"a": 1, "b": 1})
        load_test_set(model_info("resnet20_cifar10"), str(tmp_path / "other"))


def test_streaming_path_matches_cached(tmp_path, monkeypatch):
    _write_folder(tmp_path / "cifar10-test", {"a": 5, "b": 5, "c": 5}, size=(8, 8))
    info = _info(3, size=8)
    cached = load_test_set(info, str(tmp_path))
    monkeypatch.setattr(zoo_data, "CACHE_LIMIT_BYTES", 0)
    clear_memory_cache()
    streamed = load_test_set(info, str(tmp_path))
    assert streamed.images is None and streamed.dataset is not None and len(streamed.dataset) == 15
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).eval()
    for max_images in (None, 7):
        a = Evaluator(cached, IMAGENET, batch_size=4, max_images=max_images).evaluate(model)
        b = Evaluator(streamed, IMAGENET, batch_size=4, max_images=max_images, num_workers=0).evaluate(model)
        assert a == b


def test_bad_data_roots(tmp_path, monkeypatch):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(DfqbenchError) as excinfo:
        load_test_set(model_info("resnet20_cifar10"), str(not_a_dir))
    assert "is not a readable folder" in _one_line_error(excinfo)

    def offline(dataset, root):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(zoo_data, "_torchvision_dataset", offline)
    nope = tmp_path / "nope"
    with pytest.raises(DfqbenchError) as excinfo:
        load_test_set(model_info("resnet20_cifar10"), str(nope))
    assert _one_line_error(excinfo) == (
        f"no CIFAR-10 test set under data root '{nope}' (from --data-root; expected {nope}/cifar10-test/ in "
        "ImageFolder layout or torchvision's cifar-10-batches-py) and download failed (OSError); "
        "set --data-root DIR or DFQBENCH_DATA"
    )
    with pytest.raises(DfqbenchError, match="no ImageNet validation set under data root"):
        load_test_set(model_info("resnet18"), str(nope))


def test_torchvision_route(monkeypatch, tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    fake = SimpleNamespace(data=data, targets=[3, 1, 4, 1])
    monkeypatch.setattr(zoo_data, "_torchvision_dataset", lambda dataset, root: fake)
    test_set = load_test_set(model_info("resnet20_cifar100"), str(tmp_path))
    assert test_set.labels.tolist() == [3, 1, 4, 1] and test_set.num_classes == 100
    assert torch.equal(test_set.images[2], torch.from_numpy(data[2]).permute(2, 0, 1))


# --- evaluator -----------------------------------------------------------------------------------------


class _Recorder(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return self.inner(x)


def _top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 in percent computed directly, as a reference for the Evaluator."""
    with torch.no_grad():
        return 100.0 * (model(images).argmax(1) == labels).float().mean().item()


def test_evaluator_tiny_teacher_top1_and_subset_fixed():
    from dfqbench.zoo.tiny import _normalize

    loaded = load_pretrained("tiny_cifar10")
    test_set = load_test_set(loaded.info)
    full = Evaluator(test_set, loaded.normalization).evaluate(loaded.model)
    assert full == _top1(loaded.model, _normalize(test_set.images), test_set.labels) == 100 * 229 / 256
    recorder = _Recorder(loaded.model).train()
    loaded.model.eval()
    evaluator = Evaluator(test_set, loaded.normalization, batch_size=16, max_images=40, subset_seed=1)
    subset = torch.randperm(256, generator=torch.Generator().manual_seed(1))[:40].sort().values
    top1 = evaluator.evaluate(recorder)
    assert evaluator.num_images == 40 and abs(top1 - _top1(loaded.model, torch.cat(recorder.seen),
                                                         test_set.labels[subset])) < 1e-4  # float32 mean
    first = torch.cat(recorder.seen)
    recorder.seen.clear()
    evaluator.evaluate(recorder)
    assert torch.equal(first, torch.cat(recorder.seen)) and first.shape[0] == 40
    assert recorder.training  # the caller owns train/eval mode
    recorder.seen.clear()
    Evaluator(test_set, loaded.normalization, max_images=40, subset_seed=2).evaluate(recorder)
    assert not torch.equal(first, torch.cat(recorder.seen))
    broken = nn.Sequential(loaded.model, nn.Flatten(), nn.Linear(10, 10)).eval()
    assert Evaluator(test_set, loaded.normalization).evaluate(broken) != full
