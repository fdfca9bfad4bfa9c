"""Benchmark: the paper's settings on one GPU, and what the paper's experiments would cost.

Measures, in one run sized to fit 10 minutes on one modern GPU (not yet run on one), and
prints as one table:

* seconds per objective evaluation (one candidate latent scored, from a CMA-ES generation of 50)
  at 32x32 and 224x224, for the one-at-a-time loop (``scorer="loop"``) and the batched scorer
  (``scorer="batched"``; "n/a" with the reason where it raises ``Unsupported``), for the
  undefended gradient and the paper's defence estimates;
* seconds per Adam step (one update of one latent of batch 1, double backprop through the
  gradient) at both sizes, loop and batched;
* the WGAN-GP training's seconds per critic step and per generator step (``ggl.gan._epoch``, the
  paper's recipe, on random images of CelebA's shape), extrapolated to one epoch of CelebA's
  162,770 public images;
* the peak memory of each row above its start (CUDA: ``torch.cuda.max_memory_allocated``; CPU:
  resident-set growth), as benchmarks/objective.py measures it.

Then a second table: projected device hours of each paper experiment file, from those figures.

The settings are benchmarks/objective.py's (``build_setting``): 32x32 = CIFAR ResNet-18 width 64
+ DCGAN generator width 64; 224x224 = torchvision ResNet-18 + the BigGAN-deep-256 architecture.
All weights are random (seeded): speed does not depend on training.

    python benchmarks/gpu.py --device cuda                 # the real sizes (benchmarks/gpu.sh)
    python benchmarks/gpu.py --device cpu --quick          # the smallest meaningful run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import objective as bench  # noqa: E402  (benchmarks/objective.py: settings, timing, memory)

from ggl.attack.batched import Unsupported  # noqa: E402
from ggl.attack.objective import Objective  # noqa: E402
from ggl.defences import estimate_defence  # noqa: E402
from ggl.gan import PAPER_RECIPE, _epoch, _State  # noqa: E402
from ggl.models import fc_weight_index  # noqa: E402
from ggl.settings import ObjectiveConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("celeba32", "imagenet224", "celeba32-table1", "celeba32-soteria-sweep")
SCORERS = ("loop", "batched")
SIZES = (32, 224)
CELEBA_PUBLIC = 162_770  # CelebA's train split: the paper's GAN training set
# Estimates timed per evaluation (keys of objective.py's ESTIMATES). The quick run drops
# sparsification, the slowest, to stay under a minute on 2 CPU cores.
FULL_ESTIMATES = ("none", "clipping (global)", "sparsification 90%", "soteria 80%")
QUICK_ESTIMATES = ("none", "clipping (global)", "soteria 80%")
# Unit of an attack method's budget: a scored evaluation or a differentiable (Adam-like) step.
# The pixel baselines optimise pixels, not latents: the GGL Adam step is an approximation.
METHOD_UNIT = {"ggl-adam": "adam", "dlg": "adam", "idlg": "adam", "ig": "adam", "gi": "adam",
               "ggl-cmaes": "evaluation", "ggl-bo": "evaluation", "prior": "evaluation",
               "label-only": "free"}
GAN_TEXT = ("WGAN-GP as ggl.gan._epoch trains it, the paper's recipe (DCGAN generator width 64, "
            "critic 128/256/512, batch 64, gradient penalty 10, Adam 1e-4; an epoch has one "
            "generator step per 5 critic steps), on random images of CelebA's shape "
            "(3x32x32); steps timed between the optimisers' updates, random weights")
CONVENTIONS = ("seconds per evaluation = one candidate latent scored (a generation timed, "
               "divided by its candidates); Adam step = one update of one latent of batch 1 "
               "(double backprop); best of the repeats; weights random (seeded): speed does "
               "not depend on training")


@dataclass(frozen=True)
class RunSize:
    """How much each measurement runs: the real sizes, or --quick's smallest meaningful ones."""

    candidates: int
    repeats: int
    biggan_width: int
    estimates: tuple[str, ...]
    gan_steps: int  # measured critic steps (each followed by a generator step)
    gan_warmup: int

    @classmethod
    def of(cls, quick: bool) -> RunSize:
        if quick:
            return cls(5, 1, 4, QUICK_ESTIMATES, gan_steps=2, gan_warmup=1)
        return cls(50, 3, 128, FULL_ESTIMATES, gan_steps=20, gan_warmup=3)


