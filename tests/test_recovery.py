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
