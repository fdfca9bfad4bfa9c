"""Hostile and corrupt files stay inert: no file a user did not write as code is ever
unpickled into code, and each is refused with one line naming it."""

from __future__ import annotations

import pickle
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from ggl import metrics
from ggl.errors import GglError


class Payload:
    """Unpickling this creates ``marker``: the proof that a file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def payload_file(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"features.0.weight": Payload(marker)}))
    return path


@pytest.fixture
def torch_cache(tmp_path, monkeypatch):
    """An empty torch hub cache of this test's own."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


@pytest.mark.parametrize("allow_stand_in", [True, False])
def test_a_crafted_vgg16_file_in_the_torch_cache_is_refused_by_hash_and_never_run(
        tmp_path, torch_cache, allow_stand_in):
    marker = tmp_path / "payload-ran"
    crafted = payload_file(torch_cache / metrics.VGG16_FILE, marker)
    with pytest.raises(GglError, match=f"{crafted}: refused, its SHA-256 .* does not match"):
        metrics.Lpips(allow_stand_in=allow_stand_in)
    assert not marker.exists()


def test_the_verified_vgg16_features_are_the_backbone_lpips_uses(torch_cache, monkeypatch):
    """The real file cannot be fetched here: its tensors' place in LPIPS is checked with
    seeded stand-in tensors of the same names and shapes."""
    import torchvision

    torch.manual_seed(1)
    features = {f"features.{k}": v for k, v in
                torchvision.models.vgg16(weights=None).features.state_dict().items()}
    torch_cache.mkdir(parents=True)
    (torch_cache / metrics.VGG16_FILE).write_bytes(b"stands in for the verified file")
    monkeypatch.setattr(metrics, "vgg16_features", lambda path: features)
    lp = metrics.Lpips(allow_stand_in=False)
    assert not lp.stand_in and lp.column == "lpips_vgg"
    backbone = lp.net.net.state_dict()
    assert len(backbone) == len(features) == 26
    for key, value in backbone.items():
        assert torch.equal(value, features[f"features.{key.split('.', 1)[1]}"]), key


# --- received updates: the attack stage accepts only what params make the client send --------

@contextmanager
def tiny_project(root: Path, attacks: tuple[str, ...] = ()):
    """Tiny params, their split, undefended received updates and the ``attacks`` run; the
    block runs in that folder."""
    from conftest import run_stage, tiny_params

    from ggl.config import Params

    raw = tiny_params()
    raw["generator"]["kind"] = "plugins_for_tests:stand_in_dcgan"
    raw["defences"] = {"none": []}
    if attacks:
        raw["attacks"] = {a: raw["attacks"][a] for a in attacks}
    params = Params.from_raw(raw)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        run_stage(params, "split")
        run_stage(params, "gradients", defence="none")
        for attack in attacks:
            run_stage(params, "attack", defence="none", attack=attack)
        yield params, root


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    with tiny_project(tmp_path_factory.mktemp("hostile")) as made:
        yield made


def _edit(record: dict, case: str, marker: Path) -> object:
    """One corrupt or hostile variant of a valid received record."""
    g = record["gradient"]
    edits = {
        "a list, not a record": lambda: list(g),
        "no format": lambda: {k: v for k, v in record.items() if k != "format"},
        "model names code to import": lambda: {**record, "model": {**record["model"],
                                                                   "arch": "this:s"}},
        "a billion classes": lambda: {**record, "model": {**record["model"],
                                                          "num_classes": 10**9}},
        "another image size": lambda: {**record, "image_size": 64},
        "another client": lambda: {**record, "client_name": "nobody"},
        "another protocol": lambda: {**record, "client": {**record["client"],
                                                          "local_steps": 5}},
        "another defence": lambda: {**record, "defence": {"name": "none", "steps": [
            {"kind": "noise", "sigma": 0.0}]}},
        "fc_index out of range": lambda: {**record, "fc_index": 10**6},
        "renamed parameters": lambda: {**record, "param_names": ["x"] * len(g)},
        "a missing tensor": lambda: {**record, "gradient": g[:-1]},
        "a tensor of another shape": lambda: {**record, "gradient": [g[0][:1], *g[1:]]},
        "integer tensor": lambda: {**record, "gradient": [g[0].long(), *g[1:]]},
        "NaN gradient": lambda: {**record, "gradient": [g[0] * float("nan"), *g[1:]]},
        "infinite gradient": lambda: {**record, "gradient": [*g[:-1], g[-1] + float("inf")]},
        "another update's file": lambda: {**record, "image_id": "img1"},
    }
    return edits[case]()


