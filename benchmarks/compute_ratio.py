"""Benchmark: the FLOP-derived cost of a differentiable evaluation against wall time.

On a CIFAR ResNet-18 of the given width (random, seeded) with the default's DCGAN generator
(stand-in weights, width 16, latent 128, conditional), at batch 1, one thread:

* ``scored``: one GGL objective evaluation as CMA-ES and TuRBO make it (generator, trial
  gradient, distance, no graph kept);
* ``adam``: one Adam step as GGL-Adam makes it (the same with ``create_graph=True``, the
  backward through it into the latent, the optimiser's update).

Prints R (``ggl.attack.compute``, FLOPs) and the ratio of median times over ``--repeats``
after ``--warmup`` calls of each, interleaved so a busy machine slows both alike.

    python benchmarks/compute_ratio.py --width 4
    python benchmarks/compute_ratio.py --width 16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ggl.attack.compute import cost_per_evaluation
from ggl.attack.objective import DISTANCES, Objective
from ggl.config import ModelConfig
from ggl.defences import Estimate
from ggl.generators import build_dcgan
from ggl.models import build_model
from ggl.settings import ObjectiveConfig

LABEL = 3


def setting(width: int) -> tuple[torch.nn.Module, Objective]:
    """The model and the GGL objective (loop scorer) on a random received gradient."""
    model = build_model(ModelConfig("resnet18-cifar", width, 0, 10), torch.device("cpu"))
    for p in model.parameters():
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    received = [torch.randn(p.shape, generator=gen) * 1e-2 for p in model.parameters()]
    generator = build_dcgan(None, latent_dim=128, width=16, conditional=True, num_classes=10)
    labels = torch.tensor([LABEL])
    objective = Objective(model, lambda z: generator(z, labels.expand(len(z))), received, LABEL,
                          Estimate(), ObjectiveConfig(reg_weight=0.001), scorer="loop")
    return model, objective


def time_ratio(objective: Objective, repeats: int, warmup: int) -> tuple[float, float, float]:
    """Median seconds of a scored evaluation and of an Adam step, and their ratio."""
    z = torch.randn(1, 128, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=1e-3)

    def scored() -> None:
        with torch.no_grad():
            objective(z)

    def adam() -> None:
        opt.zero_grad(set_to_none=True)
        objective(z).sum().backward()
        opt.step()

    times: dict[str, list[float]] = {"scored": [], "adam": []}
    for i in range(warmup + repeats):
        for name, fn in (("scored", scored), ("adam", adam)):
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    s, a = statistics.median(times["scored"]), statistics.median(times["adam"])
    return s, a, a / s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, objective = setting(args.width)
    received = objective.received
    r = cost_per_evaluation(model, (3, 32, 32), LABEL,
                            lambda g: DISTANCES["l2-mean"](g, received), True)
    s, a, ratio = time_ratio(objective, args.repeats, args.warmup)
    print(f"width {args.width}: R (FLOPs) = {r:.3f}; scored {s * 1e3:.2f} ms, Adam step "
          f"{a * 1e3:.2f} ms, time ratio {ratio:.3f} (median of {args.repeats})")


if __name__ == "__main__":
    main()
