"""The curious server's attack on one received update.

The attacker has exactly the received gradient record, the federated model spec and the client
protocol it names, and the generator, and infers the labels analytically (at batch size B > 1
from the model's mean softmax on the public split, ``ggl.attack.labels``): ``Attacker`` has no
field for a private image. At B > 1 a reconstruction is a batch (B, 3, H, W).
An attack is a function ``(attacker, cfg, seed) -> Trial`` (``ggl.attack.ATTACKS`` maps params'
``method`` to one); the GGL optimisers and the baselines share the trials logic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any

import torch
from torch import nn

from ggl import io
from ggl.attack.compute import UNIT, budget_for, cost_per_evaluation, is_differentiable
from ggl.attack.labels import infer_label, label_counts, labels_from_counts, mean_softmax
from ggl.attack.objective import DISTANCES, Objective
from ggl.attack.optimisers import OptimiseResult, minimise
from ggl.client import steps_from_record
from ggl.config import ClientConfig, DefenceStep, ModelConfig
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
    label: int  # inferred from the received gradient (at B > 1: the first of batch_labels)
    image_shape: tuple[int, int, int]
    generator: Any | None  # ggl.generators.Generator, or None for pixel-space baselines
    device: torch.device
    scorer: str = "auto"  # params' scorer: how the objective scores a batch (ggl.attack.objective)
    public: tuple[torch.Tensor, torch.Tensor] | None = None  # public split, for label-only
    client: ClientConfig = ClientConfig()  # the protocol, from the received record
    batch_labels: tuple[int, ...] = ()  # B > 1: the inferred multiset, sorted

    @property
    def labels(self) -> list[int]:
        """The inferred label of each image of the client's batch."""
        return list(self.batch_labels) or [self.label]

    @property
    def simulates(self) -> bool:
        """Whether the update is more than one image's gradient (B > 1 or E > 1)."""
        return self.client.batch_size > 1 or self.client.local_steps > 1

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
# several updates of one protocol side by side, one seed each -> one trial each (in order)
LockstepFn = Callable[[list["Attacker"], AttackConfig, list[int]], list[Trial]]
NO_COST = ("; unknown for this method (a plugin): compute is null, and its own budget in "
           "evaluations applies even under compute_budget")


