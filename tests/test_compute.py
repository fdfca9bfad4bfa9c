"""Compute in model passes: the FLOP-measured cost of an evaluation (and a wall-clock check of
it), what result.json records, equal compute from params, checkpoints and quality curves."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from conftest import tiny_params

from ggl.attack import ATTACKS
from ggl.attack.compute import (
    budget_for,
    evaluation_flops,
    is_differentiable,
    unit_flops,
)
from ggl.attack.labels import infer_label
from ggl.attack.objective import DISTANCES, trial_gradients
from ggl.attack.optimisers import Tracker, checkpoint_counts
from ggl.attack.run import Attacker, Trial, checkpoints_record, evaluation_cost, run_attack
from ggl.config import ModelConfig, attack_config
from ggl.generators import build_dcgan
from ggl.models import build_model, fc_weight_index
from ggl.quality_curve import checkpoint_quality, still_improving
from ggl.report import quality_vs_compute_plot

SHAPE = (3, 32, 32)


def tiny_model(width: int = 4) -> torch.nn.Module:
    model = build_model(ModelConfig("resnet18-cifar", width, 0, 10), torch.device("cpu"))
    for p in model.parameters():
        p.requires_grad_(True)
    return model


@pytest.fixture(scope="module")
def attacker() -> Attacker:
    """No defence, the tiny model, a random-weight generator (latent 8)."""
    model = tiny_model()
    image = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    received = [g[0].detach() for g in trial_gradients(model, image, 3)]
    fc = fc_weight_index(model)
    generator = build_dcgan(None, latent_dim=8, width=2, conditional=True, num_classes=10)
    return Attacker(received, (), model, fc, infer_label(received, fc), SHAPE, generator,
                    torch.device("cpu"), "loop")


def cfg(method: str, budget: int, trials: int = 1):
    raw = tiny_params()["attacks"][method]
    return attack_config({**raw, "budget": budget, "trials": trials}, f"attacks.{method}")


def l2(received):
    return lambda grads: DISTANCES["l2-mean"](grads, received)


def test_a_scored_evaluation_is_the_unit_and_a_differentiable_one_costs_more(attacker):
    model, received = attacker.model, attacker.received
    unit = unit_flops(model, SHAPE, 3)
    assert unit > 0
    assert evaluation_flops(model, SHAPE, 3, l2(received), differentiable=False) == unit
    ratio = evaluation_flops(model, SHAPE, 3, l2(received), differentiable=True) / unit
    # Double backprop: the gradient's own backward pass again, plus the forward's: about 3.
    assert 2.5 < ratio < 3.5
    assert all(p.grad is None for p in model.parameters())  # the measurement leaves no trace
    assert [is_differentiable(cfg(m, 50)) for m in ("ggl-adam", "ggl-cmaes", "ggl-bo", "dlg",
                                                    "ig")] == [True, False, False, True, True]
    plugin = attack_config({**tiny_params()["attacks"]["ggl-adam"], "method": "my.mod:fn",
                            "optimiser": {}}, "attacks.mine")
    assert is_differentiable(plugin) is None


@pytest.mark.parametrize("method", ["ggl-adam", "ggl-cmaes", "idlg"])
def test_result_records_compute_as_evaluations_times_cost(attacker, method):
    c = cfg(method, 8, trials=2)
    _, trials, result = run_attack(ATTACKS.get(method), attacker, c, 0,
                                   evaluation_cost(attacker, c))
    assert result["evaluations"] == sum(t.evaluations for t in trials) == 16
    cost = result["cost_per_evaluation"]
    assert cost == (1.0 if method == "ggl-cmaes" else pytest.approx(3.04, abs=0.1))
    assert result["compute"] == pytest.approx(16 * cost)
    assert result["compute_unit"].startswith("model passes")
    assert result["budget"] == 8 and result["compute_budget"] == 0


@pytest.mark.parametrize("method", ["ggl-adam", "ggl-cmaes"])
def test_compute_budget_gives_each_attack_the_same_model_passes(attacker, method):
    n = 40
    c = cfg(method, 8)
    _, _, result = run_attack(ATTACKS.get(method), attacker, c, 0, evaluation_cost(attacker, c),
                              compute_budget=n)
    assert n - result["cost_per_evaluation"] < result["compute"] <= n
    assert result["budget"] == result["evaluations"]  # one trial


def test_budget_for_a_compute_budget():
    cmaes = cfg("ggl-cmaes", 8)  # popsize 4
    assert budget_for(cmaes, 0, 1.0) == 8
    assert budget_for(cmaes, 100, 1.0) == 100
    assert budget_for(cmaes, 2, 1.0) == 4  # at least one generation
    assert budget_for(cfg("ggl-adam", 8), 10, 3.04) == 3
    assert budget_for(cfg("ggl-adam", 8), 1, 3.04) == 1  # at least one evaluation
    assert budget_for(cfg("ggl-adam", 8), 10, None) == 8  # unknown cost: its own budget


def test_checkpoint_counts():
    assert checkpoint_counts(800) == [25, 50, 100, 200, 400, 800]
    assert checkpoint_counts(150) == [5, 10, 19, 38, 75, 150]
    assert checkpoint_counts(3) == [1, 2, 3]


def test_tracker_keeps_the_best_so_far_at_the_count_reached():
    tracker = Tracker(budget=8)  # checkpoints at 1, 2, 4, 8
    for losses in ([5.0, 3.0, 4.0], [2.0, 6.0, 7.0], [1.0, 9.0]):  # batches of 3, 3, 2
        tracker.record(torch.tensor(losses)[:, None], torch.tensor(losses))
    assert [(e, float(z)) for e, z in tracker.final_checkpoints()] == [(3, 3.0), (6, 2.0),
                                                                       (8, 1.0)]


@pytest.mark.parametrize(("method", "budget"), [("ggl-adam", 20), ("ggl-cmaes", 40),
                                                ("ggl-bo", 12), ("gi", 20)])
def test_checkpoints_are_monotone_and_end_at_the_reconstruction(attacker, method, budget):
    trial = ATTACKS.get(method)(attacker, cfg(method, budget), 0)
    counts = [e for e, _ in trial.checkpoints]
    assert counts == sorted(set(counts)) and counts[-1] == trial.evaluations == budget
    assert len(counts) >= 3
    assert torch.equal(trial.checkpoints[-1][1], trial.image)
    record = checkpoints_record(trial, 2.0)
    assert record["images"].shape == (len(counts), *SHAPE)
    assert record["evaluations"].tolist() == counts
    assert record["compute"].tolist() == [2.0 * c for c in counts]


def test_a_trial_without_checkpoints_gives_its_images_at_its_evaluations():
    stack = torch.zeros(5, *SHAPE)
    record = checkpoints_record(Trial(stack, 0.0, 5, []), None)
    assert record["images"].shape == (5, *SHAPE)
    assert record["evaluations"].tolist() == [5] * 5
    assert torch.isnan(record["compute"]).all()
    assert checkpoints_record(Trial(stack[0], 0.0, 1, []), 1.0)["images"].shape == (1, *SHAPE)


def test_checkpoint_quality_scores_each_checkpoint():
    private = torch.zeros(*SHAPE)
    images = torch.stack([torch.full(SHAPE, v) for v in (0.5, 0.1, 0.0)])
    rows = checkpoint_quality({"evaluations": torch.tensor([1, 2, 4]),
                               "compute": torch.tensor([3.0, 6.0, 12.0]), "images": images},
                              private)
    assert [r["evaluations"] for r in rows] == [1, 2, 4]
    assert [r["compute"] for r in rows] == [3.0, 6.0, 12.0]
    assert rows[0]["psnr_db_pm1"] == pytest.approx(10 * math.log10(1 / 0.25))
    assert rows[1]["psnr_db_pm1"] == pytest.approx(20.0)
    assert rows[2]["psnr_db_pm1"] == math.inf and rows[2]["ssim"] == pytest.approx(1.0)


def curve_frame() -> pd.DataFrame:
    """Two images; 'slow' gains 2 dB over its last doubling, 'flat' 0.1 dB; a control with
    one checkpoint and unknown compute."""
    rows = []
    for image, offset in (("img0", 0.0), ("img1", 1.0)):
        for e in (25, 50, 100, 200):
            rows.append(("none", "slow", image, e, 3.0 * e, 5 + offset + 2 * math.log2(e / 25)))
            rows.append(("none", "flat", image, e, 1.0 * e, 9 + offset + 0.1 * (e == 200)))
        rows.append(("none", "prior", image, 100, math.nan, 6.0 + offset))
    frame = pd.DataFrame(rows, columns=["defence", "attack", "image_id", "evaluations",
                                        "compute", "psnr_db_pm1"])
    return pd.concat([frame, frame.assign(defence="noise")], ignore_index=True)


def test_still_improving_flags_a_curve_that_gained_over_its_last_doubling():
    flags = still_improving(curve_frame()).set_index(["defence", "attack"])
    assert flags.loc[("none", "slow"), "gain_db"] == pytest.approx(2.0)
    assert flags.loc[("none", "flat"), "gain_db"] == pytest.approx(0.1)
    assert bool(flags.loc[("noise", "slow"), "still_improving"])
    assert not flags.loc[("noise", "flat"), "still_improving"]
    assert math.isnan(flags.loc[("none", "prior"), "gain_db"])
    assert not flags.loc[("none", "prior"), "still_improving"]


def test_quality_vs_compute_plot_has_a_log_compute_panel_per_defence():
    fig = quality_vs_compute_plot(curve_frame())
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["none", "noise"]
    assert all(ax.get_xscale() == "log" for ax in axes)
    assert "model passes" in axes[0].get_xlabel() and "[-1, 1]" in axes[0].get_ylabel()
    slow = next(line for line in axes[0].get_lines() if line.get_label() == "slow")
    assert list(slow.get_xdata()) == [75.0, 150.0, 300.0, 600.0]
    assert list(slow.get_ydata()) == pytest.approx([5.5, 7.5, 9.5, 11.5])  # mean of images
