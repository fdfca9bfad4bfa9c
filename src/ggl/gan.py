"""WGAN-GP training of the 32x32 generator on the public split, and its quality check.

The authors never released their generator, so the pipeline trains it. Training is
resumable: the state is saved atomically after every epoch and a rerun with the same config
continues from there. Every epoch draws its randomness from its own seed, so an interrupted
and resumed run ends with the same weights as an uninterrupted one (on the CPU).
"""

from __future__ import annotations

import copy
import csv
import io as textio
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ggl import io
from ggl.generators import DCGANCritic, DCGANGenerator, Generator
from ggl.runtime import derive_seed

LOSS_COLUMNS = ("step", "epoch", "critic_loss", "generator_loss", "gradient_penalty",
                "wasserstein")


@dataclass(frozen=True)
class GanTrainConfig:
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-4  # generator and critic
    beta1: float = 0.5
    beta2: float = 0.999
    critic_steps: int = 5  # critic updates per generator update
    gp_weight: float = 10.0
    latent_dim: int = 128
    width: int = 64  # paper: 64 (512/256/128 channels in the generator)
    ema: float = 0.0  # decay of an exponential moving average of the generator (0 = off)
    seed: int = 0


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     gen: torch.Generator) -> torch.Tensor:
    alpha = torch.rand(len(real), 1, 1, 1, generator=gen).to(real)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


class _State:
    """Everything needed to resume: networks, optimisers, EMA, loss rows, epochs done."""

    def __init__(self, cfg: GanTrainConfig, device: torch.device) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.g = DCGANGenerator(cfg.latent_dim, cfg.width).to(device)
            self.c = DCGANCritic(cfg.width).to(device)
        self.ema = copy.deepcopy(self.g).eval().requires_grad_(False)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.lr, betas=betas)
        self.opt_c = torch.optim.Adam(self.c.parameters(), lr=cfg.lr, betas=betas)
        self.rows: list[list[float]] = []
        self.epoch = 0

    def state_dict(self, cfg: GanTrainConfig) -> dict[str, Any]:
        return {"config": asdict(cfg), "epoch": self.epoch, "rows": self.rows,
                "generator": self.g.state_dict(), "critic": self.c.state_dict(),
                "ema": self.ema.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_c": self.opt_c.state_dict()}

    def load(self, state: dict[str, Any]) -> None:
        self.g.load_state_dict(state["generator"])
        self.c.load_state_dict(state["critic"])
        self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_c.load_state_dict(state["opt_c"])
        self.rows, self.epoch = [list(r) for r in state["rows"]], int(state["epoch"])


def _epoch(s: _State, images: torch.Tensor, cfg: GanTrainConfig, device: torch.device,
           bar: tqdm) -> None:
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "gan-epoch", s.epoch))
    order = torch.randperm(len(images), generator=gen)
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    batches = [b for b in batches if len(b) == cfg.batch_size] or batches
    s.g.train()
    for i, idx in enumerate(batches):
        real = images[idx].to(device)
        z = torch.randn(len(real), cfg.latent_dim, generator=gen).to(device)
        with torch.no_grad():
            fake = s.g(z)
        d_real, d_fake = s.c(real).mean(), s.c(fake).mean()
        gp = gradient_penalty(s.c, real, fake, gen)
        critic_loss = d_fake - d_real + cfg.gp_weight * gp
        s.opt_c.zero_grad()
        critic_loss.backward()
        s.opt_c.step()
        if (i + 1) % cfg.critic_steps:
            continue
        z = torch.randn(cfg.batch_size, cfg.latent_dim, generator=gen).to(device)
        generator_loss = -s.c(s.g(z)).mean()
        s.opt_g.zero_grad()
        generator_loss.backward()
        s.opt_g.step()
        _update_ema(s, cfg.ema)
        s.rows.append([len(s.rows) + 1, s.epoch + 1, critic_loss.item(), generator_loss.item(),
                       float(gp), float(d_real - d_fake)])
    if s.rows:
        bar.set_postfix(critic=f"{s.rows[-1][2]:.3f}", W=f"{s.rows[-1][5]:.3f}")
    s.epoch += 1