def ggl_objective(attacker: Attacker, cfg: AttackConfig) -> Objective:
    if attacker.generator is None:
        raise ValueError(f"{cfg.method} needs a generator")
    labels = torch.tensor(attacker.labels, device=attacker.device)
    if len(labels) == 1:
        def generate(z: torch.Tensor) -> torch.Tensor:
            return attacker.generator(z, labels.expand(len(z)))
    else:  # (n B, k) latents: each candidate batch takes the multiset in order
        def generate(z: torch.Tensor) -> torch.Tensor:
            return attacker.generator(z, labels.repeat(len(z) // len(labels)))
    return Objective(attacker.model, generate, attacker.received, attacker.label,
                     attacker.estimate, cfg.objective, scorer=attacker.scorer,
                     labels=attacker.labels, local_steps=attacker.client.local_steps,
                     local_lr=attacker.client.local_lr)


def ggl_attack(optimiser: str) -> AttackFn:
    """GGL with one latent-space optimiser: search z so that T-hat(F(G(z))) matches y."""

    def attack(attacker: Attacker, cfg: AttackConfig, seed: int) -> Trial:
        objective = ggl_objective(attacker, cfg)
        size = attacker.client.batch_size
        result = minimise(optimiser, objective, dim=attacker.generator.latent_dim * size,
                          budget=cfg.budget, config=cfg.optimiser, seed=seed,
                          device=attacker.device)
        return latent_trial(objective, result, size, attacker.device)

    return attack


def latent_trial(objective: Objective, result: OptimiseResult, size: int,
                 device: torch.device) -> Trial:
    """A GGL trial from its optimiser's result: one generator call decodes every checkpoint
    (the last is the best point); at client batch size B > 1 a batch (B, 3, H, W) each."""
    z = torch.stack([point for _, point in result.checkpoints]).to(device)
    with torch.no_grad():
        images = objective.images(z).cpu()
    latent = objective.latent(z[-1:])
    if size > 1:  # one batch (B, 3, H, W) per checkpoint
        images = images.reshape(len(z), size, *images.shape[1:])
    return Trial(images[-1], result.best_loss, result.evaluations, result.curve,
                 latent=(latent if size > 1 else latent[0]).cpu(), info=result.info,
                 checkpoints=[(e, image) for (e, _), image in
                              zip(result.checkpoints, images, strict=True)])


def best_of_trials(attack: AttackFn, attacker: Attacker, cfg: AttackConfig, seed: int
                   ) -> tuple[Trial, list[Trial]]:
    """Independent restarts, each seeded from ``seed``; keep the lowest final loss."""
    return best_of_lockstep_trials(one_by_one(attack), [attacker], cfg, [seed])[0]


def best_of_lockstep_trials(attack: LockstepFn, attackers: list[Attacker], cfg: AttackConfig,
                            seeds: list[int]) -> list[tuple[Trial, list[Trial]]]:
    """``best_of_trials`` of several updates attacked side by side: trial t of every update in
    one call of ``attack``, update i seeded from ``seeds[i]``."""
    per_update: list[list[Trial]] = [[] for _ in attackers]
    for t in range(cfg.trials):
        trials = attack(attackers, cfg, [derive_seed(seed, "trial", t) for seed in seeds])
        for mine, trial in zip(per_update, trials, strict=True):
            mine.append(trial)
    return [(min(trials, key=lambda trial: trial.loss), trials) for trials in per_update]


def one_by_one(attack: AttackFn) -> LockstepFn:
    """An attack function as a lockstep one: the updates one after another."""
    def one(attackers: list[Attacker], cfg: AttackConfig, seeds: list[int]) -> list[Trial]:
        return [attack(attacker, cfg, seed) for attacker, seed in zip(attackers, seeds,
                                                                      strict=True)]
    return one


def infer_labels(received: Gradient, model: nn.Module, fc_index: int, client: ClientConfig,
                 public: tuple[torch.Tensor, torch.Tensor] | None) -> list[int]:
    """The labels of the client's batch: the fc weight rule at B = 1 (any E: every step's
    gradient has the one negative row), Geng et al.'s bias rule above, on the update's mean
    step gradient, with the batch's mean softmax estimated on the public split."""
    if client.batch_size == 1:
        return [infer_label(received, fc_index)]
    if public is None:
        raise ValueError("label inference at client batch size > 1 needs the public split")
    softmax = mean_softmax(model, public[0].to(received[0].device))
    classes = received[fc_index].shape[0]
    if fc_index + 1 >= len(received) or received[fc_index + 1].shape != (classes,):
        raise ValueError("label inference at client batch size > 1 needs the linear head's "
                         "bias, the parameter after its weight")
    bias = received[fc_index + 1] / client.local_steps
    return labels_from_counts(label_counts(bias, client.batch_size, softmax))


def prepare_attacker(record: dict[str, Any], model_cfg: ModelConfig, generator: Any | None,
                     device: torch.device, scorer: str = "auto",
                     public: tuple[torch.Tensor, torch.Tensor] | None = None,
                     trained: dict[str, torch.Tensor] | None = None) -> Attacker:
    """The attacker of one received update (``ggl.client.load_received``, which checks it
    against params) with the federated model of params' ``model_cfg``; ``public``: the public
    split, which label-only and label inference at batch size > 1 use; ``trained``: the
    federation's trained weights, which the server has, for a client at checkpoint trained."""
    client = ClientConfig(**record["client"])
    model = build_model(model_cfg, device)
    if client.checkpoint == "trained":
        if trained is None:
            raise ValueError("a client at checkpoint trained needs the trained model's weights")
        model.load_state_dict(trained)
    for p in model.parameters():
        p.requires_grad_(True)
    received = [g.to(device) for g in record["gradient"]]
    size = record["image_size"]
    labels = infer_labels(received, model, record["fc_index"], client, public)
    return Attacker(received, steps_from_record(record["defence"]), model, record["fc_index"],
                    labels[0], (3, size, size), generator, device, scorer, public, client,
                    tuple(labels) if client.batch_size > 1 else ())


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
        attacker.model, attacker.image_shape, attacker.labels,
        lambda grads: distance(estimate.apply(grads), attacker.received), differentiable,
        attacker.client)


def run_attack(attack: AttackFn, attacker: Attacker, cfg: AttackConfig, seed: int,
               cost: float | None, compute_budget: int = 0
               ) -> tuple[Trial, list[Trial], dict[str, Any]]:
    """Every trial on one update: the best, all of them, and what result.json records.
    ``cost``: model passes per evaluation (``evaluation_cost``; None: unknown);
    ``compute_budget`` > 0 replaces the budget by that many model passes per trial."""
    return run_attacks(one_by_one(attack), [attacker], cfg, [seed], cost, compute_budget)[0]


def run_attacks(attack: LockstepFn, attackers: list[Attacker], cfg: AttackConfig,
                seeds: list[int], cost: float | None, compute_budget: int = 0
                ) -> list[tuple[Trial, list[Trial], dict[str, Any]]]:
    """``run_attack`` of several updates of one client protocol attacked side by side
    (``ggl.attack.lockstep``); each record's seconds is the wall time over the updates."""
    start = time.perf_counter()
    cfg = replace(cfg, budget=budget_for(cfg, compute_budget, cost))
    outcomes = best_of_lockstep_trials(attack, attackers, cfg, seeds)
    seconds = (time.perf_counter() - start) / len(attackers)
    out = []
    for attacker, seed, (best, trials) in zip(attackers, seeds, outcomes, strict=True):
        evaluations = sum(t.evaluations for t in trials)
        out.append((best, trials, {
            "method": cfg.method, "inferred_label": attacker.label,
            **({"inferred_labels": attacker.labels} if attacker.simulates else {}),
            "client": asdict(attacker.client), "loss": best.loss,
            "evaluations": evaluations,
            "budget_units": "objective evaluations (one candidate image scored)",
            "budget": cfg.budget, "compute_budget": compute_budget,
            "compute": None if cost is None else evaluations * cost,
            "compute_unit": UNIT if cost is not None else UNIT + NO_COST,
            "cost_per_evaluation": cost,
            "seconds": seconds, "lockstep_updates": len(attackers), "trials": len(trials),
            "best_trial": trials.index(best),  # Trial compares by identity
            "trial_losses": [t.loss for t in trials], "trial_info": [t.info for t in trials],
            "seed": seed, "defence_estimate": _summarise(attacker.estimate.values),
            "device": str(attacker.device), "scorer": attacker.scorer,
        }))
    return out


def curve_csv(trials: list[Trial]) -> str:
    return io.csv_text(["trial", "evaluations", "best_loss"],
                       ([t, e, f"{loss:.8g}"] for t, trial in enumerate(trials)
                        for e, loss in trial.curve))


def checkpoints_record(trial: Trial, cost: float | None, batch_size: int = 1
                       ) -> dict[str, torch.Tensor]:
    """checkpoints.pt: a trial's best-so-far images (k, 3, H, W), or batches (k, B, 3, H, W),
    at its checkpoints, their evaluations within the trial and compute in model passes (NaN
    when the cost is unknown). A trial without checkpoints (a control) gives its final image,
    or each image of its stack, at its evaluations."""
    unit = trial.image.shape[-3:] if batch_size == 1 else trial.image.shape[-4:]
    marks = trial.checkpoints or [(trial.evaluations, image)
                                  for image in trial.image.reshape(-1, *unit)]
    evaluations = torch.tensor([e for e, _ in marks], dtype=torch.long)
    return {"evaluations": evaluations,
            "compute": evaluations.float() * (math.nan if cost is None else cost),
            "images": torch.stack([image for _, image in marks])}


def _summarise(values: dict[str, Any]) -> dict[str, Any]:
    """Drop long per-tensor lists from the logged estimate."""
    return {k: {kk: vv for kk, vv in v.items() if not isinstance(vv, list)}
            for k, v in values.items()}
