"""Reconstruction quality: MSE-I, PSNR (two conventions), SSIM, LPIPS, MSE-R.

``CONVENTIONS`` states each column's convention; the metrics stage writes it beside the table.
Without the ImageNet VGG16 weights the LPIPS column is ``lpips_vgg_stand_in`` (random backbone).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
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
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2  # (K1 data_range)^2, (K2 data_range)^2
SSIM_COV_NORM = SSIM_WINDOW ** 2 / (SSIM_WINDOW ** 2 - 1)  # sample (co)variances


def _window_mean(v: np.ndarray) -> np.ndarray:
    """The 7 x 7 uniform filter of each 2-D slice of (n, C, H, W): the first two axes are not
    filtered, so a slice's value does not depend on what else is in the batch."""
    from scipy.ndimage import uniform_filter

    return uniform_filter(v, size=(1, 1, SSIM_WINDOW, SSIM_WINDOW))


@dataclass(frozen=True)
class SsimSide:
    """One side of SSIM pairs: (n, C, H, W) images in [0, 1] (float32) with their windowed
    means and sample variances, computed once for an image compared with many (each
    reconstruction is ranked against the same re-identification candidates)."""

    images: np.ndarray
    mean: np.ndarray
    var: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, k: int) -> SsimSide:
        """Image ``k`` alone, as a batch of one that broadcasts against any other side."""
        return SsimSide(self.images[k:k + 1], self.mean[k:k + 1], self.var[k:k + 1])


def ssim_side(images: torch.Tensor) -> SsimSide:
    """(n, C, H, W) images in [-1, 1] as one side of SSIM pairs (``ssim_pairs``)."""
    x = ((images.detach().cpu().float() + 1) / 2).clamp(0, 1).numpy()
    if x.ndim != 4:
        raise ValueError(f"ssim needs (n, C, H, W) batches, got {tuple(x.shape)}")
    if min(x.shape[2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, "
                         f"got {x.shape[2]}x{x.shape[3]}")
    mean = _window_mean(x)
    return SsimSide(x, mean, SSIM_COV_NORM * (_window_mean(x * x) - mean * mean))


def ssim_pairs(a: SsimSide, b: SsimSide) -> list[float]:
    """SSIM of each pair of two sides of one shape, or of a one-image side with each image of
    the other (broadcast: the same values as the image repeated)."""
    if a.images.shape[1:] != b.images.shape[1:] or (len(a) != len(b) and 1 not in (len(a),
                                                                                   len(b))):
        raise ValueError(f"ssim needs two (n, C, H, W) batches of one shape, got "
                         f"{a.images.shape} and {b.images.shape}")
    ux, uy = a.mean, b.mean
    vxy = SSIM_COV_NORM * (_window_mean(a.images * b.images) - ux * uy)
    s = (((2 * ux * uy + SSIM_C1) * (2 * vxy + SSIM_C2))
         / ((ux ** 2 + uy ** 2 + SSIM_C1) * (a.var + b.var + SSIM_C2)))
    n, channels, height, width = s.shape
    pad = (SSIM_WINDOW - 1) // 2
    # one slice at a time, as scikit-image reduces each channel: the same float64 sums
    per_channel = np.array([m[pad:-pad, pad:-pad].mean(dtype=np.float64)
                            for m in s.reshape(-1, height, width)],
                           dtype=np.float32).reshape(n, channels)
    return [float(row.mean()) for row in per_channel]


def ssim(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """scikit-image's ``structural_similarity(x, y, channel_axis=2, data_range=1.0)`` of each
    pair of [-1, 1] images mapped to [0, 1], all pairs in one pass: scikit-image's operations
    (7 x 7 uniform window, sample covariance, K1 0.01, K2 0.03, each channel's mean over the
    uncropped interior in float64, channels averaged in float32) on the same float32 arrays,
    so the same values (tests/test_metrics.py), without one call per channel and pair
    (re-identification scores thousands of pairs)."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim needs two (n, C, H, W) batches of one shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    return ssim_pairs(ssim_side(a), ssim_side(b))


def representation(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The model's penultimate (fc input) features of a batch, without gradients."""
    from ggl.models import penultimate

    with torch.no_grad():
        return penultimate(model, images)


def mse_features(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Per-row MSE of two (n, d) feature batches."""
    return [float(v) for v in (a - b).pow(2).mean(1)]


def mse_representation(model: nn.Module, a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return mse_features(representation(model, a), representation(model, b))


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

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Each layer's unit-normalised backbone activations of [-1, 1] images: all that
        ``distance`` needs of one side, so an image scored against many is run through VGG
        once. The lpips package's own steps in its order (its ``forward`` runs them on both
        sides each call); tests/test_metrics.py holds the values to its ``forward``'s."""
        import lpips

        with torch.no_grad():
            return [lpips.normalize_tensor(out)
                    for out in self.net.net(self.net.scaling_layer(images))]

    def distance(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> list[float]:
        """LPIPS of each pair of images given by their ``features`` (two batches of one
        size: a batch's composition changes its features' last bits, so the truth's are
        computed at the batch size they are compared at)."""
        import lpips

        with torch.no_grad():
            total = 0  # summed from 0 in lpips' layer order, as its forward does
            for lin, fa, fb in zip(self.net.lins, a, b, strict=True):
                total = total + lpips.spatial_average(lin((fa - fb) ** 2), keepdim=True)
            return [float(v) for v in total.flatten()]

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> list[float]:
        return self.distance(self.features(a), self.features(b))


@dataclass
class Truth:
    """Private images (n, 3, H, W) aligned with reconstructions, with their LPIPS and
    penultimate features computed on first use and kept: the metrics stage scores one private
    image against every defence's and attack's reconstruction of it (half of LPIPS' time went
    to its features, recomputed for each)."""

    images: torch.Tensor
    _lpips: list[torch.Tensor] | None = field(default=None, repr=False)
    _representation: dict[nn.Module, torch.Tensor] = field(default_factory=dict, repr=False)

    def lpips_features(self, metric: Lpips) -> list[torch.Tensor]:
        if self._lpips is None:
            self._lpips = metric.features(self.images)
        return self._lpips

    def representation(self, model: nn.Module) -> torch.Tensor:
        if model not in self._representation:
            self._representation[model] = representation(model, self.images)
        return self._representation[model]


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
    "seconds": ("wall seconds of the attack on this image, all trials together; of updates "
                "attacked side by side (lockstep_updates > 1), their pass's seconds / their count"),
}


def evaluate(reconstructions: torch.Tensor, truths: torch.Tensor | Truth, model: nn.Module,
             lpips_metric: Lpips) -> dict[str, list[float]]:
    """Every image metric for aligned (n, 3, H, W) batches in [-1, 1]; ``truths`` as a
    ``Truth`` keeps its features for the next call."""
    truth = truths if isinstance(truths, Truth) else Truth(truths)
    images = truth.images
    return {
        "mse_i": [float(v) for v in mse_image(reconstructions, images)],
        "psnr_db_pm1": psnr_pm1(reconstructions, images),
        "psnr_db_01": psnr_01(reconstructions, images),
        "ssim": ssim(reconstructions, images),
        lpips_metric.column: lpips_metric.distance(lpips_metric.features(reconstructions),
                                                   truth.lpips_features(lpips_metric)),
        "mse_r": mse_features(representation(model, reconstructions),
                              truth.representation(model)),
    }
