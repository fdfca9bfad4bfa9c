"""The metrics stage's table and the paper's tables and figures built from it.

``run_metrics`` is the only code that joins a reconstruction with its private image. The
aggregation lists the runs params ask for and fails naming any that is missing; it never
globs result folders (old runs stay on disk after a list shrinks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ggl import io
from ggl.config import Params

GGL_ATTACKS = ("ggl-adam", "ggl-cmaes", "ggl-bo")


class MissingRunError(RuntimeError):
    """A run params ask for has no output yet."""


def expected_runs(params: Params) -> list[tuple[str, str, str]]:
    """(defence, attack, image id) for every run params ask for."""
    return [(d, a, i) for d in params.defences for a in params.attacks
            for i in params.image_ids()]


def run_metrics(params: Params, results_dir: Path, data_dir: Path, device: torch.device
                ) -> pd.DataFrame:
    from ggl.attack.run import attack_dir
    from ggl.client import gradient_paths
    from ggl.data import load_part
    from ggl.metrics import Lpips, evaluate
    from ggl.models import build_model

    missing = [f"{d}/{a}/{i}" for d, a, i in expected_runs(params)
               if not (attack_dir(results_dir, d, a, i) / "result.json").exists()]
    if missing:
        raise MissingRunError(f"{len(missing)} runs in params have no result yet, e.g. "
                              f"{', '.join(missing[:5])}; run the attack stage first")
    images, _ = load_part(data_dir, "private")
    model = build_model(params.model, device)
    lpips_metric = Lpips(params.lpips_stand_in, device)
    rows: list[dict[str, Any]] = []
    for defence, attack, image_id in expected_runs(params):
        folder = attack_dir(results_dir, defence, attack, image_id)
        result = io.read_json(folder / "result.json")
        truth = io.read_json(gradient_paths(results_dir, defence, image_id)[1])
        reconstruction = io.load_torch(folder / "reconstruction.pt")[None].to(device)
        original = images[truth["private_index"]][None].to(device)
        values = evaluate(reconstruction, original, model, lpips_metric)
        rows.append({
            "image_id": image_id, "private_index": truth["private_index"],
            "defence": defence, "attack": attack, "method": result["method"],
            **{k: v[0] for k, v in values.items()},
            "label_true": truth["true_label"], "label_inferred": result["inferred_label"],
            "label_correct": truth["true_label"] == result["inferred_label"],
            "evaluations": result["evaluations"], "seconds": result["seconds"],
            "loss": result["loss"], "generator_stand_in": (result.get("generator") or {}).get(
                "stand_in"),
        })
    return pd.DataFrame(rows)


# --- aggregation: tables and figures -------------------------------------------------------

def lpips_column(frame: pd.DataFrame) -> str:
    return next(c for c in frame.columns if c.startswith("lpips"))


def metric_columns(frame: pd.DataFrame) -> list[str]:
    return ["mse_i", "psnr_db_pm1", "psnr_db_01", "ssim", lpips_column(frame), "mse_r"]


def check_complete(frame: pd.DataFrame, params: Params) -> None:
    have = set(zip(frame["defence"], frame["attack"], frame["image_id"], strict=True))
    missing = [f"{d}/{a}/{i}" for d, a, i in expected_runs(params) if (d, a, i) not in have]
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
    return stats.reset_index()


def _cell(mean: float, std: float) -> str:
    # Four significant digits: MSE-R is often ~1e-4, which a fixed .3f would print as 0.000.
    return f"{mean:.4g} ± {std:.3g}" if pd.notna(std) else f"{mean:.4g}"


def table_markdown(summary: pd.DataFrame, rows: str, columns: str, metric: str) -> str:
    cells = summary.assign(cell=[_cell(m, s) for m, s in zip(
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


def write_tables(frame: pd.DataFrame, summary: pd.DataFrame, out: Path) -> dict[str, Path]:
    lpips = lpips_column(frame)
    header = TABLE_HEADER.format(n=frame["image_id"].nunique(), lpips=lpips_note(lpips))
    paths = {"summary": io.write_text(out / "summary.csv", summary.to_csv(index=False))}
    no_defence = summary[(summary["defence"] == "none")
                         & summary["attack"].isin(GGL_ATTACKS)]
    if len(no_defence):
        cols = [c for c in no_defence.columns if c.endswith(("_mean", "_std"))]
        paths["table2_csv"] = io.write_text(out / "table2.csv",
                                            no_defence[["attack", *cols]].to_csv(index=False))
        text = "# Table 2: GGL optimisers without defence\n\n" + header
        for metric in metric_columns(frame):
            text += f"## {metric}\n\n" + table_markdown(no_defence, "attack", "defence",
                                                       metric) + "\n\n"
        paths["table2_md"] = io.write_text(out / "table2.md", text)
    text = "# Table 3: every attack under every defence\n\n" + header
    for metric in ("psnr_db_pm1", lpips, "ssim", "mse_i", "mse_r"):
        text += f"## {metric}\n\n" + table_markdown(summary, "attack", "defence", metric) + "\n\n"
    paths["table3_md"] = io.write_text(out / "table3.md", text)
    paths["table3_csv"] = io.write_text(out / "table3.csv", summary.to_csv(index=False))
    return paths


def summary_metrics(summary: pd.DataFrame, lpips: str) -> dict[str, Any]:
    """Nested {defence: {attack: {...}}} for `dvc metrics show`."""
    out: dict[str, Any] = {}
    for row in summary.itertuples(index=False):
        row = row._asdict()
        out.setdefault(row["defence"], {})[row["attack"]] = {
            "psnr_db_pm1": round(row["psnr_db_pm1_mean"], 4),
            lpips: round(row[f"{lpips}_mean"], 4), "ssim": round(row["ssim_mean"], 4)}
    return out


# --- defence-strength sweeps ----------------------------------------------------------------

STRENGTH = {"noise": "sigma", "clipping": "bound", "sparsification": "rate", "soteria": "rate"}
ZERO_IS_NONE = ("noise", "sparsification", "soteria")  # strength 0 = no defence


def defence_sweeps(params: Params) -> dict[str, dict[str, float]]:
    """{kind: {defence name: strength}} for every defence kind params try at 3 or more
    strengths (one-step defences of that kind, e.g. Soteria at 0-80 %, the paper's Fig. 7);
    ``none`` joins a sweep as strength 0 where 0 means no defence."""
    sweeps: dict[str, dict[str, float]] = {}
    for name, steps in params.defences.items():
        if len(steps) == 1 and steps[0].kind in STRENGTH:
            sweeps.setdefault(steps[0].kind, {})[name] = float(
                steps[0].settings[STRENGTH[steps[0].kind]])
    if "none" in params.defences:
        for kind in ZERO_IS_NONE:
            if kind in sweeps:
                sweeps[kind]["none"] = 0.0
    return {k: v for k, v in sweeps.items() if len(set(v.values())) >= 3}


def sweep_plot(frame: pd.DataFrame, kind: str, strengths: dict[str, float], lpips: str,
               path: Path) -> Path:
    """Attack quality against the defence's strength, one line per attack."""
    import seaborn as sns

    plt = _plt()
    rows = frame[frame["defence"].isin(strengths)].assign(
        strength=lambda f: f["defence"].map(strengths))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric in zip(axes, ("psnr_db_pm1", lpips), strict=True):
        sns.lineplot(rows, x="strength", y=metric, hue="attack", marker="o", errorbar="sd", ax=ax)
        ax.set_xlabel(f"{kind} {STRENGTH[kind]}")
        ax.legend(fontsize=7)
    fig.suptitle(f"attack quality against {kind} strength (mean ± sd over images)", fontsize=9)
    return io.save_figure(path, fig)


# --- figures -----------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def reconstruction_grid(params: Params, results_dir: Path, data_dir: Path, image_id: str,
                        path: Path) -> Path:
    """Rows: the private image, then one per attack; columns: defences."""
    from ggl.attack.run import attack_dir
    from ggl.client import gradient_paths
    from ggl.data import load_part

    plt = _plt()
    defences, attacks = list(params.defences), list(params.attacks)
    images, _ = load_part(data_dir, "private")
    fig, axes = plt.subplots(len(attacks) + 1, len(defences), squeeze=False,
                             figsize=(1.3 * len(defences) + 0.8, 1.3 * (len(attacks) + 1)))
    for j, defence in enumerate(defences):
        truth = io.read_json(gradient_paths(results_dir, defence, image_id)[1])
        shown = [images[truth["private_index"]]]
        shown += [io.load_torch(attack_dir(results_dir, defence, a, image_id)
                                / "reconstruction.pt") for a in attacks]
        for i, image in enumerate(shown):
            ax = axes[i][j]
            ax.imshow(((image.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(defence, fontsize=8)
            if j == 0:
                ax.set_ylabel("private" if i == 0 else attacks[i - 1], fontsize=8)
    fig.suptitle(f"{params.experiment}: reconstructions of {image_id}", fontsize=9)
    return io.save_figure(path, fig)


def metric_plot(frame: pd.DataFrame, metric: str, path: Path) -> Path:
    import seaborn as sns

    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 * frame["defence"].nunique() + 3, 3.5))
    sns.barplot(frame, x="defence", y=metric, hue="attack", errorbar="sd", ax=ax)
    ax.set_title(f"{metric} per defence and attack (mean ± sd over images)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    return io.save_figure(path, fig)


def convergence_plot(params: Params, results_dir: Path, defence: str, path: Path) -> Path:
    """GGL's objective against evaluations, one line per optimiser (best trial, each image)."""
    from ggl.attack.run import attack_dir

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for colour, attack in enumerate(a for a in params.attacks if a in GGL_ATTACKS):
        for k, image_id in enumerate(params.image_ids()):
            folder = attack_dir(results_dir, defence, attack, image_id)
            curve = pd.read_csv(folder / "curve.csv")
            best = io.read_json(folder / "result.json")["best_trial"]
            curve = curve[curve["trial"] == best]
            ax.plot(curve["evaluations"], curve["best_loss"], color=f"C{colour}", lw=0.9,
                    alpha=0.8, label=attack if k == 0 else None)
    ax.set_xlabel("objective evaluations")
    ax.set_ylabel("best GGL objective so far")
    ax.set_yscale("log")
    ax.set_title(f"convergence under defence '{defence}'", fontsize=9)
    ax.legend(fontsize=8)
    return io.save_figure(path, fig)


def aggregate(params: Params, results_dir: Path, data_dir: Path) -> dict[str, Path]:
    frame = pd.read_csv(results_dir / "metrics.csv")
    check_complete(frame, params)
    summary = summarise(frame)
    tables = results_dir / "tables"
    paths = write_tables(frame, summary, tables)
    paths["summary_json"] = io.write_json(results_dir / "summary.json",
                                          summary_metrics(summary, lpips_column(frame)))
    figures = results_dir / "figures"
    for image_id in params.image_ids():
        paths[f"grid_{image_id}"] = reconstruction_grid(
            params, results_dir, data_dir, image_id, figures / f"reconstructions_{image_id}.png")
    for name, metric in (("psnr_db_pm1", "psnr_db_pm1"), ("lpips", lpips_column(frame)),
                         ("ssim", "ssim")):
        paths[f"plot_{name}"] = metric_plot(frame, metric, figures / f"{name}.png")
    for kind, strengths in defence_sweeps(params).items():
        paths[f"sweep_{kind}"] = sweep_plot(frame, kind, strengths, lpips_column(frame),
                                            figures / f"sweep_{kind}.png")
    if "none" in params.defences and set(GGL_ATTACKS) & set(params.attacks):
        paths["convergence"] = convergence_plot(params, results_dir, "none",
                                                figures / "convergence.png")
    return paths
