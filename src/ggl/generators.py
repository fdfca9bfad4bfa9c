"""Generators behind one interface: latents (and labels) -> images in [-1, 1].

Every attack calls ``Generator(z, labels)``; the wrapped network is in eval mode with frozen
parameters, so a call changes none of its buffers (the authors' BigGAN, left in train mode,
drifted on every call) and gradients flow to ``z`` only. ``GENERATORS`` maps params'
``generator.kind`` to a builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ggl import io
from ggl.registry import Registry


class DCGANGenerator(nn.Module):
    """The paper's 32x32 generator: Linear(k -> 4*4*8w), BN, ReLU; three ConvT(k2, s2)
    halving channels 8w -> 4w -> 2w -> 3 with BN/ReLU between; tanh. Paper: w = 64."""

    def __init__(self, latent_dim: int = 128, width: int = 64) -> None:
        super().__init__()
        self.latent_dim, self.width = latent_dim, width
        self.fc = nn.Sequential(nn.Linear(latent_dim, 4 * 4 * 8 * width),
                                nn.BatchNorm1d(4 * 4 * 8 * width), nn.ReLU(True))
        self.net = nn.Sequential(
            nn.ConvTranspose2d(8 * width, 4 * width, 2, stride=2), nn.BatchNorm2d(4 * width),
            nn.ReLU(True),
            nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2), nn.BatchNorm2d(2 * width),
            nn.ReLU(True),
            nn.ConvTranspose2d(2 * width, 3, 2, stride=2), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, 8 * self.width, 4, 4))


class DCGANCritic(nn.Module):
    """The paper's WGAN-GP critic: three Conv(k3, s2, p1) + LeakyReLU, 2w -> 4w -> 8w
    channels (paper: 128, 256, 512), Linear(4*4*8w -> 1), no normalisation."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 2 * width, 3, 2, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * width, 4 * width, 3, 2, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(4 * width, 8 * width, 3, 2, 1), nn.LeakyReLU(0.2, True),
            nn.Flatten(), nn.Linear(4 * 4 * 8 * width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


@dataclass
class Generator:
    """The interface every attack uses."""

    net: nn.Module
    latent_dim: int
    image_size: int
    conditional: bool = False
    num_classes: int = 0
    standin: str | None = None  # set when the weights are a stand-in (random init)

    def __post_init__(self) -> None:
        self.net.eval()
        self.net.requires_grad_(False)

    def to(self, device: torch.device | str) -> Generator:
        self.net.to(device)
        return self

    def __call__(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditional:
            if labels is None:
                raise ValueError("a class-conditional generator needs labels")
            images = self.net(z, F.one_hot(labels, self.num_classes).to(z.dtype))
        else:
            images = self.net(z)
        if images.shape[-1] != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="area")
        return images.clamp(-1, 1)

    def info(self) -> dict[str, Any]:
        return {"latent_dim": self.latent_dim, "image_size": self.image_size,
                "conditional": self.conditional, "standin": self.standin}


GENERATORS: Registry = Registry("generator")


@GENERATORS.register("dcgan")
def load_dcgan(checkpoint: str | Path | None, image_size: int, latent_dim: int, width: int,
               seed: int = 0, **_: Any) -> Generator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # a stand-in without checkpoint is the same every time
        net = DCGANGenerator(latent_dim, width)
    standin = "random-weight DCGAN (no checkpoint given)"
    if checkpoint is not None:
        state = io.load_torch(checkpoint)
        net.load_state_dict(state["generator"])
        standin = None
    return Generator(net, latent_dim, image_size, standin=standin)


class _BigGANNet(nn.Module):
    """Adapts BigGAN's (z, one-hot, truncation) call to (z, one-hot)."""

    def __init__(self, biggan: nn.Module, truncation: float) -> None:
        super().__init__()
        self.biggan, self.truncation = biggan, truncation

    def forward(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return self.biggan(z, onehot, self.truncation)


def calibrate_biggan_statistics(biggan: nn.Module, z: torch.Tensor, onehot: torch.Tensor,
                                truncation: float) -> None:
    """Give a random-weight BigGAN the activation statistics it would have learnt.

    Its conditional BatchNorms normalise with stored statistics (mean 0, variance 1 when
    untrained), so random weights blow activations up block after block until they overflow.
    One forward pass stores each layer's actual batch statistics first."""
    from pytorch_pretrained_biggan.model import BigGANBatchNorm

    def store(module: nn.Module, args: tuple) -> None:
        x = args[0]
        module.running_means.copy_(x.mean((0, 2, 3)).expand_as(module.running_means))
        module.running_vars.copy_(x.var((0, 2, 3)).expand_as(module.running_vars))

    handles = [m.register_forward_pre_hook(store) for m in biggan.modules()
               if isinstance(m, BigGANBatchNorm)]
    try:
        with torch.no_grad():
            biggan(z, onehot, truncation)
    finally:
        for handle in handles:
            handle.remove()


@GENERATORS.register("biggan-deep-256")
def load_biggan(checkpoint: str | Path | None, image_size: int, channel_width: int | None = None,
                truncation: float = 1.0, seed: int = 0, **_: Any) -> Generator:
    """BigGAN-deep-256 (class-conditional, 1000 classes), area-resized to ``image_size``.

    Without a checkpoint it is a random-weight stand-in with calibrated statistics (tests,
    benchmarks); ``channel_width`` shrinks the stand-in (the real model has 128)."""
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    from ggl.biggan import BIGGAN_DEEP_256

    config = dict(BIGGAN_DEEP_256)
    if checkpoint is None and channel_width is not None:
        config["channel_width"] = channel_width
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        biggan = BigGAN(BigGANConfig.from_dict(config)).eval()
        standin = None
        if checkpoint is not None:
            biggan.load_state_dict(torch.load(checkpoint, map_location="cpu",
                                              weights_only=True))
        else:
            z = torch.randn(16, config["z_dim"])
            onehot = F.one_hot(torch.randint(config["num_classes"], (16,)),
                               config["num_classes"]).float()
            calibrate_biggan_statistics(biggan, z, onehot, truncation)
            standin = (f"random-weight BigGAN-deep-256 architecture "
                       f"(channel_width {config['channel_width']}, calibrated statistics)")
    return Generator(_BigGANNet(biggan, truncation), config["z_dim"], image_size,
                     conditional=True, num_classes=config["num_classes"], standin=standin)


def load_generator(kind: str, checkpoint: str | Path | None, device: torch.device | str,
                   **options: Any) -> Generator:
    return GENERATORS.get(kind)(checkpoint=checkpoint, **options).to(device)
