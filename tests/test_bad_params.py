"""Bad params files that once passed validation (and failed in a stage, or never ended) are
refused by ``load_params`` before any compute: a ParamsError of one line per problem that names
the dotted key (or the file) and what is allowed, with no traceback."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_params

from ggl.config import MAX_PARAMS_BYTES, ParamsError, load_params

NAN, INF = float("nan"), float("inf")
NAME_PROBLEM = "is not a valid name"
PLUGIN = "'package.module:callable'"


def _set(raw: dict, dotted: str, value) -> None:
    """Set ``a.b.0.c`` (a number indexes a list) in raw params."""
    *parents, last = dotted.split(".")
    for part in parents:
        raw = raw[int(part)] if isinstance(raw, list) else raw[part]
    raw[int(last) if isinstance(raw, list) else last] = value


def tiny(edit: Callable[[dict], None] | None = None, **dotted) -> Callable[[], str]:
    """The text of tiny_params() with ``dotted`` keys ('__' for '.') set and ``edit`` applied."""

    def text() -> str:
        raw = copy.deepcopy(tiny_params())
        for key, value in dotted.items():
            _set(raw, key.replace("__", "."), value)
        if edit is not None:
            edit(raw)
        return yaml.safe_dump(raw, sort_keys=False)

    return text


def repo_text(edit: Callable[[str], str]) -> Callable[[], str]:
    """params.yaml's text, edited as text (for what YAML itself decides)."""

    def text() -> str:
        original = (REPO / "params.yaml").read_text()
        edited = edit(original)
        assert edited != original
        return edited

    return text


def _step(name: str, step: dict) -> Callable[[dict], None]:
    return lambda raw: raw["defences"].__setitem__(name, [step])


def _rename(part: str, old: str, new: str) -> Callable[[dict], None]:
    return lambda raw: raw[part].__setitem__(new, raw[part].pop(old))


def _public_0(method_edit: Callable[[dict], None]) -> Callable[[dict], None]:
    """public_size 0 with a generator that needs no public split (a plugin), then ``edit``."""

    def edit(raw: dict) -> None:
        raw["data"]["public_size"] = 0
        raw["generator"]["kind"] = "plugins_for_tests:stand_in_dcgan"
        method_edit(raw)

    return edit


def _batch_2(raw: dict) -> None:
    del raw["attacks"]["label-only"]
    raw["clients"]["fedsgd"]["batch_size"] = 2


def _plugin_attack(raw: dict) -> None:
    raw["attacks"]["mine"] = {"method": "no_such_package.attacks:invert", "trials": 1,
                              "budget": 1, "objective": {}, "optimiser": {}}


ADAM, DLG = "attacks.ggl-adam", "attacks.dlg"

