"""The attack stage: invert every received gradient of one (defence, attack) pair.

The attacker's inputs are exactly the received gradient file, the federated model spec it
names and the generator; it infers the label analytically. Nothing here takes or reads a
private image: ``Attacker`` has no field for one.

``ATTACKS`` maps a params ``method`` to a function ``(attacker, cfg, seed) -> Trial``; the
GGL optimisers and the baselines are entries of the same table and share the trials logic.
"""

from __future__ import annotations

import csv
import io as textio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ggl import io
from ggl.attack.labels import infer_label
from ggl.attack.objective import Objective, ObjectiveConfig
from ggl.client import load_received, steps_from_record
from ggl.config import DefenceStep, ModelConfig
from ggl.defences import Estimate, Gradient, estimate_defence
from ggl.models import build_model
from ggl.registry import Registry
from ggl.runtime import derive_seed


@dataclass
class Attacker:
    """Everything the curious server has for one client update."""

    received: Gradient
    steps: tuple[DefenceStep, ...]  # the defence mechanism the protocol uses (not its secrets)
    model: nn.Module
    fc_index: int
    label: int  # inferred from the received gradient
    image_shape: tuple[int, int, int]
    generator: Any | None  # ggl.generators.Generator, or None for pixel-space baselines
    device: torch.device
    scorer: str = "auto"  # params' scorer: how the objective scores a batch (ggl.attack.objective)

    @cached_property
    def estimate(self) -> Estimate:
        """T-hat from the received gradient, once for all trials and the result record."""
        return estimate_defence(self.received, self.steps, self.fc_index)


@dataclass(frozen=True)
class AttackConfig:
    method: str
    trials: int
    budget: int  # objective evaluations per trial
    objective: Any = None  # the method's objective settings (a dataclass; dict for plugins)
    optimiser: Any = None  # the method's optimiser settings (likewise)


@dataclass(eq=False)
class Trial:
    image: torch.Tensor  # (3, H, W) in [-1, 1]
    loss: float  # the attack's final objective value: the trial with the lowest is kept
    evaluations: int
    curve: list[tuple[int, float]]  # (evaluations so far, best loss so far)
    latent: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


AttackFn = Callable[[Attacker, AttackConfig, int], Trial]
ATTACKS: Registry[AttackFn] = Registry("attack method")
GGL_OPTIMISERS = {"ggl-adam": "adam", "ggl-cmaes": "cmaes", "ggl-bo": "turbo"}


def method_settings(method: str) -> tuple[type, type] | None:
    """(objective settings class, optimiser settings class) of a built-in method."""
    from ggl.attack.baselines import LEARNS_LABEL, PixelObjectiveConfig, PixelOptimiserConfig
    from ggl.attack.optimisers import OPTIMISER_CONFIGS

    if method in GGL_OPTIMISERS:
        return ObjectiveConfig, OPTIMISER_CONFIGS[GGL_OPTIMISERS[method]]
    if method in LEARNS_LABEL:
        return PixelObjectiveConfig, PixelOptimiserConfig
    return None


def attack_config(raw: dict[str, Any], key: str) -> AttackConfig:
    """Build and check one entry of params' attacks (``key`` names it in errors)."""
    from ggl.attack.objective import DISTANCES, REGULARISERS
    from ggl.config import ParamsError, settings

    classes = method_settings(raw["method"])
    if classes is None:  # a plugin method gets its settings as given
        return AttackConfig(**raw)
    objective = settings(classes[0], raw["objective"], f"{key}.objective")
    optimiser = settings(classes[1], raw["optimiser"], f"{key}.optimiser")
    for name, table in (("distance", DISTANCES), ("regulariser", REGULARISERS)):
        if hasattr(objective, name) and getattr(objective, name) not in table:
            raise ParamsError(f"{key}.objective.{name}: {getattr(objective, name)!r} is not "
                              f"allowed; allowed are {', '.join(table)}")
    if raw["method"] == "ggl-cmaes" and raw["budget"] < optimiser.popsize:
        raise ParamsError(f"{key}.budget: {raw['budget']} is less than one generation "
                          f"({key}.optimiser.popsize = {optimiser.popsize})")
    if getattr(optimiser, "optimiser", "adam") not in ("adam", "lbfgs"):
        raise ParamsError(f"{key}.optimiser.optimiser: {optimiser.optimiser!r} is not allowed; "
                          f"allowed are adam, lbfgs")
    schedule = getattr(optimiser, "schedule", "none")
    if schedule not in ("none", "warmup-cosine", "step"):
        raise ParamsError(f"{key}.optimiser.schedule: {schedule!r} is not allowed; allowed "
                          f"are none, warmup-cosine, step")
    return AttackConfig(raw["method"], raw["trials"], raw["budget"], objective, optimiser)


def ggl_objective(attacker: Attacker, cfg: AttackConfig) -> Objective:
    if attacker.generator is None:
        raise ValueError(f"{cfg.method} needs a generator")
    labels = torch.tensor([attacker.label], device=attacker.device)
    generator = attacker.generator

    def generate(z: torch.Tensor) -> torch.Tensor:
        return generator(z, labels.expand(len(z)))

    return Objective(attacker.model, generate, attacker.received, attacker.label,
                     attacker.estimate, cfg.objective, scorer=attacker.scorer)


