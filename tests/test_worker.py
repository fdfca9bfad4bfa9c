"""The warm worker (``ggl.worker``): a stage command forked from it behaves as the command in a
process of its own: the same bytes, exit codes, messages and log; where it is off, or none
runs yet, the command runs itself."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_params

from ggl import worker


def worker_env(tmp: Path, **extra: str) -> dict[str, str]:
    """An environment whose worker lives under ``tmp`` (TMPDIR), apart from other tests'."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("GGL_WORKER", "SLURM_JOB_ID")}
    return {**env, "TMPDIR": str(tmp), **extra}


def wait_for_worker(tmp: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not list(tmp.glob("ggl-worker-*/*.sock")):
        assert time.monotonic() < deadline, "no worker socket appeared"
        time.sleep(0.2)


def stop_workers(tmp: Path) -> None:
    """Stop the workers started under ``tmp`` (their pid is in the lock file)."""
    for lock in tmp.glob("ggl-worker-*/*.lock"):
        text = lock.read_text().strip()
        if text:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(text), signal.SIGTERM)


def ggl(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ggl", *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    tmp = Path(tempfile.mkdtemp(prefix="ggl-test-"))  # short: a socket's path has 107 bytes
    yield root, tmp
    stop_workers(tmp)
    shutil.rmtree(tmp, ignore_errors=True)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted((root / "data").rglob("*")) if p.is_file()}


def test_a_stage_forked_from_the_worker_writes_what_its_own_process_writes(project):
    root, tmp = project
    env = worker_env(tmp)
    first = ggl(root, env, "split")  # no worker yet: runs itself and starts one
    assert first.returncode == 0, first.stderr
    assert worker.LOG_MARK not in first.stderr
    alone = files(root)
    wait_for_worker(tmp)
    for path in (root / "data").rglob("*.pt"):
        path.unlink()
    forked = ggl(root, env, "split")
    assert forked.returncode == 0, forked.stderr
    assert worker.LOG_MARK in forked.stderr  # the child's stderr is the caller's
    assert worker.LOG_MARK in (root / "logs/tiny/split.log").read_text()
    assert files(root) == alone and len(alone) >= 3


def test_the_workers_child_keeps_the_commands_exit_codes_and_messages(project):
    root, tmp = project
    env = worker_env(tmp)
    assert ggl(root, env, "split").returncode == 0
    wait_for_worker(tmp)
    wrong = ggl(root, env, "attack", "--defence", "nope", "--attack", "prior")
    assert wrong.returncode == 2
    assert "--defence: 'nope' is not in params" in wrong.stderr
    elsewhere = root.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "params.yaml").write_text((root / "params.yaml").read_text())
    missing = ggl(elsewhere, env, "gradients", "--defence", "none")  # a CWD with no split
    assert missing.returncode == 2 and "inputs are missing" in missing.stderr
    assert not (elsewhere / "results").exists()


def test_a_worker_serves_one_environment_and_none_where_it_is_off(tmp_path, monkeypatch):
    assert not worker.enabled({"GGL_WORKER": "0"})
    assert not worker.enabled({"SLURM_JOB_ID": "42"})  # each SLURM job is its own allocation
    assert worker.enabled({}) == (os.uname().sysname == "Linux")
    path = worker.socket_path()
    assert path.parent.stat().st_mode & 0o777 == 0o700
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert worker.socket_path() != path  # read when torch loads: another worker
    # nobody listens: the command runs itself
    assert worker.run("ggl.cli:main", ["split"], tmp_path / "none.sock") is None
    deep = tmp_path / ("x" * 100)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    with pytest.raises(OSError, match="TMPDIR"):  # the command then runs itself
        worker.socket_path()


def test_without_the_worker_the_command_runs_in_its_own_process(project):
    root, tmp = project
    out = ggl(root, worker_env(tmp, GGL_WORKER="0"), "split")
    assert out.returncode == 0, out.stderr
    time.sleep(1)
    assert not list(tmp.glob("ggl-worker-*/*.lock"))  # none was started