@dataclass
class Row:
    """One line of the table: ``seconds`` is None where the way could not run (``note`` says
    why); ``peak_bytes`` is the peak above the block's start."""

    measure: str
    size: int
    way: str
    seconds: float | None
    peak_bytes: int | None
    note: str = ""


# --- timing --------------------------------------------------------------------------------------

def interleaved(calls: dict[str, Callable[[], object]], device: torch.device,
                repeats: int) -> dict[str, tuple[float, int]]:
    """Best wall seconds and peak bytes of each call, repeats interleaved so that a burst of
    load from another process slows every way alike."""
    secs: dict[str, list[float]] = {k: [] for k in calls}
    peaks = dict.fromkeys(calls, 0)
    for _ in range(repeats):
        for key, fn in calls.items():
            with bench.PeakMemory(device) as mem:
                secs[key].append(bench.timed(fn, device)[0])
            peaks[key] = max(peaks[key], mem.peak)
    return {k: (min(v), peaks[k]) for k, v in secs.items()}


def objectives(setting: bench.Setting, name: str, device: torch.device,
               ) -> Callable[[str], Objective]:
    """The attacks' objective (the paper's D1 + 0.1 R1, adaptive) against estimate ``name``,
    for a given scorer; the received gradient is made once for both scorers."""
    received = bench.received_gradient(setting, name, device)
    estimate = estimate_defence(received, bench.ESTIMATES[name], fc_weight_index(setting.model))
    return lambda scorer: Objective(setting.model, setting.generate, received, setting.label,
                                    estimate, ObjectiveConfig(), scorer=scorer)


def warmed(build: Callable[[str], Objective], warm: Callable[[Objective], object],
           ) -> tuple[dict[str, Objective], dict[str, str]]:
    """Each scorer's objective after one warm-up call (which builds and checks the batched
    scorer), or why it cannot run."""
    ways, reasons = {}, {}
    for scorer in SCORERS:
        fn = build(scorer)
        try:
            warm(fn)
        except Unsupported as err:  # NotFaster is one
            reasons[scorer] = f"{type(err).__name__}: {err}"
            continue
        ways[scorer] = fn
    return ways, reasons


def rows_of(measure: str, size: int, best: dict[str, tuple[float, int]],
            reasons: dict[str, str], per: int = 1) -> list[Row]:
    return [Row(measure, size, s, best[s][0] / per, best[s][1]) if s in best
            else Row(measure, size, s, None, None, reasons[s]) for s in SCORERS]


def measure_evaluations(setting: bench.Setting, size: int, device: torch.device,
                        run: RunSize) -> list[Row]:
    """Seconds per evaluation: one generation of ``run.candidates`` scored without a graph, as
    the ask/tell driver scores a CMA-ES generation, divided by the candidates."""
    z = torch.randn(run.candidates, setting.latent_dim,
                    generator=torch.Generator().manual_seed(11)).to(device)
    rows = []
    for name in run.estimates:
        ways, reasons = warmed(objectives(setting, name, device),
                               lambda fn: bench.score_generation(fn, z[:1]))
        calls = {k: (lambda fn=fn: bench.score_generation(fn, z)) for k, fn in ways.items()}
        best = interleaved(calls, device, run.repeats)
        rows += rows_of(f"evaluation, {name}", size, best, reasons, per=run.candidates)
    return rows


def measure_adam(setting: bench.Setting, size: int, device: torch.device,
                 run: RunSize) -> list[Row]:
    """Seconds per Adam step on the undefended gradient (batch 1, double backprop)."""
    z0 = torch.randn(1, setting.latent_dim, generator=torch.Generator().manual_seed(13)
                     ).to(device)
    ways, reasons = warmed(objectives(setting, "none", device),
                           lambda fn: bench.adam_step(fn, z0))
    calls = {k: (lambda fn=fn: bench.adam_step(fn, z0)) for k, fn in ways.items()}
    return rows_of("Adam step, none", size, interleaved(calls, device, run.repeats), reasons)


