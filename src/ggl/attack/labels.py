"""Analytical label inference from the linear head's gradient (cross-entropy, mean over the
batch).

Batch size 1: the fc weight gradient is (softmax - onehot) r^T with non-negative features r, so
only the true class's row has negative entries; as the authors, take the row with the most
negative sum. Exact whenever the features are non-negative (ReLU before the head).

Batch size B > 1: the label multiset by the bias rule of Geng et al. (2021, "Towards general
deep leakage in federated learning"): the fc bias gradient is g_c = mean_i p_ic - n_c / B, so
n_c = B (mean_i p_ic - g_c). The batch's mean softmax is unknown to the server; it is estimated
by the model's mean softmax on images the attacker has (``mean_softmax``). Known failure cases:
a trained, confident model whose softmax on the attacker's images differs from that on the
client's batch; a head without bias; many classes per batch at large B, where the rounding
errors of several classes add up.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def infer_label(received: Sequence[torch.Tensor], fc_index: int) -> int:
    return int(received[fc_index].sum(dim=1).argmin())


def mean_softmax(model: nn.Module, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The model's softmax averaged over ``images`` (``chunk`` at a time): the estimate of the
    batch's mean softmax."""
    with torch.no_grad():
        total = sum(torch.softmax(model(images[i:i + chunk]), dim=1).sum(0)
                    for i in range(0, len(images), chunk))
    return total / len(images)


def round_to_total(values: torch.Tensor, total: int) -> torch.Tensor:
    """Non-negative integers summing to ``total``, nearest to ``values`` (clamped at 0 and
    rescaled to the total) by the largest-remainder rule; ties go to the lower index."""
    positive = values.double().clamp(min=0)
    share = positive / positive.sum() * total if positive.sum() > 0 else torch.full_like(
        positive, total / len(positive))
    counts = share.floor().long()
    remainder = share - counts
    order = torch.argsort(-remainder, stable=True)
    counts[order[: total - int(counts.sum())]] += 1
    return counts


def label_counts(fc_bias_grad: torch.Tensor, batch_size: int,
                 softmax_estimate: torch.Tensor) -> torch.Tensor:
    """How many images of each class the batch holds (``batch_size`` in all), from the received
    gradient of the head's bias and an estimate of the batch's mean softmax (Geng et al.)."""
    return round_to_total(batch_size * (softmax_estimate - fc_bias_grad), batch_size)


def labels_from_counts(counts: torch.Tensor) -> list[int]:
    """The multiset as a sorted list of class indices."""
    return [c for c, n in enumerate(counts.tolist()) for _ in range(n)]
