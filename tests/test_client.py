"""The client's local training (E SGD steps on its batch) and the attacker's unrolled
simulation of it, which are one function."""

from __future__ import annotations

import copy

import pytest
import torch

from ggl.client import client_gradient, local_update
from ggl.config import ModelConfig
from ggl.models import build_model


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(0)
    model = build_model(ModelConfig("resnet18-cifar", 4, 0, 10, "batch"))
    return model, torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1, torch.tensor([1, 2, 3, 1])


def test_one_local_step_sends_the_gradient_itself(batch):
    model, images, labels = batch
    for ours, gradient in zip(local_update(model, images, labels, 1, 0.1),
                              client_gradient(model, images, labels), strict=True):
        assert torch.equal(ours, gradient)


def test_five_local_steps_equal_torchs_sgd_on_a_copy_and_leave_the_model_alone(batch):
    model, images, labels = batch
    before = [p.detach().clone() for p in model.parameters()]
    client = copy.deepcopy(model)
    sgd = torch.optim.SGD(client.parameters(), lr=0.1)
    for _ in range(5):
        sgd.zero_grad()
        torch.nn.functional.cross_entropy(client(images), labels).backward()
        sgd.step()
    real = [(w0 - w5) / 0.1 for w0, w5 in zip(model.parameters(), client.parameters(),
                                               strict=True)]
    ours = local_update(model, images, labels, 5, 0.1)
    for a, b in zip(ours, real, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # measured: 1.8e-6 at most
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert not torch.allclose(ours[0], local_update(model, images, labels, 1, 0.1)[0])


def test_the_simulation_is_differentiable_in_the_images(batch):
    model, images, labels = batch
    candidate = images.clone().requires_grad_(True)
    update = local_update(model, candidate, labels, 3, 0.1, create_graph=True)
    (grad,) = torch.autograd.grad(sum(u.pow(2).sum() for u in update), candidate)
    assert grad.shape == images.shape and float(grad.norm()) > 0
