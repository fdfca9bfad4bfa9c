"""The utility stage: federated averaging under a defence learns, reproduces to the byte,
resumes after a kill, and states DP-SGD's epsilon as Opacus' accountant does; DP-SGD's update
is Opacus'; bad settings stop before compute."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pandas as pd
import pytest
import torch
from conftest import run_stage, tiny_params

from ggl import io
from ggl.client import defended_gradients
from ggl.config import DefenceStep, ModelConfig, Params, ParamsError
from ggl.defences import global_norm, soteria_scores
from ggl.federated import Client, partition, train_federated
from ggl.frontier import frontier_table, weakest_stopping
from ggl.models import build_model

DP = {"kind": "dp-sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 0.05}


def utility_raw(**overrides) -> dict:
    """Tiny params with a utility stage: 40 private images among 2 clients, 100 test images,
    Opacus' GroupNorm model (so that dp-sgd may join)."""
    raw = tiny_params(**overrides)
    raw["data"]["test_size"] = 100
    raw["model"]["norm"] = "group"
    raw["defences"] = {"none": [], "dp": [dict(DP)]}
    raw["utility"].update(rounds=5, clients=2, local_steps=10, batch_size=10, lr=0.3)
    return raw


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory):
    """The split once, then the utility stage of both defences twice, in two folders."""
    params = Params.from_raw(utility_raw())
    folders = [tmp_path_factory.mktemp(f"run{i}") for i in range(2)]
    with pytest.MonkeyPatch.context() as mp:
        for folder in folders:
            mp.chdir(folder)
            run_stage(params, "split")
            for defence in params.defences:
                run_stage(params, "utility", defence=defence)
    return params, folders


def _files(folder, defence):
    base = folder / f"results/tiny/utility/{defence}"
    return {name: (base / name).read_bytes() for name in ("rounds.csv", "summary.json",
                                                          "model.pt")}


def test_federated_training_learns_above_chance_and_reruns_to_the_byte(stage_runs):
    params, (first, second) = stage_runs
    summary = io.read_json(first / "results/tiny/utility/none/summary.json")
    assert summary["test_accuracy"] > summary["chance_accuracy"] + 0.1
    assert summary["test_accuracy"] > summary["initial_test_accuracy"]
    assert summary["client_sizes"] == [20, 20] and summary["test_images"] == 100
    rounds = pd.read_csv(first / "results/tiny/utility/none/rounds.csv")
    assert list(rounds["round"]) == list(range(6))  # round 0: the initial model
    assert not (first / "results/tiny/utility/none/resume.pt").exists()
    for defence in params.defences:
        assert _files(first, defence) == _files(second, defence)


def test_dp_sgd_epsilon_is_opacus_accountant_called_directly(stage_runs):
    from opacus.accountants import RDPAccountant

    _, (first, _) = stage_runs
    summary = io.read_json(first / "results/tiny/utility/dp/summary.json")
    dp = summary["dp"]
    q = 10 / 20  # batch_size / a client's images
    accountant = RDPAccountant()
    for _ in range(5 * 10):  # rounds x local steps
        accountant.step(noise_multiplier=1.0, sample_rate=q)
    assert dp["epsilon"] == pytest.approx(accountant.get_epsilon(delta=0.05), rel=1e-12)
    assert dp["accountant"] == "rdp" and dp["steps"] == 50 and dp["sample_rates"] == [q, q]
    assert "GroupNorm" in summary["model_note"]
    rounds = pd.read_csv(first / "results/tiny/utility/dp/rounds.csv")
    assert rounds["epsilon"].is_monotonic_increasing and rounds["epsilon"].iloc[0] == 0
    assert rounds["epsilon"].iloc[-1] == pytest.approx(dp["epsilon"], rel=1e-5)


