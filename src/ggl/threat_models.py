"""Leakage across threat models: the same defences and attacks under each client protocol of
params' ``clients`` (batch size B, local steps E, the model's checkpoint), each attack set
against its strongest control within the same protocol and defence (``ggl.leakage``).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ggl.config import Params
from ggl.leakage import INTERVALS, leakage_table
from ggl.settings import CONTROLS

CAPTION = ("Leakage above the strongest control (PSNR, dB, [-1, 1] images, peak 1) per client "
           f"protocol; {INTERVALS}. Above 0: the attack recovered more than the attacker gets "
           "without the gradient. Model accuracy: the attacked model's test accuracy (trained: "
           "the utility stage's model after utility.rounds rounds under the same defence).")


def threat_model_table(frame: pd.DataFrame, params: Params,
                       utility: dict[str, dict[str, Any]] | None, seed: int) -> pd.DataFrame:
    """One row per (client, defence, attack): the protocol, the attacked model's test accuracy
    (NaN without a utility stage), the leakage table's columns and, at B > 1, the share of
    updates whose label multiset was inferred exactly."""
    parts = []
    for name, client in params.clients.items():
        rows = frame[frame["client"] == name]
        table = leakage_table(rows, seed)
        accuracy = {d: _accuracy(utility, d, client.checkpoint) for d in params.defences}
        exact = (rows.groupby(["defence", "attack"], sort=False)["labels_exact"].mean()
                 if "labels_exact" in rows else None)
        table.insert(0, "client", name)
        table.insert(1, "batch_size", client.batch_size)
        table.insert(2, "local_steps", client.local_steps)
        table.insert(3, "local_lr", client.local_lr)
        table.insert(4, "checkpoint", client.checkpoint)
        table.insert(5, "model_accuracy", table["defence"].map(accuracy))
        table["labels_exact"] = ([exact.get((d, a), math.nan) for d, a in
                                  zip(table["defence"], table["attack"], strict=True)]
                                 if exact is not None else math.nan)
        parts.append(table)
    return pd.concat(parts, ignore_index=True)


def _accuracy(utility: dict[str, dict[str, Any]] | None, defence: str, checkpoint: str) -> float:
    if not utility:
        return math.nan
    summary = utility[defence]
    return summary["test_accuracy" if checkpoint == "trained" else "initial_test_accuracy"]


def protocol_label(row: pd.Series) -> str:
    accuracy = row["model_accuracy"]
    note = f" ({accuracy:.2f})" if isinstance(accuracy, float) and math.isfinite(accuracy) else ""
    return f"B={row['batch_size']} E={row['local_steps']}\n{row['checkpoint']}{note}"


def threat_model_plot(table: pd.DataFrame) -> Any:
    """Per defence a panel: each attack's PSNR above control (mean and interval) against the
    client protocol; the controls are the zero line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = table[~table["method"].isin(CONTROLS)]
    defences = list(dict.fromkeys(attacks["defence"]))
    clients = list(dict.fromkeys(attacks["client"]))
    fig, axes = plt.subplots(1, len(defences), squeeze=False, sharey=True,
                             figsize=(1.1 * len(clients) * len(defences) + 2, 3.8))
    names = list(dict.fromkeys(attacks["attack"]))
    for ax, defence in zip(axes[0], defences, strict=True):
        for k, attack in enumerate(names):
            rows = attacks[(attacks["defence"] == defence) & (attacks["attack"] == attack)]
            x = [clients.index(c) + (k - (len(names) - 1) / 2) * 0.15 for c in rows["client"]]
            mean = rows["psnr_db_pm1_above_control"]
            err = [mean - rows["psnr_db_pm1_above_control_low"],
                   rows["psnr_db_pm1_above_control_high"] - mean]
            ax.errorbar(x, mean, yerr=err, fmt="o", capsize=3, label=attack)
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        here = attacks[attacks["defence"] == defence]  # the model's accuracy is per defence
        ax.set_xticks(range(len(clients)), [protocol_label(here[here["client"] == c].iloc[0])
                                            for c in clients], fontsize=7)
        ax.set_title(f"defence: {defence}", fontsize=9)
    axes[0][0].set_ylabel("PSNR above strongest control (dB)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("leakage against batch size B, local steps E and the model's training "
                 "(its test accuracy); 95 % bootstrap intervals over images", fontsize=9)
    fig.tight_layout()
    return fig


def threat_model_markdown(table: pd.DataFrame) -> str:
    """The table in words: a row per (client, defence, attack), controls left out."""
    rows = table[~table["method"].isin(CONTROLS)]
    lines = [CAPTION, "",
             "| client | B | E | checkpoint | model accuracy | defence | attack | "
             "PSNR above control (dB) | labels exact | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in rows.iterrows():
        accuracy = (f"{r['model_accuracy']:.2f}" if math.isfinite(r["model_accuracy"])
                    else "n/a")
        exact = f"{r['labels_exact']:.2f}" if math.isfinite(r["labels_exact"]) else "n/a"
        lines.append(
            f"| {r['client']} | {r['batch_size']} | {r['local_steps']} | {r['checkpoint']} | "
            f"{accuracy} | {r['defence']} | {r['attack']} | "
            f"{r['psnr_db_pm1_above_control']:+.2f} [{r['psnr_db_pm1_above_control_low']:+.2f}, "
            f"{r['psnr_db_pm1_above_control_high']:+.2f}] | {exact} | {r['verdict']} |")
    return "\n".join(lines) + "\n"
