"""Metrics on known pairs, and the aggregator's refusal of missing runs."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from conftest import run_stage, tiny_params
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ggl.config import ModelConfig, Params
from ggl.errors import GglError, MissingRunError
from ggl.leakage import reid_rank
from ggl.metrics import (
    Lpips,
    Truth,
    evaluate,
    mse_representation,
    psnr_01,
    psnr_pm1,
    ssim,
    ssim_pairs,
    ssim_side,
)
from ggl.models import build_model
from ggl.report import check_complete


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8


@pytest.fixture(scope="module")
def lpips_metric():
    return Lpips(allow_stand_in=True)


def test_identical_images_score_perfectly(images, lpips_metric):
    model = build_model(ModelConfig("resnet18-cifar", 4, 0, 10))
    values = evaluate(images, images, model, lpips_metric)
    assert values["mse_i"] == [0, 0, 0] and values["mse_r"] == [0, 0, 0]
    assert all(math.isinf(v) and v > 0 for v in values["psnr_db_pm1"] + values["psnr_db_01"])
    assert values["ssim"] == pytest.approx([1, 1, 1])
    assert values[lpips_metric.column] == pytest.approx([0, 0, 0], abs=1e-6)


def test_constant_offset_gives_the_analytic_psnr_in_both_conventions(images):
    offset = 0.1  # in [-1, 1] units: MSE = 0.01 there, 0.0025 on [0, 1]
    shifted = images + offset
    assert psnr_pm1(shifted, images) == pytest.approx([20.0] * 3, abs=1e-4)
    assert psnr_01(shifted, images) == pytest.approx([20 + 20 * math.log10(2)] * 3, abs=1e-4)


def test_psnr_agrees_with_scikit_image(images):
    noisy = (images + 0.05 * torch.randn(images.shape, generator=torch.Generator()
                                          .manual_seed(1))).clamp(-1, 1)
    expected = [peak_signal_noise_ratio(((a + 1) / 2).numpy(), ((b + 1) / 2).numpy(),
                                        data_range=1.0) for a, b in zip(images, noisy,
                                                                        strict=True)]
    assert psnr_01(noisy, images) == pytest.approx(expected, rel=1e-5)
    assert ssim(noisy, images)[0] < 1


@pytest.mark.parametrize("shape", [(12, 3, 32, 32), (4, 1, 7, 9), (3, 3, 40, 24)])
def test_batched_ssim_is_scikit_images_value_for_every_pair(shape):
    """One pass over all pairs gives each pair exactly what scikit-image's own call gives."""
    gen = torch.Generator().manual_seed(2)
    a = torch.rand(shape, generator=gen) * 2.4 - 1.2  # some pixels outside [-1, 1]: clamped
    b = (a + 0.3 * torch.randn(shape, generator=gen)).clamp(-1, 1)

    def to01(t: torch.Tensor):
        return ((t + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()

    expected = [float(structural_similarity(x, y, channel_axis=2, data_range=1.0))
                for x, y in zip(to01(a), to01(b), strict=True)]
    assert ssim(a, b) == expected
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim(a[..., :6, :], b[..., :6, :])


def test_lpips_from_features_is_the_lpips_packages_value_bit_for_bit(images, lpips_metric):
    other = images.flip(0) * 0.7
    with torch.no_grad():
        expected = [float(v) for v in lpips_metric.net(images, other, normalize=False).flatten()]
    assert lpips_metric(images, other) == expected
    assert lpips_metric.distance(lpips_metric.features(images),
                                 lpips_metric.features(other)) == expected


@pytest.mark.parametrize("n", [1, 4])
def test_a_truths_kept_features_score_as_recomputing_them_does(images, lpips_metric, n):
    """A Truth computes its features once; every later reconstruction gets exactly the values
    the package's LPIPS and a fresh MSE-R give."""
    model = build_model(ModelConfig("resnet18-cifar", 4, 0, 10))
    truth = Truth(images[0][None].expand(n, -1, -1, -1))
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        reconstruction = torch.rand(n, 3, 32, 32, generator=gen) * 2 - 1
        values = evaluate(reconstruction, truth, model, lpips_metric)
        with torch.no_grad():
            lpips = [float(v) for v in lpips_metric.net(reconstruction, truth.images,
                                                        normalize=False).flatten()]
        assert values[lpips_metric.column] == lpips
        assert values["mse_r"] == mse_representation(model, reconstruction, truth.images)
        assert values == evaluate(reconstruction, truth.images.clone(), model, lpips_metric)


def test_ssim_of_one_image_against_many_is_that_of_the_image_repeated(images):
    gen = torch.Generator().manual_seed(4)
    candidates = torch.rand(6, 3, 32, 32, generator=gen) * 2 - 1
    one = images[:1]
    assert ssim_pairs(ssim_side(one), ssim_side(candidates)) == ssim(one.expand_as(candidates),
                                                                     candidates)
    assert ssim_pairs(ssim_side(images)[1], ssim_side(candidates)) == ssim(
        images[1:2].expand_as(candidates), candidates)
    with pytest.raises(ValueError, match="of one shape"):
        ssim_pairs(ssim_side(images), ssim_side(candidates))


def test_a_private_image_scores_a_reconstruction_once_and_as_computed_afresh(images,
                                                                             lpips_metric):
    """The metrics stage's per-image scorer: its kept truth features, candidate statistics
    and scores give what evaluate and reid_rank give from scratch; another model's MSE-R is
    its own."""
    from ggl.stages.metrics import PrivateImage

    gen = torch.Generator().manual_seed(5)
    split = torch.rand(8, 3, 32, 32, generator=gen) * 2 - 1
    pool = {0: [3, 4, 5], 1: [6, 7]}
    model = build_model(ModelConfig("resnet18-cifar", 4, 0, 10))
    other = build_model(ModelConfig("resnet18-cifar", 4, 1, 10))
    scorer = PrivateImage(split[0], split, pool, torch.device("cpu"), lpips_metric)
    for stack in (split[1:2] * 0.5, split[1:4] * 0.9, split[1:2] * 0.5):
        for m in (model, other):
            for label in (0, 1):
                values, rank, top1 = scorer.score(stack, m, label)
                truth = split[0][None].expand_as(stack)
                assert values == evaluate(stack, truth, m, lpips_metric)
                assert (rank, top1) == reid_rank(stack, split[0], split[pool[label]])
    assert scorer.score(split[1:2] * 0.5, model, 0)[0]["mse_r"] != scorer.score(
        split[1:2] * 0.5, other, 0)[0]["mse_r"]


def test_stand_in_lpips_is_labelled_and_refused_where_params_forbid_it(lpips_metric):
    if not lpips_metric.stand_in:
        pytest.skip("real VGG16 weights are present on this machine")
    assert lpips_metric.column == "lpips_vgg_stand_in"
    with pytest.raises(GglError, match="ggl fetch-lpips"):
        Lpips(allow_stand_in=False)


def test_missing_runs_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = Params.from_raw(tiny_params())
    with pytest.raises(MissingRunError, match="none/ggl-adam/img0"):
        run_stage(params, "metrics")
    partial = pd.DataFrame([{"client": "fedsgd", "defence": "none", "attack": "ggl-adam",
                             "image_id": "img0"}])
    with pytest.raises(MissingRunError, match="none/ggl-adam/img1"):
        check_complete(partial, params)


def test_a_defence_strength_sweep_gets_its_plot(tmp_path):
    from ggl import io
    from ggl.pipeline.registry import kind
    from ggl.report import sweep_plot

    raw = tiny_params()
    raw["defences"] = {"none": [], **{f"soteria-{r}": [{"kind": "soteria", "rate": float(r)}]
                                      for r in (20, 50, 80)},
                       "noise": [{"kind": "noise", "sigma": 0.01}]}
    params = Params.from_raw(raw)
    sweeps = params.sweeps()
    assert sweeps == {"soteria": {"soteria-20": 20.0, "soteria-50": 50.0, "soteria-80": 80.0,
                                  "none": 0.0}}  # one noise level is no sweep
    (aggregate,) = kind("aggregate").instances(params)
    assert "results/tiny/figures/sweep_soteria.png" in aggregate.outs()
    frame = pd.DataFrame([{"defence": d, "attack": a, "image_id": i, "psnr_db_pm1": s / 10,
                           "lpips_vgg": 1 - s / 100}
                          for d, s in sweeps["soteria"].items() for a in ("dlg", "ggl-adam")
                          for i in ("img0", "img1")])
    path = io.save_figure(tmp_path / "s.png",
                          sweep_plot(frame, "soteria", sweeps["soteria"], "lpips_vgg"))
    assert path.stat().st_size > 0


def test_a_permuted_batch_is_matched_back_to_its_truths():
    from ggl.metrics import match_batch

    gen = torch.Generator().manual_seed(0)
    truths = torch.rand(5, 3, 8, 8, generator=gen) * 2 - 1
    order = [3, 0, 4, 1, 2]
    noisy = truths[order] + 0.05 * torch.randn(5, 3, 8, 8, generator=gen)
    matched = match_batch(noisy, truths)
    assert [order[m] for m in matched] == [0, 1, 2, 3, 4]
    # the optimal assignment, not each truth's nearest: both truths' nearest is the first image
    flat = [torch.full((3, 2, 2), v) for v in (0.0, 1.0, 0.45, -1.0)]
    assert match_batch(torch.stack(flat[2:]), torch.stack(flat[:2])) == [1, 0]
