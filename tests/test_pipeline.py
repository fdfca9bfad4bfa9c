"""Snakemake and DVC run the same stages from the one registry, and stay in step; the stages'
code writes exactly the files the registry declares."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, assert_tracks, run_stage, tiny_params
from test_report import grid, leading_number, tables_of

from ggl.config import load_params
from ggl.pipeline.registry import all_stages, check_dvc_yaml, kind
from ggl.worker import LOG_MARK

DP = {"kind": "dp-sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 0.05}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out


def summary_outputs(cwd: Path, *extra: str) -> set[str]:
    out = run(["snakemake", "--summary", *extra], cwd)
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    return {row[0] for row in rows[1:] if row and row[0]}


def dvc_outs(root: Path) -> set[str]:
    """Every output DVC tracks (outs and metrics), as DVC resolves its templates."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {out.def_path for stage in repo.index.stages for out in stage.outs}


def test_committed_dvc_yaml_is_generated_from_the_registry():
    params = load_params(REPO / "params.yaml")
    assert check_dvc_yaml(params, "params.yaml", REPO / "dvc.yaml") is None
    run(["ggl", "dvc-yaml", "--check"], REPO)


def test_snakemake_plans_exactly_the_dvc_outputs():
    assert_tracks(summary_outputs(REPO), dvc_outs(REPO))


