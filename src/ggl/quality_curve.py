"""Reconstruction quality against compute: the metrics of an attack's best-so-far image at the
checkpoints of its run (``checkpoints.pt`` of the attack stage), and whether it was still
improving when its budget ran out.

A frame of checkpoint rows has the columns of ``checkpoint_quality``'s rows plus ``defence``,
``attack`` and ``image_id``; compute is in model passes (``ggl.attack.compute``), NaN when the
attack's cost is unknown.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from ggl.metrics import psnr_pm1, ssim

GAIN_DB = 0.5  # mean PSNR gain over the last doubling of compute that counts as improving


def checkpoint_quality(checkpoints: dict[str, torch.Tensor], private: torch.Tensor
                       ) -> list[dict[str, float]]:
    """One row per checkpoint: evaluations, compute (model passes), PSNR ([-1, 1] images, peak
    1) and SSIM of its image against the private image (3, H, W)."""
    images = checkpoints["images"].float()
    truth = private.float().expand_as(images)
    return [{"evaluations": int(e), "compute": float(c), "psnr_db_pm1": p, "ssim": s}
            for e, c, p, s in zip(checkpoints["evaluations"], checkpoints["compute"],
                                  psnr_pm1(images, truth), ssim(images, truth), strict=True)]


def _last_doubling_gain(rows: pd.DataFrame) -> float:
    """PSNR at the last checkpoint minus PSNR at the last one with at most half its
    evaluations (compute is proportional to them); NaN without such a checkpoint."""
    rows = rows.sort_values("evaluations")
    final = rows.iloc[-1]
    earlier = rows[rows["evaluations"] <= final["evaluations"] / 2]
    if earlier.empty:
        return math.nan
    return float(final["psnr_db_pm1"] - earlier.iloc[-1]["psnr_db_pm1"])


def still_improving(frame: pd.DataFrame, threshold_db: float = GAIN_DB) -> pd.DataFrame:
    """Per (defence, attack): the mean over images of the PSNR gain over the last doubling of
    compute (``gain_db``; NaN for a run with a single checkpoint) and ``still_improving``:
    whether it exceeds ``threshold_db``, i.e. the attack had not converged at its budget."""
    gains = (frame.groupby(["defence", "attack", "image_id"], sort=False)
             .apply(_last_doubling_gain, include_groups=False).rename("gain_db").reset_index())
    out = gains.groupby(["defence", "attack"], sort=False)["gain_db"].mean().reset_index()
    out["still_improving"] = out["gain_db"] > threshold_db
    return out
