"""Generators behind one interface: latents (and labels) -> images in [-1, 1] at the federated
model's resolution. The wrapped network is in eval mode with frozen parameters: gradients flow
to ``z`` only, and a call changes none of its buffers (the authors left BigGAN in train mode, so
its spectral-norm vectors drifted on every call). ``GENERATORS`` maps params' ``generator.kind``
to a builder; ``package.module:callable`` plugs in a user's own.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ggl import io
from ggl.config import Params
from ggl.errors import GglError
from ggl.plugins import Registry

# --- the paper's 32x32 WGAN-GP networks -----------------------------------------------------

class DCGANGenerator(nn.Module):
    """The paper's 32x32 generator, channels scaled by ``width`` (the paper's 64: 512/256/128
    channels). ``num_classes`` > 0 makes it class-conditional (not in the paper): the label's
    one-hot is appended to z before the linear layer."""

    def __init__(self, latent_dim: int = 128, width: int = 64, num_classes: int = 0) -> None:
        super().__init__()
        self.latent_dim, self.width, self.num_classes = latent_dim, width, num_classes
        self.fc = nn.Sequential(nn.Linear(latent_dim + num_classes, 8 * width * 4 * 4),
                                nn.BatchNorm1d(8 * width * 4 * 4), nn.ReLU(True))
        self.net = nn.Sequential(
            nn.ConvTranspose2d(8 * width, 4 * width, 2, stride=2), nn.BatchNorm2d(4 * width),
            nn.ReLU(True),
            nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2), nn.BatchNorm2d(2 * width),
            nn.ReLU(True),
            nn.ConvTranspose2d(2 * width, 3, 2, stride=2), nn.Tanh())

    def forward(self, z: torch.Tensor, onehot: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes:
            if onehot is None:
                raise ValueError("this DCGAN is class-conditional: pass one-hot labels")
            z = torch.cat([z, onehot.to(z.dtype)], 1)
        return self.net(self.fc(z).view(-1, 8 * self.width, 4, 4))


class DCGANCritic(nn.Module):
    """The paper's WGAN-GP critic, no normalisation (the gradient penalty is per sample); width
    64 gives its 128/256/512 channels. ``num_classes`` > 0 adds a projection term
    <embed(label), features> (Miyato & Koyama's projection critic), the conditional counterpart
    of the generator's one-hot input."""

    def __init__(self, width: int = 64, slope: float = 0.2, num_classes: int = 0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 2 * width, 3, 2, 1), nn.LeakyReLU(slope),
            nn.Conv2d(2 * width, 4 * width, 3, 2, 1), nn.LeakyReLU(slope),
            nn.Conv2d(4 * width, 8 * width, 3, 2, 1), nn.LeakyReLU(slope),
            nn.Flatten(), nn.Linear(8 * width * 4 * 4, 1))
        self.embed = nn.Embedding(num_classes, 8 * width * 4 * 4) if num_classes else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is None:
            return self.net(x).view(-1)
        if labels is None:
            raise ValueError("this critic is class-conditional: pass labels")
        features = self.net[:-1](x)
        return self.net[-1](features).view(-1) + (self.embed(labels) * features).sum(1)


# --- the interface ----------------------------------------------------------------------------

class Generator(nn.Module):
    """``generator(z (n, latent_dim), labels (n,) or None) -> (n, 3, image_size, image_size)``,
    always in eval mode with frozen parameters. ``stand_in`` is None for real (trained or
    downloaded) weights, else what the random-weight stand-in is, so no result made with one
    can pass for the real thing."""

    def __init__(self, net: nn.Module, latent_dim: int, image_size: int, *,
                 conditional: bool = False, num_classes: int = 0,
                 stand_in: str | None = None) -> None:
        super().__init__()
        if conditional and num_classes < 1:
            raise ValueError("a conditional generator needs num_classes >= 1")
        self.net = net
        self.latent_dim, self.image_size = int(latent_dim), int(image_size)
        self.conditional, self.num_classes = conditional, int(num_classes)
        self.stand_in = stand_in
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Generator:
        # Train mode would let BatchNorm / spectral norm update buffers on every call; a prior
        # must be a fixed function of z, so the mode is pinned to eval.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        tensor = next(iter([*self.net.parameters(), *self.net.buffers()]), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be (n, {self.latent_dim}), got {tuple(z.shape)}")
        if self.conditional:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass labels (n,)")
            onehot = F.one_hot(labels.to(z.device).long().view(-1), self.num_classes).to(z.dtype)
            images = self.net(z, onehot.expand(len(z), -1))
        else:
            images = self.net(z)  # labels are ignored: an unconditional prior
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            # area = average pooling for downscaling, as the authors' 256 -> 224 resize
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="area")
        return images.clamp(-1, 1)  # tanh + averaging stay inside; guards float round-off

    def info(self) -> dict[str, Any]:
        """What attack records say about the prior."""
        names = ("latent_dim", "image_size", "conditional", "num_classes", "stand_in")
        return {name: getattr(self, name) for name in names}


