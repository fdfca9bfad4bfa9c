"""Leakage above control and re-identification tell an informative gradient from an
uninformative one. The tiny setting of test_recovery: private images G(z_true) of one class, a
small CNN, GGL with Adam; the controls are the real control attacks, the pool other samples."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from test_recovery import LABEL, LATENT, Prior, SmallCNN

from ggl.attack import ATTACKS
from ggl.attack.controls import noise_like
from ggl.attack.objective import trial_gradients
from ggl.attack.run import Attacker
from ggl.generators import Generator
from ggl.leakage import (
    above_control,
    leakage_table,
    reid_pool,
    reid_rank,
    short_classes,
    wilson_interval,
)
from ggl.metrics import as_stack, psnr_pm1, ssim
from ggl.models import fc_weight_index
from ggl.settings import AdamConfig, AttackConfig, NoSettings, ObjectiveConfig

IMAGES, POOL = 8, 20
ADAM = AttackConfig("ggl-adam", 1, 200, ObjectiveConfig(reg_weight=1e-3), AdamConfig(lr=0.05))
CONTROLS = {"prior": AttackConfig("prior", 1, 16, NoSettings(), NoSettings()),
            "label-only": AttackConfig("label-only", 1, 1, NoSettings(), NoSettings()),
            "noise-gradient": AttackConfig("noise-gradient", 1, 200, ADAM.objective,
                                           ADAM.optimiser, of="ggl-adam")}


def _samples(prior: Generator, n: int, seed: int) -> torch.Tensor:
    with torch.no_grad():
        return prior(torch.randn(n, LATENT, generator=torch.Generator().manual_seed(seed)))


def leakage_frame(received_of) -> pd.DataFrame:
    """metrics.csv-like rows of GGL-Adam and the three controls on IMAGES private images;
    ``received_of(model, image index, truth)`` is the gradient the server receives."""
    torch.manual_seed(0)
    model = SmallCNN().eval()
    torch.manual_seed(1)
    prior = Generator(Prior(), LATENT, 32)
    truths, pool = _samples(prior, IMAGES, 1000), _samples(prior, POOL, 2000)
    public = (_samples(prior, 64, 3000), torch.full((64,), LABEL))
    rows = []
    for i, truth in enumerate(truths):
        received = received_of(model, i, truth)
        attacker = Attacker(received, (), model, fc_weight_index(model), LABEL, (3, 32, 32),
                            prior, torch.device("cpu"), public=public)
        for name, cfg in {"ggl-adam": ADAM, **CONTROLS}.items():
            stack = as_stack(ATTACKS.get(cfg.method)(attacker, cfg, 7 + i).image)
            rank, top1 = reid_rank(stack, truth, pool)
            rows.append({"defence": "none", "attack": name, "method": cfg.method,
                         "image_id": f"img{i}",
                         "psnr_db_pm1": sum(psnr_pm1(stack, truth.expand_as(stack))) / len(stack),
                         "ssim": sum(ssim(stack, truth.expand_as(stack))) / len(stack),
                         "reid_rank_ssim": rank, "reid_top1_ssim": top1,
                         "reid_candidates": POOL + 1})
    return pd.DataFrame(rows)


def _gradient(model, image) -> list[torch.Tensor]:
    return [g[0].detach() for g in trial_gradients(model, image[None], LABEL)]


@pytest.fixture(scope="module")
def informative() -> pd.DataFrame:
    return leakage_frame(lambda model, i, truth: _gradient(model, truth))


# The gradient carries nothing about the image: an unrelated image of the same class (GGL then
# returns a prior sample, so the prior control is its null), or noise with the true gradient's
# norms (the noise-gradient control's own setting).
UNINFORMATIVE = {"unrelated": "prior", "noise": "noise-gradient"}


@pytest.fixture(scope="module", params=sorted(UNINFORMATIVE))
def uninformative(request) -> tuple[pd.DataFrame, str]:
    torch.manual_seed(1)
    others = _samples(Generator(Prior(), LATENT, 32), IMAGES, 5000)
    if request.param == "unrelated":
        def received_of(model, i, truth):
            return _gradient(model, others[i])
    else:
        def received_of(model, i, truth):
            return noise_like(_gradient(model, truth), torch.Generator().manual_seed(50 + i))
    return leakage_frame(received_of), UNINFORMATIVE[request.param]


def _row(frame: pd.DataFrame, attack: str, controls=("prior", "label-only", "noise-gradient")
         ) -> pd.Series:
    table = leakage_table(above_control(frame, controls))
    return table.set_index("attack").loc[attack]


def test_an_informative_gradient_leaks_above_every_control_and_identifies_the_image(informative):
    row = _row(informative, "ggl-adam")
    assert row["psnr_db_pm1_above_control_low"] > 0, row
    assert row["ssim_above_control_low"] > 0, row
    assert row["reid_top1_ssim_above_control_low"] > 0, row
    assert row["verdict"] == "leaks beyond the controls (PSNR and re-identification)"
    ranks = informative.loc[informative["attack"] == "ggl-adam", "reid_rank_ssim"]
    assert (ranks == 1).all(), ranks.tolist()


def test_an_uninformative_gradient_shows_no_leakage_and_chance_reidentification(uninformative):
    frame, null = uninformative
    # Against the strongest control no leakage is claimed. The interval may lie below 0: the
    # mean public image (label-only), a blur, beats any sharp image of the class in PSNR.
    row = _row(frame, "ggl-adam")
    assert row["psnr_db_pm1_above_control_low"] <= 0, row
    assert not row["verdict"].startswith("leaks"), row["verdict"]
    # Nor is identification beyond the controls claimed. (The interval may lie just below 0:
    # the prior's per-image rate averages 16 samples, the attack's is 0 or 1.)
    assert row["reid_top1_ssim_above_control_low"] <= 0, row
    # Against the control that is the same situation, the interval contains 0.
    matched = _row(frame, "ggl-adam", controls=(null,))
    for metric in ("psnr_db_pm1", "ssim"):
        assert matched[f"{metric}_above_control_low"] <= 0 <= matched[
            f"{metric}_above_control_high"], matched
    # Re-identification no better than chance: chance lies within the top-1 rate's interval.
    assert row["reid_top1_ssim_low"] <= row["reid_top1_chance"] <= row["reid_top1_ssim_high"]
    assert row["reid_rank_ssim_low"] <= row["reid_rank_chance"] or (
        row["reid_rank_ssim"] > row["reid_rank_chance"]), row


def test_the_prior_control_averages_its_samples_and_never_identifies_better_than_chance(
        informative):
    prior = informative[informative["attack"] == "prior"]
    # 16 samples independent of the image: ranks near chance, (POOL + 2) / 2 = 11
    assert 6 < prior["reid_rank_ssim"].mean() < 16


def test_reid_pool_skips_attacked_images_and_reports_short_classes():
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0])
    assert reid_pool(labels, [0], 2) == {0: [2, 4], 1: [1, 3]}
    pool = reid_pool(labels, [0, 2], 3)
    assert pool == {0: [4, 6], 1: [1, 3, 5]} and short_classes(pool, 3) == {0: 2}


def test_reid_rank_counts_ties_against_the_truth():
    truth = torch.zeros(3, 8, 8)
    assert reid_rank(truth[None], truth, torch.stack([truth + 1, truth - 1])) == (1.0, 1.0)
    assert reid_rank(truth[None], truth, torch.stack([truth, truth + 1])) == (2.0, 0.0)


def test_a_batch_of_noise_reidentifies_at_chance():
    """At B > 1 every candidate scores its best SSIM over the batch's reconstructions. Handing
    the truth the reconstruction that an MSE assignment against it chose, as PSNR pairs them,
    ranks it first far above chance even when the reconstructions are noise."""
    gen = torch.Generator().manual_seed(0)
    samples, batch, pool = 200, 4, 20
    candidates = torch.rand(pool + 1, 3, 16, 16, generator=gen) * 2 - 1  # the truth first
    noise = torch.rand(samples, batch, 3, 16, 16, generator=gen) * 2 - 1
    _, top1 = reid_rank(noise.flatten(0, 1), candidates[0], candidates[1:], batch)
    chance = 1 / (pool + 1)
    assert top1 < 2 * chance
    picked = noise[torch.arange(samples), (noise - candidates[0]).pow(2).flatten(2).mean(2)
                   .argmin(1)]
    assert reid_rank(picked, candidates[0], candidates[1:])[1] > 2 * chance
    with pytest.raises(ValueError, match="not samples of 3"):
        reid_rank(noise.flatten(0, 1), candidates[0], candidates[1:], 3)


def test_wilson_interval_matches_known_values():
    low, high = wilson_interval(0.0, 8)
    assert low == 0.0 and high == pytest.approx(0.3244, abs=1e-3)
    low, high = wilson_interval(0.5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-3)
    assert all(math.isnan(v) for v in wilson_interval(0.5, 0))
