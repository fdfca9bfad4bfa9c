"""The paper's tables and figures, built from the metrics stage's table (and, for figures,
the reconstructions and loss curves). Functions take values and return text or figures; the
aggregate stage writes them where the registry says."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from ggl.config import STRENGTH, Params, image_id
from ggl.errors import MissingRunError
from ggl.leakage import INTERVALS
from ggl.settings import CONTROLS, GGL_OPTIMISERS


def lpips_column(frame: pd.DataFrame) -> str:
    return next(c for c in frame.columns if c.startswith("lpips"))


EPSILON_NOTE = ("DP-SGD's epsilon (ε) here is that of the attacked update alone: one step on the "
                "client's image taken whole (sampling rate 1), by Opacus' RDP accountant at the "
                "defence's delta; the privacy-utility table gives federated training's")


def epsilons(frame: pd.DataFrame) -> dict[str, float]:
    """{dp-sgd defence: epsilon of its attacked update} (the metrics stage's column)."""
    if "epsilon" not in frame:
        return {}
    rows = frame.dropna(subset=["epsilon"])
    return rows.groupby("defence", sort=False)["epsilon"].first().to_dict()


def defence_label(defence: str, eps: dict[str, float]) -> str:
    """A defence's name, with its epsilon where it has one (every table and figure)."""
    return f"{defence} (ε={eps[defence]:.3g})" if defence in eps else defence


def epsilon_note(frame: pd.DataFrame) -> list[str]:
    eps = epsilons(frame)
    return [f"{EPSILON_NOTE}: " + ", ".join(f"{d} ε={e:.3g}" for d, e in eps.items())] \
        if eps else []


def metric_columns(frame: pd.DataFrame) -> list[str]:
    return ["mse_i", "psnr_db_pm1", "psnr_db_01", "ssim", lpips_column(frame), "mse_r"]


def ggl_attacks(frame: pd.DataFrame) -> list[str]:
    """The attacks whose method is GGL's (whatever params call them), in params' order."""
    return list(dict.fromkeys(frame.loc[frame["method"].isin(GGL_OPTIMISERS), "attack"]))


def check_complete(frame: pd.DataFrame, params: Params) -> None:
    """Every (client, defence, attack, private image) params ask for has its metrics row."""
    have = set(zip(frame["client"], frame["defence"], frame["attack"], frame["image_id"],
                   strict=True))
    images = [image_id(i) for i in params.private_images]  # rows are per image at any B
    missing = [f"{c}/{d}/{a}/{i}" for c in params.clients for d in params.defences
               for a in params.attacks for i in images if (c, d, a, i) not in have]
    if missing:
        raise MissingRunError(f"metrics.csv lacks {len(missing)} runs that params ask for, "
                              f"e.g. {', '.join(missing[:5])}; rerun the metrics stage")


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over images of every metric, per (defence, attack)."""
    columns = metric_columns(frame)
    grouped = frame.groupby(["defence", "attack"], sort=False)[columns]
    stats = grouped.agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    stats["images"] = grouped.size()
    stats["label_accuracy"] = frame.groupby(["defence", "attack"], sort=False)[
        "label_correct"].mean()
    if "epsilon" in frame:  # dp-sgd: of the attacked update
        stats["epsilon"] = frame.groupby(["defence", "attack"], sort=False)["epsilon"].first()
    return stats.reset_index()


def mean_std(mean: float, std: float) -> str:
    """A table cell. Four significant digits: MSE-R is often ~1e-4, which a fixed .3f would
    print as 0.000."""
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.4g}" if pd.isna(std) else f"{mean:.4g} ± {std:.3g}"


def table_markdown(summary: pd.DataFrame, rows: str, columns: str, metric: str) -> str:
    cells = summary.assign(cell=[mean_std(m, s) for m, s in zip(
        summary[f"{metric}_mean"], summary[f"{metric}_std"], strict=True)])
    pivot = cells.pivot(index=rows, columns=columns, values="cell")
    pivot = pivot.reindex(index=list(dict.fromkeys(summary[rows])),
                          columns=list(dict.fromkeys(summary[columns])))
    return pivot.to_markdown()


TABLE_HEADER = ("Mean ± standard deviation over {n} private images. PSNR in dB: psnr_db_pm1 is "
                "the paper's convention ([-1, 1] images, peak 1), psnr_db_01 the usual one "
                "(6.02 dB higher). {lpips}. Budgets in objective evaluations.\n\n")


def lpips_note(column: str) -> str:
    if column.endswith("stand_in"):
        return ("LPIPS is a STAND-IN: VGG16 backbone with random weights (the ImageNet "
                "weights were not available), not comparable with published LPIPS")
    return "LPIPS: v0.1, VGG16 backbone"


def tables(frame: pd.DataFrame, summary: pd.DataFrame, leakage: pd.DataFrame
           ) -> dict[str, str]:
    """The tables' texts by file name: leakage, summary and Table 3 always, Table 2 (GGL
    attacks, by method, without a defence) when the frame has it."""
    lpips = lpips_column(frame)
    header = TABLE_HEADER.format(n=frame["image_id"].nunique(), lpips=lpips_note(lpips))
    header += "".join(f"{n}.\n\n" for n in epsilon_note(frame))
    out = {"summary_csv": summary.to_csv(index=False),
           "leakage_csv": leakage.to_csv(index=False),
           "leakage_md": leakage_markdown(frame, leakage)}
    no_defence = summary[(summary["defence"] == "none")
                         & summary["attack"].isin(ggl_attacks(frame))]
    if len(no_defence):
        cols = [c for c in no_defence.columns if c.endswith(("_mean", "_std"))]
        out["table2_csv"] = no_defence[["attack", *cols]].to_csv(index=False)
        text = "# Table 2: GGL optimisers without defence\n\n" + header
        for metric in metric_columns(frame):
            text += f"## {metric}\n\n" + table_markdown(no_defence, "attack", "defence",
                                                       metric) + "\n\n"
        out["table2_md"] = text
    text = "# Table 3: every attack under every defence\n\n" + header
    for metric in ("psnr_db_pm1", lpips, "ssim", "mse_i", "mse_r"):
        text += f"## {metric}\n\n" + table_markdown(summary, "attack", "defence", metric) + "\n\n"
    out["table3_md"] = text
    out["table3_csv"] = summary.to_csv(index=False)
    return out


LEAKAGE_KEYS = ("psnr_db_pm1_above_control", "psnr_db_pm1_above_control_low",
                "psnr_db_pm1_above_control_high", "psnr_db_pm1_control", "reid_top1_ssim",
                "reid_top1_ssim_low", "reid_top1_ssim_high", "reid_top1_chance",
                "reid_top1_ssim_above_control", "reid_top1_ssim_above_control_low",
                "reid_top1_ssim_above_control_high", "verdict",
                "still_improving", "gain_db")
TEXT_KEYS = ("verdict", "still_improving", "gain_db")  # the page's, not headline.json's


def headline(frame: pd.DataFrame, summary: pd.DataFrame, leakage: pd.DataFrame) -> pd.DataFrame:
    """Per defence, the best GGL attack, the best baseline (neither GGL nor a control) and the
    best control by mean PSNR ([-1, 1] convention), with their mean LPIPS and SSIM and (from
    ``leakage``, ``ggl.leakage.leakage_table``) their PSNR above the strongest control and
    re-identification rate; a side is NaN when params have no attack of that kind."""
    lpips = lpips_column(frame)
    is_ggl = summary["attack"].isin(ggl_attacks(frame))
    is_control = summary["attack"].isin(frame.loc[frame["method"].isin(CONTROLS), "attack"])
    cells = leakage.set_index(["defence", "attack"])
    rows = []
    for defence in dict.fromkeys(summary["defence"]):
        row: dict[str, Any] = {"defence": defence}
        for side, mask in (("ggl", is_ggl), ("baseline", ~is_ggl & ~is_control),
                           ("control", is_control)):
            part = summary[mask & (summary["defence"] == defence)]
            best = part.loc[part["psnr_db_pm1_mean"].idxmax()] if len(part) else None
            row[f"{side}_attack"] = None if best is None else best["attack"]
            for metric in ("psnr_db_pm1", lpips, "ssim"):
                key = "lpips" if metric == lpips else metric
                row[f"{side}_{key}"] = math.nan if best is None else best[f"{metric}_mean"]
            for key in LEAKAGE_KEYS:
                row[f"{side}_{key}"] = (math.nan if best is None or key not in cells
                                        else cells.loc[(defence, best["attack"]), key])
        row["margin_db"] = row["ggl_psnr_db_pm1"] - row["baseline_psnr_db_pm1"]
        rows.append(row)
    return pd.DataFrame(rows)


def headline_metrics(frame: pd.DataFrame, summary: pd.DataFrame, leakage: pd.DataFrame,
                     quality: dict[str, Any] | None) -> dict[str, Any]:
    """``headline`` as the figures experiments are compared by (`dvc exp show`, `dvc metrics
    diff`, the reference check), with the generator's confidence ratio. The LPIPS key names its
    backbone (``lpips_vgg_stand_in``: random weights)."""
    lpips = lpips_column(frame)
    out: dict[str, Any] = {}
    for row in headline(frame, summary, leakage).to_dict("records"):
        out[row["defence"]] = {side: {
            "attack": row[f"{side}_attack"],
            "psnr_db_pm1": round(float(row[f"{side}_psnr_db_pm1"]), 3),
            lpips: round(float(row[f"{side}_lpips"]), 4),
            "ssim": round(float(row[f"{side}_ssim"]), 4),
            **{key: _rounded(row[f"{side}_{key}"]) for key in LEAKAGE_KEYS
               if side != "control" and key not in TEXT_KEYS},
        } for side in ("ggl", "baseline", "control") if row[f"{side}_attack"] is not None}
    if quality is not None:
        out["generator"] = {"confidence_ratio": round(quality["confidence_ratio"], 4)}
    return out


def _rounded(value: Any) -> Any:
    """A JSON-safe headline value: numbers to 3 decimals, NaN as null, names as they are."""
    if isinstance(value, str) or value is None:
        return value
    return None if pd.isna(value) else round(float(value), 3)


LEAKAGE_HEADER = ("Leakage beyond what the attacker gets without the gradient, per defence and "
                  "attack, over {n} private images. Above control: the attack's metric minus "
                  "that of the strongest control (prior samples, the class-mean public image, "
                  "the GGL attack on a noise gradient: the one with the best mean) on the same "
                  "image; positive = more leakage (LPIPS: control minus attack). "
                  "Re-identification: the true image ranked by SSIM among itself and other "
                  "private images of the inferred class; top-1 rate against chance, and above "
                  "the strongest control's. The verdict: leakage where the PSNR or the "
                  "re-identification interval above control lies above 0. "
                  "{intervals}. PSNR in dB, [-1, 1] convention. {lpips}.\n\n")


def leakage_markdown(frame: pd.DataFrame, leakage: pd.DataFrame) -> str:
    """The leakage table as Markdown: one row per (defence, attack)."""
    lpips = lpips_column(frame)

    def interval(row: pd.Series, key: str) -> str:
        return (f"{row[key]:.3g} [{row[key + '_low']:.3g}, {row[key + '_high']:.3g}]"
                if pd.notna(row[key]) else "n/a")

    eps = epsilons(frame)
    table = pd.DataFrame({
        "defence": [defence_label(d, eps) for d in leakage["defence"]],
        "attack": leakage["attack"],
        "PSNR above control (dB)": [interval(r, "psnr_db_pm1_above_control")
                                    for _, r in leakage.iterrows()],
        "strongest control": leakage["psnr_db_pm1_control"],
        "SSIM above control": [interval(r, "ssim_above_control") for _, r in leakage.iterrows()],
        "LPIPS above control": [interval(r, f"{lpips}_above_control")
                                for _, r in leakage.iterrows()],
        "re-identified (top-1)": [f"{interval(r, 'reid_top1_ssim')}, chance "
                                  f"{r['reid_top1_chance']:.3g}" for _, r in leakage.iterrows()],
        "re-identified above control": [interval(r, "reid_top1_ssim_above_control")
                                        for _, r in leakage.iterrows()],
        "verdict": leakage["verdict"],
        "at its budget": ["still improving" if r.get("still_improving") == 1 else ""
                          for _, r in leakage.iterrows()]})
    header = LEAKAGE_HEADER.format(n=frame["image_id"].nunique(), intervals=INTERVALS,
                                   lpips=lpips_note(lpips))
    notes = "".join(f"{n}.\n\n" for n in epsilon_note(frame))
    return ("# Leakage above control\n\n" + header + notes + table.to_markdown(index=False)
            + "\n")


# --- figures -----------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def sweep_plot(frame: pd.DataFrame, kind: str, strengths: dict[str, float], lpips: str) -> Any:
    """Attack quality against the defence's strength, one line per attack."""
    import seaborn as sns

    plt = _plt()
    rows = frame[frame["defence"].isin(strengths)].assign(
        strength=lambda f: f["defence"].map(strengths))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, metric in zip(axes, ("psnr_db_pm1", lpips), strict=True):
        sns.lineplot(rows, x="strength", y=metric, hue="attack", marker="o", errorbar="sd", ax=ax,
                     legend="auto" if ax is axes[-1] else False)
        ax.set_xlabel(f"{kind} {STRENGTH[kind]}")
        clamp_to_range(ax, metric)
    legend_outside(axes[-1])
    eps = epsilons(rows)
    note = ("; ε of the attacked update: " + ", ".join(
        f"{strengths[d]:g}: {e:.3g}" for d, e in eps.items())) if eps else ""
    fig.suptitle(f"attack quality against {kind} strength (mean ± sd over images){note}",
                 fontsize=9)
    fig.tight_layout()
    return fig


