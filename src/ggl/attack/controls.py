"""Controls: what the curious server gets without the information in the gradient. An attack's
score means little until it is set against them (``ggl.leakage``). Each is an attack function
like any other and, like them, never sees a private image.

- ``prior``: ``budget`` samples of the generator for the label inferred from the gradient
  (their metrics are averaged); at a client batch of B > 1, ``budget`` batches, each image of
  its inferred label;
- ``label-only``: the mean public image of the inferred class (of each inferred label);
- ``noise-gradient``: a GGL attack (``of``), same settings and seed, on Gaussian noise with the
  received gradient's per-tensor norms and zeros, and the label inferred from the real one.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ggl.attack.lockstep import ggl_adam
from ggl.attack.run import Attacker, Trial, ggl_attack
from ggl.defences import Gradient
from ggl.runtime import derive_seed
from ggl.settings import GGL_OPTIMISERS, OPTIMISER_CONFIGS, AttackConfig


def prior(attacker: Attacker, cfg: AttackConfig, seed: int) -> Trial:
    """``cfg.budget`` latents drawn from the generator's prior N(0, I), of the inferred class."""
    if attacker.generator is None:
        raise ValueError("the prior control needs a generator")
    gen = torch.Generator().manual_seed(derive_seed(seed, "prior"))
    size = attacker.client.batch_size
    z = torch.randn(cfg.budget * size, attacker.generator.latent_dim, generator=gen)
    labels = torch.tensor(attacker.labels, device=attacker.device).repeat(cfg.budget)
    with torch.no_grad():
        images = attacker.generator(z.to(attacker.device), labels).cpu()
    if size > 1:  # (samples, B, 3, H, W)
        images, z = images.reshape(cfg.budget, size, *images.shape[1:]), z.reshape(
            cfg.budget, size, -1)
    return Trial(images, math.nan, cfg.budget, [], latent=z, info={"samples": cfg.budget})


def label_only(attacker: Attacker, cfg: AttackConfig, seed: int) -> Trial:
    """The mean public image of the inferred class."""
    if attacker.public is None:
        raise ValueError("the label-only control needs the public split")
    images, labels = attacker.public
    means, counts = [], []
    for label in attacker.labels:
        same = images[labels == label]
        if not len(same):
            raise ValueError(f"the public split has no image of class {label}")
        means.append(same.mean(0))
        counts.append(len(same))
    if attacker.client.batch_size == 1:
        return Trial(means[0], math.nan, 1, [], info={"public_images": counts[0]})
    return Trial(torch.stack(means), math.nan, 1, [], info={"public_images": counts})


def noise_like(received: Gradient, gen: torch.Generator) -> Gradient:
    """Gaussian noise with each tensor's l2 norm and zero entries (the defence's sparsity)."""
    out = []
    for r in received:
        noise = torch.randn(r.shape, generator=gen).to(r) * (r != 0)
        norm = noise.norm()
        out.append(noise * (r.norm() / norm) if norm > 0 else noise)
    return out


def noise_gradient(attacker: Attacker, cfg: AttackConfig, seed: int) -> Trial:
    """The GGL attack of ``cfg`` (its optimiser given by its settings' type) on a noise gradient;
    the label stays the one inferred from the real gradient."""
    return noise_gradient_lockstep([attacker], cfg, [seed])[0]


def noise_gradient_lockstep(attackers: list[Attacker], cfg: AttackConfig, seeds: list[int]
                            ) -> list[Trial]:
    """``noise_gradient`` of several updates, side by side where the attack is GGL with Adam
    (``ggl.attack.lockstep``), each update's noise drawn from its own seed."""
    optimiser = next(o for o, c in OPTIMISER_CONFIGS.items() if isinstance(cfg.optimiser, c))
    method = next(m for m, o in GGL_OPTIMISERS.items() if o == optimiser)
    noisy = [replace(a, received=noise_like(a.received, torch.Generator().manual_seed(
        derive_seed(seed, "noise-gradient")))) for a, seed in zip(attackers, seeds, strict=True)]
    if optimiser == "adam":
        trials = ggl_adam(noisy, cfg, seeds)
    else:
        trials = [ggl_attack(optimiser)(a, cfg, seed)
                  for a, seed in zip(noisy, seeds, strict=True)]
    for trial in trials:
        trial.info = {**trial.info, "repeats": method}
    return trials


CONTROL_ATTACKS = {"prior": prior, "label-only": label_only, "noise-gradient": noise_gradient}
