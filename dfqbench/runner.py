"""From a run request (:class:`dfqbench.request.RunRequest`: CLI flags, API keywords, a grid cell or a task) to a
finished record.

Every input is validated — method, model, bits, protocol, overrides, weights, data, device, and that the
results folder is a folder this process can write — before anything is written, so bad input leaves no run
folder behind. A run whose record exists is skipped (``restart`` starts it from scratch instead). A run is
trained under its lease (:mod:`dfqbench.store.lease`; a grid task takes it before calling :func:`run`), so a
single run and a grid never train the same run at once; under the lease, temp files that a killed process
left are removed before training starts. The record carries the stamp of the method code that trained it
(:func:`dfqbench.plugins.method_code`, taken when training starts); a done run whose code changed since is
*stale* (:func:`dfqbench.store.codestamp.code_state`) and is trained again from scratch with ``rerun_stale``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import TYPE_CHECKING, Any, Iterator

import torch

from dfqbench.core.engine import resolve_engine
from dfqbench.blocks.interface import Method
from dfqbench.plugins import code_changed_since_loaded, load_methods, method_code
from dfqbench.specs.configuration import changes
from dfqbench.core.progress import Progress
from dfqbench.errors import DfqbenchError
from dfqbench.specs.protocols import PROTOCOLS
from dfqbench.quant import QuantConfig, parse_bits, quantize_model
from dfqbench.quant.bn_condition import zero_variance_channels
from dfqbench.request import RunRequest, check_request  # RunRequest also by this name: tasks pickled before it moved
from dfqbench.specs import RunSpec, TrainConfig, apply_overrides
from dfqbench.store import ResultsStore, RunRecord
from dfqbench.store.codestamp import code_state
from dfqbench.store.files import first_line
from dfqbench.store.lease import Lease, describe_lease
from dfqbench.specs.validate import check_finite, check_seed
from dfqbench.zoo import Evaluator, load_pretrained, load_test_set, model_info
from dfqbench.zoo.teacher import Teacher, teacher_identity

if TYPE_CHECKING:
    from dfqbench.core.trainer import PreparedRun


@contextlib.contextmanager
def plugin_errors(what: str) -> Iterator[None]:
    """Method code (a config class's checks, a constructor: a plugin's, possibly) failing is one line, ``what:
    Type: message``, not a traceback; a :class:`DfqbenchError` it raises passes through as it is."""
    try:
        yield
    except DfqbenchError:
        raise
    except Exception as exc:  # noqa: BLE001  (any failure of method code is reported the same way)
        raise DfqbenchError(f"{what}: {first_line(exc)}") from None


def resolve_device(text: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise DfqbenchError(f"invalid device {text!r}: choices are auto, cpu, cuda, cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise DfqbenchError(f"invalid device {text!r}: choices are auto, cpu, cuda, cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DfqbenchError(f"device {text!r} requested but CUDA is not available here; use --device cpu or auto")
    return device


def resolve_settings(method_cls: type[Method], dataset: str, model: str, bits: str, protocol: str,
                     overrides: list[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Defaults → the method's paper presets for this cell → the protocol → the user's dotted overrides."""
    wbits, abits = parse_bits(bits)
    transform = PROTOCOLS.get(protocol)
    reason = method_cls.unsupported_reason(dataset, model, wbits, abits)
    if reason:
        raise DfqbenchError(f"method {method_cls.name!r} does not support {model} at {bits}: {reason}")
    presets = method_cls.paper_protocol(dataset, model, wbits, abits)
    train = {**dataclasses.asdict(TrainConfig()), **presets.get("train", {})}
    method = {**method_cls.default_config(), **presets.get("method", {})}
    if protocol == "quick":
        method = method_cls.quick_protocol(method)
    quant = {"tracker": method_cls.default_tracker, "momentum": 0.9, "first_last_wbits": None,
             "zero_variance_bn": "keep", **presets.get("quant", {})}
    train = transform(train)
    if protocol == "quick":
        train = method_cls.quick_train(train)
    sections = apply_overrides({"train": train, "method": method, "quant": quant}, overrides)
    for section, values in sections.items():  # NaN/inf anywhere: not JSON, and never a valid setting
        for name, value in values.items():
            check_finite(f"{section}.{name}", value)
    TrainConfig(**sections["train"])  # validate
    with plugin_errors(f"invalid {method_cls.name} settings"):  # a plugin's config class validating itself
        method_cls.config_class(**sections["method"])
    QuantConfig(wbits=wbits, abits=abits, **sections["quant"])
    if sections["quant"]["zero_variance_bn"] == "recondition" and method_cls.student_bn_train:
        raise DfqbenchError(f"invalid quant.zero_variance_bn=recondition for {method_cls.name}: its student's BN "
                            "trains in train mode, so the re-expressed variance would enter its running statistics; "
                            "use keep")
    return sections["train"], sections["method"], sections["quant"]