CASES: list[tuple[str, Callable[[], str], list[str]]] = [
    # (id, the params file's text, words the one-line message must hold)
    # 1. every number is finite
    ("sigma-nan", tiny(_step("noise", {"kind": "noise", "sigma": NAN})),
     ["defences.noise[0].sigma: .nan is not a finite number"]),
    ("sigma-inf", tiny(_step("noise", {"kind": "noise", "sigma": INF})),
     ["defences.noise[0].sigma: .inf is not a finite number"]),
    ("alpha-minus-inf", tiny(utility__alpha=-INF), ["utility.alpha: -.inf", "finite"]),
    ("betas-nan", tiny(generator__train__betas__0=NAN),
     ["generator.train.betas[0]: .nan is not a finite number"]),
    ("cmaes-sigma0-inf", tiny(**{"attacks__ggl-cmaes__optimiser__sigma0": INF}),
     ["attacks.ggl-cmaes.optimiser.sigma0: .inf is not a finite number"]),
    # 2. an integer is an int: not 16.0, not true
    ("private-images-float", tiny(private_images=[0.0]),
     ["private_images[0]: 0.0 is not an integer (write 0)"]),
    ("model-width-float", tiny(model__width=16.0),
     ["model.width: 16.0 is not an integer (write 16)"]),
    ("seed-float", tiny(seed=1.0), ["seed: 1.0 is not an integer (write 1)"]),
    ("image-size-bool", tiny(data__image_size=True), ["data.image_size: true is not an integer"]),
    ("popsize-float", tiny(**{"attacks__ggl-cmaes__optimiser__popsize": 4.0}),
     ["attacks.ggl-cmaes.optimiser.popsize: expected int, got 4.0 (write 4)"]),
    ("seed-over-32-bits", tiny(seed=2**40), ["seed: 1099511627776", "maximum of 4294967295"]),
    # 3. keys against each other, the dataset and what the code builds
    ("dcgan-image-size-17", tiny(data__image_size=17),
     ["data.image_size: 17", "generator.kind dcgan builds 32x32", "allowed is 32"]),
    ("dcgan-image-size-224", tiny(data__image_size=224), ["data.image_size: 224", "dcgan"]),
    ("resnet18-imagenet-width", tiny(model__arch="resnet18-imagenet"),
     ["model.width: 4", "resnet18-imagenet", "width is 64"]),
    ("public-0-dcgan", tiny(data__public_size=0),
     ["data.public_size: 0", "generator.kind dcgan is trained on it", "data.public_size > 0"]),
    ("public-0-label-only", tiny(_public_0(lambda raw: None)),
     ["data.public_size: 0", "attacks.label-only (label-only)"]),
    ("public-0-batch-2", tiny(_public_0(_batch_2)),
     ["data.public_size: 0", "clients.fedsgd.batch_size 2 infers labels"]),
    ("digits-too-small", tiny(data__public_size=1500, data__private_size=400),
     ["data.public_size + data.private_size + data.test_size = 1900", "1797", "'digits'"]),
    ("celeba-private-size", tiny(data__dataset="celeba", data__num_classes=2,
                                 data__private_size=30000),
     ["data.private_size: 30000 exceeds the 19962 images of CelebA's test split"]),
    ("imagenet-public-split", tiny(data__dataset="imagenet", data__num_classes=1000),
     ["data.public_size: 200", "imagenet has no public part", "set 0"]),
    ("digits-num-classes", tiny(data__num_classes=5),
     ["data.num_classes: 5", "digits has 10 classes"]),
    ("celeba-num-classes", tiny(data__dataset="celeba"),
     ["data.num_classes: 10", "celeba has 2 classes"]),
    ("adam-lr-0", tiny(**{"attacks__ggl-adam__optimiser__lr": 0}),
     [f"{ADAM}.optimiser.lr: must be > 0"]),
    ("dlg-lr-0", tiny(attacks__dlg__optimiser__lr=0), [f"{DLG}.optimiser.lr: must be > 0"]),
    ("gan-lr-0", tiny(generator__train__lr=0), ["generator.train.lr: must be > 0, got 0"]),
    ("gan-generator-lr-0", tiny(generator__train__generator_lr=0),
     ["generator.train.generator_lr: must be > 0"]),
    ("utility-lr-0", tiny(utility__lr=0), ["utility.lr: must be > 0"]),
    ("client-local-lr-0", tiny(clients__fedsgd__local_lr=0),
     ["clients.fedsgd.local_lr: must be > 0"]),
    ("reg-weight-negative", tiny(**{"attacks__ggl-adam__objective__reg_weight": -0.1}),
     [f"{ADAM}.objective.reg_weight: must be >= 0"]),
    ("tv-weight-negative", tiny(attacks__ig__objective__tv_weight=-1),
     ["attacks.ig.objective.tv_weight: must be >= 0"]),
    ("l2-weight-negative", tiny(attacks__gi__objective__l2_weight=-1),
     ["attacks.gi.objective.l2_weight: must be >= 0"]),
    ("lbfgs-history-0", tiny(attacks__dlg__optimiser__history_size=0),
     [f"{DLG}.optimiser.history_size: must be >= 1"]),
    # 4. a key given twice (PyYAML would keep the last)
    ("duplicate-top-key", repo_text(lambda t: t + "seed: 1\n"),
     ["seed is given twice (first at line 6)"]),
    ("duplicate-nested-key", repo_text(lambda t: t.replace(
        "  image_size: 32 ", "  image_size: 32\n  image_size: 64 ")),
     ["line 19: data.image_size is given twice (first at line 18)"]),
    # 5. names are matched whole, and have no '__'
    ("experiment-newline", repo_text(lambda t: t.replace(
        "experiment: digits ", 'experiment: "digits\\n" ')),
     ["experiment: 'digits\\n'", NAME_PROBLEM]),
    ("defence-double-underscore", tiny(lambda raw: raw["defences"].__setitem__("a__b", [])),
     ["defences: 'a__b'", NAME_PROBLEM, "no '__'"]),
    ("attack-double-underscore", tiny(_rename("attacks", "dlg", "dlg__x")),
     ["attacks: 'dlg__x'", "no '__'"]),
    ("client-double-underscore", tiny(_rename("clients", "fedsgd", "fed__sgd")),
     ["clients: 'fed__sgd'", "no '__'"]),
    ("plugin-newline", tiny(_step("mine", {"kind": "mod:fn\n"})),
     ["defences.mine[0].kind: 'mod:fn\\n' is not allowed", PLUGIN]),
    # 6. the size limit, before parsing
    ("over-1-mb", repo_text(lambda t: t + "#" * MAX_PARAMS_BYTES + "\n"),
     ["params.yaml: ", "bytes is over the 1,000,000-byte (1 MB) limit"]),
    ("alias-bomb", repo_text(lambda t: t + "bomb:\n  a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
                             + "".join(f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n"
                                       for i in range(1, 8))),
     ["YAML aliases (*name) expand to over 1,000,000 values"]),
    # 7. a step without kind: one line, not 12 contradictory ones
    ("defence-step-without-kind", tiny(_step("noise", {"sigma": 0.1})),
     ["defences.noise[0].kind: missing key; allowed are noise, clipping", PLUGIN]),
    ("sha256-not-hex", tiny(generator__kind="biggan-deep-256", generator__sha256="abc"),
     ["generator.sha256: 'abc' is not 64 lowercase hex digits"]),
    # 8. a plugin that cannot be imported or resolved: the key that names it
    ("model-plugin-missing", tiny(model__arch="no_such_package.nets:net"),
     ["model.arch: cannot import 'no_such_package.nets:net' (ModuleNotFoundError: "]),
    ("dataset-plugin-missing", tiny(data__dataset="no_such_package:load"),
     ["data.dataset: cannot import 'no_such_package:load'"]),
    ("defence-plugin-no-attribute", tiny(_step("mine", {"kind": "ggl.config:no_such_fn"})),
     ["defences.mine[0].kind: cannot resolve 'ggl.config:no_such_fn'", "no attribute"]),
    ("generator-plugin-not-callable", tiny(generator__kind="ggl.config:DATASET_CLASSES"),
     ["generator.kind: 'ggl.config:DATASET_CLASSES' is not callable"]),
    ("attack-plugin-missing", tiny(_plugin_attack),
     ["attacks.mine.method: cannot import 'no_such_package.attacks:invert'"]),
]


