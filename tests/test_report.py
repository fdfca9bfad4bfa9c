"""The report's pages and figures from a made-up metrics table: HTML tables that hold the
numbers where they belong, a first page that says when GGL loses, figures within range."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch

from ggl.leakage import above_control, leakage_table
from ggl.report import (
    compose_grid,
    headline,
    metric_plot,
    metric_range,
    reconstruction_grid,
    summarise,
)
from ggl.report_html import html_pages

ATTACKS = {"ggl-adam": "ggl-adam", "my-cmaes": "ggl-cmaes", "dlg": "dlg", "ig": "ig",
           "label-only": "label-only"}
# mean PSNR per (defence, attack): GGL wins without defence, loses under clipping; the control
# beats every baseline without defence (it is still no baseline)
PSNR = {"none": {"ggl-adam": 14.0, "my-cmaes": 12.0, "dlg": 9.0, "ig": 10.0, "label-only": 11.0},
        "clipping": {"ggl-adam": 8.0, "my-cmaes": 9.5, "dlg": 7.0, "ig": 11.0,
                     "label-only": 7.5}}


def made_up_frame(lpips: str = "lpips_vgg") -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for defence, by_attack in PSNR.items():
        for attack, psnr in by_attack.items():
            for k, image in enumerate(("img0", "img1", "img2")):
                rows.append({
                    "image_id": image, "defence": defence, "attack": attack,
                    "method": ATTACKS[attack], "psnr_db_pm1": psnr + (k - 1) * 2.0,
                    "psnr_db_01": psnr + 6.02 + (k - 1) * 2.0, "mse_i": 0.1 * (k + 1),
                    # near the ends of their ranges: bars of mean ± sd would leave them
                    "ssim": 0.999 - 0.3 * k ** 2, lpips: 0.002 + 0.3 * k ** 2,
                    "mse_r": float(rng.uniform(1e-5, 1e-4)), "label_correct": k != 2,
                    "evaluations": 100, "reid_rank_ssim": 1 + k,
                    "reid_top1_ssim": float(k == 0), "reid_candidates": 21})
    return above_control(pd.DataFrame(rows))


class Cells(HTMLParser):
    """Every table of a page as rows of cell texts (grey paper notes included)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def tables_of(text: str) -> list[list[list[str]]]:
    parser = Cells()
    parser.feed(text)
    return parser.tables


def grid(table: list[list[str]]) -> dict[tuple[str, str], str]:
    """{(row header, column header): cell} of a table whose first row is its header."""
    header, *rows = table
    return {(row[0], col): cell for row in rows for col, cell in zip(header[1:], row[1:],
                                                                      strict=True)}


def leading_number(cell: str) -> float:
    return float(cell.split(" ± ")[0].split()[0])


@pytest.fixture
def pages() -> dict[str, str]:
    frame = made_up_frame()
    quality = {"sample_confidence": 0.9, "real_confidence": 0.95, "confidence_ratio": 0.947,
               "classes_covered": 9, "num_classes": 10, "classifier_public_accuracy": 0.99,
               "classifier_private_accuracy": 0.97, "n_samples": 2000, "n_private": 500,
               "generator_stand_in": False, "convention": "confidence = top probability"}
    return html_pages(frame, summarise(frame), leakage_table(frame), "celeba32", quality,
                      "dcgan")


def test_table3_holds_every_mean_in_its_cell(pages):
    summary = summarise(made_up_frame())
    psnr = grid(tables_of(pages["table3_html"])[0])  # the first grid is PSNR [-1, 1]
    assert {a for a, _ in psnr} == set(ATTACKS) and {d for _, d in psnr} == set(PSNR)
    for row in summary.itertuples():
        assert leading_number(psnr[(row.attack, row.defence)]) == pytest.approx(
            row.psnr_db_pm1_mean, rel=1e-3)
    # the paper's Table 3 number under ours, for the paper's experiment and names
    assert "paper" not in psnr[("my-cmaes", "clipping")]  # not a name the paper config uses
    assert "paper 12.65 (Table 3)" in psnr[("ig", "clipping")]
    assert "paper 13.7 (Table 2)" in psnr[("ggl-adam", "none")]


def test_table2_has_the_ggl_attacks_only_and_the_conventions(pages):
    text = pages["table2_html"]
    rows = [r[0] for r in tables_of(text)[0][1:]]
    assert rows == ["ggl-adam", "my-cmaes"]
    assert "over 3 private images" in text and "[-1, 1]" in text and "VGG16" in text
    assert "<script" not in text and "http" not in text  # self-contained


