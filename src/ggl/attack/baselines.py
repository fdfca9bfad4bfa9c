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

from ggl.attack.lockstep import stack
from ggl.attack.objective import DISTANCES, simulated_update, trial_gradients
from ggl.attack.optimisers import Tracker, lr_factor
from ggl.attack.run import Attacker, AttackFn, LockstepFn, Trial
from ggl.defences import Estimate
from ggl.settings import AttackConfig


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels, per image: (n,)."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


LEARNS_LABEL = {"dlg": True, "idlg": False, "ig": False, "gi": False}


def pixel_attack(learn_label: bool) -> AttackFn:
    lockstep = pixel_lockstep(learn_label)

    def attack(attacker: Attacker, cfg: AttackConfig, seed: int) -> Trial:
        return lockstep([attacker], cfg, [seed])[0]

    return attack


def pixel_lockstep(learn_label: bool) -> LockstepFn:
    """The baseline on several updates side by side (``ggl.attack.lockstep``): each its own
    dummy image (and label), optimiser state and tracker, every step one batched pass."""

    def attack(attackers: list[Attacker], cfg: AttackConfig, seeds: list[int]) -> list[Trial]:
        stacked = stack(attackers, cfg.objective.adaptive) if len(attackers) > 1 else None
        if len(attackers) > 1 and stacked is None:
            return [attack([a], cfg, [seed])[0] for a, seed in zip(attackers, seeds, strict=True)]
        obj, opt_cfg = cfg.objective, cfg.optimiser
        first = attackers[0]
        device, (c, h, w) = first.device, first.image_shape
        size = first.client.batch_size
        classes = first.received[first.fc_index].shape[0]
        images, label_logits = [], []
        for seed in seeds:
            gen = torch.Generator().manual_seed(seed)
            images.append(torch.randn(size, c, h, w, generator=gen).to(device)
                          .requires_grad_(True))
            label_logits.append(torch.randn(size, classes, generator=gen).to(device)
                                .requires_grad_(True))
        variables = [[x, logits] if learn_label else [x]
                     for x, logits in zip(images, label_logits, strict=True)]
        if opt_cfg.optimiser == "lbfgs":
            # One closure call per step, no line search (as DLG): iterations = evaluations.
            optimisers = [torch.optim.LBFGS(v, lr=opt_cfg.lr, max_iter=1,
                                            history_size=opt_cfg.history_size)
                          for v in variables]
        else:
            optimisers = [torch.optim.Adam(v, lr=opt_cfg.lr) for v in variables]
        distance = DISTANCES[obj.distance]
        estimate = first.estimate if obj.adaptive else Estimate()
        inferred = torch.tensor(first.labels, device=device)

        def matching(x: torch.Tensor) -> torch.Tensor:  # every update's images -> (updates,)
            if stacked is not None:
                labels = (torch.cat(label_logits).softmax(1) if learn_label
                          else stacked.labels)
                return stacked.matching(x, labels, distance)
            logits = label_logits[0]
            if first.simulates:
                targets = logits.softmax(1) if learn_label else inferred
                grads = simulated_update(first.model, x, targets, first.client.local_steps,
                                         first.client.local_lr, create_graph=True)
            else:
                grads = trial_gradients(first.model, x, logits.softmax(1) if learn_label
                                        else first.label, create_graph=True)
            return distance(estimate.apply(grads), first.received)

        def prior(values: torch.Tensor) -> torch.Tensor:  # (B,) per image -> (1,) per batch
            return values if size == 1 else values.mean(0, keepdim=True)

        def batch() -> torch.Tensor:  # every update's images, (updates B, 3, H, W)
            return images[0] if len(images) == 1 else torch.cat(images)

        trackers = [Tracker(budget=cfg.budget) for _ in attackers]
        iterations = 0
        while trackers[0].evaluations < cfg.budget:
            for opt in optimisers:
                for group in opt.param_groups:
                    group["lr"] = opt_cfg.lr * lr_factor(opt_cfg.schedule,
                                                         trackers[0].evaluations, cfg.budget)
                opt.zero_grad()
            # each term joins the images itself: one join shared by the three would sum their
            # gradients in another order (last-bit changes to the measured results)
            loss = matching(batch())
            if obj.tv_weight:
                loss = loss + obj.tv_weight * prior(total_variation(batch()))
            if obj.l2_weight:
                loss = loss + obj.l2_weight * prior(batch().pow(2).flatten(1).mean(1))
            for i, (image, tracker) in enumerate(zip(images, trackers, strict=True)):
                tracker.record(image.detach() if size == 1 else image.detach()[None],
                               loss[i:i + 1].detach())
            loss.sum().backward()
            for own, opt, total in zip(variables, optimisers, loss.detach(), strict=True):
                if opt_cfg.signed:
                    for v in own:
                        v.grad.sign_()
                # the loss and gradients are in place: the closure hands over the loss
                opt.step(lambda total=total: total)
            iterations += 1
            if opt_cfg.clamp:
                with torch.no_grad():
                    for image in images:
                        image.clamp_(-1, 1)
        return [Trial(tracker.best_z.clamp(-1, 1).cpu(), tracker.best_loss,
                      tracker.evaluations, tracker.curve, info={"iterations": iterations},
                      checkpoints=[(e, point.clamp(-1, 1).cpu())
                                   for e, point in tracker.final_checkpoints()])
                for tracker in trackers]

    return attack
