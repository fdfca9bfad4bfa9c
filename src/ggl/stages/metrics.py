"""Stage metrics: the only join of reconstructions with the private images they came from,
and of each attack with its controls (``ggl.leakage``). One row per private image; at client
batch size B > 1 each image is scored against the reconstruction the optimal assignment gives
it (``ggl.metrics.match_batch``, per sample and per checkpoint), with its update's id and
whether the inferred label multiset was exact; its re-identification ranks it among its own
class against the whole batch (``ggl.leakage.reid_rank_among``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from logging import Logger
from typing import Any

import pandas as pd
import torch
from torch import nn

from ggl import io
from ggl.config import image_id
from ggl.data import load_part
from ggl.leakage import CONVENTIONS as LEAKAGE_CONVENTIONS
from ggl.leakage import above_control, reid_pool, reid_rank_among, short_classes
from ggl.metrics import (
    CONVENTIONS,
    Lpips,
    SsimSide,
    Truth,
    as_batches,
    evaluate,
    match_batch,
    ssim_side,
)
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
    runs = params.runs()
    scored: dict[tuple[str, str, str], RunScores] = {}
    # one update at a time: what scoring its private images computes once (``PrivateImage``)
    # is kept while its runs are scored and no longer (the LPIPS features of one 224 x 224
    # image take 25 MB); the tables keep params' order of runs
    for update in dict.fromkeys(u for _, _, u in runs):
        private = PrivateImages(images, pool, device, lpips_metric)
        for defence, attack, _ in (r for r in runs if r[2] == update):
            scored[defence, attack, update] = score_run(stage, defence, attack, update, models,
                                                        private)
    rows = [row for r in runs for row in scored[r].rows]
    frame = above_control(pd.DataFrame(rows))
    io.write_text(stage.output("metrics"), frame.to_csv(index=False))
    # wall-clock seconds apart: every other table holds the same bytes on every run
    io.write_text(stage.output("timings"),
                  pd.DataFrame([scored[r].timing for r in runs]).to_csv(index=False))
    io.write_json(stage.output("metrics_conventions"), {**CONVENTIONS, **LEAKAGE_CONVENTIONS})
    io.write_text(stage.output("quality_curves"), pd.DataFrame(
        [curve for r in runs for curve in scored[r].curves]).to_csv(index=False))
    log.info("%d rows -> %s", len(rows), stage.output("metrics"))


@dataclass
class RunScores:
    """One run's lines of timings.csv, metrics.csv (one per private image) and
    quality_vs_compute.csv."""

    timing: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)


class PrivateImage:
    """One private image and what scoring reconstructions of it needs, each computed once for
    all the runs of its update: its LPIPS and penultimate features per batch size
    (``ggl.metrics.Truth``), its re-identification candidates' SSIM statistics per inferred
    class, and the scores of each reconstruction already scored (a control's reconstruction is
    the same under every defence: same bytes, same scores)."""

    def __init__(self, image: torch.Tensor, images: torch.Tensor, pool: dict[int, list[int]],
                 device: torch.device, lpips_metric: Lpips) -> None:
        self.image, self.images, self.pool = image, images, pool
        self.device, self.lpips_metric = device, lpips_metric
        self._truths: dict[int, Truth] = {}
        self._candidates: dict[int, SsimSide] = {}
        self._scores: dict[tuple[Any, ...], tuple[dict[str, list[float]], float, float]] = {}

    def distractors(self, label: int) -> torch.Tensor:
        """The re-identification pool of a class (``ggl.leakage.reid_pool``)."""
        return self.images[self.pool.get(label, [])]

    def score(self, stack: torch.Tensor, model: nn.Module, label: int,
              batches: torch.Tensor | None = None
              ) -> tuple[dict[str, list[float]], float, float]:
        """Every metric of each image of ``stack`` (n, 3, H, W) against this image under
        ``model`` (MSE-R), and its re-identification (mean rank, top-1 share) among the pool
        of class ``label``: against ``batches`` (n, B, 3, H, W), the whole client batches
        that ``stack`` was assigned from (``ggl.leakage.reid_rank_among``), where given."""
        batches = stack[:, None] if batches is None else batches
        key = (digest(stack), model, label, digest(batches))
        if key not in self._scores:
            n = len(stack)
            if n not in self._truths:
                self._truths[n] = Truth(self.image[None].expand_as(stack).to(self.device))
            if label not in self._candidates:
                self._candidates[label] = ssim_side(
                    torch.cat([self.image[None], self.distractors(label)]))
            values = evaluate(stack.to(self.device), self._truths[n], model, self.lpips_metric)
            rank, top1 = reid_rank_among(ssim_side(batches.flatten(0, 1)),
                                         self._candidates[label], batches.shape[1])
            self._scores[key] = values, rank, top1
        return self._scores[key]


class PrivateImages:
    """The private split as one update's runs score it: each ``PrivateImage`` made on first
    use and kept."""

    def __init__(self, images: torch.Tensor, pool: dict[int, list[int]], device: torch.device,
                 lpips_metric: Lpips) -> None:
        self.images, self.pool, self.device, self.lpips_metric = images, pool, device, lpips_metric
        self._scorers: dict[int, PrivateImage] = {}

    def __getitem__(self, index: int) -> PrivateImage:
        if index not in self._scorers:
            self._scorers[index] = PrivateImage(self.images[index], self.images, self.pool,
                                                self.device, self.lpips_metric)
        return self._scorers[index]


def digest(tensor: torch.Tensor) -> tuple[str, tuple[int, ...], str]:
    """A tensor's dtype, shape and SHA-256 of its values: equal for equal bytes."""
    values = tensor.detach().cpu().contiguous().numpy().tobytes()
    return str(tensor.dtype), tuple(tensor.shape), hashlib.sha256(values).hexdigest()


