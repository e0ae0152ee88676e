"""The Slurm executor's submission side without a cluster: fake ``sbatch``/``srun``/``scontrol`` scripts on the
PATH record what dfqbench submits (profiles, sbatch options, arrays cut under MaxArraySize). The real
cluster runs in tests/test_slurm.py; these check what a real cluster cannot vary cheaply here."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from dfqbench.cli import main
from dfqbench.errors import DfqbenchError
from dfqbench.launch.manifest import read_manifests
from dfqbench.launch.slurm import load_profiles
from dfqbench.launch.status import status_report


@pytest.fixture(autouse=True)
def private_plan_cache(tmp_path, monkeypatch):
    """Launches add to the plan cache (dfqbench/launch/plancache.py): a private one per test."""
    monkeypatch.setenv("DFQBENCH_PLAN_CACHE", str(tmp_path / "plan-cache"))

FAKE_SBATCH = """#!/bin/sh
n=$(cat "$FAKE_SLURM/next" 2>/dev/null || echo 100)
echo $((n + 1)) > "$FAKE_SLURM/next"
cp "$1" "$FAKE_SLURM/sbatch-$n.sh"
echo "Submitted batch job $n"
"""
FAKE_SCONTROL = """#!/bin/sh
echo "MaxArraySize            = ${FAKE_MAX_ARRAY:-1001}"
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """A folder of fake Slurm commands first on the PATH; each sbatch call leaves its script there."""
    folder = tmp_path / "fake-slurm"
    folder.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scontrol", FAKE_SCONTROL), ("srun", "#!/bin/sh\nexit 0\n")):
        path = folder / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(folder))
    return folder


def scripts(folder: Path) -> list[str]:
    return [p.read_text() for p in sorted(folder.glob("sbatch-*.sh"), key=lambda p: int(p.stem.split("-")[1]))]


PROFILES = """
select:
  - {bits: w3a3, profile: big}
  - {profile: small}
profiles:
  small: {partition: cpu, cpus: 2, mem_gb: 4, time_min: 30, array_parallelism: 2, signal_delay_s: 45}
  big:
    partition: gpu
    gpus: 1
    cpus: 8
    mem_gb: 32.5
    time_min: 240
    array_parallelism: 16
    max_array_size: 2
    setup: ["module load cuda/12"]
    sbatch: {qos: high, constraint: h100}
"""


def test_one_array_per_profile_chunked_with_the_profiles_options(tmp_path, fake_slurm, monkeypatch, capsys):
    """smoke with seeds 0-4: 5 w4a4 runs (profile small) in one array; 5 w3a3 runs (profile big, at most 2 per
    array) in 3 arrays; every sbatch option of the profile is in its script."""
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(PROFILES)
    results = tmp_path / "results"
    args = ["run", "--grid", "smoke", "--seeds", "0-4", "--executor", "slurm", "--profiles", str(profiles),
            "--device", "cpu", "--results", str(results)]
    assert main(args) == 0
    out = capsys.readouterr().out
    submitted = scripts(fake_slurm)
    assert len(submitted) == 4, out
    arrays = [re.findall(r"^#SBATCH --array=(\S+)$", s, re.MULTILINE) for s in submitted]
    # submitit caps the parallelism at the array's size; a chunk of one run is a plain job
    assert arrays == [["0-4%2"], ["0-1%2"], ["0-1%2"], []], out
    small = next(s for s in submitted if "--partition=cpu" in s)
    for flag in ("--cpus-per-task=2", "--mem=4096MB", "--time=30", "--signal=USR2@45", "--job-name=dfq-smoke-small"):
        assert f"#SBATCH {flag}\n" in small, flag
    big = next(s for s in submitted if "--partition=gpu" in s)
    for flag in ("--gpus-per-node=1", "--cpus-per-task=8", "--mem=33280MB", "--time=240", "--qos=high",
                 "--constraint=h100"):
        assert f"#SBATCH {flag}\n" in big, flag
    assert "module load cuda/12" in big and "submitit.core._submit" in big

    manifest = read_manifests(results, "smoke")[0]
    assert len(manifest["runs"]) == 10 and {r["profile"] for r in manifest["runs"]} == {"small", "big"}
    job_ids = [r["job_id"] for r in manifest["runs"]]
    assert job_ids == [f"100_{i}" for i in range(5)] + ["101_0", "101_1", "102_0", "102_1", "103"]
    assert "commit" in manifest["git"] and manifest["profiles_file"] == str(profiles)
    text, counts = status_report(results, "smoke", verbose=True)
    assert counts["smoke"]["pending"] == 10 and "Slurm job 10" in text


