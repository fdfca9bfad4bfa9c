"""How much a received gradient leaks about *this* image, beyond what the attacker knew anyway.

- **Above control**: an attack's metric (PSNR, SSIM, LPIPS, and the re-identification top-1
  below) minus that of the strongest control (``ggl.attack.controls``) on the same image,
  signed so that positive = more leakage. The strongest control is, per defence and metric, the
  control with the best mean over images.
- **Re-identification**: the true private image ranked among itself and a pool of other private
  images of the inferred class (never attacked) by SSIM to the reconstruction; rank 1 = the
  server could tell which image it was. A stack of prior samples gives the mean over samples.
  At client batch size B > 1 each candidate scores its best SSIM over the batch's B
  reconstructions and the pool is of the truth's own class, so the truth gains nothing from
  the assignment that pairs it with a reconstruction (and an inferred label) for PSNR.
- **Intervals** over images: a percentile bootstrap of the mean (paired differences) and the
  Wilson score interval of a rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from ggl.settings import CONTROLS

if TYPE_CHECKING:
    from ggl.metrics import SsimSide

CONFIDENCE = 0.95
RESAMPLES = 9999
INTERVALS = (f"{CONFIDENCE:.0%} intervals over images: percentile bootstrap of the mean "
             f"({RESAMPLES} resamples, paired by image); rates: Wilson score interval")
CONVENTIONS = {
    "samples": "images in the reconstruction: the prior control's samples, whose metrics are "
               "averaged; 1 for every other attack",
    "<metric>_above_control": "the metric (PSNR, SSIM, LPIPS, reid_top1_ssim) minus the "
                              "strongest control's on the same image, signed so that positive "
                              "= more leakage (LPIPS: control - attack)",
    "<metric>_control": "the strongest control of that defence and metric: the control "
                        "(prior, label-only, noise-gradient) with the best mean over images",
    "reid_rank_ssim": "rank of the true private image among itself and the re-identification "
                      "pool (other private images of the inferred class, never attacked) by "
                      "SSIM to the reconstruction; 1 = identified; ties count against the "
                      "truth; at client batch size B > 1 every candidate scores its best SSIM "
                      "over the batch's B reconstructions (not the one assigned to the truth "
                      "by MSE, which would favour the truth), among images of the truth's "
                      "own class",
    "reid_top1_ssim": "1 when the true image ranks first (the prior: share of its samples)",
    "reid_candidates": "images ranked (the truth and the pool); chance top-1 = 1 / this",
    "intervals": INTERVALS,
}


# --- re-identification ---------------------------------------------------------------------

def reid_pool(labels: torch.Tensor, attacked: Sequence[int], per_class: int
              ) -> dict[int, list[int]]:
    """Per class, the first ``per_class`` private indices of that class that no client sent
    (fewer where the private split has fewer: ``short_classes`` names them)."""
    skip = set(attacked)
    pool: dict[int, list[int]] = {}
    for index, label in enumerate(labels.tolist()):
        members = pool.setdefault(int(label), [])
        if index not in skip and len(members) < per_class:
            members.append(index)
    return pool


def short_classes(pool: dict[int, list[int]], per_class: int) -> dict[int, int]:
    """Classes whose pool is smaller than asked: chance is then 1 / (its size + 1)."""
    return {c: len(m) for c, m in pool.items() if len(m) < per_class}


def reid_rank(reconstructions: torch.Tensor, truth: torch.Tensor, distractors: torch.Tensor,
              batch: int = 1) -> tuple[float, float]:
    """Rank of ``truth`` (3, H, W) among itself and ``distractors`` (m, 3, H, W) by SSIM to each
    reconstruction (n, 3, H, W), ties counted against the truth: (mean rank, share ranked
    first) over the n reconstructions; with ``batch`` B > 1, over the n / B samples of a
    client batch (``reid_rank_among``)."""
    from ggl.metrics import ssim_side

    return reid_rank_among(ssim_side(reconstructions),
                           ssim_side(torch.cat([truth[None], distractors])), batch)


def reid_rank_among(reconstructions: SsimSide, candidates: SsimSide, batch: int = 1
                    ) -> tuple[float, float]:
    """``reid_rank`` with both sides' SSIM statistics given (``ggl.metrics.ssim_side``;
    the truth first among the candidates): the metrics stage computes a candidate set's once
    for every reconstruction ranked against it. With ``batch`` B > 1 the reconstructions are
    samples of B consecutive images, one client batch's, and each candidate scores its best
    SSIM over a sample's B: handing the truth the reconstruction that an assignment against
    the truth chose would favour it over the pool (noise re-identified at 2.6x chance)."""
    from ggl.metrics import ssim_pairs

    if batch < 1 or len(reconstructions) % batch:
        raise ValueError(f"{len(reconstructions)} reconstructions are not samples of {batch}")
    ranks = []
    for start in range(0, len(reconstructions), batch):
        scores = torch.stack([torch.tensor(ssim_pairs(reconstructions[k], candidates))
                              for k in range(start, start + batch)]).amax(0)
        ranks.append(1 + int((scores[1:] >= scores[0]).sum()))
    return float(np.mean(ranks)), float(np.mean([r == 1 for r in ranks]))


# --- above control ----------------------------------------------------------------------------

# lpips: the frame's LPIPS column; reid_top1_ssim: identification is leakage as much as
# likeness is, and a blurry class mean, which wins on PSNR, identifies no one
LEAKAGE_METRICS = ("psnr_db_pm1", "ssim", "lpips", "reid_top1_ssim")


def _columns(frame: pd.DataFrame) -> dict[str, str]:
    """Leakage metric -> its column in ``frame`` (the LPIPS column names its backbone)."""
    lpips = [c for c in ("lpips_vgg", "lpips_vgg_stand_in") if c in frame.columns]
    return {m: (lpips[0] if m == "lpips" else m) for m in LEAKAGE_METRICS
            if m != "lpips" or lpips}


def sign(metric: str) -> int:
    """+1 where a higher value is more leakage, -1 where lower is (LPIPS)."""
    return -1 if metric.startswith("lpips") else 1


def above_control(frame: pd.DataFrame, controls: Sequence[str] = CONTROLS) -> pd.DataFrame:
    """``frame`` (metrics.csv rows) with ``<column>_above_control`` and ``<column>_control``
    (the strongest control's name) per leakage metric; NaN without a control. ``controls``:
    the control methods to choose from."""
    frame = frame.copy()
    is_control = frame["method"].isin(controls)
    for column in _columns(frame).values():
        above = pd.Series(np.nan, index=frame.index)
        control = pd.Series(None, index=frame.index, dtype=object)
        for _, rows in frame.groupby(_setting(frame), sort=False):
            controls = rows[is_control.loc[rows.index]]
            if not len(controls):
                continue
            means = controls.groupby("attack")[column].mean() * sign(column)
            best = means.idxmax()
            reference = controls[controls["attack"] == best].set_index("image_id")[column]
            above.loc[rows.index] = sign(column) * (
                rows[column].to_numpy() - reference.loc[rows["image_id"]].to_numpy())
            control.loc[rows.index] = best
        frame[f"{column}_above_control"] = above
        frame[f"{column}_control"] = control
    return frame


def _setting(frame: pd.DataFrame) -> list[str]:
    """The columns that name one audited setting: the client protocol (when recorded) and the
    defence; controls are compared within it."""
    return [c for c in ("client", "defence") if c in frame]


# --- intervals ----------------------------------------------------------------------------

def bootstrap_interval(values: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the mean; (nan, nan) below 2 values."""
    from scipy.stats import bootstrap

    data = np.asarray(values, dtype=float)
    data = data[np.isfinite(data)]
    if len(data) < 2:
        return math.nan, math.nan
    if np.all(data == data[0]):  # no spread: the bootstrap distribution is one point
        return float(data[0]), float(data[0])
    result = bootstrap((data,), np.mean, n_resamples=RESAMPLES, confidence_level=CONFIDENCE,
                       method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def wilson_interval(rate: float, n: int) -> tuple[float, float]:
    """The Wilson score interval of a rate over n trials. Written out because scipy's
    ``binomtest`` takes whole counts, and the prior control's per-image rates are fractions."""
    from scipy.stats import norm

    if n == 0 or not math.isfinite(rate):
        return math.nan, math.nan
    z = float(norm.ppf(0.5 + CONFIDENCE / 2))
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# --- the table ----------------------------------------------------------------------------

def leakage_table(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per (defence, attack): each leakage metric above its strongest control (mean, interval,
    which control), the re-identification rate and mean rank with intervals and chance levels,
    and a verdict in words on PSNR."""
    rows = []
    columns = _columns(frame)
    for (defence, attack), part in frame.groupby(["defence", "attack"], sort=False):
        row = {"defence": defence, "attack": attack, "method": part["method"].iloc[0],
               "control": bool(part["method"].iloc[0] in CONTROLS), "images": len(part),
               "compute": part["compute"].mean() if "compute" in part else math.nan,
               "epsilon": part["epsilon"].iloc[0] if "epsilon" in part else math.nan}
        for column in columns.values():
            values = part[f"{column}_above_control"]
            low, high = bootstrap_interval(values, seed)
            row.update({f"{column}_above_control": values.mean(),
                        f"{column}_above_control_low": low,
                        f"{column}_above_control_high": high,
                        f"{column}_control": part[f"{column}_control"].iloc[0]})
        top1 = part["reid_top1_ssim"].mean()
        low, high = wilson_interval(top1, len(part))
        rank_low, rank_high = bootstrap_interval(part["reid_rank_ssim"], seed)
        row.update({"reid_top1_ssim": top1, "reid_top1_ssim_low": low,
                    "reid_top1_ssim_high": high,
                    "reid_top1_chance": float((1 / part["reid_candidates"]).mean()),
                    "reid_rank_ssim": part["reid_rank_ssim"].mean(),
                    "reid_rank_ssim_low": rank_low, "reid_rank_ssim_high": rank_high,
                    "reid_rank_chance": float(((part["reid_candidates"] + 1) / 2).mean())})
        row["verdict"] = ("control: what the attacker gets without the gradient"
                          if row["control"] else verdict(row))
        rows.append(row)
    return pd.DataFrame(rows)


def verdict(row: dict) -> str:
    """What the PSNR and re-identification intervals above control let one say."""
    bounds = {name: (row.get(f"{key}_above_control_low", math.nan),
                     row.get(f"{key}_above_control_high", math.nan))
              for name, key in (("PSNR", "psnr_db_pm1"), ("re-identification", "reid_top1_ssim"))}
    known = {n: b for n, b in bounds.items() if math.isfinite(b[0]) and math.isfinite(b[1])}
    if not known:
        return "no control or too few images: leakage not measured"
    above = [n for n, (low, _) in known.items() if low > 0]
    if above:
        return f"leaks beyond the controls ({' and '.join(above)})"
    if all(high < 0 for _, high in known.values()):
        return "below the strongest control"
    return "no leakage beyond the controls was measured (an interval contains 0)"
