"""Stage metrics: the only join of reconstructions with the private images they came from,
and of each attack with its controls (``ggl.leakage``)."""

from __future__ import annotations

from logging import Logger

import pandas as pd

from ggl import io
from ggl.data import load_part
from ggl.leakage import CONVENTIONS as LEAKAGE_CONVENTIONS
from ggl.leakage import above_control, reid_pool, reid_rank, short_classes
from ggl.metrics import CONVENTIONS, Lpips, as_stack, evaluate
from ggl.models import build_model
from ggl.pipeline.registry import Stage
from ggl.quality_curve import checkpoint_quality
from ggl.runtime import resolve_device


def run(stage: Stage, log: Logger) -> None:
    params = stage.params
    device = resolve_device(params.device)
    images, labels = load_part(stage.input("private"))
    pool = reid_pool(labels, params.private_images, params.reid_pool)
    if short := short_classes(pool, params.reid_pool):
        log.warning("metrics.reid_pool: fewer than %d unattacked private images for classes "
                    "%s (class: images); their rows rank among fewer (reid_candidates)",
                    params.reid_pool, short)
    model = build_model(params.model, device)
    lpips_metric = Lpips(params.lpips_stand_in, device)
    rows, curves = [], []
    for defence, attack, image in params.runs():
        run_files = {"defence": defence, "attack": attack, "image": image}
        result = io.read_json(stage.input("result", **run_files))
        truth = io.read_json(stage.input("truth", defence=defence, image=image))
        stack = as_stack(io.load_torch(stage.input("reconstruction", **run_files)))
        original = images[truth["private_index"]]
        values = evaluate(stack.to(device), original[None].expand_as(stack).to(device), model,
                          lpips_metric)
        distractors = images[pool.get(result["inferred_label"], [])]
        rank, top1 = reid_rank(stack, original, distractors)
        curves += [{"defence": defence, "attack": attack, "image_id": image, **row}
                   for row in checkpoint_quality(
                       io.load_torch(stage.input("checkpoints", **run_files)), original)]
        rows.append({
            "image_id": image, "private_index": truth["private_index"],
            "defence": defence, "attack": attack, "method": result["method"],
            "epsilon": truth["defence"].get("epsilon"),  # dp-sgd: of the attacked update
            "samples": len(stack), **{k: sum(v) / len(v) for k, v in values.items()},
            "reid_rank_ssim": rank, "reid_top1_ssim": top1,
            "reid_candidates": len(distractors) + 1,
            "label_true": truth["true_label"], "label_inferred": result["inferred_label"],
            "label_correct": truth["true_label"] == result["inferred_label"],
            "evaluations": result["evaluations"], "compute": result.get("compute"),
            "seconds": result["seconds"],
            "loss": result["loss"],
            "generator_stand_in": (result.get("generator") or {}).get("stand_in"),
        })
    frame = above_control(pd.DataFrame(rows))
    io.write_text(stage.output("metrics"), frame.to_csv(index=False))
    io.write_json(stage.output("metrics_conventions"), {**CONVENTIONS, **LEAKAGE_CONVENTIONS})
    io.write_text(stage.output("quality_curves"), pd.DataFrame(curves).to_csv(index=False))
    log.info("%d rows -> %s", len(rows), stage.output("metrics"))