def test_stale_dvc_yaml_is_detected(tmp_path):
    raw = tiny_params()
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "p.yaml")
    run(["ggl", "dvc-yaml", "--params", "p.yaml"], tmp_path)
    assert check_dvc_yaml(params, "p.yaml", tmp_path / "dvc.yaml") is None
    raw["defences"]["extra"] = []
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    out = subprocess.run(["ggl", "dvc-yaml", "--params", "p.yaml", "--check"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode != 0 and "stale" in out.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the workflow with tiny params, run once by Snakemake."""
    root = tmp_path_factory.mktemp("project")
    shutil.copy(REPO / "Snakefile", root)
    shutil.copytree(REPO / "workflow", root / "workflow", symlinks=True)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    shutil.copy(REPO / ".gitignore", root)
    raw = tiny_params()
    raw["threads"] = 1  # every job single-threaded, whatever --cores says (the default's)
    # a GGL attack under a name of the user's: tables and figures go by its method
    raw["attacks"] = {"ggl-adam": raw["attacks"]["ggl-adam"],
                      "my-cmaes": raw["attacks"]["ggl-cmaes"], "idlg": raw["attacks"]["idlg"],
                      **{c: raw["attacks"][c] for c in ("prior", "label-only", "noise-gradient")}}
    # the privacy-utility audit: federated training per defence, and DP-SGD (GroupNorm model)
    raw["model"]["norm"] = "group"
    raw["data"]["test_size"] = 20
    raw["utility"].update(rounds=2, clients=2, local_steps=1, batch_size=4)
    raw["defences"]["dp"] = [DP]
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run(["ggl", "dvc-yaml"], root)
    run(["git", "init", "-q"], root)
    run(["git", "add", "."], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], root)
    run(["snakemake", "--cores", "2"], root)
    return root


def written(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for folder in ("data", "results")
            for p in (root / folder).rglob("*") if p.is_file()}


def test_the_stages_write_exactly_the_files_the_registry_declares(project):
    params = load_params(project / "params.yaml")
    declared = {out for stage in all_stages(params) for out in stage.outs()}
    assert written(project) == declared  # nothing undeclared (no resume.pt left), none missing
    assert summary_outputs(project) == declared
    assert_tracks(declared, dvc_outs(project))


def test_an_attack_is_in_table_2_and_the_convergence_plot_by_its_method(project, monkeypatch):
    table2 = (project / "results/tiny/tables/table2.md").read_text()
    assert "my-cmaes" in table2 and "ggl-adam" in table2 and "idlg" not in table2
    import ggl.stages.aggregate as aggregate

    figures = {}
    monkeypatch.setattr(aggregate.io, "save_figure",
                        lambda path, fig: figures.setdefault(Path(path).name, fig))
    monkeypatch.setattr(aggregate.io, "write_text", lambda path, text: path)
    monkeypatch.setattr(aggregate.io, "write_json", lambda path, obj: path)
    monkeypatch.chdir(project)
    run_stage(load_params(project / "params.yaml"), "aggregate")
    legend = [t.get_text() for t in figures["convergence.png"].axes[0].get_legend().get_texts()]
    assert legend == ["ggl-adam", "my-cmaes"]
    assert figures["ssim.png"].axes[0].get_ylim()[1] <= 1  # points, not bars past the range
    assert figures["lpips.png"].axes[0].get_ylim()[0] >= 0


def test_the_tables_are_readable_html_with_every_row(project):
    tables = project / "results/tiny/tables"
    table3 = pd.read_csv(tables / "table3.csv")
    psnr = grid(tables_of((tables / "table3.html").read_text())[0])
    assert set(psnr) == set(zip(table3["attack"], table3["defence"], strict=True))
    for row in table3.itertuples():
        assert leading_number(psnr[(row.attack, row.defence)]) == pytest.approx(
            row.psnr_db_pm1_mean, rel=1e-3)
    table2 = tables_of((tables / "table2.html").read_text())[0]
    assert [r[0] for r in table2[1:]] == ["ggl-adam", "my-cmaes"]
    summary = tables_of((tables / "summary.html").read_text())[0]
    assert len(summary) - 1 == len(table3)
    overview = (tables / "overview.html").read_text()
    # leakage first (best GGL, then best baseline, per defence), then GGL against baselines
    # a dp-sgd defence is named with the epsilon of its attacked update, everywhere
    epsilon = json.loads((project / "results/tiny/truth/dp/img0.json").read_text())[
        "defence"]["epsilon"]
    defences = ["none", "noise", "clipping", f"dp (ε={epsilon:.3g})"]
    assert [r[0] for r in tables_of(overview)[0][1:]] == [d for d in defences for _ in range(2)]
    assert [r[0] for r in tables_of(overview)[1][2:]] == defences
    leakage = pd.read_csv(tables / "leakage.csv")
    assert {"prior", "label-only", "noise-gradient"} <= set(leakage["attack"])
    assert leakage["psnr_db_pm1_above_control_low"].notna().all()
    quality = yaml.safe_load((project / "results/tiny/generator/quality.json").read_text())
    assert f"{quality['confidence_ratio']:.4g}" in overview
    assert "over 2 private images" in overview and "http" not in overview


def test_every_job_runs_on_its_stage_threads_whatever_the_cores(project):
    """A job's torch threads come from params and the registry, never from --cores: the GAN
    job of a threads-1 project runs on 1 thread under `--cores 2`, as DVC would run it."""
    params = load_params(project / "params.yaml")
    plan = run(["snakemake", "-n", "-p", "--forceall", "--cores", "8"], project).stdout
    planned = {name: int(n) for n, name in re.findall(r"GGL_THREADS=(\d+) ggl (\S+)", plan)}
    assert planned and all(kind(name).job_threads(params) == n for name, n in planned.items())
    assert planned["train-gan"] == 1 and kind("train-gan").threads > 1
    log = (project / "logs/tiny/train-gan.log").read_text()
    assert "torch CPU threads: 1" in log


def test_every_job_leaves_a_benchmark_file_that_stage_seconds_sums(project):
    params = load_params(project / "params.yaml")
    stages = all_stages(params)
    assert all((project / s.benchmark()).is_file() for s in stages)
    out = run([sys.executable, str(REPO / "benchmarks/stage_seconds.py")], project).stdout
    total = next(line for line in out.splitlines() if line.startswith("all jobs"))
    assert int(total.split()[2]) == len(stages)
    assert any(line.startswith("attack my-cmaes ") for line in out.splitlines())
    rows = [line.split() for line in out.splitlines()
            if line.split() and any(line.startswith(s.kind.name) for s in stages)]
    forked = sum(LOG_MARK in (project / s.log()).read_text() for s in stages)
    assert sum(int(row[-2]) for row in rows) == forked  # the forked column, by the jobs' logs


def test_after_snakemake_both_runners_have_nothing_to_do(project):
    plan = run(["snakemake", "-n"], project)
    assert "Nothing to be done" in plan.stdout + plan.stderr
    assert "up to date" in run(["dvc", "status"], project).stdout
    out = run(["dvc", "repro"], project)
    assert "Running stage" not in out.stdout


def _repro_after(project: Path, change) -> set[str]:
    params_file = project / "params.yaml"
    raw = yaml.safe_load(params_file.read_text())
    change(raw)
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = run(["dvc", "repro"], project)
    return {line.split("'")[1] for line in out.stdout.splitlines()
            if line.startswith("Running stage")}


ATTACKS = ("ggl-adam", "my-cmaes", "idlg", "prior", "label-only", "noise-gradient")


def test_dvc_exp_run_on_one_dp_sgd_setting_reruns_only_that_settings_jobs(project):
    """Changing one defence reruns its utility, gradient and attack jobs; the metrics stage
    reads every defence's runs, so it reruns too, and the aggregate."""
    setting = "defences.dp=[{kind: dp-sgd, noise_multiplier: 2.0, max_grad_norm: 1.0, " \
              "delta: 0.05}]"
    out = run(["dvc", "exp", "run", "-S", setting], project)
    ran = {line.split("'")[1] for line in out.stdout.splitlines()
           if line.startswith("Running stage")}
    assert ran == {"utility@dp", "gradients@dp", *(f"attack@dp-{a}" for a in ATTACKS),
                   "metrics", "aggregate"}
    summary = json.loads((project / "results/tiny/utility/dp/summary.json").read_text())
    assert summary["dp"]["noise_multiplier"] == 2.0 and summary["dp"]["epsilon"] > 0
    frontier = pd.read_csv(project / "results/tiny/tables/privacy_utility.csv")
    assert set(frontier["defence"]) == {"none", "noise", "clipping", "dp"}
    assert frontier.set_index("defence")["epsilon"]["dp"] == pytest.approx(
        summary["dp"]["epsilon"])


def test_changing_the_cmaes_population_reruns_only_cmaes(project):
    def change(raw):
        raw["attacks"]["my-cmaes"]["optimiser"]["popsize"] = 6

    ran = _repro_after(project, change)
    assert ran == {f"attack@{d}-my-cmaes" for d in ("none", "noise", "clipping", "dp")} | {
        "metrics", "aggregate"}


def test_snakemake_sees_a_params_change_too(project):
    run(["snakemake", "--touch", "--cores", "1"], project)  # adopt what DVC re-ran above
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["attacks"]["idlg"]["budget"] = 4
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    plan = run(["snakemake", "-n", "--quiet", "rules"], project).stdout
    assert "attack" in plan and "gradients" not in plan and "train_gan" not in plan


def test_the_report_builds(project):
    run(["snakemake", "--report", "results/tiny/report.html"], project)
    html = (project / "results/tiny/report.html").read_text(errors="ignore")
    assert "reconstructions_img0" in html and "stand" in html.lower()
    assert all(f"{name}.html" in html for name in ("overview", "table2", "table3", "summary"))
    assert "privacy_utility.png" in html and "privacy_utility.html" in html


def test_changing_threads_reruns_the_stages_whose_numbers_depend_on_them(project):
    """The GAN's weights (and so every generator attack) and the metrics depend on their
    thread count; the one-thread stages before them do not rerun."""
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["threads"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    plan = run(["snakemake", "-n", "--quiet", "rules"], project).stdout
    assert "train_gan" in plan and "metrics" in plan
    assert "gradients" not in plan and "split" not in plan
