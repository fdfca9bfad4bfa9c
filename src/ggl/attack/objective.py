"""The GGL objective: D(y, T-hat(F(G(z)))) + lambda R(z), scored for a batch of latents.

``F`` is the federated model's batch-1 cross-entropy gradient for the inferred label (at client
batch size B > 1 or E > 1 local steps: the client's update of the candidate batch of B images,
its local training simulated differentiably, ``simulated_update``), ``T-hat``
the attacker's estimate of the defence (``ggl.defences.estimate_defence``), ``D`` a gradient
distance and ``R`` a latent regulariser; both are lookup tables, a new one is one more entry.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import nn

from ggl.attack.batched import BatchedScorer, NotFaster, Policy, Unsupported, default_policy, verify
from ggl.defences import Estimate, Gradient
from ggl.settings import ObjectiveConfig

# --- gradient distances: batched trial gradients (n, ...) against the received (...) -> (n,)
# (or against n received updates stacked, (n, ...): candidate i against update i)

Distance = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor]], torch.Tensor]


def _rows(r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The received tensor with a leading candidate dimension: its own if stacked."""
    return r if r.dim() == t.dim() else r.unsqueeze(0)


def l2_per_tensor(trial: Sequence[torch.Tensor], received: Sequence[torch.Tensor]) -> torch.Tensor:
    """Squared l2 distance of each parameter tensor: (n, tensors)."""
    return torch.stack([(t - _rows(r, t)).flatten(1).pow(2).sum(1)
                        for t, r in zip(trial, received, strict=True)], dim=1)


def l2_mean(trial: Sequence[torch.Tensor], received: Sequence[torch.Tensor]) -> torch.Tensor:
    """D1 as the authors' CMA-ES and BO scripts reduce it: the mean over parameter tensors of
    ||g_l - y_l||^2 (their CelebA Adam script sums instead: ``l2_sum``)."""
    return l2_per_tensor(trial, received).mean(1)


def l2_sum(trial: Sequence[torch.Tensor], received: Sequence[torch.Tensor]) -> torch.Tensor:
    """D1 as the authors' CelebA Adam script reduces it (inversefed's): plain ||g - y||^2 over
    all parameters, as many times larger than ``l2_mean`` as the model has tensors."""
    return l2_per_tensor(trial, received).sum(1)


def cosine(trial: Sequence[torch.Tensor], received: Sequence[torch.Tensor]) -> torch.Tensor:
    """D2: 1 - <y, g> / (||y|| ||g||) over all parameters."""
    dot = sum((t * r).flatten(1).sum(1) for t, r in zip(trial, received, strict=True))
    trial_norm = torch.sqrt(sum(t.flatten(1).pow(2).sum(1) for t in trial))
    if received[0].dim() == trial[0].dim():  # stacked: a norm per update
        received_norm = torch.sqrt(sum(r.flatten(1).pow(2).sum(1) for r in received))
    else:
        received_norm = torch.sqrt(sum(r.pow(2).sum() for r in received))
    return 1 - dot / (trial_norm * received_norm + 1e-12)


DISTANCES: dict[str, Distance] = {"l2-mean": l2_mean, "l2-sum": l2_sum, "cosine": cosine}

# --- latent regularisers: (n, k) -> (n,) ---------------------------------------------------

Regulariser = Callable[[torch.Tensor], torch.Tensor]


def kl_scalar(z: torch.Tensor) -> torch.Tensor:
    """The authors' R1: KL of N(mu, sigma^2) to N(0, 1) with the scalar mean and population
    std of each latent's entries."""
    mu, var = z.mean(1), z.var(1, unbiased=False)
    return -0.5 * (1 + torch.log(var + 1e-10) - mu.pow(2) - var)


def norm_deviation(z: torch.Tensor) -> torch.Tensor:
    """R2: (||z||^2 - k)^2."""
    return (z.pow(2).sum(1) - z.shape[1]).pow(2)


