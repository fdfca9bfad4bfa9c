"""Updates side by side against one at a time (``ggl.attack.lockstep``): the attack functions the
attack stage runs, on N synthetic updates of params.yaml's model (the received gradients of
random images, defended by params' clipping estimate), alternately in one process. Prints
seconds per update, best of the repeats, the ratio, and how far the reconstructions land apart.

    python benchmarks/image_batch.py                       # 8 updates, 1 thread, 20 evaluations
    python benchmarks/image_batch.py --methods ig dlg --updates 16 --budget 40
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from ggl.attack import ATTACKS, LOCKSTEP
from ggl.attack.labels import infer_label
from ggl.attack.objective import trial_gradients
from ggl.attack.run import Attacker, best_of_lockstep_trials, one_by_one
from ggl.config import DefenceStep, Params, load_params
from ggl.generators import build_dcgan
from ggl.models import build_model, fc_weight_index


def attackers(params: Params, updates: int) -> list[Attacker]:
    model = build_model(params.model)
    model.requires_grad_(True)
    fc, size = fc_weight_index(model), params.data.image_size
    gen = torch.Generator().manual_seed(0)
    steps = (DefenceStep("clipping", {"bound": 0.5, "per_layer": False}),)
    generator = build_dcgan(None, image_size=size, latent_dim=params.generator.latent_dim,
                            width=params.generator.width)  # a random-weight stand-in
    out = []
    for i in range(updates):
        image = torch.rand(1, 3, size, size, generator=gen) * 2 - 1
        received = [g[0].detach() for g in trial_gradients(model, image, i % 10)]
        out.append(Attacker(received, steps, model, fc, infer_label(received, fc),
                            (3, size, size), generator, torch.device("cpu")))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--methods", nargs="+", default=["ggl-adam", "ig", "dlg"])
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--budget", type=int, default=20, help="evaluations per update")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    targets = attackers(params, args.updates)
    seeds = list(range(args.updates))
    print(f"# {params.model.arch} width {params.model.width}, {params.data.image_size}px, "
          f"{args.updates} updates, {args.budget} evaluations each, {args.threads} torch "
          f"threads, best of {args.repeats}; seconds per update")
    print(f"{'method':15s} {'one at a time':>14s} {'side by side':>13s} {'ratio':>6s} "
          f"{'largest pixel difference':>25s}")
    for method in args.methods:
        cfg = params.attacks[method]
        cfg = replace(cfg, budget=args.budget, trials=1)
        ways = {"alone": one_by_one(ATTACKS.get(cfg.method)), "together": LOCKSTEP[cfg.method]}
        best: dict[str, float] = {}
        images: dict[str, torch.Tensor] = {}
        for _ in range(args.repeats):
            for name, fn in ways.items():
                start = time.perf_counter()
                outcomes = best_of_lockstep_trials(fn, targets, cfg, seeds)
                seconds = (time.perf_counter() - start) / args.updates
                best[name] = min(best.get(name, seconds), seconds)
                images[name] = torch.stack([trial.image for trial, _ in outcomes])
        gap = float((images["alone"] - images["together"]).abs().max())
        print(f"{method:15s} {best['alone']:14.3f} {best['together']:13.3f} "
              f"{best['alone'] / best['together']:6.2f} {gap:25.1e}")


if __name__ == "__main__":
    main()
