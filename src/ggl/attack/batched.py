"""The GGL matching loss for a whole batch of candidates without one backward pass each.

The objective needs ``D(y, T-hat(g_i))`` for each candidate image x_i, with g_i the model's
batch-1 cross-entropy gradient. In eval mode BatchNorm is a fixed affine map and the candidates
are independent: ONE forward and ONE backward of the summed loss give every layer's input
``a_i`` and output gradient ``delta_i`` per candidate (forward hooks; autograd is asked for the
layer outputs' gradients only, so no weight gradient is ever summed over the batch). Per
parameter tensor l the distance needs only ``N_l = ||g_il||^2`` and ``D_l = <g_il, y_l>``:

    ||s g - y||^2 = s^2 N - 2 s D + ||y||^2      cosine: 1 - sum D / (sqrt(sum N) ||y||)

for any positive per-candidate, per-tensor scale s, which is all that clipping does. A conv or
linear weight gradient is ``G_i = sum_t delta_i[:, t] U_i[:, t]^T`` over output positions t,
with U_i the unfolded input patches (d = C_in k^2 rows, T columns). Per layer either

* materialise G_i (the backend's weight-gradient kernel per candidate on the CPU, a batched
  unfold + matmul elsewhere; cheap for a small kernel and a large feature map), or
* the Gram-matrix ("ghost") norm ``N = sum_{t,t'} (U^T U)_{tt'} (delta^T delta)_{tt'}`` (cost
  T^2 (d + c): cheap for a small feature map) with ``D = <delta_i, conv(a_i, y_l)>``.

Entry-wise estimates materialise their tensors in chunks, masked with ``ggl.defences``' own
primitive or pruned with ``prune_smallest``'s threshold (found by a faster exact selection); a
column mask on a linear weight (Soteria's) is applied to the layer's input instead.

Precision: where only (N, D) are known the expansion cancels ||y||^2-sized terms, so it is
summed in float64; small tensors and materialised ones without clipping give ||g - y||^2
directly, as the loop does. What remains is float32 round-off in N and D of the large
Gram-norm layers: ~1e-7 of their ||y_l||^2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ggl.defences import (
    ClipGlobal,
    ClipPerLayer,
    EstimateOp,
    MaskColumns,
    Prune,
    clip_factor,
)

# Distances the algebra knows (the keys of objective.DISTANCES); others fall back to the loop.
ALGEBRAIC_DISTANCES = ("l2-mean", "l2-sum", "cosine")


class Unsupported(Exception):
    """The model (or estimate) has something the batched path cannot express."""


class NotFaster(Unsupported):
    """The batched path could, but the policy says the loop is faster for this case."""


@dataclass(frozen=True)
class Policy:
    """When and how the batched path runs; the defaults are measured (see ``default_policy``)."""

    chunk_bytes: int  # activation memory of one forward/backward chunk of candidates
    work_elems: int  # scratch of one layer's per-candidate tensors (patches, materialised G)
    ghost_ratio: float = 100.0  # Gram norm when T^2 (d + c) < ghost_ratio * d * c
    keep_elems: int = 1 << 16  # tensors up to this size are kept per candidate: the loop's loss
    with_grad: bool = False  # also for differentiable calls (Adam's double backprop)
    prune: bool = True  # also for sparsification's estimate (every tensor materialised)
    conv_kernel: bool = True  # materialise conv weight grads with the backend's kernel per
    # candidate (CPU: ~2x unfold + bmm); False: one batched unfold + bmm (fewer launches)


def default_policy(device: torch.device | str) -> Policy:
    """Defaults measured with benchmarks/objective.py; benchmarks/README.md ("Why the default
    policy") says what each value rests on. CUDA's is unmeasured."""
    if torch.device(device).type == "cuda":
        return Policy(chunk_bytes=4 << 30, work_elems=64 << 20, conv_kernel=False)
    return Policy(chunk_bytes=512 << 20, work_elems=1 << 20)


# --- the model's layers ----------------------------------------------------------------------

@dataclass
class _Layer:
    module: nn.Module
    kind: str  # conv | linear | bn
    weight: int | None  # index of its weight / bias in model.parameters(), if any
    bias: int | None


def plan_layers(model: nn.Module) -> list[_Layer]:
    """Every parameter's layer, or ``Unsupported`` saying why the hooks cannot see it."""
    if any(m.training for m in model.modules()):
        raise Unsupported("a module is in train mode (candidates would not be independent)")
    index = {id(p): i for i, p in enumerate(model.parameters())}
    layers, seen = [], set()
    for name, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if not own:
            continue
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or module.padding_mode != "zeros" or isinstance(
                    module.padding, str):
                raise Unsupported(f"{name}: grouped, non-zero-padded or string-padded conv")
            kind = "conv"
        elif isinstance(module, nn.Linear):
            kind = "linear"
        elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
            if module.running_mean is None:
                raise Unsupported(f"{name}: BatchNorm without running statistics")
            kind = "bn"
        else:
            raise Unsupported(f"{name}: {type(module).__name__} has parameters")
        if set(own) - {"weight", "bias"}:
            raise Unsupported(f"{name}: parameters {sorted(own)} (parametrised?)")
        for p in own.values():
            if not p.requires_grad or id(p) in seen:
                raise Unsupported(f"{name}: frozen or shared parameter")
            seen.add(id(p))
        layers.append(_Layer(module, kind, index.get(id(own.get("weight"))),
                             index.get(id(own.get("bias")))))
    if len(seen) != len(index):
        raise Unsupported("some parameters belong to no supported layer")
    return layers


def _capture(model: nn.Module, layers: Sequence[_Layer], images: torch.Tensor,
             target: torch.Tensor, create_graph: bool
             ) -> tuple[dict[nn.Module, tuple[torch.Tensor, torch.Tensor]], int]:
    """One forward and one backward of the summed loss: each layer's (input, output grad),
    and the bytes of the captured activations."""
    records: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if module in records:
            raise Unsupported(f"{type(module).__name__} is called twice in one forward")
        records[module] = (args[0], output)
        # Hand the rest of the network a copy: an in-place op downstream (torchvision's
        # ReLU(inplace=True)) would otherwise rebase ``output`` and we would read the gradient
        # of the ReLU's output instead of the layer's.
        return output.clone()

    handles = [layer.module.register_forward_hook(hook) for layer in layers]
    try:
        with torch.enable_grad():
            # The summed loss: each candidate's output gradient is its own batch-1 gradient.
            loss = F.cross_entropy(model(images), target, reduction="sum")
            layer_list = [layer.module for layer in layers]
            missing = [m for m in layer_list if m not in records]
            if missing:
                raise Unsupported(f"{type(missing[0]).__name__} is not called in forward")
            deltas = torch.autograd.grad(loss, [records[m][1] for m in layer_list],
                                         create_graph=create_graph, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    captured, size = {}, 0
    for module, delta in zip(layer_list, deltas, strict=True):
        a, out = records[module]
        captured[module] = (a, torch.zeros_like(out) if delta is None else delta)
        size += (a.numel() + 3 * out.numel()) * out.element_size()  # out, its copy, delta
    return captured, size


# --- per-candidate terms of one parameter tensor ----------------------------------------------

# One tensor's entry-wise ops, in order: the estimate's Prune and MaskColumns ops on it alone.
Struct = list[Prune | MaskColumns]
Terms = dict[str, torch.Tensor]  # N<k>: ||.||^2 after k entry-wise ops; D, E, G: see _Need


@dataclass
class _Need:
    """What the distance needs of one tensor after its entry-wise ops, per candidate: ``keep``
    the tensor G itself (small tensors: the loss directly, as the loop, free of cancellation),
    ``dist`` only E = ||g - y||^2 (no clipping, l2), ``nd`` the squared norm N and the dot
    D = <g, y>. ``prefixes``: the numbers of entry-wise ops after which a clip reads the norm."""

    struct: Struct
    prefixes: set[int]
    mode: str


def kth_smallest(a: torch.Tensor, k: int) -> torch.Tensor:
    """``a.kthvalue(k, dim=1).values`` for a (rows, m), exactly, but faster for large m: a seeded
    random sample's quantiles bracket the k-th value with a wide margin (6 standard deviations of
    the sample rank) and only the few entries inside the bracket go through a selection; a row
    whose bracket misses (possible in principle, not seen) gets the full ``kthvalue``."""
    rows, m = a.shape
    sample = min(1 << 14, m // 16)
    if sample < 1 << 12:
        return a.kthvalue(k, dim=1).values
    gen = torch.Generator(device=a.device).manual_seed(0)  # deterministic bracket
    picks = a[:, torch.randint(m, (sample,), generator=gen, device=a.device)]
    q = k / m
    margin = 6 * math.sqrt(sample * q * (1 - q)) + 16
    lo_rank, hi_rank = math.floor(q * sample - margin), math.ceil(q * sample + margin)
    lo = (picks.kthvalue(lo_rank, dim=1, keepdim=True).values if lo_rank >= 1
          else a.new_full((rows, 1), -math.inf))
    hi = (picks.kthvalue(hi_rank, dim=1, keepdim=True).values if hi_rank <= sample
          else a.new_full((rows, 1), math.inf))
    below = a < lo
    inside = (a <= hi) ^ below  # lo <= a <= hi, since below implies a <= hi
    # (an int32 sum: bool .sum() takes a slow path on the CPU)
    rank = (k - below.view(torch.uint8).sum(1, dtype=torch.int32)).tolist()
    out = []
    for i in range(rows):
        values = a[i][inside[i]]
        out.append(values.kthvalue(rank[i]).values if 1 <= rank[i] <= len(values)
                   else a[i].kthvalue(k).values)
    return torch.stack(out)


def _prune(g: torch.Tensor, k: int) -> torch.Tensor:
    """``defences.prune_smallest`` of one batched tensor, by the faster exact selection."""
    flat = g.flatten(1)
    with torch.no_grad():  # the mask is piecewise constant: no gradient through it
        magnitude = flat.detach().abs()
        keep = magnitude > kth_smallest(magnitude, min(k, flat.shape[1]))[:, None]
    return (flat * keep).view_as(g)


def _sq(g: torch.Tensor) -> torch.Tensor:
    return g.flatten(1).pow(2).sum(1)


def _reduce(g: torch.Tensor, y: torch.Tensor, need: _Need) -> Terms:
    """The terms of materialised per-candidate gradients g (c, *y.shape)."""
    out: Terms = {"N0": _sq(g)} if 0 in need.prefixes else {}
    for k, op in enumerate(need.struct, 1):  # Prune with the faster exact selection
        g = _prune(g, op.counts[0]) if isinstance(op, Prune) else op.apply([g])[0]
        if k in need.prefixes:
            out[f"N{k}"] = _sq(g)
    if need.mode == "keep":
        out["G"] = g
    elif need.mode == "dist":
        out["E"] = _sq(g - y)  # as the loop: no cancellation
    else:
        out[f"N{len(need.struct)}"] = _sq(g)
        out["D"] = g.flatten(1) @ y.flatten()
    return out


def _chunks(n: int, per_candidate: int, budget: int) -> list[slice]:
    step = max(1, budget // max(per_candidate, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _cat(parts: list[Terms]) -> Terms:
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def _weight_terms(layer: _Layer, a: torch.Tensor, delta: torch.Tensor, y: torch.Tensor,
                  need: _Need, policy: Policy) -> Terms:
    """The terms of a conv or linear weight gradient, per candidate."""
    m, n = layer.module, len(a)
    if layer.kind == "conv":
        def patches(s: slice) -> tuple[torch.Tensor, torch.Tensor]:
            return (F.unfold(a[s], m.kernel_size, m.dilation, m.padding, m.stride),  # (c, d, T)
                    delta[s].flatten(2))  # (c, out, T)
        d, T = y[0].numel(), delta[0, 0].numel()
    else:
        a3, d3 = a.reshape(n, -1, a.shape[-1]), delta.reshape(n, -1, delta.shape[-1])

        def patches(s: slice) -> tuple[torch.Tensor, torch.Tensor]:
            return a3[s].transpose(1, 2), d3[s].transpose(1, 2)
        d, T = a3.shape[2], a3.shape[1]
    c = y.shape[0]
    # A column mask on a linear weight is a mask on the layer's input features: no need to
    # materialise for it. Anything else entry-wise (pruning) needs the entries.
    plain = not need.struct or (layer.kind == "linear" and all(
        isinstance(op, MaskColumns) and op.mask.numel() == d for op in need.struct))
    if need.mode == "keep" or not plain or T * T * (d + c) >= policy.ghost_ratio * d * c:
        parts = []
        if layer.kind == "conv" and policy.conv_kernel:
            # The backend's own weight-gradient kernel, one candidate at a time: on the CPU
            # about twice as fast as unfold + bmm, and no patch matrix in memory.
            for i in range(n):
                g = torch.ops.aten.convolution_backward(
                    delta[i:i + 1], a[i:i + 1], y, None, m.stride, m.padding, m.dilation,
                    False, [0], 1, (False, True, False))[1]
                parts.append(_reduce(g.unsqueeze(0), y, need))
            return _cat(parts)
        for s in _chunks(n, d * (c + T), policy.work_elems):
            u, dl = patches(s)
            parts.append(_reduce(torch.bmm(dl, u.transpose(1, 2)).view(-1, *y.shape), y, need))
        return _cat(parts)
    masks: list[torch.Tensor | None] = [None]  # the product of the masks after each prefix
    for op in need.struct:
        masks.append(op.mask if masks[-1] is None else masks[-1] & op.mask)
    last = len(need.struct)
    prefixes = need.prefixes | {last}
    norms: dict[int, list[torch.Tensor]] = {k: [] for k in prefixes}
    for s in _chunks(n, T * (d + c + 2 * T), policy.work_elems):
        u, dl = patches(s)
        delta_gram = dl.transpose(1, 2) @ dl  # (c, T, T)
        for k in prefixes:
            uk = u if masks[k] is None else u * masks[k].to(u).view(1, -1, 1)
            norms[k].append((uk.transpose(1, 2) @ uk * delta_gram).sum((1, 2)))
    if layer.kind == "conv":
        dot = (F.conv2d(a, y, None, m.stride, m.padding, m.dilation) * delta).flatten(1).sum(1)
    else:
        am = a3 if masks[-1] is None else a3 * masks[-1].to(a3).view(1, 1, -1)
        dot = ((am @ y.t()) * d3).flatten(1).sum(1)
    out = {f"N{k}": torch.cat(v) for k, v in norms.items()}
    if need.mode == "dist":  # float64: the expansion cancels ||y||^2-sized terms
        return {"E": out.pop(f"N{last}").double() - 2 * dot.double()
                + y.double().pow(2).sum()}
    return {**out, "D": dot}


def _small_grads(layer: _Layer, a: torch.Tensor, delta: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
    """Per-candidate gradients of biases and BatchNorm's affine parameters: cheap sums."""
    m, n = layer.module, len(a)
    out: dict[str, torch.Tensor] = {}
    if layer.kind == "linear":
        if layer.bias is not None:
            out["bias"] = delta.reshape(n, -1, delta.shape[-1]).sum(1)
        return out
    positions = tuple(range(2, delta.dim()))
    if layer.bias is not None:
        out["bias"] = delta.sum(positions) if positions else delta
    if layer.kind == "bn" and layer.weight is not None:
        shape = (1, -1) + (1,) * len(positions)
        xhat = (a - m.running_mean.view(shape)) * torch.rsqrt(m.running_var.view(shape) + m.eps)
        prod = delta * xhat
        out["weight"] = prod.sum(positions) if positions else prod
    return out


# --- the scorer ----------------------------------------------------------------------------------

class BatchedScorer:
    """Matching losses D(y, T-hat(g_i)) of a batch of images, or ``Unsupported``.

    ``ops`` is the estimate as primitives (``Estimate.ops``), ``distance`` a key of
    ``ALGEBRAIC_DISTANCES``."""

    def __init__(self, model: nn.Module, received: Sequence[torch.Tensor],
                 ops: Sequence[EstimateOp], distance: str, policy: Policy) -> None:
        if distance not in ALGEBRAIC_DISTANCES:
            raise Unsupported(f"distance {distance!r} has no algebraic form")
        self.model, self.policy, self.distance = model, policy, distance
        self.layers = plan_layers(model)
        self.received = [r.detach() for r in received]
        self.ops = tuple(ops)
        count = len(self.received)
        if any(isinstance(op, Prune) for op in self.ops) and not policy.prune:
            raise NotFaster("sparsification's estimate: the loop is faster here")
        # Per tensor: its entry-wise ops, and the prefixes of them whose norm a clip reads.
        structs: list[Struct] = [[] for _ in range(count)]
        prefixes: list[set[int]] = [set() for _ in range(count)]
        for op in self.ops:
            if isinstance(op, ClipGlobal | ClipPerLayer):
                for i in range(count):
                    prefixes[i].add(len(structs[i]))
            elif isinstance(op, Prune):
                for i, k in enumerate(op.counts):
                    if k > 0:
                        structs[i].append(Prune((k,)))
            elif isinstance(op, MaskColumns):
                if not 0 <= op.index < count:
                    raise Unsupported(f"mask on tensor {op.index} of {count}")
                structs[op.index].append(MaskColumns(op.mask, 0))
            else:
                raise Unsupported(f"estimate op {op!r}")
        scaled = any(isinstance(op, ClipGlobal | ClipPerLayer) for op in self.ops)
        self.needs = [_Need(struct, pre, "keep" if r.numel() <= policy.keep_elems else
                            "nd" if scaled or distance == "cosine" else "dist")
                      for struct, pre, r in zip(structs, prefixes, self.received, strict=True)]
        self.chunk: int | None = None  # candidates per forward, set from the first call

    def terms(self, images: torch.Tensor, target: torch.Tensor, create_graph: bool,
              needs: Sequence[_Need] | None = None) -> list[Terms]:
        """Each tensor's terms for one chunk of candidates."""
        needs = self.needs if needs is None else needs
        captured, size = _capture(self.model, self.layers, images, target, create_graph)
        if self.chunk is None:
            self.chunk = max(1, int(self.policy.chunk_bytes * len(images) // max(size, 1)))
        terms: list[Terms] = [{} for _ in self.received]
        with torch.set_grad_enabled(create_graph):  # no graph for the reductions otherwise
            for layer in self.layers:
                a, delta = captured[layer.module]
                small = _small_grads(layer, a, delta)
                for role in ("weight", "bias"):
                    i = getattr(layer, role)
                    if i is None:
                        continue
                    y = self.received[i]
                    terms[i] = (_reduce(small[role].view(-1, *y.shape), y, needs[i])
                                if role in small else
                                _weight_terms(layer, a, delta, y, needs[i], self.policy))
        return terms

    def __call__(self, images: torch.Tensor, target: torch.Tensor,
                 create_graph: bool = False) -> torch.Tensor:
        """(n,) matching losses; chunked so one chunk's activations stay in the budget (the
        very first chunk is a single candidate, which measures them)."""
        parts, i = [], 0
        while i < len(images):
            step = self.chunk or 1
            parts.append(self.terms(images[i:i + step], target[i:i + step], create_graph))
            i += step
        terms = [_cat([p[t] for p in parts]) for t in range(len(self.received))]
        return self.combine(terms).to(images.dtype)

    def combine(self, terms: list[Terms]) -> torch.Tensor:
        """Walk the estimate's ops on per-candidate scales, then the distance."""
        count = len(terms)
        scale: list[torch.Tensor | None] = [None] * count  # None: 1
        k = [0] * count

        def norm_sq(i: int) -> torch.Tensor:
            n2 = terms[i][f"N{k[i]}"]
            return n2 if scale[i] is None else scale[i].pow(2) * n2

        for op in self.ops:
            if isinstance(op, ClipGlobal):
                total = torch.sqrt(sum(norm_sq(i) for i in range(count)))
                factor = clip_factor(total, op.bound)
                scale = [factor if s is None else s * factor for s in scale]
            elif isinstance(op, ClipPerLayer):
                factors = [clip_factor(torch.sqrt(norm_sq(i)), b) for i, b in enumerate(op.bounds)]
                scale = [f if s is None else s * f for s, f in zip(scale, factors, strict=True)]
            elif isinstance(op, Prune):
                k = [ki + (c > 0) for ki, c in zip(k, op.counts, strict=True)]
            elif isinstance(op, MaskColumns):
                k[op.index] += 1
        dist, n2, dot = [], [], []
        f64 = torch.float64  # the sums cancel ||y||^2-sized terms: accumulate in double
        for i, (t, y) in enumerate(zip(terms, self.received, strict=True)):
            s = scale[i]
            if "G" in t:
                g = t["G"] if s is None else t["G"] * s.view(-1, *([1] * y.dim()))
                dist.append((g - y).flatten(1).pow(2).sum(1, dtype=f64))
                n2.append(g.flatten(1).pow(2).sum(1, dtype=f64))
                dot.append((g * y).flatten(1).sum(1, dtype=f64))
            elif "E" in t:
                dist.append(t["E"].to(f64))
            else:
                s64 = 1.0 if s is None else s.to(f64)
                n2.append(s64**2 * t[f"N{k[i]}"].to(f64))
                dot.append(s64 * t["D"].to(f64))
                dist.append(n2[-1] - 2 * dot[-1] + y.to(f64).pow(2).sum())
        if self.distance == "cosine":
            y_norm = torch.sqrt(sum(y.to(f64).pow(2).sum() for y in self.received))
            return 1 - sum(dot) / (torch.sqrt(sum(n2)) * y_norm + 1e-12)
        per_tensor = torch.clamp(torch.stack(dist, 1), min=0)  # float round-off only
        return per_tensor.mean(1) if self.distance == "l2-mean" else per_tensor.sum(1)


def verify(scorer: BatchedScorer, images: torch.Tensor, target: torch.Tensor,
           loop_grads: Sequence[torch.Tensor], rtol: float = 1e-3) -> None:
    """Compare the batched raw (N, D) of a few candidates with the loop's gradients: catches a
    model that uses a parameter outside its layer (the hooks would miss it)."""
    raw = [_Need([], {0}, "nd") for _ in scorer.received]
    terms = scorer.terms(images, target, create_graph=False, needs=raw)
    for i, (t, g, y) in enumerate(zip(terms, loop_grads, scorer.received, strict=True)):
        ref_n, ref_d = _sq(g), g.flatten(1) @ y.flatten()
        tol = rtol * (float(ref_n.max()) + float(y.pow(2).sum())) + 1e-30
        if ((t["N0"] - ref_n).abs().max() > tol or (t["D"] - ref_d).abs().max() > tol):
            raise Unsupported(f"parameter tensor {i}: the hooks' norms/dots differ from the loop's")
