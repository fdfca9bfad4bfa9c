"""The private images of one job attacked side by side.

GGL with Adam, its noise-gradient control and the pixel baselines spend their time in small
passes of the federated model at batch 1 (double backprop), where a CPU is bound by the cost of
each operation more than by arithmetic. Attacking N updates side by side makes each step one
batched pass: each image's parameter gradient under ``torch.func.vmap``
(``objective.image_gradients``) against the N received gradients and defence estimates stacked
(``defences.stack_estimates``). Every update keeps its own start, optimiser state, tracker and
budget, so it takes the steps it would take alone; only the batched pass's float rounding
differs (about 1e-6 relative per step). ``scorer: loop`` attacks one update at a time. CMA-ES
and TuRBO already score a whole generation in one pass, one update at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ggl.attack.objective import DISTANCES, REGULARISERS, Distance, image_gradients
from ggl.attack.optimisers import adam_lockstep
from ggl.attack.run import Attacker, Trial, ggl_attack, ggl_objective, latent_trial
from ggl.defences import Estimate, Gradient, stack_estimates
from ggl.settings import AttackConfig

# Updates per batched pass: the pass's memory grows with it (double backprop of every image),
# its speed-up flattens (benchmarks/README.md, "image_batch.py").
IMAGES_PER_PASS = 8


@dataclass
class Stack:
    """N updates of one client protocol (one image, one local step each), stacked."""

    model: nn.Module  # the federated model every update of the protocol was computed on
    received: Gradient  # (N, ...) per parameter tensor
    estimate: Estimate  # each op's settings stacked: update i's estimate for candidate i
    labels: torch.Tensor  # (N,) inferred labels

    def matching(self, images: torch.Tensor, labels: torch.Tensor,
                 distance: Distance) -> torch.Tensor:
        """D(y_i, T-hat_i(F(image_i))) for candidate image i of update i: (N,)."""
        grads = image_gradients(self.model, images, labels)
        return distance(self.estimate.apply(grads), self.received)


def stack(attackers: Sequence[Attacker], adaptive: bool) -> Stack | None:
    """The updates stacked, with their estimates (``adaptive``) or none; None where they cannot
    be: a client batch above one image or several local steps, or estimates of other kinds."""
    if any(a.simulates for a in attackers):
        return None
    estimate = stack_estimates([a.estimate if adaptive else Estimate() for a in attackers])
    if estimate is None:
        return None
    received = [torch.stack(tensors) for tensors in zip(*(a.received for a in attackers),
                                                         strict=True)]
    labels = torch.tensor([a.label for a in attackers], device=attackers[0].device)
    return Stack(attackers[0].model, received, estimate, labels)


def groups(attackers: Sequence[Attacker], scorer: str, lockstep: bool) -> list[list[int]]:
    """Indices of the updates to attack together, in order: runs of at most
    ``IMAGES_PER_PASS`` of one client protocol where the method has a lockstep form
    (``lockstep``) and ``scorer`` is not loop; else one at a time."""
    if scorer == "loop" or not lockstep:
        return [[i] for i in range(len(attackers))]
    out: list[list[int]] = []
    for i, attacker in enumerate(attackers):
        if (out and len(out[-1]) < IMAGES_PER_PASS
                and attackers[out[-1][0]].client == attacker.client):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def ggl_adam(attackers: list[Attacker], cfg: AttackConfig, seeds: list[int]) -> list[Trial]:
    """GGL with Adam on every update side by side (``ggl.attack.run.ggl_attack("adam")``, the
    objective of ``ggl.attack.objective.Objective`` row by row)."""
    stacked = stack(attackers, cfg.objective.adaptive) if len(attackers) > 1 else None
    if stacked is None:
        one = ggl_attack("adam")
        return [one(a, cfg, seed) for a, seed in zip(attackers, seeds, strict=True)]
    generator, device = attackers[0].generator, attackers[0].device
    if generator is None:
        raise ValueError(f"{cfg.method} needs a generator")
    distance = DISTANCES[cfg.objective.distance]
    regulariser = REGULARISERS[cfg.objective.regulariser]

    def objective(x: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(x) if cfg.objective.tanh else x
        matching = stacked.matching(generator(z, stacked.labels), stacked.labels, distance)
        return matching + cfg.objective.reg_weight * regulariser(z)

    results = adam_lockstep(objective, generator.latent_dim, cfg.budget, cfg.optimiser, seeds,
                            device)
    return [latent_trial(ggl_objective(a, cfg), result, 1, device)
            for a, result in zip(attackers, results, strict=True)]

