"""Run leases: who is running a run now, so that `status` never shows a dead job as running forever.

A task that starts a run creates ``lease.json`` in the run folder (atomically: a complete temp file hard-
linked into place, which fails if a lease exists) holding its job id, host, pid, a random token and the
time of its last heartbeat; a daemon thread rewrites the heartbeat every ``DFQBENCH_HEARTBEAT_S`` seconds
(default 30) and the task removes the lease when it ends, however it ends short of being killed.

Taking over a lease that is not alive is atomic too, with the same primitive (a hard link fails if its name
exists, also on NFS): a taker first creates the claim ``.lease.takeover.<digest>``, named after the SHA-256 of
the dead lease file's bytes, so of all the processes that judged that very file dead exactly one holds its
claim; that one checks the file is still the one it judged and renames its own lease over it. The others
lose (they read the new lease, which is alive). A claim whose taker died before finishing is itself a dead
version: it is taken over the same way, by a claim named after its own digest.

Staleness rule (what `status` and the launchers use): a lease written on **this host** is alive while its
process is alive (same pid and start time, not a zombie); a lease from **another host** is alive while its heartbeat is younger than
``DFQBENCH_LEASE_STALE_S`` seconds (default 300, ten missed beats; clocks are assumed to agree within a
minute). A run with a lease that is not alive and no record or error died without writing a result
(SIGKILL, node failure, a job killed without the chance to clean up): it is **lost**, and running the grid
again resumes it from its checkpoint. A lease that is alive keeps other launchers off the run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from dfqbench.store.files import parse_json, read_json_object

LEASE_FILE = "lease.json"
CLAIM_PREFIX = ".lease.takeover."
MAX_CLAIM_CHAIN = 8  # claims of claims followed before giving up (each one a taker that died mid-takeover)
HEARTBEAT_ENV = "DFQBENCH_HEARTBEAT_S"
STALE_ENV = "DFQBENCH_LEASE_STALE_S"


def heartbeat_every() -> float:
    return float(os.environ.get(HEARTBEAT_ENV, 30))


def stale_after() -> float:
    return float(os.environ.get(STALE_ENV, 300))


def read_lease(run_dir: Path) -> dict[str, Any] | None:
    """The lease in a run folder, or None (also for an unreadable one or one that is not a JSON object, which
    no live task writes)."""
    return read_json_object(run_dir / LEASE_FILE)


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first), or None without one."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused pid apart."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def pid_alive(pid: int, started: str | None = None) -> bool:
    """True while the process runs: not a zombie (a killed worker whose parent died stays one until it is
    reaped, and ``kill -0`` still succeeds on it) and, when ``started`` is given, not a reused pid."""
    if pid <= 0:
        return False
    if Path("/proc/self/stat").exists():
        fields = _proc_stat(pid)
        if fields is None or fields[0] in ("Z", "X"):
            return False
        return started is None or process_start(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


CLOCK_SKEW_S = 60.0  # hosts' clocks are assumed to agree within a minute


def lease_heartbeat(lease: dict[str, Any], now: float | None = None) -> float | None:
    """The lease's last heartbeat (seconds since the epoch), or None when no live task could have written it:
    not a finite number (``"abc"``, null, a bool), or more than :data:`CLOCK_SKEW_S` in the future (a heartbeat
    in the year 33658 would otherwise hold its run forever)."""
    value = lease.get("heartbeat")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return None
    now = time.time() if now is None else now
    return float(value) if value <= now + CLOCK_SKEW_S else None


def lease_pid(lease: dict[str, Any]) -> int | None:
    """The lease's pid when it is a positive integer (what a live task writes), else None."""
    pid = lease.get("pid")
    return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None


def lease_alive(lease: dict[str, Any], now: float | None = None) -> bool:
    """The staleness rule of the module docstring; a lease with an invalid pid or heartbeat is not alive (no
    live task writes one), so its run shows as lost and can be resumed."""
    if lease.get("host") == socket.gethostname():
        pid = lease_pid(lease)
        started = lease.get("pid_started")
        return pid is not None and pid_alive(pid, started if isinstance(started, str) else None)
    now = time.time() if now is None else now
    heartbeat = lease_heartbeat(lease, now)
    return heartbeat is not None and now - heartbeat < stale_after()