def test_arrays_are_cut_under_the_clusters_max_array_size(tmp_path, fake_slurm, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_MAX_ARRAY", "3")
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("profiles: {p: {cpus: 1, array_parallelism: 64}}\nselect: [{profile: p}]\n")
    assert main(["run", "--grid", "smoke", "--seeds", "0-3", "--executor", "slurm", "--profiles", str(profiles),
                 "--device", "cpu", "--results", str(tmp_path / "r")]) == 0
    sizes = [re.search(r"--array=0-(\d+)%", s).group(1) for s in scripts(fake_slurm)]
    assert sizes == ["2", "2", "1"]  # 8 runs as 3 + 3 + 2
    assert "submitted 3 runs as Slurm job 100 (array 0-2)" in capsys.readouterr().out


@pytest.mark.parametrize("text, expected", [
    ("profiles: {p: {cpu: 1}}", "unknown key in profiles.p: 'cpu'; did you mean 'cpus'"),
    ("profiles: {p: {cpus: 1}}\nselect: [{profile: q}]", "select[0] needs profile: one of p"),
    ("profiles: {p: {cpus: 1}}\nselect: [{modle: x, profile: p}]", "'modle'"),
    ("profile: {}", "unknown key 'profile'; choices: profiles, select"),
])
def test_profile_file_errors_name_the_file_key_and_choices(tmp_path, text, expected):
    path = tmp_path / "profiles.yaml"
    path.write_text(text)
    with pytest.raises(DfqbenchError) as info:
        load_profiles(str(path))
    assert str(path) in str(info.value) and expected in str(info.value)


def test_unknown_profile_and_missing_slurm_are_one_line_errors(tmp_path, monkeypatch, capsys):
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("profiles: {p: {cpus: 1}}\n")
    base = ["run", "--grid", "smoke", "--executor", "slurm", "--profiles", str(profiles), "--device", "cpu",
            "--results", str(tmp_path / "r")]
    assert main(base) == 2
    assert "no Slurm profile for gdfq_tiny_cifar10_w4a4_s0" in capsys.readouterr().err
    assert main(base + ["--profile", "q"]) == 2
    assert "unknown Slurm profile" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    assert main(base + ["--profile", "p"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--executor slurm needs Slurm here" in err
    assert not read_manifests(tmp_path / "r", "smoke")


def test_shipped_profiles_cover_every_shipped_paper_grid(tmp_path, monkeypatch):
    """With no file given, the profiles shipped in the package (dfqbench/launch/slurm_profiles.yaml) load, and
    their rules give every paper-grid run a profile (planned with pytorchcv's teachers: a single
    DFQBENCH_WEIGHTS file would skip every other model's cells)."""
    from dfqbench.launch.grid import load_grid
    from dfqbench.launch.plan import LaunchOptions, plan_grid
    from dfqbench.launch.slurm import DEFAULT_PROFILES, PROFILES_ENV

    monkeypatch.delenv("DFQBENCH_WEIGHTS", raising=False)
    monkeypatch.delenv(PROFILES_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # no ./slurm/profiles.yaml here
    profiles = load_profiles()
    assert profiles.path == DEFAULT_PROFILES
    for name in ("paper_table1", "qimera_table2", "adasg_ablation", "quickstart"):
        plan = plan_grid(load_grid(name), LaunchOptions(results=Path("/nonexistent")))
        chosen = {profiles.for_cell(c, None).name for c in plan.runs()}
        assert chosen <= {"cifar", "imagenet", "imagenet_large"} and chosen
    assert profiles.get("test").partition == "debug"


def test_profiles_lookup_order(tmp_path, monkeypatch):
    """--profiles FILE, else $DFQBENCH_SLURM_PROFILES (each must exist), else ./slurm/profiles.yaml, else the
    shipped default."""
    from dfqbench.launch.slurm import DEFAULT_PROFILES, PROFILES_ENV, find_profiles

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(PROFILES_ENV, raising=False)
    assert find_profiles(None) == DEFAULT_PROFILES
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "profiles.yaml").write_text("profiles: {}\n")
    assert find_profiles(None) == Path("slurm/profiles.yaml")
    (tmp_path / "env.yaml").write_text("profiles: {}\n")
    monkeypatch.setenv(PROFILES_ENV, str(tmp_path / "env.yaml"))
    assert find_profiles(None) == tmp_path / "env.yaml"
    assert find_profiles(str(DEFAULT_PROFILES)) == DEFAULT_PROFILES
    with pytest.raises(DfqbenchError, match="not found"):
        find_profiles(str(tmp_path / "missing.yaml"))


def test_runs_per_gpu_packs_runs_into_array_tasks(tmp_path, fake_slurm, capsys):
    """A profile's runs_per_gpu: 2 puts 2 runs in each array task (smoke with seeds 0-2: 6 runs in 3 tasks);
    the manifest keeps one entry per run, with its array task's job id; --runs-per-gpu overrides the profile."""
    import pickle

    from dfqbench.launch.slurm import SlurmTaskGroup

    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("profiles: {p: {cpus: 4, array_parallelism: 8, runs_per_gpu: 2}}\nselect: [{profile: p}]\n")
    base = ["run", "--grid", "smoke", "--seeds", "0-2", "--executor", "slurm", "--profiles", str(profiles),
            "--device", "cpu"]
    assert main(base + ["--results", str(tmp_path / "r")]) == 0
    assert "submitted 6 runs as Slurm job 100 (array 0-2), 2 runs per array task, profile p" in capsys.readouterr().out
    assert [re.findall(r"^#SBATCH --array=(\S+)$", s, re.MULTILINE) for s in scripts(fake_slurm)] == [["0-2%3"]]
    manifest = read_manifests(tmp_path / "r", "smoke")[0]
    assert [r["job_id"] for r in manifest["runs"]] == ["100_0", "100_0", "100_1", "100_1", "100_2", "100_2"]
    assert len({r["run_id"] for r in manifest["runs"]}) == 6
    pickles = sorted((tmp_path / "r" / "slurm" / "smoke" / "p").glob("*_submitted.pkl"))
    groups = [pickle.loads(p.read_bytes()).function for p in pickles]
    assert len(groups) == 3 and all(isinstance(g, SlurmTaskGroup) and len(g.tasks) == 2 for g in groups)
    assert sorted(t.spec.run_id for g in groups for t in g.tasks) == sorted(r["run_id"] for r in manifest["runs"])

    assert main(base + ["--results", str(tmp_path / "r3"), "--runs-per-gpu", "3"]) == 0
    assert "submitted 6 runs as Slurm job 101 (array 0-1), 3 runs per array task" in capsys.readouterr().out
    assert main(base + ["--results", str(tmp_path / "r1"), "--runs-per-gpu", "1"]) == 0
    out = capsys.readouterr().out
    assert "submitted 6 runs as Slurm job 102 (array 0-5), profile p" in out and "per array task" not in out

    profiles.write_text("profiles: {p: {cpus: 1, runs_per_gpu: 0}}\nselect: [{profile: p}]\n")
    with pytest.raises(DfqbenchError, match=r"profiles.p.runs_per_gpu must be an integer >= 1, not 0"):
        load_profiles(str(profiles))


def test_task_group_checkpoint_stops_its_workers_and_requeues_the_same_runs(tmp_path):
    """What submitit calls on USR2: every live worker gets SIGINT and is waited for, and a fresh group with the
    same runs (no process handles: it is pickled) is what gets requeued."""
    import pickle
    import subprocess
    import sys

    from dfqbench.launch.grid import load_grid
    from dfqbench.launch.plan import LaunchOptions, plan_grid
    from dfqbench.launch.slurm import SlurmTaskGroup
    from dfqbench.launch.task import GridTask

    plan = plan_grid(load_grid("smoke"), LaunchOptions(results=tmp_path / "r", device="cpu"))
    tasks = [GridTask(c.request, c.spec, "smoke") for c in plan.to_launch()[:2]]
    group = SlurmTaskGroup(tasks, 2)
    waits = ("import signal, time; signal.signal(signal.SIGINT, lambda *a: exit(7)); print('ready', flush=True); "
             "time.sleep(60)")
    workers = [subprocess.Popen([sys.executable, "-c", waits], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    assert all(w.stdout.readline() == "ready\n" for w in workers)
    group._procs = workers + [subprocess.Popen([sys.executable, "-c", "pass"])]
    group._procs[-1].wait()
    delayed = group.checkpoint()
    assert [w.returncode for w in workers] == [7, 7]
    fresh = delayed.function
    assert isinstance(fresh, SlurmTaskGroup) and fresh is not group and fresh._procs == []
    assert [t.spec.run_id for t in fresh.tasks] == [t.spec.run_id for t in tasks] and fresh.runs_per_gpu == 2
    assert [t.spec.run_id for t in pickle.loads(pickle.dumps(group)).tasks] == [t.spec.run_id for t in tasks]


def test_jobs_pickled_with_the_old_task_module_names_still_load():
    """Slurm jobs pickled before the task wrappers moved to dfqbench.launch.slurm name them
    ``dfqbench.launch.task.<Class>``: they still unpickle, to the same classes, with a DeprecationWarning
    (a compatibility name for one release)."""
    import pickle

    from dfqbench.launch.slurm import SlurmGridTask, SlurmTaskGroup

    for job in (SlurmGridTask(None), SlurmTaskGroup([], 1)):
        name = type(job).__name__
        new = pickle.dumps(job, protocol=0)
        assert f"dfqbench.launch.slurm\n{name}\n".encode() in new
        old = new.replace(b"dfqbench.launch.slurm\n", b"dfqbench.launch.task\n")
        with pytest.warns(DeprecationWarning, match=f"dfqbench.launch.task.{name} moved to dfqbench.launch.slurm"):
            assert type(pickle.loads(old)) is type(job)