def _update_ema(s: _State, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(s.ema.parameters(), s.g.parameters(), strict=True):
            e.lerp_(p, 1 - decay) if decay else e.copy_(p)
        for e, b in zip(s.ema.buffers(), s.g.buffers(), strict=True):
            e.copy_(b)


def train_gan(public_images: torch.Tensor, cfg: GanTrainConfig, out_dir: str | Path,
              device: torch.device, log: Any = None, stop_after_epoch: int | None = None
              ) -> Path:
    """Train on the public images and write generator.pt, losses.csv, samples.png and
    losses.png into ``out_dir``. ``stop_after_epoch`` simulates a kill (tests)."""
    out_dir = Path(out_dir)
    resume_path = out_dir / ".resume.pt"
    s = _State(cfg, device)
    if resume_path.exists():
        state = io.load_torch(resume_path, map_location=device)
        if state["config"] == asdict(cfg):
            s.load(state)
            if log:
                log.info("resuming GAN training after epoch %d", s.epoch)
        elif log:
            log.info("ignoring a resume file written for other settings")
    start = time.perf_counter()
    with tqdm(total=cfg.epochs, initial=s.epoch, desc="WGAN-GP", unit="epoch") as bar:
        while s.epoch < cfg.epochs:
            _epoch(s, public_images, cfg, device, bar)
            io.save_torch(resume_path, s.state_dict(cfg))
            bar.update(1)
            if stop_after_epoch is not None and s.epoch >= stop_after_epoch:
                raise KeyboardInterrupt(f"stopped after epoch {s.epoch}")
    if log:
        log.info("trained %d epochs in %.1f s", cfg.epochs, time.perf_counter() - start)
    final = s.ema if cfg.ema else s.g
    io.save_torch(out_dir / "generator.pt", {"generator": final.eval().state_dict(),
                                             "config": asdict(cfg)})
    io.write_text(out_dir / "losses.csv", _rows_csv(s.rows))
    _plot_losses(s.rows, out_dir / "losses.png")
    with torch.no_grad():
        gen = Generator(final, cfg.latent_dim, public_images.shape[-1])
        z = torch.randn(64, cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed))
        io.save_image(out_dir / "samples.png", gen(z.to(device)))
    resume_path.unlink(missing_ok=True)
    return out_dir / "generator.pt"


def _rows_csv(rows: list[list[float]]) -> str:
    out = textio.StringIO()
    writer = csv.writer(out)
    writer.writerow(LOSS_COLUMNS)
    writer.writerows([int(r[0]), int(r[1]), *(f"{v:.6g}" for v in r[2:])] for r in rows)
    return out.getvalue()


def _plot_losses(rows: list[list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r[0] for r in rows]
    for col, label in ((2, "critic loss"), (3, "generator loss"), (5, "Wasserstein estimate")):
        ax.plot(steps, [r[col] for r in rows], label=label, lw=0.8)
    ax.set_xlabel("generator step")
    ax.set_title("WGAN-GP training on the public split")
    ax.legend()
    io.save_figure(path, fig)


# --- quality check -----------------------------------------------------------------------

class _Classifier(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def quality_check(generator: Generator, public: tuple[torch.Tensor, torch.Tensor],
                  private: tuple[torch.Tensor, torch.Tensor], num_classes: int, seed: int,
                  device: torch.device, n_samples: int = 2000, epochs: int = 15
                  ) -> dict[str, Any]:
    """A small classifier trained on the public labels judges the generator's samples.

    ``sample_confidence`` (mean top-class probability on samples) near ``real_confidence``
    (the same on private images) means recognisable samples; ``classes_covered`` below the
    number of classes shows mode collapse."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = _Classifier(num_classes).to(device)
    opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
    images, labels = public
    for _ in range(epochs):
        for idx in torch.randperm(len(images), generator=gen).split(64):
            loss = nn.functional.cross_entropy(clf(images[idx].to(device)), labels[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
    clf.eval()
    with torch.no_grad():
        z = torch.randn(n_samples, generator.latent_dim, generator=gen).to(device)
        samples = torch.cat([generator(c) for c in z.split(250)])
        p_samples = clf(samples).softmax(1).cpu()
        p_real = clf(private[0].to(device)).softmax(1).cpu()
    predicted = p_samples.argmax(1)
    return {
        "sample_confidence": float(p_samples.max(1).values.mean()),
        "real_confidence": float(p_real.max(1).values.mean()),
        "classes_covered": int(predicted.unique().numel()),
        "num_classes": num_classes,
        "classifier_private_accuracy": float((p_real.argmax(1) == private[1]).float().mean()),
        "sample_class_histogram": torch.bincount(predicted, minlength=num_classes).tolist(),
        "n_samples": n_samples,
    }
