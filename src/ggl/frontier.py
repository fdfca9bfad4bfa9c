"""The privacy-utility frontier a deployer chooses from: per defence family, the leakage of the
best attack above the controls (``ggl.leakage``) against the test accuracy the federation's model
reaches under the same setting (the utility stage), with epsilon on the DP-SGD points; and per
family the weakest setting that no attack leaks beyond the controls, with what it costs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from ggl.config import STRENGTH, STRONGER_WHEN_SMALLER, Params
from ggl.leakage import wilson_interval

LEAKS = "leaks"  # how ggl.leakage.verdict begins when an interval lies above 0
PSNR = "psnr_db_pm1_above_control"


def protection_order(kind: str, strengths: Mapping[str, float]) -> list[str]:
    """Defence names from the weakest setting to the strongest."""
    return sorted(strengths, key=lambda d: strengths[d],
                  reverse=kind in STRONGER_WHEN_SMALLER)


def frontier_table(leakage: pd.DataFrame, utility: Mapping[str, dict[str, Any]],
                   params: Params) -> pd.DataFrame:
    """One row per defence setting of a family (``Params.families``), and ``none``: test
    accuracy and its cost against ``none``, epsilon (dp-sgd), the best attack by PSNR above
    control with its interval, and whether any attack leaks beyond the controls (by PSNR or
    re-identification)."""
    attacks = leakage[~leakage["control"]]
    base = utility.get("none", {}).get("test_accuracy", math.nan)
    rows = []
    ordered = [("none", "none", math.nan)] if "none" in params.defences else []
    for kind, strengths in params.families().items():
        ordered += [(kind, d, strengths[d]) for d in protection_order(kind, strengths)]
    for kind, defence, strength in ordered:
        part = attacks[attacks["defence"] == defence]
        summary = utility.get(defence, {})
        dp = summary.get("dp") or {}
        row: dict[str, Any] = {
            "family": kind, "defence": defence, "strength": strength,
            "setting": "no defence" if defence == "none" else f"{STRENGTH[kind]} {strength:g}",
            "test_accuracy": summary.get("test_accuracy", math.nan),
            **dict(zip(("test_accuracy_low", "test_accuracy_high"), wilson_interval(
                summary.get("test_accuracy", math.nan), summary.get("test_images", 0))
                if summary else (math.nan, math.nan), strict=True)),
            "accuracy_cost": base - summary.get("test_accuracy", math.nan),
            "epsilon": dp.get("epsilon", math.nan), "delta": dp.get("delta", math.nan),
            "leaks": bool(part["verdict"].str.startswith(LEAKS).any()),
            "leaking_attacks": ", ".join(part.loc[part["verdict"].str.startswith(LEAKS),
                                                  "attack"]) or "none"}
        if len(part):
            best = part.loc[part[PSNR].idxmax()]
            row.update({"best_attack": best["attack"], PSNR: best[PSNR],
                        f"{PSNR}_low": best[f"{PSNR}_low"],
                        f"{PSNR}_high": best[f"{PSNR}_high"],
                        "reid_top1_ssim": best["reid_top1_ssim"], "verdict": best["verdict"]})
        rows.append(row)
    return pd.DataFrame(rows)


def weakest_stopping(frontier: pd.DataFrame) -> pd.DataFrame:
    """Per family, the weakest setting at which no attack leaks beyond the controls, and the
    test accuracy it costs against no defence; ``stops`` False where no setting does. Where
    nothing leaks even without a defence, every family says so instead."""
    none = frontier[frontier["defence"] == "none"]
    unneeded = len(none) and not none["leaks"].iloc[0]
    rows = []
    for kind, part in frontier[frontier["defence"] != "none"].groupby("family", sort=False):
        safe = part[~part["leaks"]]
        if unneeded:
            rows.append({"family": kind, "stops": True, "defence": "none",
                         "setting": "no defence needed: no attack leaks beyond the controls "
                                    "without one", "test_accuracy": none["test_accuracy"].iloc[0],
                         "accuracy_cost": 0.0, "epsilon": math.nan})
        elif len(safe):
            first = safe.iloc[0]
            rows.append({"family": kind, "stops": True, "defence": first["defence"],
                         "setting": first["setting"], "test_accuracy": first["test_accuracy"],
                         "accuracy_cost": first["accuracy_cost"], "epsilon": first["epsilon"]})
        else:
            rows.append({"family": kind, "stops": False, "defence": "",
                         "setting": f"none of the {len(part)} settings tried",
                         "test_accuracy": math.nan, "accuracy_cost": math.nan,
                         "epsilon": math.nan})
    return pd.DataFrame(rows)


def frontier_cells(frontier: pd.DataFrame, stopping: pd.DataFrame
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two tables as text cells: the weakest stopping setting per family, every setting."""
    def interval(r: Any) -> str:
        if pd.isna(r.get(PSNR, math.nan)):
            return "not measured"
        return f"{r[PSNR]:+.2f} [{r[f'{PSNR}_low']:+.2f}, {r[f'{PSNR}_high']:+.2f}]"

    def fmt(spec: str):
        return lambda v: "" if pd.isna(v) else format(v, spec)

    weakest = pd.DataFrame({
        "family": stopping["family"],
        "weakest setting that stops every attack": stopping["setting"],
        "test accuracy": stopping["test_accuracy"].map(fmt(".3f")),
        "accuracy cost": stopping["accuracy_cost"].map(fmt("+.3f")),
        "epsilon": stopping["epsilon"].map(fmt(".3g"))})
    settings = pd.DataFrame({
        "defence": frontier["defence"], "family": frontier["family"],
        "setting": frontier["setting"],
        "test accuracy [95 % interval]": [
            f"{r['test_accuracy']:.3f} [{r['test_accuracy_low']:.2f}, "
            f"{r['test_accuracy_high']:.2f}]" if pd.notna(r["test_accuracy"]) else ""
            for _, r in frontier.iterrows()],
        "accuracy cost": frontier["accuracy_cost"].map(fmt("+.3f")),
        "epsilon": frontier["epsilon"].map(fmt(".3g")),
        "best attack": frontier["best_attack"] if "best_attack" in frontier else "",
        "PSNR above control (dB)": [interval(r) for _, r in frontier.iterrows()],
        "attacks leaking beyond the controls": frontier["leaking_attacks"]})
    return weakest, settings


