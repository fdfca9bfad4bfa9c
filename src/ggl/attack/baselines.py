"""The paper's pixel-space baselines: DLG, iDLG, Inverting Gradients (IG) and GradInversion
(GI, without BatchNorm statistics). Each optimises a dummy image directly and shares the GGL
attacks' distances, defence estimate, label inference and trials.

| method | label | distance | image prior | optimiser |
|---|---|---|---|---|
| dlg | learnt soft label | squared l2 | none | L-BFGS |
| idlg | inferred | squared l2 | none | L-BFGS |
| ig | inferred | cosine | total variation | Adam, signed gradients, step decay |
| gi | inferred | squared l2 | total variation + l2 | Adam |

Budgets count objective evaluations; every method makes one per iteration (L-BFGS runs without
line search, as DLG), so the budget is also the number of iterations. At a client batch of
B > 1 images each optimises B images (DLG B soft labels) against the client's update simulated
on them (``ggl.attack.objective.simulated_update``, E local steps); the image priors are
averaged over the batch.
"""

from __future__ import annotations

import torch

from ggl.attack.objective import DISTANCES, simulated_update, trial_gradients
from ggl.attack.optimisers import Tracker, lr_factor
from ggl.attack.run import Attacker, Trial
from ggl.defences import Estimate
from ggl.settings import AttackConfig


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels, per image: (n,)."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


LEARNS_LABEL = {"dlg": True, "idlg": False, "ig": False, "gi": False}


def pixel_attack(learn_label: bool):
    def attack(attacker: Attacker, cfg: AttackConfig, seed: int) -> Trial:
        obj, opt_cfg = cfg.objective, cfg.optimiser
        gen = torch.Generator().manual_seed(seed)
        device, (c, h, w) = attacker.device, attacker.image_shape
        size = attacker.client.batch_size
        x = torch.randn(size, c, h, w, generator=gen).to(device).requires_grad_(True)
        classes = attacker.received[attacker.fc_index].shape[0]
        label_logits = torch.randn(size, classes, generator=gen).to(device).requires_grad_(True)
        inferred = torch.tensor(attacker.labels, device=device)

        def prior(values: torch.Tensor) -> torch.Tensor:  # (B,) per image -> (1,) per batch
            return values if size == 1 else values.mean(0, keepdim=True)
        variables = [x, label_logits] if learn_label else [x]
        estimate = attacker.estimate if obj.adaptive else Estimate()
        distance = DISTANCES[obj.distance]
        tracker = Tracker(budget=cfg.budget)

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            if attacker.simulates:
                targets = label_logits.softmax(1) if learn_label else inferred
                grads = simulated_update(attacker.model, x, targets, attacker.client.local_steps,
                                         attacker.client.local_lr, create_graph=True)
            else:
                label = label_logits.softmax(1) if learn_label else attacker.label
                grads = trial_gradients(attacker.model, x, label, create_graph=True)
            loss = distance(estimate.apply(grads), attacker.received)
            if obj.tv_weight:
                loss = loss + obj.tv_weight * prior(total_variation(x))
            if obj.l2_weight:
                loss = loss + obj.l2_weight * prior(x.pow(2).flatten(1).mean(1))
            tracker.record(x.detach() if size == 1 else x.detach()[None], loss.detach())
            loss.sum().backward()
            if opt_cfg.signed:
                for v in variables:
                    v.grad.sign_()
            return loss.sum()

        if opt_cfg.optimiser == "lbfgs":
            # One closure call per step, no line search (as DLG): iterations = evaluations.
            optimiser = torch.optim.LBFGS(variables, lr=opt_cfg.lr, max_iter=1,
                                          history_size=opt_cfg.history_size)
        else:
            optimiser = torch.optim.Adam(variables, lr=opt_cfg.lr)
        iterations = 0
        while tracker.evaluations < cfg.budget:
            for group in optimiser.param_groups:
                group["lr"] = opt_cfg.lr * lr_factor(opt_cfg.schedule, tracker.evaluations,
                                                     cfg.budget)
            optimiser.step(closure)
            iterations += 1
            if opt_cfg.clamp:
                with torch.no_grad():
                    x.clamp_(-1, 1)
        return Trial(tracker.best_z.clamp(-1, 1).cpu(), tracker.best_loss, tracker.evaluations,
                     tracker.curve, info={"iterations": iterations},
                     checkpoints=[(e, point.clamp(-1, 1).cpu())
                                  for e, point in tracker.final_checkpoints()])

    return attack
