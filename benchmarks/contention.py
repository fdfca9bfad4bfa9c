"""Benchmark: a stage's speed alone and beside one competing single-threaded process.

Two workloads of the embedded default (params.yaml), each in a fresh process so that the
threading settings apply before torch starts:

* ``gan``: the GAN stage's WGAN-GP training (``ggl.gan._epoch`` on random images of the
  default's shape, its recipe and width);
* ``attack``: an attack job's evaluation loop (one CMA-ES generation of the default's
  population scored by ``ggl.attack.objective.Objective``, the default's model and a stand-in
  generator of its width).

Each runs on its job's torch threads (``StageKind.job_threads``: what Snakemake and DVC give it
under params.yaml) unless ``--threads`` says otherwise, alone, then beside a competitor this
script starts (one process, one torch thread, multiplying matrices without pause), for each
OpenMP wait policy asked for; it prints the seconds per step of both, and their ratio.
``default`` leaves the environment as it is (what `ggl` did before it set a policy);
``passive`` sets ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep while they wait for each other
instead of spinning); ``ggl`` runs with what the `ggl` command sets (``ggl.threads.THREAD_ENV``).

    python benchmarks/contention.py                       # both workloads, the default's threads
    python benchmarks/contention.py --workloads gan --threads gan=2 --policies default,passive
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = {"gan": "train-gan", "attack": "attack"}


def job_threads() -> dict[str, int]:
    from ggl.config import load_params
    from ggl.pipeline.registry import kind

    params = load_params(REPO / "params.yaml")
    return {workload: kind(name).job_threads(params) for workload, name in STAGES.items()}


THREADS: dict[str, int] = {}
COMPETITOR = ("import torch\ntorch.set_num_threads(1)\na = torch.randn(384, 384)\n"
              "while True:\n    a = (a @ a).clamp_(-1, 1)\n")


def policy_env(policy: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif policy == "ggl":
        from ggl.threads import THREAD_ENV

        env.update(THREAD_ENV)
    elif "=" in policy:  # NAME=VALUE[+NAME=VALUE...], e.g. GOMP_SPINCOUNT=10000
        env.update(item.split("=", 1) for item in policy.split("+"))
    return env


# --- the workloads, run inside a worker process --------------------------------------------------

def gan_step():
    """One call = one pass over 4 batches of the default's GAN training."""
    import torch
    from tqdm import tqdm

    from ggl.config import load_params
    from ggl.gan import _epoch, _State, gan_config

    params = load_params(REPO / "params.yaml")
    cfg = gan_config(params)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(4 * cfg.batch_size, 3, 32, 32, generator=gen) * 2 - 1
    labels = (torch.randint(0, cfg.num_classes, (len(images),), generator=gen)
              if cfg.num_classes else None)
    state, cpu = _State(cfg, torch.device("cpu")), torch.device("cpu")
    bar = tqdm(disable=True)
    return lambda: _epoch(state, images, labels, cfg, cpu, bar)


def attack_step():
    """One call = one CMA-ES generation of the default scored by the attack's objective."""
    import torch

    from ggl.attack.objective import Objective
    from ggl.config import load_params
    from ggl.defences import Estimate
    from ggl.generators import build_dcgan
    from ggl.models import build_model

    params = load_params(REPO / "params.yaml")
    cfg = params.attacks["ggl-cmaes"]
    model = build_model(params.model)
    g = params.generator
    classes = params.data.num_classes if g.conditional else 0
    generator = build_dcgan(None, latent_dim=g.latent_dim, width=g.width,
                            conditional=g.conditional, num_classes=classes)
    label = torch.tensor([3])
    gen = torch.Generator().manual_seed(0)
    received = [torch.randn(p.shape, generator=gen) * 1e-2 for p in model.parameters()]
    objective = Objective(model, lambda z: generator(z, label.expand(len(z))), received, 3,
                          Estimate(), cfg.objective, scorer=params.scorer)
    z = torch.randn(cfg.optimiser.popsize, g.latent_dim, generator=gen)

    def step() -> None:
        with torch.no_grad():
            objective(z)

    return step


def worker(workload: str, seconds: float) -> None:
    import torch

    torch.set_num_threads(THREADS[workload])
    step = {"gan": gan_step, "attack": attack_step}[workload]()
    for _ in range(2):  # warm-up
        step()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    print(json.dumps({"median": times[len(times) // 2], "steps": len(times)}))


# --- the driver ----------------------------------------------------------------------------------

def measure(workload: str, policy: str, seconds: float) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--worker", workload, "--seconds",
                          str(seconds), "--threads", f"{workload}={THREADS[workload]}"],
                         env=policy_env(policy), capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="gan,attack")
    parser.add_argument("--policies", default="ggl",
                        help="default | passive | ggl | NAME=VALUE[+NAME=VALUE], comma-separated")
    parser.add_argument("--seconds", type=float, default=12.0, help="measured per run")
    parser.add_argument("--threads", default="",
                        help="torch threads per workload, e.g. gan=2 (default: the job's)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    chosen = {k: int(v) for k, v in (item.split("=") for item in args.threads.split(",") if item)}
    THREADS.update(chosen if args.worker else {**job_threads(), **chosen})  # a worker is told
    if args.worker:
        worker(args.worker, args.seconds)
        return
    print(f"# {os.cpu_count()} cores; competitor: one process, 1 torch thread, matrix products; "
          f"median seconds per step over {args.seconds:g} s after 2 warm-up steps")
    print(f"{'workload':>8} {'threads':>7} {'policy':>8} {'alone s':>9} {'beside s':>9} "
          f"{'ratio':>6}")
    for workload in args.workloads.split(","):
        for policy in args.policies.split(","):
            alone = measure(workload, policy, args.seconds)
            competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR])
            try:
                time.sleep(1.0)  # let it start its loop
                beside = measure(workload, policy, args.seconds)
            finally:
                competitor.kill()
                competitor.wait()
            print(f"{workload:>8} {THREADS[workload]:>7} {policy:>8} {alone['median']:9.4f} "
                  f"{beside['median']:9.4f} {beside['median'] / alone['median']:6.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
