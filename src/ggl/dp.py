"""DP-SGD as Opacus implements it, and its privacy accountant.

Nothing here re-implements either: Opacus computes the per-sample gradients
(``GradSampleModule``), clips each to ``max_grad_norm`` and adds Gaussian noise of std
``noise_multiplier * max_grad_norm`` (``DPOptimizer``), draws Poisson-sampled batches
(``UniformWithReplacementSampler``) and accounts for them (``RDPAccountant``). What the attacker
receives under a dp-sgd defence is the update this library produced.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ggl.errors import GglError

ACCOUNTANT = "rdp"  # Opacus' RDPAccountant (Renyi DP, then its conversion to (epsilon, delta))
NORM_NOTE = ("every BatchNorm replaced by GroupNorm (as Opacus' ModuleValidator.fix does), the "
             "variant DP-SGD can clip per sample")

Batch = tuple[torch.Tensor, torch.Tensor]  # images (n, 3, H, W), labels (n,)


def check_private_model(model: nn.Module) -> None:
    """Opacus' validator must accept the model (no BatchNorm) before DP-SGD runs on it."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(copy.deepcopy(model).train(), strict=False)
    if errors:
        raise GglError(f"dp-sgd: Opacus cannot clip per-sample gradients of this model "
                       f"({errors[0]}); set model.norm: group")


def noise_generator(seed: int, device: torch.device) -> torch.Generator:
    """Opacus draws the noise on the parameters' device, so its generator lives there too."""
    return torch.Generator(device=device).manual_seed(seed)


def dp_sgd_update(model: nn.Module, batches: Iterable[Batch], noise_multiplier: float,
                  max_grad_norm: float, expected_batch_size: int, lr: float,
                  generator: torch.Generator) -> list[torch.Tensor]:
    """DP-SGD steps from ``model``'s weights (the model itself is left unchanged), one per
    batch: the update, summed over the steps, of the gradients Opacus' optimiser produced
    (per-sample clipped, noised, divided by ``expected_batch_size``). One step: exactly the
    DP-SGD gradient of that batch. The caller checks the model (``check_private_model``)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    # training mode, as Opacus requires; GroupNorm computes the same in either mode
    local = GradSampleModule(copy.deepcopy(model).train())
    optimiser = DPOptimizer(torch.optim.SGD(local.parameters(), lr=lr),
                            noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                            expected_batch_size=expected_batch_size, generator=generator)
    total = [torch.zeros_like(p) for p in local.parameters()]
    for images, labels in batches:
        optimiser.zero_grad(set_to_none=True)
        if len(images):
            with warnings.catch_warnings():  # Opacus' hooks on a model whose input needs no
                warnings.filterwarnings("ignore", "Full backward hook")  # gradient
                nn.functional.cross_entropy(local(images), labels).backward()
        else:  # Poisson sampling drew no image: the step is noise alone
            for p in local.parameters():
                p.grad_sample = torch.zeros(0, *p.shape, device=p.device, dtype=p.dtype)
        optimiser.step()
        for t, p in zip(total, local.parameters(), strict=True):
            t += p.grad
    local._close()
    return [t.detach() for t in total]


def poisson_batches(images: torch.Tensor, labels: torch.Tensor, sample_rate: float,
                    steps: int, generator: torch.Generator) -> list[Batch]:
    """``steps`` batches, each image in each independently with probability ``sample_rate``
    (Opacus' sampler: the sampling its accountant assumes)."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    sampler = UniformWithReplacementSampler(num_samples=len(images), sample_rate=sample_rate,
                                            generator=generator, steps=steps)
    return [(images[index], labels[index]) for index in
            (torch.as_tensor(i, dtype=torch.int64) for i in sampler)]


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``steps`` steps of the sampled Gaussian mechanism, by
    Opacus' RDP accountant."""
    from opacus.accountants import RDPAccountant

    if steps == 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta))


def update_epsilon(noise_multiplier: float, delta: float) -> float:
    """Epsilon of one DP-SGD update on the client's batch taken whole (sampling rate 1): what
    the attacked update alone guarantees."""
    return epsilon(noise_multiplier, 1.0, 1, delta)


def max_epsilon(noise_multiplier: float, sample_rates: Sequence[float], steps: int,
                delta: float) -> float:
    """The largest epsilon over clients (each client's data is its own dataset)."""
    return max(epsilon(noise_multiplier, q, steps, delta) for q in sample_rates)
