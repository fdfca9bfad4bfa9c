"""Bad params are refused before any compute, with a message naming the key."""

from __future__ import annotations

import copy
import subprocess

import pytest
import yaml
from conftest import REPO, repo_params

from ggl.config import Params, ParamsError, load_params


def _with(raw: dict, dotted: str, value) -> dict:
    raw = copy.deepcopy(raw)
    target = raw
    *parents, last = dotted.split(".")
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return raw


_DELETE = object()

BAD = [
    # (key to change, new value, words the message must contain)
    ("data.dataset", "mnist", ["data.dataset", "'mnist'", "digits", "celeba"]),
    ("model.arch", "vgg", ["model.arch", "resnet18-cifar"]),
    ("defences.noise", [{"kind": "blur", "sigma": 1}], ["defences.noise[0].kind", "soteria"]),
    ("defences.noise", [{"kind": "noise", "sigma": -0.1}], ["defences.noise[0].sigma",
                                                           "minimum of 0"]),
    ("defences.clipping", [{"kind": "clipping", "bound": 0, "per_layer": False}],
     ["defences.clipping[0].bound"]),
    ("defences.sparsification", [{"kind": "sparsification", "rate": 100}],
     ["defences.sparsification[0].rate"]),
    ("defences.sparsification", [{"kind": "sparsification", "rate": -5}],
     ["defences.sparsification[0].rate"]),
    ("defences.soteria", [{"kind": "soteria", "rate": 120}], ["defences.soteria[0].rate"]),
    ("defences.soteria", [{"kind": "soteria"}], ["defences.soteria[0].rate", "missing"]),
    ("defences.noise", [{"kind": "noise", "sigma": 0.1, "sigmaa": 2}],
     ["defences.noise[0]", "sigmaa"]),
    ("seed", "zero", ["seed", "'zero'", "integer"]),
    ("model.width", 2.5, ["model.width", "integer"]),
    ("data.image_size", _DELETE, ["data.image_size", "missing"]),
    ("device", "tpu", ["device", "'tpu'", "auto"]),
    ("scorer", "fast", ["scorer", "'fast'", "batched"]),
    ("compute_budget", -1, ["compute_budget", "minimum of 0"]),
    ("compute_budget", _DELETE, ["compute_budget", "missing"]),
    ("generator.conditional", "yes", ["generator.conditional", "boolean"]),
    ("experiment", "my run", ["experiment", "not a valid name"]),
    ("private_images", [0, 999], ["private_images", "999", "private_size"]),
    ("data.public_size", 1700, ["data.public_size", "1797"]),
    ("attacks_typo", 1, ["attacks_typo"]),
    ("metrics.reid_pool", 0, ["metrics.reid_pool", "minimum of 1"]),
    # a control repeats its attack exactly, or it controls for nothing
    ("attacks.noise-gradient.budget", 300, ["attacks.noise-gradient", "budget", "ggl-adam"]),
    ("attacks.noise-gradient.optimiser.lr", 0.5, ["attacks.noise-gradient", "optimiser"]),
    ("attacks.noise-gradient.of", "dlg", ["attacks.noise-gradient.of", "'dlg'", "ggl-cmaes"]),
    ("attacks.noise-gradient.of", _DELETE, ["attacks.noise-gradient.of", "missing"]),
    ("attacks.prior.of", "ggl-adam", ["attacks.prior.of", "only a noise-gradient"]),
    ("attacks.prior.trials", 3, ["attacks.prior.trials", "one trial"]),
    ("attacks.label-only.budget", 5, ["attacks.label-only.budget", "one image"]),
    ("attacks.prior.objective", {"lr": 1}, ["attacks.prior.objective.lr", "unknown"]),
]


@pytest.mark.parametrize(("key", "value", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_value_is_refused_naming_the_key(key, value, words):
    with pytest.raises(ParamsError) as info:
        Params.from_raw(_with(repo_params(), key, value))
    for word in words:
        assert word in str(info.value), f"{word!r} missing from: {info.value}"


def test_repository_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.data.dataset == "digits"
    assert params.image_ids() == [f"img{i}" for i in params.private_images]


def test_plugin_names_are_accepted_by_the_schema():
    raw = _with(repo_params(), "defences.mine", [{"kind": "mypkg.mod:my_defence", "x": 1}])
    raw = _with(raw, "model.arch", "mypkg.mod:MyNet")
    assert Params.from_raw(raw).defences["mine"][0].settings == {"x": 1}


def test_cli_refuses_before_compute(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_with(repo_params(), "defences.noise",
                                        [{"kind": "noise", "sigma": -1}])))
    out = subprocess.run(["ggl", "split", "--params", str(bad)], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == 2
    assert "defences.noise[0].sigma" in out.stderr
    assert not (tmp_path / "data").exists()


def test_snakemake_refuses_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_with(repo_params(), "data.dataset", "mnist")))
    out = subprocess.run(["snakemake", "-n", "--configfile", str(bad)], capture_output=True,
                         text=True, cwd=REPO)
    assert out.returncode != 0
    assert "data.dataset" in out.stdout + out.stderr
