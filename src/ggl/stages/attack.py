"""Stage attack: one attack on every received update of one defence. It reads the received
gradients, the generator and (for the label-only control, and label inference at client batch
size > 1) the public split, never a private image or the client's truth. Methods with a
lockstep form attack the updates of a client protocol side by side (``ggl.attack.lockstep``)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from logging import Logger

import torch
from tqdm import tqdm

from ggl import io
from ggl.attack import ATTACKS, LOCKSTEP, lockstep
from ggl.attack.run import (
    checkpoints_record,
    curve_csv,
    evaluation_cost,
    one_by_one,
    prepare_attacker,
    run_attacks,
)
from ggl.client import load_received
from ggl.data import load_part
from ggl.generators import build_generator
from ggl.models import build_model
from ggl.pipeline.registry import Stage
from ggl.runtime import derive_seed, resolve_device
from ggl.settings import uses_generator


def run(stage: Stage, log: Logger) -> None:
    params = stage.params
    defence, attack = stage.keys["defence"], stage.keys["attack"]
    cfg = params.attacks[attack]
    device = resolve_device(params.device)
    generator, prior = None, None  # a pixel baseline or label-only: no generator
    if uses_generator(attack, params.attacks):
        checkpoint = next((stage.input(name) for name in ("generator", "biggan_weights")
                           if stage.reads(name)), None)  # None: a plugin generator's own weights
        generator = build_generator(params, checkpoint, device)
        prior = {"kind": params.generator.kind, **generator.info()}
    needs_public = cfg.method == "label-only" or params.batched()
    public = load_part(stage.input("public")) if needs_public else None
    trained = io.load_torch(stage.input("attacked_model")) if stage.has("attacked_model") else None
    model = build_model(params.model)  # what every received file must match
    records = {image: load_received(stage.input("received", image=image), params, defence,
                                    image, model)
               for image in params.image_ids()}  # all refused or accepted before any compute
    attackers = [prepare_attacker(records[image], params.model, generator, device,
                                  params.scorer, public, trained) for image in params.image_ids()]
    costs: dict[str, float | None] = {}
    for image, attacker in zip(params.image_ids(), attackers, strict=True):
        client = records[image]["client_name"]
        if client not in costs:  # the same for every update of a client
            costs[client] = evaluation_cost(attacker, cfg)
    # Common random numbers: the same attack starts alike under every defence, and a
    # noise-gradient control like the attack it repeats.
    seeds = [derive_seed(params.seed, "attack", cfg.of or attack, image)
             for image in params.image_ids()]
    together = LOCKSTEP.get(cfg.method)
    pending: list[Callable[[], None]] = []
    with tqdm(total=len(attackers), desc=f"{attack} on {defence}", unit="update") as bar:
        for group in lockstep.groups(attackers, params.scorer, together is not None):
            images = [params.image_ids()[i] for i in group]
            fn = together if len(group) > 1 else one_by_one(ATTACKS.get(cfg.method))
            outcomes = run_attacks(fn, [attackers[i] for i in group], cfg,
                                   [seeds[i] for i in group],
                                   costs[records[images[0]]["client_name"]],
                                   params.compute_budget)
            for image, i, (best, trials, result) in zip(images, group, outcomes, strict=True):
                latent = best.latent if best.latent is not None else torch.zeros(0)
                marks = checkpoints_record(best, result["cost_per_evaluation"],
                                           attackers[i].client.batch_size)
                summary = {"image_id": image, "defence": defence, "attack": attack,
                           "generator": prior, **result}
                pending.append(partial(_write, stage, image, best.image, latent,
                                       curve_csv(trials), marks, summary))
            bar.update(len(group))
    for write in pending:  # only once every update is attacked: all new images, or none
        write()
    log.info("%s on %s: %d reconstructions", attack, defence, len(params.image_ids()))


def _write(stage: Stage, image: str, reconstruction: torch.Tensor, latent: torch.Tensor,
           curve: str, checkpoints: dict, result: dict) -> None:
    io.save_torch(stage.output("reconstruction", image=image), reconstruction)
    io.save_image(stage.output("reconstruction_png", image=image),
                  reconstruction.reshape(-1, *reconstruction.shape[-3:]))
    io.save_torch(stage.output("latent", image=image), latent)
    io.write_text(stage.output("curve", image=image), curve)
    io.save_torch(stage.output("checkpoints", image=image), checkpoints)
    io.write_json(stage.output("result", image=image), result)