GENERATORS: Registry[Callable[..., Generator]] = Registry("generator")


def load_generator(kind: str, checkpoint: str | Path | None, device: torch.device | str,
                   **options: Any) -> Generator:
    """Build the generator of ``kind`` (a registered name or ``package.module:callable``);
    ``checkpoint`` None gives a seeded random-weight stand-in (``stand_in`` says so). Options are
    the builder's keyword arguments; the CLI passes the same set (image_size, latent_dim, width,
    num_classes, seed, ...) to every kind, so builders ignore the ones they do not use."""
    built = GENERATORS.get(kind)(checkpoint=checkpoint, **options)
    if not isinstance(built, Generator):
        # A plugin may return a bare module z -> images; wrap it so it obeys the interface.
        if not isinstance(built, nn.Module):
            raise ValueError(f"generator {kind!r} returned {type(built).__name__}, "
                             "expected ggl.generators.Generator or an nn.Module")
        built = Generator(built, options["latent_dim"], options["image_size"],
                          stand_in=None if checkpoint else f"{kind} without checkpoint")
    return built.to(device)


def build_generator(params: Params, checkpoint: str | Path | None,
                    device: torch.device | str) -> Generator:
    """The generator params describe, with its weights from ``checkpoint``."""
    g = params.generator
    return load_generator(g.kind, checkpoint, device, image_size=params.data.image_size,
                          latent_dim=g.latent_dim, width=g.width, conditional=g.conditional,
                          num_classes=params.data.num_classes, seed=params.seed)


def dcgan_checkpoint(net: DCGANGenerator, image_size: int, **extra: Any) -> dict[str, Any]:
    """What ``generator.pt`` holds: a plain state_dict and a small config (weights_only-safe)."""
    return {"generator": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "config": {"arch": "dcgan", "latent_dim": net.latent_dim, "width": net.width,
                       "num_classes": net.num_classes, "image_size": image_size, **extra}}


@GENERATORS.register("dcgan")
def build_dcgan(checkpoint: str | Path | None, image_size: int = 32, latent_dim: int = 128,
                width: int = 64, conditional: bool = False, num_classes: int = 0, seed: int = 0,
                **_: Any) -> Generator:
    """The 32x32 WGAN-GP generator; ``checkpoint`` is the ``generator.pt`` of ``train_gan``.
    ``conditional`` takes the label (``num_classes`` of them) as a second input."""
    classes = num_classes if conditional else 0
    if checkpoint is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the same stand-in every time
            net = DCGANGenerator(latent_dim, width, classes)
        return Generator(net, latent_dim, image_size, conditional=conditional,
                         num_classes=classes,
                         stand_in=f"random-weight DCGAN (width {width}, seed {seed})")
    state = io.load_torch(checkpoint)  # weights_only=True
    with io.reading(checkpoint):
        saved = state["config"]
        found = (saved["latent_dim"], saved["width"], saved.get("num_classes", 0))
        io.finite(checkpoint, state["generator"])
    if found != (latent_dim, width, classes):
        raise GglError(f"{checkpoint} holds a generator with latent_dim {found[0]}, width "
                         f"{found[1]} and {found[2]} classes (0 = unconditional), but params "
                         f"ask for {latent_dim}, {width} and {classes}: retrain it "
                         "(ggl train-gan) or fix generator settings")
    net = DCGANGenerator(latent_dim, width, classes)
    with io.reading(checkpoint):
        net.load_state_dict(state["generator"])
    return Generator(net, latent_dim, image_size, conditional=conditional, num_classes=classes)


# --- BigGAN-deep-256 ----------------------------------------------------------------------------

