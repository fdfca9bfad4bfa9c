"""The attack stage: the attacker's inputs only, exact budgets, seeded bytes, its outputs."""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil

import pytest
import torch
from conftest import run_stage, tiny_params

from ggl.attack import ATTACKS
from ggl.attack.run import Attacker
from ggl.config import Params, ParamsError, attack_config
from ggl.pipeline.registry import all_stages, dvc_stage, kind
from ggl.settings import uses_generator


@pytest.fixture(scope="module")
def received(tmp_path_factory):
    """Tiny params and their received gradients (no defence, sparsification) on disk; the
    tests run in that folder. No generator was trained: the attacks use its stand-in."""
    root = tmp_path_factory.mktemp("attack")
    raw = tiny_params()
    raw["generator"]["kind"] = "plugins_for_tests:stand_in_dcgan"
    raw["defences"] = {"none": [], "sparsification": [{"kind": "sparsification", "rate": 90.0}]}
    raw["generator"]["latent_dim"] = 16
    raw["generator"]["width"] = 4
    for name, budget in (("ggl-adam", 12), ("ggl-cmaes", 40), ("ggl-bo", 25)):
        raw["attacks"][name]["budget"] = budget
    raw["attacks"]["ggl-cmaes"]["optimiser"]["popsize"] = 20
    raw["attacks"]["ggl-bo"]["optimiser"].update(n_init=10, batch_size=5, n_candidates=100,
                                                 fit_maxiter=10)
    raw["attacks"]["ggl-adam"]["trials"] = 2
    raw["attacks"]["noise-gradient"].update(trials=2, budget=12)  # repeats ggl-adam exactly
    params = Params.from_raw(raw)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        run_stage(params, "split")
        for defence in params.defences:
            run_stage(params, "gradients", defence=defence)
        yield params, root


def _attack(params, root, defence, attack, out, scorer="auto"):
    """Run the attack stage; move its image folders to ``out``; return them."""
    if scorer != params.scorer:
        params = Params.from_raw({**params.raw, "scorer": scorer})
    run_stage(params, "attack", defence=defence, attack=attack)
    folders = []
    for image in params.image_ids():
        folders.append(out / image)
        shutil.move(root / f"results/tiny/attacks/{defence}/{attack}/{image}", folders[-1])
    return folders


@pytest.mark.parametrize("attack", ["ggl-adam", "ggl-cmaes", "ggl-bo"])
def test_each_attack_writes_its_outputs_within_budget(received, attack, tmp_path):
    params, root = received
    folders = _attack(params, root, "sparsification", attack, tmp_path)
    cfg = params.attacks[attack]
    for folder in folders:
        result = json.loads((folder / "result.json").read_text())
        assert result["evaluations"] <= cfg.trials * cfg.budget
        assert result["budget_units"].startswith("objective evaluations")
        assert 0 <= result["inferred_label"] < 10
        assert torch.load(folder / "reconstruction.pt", weights_only=True).shape == (3, 32, 32)
        assert torch.load(folder / "latent.pt", weights_only=True).shape == (16,)
        curve = (folder / "curve.csv").read_text().splitlines()
        assert curve[0] == "trial,evaluations,best_loss"
        assert len({line.split(",")[0] for line in curve[1:]}) == cfg.trials
        assert result["defence_estimate"]["0.sparsification"]["rate"] >= 90
        assert result["compute"] == pytest.approx(
            result["evaluations"] * result["cost_per_evaluation"])
        marks = torch.load(folder / "checkpoints.pt", weights_only=True)
        assert marks["evaluations"][-1] <= cfg.budget
        assert marks["images"].shape == (len(marks["evaluations"]), 3, 32, 32)
        assert marks["compute"].tolist() == pytest.approx(
            (marks["evaluations"] * result["cost_per_evaluation"]).tolist())


def test_same_seed_same_reconstruction_bytes(received, tmp_path):
    params, root = received
    a = _attack(params, root, "none", "ggl-cmaes", tmp_path / "a")
    b = _attack(params, root, "none", "ggl-cmaes", tmp_path / "b")
    for x, y in zip(a, b, strict=True):
        # torch.save stamps each file with a random serialization id: compare the tensors
        tx, ty = (torch.load(f / "reconstruction.pt", weights_only=True) for f in (x, y))
        assert tx.numpy().tobytes() == ty.numpy().tobytes()
        assert (x / "reconstruction.png").read_bytes() == (y / "reconstruction.png").read_bytes()


