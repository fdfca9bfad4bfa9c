"""Stage metrics: the only join of reconstructions with the private images they came from,
and of each attack with its controls (``ggl.leakage``). One row per private image; at client
batch size B > 1 each image is scored against the reconstruction the optimal assignment gives
it (``ggl.metrics.match_batch``, per sample and per checkpoint), with its update's id and
whether the inferred label multiset was exact."""

from __future__ import annotations

from logging import Logger

import pandas as pd
import torch

from ggl import io
from ggl.config import image_id
from ggl.data import load_part
from ggl.leakage import CONVENTIONS as LEAKAGE_CONVENTIONS
from ggl.leakage import above_control, reid_pool, reid_rank, short_classes
from ggl.metrics import CONVENTIONS, Lpips, as_batches, evaluate, match_batch
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
    initial = build_model(params.model, device)
    models = {("initial", d): initial for d in params.defences}
    if stage.has("attacked_model"):  # the trained model each defence's federation reached
        for d in params.defences:
            models["trained", d] = build_model(params.model, device)
            models["trained", d].load_state_dict(io.load_torch(stage.input("attacked_model",
                                                                           defence=d)))
    lpips_metric = Lpips(params.lpips_stand_in, device)
    rows, curves, timings = [], [], []
    batched = params.batched()
    for defence, attack, update in params.runs():
        run_files = {"defence": defence, "attack": attack, "image": update}
        result_path = stage.input("result", **run_files)
        truth_path = stage.input("truth", defence=defence, image=update)
        result, truth = io.read_json(result_path), io.read_json(truth_path)
        with io.reading(result_path):
            timings.append({"defence": defence, "attack": attack, "update_id": update,
                            "evaluations": result["evaluations"],
                            "seconds": result["seconds"]})
        with io.reading(result_path):
            inferred = result.get("inferred_labels", [result["inferred_label"]])
        with io.reading(truth_path):
            model = models[truth["client"]["checkpoint"], defence]  # MSE-R: the attacked model
            originals = images[truth["private_indices"]]
            if len(truth["true_labels"]) != len(originals):
                raise ValueError("private_indices and true_labels differ in length")
        reconstruction = stage.input("reconstruction", **run_files)
        with io.reading(reconstruction):
            samples = as_batches(io.load_torch(reconstruction), len(originals))
            if samples.shape[1:] != (len(originals), *originals.shape[1:]):
                raise ValueError(f"shape {tuple(samples.shape)} is not that of the batch")
        io.finite(reconstruction, samples)
        # which reconstruction of each sample's batch each private image is scored against
        slots = [match_batch(batch, originals) for batch in samples]
        checkpoints = stage.input("checkpoints", **run_files)
        marks = io.load_torch(checkpoints)
        with io.reading(checkpoints):
            marked = as_batches(marks["images"], len(originals))
        mark_slots = [match_batch(batch, originals) for batch in marked]
        for i, (index, label) in enumerate(zip(truth["private_indices"], truth["true_labels"],
                                               strict=True)):
            image = image_id(index)
            stack = torch.stack([batch[slot[i]] for batch, slot in zip(samples, slots,
                                                                         strict=True)])
            label_inferred = inferred[slots[0][i]]
            original = originals[i]
            values = evaluate(stack.to(device), original[None].expand_as(stack).to(device),
                              model, lpips_metric)
            distractors = images[pool.get(label_inferred, [])]
            rank, top1 = reid_rank(stack, original, distractors)
            matched = {**marks, "images": torch.stack(
                [batch[slot[i]] for batch, slot in zip(marked, mark_slots, strict=True)])}
            curves += [{"client": truth["client_name"], "defence": defence, "attack": attack,
                        "image_id": image, **row}
                       for row in checkpoint_quality(matched, original)]
            rows.append({
                "image_id": image, "private_index": index, "client": truth["client_name"],
                **({"update_id": update, "labels_exact": sorted(inferred) == sorted(
                    truth["true_labels"])} if batched else {}),
                "defence": defence, "attack": attack, "method": result["method"],
                "epsilon": truth["defence"].get("epsilon"),  # dp-sgd: of the attacked update
                "samples": len(stack), **{k: sum(v) / len(v) for k, v in values.items()},
                "reid_rank_ssim": rank, "reid_top1_ssim": top1,
                "reid_candidates": len(distractors) + 1,
                "label_true": label, "label_inferred": label_inferred,
                "label_correct": label == label_inferred,
                "evaluations": result["evaluations"], "compute": result.get("compute"),
                "loss": result["loss"],
                "generator_stand_in": (result.get("generator") or {}).get("stand_in"),
            })
    frame = above_control(pd.DataFrame(rows))
    io.write_text(stage.output("metrics"), frame.to_csv(index=False))
    # wall-clock seconds apart: every other table holds the same bytes on every run
    io.write_text(stage.output("timings"), pd.DataFrame(timings).to_csv(index=False))
    io.write_json(stage.output("metrics_conventions"), {**CONVENTIONS, **LEAKAGE_CONVENTIONS})
    io.write_text(stage.output("quality_curves"), pd.DataFrame(curves).to_csv(index=False))
    log.info("%d rows -> %s", len(rows), stage.output("metrics"))
