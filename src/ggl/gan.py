"""WGAN-GP training of the 32x32 generator on the public split, and its quality check.

The authors never released their generator, so the pipeline trains it, on the public images
only. Training is resumable: its whole state is saved atomically after every epoch and every
epoch draws from its own seed, so a killed run resumed from its last epoch ends with the same
weights as an uninterrupted one (on the CPU; CUDA kernels may differ in the last bits).
``PAPER_RECIPE`` is the paper's recipe, ``CPU_RECIPE`` the default's (about 2.5 minutes on 2 CPU
cores); every value is a params field, so ``GanTrainConfig`` has no defaults.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ggl import io
from ggl.config import Params
from ggl.generators import DCGANCritic, DCGANGenerator, Generator, dcgan_checkpoint
from ggl.runtime import data_fingerprint, derive_seed

LOSS_COLUMNS = ("step", "epoch", "critic_loss", "generator_loss", "gradient_penalty",
                "wasserstein")


@dataclass(frozen=True)
class GanTrainConfig:
    """One WGAN-GP recipe. ``epochs`` count passes of the *critic* over the public images."""

    epochs: int
    batch_size: int
    lr: float                    # critic learning rate (Adam)
    generator_lr: float          # generator learning rate (Adam); paper: the same as lr
    betas: tuple[float, float]   # Adam betas of both networks
    critic_steps: int            # critic updates per generator update
    gp_weight: float             # gradient-penalty weight (lambda)
    gp_every: int                # penalise every k-th critic step, weight x k ("lazy"); paper 1
    drift_weight: float          # epsilon * E[D(real)^2] keeps critic outputs near 0; paper 0
    ema: float                   # EMA decay of the generator's weights; 0 = off (paper)
    lr_decay: bool               # both lrs linearly to 0 (WGAN-GP's CIFAR-10 recipe); paper: off
    bn_recalibration: int        # batches of 256 latents to re-estimate BN statistics; 0 = off
    latent_dim: int
    width: int                   # generator 8w/4w/2w channels, critic 2w/4w/8w; paper 64
    num_classes: int             # > 0: class-conditional, on the public labels; paper: 0
    seed: int

    def __post_init__(self) -> None:  # params' schema checks the values (generator.train)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))  # YAML lists


# The paper's recipe (width 64: 512/256/128 channels).
PAPER_RECIPE = GanTrainConfig(
    epochs=100, batch_size=64, lr=1e-4, generator_lr=1e-4, betas=(0.5, 0.999), critic_steps=5,
    gp_weight=10.0, gp_every=1, drift_weight=0.0, ema=0.0, lr_decay=False, bn_recalibration=0,
    latent_dim=128, width=64, num_classes=0, seed=0)

# Engineered for 2 CPU cores (README): the same networks and loss, narrower, one critic step
# per generator step, the WGAN-GP paper's Adam betas (0, 0.9), higher learning rates, an EMA of
# the generator's weights with recalibrated BatchNorm statistics.
CPU_RECIPE = GanTrainConfig(
    epochs=60, batch_size=64, lr=5e-4, generator_lr=5e-4, betas=(0.0, 0.9), critic_steps=1,
    gp_weight=10.0, gp_every=1, drift_weight=1e-3, ema=0.99, lr_decay=False, bn_recalibration=8,
    latent_dim=128, width=16, num_classes=0, seed=0)


def gan_config(params: Params) -> GanTrainConfig:
    """The recipe params' generator section describes."""
    g = params.generator
    return GanTrainConfig(**g.train, latent_dim=g.latent_dim, width=g.width,
                          num_classes=params.data.num_classes if g.conditional else 0)


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """E[(||grad_x D(x)|| - 1)^2] on random interpolates of real and fake (Gulrajani et al.)."""
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


