"""The tables as self-contained HTML pages for the Snakemake report (whose viewer shows HTML,
not CSV or Markdown), and its first page: per defence the best GGL attack against the best
baseline, the generator's quality and, for the paper's experiments, the paper's numbers."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from ggl.leakage import INTERVALS
from ggl.metrics import CONVENTIONS
from ggl.paper import NOTES, paper_cell
from ggl.report import (
    LEAKAGE_HEADER,
    defence_label,
    epsilon_note,
    epsilons,
    ggl_attacks,
    headline,
    lpips_column,
    lpips_note,
    mean_std,
)

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.2em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.4em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f2f2f2; text-align: left; }
tr > th:first-child { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.paper { color: #666; font-size: 0.85em; display: block; }
.no { color: #a00; font-weight: bold; } .yes { color: #070; font-weight: bold; }
ul.conventions { color: #444; font-size: 0.9em; }
"""

NAMES = {"psnr_db_pm1": "PSNR [-1, 1] (dB)", "psnr_db_01": "PSNR [0, 1] (dB)", "ssim": "SSIM",
         "mse_i": "MSE-I", "mse_r": "MSE-R", "lpips_vgg": "LPIPS (VGG)",
         "lpips_vgg_stand_in": "LPIPS (stand-in)"}


def esc(value: Any) -> str:
    return html.escape(str(value))


def page(title: str, conventions: list[str], body: str) -> str:
    """A whole HTML document: title, the conventions as a list, then ``body`` (HTML)."""
    notes = "".join(f"<li>{esc(c)}</li>" for c in conventions)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>"
            f'<h1>{esc(title)}</h1>\n<ul class="conventions">{notes}</ul>\n{body}\n'
            "</body></html>\n")


def table(header: list[str], rows: list[list[str]], text_columns: tuple[int, ...] = (),
          groups: list[tuple[str, int]] | None = None) -> str:
    """An HTML table; ``rows`` hold HTML cells (escape text first), the first column a row
    header, the others right-aligned numbers except ``text_columns``. ``groups``: an extra
    header row of (label, columns spanned)."""
    top = "" if groups is None else "<tr>" + "".join(
        f'<th colspan="{n}">{esc(label)}</th>' for label, n in groups) + "</tr>\n"
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<th>{c}</th>" if k == 0 else
                         f"<td>{c}</td>" if k in text_columns else f'<td class="num">{c}</td>'
                         for k, c in enumerate(row)) + "</tr>\n"
        for row in rows)
    return f"<table>\n{top}<tr>{head}</tr>\n{body}</table>"


def name(value: Any) -> str:
    """An attack or control name for a cell; "none" where there is none (NaN)."""
    return "none" if value is None or (isinstance(value, float) and pd.isna(value)) \
        else esc(value)


