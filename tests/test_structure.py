"""The code's shape that users rely on: no import cycles, params validated without torch, a
stage can only ask for the files its description declares, and `ggl` reports expected
problems on one line while anything else keeps its traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, tiny_params

from ggl.config import Params
from ggl.pipeline.imports import closure, import_graph
from ggl.pipeline.registry import FILES, STAGE_KINDS, UndeclaredFile, kind


def find_cycle(graph: dict[str, frozenset[str]]) -> list[str] | None:
    """One import cycle of the graph, or None (depth-first search)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    return next((c for node in sorted(graph) if node not in state and (c := visit(node))), None)


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "ggl.biggan" in graph["ggl.generators"]  # imported inside a function: counted
    assert find_cycle(graph) is None, find_cycle(graph)
    # the finder does find one
    assert find_cycle({"a": frozenset({"b"}), "b": frozenset({"a"})}) == ["a", "b", "a"]


def test_validating_params_imports_no_torch():
    out = subprocess.run([sys.executable, "-X", "importtime", "-c",
                          "import ggl.config, ggl.pipeline.registry"],
                         capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines()}
    assert "ggl.config" in imported and "ggl.pipeline.registry" in imported
    assert not {m for m in imported if m.split(".")[0] in ("torch", "pandas", "numpy")}


def test_a_stages_code_is_everything_its_module_may_import():
    code = closure(kind("attack").module)
    for module in ("runtime.py", "models.py", "client.py", "attack/batched.py",
                   "stages/attack.py", "attack/__init__.py"):
        assert f"src/ggl/{module}" in code, module
    assert "src/ggl/metrics.py" not in code and "src/ggl/report.py" not in code


def test_every_file_is_written_by_exactly_one_stage_kind_and_read_by_its_name():
    writers = [name for k in STAGE_KINDS for name in (*k.outputs, *k.scratch)]
    assert len(writers) == len(set(writers)) == len(FILES)
    assert {name for k in STAGE_KINDS for name in k.inputs} <= set(FILES)


def test_a_stage_gets_only_the_paths_it_declares():
    params = Params.from_raw(tiny_params())
    (stage,) = [s for s in kind("attack").instances(params) if s.name == "attack@noise-dlg"]
    assert str(stage.output("result", image="img1")) == \
        "results/tiny/attacks/noise/dlg/img1/result.json"
    assert str(stage.input("received", image="img0")) == "results/tiny/gradients/noise/img0.pt"
    for ask in (lambda: stage.input("truth", image="img0"),  # the client's, not the attacker's
                lambda: stage.input("private"),
                lambda: stage.output("received", image="img0"),  # another stage's output
                lambda: stage.output("result", image="img7"),  # not in params
                lambda: stage.output("result"),  # which image?
                lambda: stage.input("biggan_weights")):  # params train a DCGAN
        with pytest.raises(UndeclaredFile):
            ask()


def _ggl(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}  # plugins_for_tests
    return subprocess.run(["ggl", *args], cwd=tmp_path, capture_output=True, text=True, env=env)


def test_an_unexpected_error_keeps_its_traceback_and_a_bad_param_gets_one_line(tmp_path):
    raw = tiny_params(**{"model.arch": "plugins_for_tests:broken_net"})
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    assert _ggl(tmp_path, "split", "--params", "p.yaml").returncode == 0
    out = _ggl(tmp_path, "gradients", "--params", "p.yaml", "--defence", "none")
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "RuntimeError: broken on purpose" in out.stderr
    log = (tmp_path / "logs/tiny/gradients@none.log").read_text()
    assert "Traceback" in log and "broken on purpose" in log

    raw["defences"]["noise"][0]["sigma"] = -1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    out = _ggl(tmp_path, "gradients", "--params", "bad.yaml", "--defence", "noise")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "defences.noise[0].sigma" in out.stderr
    out = _ggl(tmp_path, "gradients", "--params", "p.yaml", "--defence", "blur")
    assert out.returncode == 2 and out.stderr.startswith("error: --defence: 'blur'")


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 3, 16, 16), (5, 3, 8, 8), (16, 3, 8, 8)])
def test_saved_png_is_pixel_for_pixel_torchvisions(tmp_path, shape):
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.utils import save_image

    from ggl import io

    image = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2
    io.save_image(tmp_path / "ours.png", image)
    scaled = (image.clamp(-1, 1) + 1) / 2
    nrow = max(1, round(shape[0] ** 0.5)) if len(shape) == 4 else 1
    save_image(scaled, tmp_path / "torchvision.png", nrow=nrow, padding=1)
    ours, theirs = (np.asarray(Image.open(tmp_path / n)) for n in ("ours.png", "torchvision.png"))
    assert ours.shape == theirs.shape and (ours == theirs).all()


def test_an_attack_job_imports_no_torchvision():
    # torchvision's import alone cost each of an experiment's ~100 attack jobs 3 s
    out = subprocess.run([sys.executable, "-X", "importtime", "-c",
                          "import ggl.stages.attack, ggl.stages.gradients, ggl.stages.metrics"],
                         capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines()}
    assert "ggl.stages.attack" in imported
    assert not {m for m in imported if m.split(".")[0] == "torchvision"}
