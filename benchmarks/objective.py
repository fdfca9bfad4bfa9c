"""Benchmark: the GGL objective's batch call against a one-at-a-time reference loop.

For one generation of candidates (default 50, the paper-like CMA-ES population) and each
adaptive defence estimate, prints evaluations per second of

* ``reference``: the authors' way, written here: one latent at a time, generator at batch 1,
  one backward pass per candidate, T-hat on that gradient, D1 + lambda R1;
* ``ours``: ``ggl.attack.objective.Objective`` as the attack runs it (``scorer="auto"``: the
  batched path where its measured policy chooses it; the ``path`` column says which ran);

side by side in one run (interleaved repeats, so a busy machine slows both alike), with their
ratio, wall-clock and CPU-time figures, and peak memory. Then seconds per Adam step (batch 1,
double backprop) for the reference, ``ours`` (auto) and the batched path forced.

Settings: 32x32 = CIFAR ResNet-18 (width 64, 2 classes) + the DCGAN generator (width 64);
224x224 = torchvision ResNet-18 (1000 classes) + BigGAN-deep-256's architecture. All weights
are random (seeded): speed does not depend on training, and no checkpoint is needed. The
received gradient is the defended gradient of one generated image; Soteria's received fc
gradient has 80 % of its columns zeroed at random (its estimate reads only which columns are
zero, so computing the real Soteria scores, minutes on a CPU at 224, would change nothing here).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above what was allocated before the
call; on the CPU the growth of the process's resident set (``/proc/self/statm``, sampled every
millisecond by a thread, after ``malloc_trim``) above its size before the call.

    python benchmarks/objective.py --size 32 --threads 2
    python benchmarks/objective.py --size 224 --quick      # CPU: narrow BigGAN, 10 candidates
    python benchmarks/objective.py --size 224 --quick --scorer batched  # the batched path
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ggl.attack.batched import default_policy
from ggl.attack.objective import (
    DISTANCES,
    REGULARISERS,
    Objective,
)
from ggl.config import DefenceStep
from ggl.defences import ClientContext, apply_defence, estimate_defence
from ggl.models import fc_weight_index
from ggl.settings import ObjectiveConfig

ESTIMATES: dict[str, tuple[DefenceStep, ...]] = {
    "none": (),
    "clipping (global)": (DefenceStep("clipping", {"bound": 4.0, "per_layer": False}),),
    "clipping (per layer)": (DefenceStep("clipping", {"bound": 0.5, "per_layer": True}),),
    "sparsification 90%": (DefenceStep("sparsification", {"rate": 90.0}),),
    # The client's mask is made in received_gradient (see the module docstring); the estimate
    # only reads which fc columns are zero.
    "soteria 80%": (DefenceStep("soteria", {"rate": 80.0}),),
    "clipping + noise": (DefenceStep("clipping", {"bound": 4.0, "per_layer": False}),
                         DefenceStep("noise", {"sigma": 0.1})),
}


# --- memory ------------------------------------------------------------------------------------

class PeakMemory:
    """Peak memory of a block above its start: CUDA allocator, or sampled CPU RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak = device, 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss() - self.base)
            time.sleep(0.001)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:  # give freed heap back to the OS so the baseline is honest
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except OSError:
                pass
            self.base = self.rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.rss() - self.base)


# --- the setting -----------------------------------------------------------------------------

@dataclass
class Setting:
    model: nn.Module
    generate: Callable[[torch.Tensor], torch.Tensor]
    latent_dim: int
    label: int
    description: str


def build_setting(size: int, device: torch.device, biggan_width: int) -> Setting:
    from ggl.generators import build_biggan, build_dcgan

    torch.manual_seed(0)
    if size == 32:
        from ggl.models import CifarResNet18

        model = CifarResNet18(num_classes=2, width=64)
        gen = build_dcgan(None, image_size=32, latent_dim=128, width=64, seed=0)
        label, text = 1, "CIFAR ResNet-18 width 64 (2 classes) + DCGAN width 64"
    else:
        from torchvision.models import resnet18

        model = resnet18(weights=None, num_classes=1000)
        gen = build_biggan(None, image_size=224, seed=0, stand_in_width=biggan_width)
        label = 207
        text = (f"torchvision ResNet-18 (1000 classes) + BigGAN-deep-256 architecture, "
                f"channel_width {biggan_width}{' (real: 128)' if biggan_width != 128 else ''}")
    model = model.to(device).eval()
    gen = gen.to(device)
    labels = torch.tensor([label], device=device)

    def generate(z: torch.Tensor) -> torch.Tensor:
        return gen(z, labels.expand(len(z)))

    return Setting(model, generate, gen.latent_dim, label, text + ", random weights")


