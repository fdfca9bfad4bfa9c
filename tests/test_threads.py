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
