"""benchmarks/gpu.py, the one-GPU benchmark, runs end to end on the CPU (--quick): every row of
its table is printed and written, and the projected hours follow from the measured figures."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

from conftest import REPO

EXPERIMENTS = ("celeba32", "imagenet224", "celeba32-table1", "celeba32-soteria-sweep")
QUICK_ESTIMATES = ("none", "clipping (global)", "soteria 80%")
SIZES = ("32x32", "224x224")


def fastest(rows: list[dict], measure: str, size: int) -> float:
    return min(r["seconds"] for r in rows if r["measure"] == measure and r["size"] == size
               and r["seconds"] is not None)


def test_quick_cpu_run_prints_every_row_and_projects_from_its_figures(tmp_path):
    out_json = tmp_path / "out.json"
    run = subprocess.run([sys.executable, "benchmarks/gpu.py", "--device", "cpu", "--quick",
                          "--threads", "1", "--json", str(out_json)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    text = run.stdout

    # The table: each measured row, at both sizes, for both ways (or n/a with a reason).
    for size in SIZES:
        for estimate in QUICK_ESTIMATES:
            for way in ("loop", "batched"):
                assert re.search(rf"^evaluation, {re.escape(estimate)} +{size} {way} ", text,
                                 re.M), (estimate, size, way, text)
        for way in ("loop", "batched"):
            assert re.search(rf"^Adam step, none +{size} {way} ", text, re.M), (size, way)
    for step in ("critic", "generator"):
        assert re.search(rf"^GAN {step} step \(batch 64\) +32x32 train ", text, re.M), text
    assert re.search(r"^GAN epoch .*extrapolated: 2543 critic \+ 508\.6 generator steps", text,
                     re.M), text
    assert "channel_width 4 (real: 128), random weights" in text  # the stand-in, said
    for name in EXPERIMENTS:
        assert re.search(rf"^{re.escape(name)} +\d+x\d+ +50 +\d+ +[\d.]+ +[\d.]+ +[\d.]+$",
                         text, re.M), (name, text)

    # The JSON: every row measured (the loop always is), seconds positive and finite.
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left
    data = json.loads(out_json.read_text())
    rows = data["rows"]
    assert len(rows) == 2 * (2 * len(QUICK_ESTIMATES) + 2) + 3
    for r in rows:
        if r["seconds"] is None:
            assert r["way"] == "batched" and r["note"], r  # n/a always says why
        else:
            assert math.isfinite(r["seconds"]) and r["seconds"] > 0, r
            assert r["peak_bytes"] >= 0, r
    assert all(r["seconds"] is not None for r in rows if r["way"] == "loop")
    gan = data["gan"]
    assert gan["epoch_seconds"] == gan["critic_steps_per_epoch"] * gan["critic_step_seconds"] \
        + gan["generator_steps_per_epoch"] * gan["generator_step_seconds"]

    # The projection of celeba32-table1 by hand: 50 images, one defence (none); four GGL-Adam
    # attacks and the noise-gradient control at 2500 Adam steps, the prior's 32 evaluations,
    # label-only free; 100 GAN epochs.
    table1 = data["projection"]["celeba32-table1"]
    adam, evaluation = fastest(rows, "Adam step, none", 32), fastest(rows, "evaluation, none", 32)
    hours = 50 * (5 * 2500 * adam + 32 * evaluation) / 3600
    assert math.isclose(table1["attacks_total_hours"], hours, rel_tol=1e-9)
    assert math.isclose(table1["gan_hours"], 100 * gan["epoch_seconds"] / 3600, rel_tol=1e-9)
    assert data["projection"]["imagenet224"]["gan_hours"] == 0  # BigGAN is not trained
    assert set(data["projection"]) == set(EXPERIMENTS)
