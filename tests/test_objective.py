"""The GGL objective scores batches exactly as it scores one latent at a time."""

from __future__ import annotations

import pytest
import torch

from ggl.attack.objective import (
    DISTANCES,
    REGULARISERS,
    Objective,
    kl_scalar,
    trial_gradients,
)
from ggl.config import DefenceStep, ModelConfig
from ggl.defences import estimate_defence
from ggl.generators import DCGANGenerator, Generator
from ggl.models import build_model, fc_weight_index
from ggl.settings import ObjectiveConfig


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    model = build_model(ModelConfig("resnet18-cifar", 4, 0, 10))
    generator = Generator(DCGANGenerator(16, 4), 16, 32)
    target = trial_gradients(model, generator(torch.randn(1, 16)), 3)
    received = [g[0] for g in target]
    return model, generator, received


@pytest.mark.parametrize("distance", sorted(DISTANCES))
@pytest.mark.parametrize("steps", [(), (DefenceStep("sparsification", {"rate": 90.0}),),
                                   (DefenceStep("clipping", {"bound": 0.1,
                                                             "per_layer": False}),)])
def test_batch_and_one_at_a_time_agree(setting, distance, steps):
    model, generator, received = setting
    estimate = estimate_defence(received, steps, fc_weight_index(model))
    objective = Objective(model, generator, received, 3, estimate,
                          ObjectiveConfig(distance=distance))
    z = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    batch = objective(z)
    single = torch.cat([objective(z[i : i + 1]) for i in range(len(z))])
    assert batch.shape == (6,)
    assert torch.allclose(batch, single, rtol=1e-5, atol=1e-7)


def test_objective_is_differentiable_in_the_latent(setting):
    model, generator, received = setting
    objective = Objective(model, generator, received, 3, estimate_defence(received, (), 0),
                          ObjectiveConfig(tanh=True))
    x = torch.randn(1, 16, requires_grad=True)
    objective(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_distances_on_known_values():
    y = [torch.tensor([1.0, 0.0]), torch.tensor([[2.0]])]
    g = [torch.tensor([[0.0, 0.0]]), torch.tensor([[[0.0]]])]
    assert DISTANCES["l2-sum"](g, y).item() == pytest.approx(5.0)
    assert DISTANCES["l2-mean"](g, y).item() == pytest.approx(2.5)
    same = [t.unsqueeze(0) * 3 for t in y]
    assert DISTANCES["cosine"](same, y).item() == pytest.approx(0.0, abs=1e-6)


def test_regularisers():
    z = torch.randn(4, 128, generator=torch.Generator().manual_seed(0))
    standard = torch.zeros(1, 128)
    standard[0, ::2], standard[0, 1::2] = 1.0, -1.0  # mean 0, std 1 exactly
    assert kl_scalar(standard).item() == pytest.approx(0.0, abs=1e-6)
    assert (kl_scalar(z * 3) > kl_scalar(z)).all()
    assert REGULARISERS["norm"](standard).item() == pytest.approx(0.0)
    assert REGULARISERS["none"](z).abs().sum() == 0
