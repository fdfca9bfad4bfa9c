"""A user's own model, defence and dataset, plugged in from params as module:callable."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def tiny_net(num_classes: int, width: int) -> nn.Module:
    return TinyNet(num_classes, width)


def halve(grads, ctx, factor: float = 0.5):
    """A user's defence: scale every gradient."""
    return [g * factor for g in grads]


def blobs(cfg):
    """A user's dataset: returns (images in [-1, 1], labels) for ggl to split."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(60, 3, cfg.image_size, cfg.image_size, generator=gen) * 2 - 1
    return images, torch.arange(60) % cfg.num_classes


def stand_in_dcgan(checkpoint, **options):
    """A user's generator: here the DCGAN's seeded random-weight stand-in (no training)."""
    from ggl.generators import build_dcgan

    return build_dcgan(None, **{**options, "conditional": False})


class _Broken(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("broken on purpose")


def broken_net(num_classes: int, width: int) -> nn.Module:
    """A user's model with a bug: its error must reach the user with its traceback."""
    return _Broken(num_classes, width)