def request_settings(method_cls: type[Method], request: RunRequest) -> tuple[dict, dict, dict]:
    """The request's resolved (train, method, quant) sections (:func:`resolve_settings` for its cell)."""
    info = model_info(request.model)
    return resolve_settings(method_cls, info.dataset, info.name, request.bits, request.protocol,
                            request.overrides)


def build_spec(method_cls: type[Method], request: RunRequest, settings: tuple[dict, dict, dict],
               teacher: Teacher) -> RunSpec | None:
    """The run's spec (hence its id and folder), or None while the teacher's identity is unknown (a pytorchcv
    download not made yet). The one place a spec is built: :func:`prepare` and the grid planner call it."""
    if teacher.teacher_id is None:
        return None
    info = model_info(request.model)
    train, method_config, quant = settings
    default = settings if not request.overrides else request_settings(method_cls, dataclasses.replace(request, overrides=[]))
    changed = changes({"train": train, "method_config": method_config, "quant": quant},
                      {"train": default[0], "method_config": default[1], "quant": default[2]})
    return RunSpec(
        method=method_cls.name, method_version=method_cls.version, model=info.name, dataset=info.dataset,
        bits=request.bits, seed=request.seed, teacher=teacher.teacher_id,
        normalization=dataclasses.asdict(teacher.normalization), quant=quant, train=train,
        method_config=method_config, protocol=request.protocol, changed=changed,
    )


def predict_spec(request: RunRequest) -> RunSpec | None:
    """The spec :func:`prepare` will build for ``request``, without loading the teacher (its file is hashed)."""
    check_seed("seed", request.seed)
    method_cls = load_methods().get(request.method)
    return build_spec(method_cls, request, request_settings(method_cls, request),
                      teacher_identity(request.model, request.weights, request.weights_dir, request.weights_norm))


def prepare(request: RunRequest, progress: Progress | None = None) -> "PreparedRun":
    """Validate the request and build everything the trainer needs; writes nothing (``progress`` is told the
    slow stages: loading the teacher and the test set)."""
    from dfqbench.core.trainer import PreparedRun

    stage = progress.stage if progress is not None else (lambda text: None)

    loggers = check_request(request)  # seed, log_every, engine, loggers (dfqbench.request)
    store = ResultsStore(request.results)
    store.check()  # a file or a read-only folder: one line now, not a traceback after training
    method_cls = load_methods().get(request.method)
    info = model_info(request.model)
    settings = request_settings(method_cls, request)
    device = resolve_device(request.device)
    engine = resolve_engine(request.engine, device)
    stage(f"loading the teacher {info.name}")
    loaded = load_pretrained(info.name, request.weights, request.weights_dir, request.weights_norm)
    stage(f"loading the {info.dataset} test set")
    test_set = load_test_set(info, request.data_root)
    spec = build_spec(method_cls, request, settings, Teacher(loaded.teacher_id, loaded.normalization))
    assert spec is not None  # a loaded teacher always has an identity
    train, method_config, quant = settings
    wbits, abits = parse_bits(spec.bits)
    student = quantize_model(loaded.model, QuantConfig(wbits=wbits, abits=abits, **quant))
    if quant["zero_variance_bn"] == "keep" and progress is not None:
        warning = zero_variance_warning(loaded.model)
        if warning:
            progress.message(warning)
    for p in student.parameters():
        p.requires_grad_(True)
    evaluator = Evaluator(test_set, loaded.normalization, device=device, max_images=train["eval_max_images"])
    stage(f"test set: {test_set.description}; evaluating on {evaluator.num_images} images")
    with plugin_errors(f"method {method_cls.name} could not be built"):
        method = method_cls(method_cls.config_class(**method_config), info.num_classes, info.input_size,
                            info.dataset)
    return PreparedRun(spec=spec, method=method, teacher=loaded.model, student=student, evaluate=evaluator.evaluate,
                       folder=store.folder(spec), device=device, log_every=request.log_every,
                       engine=engine, loggers=loggers)


def zero_variance_warning(teacher: torch.nn.Module) -> str | None:
    """One line when the teacher has BatchNorm channels with zero running variance, which the student's
    fine-tuning amplifies (:mod:`dfqbench.quant.bn_condition`); None otherwise."""
    found = zero_variance_channels(teacher)
    if not found:
        return None
    return (f"note: the teacher has {sum(found.values())} BatchNorm channel(s) with zero running variance (in "
            f"{', '.join(found)}); the student's gradient on their BN weight is 1/sqrt(eps) times larger, so "
            "fine-tuning at a high learning rate or KD weight can diverge (HAST and SynQ do at their released rates); "
            "quant.zero_variance_bn=recondition re-expresses them with the same function")