def received_gradient(setting: Setting, name: str, device: torch.device) -> list[torch.Tensor]:
    model = setting.model
    params = list(model.parameters())
    with torch.no_grad():
        image = setting.generate(torch.randn(1, setting.latent_dim,
                                             generator=torch.Generator().manual_seed(7)
                                             ).to(device))
    label = torch.tensor([setting.label], device=device)
    loss = nn.functional.cross_entropy(model(image), label)
    grads = [g.detach() for g in torch.autograd.grad(loss, params)]
    fc = fc_weight_index(model)
    if name.startswith("soteria"):
        keep = torch.rand(grads[fc].shape[1], generator=torch.Generator().manual_seed(3)) >= 0.8
        grads[fc] = grads[fc] * keep.to(grads[fc]).view(1, -1)
        return grads
    ctx = ClientContext(model, image, label, fc, torch.Generator().manual_seed(0))
    return apply_defence(grads, ESTIMATES[name], ctx)


# --- the two ways ------------------------------------------------------------------------------

def reference_loop(setting: Setting, received: list[torch.Tensor], transform: Callable,
                   ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The authors' way: every latent alone, generator included."""
    model, params = setting.model, list(setting.model.parameters())
    distance, regulariser = DISTANCES["l2-mean"], REGULARISERS["kl"]

    def score(z: torch.Tensor) -> torch.Tensor:
        losses = []
        for zi in z:
            zi = zi[None]
            image = setting.generate(zi)
            with torch.enable_grad():
                out = model(image)
                target = torch.full((1,), setting.label, device=z.device)
                g = torch.autograd.grad(nn.functional.cross_entropy(out, target), params,
                                        create_graph=zi.requires_grad)
            loss = distance(transform([t[None] for t in g]), received)
            losses.append(loss + 0.1 * regulariser(zi))
        return torch.cat(losses)

    return score


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process)."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def score_generation(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> None:
    with torch.no_grad():  # as the ask/tell driver scores a CMA-ES generation or TuRBO batch
        fn(z)