def test_the_overview_names_the_best_of_each_side_and_says_when_ggl_loses(pages):
    frame = made_up_frame()
    best = headline(frame, summarise(frame), leakage_table(frame)).set_index("defence")
    assert best.loc["none", "ggl_attack"] == "ggl-adam"
    assert best.loc["none", "baseline_attack"] == "ig"
    assert best.loc["clipping", "ggl_attack"] == "my-cmaes"
    assert best.loc["clipping", "margin_db"] == pytest.approx(9.5 - 11.0)
    text = pages["overview_html"]
    assert "GGL does NOT beat the best baseline under: clipping" in text
    assert "1 of 2 defences (none)" in text
    groups, header, *rows = tables_of(text)[1]
    assert groups[1:4] == ["best GGL attack", "best baseline", ""]
    by_defence = {row[0]: row for row in rows}
    assert by_defence["clipping"][header.index("attack", 2)] == "ig"
    assert by_defence["clipping"][9] == "NO, -1.50 dB"
    assert by_defence["none"][10].startswith("ggl-adam: 13.7 dB")  # the paper's, Table 2
    quality = dict(r for r in tables_of(text)[2][1:])
    assert quality["confidence ratio (samples / private images)"] == "0.947"
    assert quality["classes covered by the samples"] == "9 of 10"


def test_the_overview_leads_with_leakage_above_the_strongest_control(pages):
    text = pages["overview_html"]
    assert text.index("Leakage above control") < text.index("GGL against the baselines")
    header, *rows = tables_of(text)[0]
    cells = {(r[0], r[1]): r for r in rows}
    # per image the paired difference is constant here: the interval is one point
    assert cells[("none", "ggl-adam")][2] == "3 [3, 3]"
    assert cells[("none", "ig")][2] == "-1 [-1, -1]"  # the control is no baseline
    assert cells[("none", "ggl-adam")][5] == "leaks beyond the controls (PSNR)"
    assert cells[("clipping", "ig")][2] == "3.5 [3.5, 3.5]"
    assert "none: leaks beyond the controls (PSNR) (ggl-adam, +3.00 dB" in text
    assert "label-only" in pages["leakage_html"] and "chance" in pages["leakage_html"]


def test_without_controls_the_overview_says_leakage_was_not_measured():
    frame = made_up_frame()
    frame = above_control(frame[frame["method"] != "label-only"], controls=())
    text = html_pages(frame, summarise(frame), leakage_table(frame), "digits", None,
                      "dcgan")["overview_html"]
    assert "No control ran: leakage beyond the prior was not measured." in text
    assert "no control or too few images" in text and ">nan<" not in text


def test_a_stand_in_lpips_gets_no_paper_lpips_and_no_quality_without_a_dcgan():
    frame = made_up_frame("lpips_vgg_stand_in")
    pages = html_pages(frame, summarise(frame), leakage_table(frame), "celeba32", None,
                       "biggan-deep-256")
    lpips = grid(tables_of(pages["table3_html"])[1])
    assert "paper" not in lpips[("ggl-adam", "none")]
    assert "STAND-IN" in pages["table3_html"]
    assert "no quality check" in pages["overview_html"]


@pytest.mark.parametrize("metric", ["ssim", "lpips_vgg", "psnr_db_pm1"])
def test_metric_figures_stay_in_range_and_their_legend_outside(metric):
    frame = made_up_frame()
    fig = metric_plot(frame, metric)
    ax = fig.axes[0]
    low, high = metric_range(metric)
    bottom, top = ax.get_ylim()
    assert low <= bottom and top <= high
    assert bottom <= frame[metric].min() and frame[metric].max() <= top  # no point cut off
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # right of the axes, over no data


def test_a_composed_grid_holds_each_image_at_its_cell_between_white_gaps():
    gen = torch.Generator().manual_seed(0)
    cells = [[torch.rand(3, 4, 6, generator=gen) * 2.4 - 1.2 for _ in range(3)]
             for _ in range(2)]
    out = compose_grid(cells, gap=2)
    assert out.shape == (2 * 4 + 2, 3 * 6 + 2 * 2, 3) and out.dtype == np.float32
    for i, row in enumerate(cells):
        for j, image in enumerate(row):
            expected = ((image.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()
            assert np.array_equal(out[i * 6:i * 6 + 4, j * 8:j * 8 + 6], expected)
    assert (out[4:6] == 1).all() and (out[:, 6:8] == 1).all() and (out[:, 14:16] == 1).all()


def test_the_reconstruction_grid_is_one_image_labelled_by_defence_and_attack():
    gen = torch.Generator().manual_seed(1)
    private = torch.rand(3, 8, 16, generator=gen) * 2 - 1  # a batch of two, side by side
    shown = {d: {a: torch.rand(3, 8, 16, generator=gen) * 2 - 1 for a in ("ggl-adam", "dlg")}
             for d in ("none", "dp-sgd")}
    fig = reconstruction_grid(private, shown, "reconstructions of batch0", {"dp-sgd": 2.5})
    (ax,) = fig.axes
    (image,) = ax.get_images()
    assert np.array_equal(image.get_array(), compose_grid(
        [[private, private], *([shown[d][a] for d in shown] for a in ("ggl-adam", "dlg"))],
        gap=2))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["none", "dp-sgd (ε=2.5)"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["private", "ggl-adam", "dlg"]
    assert ax.get_title() == "reconstructions of batch0"