def ggl_attack(optimiser: str) -> AttackFn:
    """GGL with one latent-space optimiser: search z so that T-hat(F(G(z))) matches y."""

    def attack(attacker: Attacker, cfg: AttackConfig, seed: int) -> Trial:
        from ggl.attack.optimisers import minimise

        objective = ggl_objective(attacker, cfg)
        result = minimise(optimiser, objective, dim=attacker.generator.latent_dim,
                          budget=cfg.budget, config=cfg.optimiser, seed=seed,
                          device=attacker.device)
        with torch.no_grad():
            z = result.best_z.to(attacker.device)[None]
            image = objective.images(z)[0]
        return Trial(image.cpu(), result.best_loss, result.evaluations, result.curve,
                     latent=objective.latent(z)[0].cpu())

    return attack


for _method, _optimiser in GGL_OPTIMISERS.items():
    ATTACKS.register(_method)(ggl_attack(_optimiser))


def best_of_trials(attacker: Attacker, cfg: AttackConfig, seed: int
                   ) -> tuple[Trial, list[Trial]]:
    """Independent restarts, each seeded from ``seed``; keep the lowest final loss."""
    attack = ATTACKS.get(cfg.method)
    trials = [attack(attacker, cfg, derive_seed(seed, "trial", t)) for t in range(cfg.trials)]
    best = min(trials, key=lambda trial: trial.loss)
    return best, trials


# --- the stage -----------------------------------------------------------------------------

def attack_dir(results_dir: str | Path, defence: str, attack: str, image_id: str) -> Path:
    return Path(results_dir) / "attacks" / defence / attack / image_id


ATTACK_FILES = ("reconstruction.pt", "reconstruction.png", "latent.pt", "curve.csv",
                "result.json")


def prepare_attacker(gradient_file: str | Path, generator: Any | None,
                     device: torch.device, scorer: str = "auto") -> Attacker:
    record = load_received(gradient_file)
    spec = record["model"]
    model = build_model(ModelConfig(spec["arch"], spec["width"], spec["seed"],
                                    spec["num_classes"]), device)
    for p in model.parameters():
        p.requires_grad_(True)
    received = [g.to(device) for g in record["gradient"]]
    size = record["image_size"]
    return Attacker(received, steps_from_record(record["defence"]), model, record["fc_index"],
                    infer_label(received, record["fc_index"]), (3, size, size), generator,
                    device, scorer)


def curve_csv(trials: list[Trial]) -> str:
    out = textio.StringIO()
    writer = csv.writer(out)
    writer.writerow(["trial", "evaluations", "best_loss"])
    for t, trial in enumerate(trials):
        writer.writerows([t, e, f"{loss:.8g}"] for e, loss in trial.curve)
    return out.getvalue()


def write_attack(folder: Path, best: Trial, trials: list[Trial], meta: dict[str, Any]) -> None:
    io.save_torch(folder / "reconstruction.pt", best.image)
    io.save_image(folder / "reconstruction.png", best.image)
    latent = best.latent if best.latent is not None else torch.zeros(0)
    io.save_torch(folder / "latent.pt", latent)
    io.write_text(folder / "curve.csv", curve_csv(trials))
    io.write_json(folder / "result.json", meta)


def run_attack(gradient_files: dict[str, Path], defence: str, attack: str, cfg: AttackConfig,
               generator: Any | None, generator_info: dict[str, Any], master_seed: int,
               results_dir: Path, device: torch.device, scorer: str = "auto") -> list[Path]:
    """Attack every listed image (image id -> received gradient file)."""
    folders = []
    for image_id, gradient_file in tqdm(gradient_files.items(), desc=f"{attack} on {defence}",
                                        unit="img"):
        attacker = prepare_attacker(gradient_file, generator, device, scorer)
        # Common random numbers: the same attack starts alike under every defence.
        seed = derive_seed(master_seed, "attack", attack, image_id)
        start = time.perf_counter()
        best, trials = best_of_trials(attacker, cfg, seed)
        seconds = time.perf_counter() - start
        meta = {
            "image_id": image_id, "defence": defence, "attack": attack, "method": cfg.method,
            "inferred_label": attacker.label, "loss": best.loss,
            "evaluations": sum(t.evaluations for t in trials),
            "budget_units": "objective evaluations (one candidate image scored)",
            "seconds": seconds, "trials": len(trials),
            "best_trial": next(i for i, t in enumerate(trials) if t is best),
            "trial_losses": [t.loss for t in trials],
            "seed": seed, "defence_estimate": _summarise(attacker.estimate.values),
            "generator": generator_info, "device": str(device), "scorer": scorer, **best.extra,
        }
        folder = attack_dir(results_dir, defence, attack, image_id)
        write_attack(folder, best, trials, meta)
        folders.append(folder)
    return folders


def _summarise(values: dict[str, Any]) -> dict[str, Any]:
    """Drop long per-tensor lists from the logged estimate."""
    return {k: {kk: vv for kk, vv in v.items() if not isinstance(vv, list)}
            for k, v in values.items()}


from ggl.attack import baselines as _baselines  # noqa: E402, F401  (registers dlg, idlg, ig, gi)