def adam_step(fn: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor) -> None:
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.1)
    fn(z).sum().backward()
    opt.step()


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:8.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--size", type=int, choices=(32, 224), default=32)
    parser.add_argument("--repeats", type=int, default=0,
                        help="interleaved timed repeats (default 3; quick: 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--candidates", type=int, default=0, help="default 50 (quick: 10)")
    parser.add_argument("--quick", action="store_true",
                        help="1 repeat, 10 candidates, BigGAN stand-in channel_width 4")
    parser.add_argument("--biggan-width", type=int, default=0,
                        help="BigGAN channel_width (default: 128, the real one; quick: 4)")
    parser.add_argument("--estimates", default=",".join(ESTIMATES),
                        help="comma-separated subset of: "
                        + ", ".join(ESTIMATES).replace("%", "%%"))  # argparse formats %
    parser.add_argument("--adam-steps", type=int, default=3, help="0: skip the Adam figures")
    parser.add_argument("--scorer", default="auto", choices=("auto", "batched"),
                        help="ours: the policy's choice, or the batched path forced")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    repeats = args.repeats or (1 if args.quick else 3)
    n = args.candidates or (10 if args.quick else 50)
    biggan_width = args.biggan_width or (4 if args.quick else 128)
    setting = build_setting(args.size, device, biggan_width)
    names = [s.strip() for s in args.estimates.split(",") if s.strip()]
    dev_text = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"{platform.processor() or platform.machine()} CPU, "
                     f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores")
    print(f"# {args.size}x{args.size}: {setting.description}")
    print(f"# device: {dev_text}; torch {torch.__version__}; {n} candidates per generation; "
          f"{repeats} interleaved repeats; ours: scorer={args.scorer}, policy "
          f"{default_policy(device)}")
    print(f"# load average before: {os.getloadavg()[0]:.2f}")
    header = (f"{'estimate':22s} {'path':8s} {'ref eval/s':>10s} {'ours eval/s':>11s} "
              f"{'ratio':>6s} {'paired':>7s} {'cpu ratio':>9s} {'ref MiB':>8s} "
              f"{'ours MiB':>8s}")
    print(header)
    print("-" * len(header))
    z = torch.randn(n, setting.latent_dim, generator=torch.Generator().manual_seed(11)
                    ).to(device)
    fc = fc_weight_index(setting.model)
    for name in names:
        received = received_gradient(setting, name, device)
        estimate = estimate_defence(received, ESTIMATES[name], fc)
        ours = Objective(setting.model, setting.generate, received, setting.label, estimate,
                         ObjectiveConfig(distance="l2-mean"), scorer=args.scorer)
        ref = reference_loop(setting, received, estimate.apply)
        with torch.no_grad():  # warm-up; also builds (and checks) the batched scorer
            ours(z[:2])
            ref(z[:1])
        path = "batched" if ours._batched_state == "on" else "loop"
        times: dict[str, list[tuple[float, float]]] = {"ref": [], "ours": []}
        peaks = {"ref": 0, "ours": 0}
        for _ in range(repeats):
            for key, fn in (("ours", ours), ("ref", ref)):
                with PeakMemory(device) as mem:
                    times[key].append(timed(lambda fn=fn: score_generation(fn, z), device))
                peaks[key] = max(peaks[key], mem.peak)
        # Best of the repeats (the least disturbed by other jobs) for the rates; the ratio
        # also as the median of the per-repeat ratios (each pair ran back to back).
        wall = {k: min(t[0] for t in v) for k, v in times.items()}
        cpu = {k: min(t[1] for t in v) for k, v in times.items()}
        paired = statistics.median(r[0] / o[0] for r, o in zip(times["ref"], times["ours"],
                                                                strict=True))
        print(f"{name:22s} {path:8s} {n / wall['ref']:10.2f} {n / wall['ours']:11.2f} "
              f"{wall['ref'] / wall['ours']:5.2f}x {paired:6.2f}x "
              f"{cpu['ref'] / cpu['ours']:8.2f}x {mib(peaks['ref'])} {mib(peaks['ours'])}",
              flush=True)

    if args.adam_steps:
        print(f"\n# Adam step (batch 1, double backprop), seconds per step, best of "
              f"{args.adam_steps} per way per estimate, interleaved")
        header = (f"{'estimate':22s} {'reference':>9s} {'ours(auto)':>10s} "
                  f"{'batched':>8s} {'ref MiB':>8s} {'ours MiB':>8s} {'batched MiB':>11s}")
        print(header)
        print("-" * len(header))
        z0 = z[:1]
        for name in names:
            received = received_gradient(setting, name, device)
            estimate = estimate_defence(received, ESTIMATES[name], fc)
            ways = {
                "ref": reference_loop(setting, received, estimate.apply),
                "ours": Objective(setting.model, setting.generate, received, setting.label,
                                  estimate, ObjectiveConfig(), scorer="auto"),
                "batched": Objective(setting.model, setting.generate, received,
                                     setting.label, estimate, ObjectiveConfig(),
                                     scorer="batched"),
            }
            for fn in ways.values():
                adam_step(fn, z0)  # warm-up
            secs: dict[str, list[float]] = {k: [] for k in ways}
            peaks = dict.fromkeys(ways, 0)
            for _ in range(args.adam_steps):
                for key, fn in ways.items():
                    with PeakMemory(device) as mem:
                        secs[key].append(timed(lambda fn=fn: adam_step(fn, z0), device)[0])
                    peaks[key] = max(peaks[key], mem.peak)
            best = {k: min(v) for k, v in secs.items()}
            print(f"{name:22s} {best['ref']:9.3f} {best['ours']:10.3f} {best['batched']:8.3f} "
                  f"{mib(peaks['ref'])} {mib(peaks['ours'])} {mib(peaks['batched']):>11s}",
                  flush=True)
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
