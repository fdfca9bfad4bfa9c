"""Compute in one unit for every attack: model passes.

One model pass = one forward and one backward pass of the federated model on one image, the
cost of one candidate's gradient: ``torch.autograd.grad`` of the batch-1 cross-entropy with
respect to the parameters. What an objective evaluation costs in that unit is measured, not
assumed, by counting FLOPs with ``torch.utils.flop_counter.FlopCounterMode`` on the attack's
own model at batch 1:

* a *scored* evaluation (CMA-ES, TuRBO): the trial gradient and its distance, nothing
  differentiated through it; 1 unit by definition (a test checks the count equals the unit);
* a *differentiable* evaluation (GGL with Adam, the pixel baselines): the trial gradient with
  ``create_graph=True``, the distance, and the backward through both (double backprop), to
  the image and, as the attacks do, into the model's parameters: R units, R the FLOP ratio.

FlopCounterMode counts convolutions and matrix products (forward and backward) only:
elementwise operations (activations, BatchNorm in eval mode, the distance, the defence
estimate) and the generator, which is not part of the federated model, are not counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ggl.attack.objective import simulated_update, trial_gradients
from ggl.config import ClientConfig
from ggl.defences import Gradient
from ggl.settings import AdamConfig, AttackConfig, CMAESConfig, PixelOptimiserConfig, TurboConfig

UNIT = ("model passes: one forward and one backward pass of the federated model on one image "
        "(one candidate's gradient), counted in FLOPs of convolutions and matrix products")

Match = Callable[[Gradient], torch.Tensor]  # trial gradients (n, ...) -> (n,) distances


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of convolutions and matrix products that ``fn()`` runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _probe(model: nn.Module, image_shape: tuple[int, ...]) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.zeros(1, *image_shape, device=device)


def unit_flops(model: nn.Module, image_shape: tuple[int, ...], label: int) -> int:
    """FLOPs of the unit: forward and the parameters' gradient of one image."""
    params = list(model.parameters())
    x = _probe(model, image_shape)

    def gradient() -> None:
        loss = nn.functional.cross_entropy(model(x), torch.tensor([label], device=x.device))
        torch.autograd.grad(loss, params)

    return count_flops(gradient)


def evaluation_flops(model: nn.Module, image_shape: tuple[int, ...], labels: int | list[int],
                     match: Match, differentiable: bool, client: ClientConfig | None = None
                     ) -> int:
    """FLOPs of one objective evaluation, as the attacks compute it: one image's gradient, or
    at a client batch of B = len(labels) images or E > 1 local steps the simulated update of
    one candidate batch."""
    labels = [labels] if isinstance(labels, int) else list(labels)
    client = client or ClientConfig()
    simulates = len(labels) > 1 or client.local_steps > 1
    device = next(model.parameters()).device
    x = torch.zeros(len(labels), *image_shape, device=device).requires_grad_(differentiable)
    targets = torch.tensor(labels, device=device)

    def update(create_graph: bool) -> Gradient:
        if simulates:
            return simulated_update(model, x, targets, client.local_steps, client.local_lr,
                                    create_graph)
        return trial_gradients(model, x, labels[0], create_graph=create_graph)

    def scored() -> None:
        with torch.no_grad():
            match(update(False))

    def differentiated() -> None:
        match(update(True)).sum().backward()

    flops = count_flops(differentiated if differentiable else scored)
    model.zero_grad(set_to_none=True)
    return flops


def cost_per_evaluation(model: nn.Module, image_shape: tuple[int, ...], labels: int | list[int],
                        match: Match, differentiable: bool,
                        client: ClientConfig | None = None) -> float:
    """Model passes per objective evaluation: 1 for a scored one, the measured R for a
    differentiable one; at a client batch (``labels``, B > 1) or E > 1 local steps, measured
    for the simulated update of one candidate batch (about B E scored)."""
    labels = [labels] if isinstance(labels, int) else list(labels)
    client = client or ClientConfig()
    if not differentiable and len(labels) == 1 and client.local_steps == 1:
        return 1.0
    return (evaluation_flops(model, image_shape, labels, match, differentiable, client)
            / unit_flops(model, image_shape, labels[0]))


def is_differentiable(cfg: AttackConfig) -> bool | None:
    """Whether the attack differentiates through its evaluations (double backprop), by its
    optimiser: Adam and the pixel baselines do, CMA-ES and TuRBO score; None: unknown (a
    plugin method or a control)."""
    if isinstance(cfg.optimiser, AdamConfig | PixelOptimiserConfig):
        return True
    if isinstance(cfg.optimiser, CMAESConfig | TurboConfig):
        return False
    return None


def budget_for(cfg: AttackConfig, compute_budget: int, cost: float | None) -> int:
    """Evaluations per trial: ``cfg.budget`` when ``compute_budget`` is 0 or the cost is
    unknown or 0, else the most evaluations within ``compute_budget`` model passes (at least 1, for
    CMA-ES at least one generation)."""
    if compute_budget == 0 or not cost:  # off, unknown, or free (the prior's samples)
        return cfg.budget
    budget = max(1, math.floor(compute_budget / cost))
    if isinstance(cfg.optimiser, CMAESConfig):
        budget = max(budget, cfg.optimiser.popsize)
    return budget