def _write(folder: Path, text: Callable[[], str]) -> Path:
    folder.mkdir()
    path = folder / "params.yaml"
    path.write_text(text())
    return path


@pytest.mark.parametrize(("text", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_params_file_is_refused_in_one_line_naming_the_key(tmp_path, monkeypatch, text,
                                                                words):
    path = _write(tmp_path / "in", text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    message = str(info.value)
    assert message.startswith(str(path)), message  # names the file
    assert "\n" not in message, message  # one problem, one line
    assert "Traceback" not in message and 'File "' not in message, message
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"
    assert [p.name for p in tmp_path.iterdir()] == ["in"]  # nothing written: no data/, logs/


def test_several_problems_are_one_line_each(tmp_path):
    path = _write(tmp_path / "in", tiny(seed=1.0, model__width=16.0, utility__alpha=NAN))
    with pytest.raises(ParamsError) as info:
        load_params(path)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{path} is invalid:"
    assert sorted(line.split(":")[0].strip() for line in lines[1:]) == [
        "model.width", "seed", "utility.alpha"]


GOOD = [REPO / "params.yaml", *sorted((REPO / "workflow/experiments").glob("*.yaml"))]


@pytest.mark.parametrize("path", GOOD, ids=[p.name for p in GOOD])
def test_good_params_files_still_load(path):
    assert load_params(path).experiment == yaml.safe_load(path.read_text())["experiment"]


PROBE = """
import json, sys
from ggl.config import ParamsError, load_params
refused = []
for path in sys.argv[1:]:
    try:
        load_params(path)
    except ParamsError:
        refused.append(path)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "numpy")
               or m.startswith(("ggl.stages", "ggl.data", "ggl.models", "ggl.attack")))
print(json.dumps({"refused": refused, "heavy": heavy}))
"""


def test_validation_computes_nothing(tmp_path):
    """Every bad file is refused, and every good one loads, without torch or numpy ever being
    imported (so no stage could have run) in a fresh interpreter."""
    bad = [_write(tmp_path / name, text) for name, text, _ in CASES]
    out = subprocess.run([sys.executable, "-c", PROBE, *map(str, bad + GOOD)], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result == {"refused": list(map(str, bad)), "heavy": []}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(name for name, _, _ in CASES)