RECORD_CASES = ["a list, not a record", "no format", "model names code to import",
                "a billion classes", "another image size", "another client", "another protocol",
                "another defence", "fc_index out of range", "renamed parameters",
                "a missing tensor", "a tensor of another shape", "integer tensor",
                "NaN gradient", "infinite gradient", "another update's file"]
BYTE_CASES = ["zero bytes", "random bytes", "truncated", "pickle payload", "torch.save payload"]


def _write_case(path: Path, case: str, marker: Path) -> None:
    from ggl import io

    original = path.read_bytes()
    if case == "zero bytes":
        path.write_bytes(b"")
    elif case == "random bytes":
        path.write_bytes(bytes(range(256)) * 8)
    elif case == "truncated":
        path.write_bytes(original[: len(original) // 2])
    elif case == "pickle payload":
        path.write_bytes(pickle.dumps({"format": 2, "gradient": Payload(marker)}))
    elif case == "torch.save payload":
        with open(path, "wb") as handle:
            torch.save({"format": 2, "gradient": Payload(marker)}, handle)
    else:
        io.save_torch(path, _edit(io.load_torch(path), case, marker))


@pytest.mark.parametrize("case", BYTE_CASES + RECORD_CASES)
def test_a_bad_received_file_is_refused_in_one_line_before_any_attack_runs(project, case,
                                                                           tmp_path):
    from conftest import run_stage

    params, root = project
    path = root / "results/tiny/gradients/none/img0.pt"
    original = path.read_bytes()
    marker = tmp_path / "payload-ran"
    imported = set(__import__("sys").modules)
    try:
        _write_case(path, case, marker)
        with pytest.raises(GglError) as info:
            run_stage(params, "attack", defence="none", attack="ggl-adam")
    finally:
        path.write_bytes(original)
    message = str(info.value)
    assert message.startswith("results/tiny/gradients/none/img0.pt: ") and "\n" not in message, (
        message)
    assert "Traceback" not in message
    assert not marker.exists()
    assert "this" not in set(__import__("sys").modules) - imported  # no module named by data
    assert not (root / "results/tiny/attacks").exists()  # refused before any compute


# --- the other files stages read ------------------------------------------------------------

def _split_file(path: Path, case: str, marker: Path) -> Path:
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    content = {"no labels": {"images": images},
               "a list": [images],
               "labels of another length": {"images": images, "labels": torch.zeros(3).long()},
               "NaN images": {"images": torch.full((4, 3, 8, 8), float("nan")),
                              "labels": torch.zeros(4).long()}}
    if case == "payload":
        with open(path, "wb") as handle:
            torch.save({"images": Payload(marker)}, handle)
    elif case == "zero bytes":
        path.write_bytes(b"")
    else:
        with open(path, "wb") as handle:
            torch.save(content[case], handle)
    return path


@pytest.mark.parametrize("case", ["no labels", "a list", "labels of another length",
                                  "NaN images", "payload", "zero bytes"])
def test_a_bad_split_file_is_refused_naming_it(tmp_path, case):
    from ggl.data import load_part

    marker = tmp_path / "payload-ran"
    path = _split_file(tmp_path / "private.pt", case, marker)
    with pytest.raises(GglError, match=f"^{path}: [^\\n]*$"):
        load_part(path)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["no config", "other tensors", "NaN weights", "payload"])
def test_a_bad_generator_checkpoint_is_refused_naming_it(tmp_path, case):
    from ggl.generators import DCGANGenerator, build_dcgan

    good = DCGANGenerator(8, 2, 0).state_dict()
    config = {"latent_dim": 8, "width": 2, "num_classes": 0}
    marker = tmp_path / "payload-ran"
    content = {"no config": {"generator": good},
               "other tensors": {"config": config, "generator": {"x": torch.zeros(1)}},
               "NaN weights": {"config": config,
                               "generator": {k: v * float("nan") if v.is_floating_point() else v
                                             for k, v in good.items()}},
               "payload": {"config": config, "generator": Payload(marker)}}[case]
    path = tmp_path / "generator.pt"
    with open(path, "wb") as handle:
        torch.save(content, handle)
    with pytest.raises(GglError, match=f"^{path}: [^\\n]*$"):
        build_dcgan(path, latent_dim=8, width=2)
    assert not marker.exists()


def test_an_unreadable_gan_resume_file_is_set_aside_and_training_starts_over(tmp_path):
    from dataclasses import replace

    from ggl.gan import CPU_RECIPE, train_gan

    cfg = replace(CPU_RECIPE, epochs=1, batch_size=16, latent_dim=8, width=2)
    images = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    resume = tmp_path / "resume.pt"
    resume.write_bytes(b"half a file")
    with pytest.warns(UserWarning, match="resume.pt: unreadable .* moved aside"):
        train_gan(images, cfg, resume, torch.device("cpu"))
    assert (tmp_path / "resume.pt.rejected").read_bytes() == b"half a file"


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    """Tiny params with one cheap attack run, ready for the metrics stage."""
    with tiny_project(tmp_path_factory.mktemp("metrics"), attacks=("prior",)) as made:
        yield made


@pytest.mark.parametrize("case", ["NaN reconstruction", "reconstruction of another shape",
                                  "result not JSON", "result without its label",
                                  "truth without indices"])
def test_a_bad_attack_output_stops_the_metrics_stage_naming_it(attacked, case):
    from conftest import run_stage

    from ggl import io

    params, root = attacked
    run = root / "results/tiny/attacks/none/prior/img0"
    target = {"NaN reconstruction": run / "reconstruction.pt",
              "reconstruction of another shape": run / "reconstruction.pt",
              "result not JSON": run / "result.json",
              "result without its label": run / "result.json",
              "truth without indices": root / "results/tiny/truth/none/img0.json"}[case]
    if not target.exists():
        pytest.fail(f"the tiny run has no {target}")
    original = target.read_bytes()
    try:
        if case == "NaN reconstruction":
            io.save_torch(target, io.load_torch(target) * float("nan"))
        elif case == "reconstruction of another shape":
            io.save_torch(target, torch.zeros(3, 5, 5))
        elif case == "result not JSON":
            target.write_text("{")
        elif case == "result without its label":
            io.write_json(target, {k: v for k, v in io.read_json(target).items()
                                   if not k.startswith("inferred_label")})
        else:
            io.write_json(target, {k: v for k, v in io.read_json(target).items()
                                   if k != "private_indices"})
        with pytest.raises(GglError) as info:
            run_stage(params, "metrics")
    finally:
        target.write_bytes(original)
    message = str(info.value)
    assert message.startswith(f"{target.relative_to(root)}: ") and "\n" not in message, message
    assert not (root / "results/tiny/metrics.csv").exists()


def test_a_corrupt_image_in_an_imagefolder_is_named(tmp_path):
    from PIL import Image

    from ggl.config import DataConfig
    from ggl.data import load_imagefolder

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for k in range(3):
            Image.new("RGB", (8, 8), (40 * k, 0, 0)).save(tmp_path / cls / f"{k}.png")
    bad = tmp_path / "b" / "1.png"
    bad.write_bytes(bad.read_bytes()[:20])  # truncated
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path), download=False, image_size=8,
                     num_classes=2, public_size=2, private_size=2, test_size=0, split_seed=0)
    with pytest.raises(GglError, match=f"^{bad}: not a readable image"):
        load_imagefolder(cfg)