def number(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{value:.4g}"


def conventions(frame: pd.DataFrame) -> list[str]:
    """What every number means, from the metrics stage's conventions and this frame."""
    lpips = lpips_column(frame)
    n = frame["image_id"].nunique()
    return [f"Mean ± standard deviation over {n} private images per cell "
            f"({', '.join(dict.fromkeys(frame['image_id']))}).",
            f"psnr_db_pm1: {CONVENTIONS['psnr_db_pm1']} (the paper's convention). "
            f"psnr_db_01: {CONVENTIONS['psnr_db_01']}.",
            f"SSIM: {CONVENTIONS['ssim']}. MSE-I: {CONVENTIONS['mse_i']}. "
            f"MSE-R: {CONVENTIONS['mse_r']}.",
            f"{lpips_note(lpips)} (column {lpips}); lower is more leakage.",
            f"Budgets: {CONVENTIONS['evaluations']}.", *epsilon_note(frame)]


def _paper_note(experiment: str, defence: str, attack: str, metric: str) -> str:
    metric = "lpips" if metric.startswith("lpips") else metric
    cell = paper_cell(experiment, defence, attack)
    if not cell or cell.get(metric) is None:
        return ""
    return f'<span class="paper">paper {cell[metric]:.4g} ({esc(cell["source"])})</span>'


def _paper_comparable(metric: str) -> bool:
    """The paper's LPIPS used the VGG backbone's trained weights: a stand-in is no match."""
    return metric in ("psnr_db_pm1", "lpips_vgg")


def metric_grid(summary: pd.DataFrame, metric: str, experiment: str) -> str:
    """One metric, attacks (rows) by defences (columns), the paper's number under ours."""
    attacks = list(dict.fromkeys(summary["attack"]))
    defences = list(dict.fromkeys(summary["defence"]))
    cells = summary.set_index(["attack", "defence"])
    rows = []
    for attack in attacks:
        row = [esc(attack)]
        for defence in defences:
            if (attack, defence) not in cells.index:
                row.append("")
                continue
            c = cells.loc[(attack, defence)]
            paper = _paper_note(experiment, defence, attack, metric) \
                if _paper_comparable(metric) else ""
            row.append(esc(mean_std(c[f"{metric}_mean"], c[f"{metric}_std"])) + paper)
        rows.append(row)
    return table(["attack \\ defence", *defences], rows)


def budgets(frame: pd.DataFrame) -> str:
    """Each attack's method and mean objective evaluations per image (all trials); wall-clock
    seconds are in timings.csv, out of the tables, which hold the same bytes on every run."""
    spent = frame.groupby("attack", sort=False).agg(method=("method", "first"),
                                                    evaluations=("evaluations", "mean"))
    rows = [[esc(a), esc(r.method), number(r.evaluations)] for a, r in spent.iterrows()]
    return table(["attack", "method", "evaluations per image"], rows, text_columns=(1,))


def paper_order(frame: pd.DataFrame) -> list[str]:
    """The metric columns, the paper's (PSNR, LPIPS) first."""
    return ["psnr_db_pm1", lpips_column(frame), "ssim", "mse_i", "mse_r", "psnr_db_01"]


def table2_page(frame: pd.DataFrame, summary: pd.DataFrame, experiment: str) -> str:
    """Table 2: the GGL attacks without a defence, one row per attack, one column per metric."""
    ggl = ggl_attacks(frame)
    rows_in = summary[(summary["defence"] == "none") & summary["attack"].isin(ggl)]
    metrics = paper_order(frame)
    rows = [[esc(r["attack"]),
             *(esc(mean_std(r[f"{m}_mean"], r[f"{m}_std"]))
               + (_paper_note(experiment, "none", r["attack"], m) if _paper_comparable(m)
                  else "") for m in metrics),
             number(r["label_accuracy"])]
            for _, r in rows_in.iterrows()]
    body = table(["attack", *(NAMES.get(m, m) for m in metrics), "label accuracy"], rows)
    return page(f"{experiment}: Table 2, GGL optimisers without defence",
                conventions(frame) + _paper_conventions(experiment, frame),
                body + "<h2>Budgets spent</h2>"
                + budgets(frame[(frame["defence"] == "none") & frame["attack"].isin(ggl)]))


def table3_page(frame: pd.DataFrame, summary: pd.DataFrame, experiment: str) -> str:
    """Table 3: every attack under every defence, one grid per metric."""
    body = "".join(f"<h2>{esc(NAMES.get(m, m))} <small>({esc(m)})</small></h2>"
                   + metric_grid(summary, m, experiment) for m in paper_order(frame))
    return page(f"{experiment}: Table 3, every attack under every defence",
                conventions(frame) + _paper_conventions(experiment, frame),
                body + "<h2>Budgets spent</h2>" + budgets(frame))


def summary_page(frame: pd.DataFrame, summary: pd.DataFrame, experiment: str) -> str:
    """The summary table: one row per (defence, attack), every metric."""
    metrics = paper_order(frame)
    rows = [[esc(r["defence"]), esc(r["attack"]),
             *(esc(mean_std(r[f"{m}_mean"], r[f"{m}_std"])) for m in metrics),
             number(r["label_accuracy"]), str(int(r["images"]))]
            for _, r in summary.iterrows()]
    body = table(["defence", "attack", *(NAMES.get(m, m) for m in metrics), "label accuracy",
                  "images"], rows, text_columns=(1,))
    return page(f"{experiment}: summary of every run", conventions(frame), body)


def _paper_conventions(experiment: str, frame: pd.DataFrame) -> list[str]:
    if not any(paper_cell(experiment, d, a) for d, a in
               zip(frame["defence"], frame["attack"], strict=True)):
        return []
    out = ["Grey 'paper' figures: Li et al., CVPR 2022, the table named (mean over the paper's "
           "images, PSNR on the same [-1, 1] convention)."]
    if lpips_column(frame).endswith("stand_in"):
        out.append("The paper's LPIPS is not shown beside a stand-in LPIPS: not comparable.")
    return out + ([NOTES[experiment]] if experiment in NOTES else [])


def interval(row: Any, key: str, digits: int = 3) -> str:
    """``mean [low, high]`` of ``key`` in ``row``, or n/a."""
    if pd.isna(row[key]):
        return "n/a"
    return (f"{row[key]:.{digits}g} [{row[key + '_low']:.{digits}g}, "
            f"{row[key + '_high']:.{digits}g}]")


def _improving(row: Any) -> str:
    """Whether the attack was still improving when its budget ran out (its quality curve)."""
    gain = row.get("gain_db")
    if gain is None or pd.isna(gain):
        return ""
    if row.get("still_improving") == 1:  # a numpy bool too
        return f'<span class="no">still improving (+{gain:.2f} dB over the last doubling)</span>'
    return f"converged ({gain:+.2f} dB over the last doubling)"


def leakage_page(frame: pd.DataFrame, leakage: pd.DataFrame, experiment: str) -> str:
    """Every attack and control: its metrics above the strongest control with intervals, and
    the re-identification rate and mean rank against chance."""
    lpips = lpips_column(frame)
    eps = epsilons(frame)
    rows = [[esc(defence_label(r["defence"], eps)), esc(r["attack"]),
             interval(r, "psnr_db_pm1_above_control"),
             interval(r, "ssim_above_control"), interval(r, f"{lpips}_above_control"),
             name(r["psnr_db_pm1_control"]),
             f"{interval(r, 'reid_top1_ssim')} <small>chance {r['reid_top1_chance']:.3g}</small>",
             interval(r, "reid_top1_ssim_above_control"),
             f"{interval(r, 'reid_rank_ssim')} <small>chance {r['reid_rank_chance']:.3g}</small>",
             esc(r["verdict"]), number(r["compute"]), _improving(r)]
            for _, r in leakage.iterrows()]
    body = table(["defence", "attack", "PSNR above control (dB)", "SSIM above control",
                  f"{NAMES.get(lpips, lpips)} above control", "strongest control (PSNR)",
                  "re-identified (top-1 rate)", "re-identified above control",
                  "rank of the true image", "verdict", "model passes per image",
                  "at the end of its budget"],
                 rows, text_columns=(1, 5, 9, 11))
    intro = LEAKAGE_HEADER.format(n=frame["image_id"].nunique(), intervals=INTERVALS,
                                  lpips=lpips_note(lpips))
    return page(f"{experiment}: leakage above control", [intro.strip(), *epsilon_note(frame)],
                body)


# --- the first page ------------------------------------------------------------------------

def verdict(margin: float) -> str:
    if pd.isna(margin):
        return "n/a"
    if margin > 0:
        return f'<span class="yes">yes, +{margin:.2f} dB</span>'
    return f'<span class="no">NO, {margin:.2f} dB</span>'


def _paper_best_ggl(experiment: str, defence: str, attacks: list[str]) -> str:
    cells = [(a, c) for a in attacks if (c := paper_cell(experiment, defence, a))]
    if not cells:
        return ""
    attack, cell = max(cells, key=lambda ac: ac[1]["psnr_db_pm1"])
    lpips = "" if cell.get("lpips") is None else f", LPIPS {cell['lpips']:.3g}"
    return esc(f"{attack}: {cell['psnr_db_pm1']:.4g} dB{lpips} ({cell['source']})")


def sentence(best: pd.DataFrame) -> str:
    """The headline in words: where GGL beats the best baseline by PSNR and where it does not."""
    known = best.dropna(subset=["margin_db"])
    if not len(known):
        return "No defence has both a GGL attack and a baseline: nothing to compare."
    wins = known.loc[known["margin_db"] > 0, "defence"].tolist()
    losses = known.loc[known["margin_db"] <= 0, "defence"].tolist()
    text = f"By mean PSNR, GGL beats the best baseline under {len(wins)} of {len(known)} defences"
    text += f" ({', '.join(wins)})." if wins else "."
    if losses:
        text += (f" GGL does NOT beat the best baseline under: {', '.join(losses)}.")
    return text


def quality_section(quality: dict[str, Any] | None, generator_kind: str) -> str:
    if quality is None:
        return (f"<p>Generator {esc(generator_kind)}: no quality check (it runs for the DCGAN "
                "trained here only).</p>")
    private = quality.get("classifier_private_accuracy")
    rows = [["confidence ratio (samples / private images)", number(quality["confidence_ratio"])],
            ["sample confidence", number(quality["sample_confidence"])],
            ["private-image confidence", number(quality["real_confidence"])],
            ["classes covered by the samples",
             f"{quality['classes_covered']} of {quality['num_classes']}"],
            ["classifier accuracy, public split",
             number(quality["classifier_public_accuracy"])],
            ["classifier accuracy, private images",
             "n/a" if private is None else number(private)],
            ["samples scored", str(quality["n_samples"])],
            ["private images scored", str(quality["n_private"])]]
    note = ("<p><strong>The generator is a stand-in</strong>: not a trained prior.</p>"
            if quality.get("generator_stand_in") else "")
    return (table(["generator quality (DCGAN)", "value"], rows) + note
            + f"<p>{esc(quality['convention'])}; near 1 = samples as recognisable as real "
            "images; fewer classes covered than there are shows mode collapse.</p>")


def leakage_sentence(best: pd.DataFrame) -> str:
    """Per defence, in words, whether the best GGL attack leaked beyond the controls."""
    parts = []
    for _, r in best.iterrows():
        if r["ggl_attack"] is None or pd.isna(r["ggl_psnr_db_pm1_above_control"]):
            continue
        parts.append(f"{r['defence']}: {r['ggl_verdict']} ({r['ggl_attack']}, "
                     f"{r['ggl_psnr_db_pm1_above_control']:+.2f} dB "
                     f"[{r['ggl_psnr_db_pm1_above_control_low']:+.2f}, "
                     f"{r['ggl_psnr_db_pm1_above_control_high']:+.2f}] above "
                     f"{r['ggl_psnr_db_pm1_control']})")
    if not parts:
        return "No control ran: leakage beyond the prior was not measured."
    return "Best GGL attack against the strongest control, by PSNR: " + "; ".join(parts) + "."


def overview_page(frame: pd.DataFrame, summary: pd.DataFrame, leakage: pd.DataFrame,
                  experiment: str, quality: dict[str, Any] | None, generator_kind: str) -> str:
    """The report's first page: per defence, leakage above control of the best GGL attack and
    the best baseline, then GGL against the baselines, and the generator."""
    best = headline(frame, summary, leakage)
    eps = epsilons(frame)
    side_rows = [[esc(defence_label(r["defence"], eps)), esc(r[f"{side}_attack"] or "none"),
                  interval(r, f"{side}_psnr_db_pm1_above_control")
                  if r[f"{side}_attack"] else "n/a",
                  name(r[f"{side}_psnr_db_pm1_control"]) if r[f"{side}_attack"] else "",
                  f"{interval(r, f'{side}_reid_top1_ssim')} <small>chance "
                  f"{r[f'{side}_reid_top1_chance']:.3g}</small>" if r[f"{side}_attack"]
                  else "n/a",
                  esc(r[f"{side}_verdict"]) if r[f"{side}_attack"] else "",
                  _improving({"gain_db": r[f"{side}_gain_db"],
                              "still_improving": r[f"{side}_still_improving"]})]
                 for _, r in best.iterrows() for side in ("ggl", "baseline")]
    leak = table(["defence", "attack (best GGL, then best baseline)",
                  "PSNR above control (dB)", "strongest control", "re-identified (top-1)",
                  "verdict", "at the end of its budget"], side_rows, text_columns=(1, 3, 5, 6))
    ggl = ggl_attacks(frame)
    paper = any(_paper_best_ggl(experiment, d, ggl) for d in best["defence"])
    rows = [[esc(defence_label(r["defence"], eps)),
             esc(r["ggl_attack"] or "none"), number(r["ggl_psnr_db_pm1"]),
             number(r["ggl_lpips"]), number(r["ggl_ssim"]),
             esc(r["baseline_attack"] or "none"), number(r["baseline_psnr_db_pm1"]),
             number(r["baseline_lpips"]), number(r["baseline_ssim"]), verdict(r["margin_db"]),
             *([_paper_best_ggl(experiment, r["defence"], ggl)] if paper else [])]
            for _, r in best.iterrows()]
    header = ["defence", "attack", "PSNR", "LPIPS", "SSIM", "attack", "PSNR", "LPIPS", "SSIM",
              "GGL beats it (PSNR)?", *(["attack and source"] if paper else [])]
    groups = [("", 1), ("best GGL attack", 4), ("best baseline", 4), ("", 1),
              *([("the paper's best GGL", 1)] if paper else [])]
    grid = table(header, rows, text_columns=(1, 5, 9, 10), groups=groups)
    body = (f"<h2>Leakage above control</h2><p><strong>{esc(leakage_sentence(best))}"
            "</strong></p>" + leak
            + f"<p>{esc(INTERVALS)}. Above control: the attack's PSNR minus that of the "
              "strongest control (prior samples, the class-mean public image, GGL on a noise "
              "gradient) on the same image. Re-identified: the true image ranked first by SSIM "
              "among itself and other private images of its class. Every attack and control: "
              "Leakage, under Tables.</p>"
            + "<h2>GGL against the baselines</h2>"
            + f"<p><strong>{esc(sentence(best))}</strong></p>" + grid
            + "<p>Best = highest mean PSNR ([-1, 1] convention, dB) over the private images; "
              "higher PSNR and SSIM, lower LPIPS = more leakage. This compares attacks with "
              "one another, at the compute params give them (the same for all when "
              "compute_budget is set), not with what the attacker gets without the gradient "
              "(above). The full tables: Table 2, Table 3 and the summary, under Tables.</p>"
            + "<h2>Generator</h2>" + quality_section(quality, generator_kind))
    return page(f"{experiment}: how much does the gradient leak?",
                conventions(frame)[:4] + epsilon_note(frame)
                + _paper_conventions(experiment, frame), body)


def html_pages(frame: pd.DataFrame, summary: pd.DataFrame, leakage: pd.DataFrame,
               experiment: str, quality: dict[str, Any] | None, generator_kind: str
               ) -> dict[str, str]:
    """The HTML pages by the aggregate stage's file names; Table 2 only when the frame has GGL
    attacks without a defence."""
    out = {"table3_html": table3_page(frame, summary, experiment),
           "summary_html": summary_page(frame, summary, experiment),
           "leakage_html": leakage_page(frame, leakage, experiment),
           "overview_html": overview_page(frame, summary, leakage, experiment, quality,
                                          generator_kind)}
    if ((summary["defence"] == "none") & summary["attack"].isin(ggl_attacks(frame))).any():
        out["table2_html"] = table2_page(frame, summary, experiment)
    return out
