"""Defences a client applies to its gradient, and the attacker's estimates of them.

A gradient is a list of tensors, one per model parameter. The primitives work on *batched*
gradients (a leading candidate dimension n), so the attacker applies its estimate T-hat to a
whole batch of trial gradients at once; the client calls them with n = 1. ``DEFENCES`` maps a
step's ``kind`` to the client's defence, ``ESTIMATES`` to the attacker's estimate, which reads
only the received gradient (and structural settings such as ``per_layer``), never the
defence's secret settings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ggl.config import DefenceStep
from ggl.plugins import Registry

Gradient = list[torch.Tensor]
CLIP_EPS = 1e-6  # as the authors: g * min(1, S / (||g|| + 1e-6))


# --- primitives on batched gradients -------------------------------------------------------

def global_norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """l2 norm over all parameters, per candidate: (n,)."""
    return torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads))


def layer_norms(grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """l2 norm of each parameter tensor, per candidate: a list of (n,)."""
    return [g.flatten(1).norm(dim=1) for g in grads]


def _per_candidate(scale: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return scale.view(-1, *([1] * (g.dim() - 1)))


def clip_factor(norm: torch.Tensor, bound: float | torch.Tensor) -> torch.Tensor:
    """What clipping to ``bound`` multiplies a gradient of this norm by (batched scorer's too)."""
    return torch.clamp(bound / (norm + CLIP_EPS), max=1.0)


def clip_global(grads: Sequence[torch.Tensor], bound: float | torch.Tensor) -> Gradient:
    factor = clip_factor(global_norm(grads), bound)
    return [g * _per_candidate(factor, g) for g in grads]


def clip_per_layer(grads: Sequence[torch.Tensor],
                   bounds: Sequence[float | torch.Tensor]) -> Gradient:
    return [g * _per_candidate(clip_factor(norm, bound), g)
            for g, norm, bound in zip(grads, layer_norms(grads), bounds, strict=True)]


def prune_smallest(grads: Sequence[torch.Tensor], counts: Sequence[int | tuple[int, ...]]
                   ) -> Gradient:
    """Zero the ``counts[l]`` smallest-magnitude entries of tensor l (ties at the threshold
    are zeroed too), independently for each candidate. ``counts[l]`` may also give one count
    per candidate (a tuple: each candidate an update of its own, ``stack_estimates``)."""
    out = []
    for g, k in zip(grads, counts, strict=True):
        if isinstance(k, tuple) and len(set(k)) == 1:
            k = k[0]
        if isinstance(k, tuple):
            out.append(_prune_rows(g, k))
            continue
        if k <= 0:
            out.append(g)
            continue
        flat = g.flatten(1)
        threshold = flat.abs().kthvalue(min(k, flat.shape[1]), dim=1, keepdim=True).values
        out.append((flat * (flat.abs() > threshold)).view_as(g))
    return out


def _prune_rows(g: torch.Tensor, counts: tuple[int, ...]) -> torch.Tensor:
    """``prune_smallest`` of one tensor with a count per candidate."""
    flat = g.flatten(1)
    with torch.no_grad():  # the threshold only selects: no gradient through it
        magnitude = flat.abs()
        threshold = torch.stack([
            row.kthvalue(min(k, len(row))).values if k > 0 else row.new_tensor(-math.inf)
            for row, k in zip(magnitude, counts, strict=True)])[:, None]
    return (flat * (magnitude > threshold)).view_as(g)


def fraction_count(rate: float, size: int) -> int:
    """How many of ``size`` items a rate in percent removes: at least rate %, so the ceiling."""
    return min(size, math.ceil(rate / 100 * size - 1e-9))


def mask_fc_columns(grads: Sequence[torch.Tensor], mask: torch.Tensor, fc_index: int) -> Gradient:
    """Multiply the fc weight gradient (n, classes, features) column-wise by ``mask``."""
    out = list(grads)
    # (features,), or (n, features): a mask per candidate (``stack_estimates``)
    out[fc_index] = grads[fc_index] * mask.to(grads[fc_index].dtype).view(
        -1, 1, mask.shape[-1])
    return out


# --- the client's defences -------------------------------------------------------------

@dataclass
class ClientContext:
    """What a defence may use besides the gradient: the client's own model, images and labels
    (one image in the gradient stage; the round's batches in the utility stage)."""

    model: nn.Module
    image: torch.Tensor  # (n, 3, H, W) in [-1, 1]
    label: torch.Tensor  # (n,)
    fc_index: int
    generator: torch.Generator  # the defence's own seeded RNG
    local_steps: int = 1  # dp-sgd: the client's local steps on its batch (the gradient stage)
    local_lr: float = 1.0  # and their step size


DEFENCES: Registry[Callable[..., Gradient]] = Registry("defence")


@DEFENCES.register("noise")
def noise_defence(grads: Gradient, ctx: ClientContext, sigma: float) -> Gradient:
    """i.i.d. N(0, sigma^2) on every tensor; drawn on the CPU so every device gets the same."""
    return [g + sigma * torch.randn(g.shape, generator=ctx.generator).to(g) for g in grads]


@DEFENCES.register("clipping")
def clipping_defence(grads: Gradient, ctx: ClientContext, bound: float,
                     per_layer: bool) -> Gradient:
    return clip_per_layer(grads, [bound] * len(grads)) if per_layer else clip_global(grads, bound)


@DEFENCES.register("sparsification")
def sparsification_defence(grads: Gradient, ctx: ClientContext, rate: float) -> Gradient:
    """Per tensor: zero (at least) ``rate`` % of the entries, those of smallest magnitude."""
    return prune_smallest(grads, [fraction_count(rate, g[0].numel()) for g in grads])


def soteria_scores(model: nn.Module, image: torch.Tensor, chunk_size: int = 16) -> torch.Tensor:
    """Soteria's per-feature score ||d r_f / d x||_2 / (r_f + 1e-10) for the fc input r, summed
    over the images of a batch (as Soteria's code scores a batch). One backward pass of the
    whole batch per feature (``chunk_size`` features at a time): each image's forward is its
    own (eval mode or GroupNorm), so d(sum_i r_if)/dx_i = dr_if/dx_i."""
    from ggl.models import penultimate

    x = image.detach().requires_grad_(True)
    r = penultimate(model, x)  # (n, F)
    features = r.shape[1]
    norms = []
    for start in range(0, features, chunk_size):
        chunk = torch.arange(start, min(features, start + chunk_size), device=r.device)
        directions = torch.zeros(len(chunk), *r.shape, dtype=r.dtype, device=r.device)
        directions[torch.arange(len(chunk)), :, chunk] = 1
        (grad,) = torch.autograd.grad(r, x, directions, retain_graph=True,
                                      is_grads_batched=True)  # (chunk, n, 3, H, W)
        norms.append(grad.flatten(2).norm(dim=2))
    return (torch.cat(norms).T / (r.detach() + 1e-10)).sum(0)


def soteria_mask(scores: torch.Tensor, rate: float) -> torch.Tensor:
    """Keep-mask over features: prune the ``rate`` % with the smallest score."""
    mask = torch.ones_like(scores, dtype=torch.bool)
    pruned = torch.argsort(scores, stable=True)[: fraction_count(rate, scores.numel())]
    mask[pruned] = False
    return mask


@DEFENCES.register("soteria")
def soteria_defence(grads: Gradient, ctx: ClientContext, rate: float) -> Gradient:
    mask = soteria_mask(soteria_scores(ctx.model, ctx.image), rate)
    return mask_fc_columns(grads, mask, ctx.fc_index)


@DEFENCES.register("dp-sgd")
def dp_sgd_defence(grads: Gradient, ctx: ClientContext, noise_multiplier: float,
                   max_grad_norm: float, delta: float) -> Gradient:
    """Opacus' DP-SGD on the client's batch, ``local_steps`` steps, which replaces the plain
    update (so dp-sgd is a defence's first step); delta is the accountant's (the utility stage)."""
    from ggl.dp import check_private_model, dp_sgd_update, noise_generator

    check_private_model(ctx.model)
    seed = int(torch.randint(2**31 - 1, (), generator=ctx.generator))
    update = dp_sgd_update(ctx.model, [(ctx.image, ctx.label)] * ctx.local_steps,
                           noise_multiplier, max_grad_norm,
                           expected_batch_size=len(ctx.image), lr=ctx.local_lr,
                           generator=noise_generator(seed, ctx.image.device))
    return [g.unsqueeze(0) for g in update]


def apply_defence(grads: Gradient, steps: Sequence[DefenceStep], ctx: ClientContext) -> Gradient:
    """Apply the steps in order to an unbatched gradient."""
    batched = [g.unsqueeze(0) for g in grads]
    for step in steps:
        batched = DEFENCES.get(step.kind)(batched, ctx, **step.settings)
    return [g.squeeze(0) for g in batched]


# --- the attacker's estimates (T-hat) ----------------------------------------------------

# The estimate is data: ops, each one of the primitives above, whose ``apply`` is the reference;
# ggl.attack.batched applies the same ops to per-candidate norms and dot products instead.

@dataclass(frozen=True)
class ClipGlobal:
    bound: float | torch.Tensor  # stacked: (updates,)

    def apply(self, grads: Gradient) -> Gradient:
        return clip_global(grads, self.bound)


@dataclass(frozen=True)
class ClipPerLayer:
    bounds: tuple[float | torch.Tensor, ...]  # one per parameter tensor; stacked: (updates,)

    def apply(self, grads: Gradient) -> Gradient:
        return clip_per_layer(grads, self.bounds)


@dataclass(frozen=True)
class Prune:
    counts: tuple[int | tuple[int, ...], ...]  # one per parameter tensor (stacked: per update)

    def apply(self, grads: Gradient) -> Gradient:
        return prune_smallest(grads, self.counts)


@dataclass(frozen=True)
class MaskColumns:
    mask: torch.Tensor  # (features,); stacked: (updates, features)
    index: int  # of the fc weight

    def apply(self, grads: Gradient) -> Gradient:
        return mask_fc_columns(grads, self.mask, self.index)


EstimateOp = ClipGlobal | ClipPerLayer | Prune | MaskColumns


@dataclass(frozen=True)
class Estimate:
    """T-hat: the attacker's estimate of the defence, as ops applied in order (``()``: the
    identity) to batched trial gradients."""

    ops: tuple[EstimateOp, ...] = ()
    values: dict[str, Any] = field(default_factory=dict)  # what was estimated, for the logs

    def apply(self, grads: Gradient) -> Gradient:
        for op in self.ops:
            grads = op.apply(grads)
        return grads


def stack_estimates(estimates: Sequence[Estimate]) -> Estimate | None:
    """One estimate for N updates scored side by side, candidate i against update i: each op's
    settings stacked along a leading update dimension. None where the estimates differ in kind
    (their ops' types, order or fc index), so they cannot be stacked."""
    first = estimates[0].ops
    if any(len(e.ops) != len(first) or any(type(a) is not type(b) for a, b in zip(
            e.ops, first, strict=True)) for e in estimates):
        return None
    ops: list[EstimateOp] = []
    for k, op in enumerate(first):
        same = [e.ops[k] for e in estimates]
        if isinstance(op, ClipGlobal):
            ops.append(ClipGlobal(torch.stack([torch.as_tensor(o.bound) for o in same])))
        elif isinstance(op, ClipPerLayer):
            ops.append(ClipPerLayer(tuple(torch.stack([torch.as_tensor(b) for b in bounds])
                                          for bounds in zip(*(o.bounds for o in same),
                                                            strict=True))))
        elif isinstance(op, Prune):
            ops.append(Prune(tuple(zip(*(o.counts for o in same), strict=True))))
        elif isinstance(op, MaskColumns) and all(o.index == op.index for o in same):
            ops.append(MaskColumns(torch.stack([o.mask for o in same]), op.index))
        else:
            return None
    return Estimate(tuple(ops), {"stacked": len(estimates)})


ESTIMATES: Registry[Callable[..., Estimate]] = Registry("defence estimate")


@ESTIMATES.register("clipping")
def estimate_clipping(received: Gradient, fc_index: int, per_layer: bool = False,
                      **_secret: Any) -> Estimate:
    """S-hat is the received gradient's norm (global, or per layer for layer-wise clipping)."""
    batched = [g.unsqueeze(0) for g in received]
    if per_layer:
        bounds = tuple(n[0] for n in layer_norms(batched))
        return Estimate((ClipPerLayer(bounds),), {"bounds": [float(b) for b in bounds]})
    bound = global_norm(batched)[0]
    return Estimate((ClipGlobal(bound),), {"bound": float(bound)})


@ESTIMATES.register("sparsification")
def estimate_sparsification(received: Gradient, fc_index: int, **_secret: Any) -> Estimate:
    """Prune each trial tensor to as many zeros as the received tensor has."""
    counts = [int((g == 0).sum()) for g in received]
    rate = 100 * sum(counts) / sum(g.numel() for g in received)
    return Estimate((Prune(tuple(counts)),), {"rate": rate, "counts": counts})


@ESTIMATES.register("soteria")
def estimate_soteria(received: Gradient, fc_index: int, **_secret: Any) -> Estimate:
    """The mask is the set of non-zero columns of the received fc weight gradient."""
    mask = received[fc_index].ne(0).any(dim=0)
    return Estimate((MaskColumns(mask, fc_index),),
                    {"pruned_features": int((~mask).sum()), "features": mask.numel()})


@ESTIMATES.register("dp-sgd")
def estimate_dp_sgd(received: Gradient, fc_index: int, max_grad_norm: float,
                    **_secret: Any) -> Estimate:
    """Per-sample clipping to C, a public fact of DP-SGD (published with epsilon); at one image
    per update that is global clipping to C. The noise is not modelled (as for noise)."""
    return Estimate((ClipGlobal(float(max_grad_norm)),), {"bound": float(max_grad_norm)})


@ESTIMATES.register("noise")
def estimate_noise(received: Gradient, fc_index: int, **_secret: Any) -> Estimate:
    """Noise is not modelled by default (as the paper): the identity."""
    return Estimate()


def estimate_defence(received: Gradient, steps: Sequence[DefenceStep], fc_index: int) -> Estimate:
    """Compose the estimates of every step, in the defence's order: their ops concatenated. A
    plugin defence without an estimate (no entry in ESTIMATES) is treated as the identity."""
    estimates = [ESTIMATES.get(s.kind)(received, fc_index, **s.settings)
                 if s.kind in ESTIMATES.names() else Estimate() for s in steps]
    values = {f"{i}.{s.kind}": e.values for i, (s, e) in enumerate(zip(steps, estimates,
                                                                        strict=True))}
    return Estimate(tuple(op for e in estimates for op in e.ops), values)
