"""GGL recovers a generator image from its gradient, and the defence estimate pays off.

A tiny setting where the truth is known exactly: the private image is G(z_true) for a small
prior, the federated model a small CNN. Margins come from measurement (see the issue-4 note):
with these budgets the optimisers reached 6-20 dB (PSNR, [-1, 1] convention) where random
prior samples average 4.3-4.6 dB; the adaptive estimate gave +5 to +16 dB under
sparsification 90 % and Soteria 80 %. Each image's attack has its own seed: TuRBO's mean
over the three images ranged 5.7-9.0 dB at 120 evaluations and 7.0-10.7 dB at 200 across
four seeds shared by all images, so one seed for all would test one draw's luck.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ggl.attack.objective import Objective, trial_gradients
from ggl.attack.optimisers import minimise
from ggl.config import DefenceStep
from ggl.defences import ClientContext, apply_defence, estimate_defence
from ggl.generators import Generator
from ggl.metrics import psnr_pm1
from ggl.models import fc_weight_index
from ggl.settings import AdamConfig, CMAESConfig, ObjectiveConfig, TurboConfig

LATENT, LABEL, IMAGES = 16, 3, 3
# lambda scaled to this model's gradients (matching losses ~1e-4): at the paper's 0.1 the KL
# term dominates and every optimiser just returns an in-distribution latent.
OBJECTIVE = ObjectiveConfig(reg_weight=1e-3)
OPTIMISERS = {"adam": (AdamConfig(lr=0.05), 300), "cmaes": (CMAESConfig(popsize=20), 600),
              "turbo": (TurboConfig(n_init=30, n_candidates=500, fit_maxiter=30), 200)}


class Prior(nn.Module):
    """Images that change a lot with z (a random-weight DCGAN's barely do)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(LATENT, 3 * 8 * 8)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(2 * self.lin(z)).view(-1, 3, 8, 8)
        return nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 2, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 2, 1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.sigmoid(self.conv2(torch.sigmoid(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    torch.manual_seed(1)
    prior = Generator(Prior(), LATENT, 32)
    samples = prior(torch.randn(256, LATENT, generator=torch.Generator().manual_seed(99)))
    truths = [prior(torch.randn(1, LATENT, generator=torch.Generator().manual_seed(1000 + i)))
              for i in range(IMAGES)]
    return model, prior, samples, truths


def attack(setting, truth, steps, method="adam", adaptive=True, seed=0) -> float:
    """PSNR of the reconstruction against the truth; the attacker sees only the gradient."""
    model, prior, _, _ = setting
    fc = fc_weight_index(model)
    clean = [g[0] for g in trial_gradients(model, truth, LABEL)]
    ctx = ClientContext(model, truth, torch.tensor([LABEL]), fc, torch.Generator().manual_seed(0))
    received = apply_defence(clean, steps, ctx)
    objective = Objective(model, prior, received, LABEL, estimate_defence(received, steps, fc),
                          ObjectiveConfig(**{**OBJECTIVE.__dict__, "adaptive": adaptive}))
    cfg, budget = OPTIMISERS[method]
    result = minimise(method, objective, LATENT, budget, cfg, seed=seed,
                      device=torch.device("cpu"))
    with torch.no_grad():
        return psnr_pm1(prior(result.best_z[None]), truth)[0]


@pytest.mark.parametrize("method", sorted(OPTIMISERS))
def test_each_optimiser_is_much_closer_than_random_prior_samples(setting, method):
    _, _, samples, truths = setting
    ours = [attack(setting, truth, (), method, seed=i) for i, truth in enumerate(truths)]
    chance = [torch.tensor(psnr_pm1(samples, truth.expand_as(samples))) for truth in truths]
    mean_chance = sum(float(c.mean()) for c in chance) / IMAGES
    p90_chance = sum(float(c.quantile(0.9)) for c in chance) / IMAGES
    assert sum(ours) / IMAGES > mean_chance + 3.0, (ours, mean_chance)
    assert sum(ours) / IMAGES > p90_chance, (ours, p90_chance)


@pytest.mark.parametrize("step", [DefenceStep("sparsification", {"rate": 90.0}),
                                  DefenceStep("soteria", {"rate": 80.0})],
                         ids=["sparsification", "soteria"])
def test_the_defence_estimate_costs_the_attack_less(setting, step):
    truths = setting[3]
    adaptive = [attack(setting, truth, (step,), adaptive=True, seed=i)
                for i, truth in enumerate(truths)]
    blind = [attack(setting, truth, (step,), adaptive=False, seed=i)
             for i, truth in enumerate(truths)]
    assert sum(adaptive) / IMAGES > sum(blind) / IMAGES + 3.0, (adaptive, blind)


BATCH_LABELS = [1, 3, 5, 7]
# Measured (2 batches x E in {1, 3} x 2 seeds, 400 Adam steps): every image of the batch
# 3.9-23 dB above the mean of random prior samples; required: 2 dB for each of the four
MARGIN_B4 = 2.0


def batch_attack(setting, truths: torch.Tensor, local_steps: int, seed: int) -> list[float]:
    """GGL-Adam on a client batch of 4 (E local steps): the labels inferred from the update,
    four latents optimised jointly, each private image scored against its matched
    reconstruction. The attacker sees only the update and the protocol."""
    from ggl.attack.labels import label_counts, labels_from_counts, mean_softmax
    from ggl.attack.objective import simulated_update
    from ggl.metrics import match_batch

    model, prior, samples, _ = setting
    labels = torch.tensor(BATCH_LABELS)
    received = [g[0] for g in simulated_update(model, truths, labels, local_steps, 0.1)]
    fc = fc_weight_index(model)
    inferred = labels_from_counts(label_counts(received[fc + 1] / local_steps, len(truths),
                                               mean_softmax(model, samples)))
    assert inferred == BATCH_LABELS
    objective = Objective(model, prior, received, inferred[0], estimate_defence(received, (), fc),
                          OBJECTIVE, labels=inferred, local_steps=local_steps, local_lr=0.1)
    result = minimise("adam", objective, LATENT * len(truths), 400, AdamConfig(lr=0.05),
                      seed=seed, device=torch.device("cpu"))
    with torch.no_grad():
        batch = objective.images(result.best_z[None])
    slots = match_batch(batch, truths)
    return psnr_pm1(batch[slots], truths)


@pytest.mark.parametrize("local_steps", [1, 3])
def test_ggl_recovers_a_batch_of_four_better_than_random_prior_samples(setting, local_steps):
    _, prior, samples, _ = setting
    z = torch.randn(len(BATCH_LABELS), LATENT, generator=torch.Generator().manual_seed(2000))
    with torch.no_grad():
        truths = prior(z)
    ours = batch_attack(setting, truths, local_steps, seed=0)
    chance = [float(torch.tensor(psnr_pm1(samples, t.expand_as(samples))).mean())
              for t in truths]
    margins = [o - c for o, c in zip(ours, chance, strict=True)]
    assert min(margins) > MARGIN_B4, (ours, chance)
