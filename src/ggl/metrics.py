"""Reconstruction quality: MSE-I, PSNR (two conventions), SSIM, LPIPS, MSE-R.

``CONVENTIONS`` states each column's convention; the metrics stage writes it beside the table.
Without the ImageNet VGG16 weights the LPIPS column is ``lpips_vgg_stand_in`` (random backbone).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ggl.errors import GglError

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILE = "vgg16-397923af.pth"
# The file's full SHA-256 (torchvision's name carries only its first 8 digits), 553,433,881 bytes
VGG16_SHA256 = "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0"


def as_stack(reconstruction: torch.Tensor) -> torch.Tensor:
    """A reconstruction as (n, 3, H, W): one image, or the prior control's samples."""
    return reconstruction if reconstruction.dim() == 4 else reconstruction[None]


def as_batches(reconstruction: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A reconstruction as (samples, B, 3, H, W): one image or batch, or the prior control's
    samples of either."""
    if batch_size == 1:
        return as_stack(reconstruction)[:, None]
    return reconstruction if reconstruction.dim() == 5 else reconstruction[None]


def mse_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n,) per-image MSE of (n, C, H, W) images in [-1, 1]."""
    return (a - b).pow(2).flatten(1).mean(1)


def psnr_from_mse(mse: float, peak: float = 1.0) -> float:
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def match_batch(reconstructions: torch.Tensor, truths: torch.Tensor) -> list[int]:
    """For a batch attack (B > 1), which reconstruction each private image is scored against:
    the assignment minimising the summed MSE (Hungarian, scipy), as the batch benchmarks pair
    them before averaging. ``result[i]`` indexes the reconstruction of truth ``i``."""
    from scipy.optimize import linear_sum_assignment

    if len(truths) == 1:
        return [0]
    cost = (truths[:, None] - reconstructions[None]).pow(2).flatten(2).mean(2)  # (truth, rec)
    rows, cols = linear_sum_assignment(cost.double().cpu().numpy())
    return [int(c) for _, c in sorted(zip(rows, cols, strict=True))]


def psnr_pm1(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """The paper's convention: [-1, 1] tensors, peak 1."""
    return [psnr_from_mse(float(m)) for m in mse_image(a, b)]


def psnr_01(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """The usual convention: images mapped to [0, 1], peak 1."""
    return [psnr_from_mse(float(m)) for m in mse_image((a + 1) / 2, (b + 1) / 2)]


SSIM_WINDOW = 7  # scikit-image's default uniform window


def ssim(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """scikit-image's ``structural_similarity(x, y, channel_axis=2, data_range=1.0)`` of each
    pair of [-1, 1] images mapped to [0, 1], all pairs in one pass: scikit-image's operations
    (7 x 7 uniform window, sample covariance, K1 0.01, K2 0.03, each channel's mean over the
    uncropped interior in float64, channels averaged in float32) on the same float32 arrays,
    so the same values (tests/test_metrics.py), without one call per channel and pair
    (re-identification scores thousands of pairs)."""
    from scipy.ndimage import uniform_filter

    def to01(t: torch.Tensor) -> np.ndarray:
        return ((t.detach().cpu().float() + 1) / 2).clamp(0, 1).numpy()

    x, y = to01(a), to01(b)
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim needs two (n, C, H, W) batches of one shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    n, channels, height, width = x.shape
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, "
                         f"got {height}x{width}")
    x, y = x.reshape(-1, height, width), y.reshape(-1, height, width)

    def mean(v: np.ndarray) -> np.ndarray:  # per 2-D slice: the batch axis is not filtered
        return uniform_filter(v, size=(1, SSIM_WINDOW, SSIM_WINDOW))

    cov_norm = SSIM_WINDOW ** 2 / (SSIM_WINDOW ** 2 - 1)
    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    pad = (SSIM_WINDOW - 1) // 2
    per_channel = np.array([m[pad:-pad, pad:-pad].mean(dtype=np.float64) for m in s],
                           dtype=np.float32).reshape(n, channels)
    return [float(row.mean()) for row in per_channel]


def mse_representation(model: nn.Module, a: torch.Tensor, b: torch.Tensor) -> list[float]:
    from ggl.models import penultimate

    with torch.no_grad():
        return [float(v) for v in (penultimate(model, a) - penultimate(model, b)).pow(2).mean(1)]


def vgg16_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def _vgg16_check(path: Path) -> str | None:
    from ggl.download import hash_problem

    return hash_problem(path, VGG16_SHA256, "torchvision's VGG16, ggl.metrics.VGG16_SHA256")


def fetch_vgg16_weights() -> Path:
    """Torchvision's ImageNet VGG16 weights in the torch cache, their full SHA-256 verified: a
    file there that does not match is moved aside to ``<name>.rejected``."""
    from ggl.download import ensure

    path = vgg16_weights_path()
    try:
        ensure(VGG16_URL, path, _vgg16_check)
    except OSError as exc:  # offline: URLError, socket errors, ...
        raise GglError(
            f"could not download the VGG16 weights LPIPS needs ({exc}). On a machine with "
            f"internet access run `ggl fetch-lpips`, or download {VGG16_URL} and place it at "
            f"{path} (SHA-256 {VGG16_SHA256})") from exc
    return path


def vgg16_features(path: Path) -> dict[str, torch.Tensor]:
    """The ``features.*`` tensors of the file, once its full SHA-256 says it is torchvision's
    VGG16 (an error naming the file otherwise), loaded without unpickling code."""
    from ggl import io

    problem = _vgg16_check(path)
    if problem is not None:
        raise GglError(f"{path}: refused, {problem}. Delete it and run `ggl fetch-lpips`, or "
                       f"download {VGG16_URL} there")
    return {k: v for k, v in io.load_torch(path).items() if k.startswith("features.")}


class Lpips:
    """LPIPS v0.1 (VGG). ``stand_in`` is True when the backbone has random weights. The VGG16
    backbone is built without weights and loaded from the verified file here: no library ever
    unpickles the cached file."""

    def __init__(self, allow_stand_in: bool, device: torch.device | str = "cpu") -> None:
        import lpips

        path = vgg16_weights_path()
        self.stand_in = not path.exists()
        if self.stand_in and not allow_stand_in:
            raise GglError(
                f"LPIPS needs torchvision's ImageNet VGG16 weights at {path}; "
                f"they are missing and this experiment does not allow the random-backbone "
                f"stand-in (metrics.lpips_stand_in: false). Run `ggl fetch-lpips` on a machine "
                f"with internet access, or download {VGG16_URL} to that path.")
        features = None if self.stand_in else vgg16_features(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's 'pretrained' deprecation
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # the stand-in's random backbone is the same every run
                net = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
        if features is not None:
            # lpips keeps torchvision's layer indices inside its slices: sliceK.<i>.weight
            backbone = net.net
            backbone.load_state_dict({k: features[f"features.{k.split('.', 1)[1]}"]
                                      for k in backbone.state_dict()})
        self.net = net.to(device).eval()
        self.column = "lpips_vgg_stand_in" if self.stand_in else "lpips_vgg"

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> list[float]:
        with torch.no_grad():
            return [float(v) for v in self.net(a, b, normalize=False).flatten()]


# --- the metrics stage -------------------------------------------------------------------

CONVENTIONS = {
    "images": "compared in [-1, 1] (mean = std = 0.5 normalisation), at native resolution",
    "mse_i": "mean squared error over C x H x W on [-1, 1] images",
    "psnr_db_pm1": "the paper's PSNR: 10 log10(1 / MSE) on [-1, 1] images (peak 1); "
                   "6.02 dB below psnr_db_01; inf for identical images",
    "psnr_db_01": "the usual PSNR: images mapped to [0, 1], peak 1",
    "ssim": "scikit-image structural_similarity on [0, 1] images, data_range 1",
    "lpips": "LPIPS v0.1, VGG16 backbone (lpips package); lower is better; "
             "lpips_vgg_stand_in = random VGG16 weights (no ImageNet weights here), "
             "not comparable with published LPIPS",
    "mse_r": "MSE between the federated model's penultimate (fc input) features",
    "evaluations": "objective evaluations spent, all trials together (one candidate scored)",
    "compute": "model passes spent, all trials together: one forward and backward pass of the "
               "federated model on one image; a double-backprop evaluation counts its measured "
               "FLOP ratio (ggl.attack.compute); 0 for controls that use no model pass",
    "seconds": "wall seconds of the attack on this image, all trials together",
}


def evaluate(reconstructions: torch.Tensor, truths: torch.Tensor, model: nn.Module,
             lpips_metric: Lpips) -> dict[str, list[float]]:
    """Every image metric for aligned (n, 3, H, W) batches in [-1, 1]."""
    return {
        "mse_i": [float(v) for v in mse_image(reconstructions, truths)],
        "psnr_db_pm1": psnr_pm1(reconstructions, truths),
        "psnr_db_01": psnr_01(reconstructions, truths),
        "ssim": ssim(reconstructions, truths),
        lpips_metric.column: lpips_metric(reconstructions, truths),
        "mse_r": mse_representation(model, reconstructions, truths),
    }
