"""Same params, same machine: the same bytes wherever the project lies, whatever --cores and
whether the jobs fork from the warm worker or start their own process; a finished project
copied to a fresh clone replans nothing; a params path is data, never shell."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_params
from test_experiments import copy_workflow
from test_worker import stop_workers, worker_env

from ggl.worker import LOG_MARK

HOSTILE_NAME = "my params $(touch PWNED).yaml"


def snakemake(cwd: Path, *args: str, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess:
    out = subprocess.run(["snakemake", *args], cwd=cwd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, f"snakemake {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out


def small_params() -> dict:
    raw = tiny_params()
    raw["defences"] = {"none": [], "clipping": raw["defences"]["clipping"]}
    raw["attacks"] = {a: raw["attacks"][a] for a in ("ggl-adam", "idlg", "prior", "label-only",
                                                      "noise-gradient")}
    return raw


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same params run in two copies at different paths, the second through a params file
    whose name holds a space and a command substitution, and on --cores 1 (every job's threads
    come from params: 1 here, as in the default); the first forks its jobs from a worker (its
    own), the second starts a process per job."""
    base = tmp_path_factory.mktemp("reproducible")
    first, second = copy_workflow(base / "first"), copy_workflow(base / "elsewhere" / "second")
    raw = small_params()
    assert raw["threads"] == 1
    text = yaml.safe_dump(raw, sort_keys=False)
    (first / "params.yaml").write_text(text)
    (second / HOSTILE_NAME).write_text(text)
    tmp = base / "tmp"
    try:
        snakemake(first, "--cores", "2", env=worker_env(tmp))
    finally:
        stop_workers(tmp)
    snakemake(second, "--cores", "1", "--configfile", HOSTILE_NAME,
              env=worker_env(tmp, GGL_WORKER="0"))
    return base, first, second


def test_a_params_path_with_a_space_and_a_substitution_runs_and_executes_nothing(runs):
    base, _, second = runs
    assert (second / "results/tiny/headline.json").is_file()
    assert not list(base.rglob("PWNED")) and not Path("PWNED").exists()


def outputs(root: Path) -> dict[str, bytes]:
    """Every .pt and .png and every table (CSV, Markdown) a run wrote."""
    return {str(p.relative_to(root)): p.read_bytes() for folder in ("data", "results")
            for p in sorted((root / folder).rglob("*"))
            if p.suffix in (".pt", ".png", ".csv", ".md") and p.is_file()}


def forked(root: Path) -> int:
    """How many of a run's jobs forked from the worker, by their logs."""
    return sum(LOG_MARK in log.read_text()
               for log in (root / "logs").rglob("*.log"))


def test_two_runs_at_different_paths_write_the_same_bytes(runs):
    _, first, second = runs
    assert forked(first) > 10 and forked(second) == 0
    a, b = outputs(first), outputs(second)
    assert sorted(a) == sorted(b) and len(a) > 20
    measured = "results/tiny/timings.csv"  # wall-clock seconds, kept out of every other table
    assert [name for name in a if a[name] != b[name] and name != measured] == []


def test_a_finished_project_copied_into_a_fresh_clone_replans_nothing(runs, tmp_path):
    _, first, _ = runs
    clone = copy_workflow(tmp_path / "clone")
    now = time.time()
    for path in clone.rglob("*"):  # a fresh checkout: every file of the code is new
        os.utime(path, (now, now), follow_symlinks=False)
    shutil.copy(first / "params.yaml", clone)
    for folder in ("data", "results"):  # the outputs, with their times
        shutil.copytree(first / folder, clone / folder, copy_function=shutil.copy2)
    plan = snakemake(clone, "-n")
    assert "Nothing to be done" in plan.stdout + plan.stderr, plan.stdout


def test_config_overrides_are_refused_with_a_message(runs):
    _, first, _ = runs
    out = subprocess.run(["snakemake", "-n", "--config", "seed=5"], cwd=first,
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "--config" in out.stdout + out.stderr and "--configfile" in out.stdout + out.stderr