def no_regulariser(z: torch.Tensor) -> torch.Tensor:
    return z.new_zeros(z.shape[0])


REGULARISERS: dict[str, Regulariser] = {"kl": kl_scalar, "norm": norm_deviation,
                                        "none": no_regulariser}


def trial_gradients(model: nn.Module, images: torch.Tensor, label: int | torch.Tensor,
                    create_graph: bool = False) -> Gradient:
    """The model's batch-1 cross-entropy gradient of each image, stacked: list of (n, ...).
    ``label`` is a class index or (n, classes) soft-label probabilities (DLG learns them). One
    backward pass per candidate (eval-mode BatchNorm makes the candidates independent);
    ``create_graph`` keeps the graph for double backpropagation."""
    params = [p for p in model.parameters()]
    if isinstance(label, int):
        label = torch.full((len(images),), label, dtype=torch.long, device=images.device)
    per_candidate = []
    with torch.enable_grad():  # callers may score under no_grad; F itself is a gradient
        for image, target in zip(images, label, strict=True):
            loss = nn.functional.cross_entropy(model(image[None]), target[None])
            per_candidate.append(torch.autograd.grad(loss, params, create_graph=create_graph))
    return [torch.stack(tensors) for tensors in zip(*per_candidate, strict=True)]


def image_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Gradient:
    """``trial_gradients`` of n images in one batched pass (``torch.func``: each image's
    parameter gradient under ``vmap``), differentiable with respect to the images and
    ``labels``: (n,) class indices or (n, classes) soft labels. Equal to the loop's to float
    rounding (eval-mode BatchNorm keeps the images independent)."""
    from torch.func import functional_call, grad, vmap

    names = [name for name, _ in model.named_parameters()]
    weights = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(image: torch.Tensor, label: torch.Tensor, weights: dict) -> torch.Tensor:
        logits = functional_call(model, (weights, buffers), (image[None],))
        return nn.functional.cross_entropy(logits, label[None])

    with torch.enable_grad():
        per_image = vmap(grad(loss, argnums=2), in_dims=(0, 0, None))(images, labels, weights)
    return [per_image[name] for name in names]


def simulated_update(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     local_steps: int, local_lr: float, create_graph: bool = False) -> Gradient:
    """The client's update (``ggl.client.local_update``, the client's own code) of one candidate
    batch (B, 3, H, W), as a batch of one: list of (1, ...)."""
    from ggl.client import local_update

    with torch.enable_grad():  # callers may score under no_grad
        update = local_update(model, images, labels, local_steps, local_lr, create_graph)
    return [g.unsqueeze(0) for g in update]