class _State:
    """Everything needed to resume: networks, optimisers, EMA, loss rows and counters."""

    def __init__(self, cfg: GanTrainConfig, device: torch.device) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.g = DCGANGenerator(cfg.latent_dim, cfg.width, cfg.num_classes).to(device)
            self.c = DCGANCritic(cfg.width, num_classes=cfg.num_classes).to(device)
        self.ema = copy.deepcopy(self.g).requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.generator_lr, betas=cfg.betas)
        self.opt_c = torch.optim.Adam(self.c.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.rows: list[list[float]] = []
        self.epoch = self.critic_iters = 0

    def state_dict(self, cfg: GanTrainConfig, fingerprint: str) -> dict[str, Any]:
        return {"config": asdict(cfg), "data": fingerprint, "epoch": self.epoch,
                "critic_iters": self.critic_iters, "rows": self.rows,
                "generator": self.g.state_dict(), "critic": self.c.state_dict(),
                "ema": self.ema.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_c": self.opt_c.state_dict()}

    def load(self, state: dict[str, Any]) -> None:
        self.g.load_state_dict(state["generator"])
        self.c.load_state_dict(state["critic"])
        self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_c.load_state_dict(state["opt_c"])
        self.rows = [list(r) for r in state["rows"]]
        self.epoch, self.critic_iters = int(state["epoch"]), int(state["critic_iters"])


def _update_ema(s: _State, decay: float) -> None:
    """EMA of the generator's parameters; the decay ramps up so early steps do not linger."""
    step = len(s.rows)
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(s.ema.parameters(), s.g.parameters(), strict=True):
            e.lerp_(p, 1 - d)
        for e, b in zip(s.ema.buffers(), s.g.buffers(), strict=True):
            e.copy_(b)


def _epoch(s: _State, images: torch.Tensor, labels: torch.Tensor | None, cfg: GanTrainConfig,
           device: torch.device, bar: tqdm) -> None:
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "gan-epoch", s.epoch))
    order = torch.randperm(len(images), generator=gen)
    # Full batches only (the gradient penalty and BN see equal-sized batches); a public set
    # smaller than one batch is one short batch.
    batches = [order[i: i + cfg.batch_size]
               for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size)] or [order]
    s.g.train()
    pending: list[list[float]] = []  # critic metrics since the last generator step
    for idx in batches:
        if cfg.lr_decay:  # from the step count alone, so a resumed run decays identically
            factor = 1 - s.critic_iters / (len(batches) * cfg.epochs)
            for opt, lr in ((s.opt_c, cfg.lr), (s.opt_g, cfg.generator_lr)):
                for group in opt.param_groups:
                    group["lr"] = lr * factor
        real = images[idx].to(device, non_blocking=True)
        n = len(real)
        z = torch.randn(n, cfg.latent_dim, generator=gen).to(device)
        alpha = torch.rand(n, 1, 1, 1, generator=gen).to(device)
        # Conditional: fakes take the real batch's labels, so both sides share a class mix.
        y = None if labels is None else labels[idx].to(device)
        onehot = None if y is None else F.one_hot(y, cfg.num_classes).float()
        with torch.no_grad():
            fake = s.g(z, onehot)
        d_real, d_fake = s.c(real, y), s.c(fake, y)
        w = d_real.mean() - d_fake.mean()
        loss = -w
        penalise = cfg.gp_weight > 0 and s.critic_iters % cfg.gp_every == 0
        gp = torch.zeros((), device=device)
        if penalise:
            gp = gradient_penalty(lambda x, y=y: s.c(x, y), real, fake, alpha)
            loss = loss + cfg.gp_weight * cfg.gp_every * gp
        if cfg.drift_weight:
            loss = loss + cfg.drift_weight * d_real.pow(2).mean()
        s.opt_c.zero_grad(set_to_none=True)
        loss.backward()
        s.opt_c.step()
        s.critic_iters += 1
        pending.append([loss.item(), gp.item() if penalise else float("nan"), w.item()])
        bar.update(1)
        if s.critic_iters % cfg.critic_steps:
            continue
        z = torch.randn(n, cfg.latent_dim, generator=gen).to(device)
        g_loss = -s.c(s.g(z, onehot), y).mean()
        s.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        s.opt_g.step()
        s.opt_c.zero_grad(set_to_none=True)  # the generator step left gradients in the critic
        gps = [p[1] for p in pending if p[1] == p[1]]
        s.rows.append([len(s.rows) + 1, s.epoch + 1, sum(p[0] for p in pending) / len(pending),
                       g_loss.item(), sum(gps) / len(gps) if gps else float("nan"),
                       sum(p[2] for p in pending) / len(pending)])
        pending = []
        if cfg.ema:
            _update_ema(s, cfg.ema)
    if s.rows:
        bar.set_postfix(epoch=s.epoch + 1, critic=f"{s.rows[-1][2]:.3f}",
                        W=f"{s.rows[-1][5]:.3f}", refresh=False)
    s.epoch += 1


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, latent_dim: int, batches: int, seed: int,
                          device: torch.device, batch_size: int = 256,
                          num_classes: int = 0) -> None:
    """Re-estimate BatchNorm statistics for the final weights (exact averages over seeded
    latents): an EMA's weights never produced the running statistics they inherit."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not batches or not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    gen = torch.Generator().manual_seed(derive_seed(seed, "bn-recalibration"))
    net.train()
    for _ in range(batches):
        z = torch.randn(batch_size, latent_dim, generator=gen).to(device)
        if num_classes:  # uniform labels: the attack may ask for any class
            labels = torch.randint(num_classes, (batch_size,), generator=gen).to(device)
            net(z, F.one_hot(labels, num_classes).float())
        else:
            net(z)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    net.eval()


@dataclass
class TrainedGan:
    """The outcome of training: the final generator network and the loss rows."""

    net: DCGANGenerator  # the EMA's weights when ema > 0, BatchNorm recalibrated, eval mode
    rows: list[list[float]]  # one per generator step, LOSS_COLUMNS
    cfg: GanTrainConfig
    image_size: int

    def checkpoint(self) -> dict[str, Any]:
        """``generator.pt``: a plain state_dict and a small config (loads weights_only)."""
        return dcgan_checkpoint(self.net, self.image_size, train=asdict(self.cfg))

    def losses_csv(self) -> str:
        return io.csv_text(LOSS_COLUMNS, ([int(r[0]), int(r[1]), *(f"{v:.6g}" for v in r[2:])]
                                          for r in self.rows))

    def losses_figure(self) -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.8))
        steps = [r[0] for r in self.rows]
        k = max(1, len(self.rows) // 100)  # moving average over ~1 % of the run
        for col, label in ((2, "critic loss"), (3, "generator loss"),
                           (5, "Wasserstein estimate")):
            ax.plot(steps, _smooth([r[col] for r in self.rows], k), label=label, lw=0.9)
        ax.set_xlabel("generator step")
        ax.set_title(f"WGAN-GP on the public split (moving average of {k})")
        ax.legend()
        return fig

    def samples(self) -> torch.Tensor:
        """Seeded samples for a grid; conditional, up to 16 classes: k x k, column j of class j."""
        cfg = self.cfg
        generator = Generator(copy.deepcopy(self.net), cfg.latent_dim, self.image_size,
                              conditional=bool(cfg.num_classes), num_classes=cfg.num_classes)
        n = cfg.num_classes ** 2 if 0 < cfg.num_classes <= 16 else 64
        z = torch.randn(n, cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed))
        labels = torch.arange(n) % max(cfg.num_classes, 1)
        device = generator.device
        with torch.no_grad():
            return generator(z.to(device), labels.to(device))


def train_gan(public_images: torch.Tensor, cfg: GanTrainConfig, resume_path: str | Path,
              device: torch.device | str, log: Any = None,
              on_epoch_end: Callable[[int], None] | None = None,
              public_labels: torch.Tensor | None = None) -> TrainedGan:
    """Train on the public images (N, 3, H, W) in [-1, 1] (and ``public_labels`` (N,) when
    ``cfg.num_classes`` > 0). The state is written to ``resume_path`` after every epoch; a rerun
    after a kill resumes from it when the settings and images are the same (the caller removes
    it once the outputs are safe). ``on_epoch_end(epoch)`` runs after each save."""
    resume_path, device = Path(resume_path), torch.device(device)
    labels = None
    if cfg.num_classes:
        if public_labels is None or len(public_labels) != len(public_images):
            raise ValueError("a conditional GAN (num_classes > 0) needs one public label per "
                             "public image")
        labels = public_labels.long()
        if int(labels.min()) < 0 or int(labels.max()) >= cfg.num_classes:
            raise ValueError(f"public labels must lie in [0, {cfg.num_classes}), found "
                             f"{int(labels.min())}..{int(labels.max())}")
    fingerprint = data_fingerprint(public_images, labels)
    s = _State(cfg, device)
    state = io.read_resume(resume_path, device, log)
    if state is not None:
        if state.get("config") == asdict(cfg) and state.get("data") == fingerprint:
            try:
                s.load(state)
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                io.set_aside(resume_path, f"cannot be resumed from ({exc!r:.100}), starting "
                                          "over", log)
                s = _State(cfg, device)
            if log and s.epoch:
                log.info("resuming GAN training after epoch %d of %d", s.epoch, cfg.epochs)
        elif log:
            log.info("%s was written for other settings or images: starting over", resume_path)
    images = public_images.to(device)  # small enough to live on the device (digits: 16 MB)
    per_epoch = max(1, len(images) // cfg.batch_size)
    start = time.perf_counter()
    with tqdm(total=cfg.epochs * per_epoch, initial=s.epoch * per_epoch, unit="step",
              desc="WGAN-GP (critic steps)", mininterval=1.0) as bar:
        while s.epoch < cfg.epochs:
            _epoch(s, images, labels, cfg, device, bar)
            io.save_torch(resume_path, s.state_dict(cfg, fingerprint))
            if on_epoch_end is not None:
                on_epoch_end(s.epoch)
    if log:
        log.info("trained to epoch %d in %.1f s (%d generator steps)", cfg.epochs,
                 time.perf_counter() - start, len(s.rows))
    final = s.ema if cfg.ema else s.g
    recalibrate_batchnorm(final, cfg.latent_dim, cfg.bn_recalibration, cfg.seed, device,
                          num_classes=cfg.num_classes)
    final.eval()
    return TrainedGan(final, s.rows, cfg, public_images.shape[-1])


def _smooth(values: list[float], k: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - k] if i >= k else 0.0)
        out.append(acc / min(i + 1, k))
    return out


# --- quality check -------------------------------------------------------------------------

def _classifier(num_classes: int) -> nn.Module:
    """A small CNN judge for 32x32 images (about 99 % on digits after a few seconds)."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(256, num_classes))