class _BigGANNet(nn.Module):
    """Adapts BigGAN's ``(z, one-hot, truncation)`` call to ``(z, one-hot)``."""

    def __init__(self, biggan: nn.Module, truncation: float) -> None:
        super().__init__()
        self.biggan, self.truncation = biggan, float(truncation)

    def forward(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return self.biggan(z, onehot, self.truncation)


def _sane_biggan_init(biggan: nn.Module, truncation: float, seed: int) -> None:
    """Make a random-weight BigGAN produce finite, varied images. The package's random init
    leaves the final unconditional BatchNorm's weight and bias uninitialised (``torch.Tensor(n)``,
    sometimes NaN: set to ones and zeros here), and the stored statistics (mean 0, var 1) do not
    fit random weights, so activations overflow block after block: each BatchNorm gets its
    actual statistics instead, measured on one seeded batch."""
    from pytorch_pretrained_biggan.model import BigGANBatchNorm

    norms = [m for m in biggan.modules() if isinstance(m, BigGANBatchNorm)]
    with torch.no_grad():
        for m in norms:
            if not m.conditional:
                m.weight.fill_(1.0)
                m.bias.zero_()

    def store(module: nn.Module, args: tuple) -> None:
        x = args[0]
        module.running_means.copy_(x.mean((0, 2, 3)).expand_as(module.running_means))
        module.running_vars.copy_(x.var((0, 2, 3)).expand_as(module.running_vars))

    config = biggan.config
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(4, config.z_dim, generator=gen)
    onehot = F.one_hot(torch.randint(config.num_classes, (4,), generator=gen),
                       config.num_classes).float()
    handles = [m.register_forward_pre_hook(store) for m in norms]
    try:
        with torch.no_grad():
            biggan(z, onehot, truncation)  # pre-hooks run before each norm: layer by layer
    finally:
        for handle in handles:
            handle.remove()


@GENERATORS.register("biggan-deep-256")
def build_biggan(checkpoint: str | Path | None, image_size: int = 224, truncation: float = 1.0,
                 seed: int = 0, stand_in_width: int = 4, **_: Any) -> Generator:
    """BigGAN-deep-256 (1000 classes, z in R^128), area-resized to ``image_size``; ``checkpoint``
    is the verified ``biggan-deep-256-pytorch_model.bin`` of ``ggl.biggan``. Without it: a
    random-weight stand-in of ``ggl.biggan.BIGGAN_DEEP_256`` narrowed to ``stand_in_width``
    channels per unit (the real model: 128), sanely initialised; for tests and timing only."""
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    from ggl.biggan import BIGGAN_DEEP_256

    if not 0 < truncation <= 1:
        raise ValueError(f"truncation must be in (0, 1], got {truncation}")
    if checkpoint is None and stand_in_width < 3:
        raise ValueError("stand_in_width must be >= 3 (BigGAN keeps the first 3 of "
                         "channel_width output channels as RGB)")
    config = dict(BIGGAN_DEEP_256)
    stand_in = None
    if checkpoint is None:
        config["channel_width"] = stand_in_width
        stand_in = (f"random-weight BigGAN-deep-256 architecture, channel_width "
                    f"{stand_in_width} (real: {BIGGAN_DEEP_256['channel_width']}), seed {seed}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        biggan = BigGAN(BigGANConfig.from_dict(config)).eval()
    if checkpoint is None:
        _sane_biggan_init(biggan, truncation, seed)
    else:
        path = Path(checkpoint)
        if not path.is_file():
            raise GglError(f"{path} is missing: run `ggl fetch-biggan` (or see "
                                    "ggl.biggan.fetch_biggan for a manual download)")
        result = biggan.load_state_dict(io.load_torch(path), strict=False)
        if result.missing_keys:
            raise GglError(f"{path} lacks {len(result.missing_keys)} BigGAN-deep-256 tensors "
                             f"(e.g. {result.missing_keys[:3]}): not the expected weights")
        if result.unexpected_keys:
            warnings.warn(f"{path}: ignored {len(result.unexpected_keys)} unknown tensors "
                          f"(e.g. {result.unexpected_keys[:3]})", stacklevel=2)
    return Generator(_BigGANNet(biggan, truncation), config["z_dim"], image_size,
                     conditional=True, num_classes=config["num_classes"], stand_in=stand_in)