class Objective:
    """Scores a batch of latents (n, k) -> (n,) losses, differentiably. ``scorer`` (params'):
    ``loop`` computes one gradient per candidate; ``batched`` the whole batch at once
    (``ggl.attack.batched``; an error where it cannot); ``auto`` the batched path where the
    device's measured policy says it is faster and the model and estimate allow it, checked once
    against the loop, else the loop.

    A client batch of B > 1 images (``labels``, the inferred multiset) or E > 1 local steps:
    a candidate is B latents side by side, (n, B k) -> (n,); the regulariser is their mean;
    the update is simulated one candidate batch at a time (the batched scorer expresses one
    gradient of one image: ``auto`` falls back to the loop, saying so)."""

    def __init__(self, model: nn.Module, generate: Callable[[torch.Tensor], torch.Tensor],
                 received: Sequence[torch.Tensor], label: int, estimate: Estimate,
                 cfg: ObjectiveConfig, scorer: str = "auto",
                 policy: Policy | None = None, labels: Sequence[int] | None = None,
                 local_steps: int = 1, local_lr: float = 0.1) -> None:
        self.model, self.generate, self.label, self.cfg = model, generate, label, cfg
        self.labels = list(labels) if labels is not None else [label]
        self.local_steps, self.local_lr = local_steps, local_lr
        self.simulates = len(self.labels) > 1 or local_steps > 1
        self.received = list(received)
        self.estimate = estimate if cfg.adaptive else Estimate()
        self.distance = DISTANCES[cfg.distance]
        self.regulariser = REGULARISERS[cfg.regulariser]
        self.scorer, self.policy = scorer, policy
        self._batched: BatchedScorer | None = None
        self._batched_state = "unset"  # unset | on | off

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """The generator's latent for the optimiser's variable; (n B, k) at batch size B."""
        z = torch.tanh(x) if self.cfg.tanh else x
        return z if len(self.labels) == 1 else z.reshape(len(z) * len(self.labels), -1)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """The candidates' images: (n, 3, H, W), or (n B, 3, H, W) at batch size B."""
        return self.generate(self.latent(x))

    def batched_scorer(self, images: torch.Tensor) -> BatchedScorer | None:
        """The batched scorer, built and checked against the loop on the first call."""
        if self._batched_state == "unset":
            self._batched_state = "off"
            try:
                scorer = BatchedScorer(self.model, self.received, self.estimate.ops,
                                       self.cfg.distance, self.active_policy(images.device))
                probe = images[:1].detach()
                verify(scorer, probe, self.targets(probe),
                       trial_gradients(self.model, probe, self.label))
            except Unsupported as err:
                if self.scorer == "batched":
                    raise
                if not isinstance(err, NotFaster):
                    warnings.warn(f"batched objective off, scoring one candidate at a time: {err}",
                                  stacklevel=2)
                return None
            self._batched, self._batched_state = scorer, "on"
        return self._batched

    def active_policy(self, device: torch.device) -> Policy:
        policy = self.policy or default_policy(device)
        if self.scorer == "batched":  # forced: every case it can express
            policy = replace(policy, with_grad=True, prune=True)
        return policy

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        return torch.full((len(images),), self.label, dtype=torch.long, device=images.device)

    def matching(self, images: torch.Tensor) -> torch.Tensor:
        """D(y, T-hat(F(image))) per image: (n,)."""
        create_graph = images.requires_grad
        if self.simulates:
            return self.simulated_matching(images, create_graph)
        batched = self.scorer != "loop" and (
            not create_graph or self.active_policy(images.device).with_grad)
        scorer = self.batched_scorer(images) if batched else None
        if scorer is not None:
            return scorer(images, self.targets(images), create_graph=create_graph)
        # One candidate at a time, each reduced at once: holding every candidate's gradient
        # (n copies of the model's size) only cost memory and time.
        return torch.cat([
            self.distance(self.estimate.apply(trial_gradients(self.model, image[None], self.label,
                                                              create_graph=create_graph)),
                          self.received) for image in images])

    def simulated_matching(self, images: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """D(y, T-hat(client update of each candidate batch)): (n,) for (n B, 3, H, W)."""
        if self.scorer == "batched":
            raise Unsupported("scorer: batched scores one gradient of one image per candidate; "
                              "a client batch above 1 or several local steps needs scorer auto "
                              "or loop")
        if self.scorer == "auto" and self._batched_state == "unset":
            self._batched_state = "off"
            warnings.warn(f"batched objective off at client batch size {len(self.labels)} and "
                          f"{self.local_steps} local step(s): scoring one candidate batch at a "
                          "time", stacklevel=3)
        labels = torch.tensor(self.labels, dtype=torch.long, device=images.device)
        return torch.cat([
            self.distance(self.estimate.apply(simulated_update(
                self.model, batch, labels, self.local_steps, self.local_lr, create_graph)),
                self.received)
            for batch in images.reshape(-1, len(self.labels), *images.shape[1:])])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        z = self.latent(x)
        matching = self.matching(self.generate(z))  # first: the order autograd accumulates in
        penalty = self.regulariser(z)
        if len(self.labels) > 1:
            penalty = penalty.reshape(len(x), len(self.labels)).mean(1)
        return matching + self.cfg.reg_weight * penalty
