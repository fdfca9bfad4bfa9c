"""Federated averaging under a defence: what a defence costs the model the federation trains.

The private split is partitioned among K clients. Each round every client starts from the
global model, takes ``local_steps`` SGD steps on batches of its own data and sends its update,
the sum of its step gradients (one step: exactly the gradient the gradient stage sends), with
the defence applied as the gradient stage applies it; the server moves the global model by
``lr`` times the mean of the defended updates. Under dp-sgd the local steps are Opacus' DP-SGD
on Poisson-sampled batches (rate batch_size / client's images), accounted by Opacus' RDP
accountant per client; the largest epsilon over clients is reported.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ggl import io
from ggl.config import DefenceStep, UtilityConfig, dp_sgd_step
from ggl.defences import ClientContext, Gradient, apply_defence
from ggl.errors import GglError
from ggl.runtime import data_fingerprint, derive_seed


@dataclass(frozen=True)
class Client:
    images: torch.Tensor  # (n, 3, H, W) in [-1, 1]
    labels: torch.Tensor  # (n,)


def partition(labels: torch.Tensor, cfg: UtilityConfig) -> list[torch.Tensor]:
    """The private split's indices of each client: an even seeded split (iid), or per class a
    Dirichlet(alpha) share for each client (label skew; a small alpha, few classes each)."""
    rng = np.random.default_rng(derive_seed(cfg.seed, "partition"))
    n = len(labels)
    if cfg.partition == "iid":
        parts = np.array_split(rng.permutation(n), cfg.clients)
    else:
        parts = [[] for _ in range(cfg.clients)]
        for c in np.unique(labels.numpy()):
            members = rng.permutation(np.flatnonzero(labels.numpy() == c))
            shares = rng.dirichlet(np.full(cfg.clients, cfg.alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).round().astype(int)
            for k, chunk in enumerate(np.split(members, cuts)):
                parts[k].extend(chunk.tolist())
    out = [torch.as_tensor(np.sort(np.asarray(p, dtype=np.int64))) for p in parts]
    empty = [k for k, p in enumerate(out) if len(p) == 0]
    if empty:
        raise GglError(f"utility.alpha: with alpha {cfg.alpha}, {len(empty)} of "
                         f"{cfg.clients} clients get no image; raise utility.alpha or lower "
                         f"utility.clients")
    return out


def sample_rate(cfg: UtilityConfig, images: int) -> float:
    """DP-SGD's Poisson sampling rate for a client of ``images`` images."""
    return min(1.0, cfg.batch_size / images)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch: int = 256) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` in eval mode on a labelled set."""
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(images), batch):
            logits = model(images[start:start + batch])
            y = labels[start:start + batch]
            correct += int((logits.argmax(1) == y).sum())
            loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
    return correct / len(images), loss / len(images)


def _sgd_update(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                lr: float) -> tuple[Gradient, dict[str, torch.Tensor]]:
    """Plain local SGD from ``model``: the summed step gradients and the local buffers
    (BatchNorm statistics, trained in training mode)."""
    local = copy.deepcopy(model).train()
    params = list(local.parameters())
    total = [torch.zeros_like(p) for p in params]
    for images, labels in batches:
        grads = torch.autograd.grad(nn.functional.cross_entropy(local(images), labels), params)
        with torch.no_grad():
            for p, g, t in zip(params, grads, total, strict=True):
                p -= lr * g
                t += g
    return total, dict(local.named_buffers())


def client_round(model: nn.Module, client: Client, steps: Sequence[DefenceStep],
                 cfg: UtilityConfig, fc_index: int, seed: int,
                 ) -> tuple[Gradient, dict[str, torch.Tensor]]:
    """One client's defended update of one round, from the global ``model``, and its local
    buffers; ``seed`` draws its batches and its defence's randomness."""
    sampling = torch.Generator().manual_seed(derive_seed(seed, "batches"))
    defence_rng = torch.Generator().manual_seed(derive_seed(seed, "defence"))
    n = len(client.images)
    if (dp_step := dp_sgd_step(steps)) is not None:
        from ggl.dp import dp_sgd_update, noise_generator, poisson_batches

        dp = dp_step.settings
        batches = poisson_batches(client.images, client.labels, sample_rate(cfg, n),
                                  cfg.local_steps, sampling)
        update = dp_sgd_update(model, batches, dp["noise_multiplier"], dp["max_grad_norm"],
                               expected_batch_size=cfg.batch_size, lr=cfg.lr,
                               generator=noise_generator(derive_seed(seed, "dp-noise"),
                                                         client.images.device))
        buffers: dict[str, torch.Tensor] = dict(model.named_buffers())
        steps = steps[1:]  # post-processing of the DP update, if any
    else:
        order = torch.randperm(n, generator=sampling)
        size = min(cfg.batch_size, n)
        index = [order[(e * size + torch.arange(size)) % n] for e in range(cfg.local_steps)]
        batches = [(client.images[i], client.labels[i]) for i in index]
        update, buffers = _sgd_update(model, batches, cfg.lr)
    used = torch.cat([b[0] for b in batches]) if batches else client.images[:0]
    used_labels = torch.cat([b[1] for b in batches]) if batches else client.labels[:0]
    ctx = ClientContext(model, used, used_labels, fc_index, defence_rng)
    return apply_defence(update, steps, ctx), buffers


def fedavg_round(model: nn.Module, clients: Sequence[Client], steps: Sequence[DefenceStep],
                 cfg: UtilityConfig, fc_index: int, round_index: int) -> None:
    """One round of federated averaging, in place on the global ``model``."""
    updates, buffers = [], []
    for k, client in enumerate(clients):
        update, local_buffers = client_round(model, client, steps, cfg, fc_index,
                                             derive_seed(cfg.seed, "round", round_index, k))
        updates.append(update)
        buffers.append(local_buffers)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p -= cfg.lr * torch.stack([u[i] for u in updates]).mean(0)
        for name, b in model.named_buffers():
            stacked = torch.stack([local[name] for local in buffers])
            b.copy_(stacked.float().mean(0).to(b.dtype) if b.is_floating_point()
                    else stacked.max(0).values)


@dataclass
class Training:
    """The stage's result: one row per round (round 0 = the initial model) and the model."""

    rows: list[dict[str, Any]]  # round, test_accuracy, test_loss, epsilon (None: no dp-sgd)
    model: nn.Module
    client_sizes: list[int]


def round_epsilon(steps: Sequence[DefenceStep], cfg: UtilityConfig, client_sizes: Sequence[int],
                  rounds: int) -> float | None:
    """Epsilon of dp-sgd after ``rounds`` rounds (the largest over clients); None without it."""
    dp = dp_sgd_step(steps)
    if dp is None:
        return None
    from ggl.dp import max_epsilon

    rates = [sample_rate(cfg, n) for n in client_sizes]
    return max_epsilon(dp.settings["noise_multiplier"], rates, rounds * cfg.local_steps,
                       dp.settings["delta"])


def train_federated(model: nn.Module, clients: Sequence[Client], steps: Sequence[DefenceStep],
                    cfg: UtilityConfig, test: Client, resume_path: str | Path,
                    settings: dict[str, Any], log: Any = None,
                    on_round_end: Callable[[int], None] | None = None) -> Training:
    """``cfg.rounds`` rounds of federated averaging from ``model`` (trained in place). The state
    is written to ``resume_path`` after every round; a rerun after a kill resumes from it when
    ``settings`` and the data are the same (the caller removes it once the outputs are safe).
    Every round draws from its own seeds, so a resumed run ends with the same numbers.
    ``on_round_end(round)`` runs after each save."""
    from ggl.models import fc_weight_index

    resume_path = Path(resume_path)
    sizes = [len(c.images) for c in clients]
    fingerprint = data_fingerprint(torch.cat([c.images for c in clients] + [test.images]),
                                   torch.cat([c.labels for c in clients] + [test.labels]))
    rows: list[dict[str, Any]] = []
    state = io.read_resume(resume_path, next(model.parameters()).device, log)
    if state is not None:
        if state.get("settings") == settings and state.get("data") == fingerprint:
            initial = {k: v.clone() for k, v in model.state_dict().items()}
            try:
                model.load_state_dict(state["model"])
                rows = list(state["rows"])
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                io.set_aside(resume_path, f"cannot be resumed from ({exc!r:.100}), starting "
                                          "over", log)
                model.load_state_dict(initial)
                rows = []
            if log and rows:
                log.info("resuming federated training after round %d of %d", len(rows) - 1,
                         cfg.rounds)
        elif log:
            log.info("%s was written for other settings or data: starting over", resume_path)
    if dp_sgd_step(steps) is not None:
        from ggl.dp import check_private_model

        check_private_model(model)
    if not rows:
        rows = [_row(0, model, test, steps, cfg, sizes)]
    fc_index = fc_weight_index(model)
    for r in tqdm(range(len(rows), cfg.rounds + 1), desc="federated rounds", unit="round",
                  initial=len(rows) - 1, total=cfg.rounds, mininterval=1.0):
        fedavg_round(model, clients, steps, cfg, fc_index, r)
        rows.append(_row(r, model, test, steps, cfg, sizes))
        io.save_torch(resume_path, {"settings": settings, "data": fingerprint,
                                    "model": model.state_dict(), "rows": rows})
        if log:
            log.info("round %d: test accuracy %.4f, loss %.4f", r, rows[-1]["test_accuracy"],
                     rows[-1]["test_loss"])
        if on_round_end is not None:
            on_round_end(r)
    return Training(rows, model, sizes)


def _row(r: int, model: nn.Module, test: Client, steps: Sequence[DefenceStep],
         cfg: UtilityConfig, sizes: Sequence[int]) -> dict[str, Any]:
    accuracy, loss = evaluate(model, test.images, test.labels)
    epsilon = round_epsilon(steps, cfg, sizes, r)
    return {"round": r, "test_accuracy": accuracy, "test_loss": loss, "epsilon": epsilon}
