"""The curious server's attack on one received update.

The attacker has exactly the received gradient record, the federated model spec it names and
the generator, and infers the label analytically: ``Attacker`` has no field for a private image.
An attack is a function ``(attacker, cfg, seed) -> Trial`` (``ggl.attack.ATTACKS`` maps params'
``method`` to one); the GGL optimisers and the baselines share the trials logic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import torch
from torch import nn

from ggl import io
from ggl.attack.compute import UNIT, budget_for, cost_per_evaluation, is_differentiable
from ggl.attack.labels import infer_label
from ggl.attack.objective import DISTANCES, Objective
from ggl.attack.optimisers import minimise
from ggl.client import steps_from_record
from ggl.config import DefenceStep, ModelConfig
from ggl.defences import Estimate, Gradient, estimate_defence
from ggl.models import build_model
from ggl.runtime import derive_seed
from ggl.settings import NO_MODEL_PASS, AttackConfig


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
    public: tuple[torch.Tensor, torch.Tensor] | None = None  # public split, for label-only

    @cached_property
    def estimate(self) -> Estimate:
        """T-hat from the received gradient, once for all trials and the result record."""
        return estimate_defence(self.received, self.steps, self.fc_index)


@dataclass(eq=False)
class Trial:
    image: torch.Tensor  # (3, H, W) in [-1, 1]; the prior control: (samples, 3, H, W)
    loss: float  # the attack's final objective value: the trial with the lowest is kept
    evaluations: int
    curve: list[tuple[int, float]]  # (evaluations so far, best loss so far)
    latent: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)  # the optimiser's, e.g. restarts
    # (evaluations, best image so far (3, H, W)) at checkpoints of the run; the last = image
    checkpoints: list[tuple[int, torch.Tensor]] = field(default_factory=list)


AttackFn = Callable[[Attacker, AttackConfig, int], Trial]
NO_COST = ("; unknown for this method (a plugin): compute is null, and its own budget in "
           "evaluations applies even under compute_budget")


def ggl_objective(attacker: Attacker, cfg: AttackConfig) -> Objective:
    if attacker.generator is None:
        raise ValueError(f"{cfg.method} needs a generator")
    labels = torch.tensor([attacker.label], device=attacker.device)
    return Objective(attacker.model, lambda z: attacker.generator(z, labels.expand(len(z))),
                     attacker.received, attacker.label, attacker.estimate, cfg.objective,
                     scorer=attacker.scorer)


def ggl_attack(optimiser: str) -> AttackFn:
    """GGL with one latent-space optimiser: search z so that T-hat(F(G(z))) matches y."""

    def attack(attacker: Attacker, cfg: AttackConfig, seed: int) -> Trial:
        objective = ggl_objective(attacker, cfg)
        result = minimise(optimiser, objective, dim=attacker.generator.latent_dim,
                          budget=cfg.budget, config=cfg.optimiser, seed=seed,
                          device=attacker.device)
        # One generator call decodes every checkpoint; the last is the best point
        z = torch.stack([point for _, point in result.checkpoints]).to(attacker.device)
        with torch.no_grad():
            images = objective.images(z).cpu()
        return Trial(images[-1], result.best_loss, result.evaluations, result.curve,
                     latent=objective.latent(z[-1:])[0].cpu(), info=result.info,
                     checkpoints=[(e, image) for (e, _), image in
                                  zip(result.checkpoints, images, strict=True)])

    return attack


def best_of_trials(attack: AttackFn, attacker: Attacker, cfg: AttackConfig, seed: int
                   ) -> tuple[Trial, list[Trial]]:
    """Independent restarts, each seeded from ``seed``; keep the lowest final loss."""
    trials = [attack(attacker, cfg, derive_seed(seed, "trial", t)) for t in range(cfg.trials)]
    return min(trials, key=lambda trial: trial.loss), trials


def prepare_attacker(record: dict[str, Any], generator: Any | None, device: torch.device,
                     scorer: str = "auto",
                     public: tuple[torch.Tensor, torch.Tensor] | None = None) -> Attacker:
    """The attacker of one received update (``ggl.client.load_received``)."""
    model = build_model(ModelConfig(**record["model"]), device)
    for p in model.parameters():
        p.requires_grad_(True)
    received = [g.to(device) for g in record["gradient"]]
    size = record["image_size"]
    return Attacker(received, steps_from_record(record["defence"]), model, record["fc_index"],
                    infer_label(received, record["fc_index"]), (3, size, size), generator,
                    device, scorer, public)


def evaluation_cost(attacker: Attacker, cfg: AttackConfig) -> float | None:
    """Model passes per evaluation of this attack (``ggl.attack.compute``); None: unknown. It
    depends on the model, the image size and the objective only, not on the image: measure it
    once per stage (a count at the default's width takes ~0.25 s, the first ~1.5 s more)."""
    if cfg.method in NO_MODEL_PASS:
        return 0.0  # the generator or the public split alone
    differentiable = is_differentiable(cfg)
    if differentiable is None:
        return None
    estimate = attacker.estimate if cfg.objective.adaptive else Estimate()
    distance = DISTANCES[cfg.objective.distance]
    return cost_per_evaluation(
        attacker.model, attacker.image_shape, attacker.label,
        lambda grads: distance(estimate.apply(grads), attacker.received), differentiable)


def run_attack(attack: AttackFn, attacker: Attacker, cfg: AttackConfig, seed: int,
               cost: float | None, compute_budget: int = 0
               ) -> tuple[Trial, list[Trial], dict[str, Any]]:
    """Every trial on one update: the best, all of them, and what result.json records.
    ``cost``: model passes per evaluation (``evaluation_cost``; None: unknown);
    ``compute_budget`` > 0 replaces the budget by that many model passes per trial."""
    start = time.perf_counter()
    cfg = replace(cfg, budget=budget_for(cfg, compute_budget, cost))
    best, trials = best_of_trials(attack, attacker, cfg, seed)
    evaluations = sum(t.evaluations for t in trials)
    return best, trials, {
        "method": cfg.method, "inferred_label": attacker.label, "loss": best.loss,
        "evaluations": evaluations,
        "budget_units": "objective evaluations (one candidate image scored)",
        "budget": cfg.budget, "compute_budget": compute_budget,
        "compute": None if cost is None else evaluations * cost,
        "compute_unit": UNIT if cost is not None else UNIT + NO_COST,
        "cost_per_evaluation": cost,
        "seconds": time.perf_counter() - start, "trials": len(trials),
        "best_trial": trials.index(best),  # Trial compares by identity
        "trial_losses": [t.loss for t in trials], "trial_info": [t.info for t in trials],
        "seed": seed, "defence_estimate": _summarise(attacker.estimate.values),
        "device": str(attacker.device), "scorer": attacker.scorer,
    }


def curve_csv(trials: list[Trial]) -> str:
    return io.csv_text(["trial", "evaluations", "best_loss"],
                       ([t, e, f"{loss:.8g}"] for t, trial in enumerate(trials)
                        for e, loss in trial.curve))


def checkpoints_record(trial: Trial, cost: float | None) -> dict[str, torch.Tensor]:
    """checkpoints.pt: a trial's best-so-far images (k, 3, H, W) at its checkpoints, their
    evaluations within the trial and compute in model passes (NaN when the cost is unknown).
    A trial without checkpoints (a control) gives its final image, or each image of its
    stack, at its evaluations."""
    marks = trial.checkpoints or [(trial.evaluations, image)
                                  for image in trial.image.reshape(-1, *trial.image.shape[-3:])]
    evaluations = torch.tensor([e for e, _ in marks], dtype=torch.long)
    return {"evaluations": evaluations,
            "compute": evaluations.float() * (math.nan if cost is None else cost),
            "images": torch.stack([image for _, image in marks])}


def _summarise(values: dict[str, Any]) -> dict[str, Any]:
    """Drop long per-tensor lists from the logged estimate."""
    return {k: {kk: vv for kk, vv in v.items() if not isinstance(vv, list)}
            for k, v in values.items()}