def _probabilities(clf: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([clf(x.to(device)).softmax(1).cpu() for x in images.split(500)])


def quality_check(generator: Generator, public_images: torch.Tensor,
                  public_labels: torch.Tensor, private_images: torch.Tensor,
                  private_labels: torch.Tensor | None = None,
                  device: torch.device | str = "cpu",
                  seed: int = 0, n_samples: int = 2000, *, num_classes: int | None = None,
                  classifier_epochs: int = 15) -> dict[str, Any]:
    """How recognisable the generator's samples are, judged by a classifier of the public split:
    ``sample_confidence`` (mean top-class probability on ``n_samples`` samples) near
    ``real_confidence`` (the same on the private images) means as recognisable as real images;
    ``classes_covered`` below the number of classes shows mode collapse."""
    device = torch.device(device)
    num_classes = int(num_classes or int(public_labels.max()) + 1)
    gen = torch.Generator().manual_seed(derive_seed(seed, "quality-check"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "quality-classifier"))
        clf = _classifier(num_classes).to(device)
    x, y = public_images.to(device), public_labels.to(device)
    batches = -(-len(x) // 64)
    opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
    # one-cycle schedule: ~1 point more private accuracy than a constant rate, same time
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3,
                                                   total_steps=classifier_epochs * batches)
    start = time.perf_counter()
    clf.train()
    for _ in range(classifier_epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            loss = F.cross_entropy(clf(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
    clf.eval()
    z = torch.randn(n_samples, generator.latent_dim, generator=gen)
    labels = torch.randint(max(generator.num_classes, 1), (n_samples,), generator=gen)
    with torch.no_grad():
        samples = torch.cat([generator(zb.to(device), lb.to(device))
                             for zb, lb in zip(z.split(500), labels.split(500), strict=True)])
    p_samples = _probabilities(clf, samples, device)
    p_real = _probabilities(clf, private_images, device)
    predicted = p_samples.argmax(1)
    sample_conf = float(p_samples.max(1).values.mean())
    real_conf = float(p_real.max(1).values.mean())
    return {
        "sample_confidence": sample_conf,
        "real_confidence": real_conf,
        "confidence_ratio": sample_conf / real_conf,
        "classes_covered": int(predicted.unique().numel()),
        "num_classes": num_classes,
        "sample_class_histogram": torch.bincount(predicted, minlength=num_classes).tolist(),
        "classifier_public_accuracy": float((_probabilities(clf, public_images, device)
                                             .argmax(1) == public_labels.cpu()).float().mean()),
        "classifier_private_accuracy": (
            None if private_labels is None
            else float((p_real.argmax(1) == private_labels.cpu()).float().mean())),
        "n_samples": n_samples,
        "n_private": len(private_images),
        "generator_stand_in": generator.stand_in,
        "seconds": round(time.perf_counter() - start, 2),
        "convention": "confidence = mean over images of the classifier's top softmax "
                      "probability; the classifier is a small CNN trained on the public split",
    }