def is_out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: CUDA's (``torch.OutOfMemoryError``) or the CPU allocator's (a ``RuntimeError``
    "DefaultCPUAllocator: can't allocate memory")."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def _size(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} bytes" if unit == "bytes" else f"{count:.2f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def out_of_memory_message(device: torch.device, exc: BaseException, batch_size: int | None = None,
                          input_size: int | None = None) -> str:
    """One line for a run that did not fit in memory (GPU or host): the device, what was asked and free, the
    batch size and what one batch of input images alone takes, and the fix."""
    import re

    parts = []
    asked = re.search(r"Tried to allocate ([\d.]+ \w+)", str(exc))  # CUDA's caching allocator
    cpu_asked = re.search(r"you tried to allocate (\d+) bytes", str(exc))  # the CPU allocator
    if asked:
        parts.append(f"asked for {asked.group(1)}")
    elif cpu_asked:
        parts.append(f"asked for {_size(int(cpu_asked.group(1)))}")
    if device.type == "cuda":
        try:
            free, total = torch.cuda.mem_get_info(device)
            parts.append(f"{free / 2**30:.2f} of {total / 2**30:.2f} GiB free now")
        except Exception:  # noqa: BLE001  (no CUDA device to ask: the message goes without it)
            pass
    batch = ""
    if batch_size is not None:
        batch = f"; this run's train.batch_size is {batch_size:,}"
        if input_size is not None:
            batch += (f": its {batch_size:,} 3×{input_size}×{input_size} float32 input images alone are "
                      f"{_size(batch_size * 3 * input_size**2 * 4)}, and training keeps each layer's activations "
                      "of them too")
    if isinstance(exc, torch.OutOfMemoryError):
        return (f"CUDA out of memory on {device}" + (f" ({'; '.join(parts)})" if parts else "")
                + "; lower --runs-per-gpu (or the profile's runs_per_gpu) or the batch size (train.batch_size=N)"
                + batch)
    return (f"out of memory on {device}" + (f" ({'; '.join(parts)})" if parts else "")
            + "; lower the batch size (train.batch_size=N) or run where more memory is free" + batch)


def run(request: RunRequest, progress: Progress, restart: bool = False, leased: bool = False,
        rerun_stale: bool = False) -> RunRecord:
    """Validate, skip if done (unless ``restart``, or ``rerun_stale`` and its record is stale), otherwise train
    under the run's lease (resuming from a checkpoint; with ``restart`` or a stale record from scratch) and write
    the record. ``leased``: the caller holds the lease."""
    prepared = prepare(request, progress)
    folder = prepared.folder
    if not restart:
        record = folder.read_record()  # an unreadable record.json: one line naming it and --restart
        if record is not None and not _rerun(record, rerun_stale, progress, folder.path, announce=False):
            return record
    lease = None if leased else Lease(folder.path, f"cli-{os.getpid()}", "cli")
    if lease is not None:
        holder = lease.acquire()
        if holder is not None:
            raise DfqbenchError(f"run {prepared.spec.run_name} is being trained by {describe_lease(holder)}; "
                                "wait for it (dfqbench status) instead of training it twice")
        lease.start()
    try:
        return _train(prepared, progress, restart, rerun_stale)
    finally:
        if lease is not None:
            lease.release()


def _rerun(record: RunRecord, rerun_stale: bool, progress: Progress, path: Any, announce: bool = True) -> bool:
    """Whether a done run is trained again: only when ``rerun_stale`` and its code changed since it ran (said
    when ``announce``; otherwise "already done", with a hint when it is stale)."""
    state = code_state(record.code)
    if state.stale and rerun_stale:
        if announce:
            progress.message(f"stale ({state.reason}): training it again from scratch: {path}")
        return True
    hint = f" (stale: {state.reason}; --rerun-stale trains it again)" if state.stale else ""
    progress.message(f"already done: {path}{hint}")
    return False


def _train(prepared: "PreparedRun", progress: Progress, restart: bool, rerun_stale: bool = False) -> RunRecord:
    """Under the run's lease: start over or clean up, train, and write the record (or error.json)."""
    from dfqbench.core.trainer import Trainer

    folder = prepared.folder
    if not restart:
        record = folder.read_record()  # finished (or retrained) by another process before we took the lease
        if record is not None:
            if not _rerun(record, rerun_stale, progress, folder.path):
                return record
            restart = True  # stale: from scratch (its checkpoint is the old code's too)
    try:
        if restart:
            folder.clear()
        folder.remove_stale_tmp()
        folder.create(prepared.spec)
        progress.message(f"run {prepared.spec.run_name} -> {folder.path.resolve()}")
        code = method_code(type(prepared.method))  # the code this process loaded, which trains it
        if code_changed_since_loaded(type(prepared.method)):
            progress.message(f"warning: {prepared.spec.method}'s code changed on disk after this process loaded it; "
                             "this run uses the loaded code and is stale at once (restart Python to use the edit)")
        record = dataclasses.replace(Trainer(prepared, progress).fit(), code=code)
        folder.write_record(record)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        if is_out_of_memory(exc):  # one line (error.json keeps the traceback); exit status 1
            error = DfqbenchError(out_of_memory_message(prepared.device, exc, prepared.spec.train.get("batch_size"),
                                                        model_info(prepared.spec.model).input_size))
            error.exit_code = 1  # type: ignore[attr-defined]  (a run-time failure, not bad input)
            folder.write_error(error)
            raise error from exc
        folder.write_error(exc)  # best effort: a read-only or full folder cannot take it either
        raise
    return record