def score_run(stage: Stage, defence: str, attack: str, update: str,
              models: dict[tuple[str, str], nn.Module], private: PrivateImages) -> RunScores:
    """One run's reconstruction against each private image of its update."""
    params = stage.params
    run_files = {"defence": defence, "attack": attack, "image": update}
    result_path = stage.input("result", **run_files)
    truth_path = stage.input("truth", defence=defence, image=update)
    result, truth = io.read_json(result_path), io.read_json(truth_path)
    with io.reading(result_path):
        scores = RunScores({"defence": defence, "attack": attack, "update_id": update,
                            "evaluations": result["evaluations"], "seconds": result["seconds"]})
    with io.reading(result_path):
        inferred = result.get("inferred_labels", [result["inferred_label"]])
    with io.reading(truth_path):
        model = models[truth["client"]["checkpoint"], defence]  # MSE-R: the attacked model
        originals = private.images[truth["private_indices"]]
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
        stack = torch.stack([batch[slot[i]] for batch, slot in zip(samples, slots, strict=True)])
        label_inferred = inferred[slots[0][i]]
        scorer = private[index]
        # the re-identification pool's class: at B > 1 no inferred label belongs to an image
        # but through the assignment against the truth, so the truth's own class
        pool_label = label if len(originals) > 1 else label_inferred
        values, rank, top1 = scorer.score(stack, model, pool_label, samples)
        matched = {**marks, "images": torch.stack(
            [batch[slot[i]] for batch, slot in zip(marked, mark_slots, strict=True)])}
        scores.curves += [{"client": truth["client_name"], "defence": defence, "attack": attack,
                           "image_id": image, **row}
                          for row in checkpoint_quality(matched, originals[i])]
        scores.rows.append({
            "image_id": image, "private_index": index, "client": truth["client_name"],
            **({"update_id": update, "labels_exact": sorted(inferred) == sorted(
                truth["true_labels"])} if params.batched() else {}),
            "defence": defence, "attack": attack, "method": result["method"],
            "epsilon": truth["defence"].get("epsilon"),  # dp-sgd: of the attacked update
            "samples": len(stack), **{k: sum(v) / len(v) for k, v in values.items()},
            "reid_rank_ssim": rank, "reid_top1_ssim": top1,
            "reid_candidates": len(scorer.distractors(pool_label)) + 1,
            "label_true": label, "label_inferred": label_inferred,
            "label_correct": label == label_inferred,
            "evaluations": result["evaluations"], "compute": result.get("compute"),
            "loss": result["loss"],
            "generator_stand_in": (result.get("generator") or {}).get("stand_in"),
        })
    return scores