def frontier_markdown(frontier: pd.DataFrame, stopping: pd.DataFrame, caption: list[str]) -> str:
    weakest, settings = frontier_cells(frontier, stopping)
    return ("# Privacy and utility\n\n" + "\n".join(f"- {c}" for c in caption)
            + "\n\n## The weakest setting that stops every attack\n\n"
            + weakest.to_markdown(index=False) + "\n\n## Every setting\n\n"
            + settings.to_markdown(index=False) + "\n")


def frontier_html(frontier: pd.DataFrame, stopping: pd.DataFrame, caption: list[str],
                  experiment: str) -> str:
    from ggl.report_html import esc, page, table

    def html_table(cells: pd.DataFrame, text: tuple[int, ...]) -> str:
        return table(list(cells.columns), [[esc(v) for v in row]
                                           for row in cells.itertuples(index=False)], text)

    weakest, settings = frontier_cells(frontier, stopping)
    return page(f"{experiment}: privacy and utility", caption,
                "<h2>The weakest setting that stops every attack</h2>"
                + html_table(weakest, (1,)) + "<h2>Every setting</h2>"
                + html_table(settings, (1, 2, 6, 7, 8)))


def frontier_plot(frontier: pd.DataFrame) -> Any:
    """One panel per family: PSNR above control of the best attack against test accuracy, both
    with 95 % intervals; each point labelled with its setting (and epsilon), no defence as a
    star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in dict.fromkeys(frontier["family"]) if k != "none"]
    none = frontier[frontier["defence"] == "none"]
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(3.6 * max(1, len(kinds)), 3.4),
                             sharey=True, squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=False):
        part = frontier[frontier["family"] == kind]
        err = [part[PSNR] - part[f"{PSNR}_low"], part[f"{PSNR}_high"] - part[PSNR]]
        xerr = [part["test_accuracy"] - part["test_accuracy_low"],
                part["test_accuracy_high"] - part["test_accuracy"]]
        colours = ["tab:red" if leaks else "tab:blue" for leaks in part["leaks"]]
        ax.errorbar(part["test_accuracy"], part[PSNR], xerr=xerr, yerr=err, fmt="none",
                    ecolor="lightgrey", lw=0.8)
        ax.scatter(part["test_accuracy"], part[PSNR], c=colours, zorder=3, s=22)
        ax.plot(part["test_accuracy"], part[PSNR], color="grey", lw=0.6, alpha=0.6)
        for _, r in part.iterrows():
            label = f"{r['strength']:g}" + ("" if pd.isna(r["epsilon"])
                                             else f"\nε={r['epsilon']:.2g}")
            ax.annotate(label, (r["test_accuracy"], r[PSNR]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        if len(none):
            ax.scatter(none["test_accuracy"], none[PSNR], marker="*", s=90, c="black",
                       zorder=4, label="no defence")
        ax.axhline(0, color="black", lw=0.6, ls="--")
        ax.set_title(f"{kind} ({STRENGTH[kind]})", fontsize=9)
        ax.set_xlabel("test accuracy (utility stage)", fontsize=8)
    axes[0][0].set_ylabel("best attack: PSNR above control (dB)", fontsize=8)
    fig.suptitle("privacy-utility frontier: red = some attack leaks beyond the controls, "
                 "blue = none does; 95 % intervals (PSNR: bootstrap over images, accuracy: "
                 "Wilson over test images)", fontsize=8)
    fig.tight_layout()
    return fig


def caption(params: Params, utility: Mapping[str, dict[str, Any]], images: int) -> list[str]:
    """What the frontier measured and what it did not, from params and the utility stage."""
    cfg, model = params.utility, params.model
    first = next(iter(utility.values()))
    dp = [u["dp"] for u in utility.values() if u.get("dp")]
    lines = [
        f"Utility: test accuracy of the federated model after {cfg.rounds} rounds of federated "
        f"averaging ({cfg.clients} clients, {cfg.partition} partition of the "
        f"{sum(first['client_sizes'])} private images, {cfg.local_steps} local SGD step(s) of "
        f"{cfg.batch_size} images at lr {cfg.lr:g} per round), on {first['test_images']} "
        f"held-out test images (chance {first['chance_accuracy']:.3f}; 95 % Wilson interval "
        f"over the test images); accuracy cost = accuracy without defence minus accuracy with "
        f"it. One seed: the accuracy also moves from round to round (read rounds.csv) and a "
        f"cost within the intervals is not a measured cost.",
        f"Model: {model.arch}, width {model.width}, {first['model_note']}; the attacks target "
        f"the same model at its random initialisation, one image per update.",
        f"Leakage: the best attack's PSNR ([-1, 1] convention, dB) above the strongest control "
        f"(prior samples, class mean, GGL on a noise gradient), mean over {images} private "
        f"images with a 95 % percentile-bootstrap interval. A setting stops every attack when "
        f"no attack's PSNR or re-identification interval above control lies above 0.",
    ]
    if dp:
        deltas = ", ".join(sorted({f"{d['delta']:g}" for d in dp}))
        lines.append(
            f"epsilon: DP-SGD by Opacus (per-sample clipping, Poisson sampling at rate "
            f"{cfg.batch_size} / client's images), Opacus' {dp[0]['accountant'].upper()} "
            f"accountant over all {dp[0]['steps']} local steps, per client's data at the delta "
            f"of each setting ({deltas}), the "
            f"largest over clients. The other defences give no (epsilon, delta) guarantee.")
    lines.append(f"Not measured: other models, datasets or seeds; training beyond {cfg.rounds} "
                 f"rounds; attacks on the trained model or on batches above one.")
    return lines
