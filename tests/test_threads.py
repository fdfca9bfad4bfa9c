"""Start-up and threading: the `ggl` command's help, validation and the Snakefile's parse import
no torch; stages start torch with OpenMP threads that sleep while they wait."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

from ggl.threads import THREAD_ENV, set_thread_env


def test_the_cli_and_the_pipeline_description_import_no_torch():
    code = ("import sys, ggl.cli, ggl.pipeline.registry, ggl.config\n"
            "heavy = {'torch', 'pandas', 'botorch', 'seaborn'} & set(sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_the_thread_environment_is_set_unless_the_user_chose_one():
    env: dict[str, str] = {}
    set_thread_env(env)
    assert env == THREAD_ENV == {"OMP_WAIT_POLICY": "PASSIVE"}
    mine = {"OMP_WAIT_POLICY": "ACTIVE"}
    set_thread_env(mine)
    assert mine == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_a_stage_started_by_ggl_runs_with_the_thread_environment():
    """`ggl` sets it before any stage imports torch (OpenMP reads it once, at start)."""
    out = subprocess.run([sys.executable, "-c",
                          "import os, sys\nfrom ggl.cli import main\n"
                          "os.environ.pop('OMP_WAIT_POLICY', None)\n"
                          "main(['validate'])\n"
                          "print(os.environ.get('OMP_WAIT_POLICY'))\n"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "PASSIVE"


def test_job_threads_are_the_stage_limit_capped_by_params():
    import yaml
    from conftest import tiny_params

    from ggl.config import Params
    from ggl.pipeline.registry import kind

    def threads(n: int, name: str) -> int:
        return kind(name).job_threads(Params.from_raw({**tiny_params(), "threads": n}))

    assert kind("train-gan").threads == 8 and kind("attack").threads == 1
    assert [threads(n, "train-gan") for n in (0, 1, 2, 16)] == [8, 1, 2, 8]
    assert [threads(n, "attack") for n in (0, 1, 2)] == [1, 1, 1]
    assert yaml.safe_load((REPO / "params.yaml").read_text())["threads"] == 1


def test_a_stage_by_hand_or_under_dvc_uses_its_job_threads(tmp_path, monkeypatch):
    """Without GGL_THREADS (DVC, by hand) a stage sets torch to its job threads; the Snakemake
    rules pass the job's threads in GGL_THREADS."""
    import torch

    from ggl.cli import _logger

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("GGL_THREADS", raising=False)
        _logger("by-hand", tmp_path / "a.log", 3)
        assert torch.get_num_threads() == 3
        monkeypatch.setenv("GGL_THREADS", "2")
        _logger("snakemake", tmp_path / "b.log", 3)
        assert torch.get_num_threads() == 2
        assert "torch CPU threads: 2" in (tmp_path / "b.log").read_text()
    finally:
        torch.set_num_threads(before)
