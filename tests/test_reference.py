"""Reference results: `ggl check-reference` passes a run within the committed tolerance and
fails one that leaves it, naming the figure."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import yaml
from conftest import REPO

from ggl.config import load_params
from ggl.reference import REFERENCE_DIR, compare, leaves

REFERENCE = REPO / REFERENCE_DIR / "digits.yaml"


def reference() -> dict:
    return yaml.safe_load(REFERENCE.read_text())


def check(cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ggl", "check-reference", *args],
                          cwd=cwd, capture_output=True, text=True)


def test_the_default_has_a_reference_for_every_defence_and_metric():
    ref = reference()
    params = load_params(REPO / "params.yaml")
    assert ref["experiment"] == params.experiment
    assert set(ref["headline"]) == {*params.defences, "generator"}
    metrics = {key.rsplit(".", 1)[-1] for key, value in leaves(ref["headline"]).items()
               if not isinstance(value, str)}
    assert metrics == set(ref["tolerance"])


def test_a_run_within_the_tolerance_passes_and_one_beyond_it_fails(tmp_path):
    ref = reference()
    headline = json.loads(json.dumps(ref["headline"]))
    assert compare(headline, ref) == []
    tolerance = ref["tolerance"]["psnr_db_pm1"]
    headline["noise"]["ggl"]["psnr_db_pm1"] += 0.9 * tolerance
    headline["noise"]["ggl"]["attack"] = "another"  # near-equal attacks may swap
    assert compare(headline, ref) == []
    headline["noise"]["ggl"]["psnr_db_pm1"] += 0.2 * tolerance
    assert [p.split(" ")[0] for p in compare(headline, ref)] == ["noise.ggl.psnr_db_pm1"]
    del headline["none"]["baseline"]["ssim"]
    assert "none.baseline.ssim is missing from the run" in compare(headline, ref)


def test_check_reference_command(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path)
    shutil.copytree(REPO / REFERENCE_DIR, tmp_path / REFERENCE_DIR)
    missing = check(tmp_path)
    assert missing.returncode == 2 and "headline.json is missing" in missing.stderr
    ref = reference()
    out = tmp_path / "results/digits/headline.json"
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps(ref["headline"]))
    assert check(tmp_path).returncode == 0
    ref["headline"]["generator"]["confidence_ratio"] += 2 * ref["tolerance"]["confidence_ratio"]
    out.write_text(json.dumps(ref["headline"]))
    failed = check(tmp_path)
    assert failed.returncode == 2 and "generator.confidence_ratio" in failed.stderr