def test_a_killed_run_resumes_from_its_last_round_to_the_same_numbers(tmp_path):
    params = Params.from_raw(utility_raw())
    torch.manual_seed(0)
    images = torch.rand(40, 3, 32, 32) * 2 - 1
    labels = torch.arange(40) % 10
    cfg = params.utility
    clients = [Client(images[i], labels[i]) for i in partition(labels, cfg)]
    test = Client(images[:20], labels[:20])
    steps = (DefenceStep("noise", {"sigma": 0.01}),)

    def train(folder, on_round_end=None):
        return train_federated(build_model(params.model), clients, steps, cfg, test,
                               folder / "resume.pt", {"same": 1}, on_round_end=on_round_end)

    class Killed(Exception):
        pass

    def kill_after(n):
        def hook(r):
            if r == n:
                raise Killed
        return hook

    straight = train(tmp_path / "straight")
    (tmp_path / "killed").mkdir()
    with pytest.raises(Killed):
        train(tmp_path / "killed", kill_after(2))
    assert len(io.load_torch(tmp_path / "killed/resume.pt")["rows"]) == 3  # rounds 0, 1, 2
    ran: list[int] = []
    resumed = train(tmp_path / "killed", ran.append)
    assert ran == [3, 4, 5]  # only the missing rounds
    assert resumed.rows == straight.rows
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(),
                                                  straight.model.state_dict().values(),
                                                  strict=True))


@pytest.mark.parametrize("key, value", [("noise_multiplier", 0.0), ("noise_multiplier", -1.0),
                                        ("max_grad_norm", 0.0), ("delta", 1.0),
                                        ("delta", 0.0)])
def test_bad_dp_settings_are_refused_naming_the_key(key, value):
    raw = utility_raw()
    raw["defences"]["dp"][0][key] = value
    with pytest.raises(ParamsError, match=rf"defences\.dp\[0\]\.{key}"):
        Params.from_raw(raw)


@pytest.mark.parametrize("change, key", [
    (lambda raw: raw["model"].update(norm="batch"), r"model\.norm: group"),
    (lambda raw: raw["defences"].update(dp=[{"kind": "noise", "sigma": 0.1}, DP]),
     r"defences\.dp\[1\]: dp-sgd .* first step"),
    (lambda raw: raw["data"].update(test_size=0), r"data\.test_size > 0"),
    (lambda raw: raw["utility"].update(clients=41), r"utility\.clients"),
    (lambda raw: raw["utility"].update(partition="skewed"), r"utility\.partition"),
])
def test_utility_settings_that_cannot_run_are_refused_before_compute(change, key):
    raw = utility_raw()
    change(raw)
    with pytest.raises(ParamsError, match=key):
        Params.from_raw(raw)


def test_dp_sgd_update_is_opacus_clipped_gradient_plus_its_noise():
    """What the server receives under dp-sgd at one image: the gradient clipped to C by Opacus
    (here with noise too small to see), and with real noise a norm of about sigma C sqrt(d)."""
    raw = utility_raw()
    raw["private_images"] = [0]

    def received(noise_multiplier):
        raw["defences"] = {"dp": [{**DP, "noise_multiplier": noise_multiplier,
                                   "max_grad_norm": 0.5}], "none": []}
        params = Params.from_raw(copy.deepcopy(raw))
        images = torch.rand(1, 3, 32, 32) * 2 - 1
        labels = torch.tensor([3])
        return {d: next(defended_gradients(params, d, images, labels))[1]["gradient"]
                for d in ("dp", "none")}

    quiet = received(1e-9)
    batched = [[g.unsqueeze(0) for g in quiet[d]] for d in ("dp", "none")]
    plain_norm = float(global_norm(batched[1])[0])
    assert plain_norm > 0.5  # so clipping acts
    assert float(global_norm(batched[0])[0]) == pytest.approx(0.5, rel=1e-4)
    scale = 0.5 / (plain_norm + 1e-6)
    assert all(torch.allclose(a, b * scale, atol=1e-6) for a, b in zip(
        quiet["dp"], quiet["none"], strict=True))
    noisy = received(1.0)["dp"]
    d = sum(g.numel() for g in noisy)
    norm = float(global_norm([g.unsqueeze(0) for g in noisy])[0])
    assert norm == pytest.approx(0.5 * math.sqrt(d), rel=0.05)


def test_the_group_norm_model_is_opacus_fix_of_the_published_one():
    from opacus.validators import ModuleValidator

    for width in (4, 16):
        published = build_model(ModelConfig("resnet18-cifar", width, 0, 10))
        ours = build_model(ModelConfig("resnet18-cifar", width, 0, 10, "group"))
        fixed = ModuleValidator.fix(published)
        assert ModuleValidator.validate(ours.train(), strict=False) == []
        assert [(n, type(m), getattr(m, "num_groups", None)) for n, m in ours.named_modules()] \
            == [(n, type(m), getattr(m, "num_groups", None)) for n, m in fixed.named_modules()]
        for (name, a), (_, b) in zip(ours.state_dict().items(), fixed.state_dict().items(),
                                     strict=True):
            assert torch.equal(a, b), name