def compose_grid(cells: list[list[torch.Tensor]], gap: int) -> np.ndarray:
    """Rows of (3, H, W) images in [-1, 1], all of one shape, as one (H', W', 3) image in
    [0, 1] with ``gap`` white pixels between cells: one imshow instead of one matplotlib axes
    per cell (building and drawing those took most of the aggregate stage's time)."""
    height, width = cells[0][0].shape[1:]
    rows, columns = len(cells), len(cells[0])
    out = np.ones((rows * (height + gap) - gap, columns * (width + gap) - gap, 3),
                  dtype=np.float32)
    for i, row in enumerate(cells):
        for j, image in enumerate(row):
            top, left = i * (height + gap), j * (width + gap)
            out[top:top + height, left:left + width] = (
                (image.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()
    return out


def reconstruction_grid(private: torch.Tensor, reconstructions: dict[str, dict[str, Any]],
                        title: str, eps: dict[str, float] | None = None) -> Any:
    """Rows: the private image, then one per attack; columns: defences (with ``eps``, the
    epsilon of each dp-sgd defence). ``reconstructions``: {defence: {attack: (3, H, W)}}."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    plt = _plt()
    defences = list(reconstructions)
    attacks = list(reconstructions[defences[0]])
    cells = [[private] * len(defences),
             *([reconstructions[d][a] for d in defences] for a in attacks)]
    height, width = private.shape[1:]
    gap = max(1, round(0.2 * min(height, width)))  # matplotlib's default space between axes
    fig, ax = plt.subplots(figsize=(1.3 * len(defences) + 0.8, 1.3 * (len(attacks) + 1)))
    ax.imshow(compose_grid(cells, gap))
    # each cell framed, as an axes of its own was: one collection, not one artist per cell
    ax.add_collection(PatchCollection(
        [Rectangle((j * (width + gap) - 0.5, i * (height + gap) - 0.5), width, height)
         for i in range(len(cells)) for j in range(len(defences))],
        facecolor="none", edgecolor="black", linewidth=0.8))
    ax.set_xticks([j * (width + gap) + (width - 1) / 2 for j in range(len(defences))],
                  [defence_label(d, eps or {}) for d in defences], fontsize=8)
    ax.set_yticks([i * (height + gap) + (height - 1) / 2 for i in range(len(cells))],
                  ["private", *attacks], fontsize=8, rotation=90, va="center")
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=9)
    return fig


# What each metric can be: PSNR on [-1, 1] images (peak 1) is at least 10 log10(1 / 4), MSE
# being at most 4; on [0, 1] images at least 0 dB. LPIPS has no upper bound.
METRIC_RANGE: dict[str, tuple[float, float]] = {
    "psnr_db_pm1": (10 * math.log10(1 / 4), math.inf), "psnr_db_01": (0.0, math.inf),
    "ssim": (-1.0, 1.0), "lpips": (0.0, math.inf), "mse_i": (0.0, 4.0), "mse_r": (0.0, math.inf)}
BETTER = {"psnr_db_pm1": "higher", "psnr_db_01": "higher", "ssim": "higher", "lpips": "lower",
          "mse_i": "lower", "mse_r": "lower"}  # for the attacker: more leakage


def metric_range(metric: str) -> tuple[float, float]:
    return METRIC_RANGE["lpips" if metric.startswith("lpips") else metric]


def clamp_to_range(ax: Any, metric: str) -> None:
    """Keep the y axis within the values the metric can take (autoscaling pads past them)."""
    low, high = metric_range(metric)
    bottom, top = ax.get_ylim()
    ax.set_ylim(max(bottom, low), min(top, high))


def legend_outside(ax: Any, **kwargs: Any) -> None:
    """The legend right of the axes, where it covers no data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=7,
              frameon=False, **kwargs)


def _spread(n: int, width: float) -> np.ndarray:
    """Fixed horizontal offsets for n points, so that equal values stay visible side by side."""
    return np.linspace(-width / 2, width / 2, n) if n > 1 else np.zeros(1)


def metric_plot(frame: pd.DataFrame, metric: str) -> Any:
    """Per-image values of one metric (points) with their mean (a bar across them), per defence
    (x) and attack (colour)."""
    from matplotlib.lines import Line2D

    plt = _plt()
    defences = list(dict.fromkeys(frame["defence"]))
    attacks = list(dict.fromkeys(frame["attack"]))
    slot = 0.8 / len(attacks)
    fig, ax = plt.subplots(figsize=(1.3 * len(defences) + 2.5, 3.5))
    for j, attack in enumerate(attacks):
        for i, defence in enumerate(defences):
            values = frame.loc[(frame["defence"] == defence) & (frame["attack"] == attack),
                               metric].to_numpy(dtype=float)
            values = values[np.isfinite(values)]  # PSNR is inf for an exact copy
            if not len(values):
                continue
            x = i - 0.4 + slot * (j + 0.5)
            ax.scatter(x + _spread(len(values), slot * 0.5), values, s=10, color=f"C{j}",
                       alpha=0.8, linewidths=0, label=attack if i == 0 else None)
            ax.hlines(values.mean(), x - slot * 0.45, x + slot * 0.45, color=f"C{j}", lw=2)
    for i in range(1, len(defences)):
        ax.axvline(i - 0.5, color="0.88", lw=0.8)
    eps = epsilons(frame)
    ax.set_xticks(range(len(defences)), [defence_label(d, eps) for d in defences], fontsize=8)
    ax.set_xlim(-0.5, len(defences) - 0.5)
    ax.set_ylabel(f"{metric} ({BETTER['lpips' if metric.startswith('lpips') else metric]} = "
                  "more leakage)", fontsize=8)
    clamp_to_range(ax, metric)
    handles, _ = ax.get_legend_handles_labels()
    legend_outside(ax, handles=[*handles, Line2D([], [], color="0.3", lw=2, label="mean")],
                   title="attack")
    ax.set_title(f"{metric}: one point per private image, bar = mean", fontsize=9)
    return fig


def convergence_plot(curves: dict[str, list[pd.DataFrame]], defence: str) -> Any:
    """GGL's objective against evaluations, one colour per attack, one line per image.
    ``curves``: {attack: [its best trial's rows of curve.csv, one frame per image]}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for colour, (attack, frames) in enumerate(curves.items()):
        for k, curve in enumerate(frames):
            ax.plot(curve["evaluations"], curve["best_loss"], color=f"C{colour}", lw=0.9,
                    alpha=0.8, label=attack if k == 0 else None)
    ax.set_xlabel("objective evaluations")
    ax.set_ylabel("best GGL objective so far")
    ax.set_yscale("log")
    ax.set_title(f"convergence under defence '{defence}'", fontsize=9)
    legend_outside(ax)
    return fig


def quality_vs_compute_plot(frame: pd.DataFrame, eps: dict[str, float] | None = None) -> Any:
    """PSNR of the best-so-far reconstruction against compute, one panel per defence, one
    colour per attack: per-image checkpoints as faint points, their mean over images as a line.
    ``frame``: checkpoint rows (``ggl.quality_curve``). An attack that uses no model pass (the
    prior and label-only controls) or of unknown compute (a plugin) is a dashed line at its
    mean final PSNR. ``eps``: the epsilon of each dp-sgd defence, in its panel's title."""
    from matplotlib.ticker import NullFormatter

    plt = _plt()
    defences = list(dict.fromkeys(frame["defence"]))
    attacks = list(dict.fromkeys(frame["attack"]))
    fig, axes = plt.subplots(1, len(defences), squeeze=False, sharey=True,
                             figsize=(3.2 * len(defences) + 1.6, 3.4))
    for ax, defence in zip(axes[0], defences, strict=True):
        for colour, attack in enumerate(attacks):
            rows = frame[(frame["defence"] == defence) & (frame["attack"] == attack)]
            rows = rows[np.isfinite(rows["psnr_db_pm1"])]  # inf: an exact copy
            if rows.empty:
                continue
            if rows["compute"].isna().all() or (rows["compute"] == 0).all():
                last = rows.groupby("image_id")["evaluations"].transform("max")
                ax.axhline(rows.loc[rows["evaluations"] == last, "psnr_db_pm1"].mean(),
                           color=f"C{colour}", ls="--", lw=1, label=attack)
                continue
            ax.scatter(rows["compute"], rows["psnr_db_pm1"], s=8, color=f"C{colour}",
                       alpha=0.25, linewidths=0)
            mean = rows.groupby("compute")["psnr_db_pm1"].mean()
            ax.plot(mean.index, mean.to_numpy(), color=f"C{colour}", marker="o", ms=3, lw=1.2,
                    label=attack)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # 2x10^1 ... crowd the axis
        ax.set_title(defence_label(defence, eps or {}), fontsize=9)
        ax.set_xlabel("compute (model passes, log scale)", fontsize=8)
    axes[0][0].set_ylabel("PSNR (dB, [-1, 1] images, peak 1)", fontsize=8)
    clamp_to_range(axes[0][0], "psnr_db_pm1")
    handles = {label: h for ax in axes[0] for h, label in zip(*ax.get_legend_handles_labels(),
                                                              strict=True)}
    legend_outside(axes[0][-1], handles=list(handles.values()), labels=list(handles),
                   title="attack (dashed: no model pass\nor compute unknown)", title_fontsize=7)
    fig.suptitle("best reconstruction so far against compute (line: mean over images, points: "
                 "images)\none model pass = forward + backward of the federated model on one "
                 "image", fontsize=8)
    fig.tight_layout()
    return fig