def test_params_scorer_reaches_the_attack_and_a_short_run_agrees(received, tmp_path):
    # Scores agree to float rounding (test_batched); over a long CMA-ES or TuRBO run such
    # differences can grow (README "Performance"), over two generations they must not.
    params, root = received
    runs = {scorer: _attack(params, root, "sparsification", "ggl-cmaes", tmp_path / scorer,
                            scorer) for scorer in ("loop", "batched")}
    for loop, batched in zip(runs["loop"], runs["batched"], strict=True):
        results = [json.loads((f / "result.json").read_text()) for f in (loop, batched)]
        assert [r["scorer"] for r in results] == ["loop", "batched"]
        assert results[1]["loss"] == pytest.approx(results[0]["loss"], rel=1e-4)
        images = [torch.load(f / "reconstruction.pt", weights_only=True) for f in (loop, batched)]
        torch.testing.assert_close(images[1], images[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("attack", ["ggl-adam", "ig"])
def test_updates_side_by_side_agree_with_one_at_a_time(received, attack, tmp_path):
    """scorer auto attacks a job's updates side by side (ggl.attack.lockstep), loop one at a
    time: the same steps, to float rounding over a short run."""
    params, root = received
    runs = {scorer: _attack(params, root, "sparsification", attack, tmp_path / scorer, scorer)
            for scorer in ("loop", "auto")}
    for loop, auto in zip(runs["loop"], runs["auto"], strict=True):
        results = [json.loads((f / "result.json").read_text()) for f in (loop, auto)]
        assert [r["lockstep_updates"] for r in results] == [1, len(params.image_ids())]
        assert results[1]["evaluations"] == results[0]["evaluations"]
        assert results[1]["loss"] == pytest.approx(results[0]["loss"], rel=1e-3)
        images = [torch.load(f / "reconstruction.pt", weights_only=True) for f in (loop, auto)]
        torch.testing.assert_close(images[1], images[0], atol=1e-3, rtol=0)


def test_the_attacker_never_gets_the_private_image(received):
    params, _ = received
    assert not {"image", "images", "private"} & {f.name for f in dataclasses.fields(Attacker)}
    for method in ATTACKS.names():
        assert not {"image", "truth"} & set(inspect.signature(ATTACKS.get(method)).parameters)
    trained = Params.from_raw({**params.raw, "generator": tiny_params()["generator"]})
    for stage in all_stages(trained):
        if stage.kind.name == "attack":
            deps = stage.deps()
            assert not any("private" in d or d.endswith(".json") for d in deps), deps
            # the pixel baselines and label-only never read the generator, nor wait for it
            assert any(d.endswith("generator.pt") for d in deps) == uses_generator(
                stage.keys["attack"], trained.attacks)
            # the public split is public knowledge: the label-only control's class means;
            # the trained model is the federation's, which the server holds
            assert set(stage.kind.inputs) == {"received", "generator", "biggan_weights",
                                              "public", "attacked_model"}
    # DVC tracks the received gradients by folder: the clients' truth lies in another
    dvc_deps = dvc_stage(kind("attack"), trained, "params.yaml")["deps"]
    assert not any("private" in d or "truth" in d for d in dvc_deps), dvc_deps


def test_bad_attack_settings_name_the_key():
    raw = tiny_params()["attacks"]["ggl-adam"]
    with pytest.raises(ParamsError, match=r"attacks.x.optimiser.lrr: unknown setting"):
        attack_config({**raw, "optimiser": {"lrr": 0.1}}, "attacks.x")
    with pytest.raises(ParamsError, match=r"attacks.x.objective.distance: 'l3'"):
        attack_config({**raw, "objective": {**raw["objective"], "distance": "l3"}}, "attacks.x")
    cmaes = tiny_params()["attacks"]["ggl-cmaes"]
    with pytest.raises(ParamsError, match=r"attacks.x.budget"):
        attack_config({**cmaes, "budget": 2}, "attacks.x")


def test_the_controls_use_no_gradient_content_beyond_what_they_claim(received):
    """prior: samples of the inferred class; label-only: that class's public mean;
    noise-gradient: noise with the received gradient's norms and zeros."""
    from ggl.attack.controls import noise_like
    from ggl.attack.run import prepare_attacker
    from ggl.client import load_received
    from ggl.data import load_part
    from ggl.generators import build_generator
    from ggl.models import build_model

    params, root = received
    record = load_received(root / "results/tiny/gradients/sparsification/img0.pt", params,
                           "sparsification", "img0", build_model(params.model))
    public = load_part(root / "data/tiny/public.pt")
    generator = build_generator(params, None, torch.device("cpu"))
    attacker = prepare_attacker(record, params.model, generator, torch.device("cpu"),
                                public=public)
    mean = ATTACKS.get("label-only")(attacker, params.attacks["label-only"], 0).image
    images, labels = public
    assert torch.allclose(mean, images[labels == attacker.label].mean(0))
    samples = ATTACKS.get("prior")(attacker, params.attacks["prior"], 0).image
    assert samples.shape == (params.attacks["prior"].budget, 3, 32, 32)
    noise = noise_like(attacker.received, torch.Generator().manual_seed(0))
    for n, r in zip(noise, attacker.received, strict=True):
        assert torch.equal(n == 0, r == 0)  # sparsification's zeros kept
        assert torch.isclose(n.norm(), r.norm(), rtol=1e-4)
        if r.count_nonzero() > 1:
            assert not torch.allclose(n, r)