def describe_lease(lease: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    heartbeat = lease_heartbeat(lease, now)
    beat = "no valid heartbeat" if heartbeat is None else f"last heartbeat {now - heartbeat:.0f} s ago"
    return f"job {str(lease.get('job_id'))[:40]} on {str(lease.get('host'))[:80]} (pid {lease.get('pid')!r:.20}), {beat}"


_RETRY = object()
_UNKNOWN_HOLDER = {"job_id": "?", "host": "?", "pid": "?"}


def _read_version(path: Path) -> tuple[str, dict[str, Any] | None] | None:
    """``(SHA-256 of the file's bytes, its JSON object or None)``, or None when there is no file to read: the
    digest names one version of a lease file (every write of a lease is a new token or heartbeat)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:  # a folder where the file belongs (IsADirectoryError), unreadable: a version no task wrote
        data = b"unreadable:" + str(path).encode()
    try:
        value = parse_json(data)
    except ValueError:
        value = None
    return hashlib.sha256(data).hexdigest()[:32], value if isinstance(value, dict) else None


class Lease:
    """The lease of one task on one run folder."""

    def __init__(self, run_dir: Path, job_id: str, executor: str) -> None:
        self.path = run_dir / LEASE_FILE
        self.data = {"job_id": job_id, "executor": executor, "host": socket.gethostname(), "pid": os.getpid(),
                     "pid_started": process_start(os.getpid()), "token": secrets.token_hex(8),
                     "started_at": time.time(), "heartbeat": time.time(),
                     "heartbeat_every_s": heartbeat_every()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> dict[str, Any] | None:
        """Take the lease; returns None on success, else the lease that holds the run (alive, or being taken
        over by another process right now). Of any number of processes calling this at once on one folder,
        exactly one gets None: creating the lease and taking over a dead one both go through one hard link that
        only one process can make (see the module docstring)."""
        from dfqbench.store.files import _umask, cannot_write

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".lease.", suffix=".tmp")
            os.fchmod(fd, 0o666 & ~_umask())  # readable by `status` of colleagues, as every store file
        except OSError as exc:
            raise cannot_write(self.path, exc) from None
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(self.data, handle)
                handle.flush()
                os.fsync(handle.fileno())
            for _ in range(MAX_CLAIM_CHAIN):
                try:
                    os.link(tmp, self.path)  # atomic create-if-absent, also on NFS
                    return None
                except FileExistsError:
                    pass
                seen = _read_version(self.path)
                if seen is None:
                    continue  # released between the link and the read: try to create it again
                digest, holder = seen
                if holder is not None and lease_alive(holder):
                    return holder
                outcome = self._take_over(tmp, digest)
                if outcome is not _RETRY:
                    return outcome
            return read_lease(self.path.parent) or _UNKNOWN_HOLDER
        except OSError as exc:
            raise cannot_write(self.path, exc) from None
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _take_over(self, tmp: str, dead: str) -> dict[str, Any] | None | object:
        """Replace the lease file whose bytes hash to ``dead`` (judged not alive) by ours, if we are the one
        process that makes its claim; None when we did, the holder when another taker did, :data:`_RETRY` when
        the lease changed meanwhile (judge it again)."""
        version, claims = dead, []
        for _ in range(MAX_CLAIM_CHAIN):
            claim = self.path.with_name(CLAIM_PREFIX + version)
            try:
                os.link(tmp, claim)
            except FileExistsError:
                seen = _read_version(claim)
                if seen is None:
                    return _RETRY  # its taker finished and removed it: the lease is another one now
                version, claimant = seen
                if claimant is not None and lease_alive(claimant):
                    return claimant  # another process is taking the lease over right now
                claims.append(claim)  # its taker died mid-takeover: take over its claim
                continue
            claims.append(claim)
            try:
                current = _read_version(self.path)
                if current is None or current[0] != dead:
                    return _RETRY  # released or taken over since we judged it (our claim is removed below)
                os.replace(tmp, self.path)  # only the holder of this claim replaces this version
                return None
            finally:
                for path in claims:
                    path.unlink(missing_ok=True)
        return read_lease(self.path.parent) or _UNKNOWN_HOLDER

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="dfqbench-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        from dfqbench.store.files import StoreError, atomic_write_json

        while not self._stop.wait(self.data["heartbeat_every_s"]):
            current = read_lease(self.path.parent)
            if current is None or current.get("token") != self.data["token"]:
                return  # taken over (we were judged dead): stop writing
            self.data["heartbeat"] = time.time()
            try:
                atomic_write_json(self.path, self.data)
            except StoreError:
                pass  # a full or read-only disk: the run itself fails on its next write and says so

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        current = read_lease(self.path.parent)
        if current is not None and current.get("token") == self.data["token"]:
            try:
                self.path.unlink(missing_ok=True)
            except OSError:
                pass  # a folder made read-only meanwhile: the lease dies with this process (then: lost)
