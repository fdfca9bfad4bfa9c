"""Shared fixtures: the repository's params and small valid params for fast runs."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

# Tiny models gain nothing from threads, and oversubscribed OpenMP threads (another job on the
# same cores) slow torch down many times over.
torch.set_num_threads(1)
os.environ.setdefault("GGL_THREADS", "1")

# Tests drive the real `ggl`, `snakemake` and `dvc` commands of this environment.
os.environ["PATH"] = f"{Path(os.sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


# The README's test command runs two xdist workers, each taking whole files (module fixtures run
# once): the two files that run the pipeline end to end start first, so the workers end together.
HEAVY_FILES = ("test_pipeline.py", "test_experiments.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in HEAVY_FILES)  # stable: file order kept


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def tiny_params(**overrides) -> dict:
    """The default params shrunk for tests: 2 images, a narrow model, 3 defences."""
    raw = copy.deepcopy(repo_params())
    raw["experiment"] = "tiny"
    raw["private_images"] = [0, 1]
    raw["model"]["width"] = 4
    raw["data"]["public_size"] = 200
    raw["data"]["private_size"] = 40
    raw["metrics"]["reid_pool"] = 1
    raw["compute_budget"] = 0  # the tiny budgets below, not the default's equal compute
    raw["defences"] = {
        "none": [],
        "noise": [{"kind": "noise", "sigma": 0.01}],
        "clipping": [{"kind": "clipping", "bound": 0.5, "per_layer": False}],
    }
    raw["generator"].update(latent_dim=8, width=2)
    raw["generator"]["train"].update(epochs=1, batch_size=32)
    budgets = {"ggl-adam": 4, "ggl-cmaes": 8, "ggl-bo": 6, "dlg": 3, "idlg": 3, "ig": 3,
               "gi": 3, "prior": 4, "noise-gradient": 4}
    for name, budget in budgets.items():
        raw["attacks"][name]["budget"] = budget
    raw["attacks"]["ggl-cmaes"]["optimiser"]["popsize"] = 4
    raw["attacks"]["ggl-bo"]["optimiser"].update(n_init=4, batch_size=2, n_candidates=50,
                                                 fit_maxiter=5)
    for dotted, value in overrides.items():
        target = raw
        *parents, last = dotted.split(".")
        for part in parents:
            target = target[part]
        target[last] = value
    return raw


@pytest.fixture
def default_raw() -> dict:
    return repo_params()


def run_stage(params, name: str, **keys: str) -> None:
    """Run one stage's code as `ggl <name>` does, in the current directory."""
    from ggl.cli import run_stage as run
    from ggl.pipeline.registry import Stage, kind

    run(Stage(kind(name), params, keys))


def assert_tracks(planned: set[str], tracked: set[str]) -> None:
    """DVC tracks a folder where params decide which files it holds (images, sweeps): every
    file Snakemake plans is one DVC tracks or lies in exactly one, and each is used."""
    for path in planned:
        assert sum(path == t or path.startswith(t + "/") for t in tracked) == 1, path
    for t in tracked:
        assert any(path == t or path.startswith(t + "/") for path in planned), t
