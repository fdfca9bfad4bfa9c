"""Stage metrics: the only join of reconstructions with the private images they came from."""

from __future__ import annotations

from logging import Logger

import pandas as pd

from ggl import io
from ggl.data import load_part
from ggl.metrics import CONVENTIONS, Lpips, evaluate
from ggl.models import build_model
from ggl.pipeline.registry import Stage
from ggl.runtime import resolve_device


def run(stage: Stage, log: Logger) -> None:
    params = stage.params
    device = resolve_device(params.device)
    images, _ = load_part(stage.input("private"))
    model = build_model(params.model, device)
    lpips_metric = Lpips(params.lpips_stand_in, device)
    rows = []
    for defence, attack, image in params.runs():
        run_files = {"defence": defence, "attack": attack, "image": image}
        result = io.read_json(stage.input("result", **run_files))
        truth = io.read_json(stage.input("truth", defence=defence, image=image))
        reconstruction = io.load_torch(stage.input("reconstruction", **run_files))
        original = images[truth["private_index"]][None].to(device)
        values = evaluate(reconstruction[None].to(device), original, model, lpips_metric)
        rows.append({
            "image_id": image, "private_index": truth["private_index"],
            "defence": defence, "attack": attack, "method": result["method"],
            **{k: v[0] for k, v in values.items()},
            "label_true": truth["true_label"], "label_inferred": result["inferred_label"],
            "label_correct": truth["true_label"] == result["inferred_label"],
            "evaluations": result["evaluations"], "seconds": result["seconds"],
            "loss": result["loss"],
            "generator_stand_in": (result.get("generator") or {}).get("stand_in"),
        })
    io.write_text(stage.output("metrics"), pd.DataFrame(rows).to_csv(index=False))
    io.write_json(stage.output("metrics_conventions"), CONVENTIONS)
    log.info("%d rows -> %s", len(rows), stage.output("metrics"))
