"""Stage aggregate: the paper's tables and figures from metrics.csv."""

from __future__ import annotations

from logging import Logger

import pandas as pd
import torch

from ggl import io
from ggl.data import load_part
from ggl.frontier import (
    caption,
    frontier_html,
    frontier_markdown,
    frontier_plot,
    frontier_table,
    weakest_stopping,
)
from ggl.leakage import leakage_table
from ggl.metrics import as_batches, match_batch
from ggl.pipeline.registry import METRIC_PLOTS, Stage
from ggl.quality_curve import still_improving
from ggl.report import (
    check_complete,
    convergence_plot,
    epsilons,
    ggl_attacks,
    headline_metrics,
    lpips_column,
    metric_plot,
    quality_vs_compute_plot,
    reconstruction_grid,
    summarise,
    sweep_plot,
    tables,
)
from ggl.report_html import html_pages
from ggl.runtime import derive_seed
from ggl.threat_models import threat_model_markdown, threat_model_plot, threat_model_table


def run(stage: Stage, log: Logger) -> None:
    params = stage.params
    everything = pd.read_csv(stage.input("metrics"))
    check_complete(everything, params)
    curves = pd.read_csv(stage.input("quality_curves"))
    if stage.has("threat_models_csv"):
        write_threat_models(stage, everything)
    # the paper's tables and figures: of the first client protocol (all of them at once in
    # threat_models.*)
    first = next(iter(params.clients))
    frame = everything[everything["client"] == first].reset_index(drop=True)
    curves = curves[curves["client"] == first].reset_index(drop=True)
    summary = summarise(frame)
    leakage = leakage_table(frame, derive_seed(params.seed, "bootstrap")).merge(
        still_improving(curves), on=["defence", "attack"], how="left")
    lpips = lpips_column(frame)
    quality = io.read_json(stage.input("quality")) if stage.has("quality") else None
    texts = {**tables(frame, summary, leakage),
             **html_pages(frame, summary, leakage, params.experiment, quality,
                          params.generator.kind)}
    for name in stage.kind.outputs:
        if name in texts:
            io.write_text(stage.output(name), texts[name])
    io.write_json(stage.output("headline"), headline_metrics(frame, summary, leakage, quality))
    if stage.has("privacy_utility_png"):
        write_frontier(stage, leakage, len(params.private_images))

    images, _ = load_part(stage.input("private"))
    for image, (_, indices) in ((u, (b.client, b.indices)) for u, b in params.updates().items()):
        # a grid shows the first of the prior control's samples; a batch side by side, each
        # reconstruction under the private image it is matched to
        originals = images[list(indices)]
        shown = {d: {a: side_by_side(matched(as_batches(io.load_torch(stage.input(
                         "reconstruction", defence=d, attack=a, image=image)),
                         len(indices))[0], originals))
                     for a in params.attacks} for d in params.defences}
        io.save_figure(stage.output("grid", image=image), reconstruction_grid(
            side_by_side(originals), shown, f"{params.experiment}: reconstructions of {image}",
            epsilons(frame)))
    io.save_figure(stage.output("quality_vs_compute"),
                   quality_vs_compute_plot(curves, epsilons(frame)))
    for metric in METRIC_PLOTS:
        column = lpips if metric == "lpips" else metric
        io.save_figure(stage.output("metric_plot", metric=metric), metric_plot(frame, column))
    for kind, strengths in params.sweeps().items():
        io.save_figure(stage.output("sweep_plot", sweep=kind),
                       sweep_plot(frame, kind, strengths, lpips))
    if stage.has("convergence"):
        curves = {attack: [_best_curve(stage, attack, image) for image in params.image_ids()]
                  for attack in ggl_attacks(frame)}
        io.save_figure(stage.output("convergence"), convergence_plot(curves, "none"))
        io.write_text(stage.output("convergence_csv"), pd.concat(
            [curve.assign(attack=attack, image_id=image)[
                ["attack", "image_id", "evaluations", "best_loss"]]
             for attack, frames in curves.items()
             for image, curve in zip(params.image_ids(), frames, strict=True)]).to_csv(index=False))
    log.info("tables and figures of %d runs", len(frame))


def write_threat_models(stage: Stage, frame: pd.DataFrame) -> None:
    """Leakage under every client protocol (ggl.threat_models)."""
    params = stage.params
    utility = ({d: io.read_json(stage.input("utility_summary", defence=d))
                for d in params.defences} if stage.has("utility_summary") else None)
    table = threat_model_table(frame, params, utility, derive_seed(params.seed, "bootstrap"))
    io.write_text(stage.output("threat_models_csv"), table.to_csv(index=False))
    io.write_text(stage.output("threat_models_md"), threat_model_markdown(table))
    io.save_figure(stage.output("threat_models_png"), threat_model_plot(table))


def matched(batch: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """A reconstructed batch (B, 3, H, W) in the order of the private images it matches."""
    return batch[match_batch(batch, originals)]


def side_by_side(batch: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (3, H, B W)."""
    return torch.cat(list(batch), dim=2)


def write_frontier(stage: Stage, leakage: pd.DataFrame, images: int) -> None:
    """The privacy-utility frontier: figure and tables (ggl.frontier)."""
    params = stage.params
    utility = {d: io.read_json(stage.input("utility_summary", defence=d)) for d in params.defences}
    table = frontier_table(leakage, utility, params)
    stopping = weakest_stopping(table)
    lines = caption(params, utility, images)
    io.write_text(stage.output("privacy_utility_csv"), table.to_csv(index=False))
    io.write_text(stage.output("privacy_utility_md"), frontier_markdown(table, stopping, lines))
    io.write_text(stage.output("privacy_utility_html"),
                  frontier_html(table, stopping, lines, params.experiment))
    io.save_figure(stage.output("privacy_utility_png"), frontier_plot(table))


def _best_curve(stage: Stage, attack: str, image: str) -> pd.DataFrame:
    """The best trial's rows of one run's curve.csv, without a defence."""
    run_files = {"defence": "none", "attack": attack, "image": image}
    curve = pd.read_csv(stage.input("curve", **run_files))
    best = io.read_json(stage.input("result", **run_files))["best_trial"]
    return curve[curve["trial"] == best]
