"""Benchmark: how much GGL leaks, without a defence, on the model's normalisation and width.

DP-SGD needs the GroupNorm variant of the model (``model.norm: group``); the default attacks
the BatchNorm one. This script asks what that choice alone does to the attack: for each
(width, norm) it builds the client updates of the params' first private images (no defence,
the gradient stage's code), runs the params' GGL attack on them at the params' compute budget
with the attack stage's seeds, and prints the mean PSNR ([-1, 1] convention, peak 1) next to
the label-only control (the public class mean, which needs no gradient). It reads the split and
the generator of a finished run of the params, and the private images (it is analysis, not an
attack stage).

    python benchmarks/norm_leakage.py --params workflow/experiments/digits-privacy-utility.yaml \
        --variants 8:group,16:group,8:batch,16:batch
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from ggl.attack import ATTACKS
from ggl.attack.run import evaluation_cost, prepare_attacker, run_attack
from ggl.client import defended_gradients
from ggl.config import load_params
from ggl.data import load_part
from ggl.generators import build_generator
from ggl.metrics import psnr_pm1
from ggl.runtime import derive_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--attack", default="ggl-adam", help="a GGL attack of the params")
    parser.add_argument("--variants", default="8:group,16:group,8:batch,16:batch",
                        help="comma-separated width:norm")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    # the dp-sgd defences need GroupNorm; only the undefended update is used here
    params = dataclasses.replace(params, defences={"none": ()})
    device = torch.device("cpu")
    run = f"results/{params.experiment}"
    generator = build_generator(params, f"{run}/generator/generator.pt", device)
    images, labels = load_part(f"data/{params.experiment}/private.pt")
    public = load_part(f"data/{params.experiment}/public.pt")
    cfg = params.attacks[args.attack]
    print(f"{args.attack} at compute {params.compute_budget}, no defence, "
          f"{len(params.private_images)} images; PSNR in dB ([-1, 1], peak 1)")
    print(f"{'width':>5} {'norm':>6} {'attack':>7} {'class mean':>10} {'above':>6} {'s':>5}")
    for variant in args.variants.split(","):
        width, norm = variant.split(":")
        model = dataclasses.replace(params.model, width=int(width), norm=norm)
        varied = dataclasses.replace(params, model=model)
        attack, control, start = [], [], time.perf_counter()
        for image, received, truth in defended_gradients(varied, "none", images, labels):
            attacker = prepare_attacker(received, model, generator, device, params.scorer,
                                        public)
            seed = derive_seed(params.seed, "attack", args.attack, image)
            best, _, _ = run_attack(ATTACKS.get(cfg.method), attacker, cfg, seed,
                                    evaluation_cost(attacker, cfg), params.compute_budget)
            mean = ATTACKS.get("label-only")(attacker, params.attacks["label-only"], seed)
            private = images[truth["private_indices"]]
            attack += psnr_pm1(best.image, private)
            control += psnr_pm1(mean.image, private)
        a, c = statistics.mean(attack), statistics.mean(control)
        print(f"{width:>5} {norm:>6} {a:7.2f} {c:10.2f} {a - c:+6.2f} "
              f"{time.perf_counter() - start:5.0f}")


if __name__ == "__main__":
    main()