# --- the GAN -----------------------------------------------------------------------------------

def gan_steps_per_epoch(public: int, batch_size: int, critic_steps: int) -> tuple[int, float]:
    """Critic and (mean) generator steps of one epoch: ``_epoch`` takes full batches only."""
    critic = max(1, public // batch_size)
    return critic, critic / critic_steps


def step_intervals(start: float, marks: list[tuple[str, float]]) -> dict[str, list[float]]:
    """Seconds of each step from the optimisers' step-end marks: a step runs from the previous
    mark (or the start) to its own."""
    out: dict[str, list[float]] = {"critic": [], "generator": []}
    previous = start
    for kind, t in marks:
        out[kind].append(t - previous)
        previous = t
    return out


def measure_gan(device: torch.device, run: RunSize) -> tuple[list[Row], dict[str, Any]]:
    """Seconds per critic and per generator step of the real training loop (``ggl.gan._epoch``)
    at the paper's recipe on random images, timed between the optimisers' steps; one epoch
    of CelebA extrapolated from their medians."""
    # One generator step after every critic step, so that a short run times both; each step's
    # code is the paper recipe's (critic_steps only sets how often a generator step comes).
    cfg = replace(PAPER_RECIPE, critic_steps=1)
    state = _State(cfg, device)
    marks: list[tuple[str, float]] = []

    def mark(kind: str) -> Callable[..., None]:
        def hook(*_: object) -> None:
            bench.sync(device)
            marks.append((kind, time.perf_counter()))
        return hook

    state.opt_c.register_step_post_hook(mark("critic"))
    state.opt_g.register_step_post_hook(mark("generator"))
    n = cfg.batch_size * (run.gan_warmup + run.gan_steps)
    images = (torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
              ).to(device)
    bar = tqdm(disable=True)
    _epoch(state, images[: cfg.batch_size * run.gan_warmup], None, cfg, device, bar)
    marks.clear()
    with bench.PeakMemory(device) as mem:
        bench.sync(device)
        start = time.perf_counter()
        _epoch(state, images[cfg.batch_size * run.gan_warmup:], None, cfg, device, bar)
    steps = step_intervals(start, marks)
    critic, generator = (statistics.median(steps[k]) for k in ("critic", "generator"))
    n_critic, n_gen = gan_steps_per_epoch(CELEBA_PUBLIC, PAPER_RECIPE.batch_size,
                                          PAPER_RECIPE.critic_steps)
    epoch = n_critic * critic + n_gen * generator
    rows = [Row(f"GAN critic step (batch {cfg.batch_size})", 32, "train", critic, mem.peak,
                f"median of {len(steps['critic'])} steps"),
            Row(f"GAN generator step (batch {cfg.batch_size})", 32, "train", generator,
                mem.peak, f"median of {len(steps['generator'])} steps"),
            Row(f"GAN epoch (CelebA, {CELEBA_PUBLIC:,} images)", 32, "train", epoch, mem.peak,
                f"extrapolated: {n_critic} critic + {n_gen:g} generator steps")]
    figures = {"critic_step_seconds": critic, "generator_step_seconds": generator,
               "epoch_seconds": epoch, "critic_steps_per_epoch": n_critic,
               "generator_steps_per_epoch": n_gen, "critic_steps_measured": len(steps["critic"]),
               "generator_steps_measured": len(steps["generator"]), "peak_bytes": mem.peak,
               "extrapolated": True, "recipe": asdict(PAPER_RECIPE)}
    return rows, figures


# --- projection --------------------------------------------------------------------------------

def estimate_for(steps: list[dict[str, Any]], measured: set[str]) -> str:
    """The measured estimate that stands for a defence: noise has no estimate (the paper does
    not model it), Soteria at any rate reads which fc columns are zero; else the undefended."""
    kinds = {s["kind"]: s for s in steps}
    if "sparsification" in kinds:
        name = "sparsification 90%"
    elif "soteria" in kinds:
        name = "soteria 80%"
    elif "clipping" in kinds:
        name = "clipping (per layer)" if kinds["clipping"].get("per_layer") else \
            "clipping (global)"
    else:
        name = "none"
    return name if name in measured else "none"


def unit_seconds(rows: list[Row], unit: str, size: int, estimate: str) -> float:
    """The faster of loop and batched for the row (what the better scorer setting gets); Adam
    was timed on the undefended gradient only, and stands for every defence."""
    if unit == "free":
        return 0.0
    measure = f"evaluation, {estimate}" if unit == "evaluation" else "Adam step, none"
    times = [r.seconds for r in rows if r.measure == measure and r.size == size
             and r.seconds is not None]
    return min(times)


def attack_unit(attacks: dict[str, Any], name: str) -> str:
    """An attack's cost unit; a noise-gradient control costs as the attack its ``of`` names."""
    spec = attacks[name]
    method = attacks[spec["of"]]["method"] if spec["method"] == "noise-gradient" else \
        spec["method"]
    if method not in METHOD_UNIT:
        raise SystemExit(f"benchmarks/gpu.py: attack method {method!r} ({name}) has no cost "
                         f"unit here: add it to METHOD_UNIT")
    return METHOD_UNIT[method]


def load_experiments() -> dict[str, dict[str, Any]]:
    """The paper's experiment files; every attack's unit is checked before anything is timed."""
    out = {}
    for name in EXPERIMENTS:
        raw = yaml.safe_load((REPO / "workflow" / "experiments" / f"{name}.yaml").read_text())
        if raw.get("compute_budget"):
            raise SystemExit(f"{name}: compute_budget is set (budgets in model passes): "
                             "not projected here")
        for attack in raw["attacks"]:
            attack_unit(raw["attacks"], attack)
        out[name] = raw
    return out


def project(raw: dict[str, Any], rows: list[Row], gan: dict[str, Any]) -> dict[str, Any]:
    """Device hours of one experiment: per attack, images x trials x budget x the unit's
    seconds, summed over defences; plus the GAN's training when it trains a DCGAN."""
    size = int(raw["data"]["image_size"])
    images = len(raw["private_images"])
    measured = {r.measure.removeprefix("evaluation, ") for r in rows
                if r.measure.startswith("evaluation, ") and r.size == size}
    estimates = [estimate_for(steps, measured) for steps in raw["defences"].values()]
    attacks = {}
    for name, spec in raw["attacks"].items():
        unit = attack_unit(raw["attacks"], name)
        per_defence = sum(unit_seconds(rows, unit, size, e) for e in estimates)
        attacks[name] = images * spec["trials"] * spec["budget"] * per_defence / 3600
    gan_hours = 0.0
    if raw["generator"]["kind"] == "dcgan":
        train = raw["generator"]["train"]
        n_critic, n_gen = gan_steps_per_epoch(int(raw["data"]["public_size"]),
                                              train["batch_size"], train["critic_steps"])
        gan_hours = train["epochs"] * (n_critic * gan["critic_step_seconds"]
                                       + n_gen * gan["generator_step_seconds"]) / 3600
    attack_hours = sum(attacks.values())
    return {"size": size, "images": images, "defences": len(estimates),
            "defence_estimates": dict(zip(raw["defences"], estimates, strict=True)),
            "attack_hours": attacks, "attacks_total_hours": attack_hours,
            "gan_hours": gan_hours, "total_hours": attack_hours + gan_hours}


# --- output --------------------------------------------------------------------------------------

def device_text(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU ({os.cpu_count()} cores)"


def fmt_seconds(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def fmt_mib(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:.0f}"


def print_table(rows: list[Row]) -> None:
    header = (f"{'measure':44s} {'size':>7s} {'way':8s} {'seconds':>9s} {'peak MiB':>8s}  note")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.measure:44s} {f'{r.size}x{r.size}':>7s} {r.way:8s} "
              f"{fmt_seconds(r.seconds):>9s} {fmt_mib(r.peak_bytes):>8s}  {r.note}".rstrip())


def print_projection(projection: dict[str, dict[str, Any]], device: torch.device) -> None:
    what = "GPU hours" if device.type == "cuda" else "hours on this CPU (not GPU hours)"
    print(f"\n# Projected {what} per paper experiment file (workflow/experiments/), from the "
          "figures above")
    header = (f"{'experiment':24s} {'size':>7s} {'images':>6s} {'defences':>8s} "
              f"{'attacks h':>10s} {'GAN h':>8s} {'total h':>9s}")
    print(header)
    print("-" * len(header))
    for name, p in projection.items():
        size = f"{p['size']}x{p['size']}"
        print(f"{name:24s} {size:>7s} {p['images']:6d} {p['defences']:8d} "
              f"{p['attacks_total_hours']:10.2f} {p['gan_hours']:8.2f} {p['total_hours']:9.2f}")
    print("# attacks: images x trials x budget x seconds per unit, summed over the defences; "
          "unit = the faster of loop/batched (params' scorer: loop or batched picks it):")
    print("#   evaluation for ggl-cmaes, ggl-bo (TuRBO's model fitting not counted) and prior; "
          "Adam step for ggl-adam and the pixel baselines dlg, idlg, ig, gi (an approximation:")
    print("#   they optimise pixels, not latents; L-BFGS may evaluate more than once an "
          "iteration); noise-gradient as the attack it copies; label-only free.")
    print("# each defence costs as its measured estimate (noise: none; Soteria at any rate: "
          "soteria 80%; one not measured: none); Adam steps were timed undefended only.")
    print("# GAN h: epochs x the extrapolated epoch, DCGAN experiments only; celeba32-table1 "
          "and celeba32-soteria-sweep can reuse celeba32's generator (then 0).")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Atomically: a temporary file in the same folder, then renamed over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would otherwise stick to the result
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- main --------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quick", action="store_true",
                        help="1 repeat, 5 candidates, BigGAN channel_width 4, 2 GAN steps, "
                        "sparsification left out")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's own)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    return parser.parse_args(argv)