def test_soteria_scores_a_batch_as_the_sum_of_its_images():
    model = build_model(ModelConfig("resnet18-cifar", 4, 0, 10, "group"))
    batch = torch.rand(3, 3, 32, 32) * 2 - 1
    together = soteria_scores(model, batch)
    apart = sum(soteria_scores(model, image[None]) for image in batch)
    assert torch.allclose(together, apart, rtol=1e-4)


def test_partitions_cover_the_private_split_once():
    labels = torch.arange(300) % 10
    cfg = Params.from_raw(utility_raw()).utility
    for setting in (replace(cfg, clients=5), replace(cfg, clients=5, partition="dirichlet",
                                                     alpha=0.1)):
        parts = partition(labels, setting)
        assert sorted(torch.cat(parts).tolist()) == list(range(300))
    skewed = partition(labels, replace(cfg, clients=5, partition="dirichlet", alpha=0.1))
    # a small alpha gives each client few classes; an even split gives each all ten
    assert min(len(set(labels[p].tolist())) for p in skewed) < 10
    assert all(len(set(labels[p].tolist())) == 10
               for p in partition(labels, replace(cfg, clients=5)))


# --- the frontier -------------------------------------------------------------------------

def _leakage(rows):
    base = {"control": False, "psnr_db_pm1_above_control_low": 0.0,
            "psnr_db_pm1_above_control_high": 0.0, "reid_top1_ssim": 0.0}
    return pd.DataFrame([{**base, **r} for r in rows])


def _params(defences):
    raw = utility_raw()
    raw["defences"] = defences
    return Params.from_raw(raw)


def test_the_frontier_orders_settings_from_weakest_and_finds_the_first_that_stops():
    params = _params({"none": [], "c10": [{"kind": "clipping", "bound": 10.0,
                                           "per_layer": False}],
                      "c1": [{"kind": "clipping", "bound": 1.0, "per_layer": False}],
                      "n1": [{"kind": "noise", "sigma": 0.1}],
                      "n2": [{"kind": "noise", "sigma": 0.2}]})
    leaks = {"none": True, "c10": True, "c1": False, "n1": True, "n2": True}
    leakage = _leakage([{"defence": d, "attack": a, "psnr_db_pm1_above_control": psnr,
                         "verdict": ("leaks beyond the controls (PSNR)" if leaks[d] and a == "ggl"
                                     else "no leakage beyond the controls was measured")}
                        for d in leaks for a, psnr in (("ggl", 3.0), ("ig", -1.0))]
                       + [{"defence": "none", "attack": "prior", "control": True,
                           "psnr_db_pm1_above_control": 0.0, "verdict": "control"}])
    utility = {d: {"test_accuracy": acc} for d, acc in
               (("none", 0.9), ("c10", 0.85), ("c1", 0.7), ("n1", 0.8), ("n2", 0.6))}
    table = frontier_table(leakage, utility, params)
    assert list(table["defence"]) == ["none", "c10", "c1", "n1", "n2"]  # bound: larger = weaker
    assert list(table["best_attack"]) == ["ggl"] * 5
    assert table.set_index("defence")["accuracy_cost"]["c1"] == pytest.approx(0.2)
    stopping = weakest_stopping(table).set_index("family")
    assert stopping.loc["clipping", "defence"] == "c1" and stopping.loc["clipping", "stops"]
    assert not stopping.loc["noise", "stops"]
    assert stopping.loc["noise", "setting"] == "none of the 2 settings tried"


def test_the_frontier_says_when_nothing_leaks_even_without_a_defence():
    params = _params({"none": [], "n1": [{"kind": "noise", "sigma": 0.1}]})
    leakage = _leakage([{"defence": d, "attack": "ggl", "psnr_db_pm1_above_control": -2.0,
                         "verdict": "below the strongest control"} for d in ("none", "n1")])
    table = frontier_table(leakage, {"none": {"test_accuracy": 0.9},
                                     "n1": {"test_accuracy": 0.5}}, params)
    row = weakest_stopping(table).iloc[0]
    assert row["defence"] == "none" and row["accuracy_cost"] == 0
    assert "no defence needed" in row["setting"]