def progress(text: str) -> None:
    """Where a long run is, on stderr: the table on stdout stays one table."""
    print(f"# ... {text}", file=sys.stderr, flush=True)


def resolve(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py: --device cuda but torch sees no CUDA device")
    return torch.device(name)


def measure(device: torch.device, run: RunSize) -> tuple[list[Row], dict[str, Any],
                                                         dict[str, str]]:
    """Every row of the table, the GAN's figures, and each size's setting in words."""
    rows, adam, described = [], [], {}
    for size in SIZES:
        progress(f"{size}x{size}: building the setting")
        setting = bench.build_setting(size, device, run.biggan_width)
        described[f"{size}x{size}"] = setting.description
        progress(f"{size}x{size}: evaluations ({', '.join(run.estimates)})")
        rows += measure_evaluations(setting, size, device, run)
        progress(f"{size}x{size}: Adam steps")
        adam += measure_adam(setting, size, device, run)
        del setting
        if device.type == "cuda":
            torch.cuda.empty_cache()
    progress("GAN steps")
    gan_rows, gan = measure_gan(device, run)
    described["GAN"] = GAN_TEXT
    return rows + adam + gan_rows, gan, described


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, run = resolve(args.device), RunSize.of(args.quick)
    experiments = load_experiments()  # fails before any timing if a file has a new method
    print(f"# device: {device_text(device)}; torch {torch.__version__}; "
          f"{torch.get_num_threads()} CPU threads; {'quick' if args.quick else 'full'} run "
          f"({run.candidates} candidates, {run.repeats} repeat(s)); units: {CONVENTIONS}",
          flush=True)
    if device.type != "cuda" and not args.quick:
        print("# WARNING: this run is meant for a GPU; on a CPU the full sizes may take hours "
              "(--quick: under a minute)", flush=True)
    wall = time.perf_counter()
    rows, gan, described = measure(device, run)
    for size, text in described.items():
        print(f"# {size}: {text}")
    print_table(rows)
    projection = {name: project(raw, rows, gan) for name, raw in experiments.items()}
    print_projection(projection, device)
    print(f"# measured in {time.perf_counter() - wall:.0f} s")
    if args.json:
        write_json(args.json, {
            "device": device_text(device), "device_type": device.type,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "quick": args.quick, "run": asdict(run), "settings": described,
            "conventions": CONVENTIONS, "rows": [asdict(r) for r in rows], "gan": gan,
            "projection": projection})


if __name__ == "__main__":
    main()
