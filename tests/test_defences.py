"""Defences do what their settings say, and the attacker's estimates recover them."""

from __future__ import annotations

import pytest
import torch

from ggl.attack.labels import infer_label
from ggl.client import client_gradient
from ggl.config import DefenceStep, ModelConfig
from ggl.defences import (
    ClientContext,
    apply_defence,
    estimate_defence,
    fraction_count,
    global_norm,
    layer_norms,
    soteria_mask,
    soteria_scores,
)
from ggl.models import build_model, fc_weight_index


@pytest.fixture(scope="module")
def small():
    model = build_model(ModelConfig("resnet18-cifar", width=8, seed=0, num_classes=10))
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    label = torch.tensor([3])
    return model, image, label, client_gradient(model, image, label)


def _ctx(model, image, label, seed=0):
    return ClientContext(model, image, label, fc_weight_index(model),
                         torch.Generator().manual_seed(seed))


def _defend(small, *steps, seed=0):
    model, image, label, grads = small
    return apply_defence(grads, steps, _ctx(model, image, label, seed))


def _norm(grads):
    return float(global_norm([g[None] for g in grads]))


def test_global_clipping_bounds_the_norm_and_spares_small_gradients(small):
    norm = _norm(small[3])
    clipped = _defend(small, DefenceStep("clipping", {"bound": norm / 3, "per_layer": False}))
    assert _norm(clipped) <= norm / 3 * (1 + 1e-6)
    unclipped = _defend(small, DefenceStep("clipping", {"bound": norm * 2, "per_layer": False}))
    assert all(torch.equal(a, b) for a, b in zip(unclipped, small[3], strict=True))


def test_per_layer_clipping_bounds_every_layer(small):
    bound = 0.05
    clipped = _defend(small, DefenceStep("clipping", {"bound": bound, "per_layer": True}))
    for before, after, norm in zip(small[3], clipped, layer_norms([g[None] for g in clipped]),
                                   strict=True):
        assert float(norm) <= bound * (1 + 1e-6)
        if before.norm() < bound:
            assert torch.equal(before, after)


@pytest.mark.parametrize("rate", [10.0, 90.0, 99.5])
def test_sparsification_zeroes_at_least_rate_in_every_tensor(small, rate):
    pruned = _defend(small, DefenceStep("sparsification", {"rate": rate}))
    for before, g in zip(small[3], pruned, strict=True):
        assert (g == 0).sum() >= rate / 100 * g.numel()
        kept = g != 0
        # what survives is unchanged and at least as large as anything pruned
        assert torch.equal(g[kept], before[kept])
        if kept.any() and (~kept).any():
            assert before[kept].abs().min() >= before[~kept].abs().max()


def test_noise_has_the_configured_std():
    grads = [torch.zeros(1000, 1000)]
    ctx = ClientContext(None, None, None, 0, torch.Generator().manual_seed(0))
    noisy = apply_defence(grads, [DefenceStep("noise", {"sigma": 0.3})], ctx)
    assert abs(float(noisy[0].std()) - 0.3) < 0.05 * 0.3


def test_soteria_masks_the_configured_fraction_of_fc_weight_columns_only(small):
    model, image, _, grads = small
    fc = fc_weight_index(model)
    defended = _defend(small, DefenceStep("soteria", {"rate": 80.0}))
    for i, (before, after) in enumerate(zip(grads, defended, strict=True)):
        if i != fc:
            assert torch.equal(before, after)
    pruned = ~soteria_mask(soteria_scores(model, image), 80.0)
    assert int(pruned.sum()) == fraction_count(80.0, grads[fc].shape[1])
    already_zero = (grads[fc] == 0).all(dim=0)
    assert torch.equal((defended[fc] == 0).all(dim=0), pruned | already_zero)
    assert torch.equal(defended[fc][:, ~pruned], grads[fc][:, ~pruned])


def test_soteria_prunes_the_lowest_scores(small):
    model, image, _, _ = small
    scores = soteria_scores(model, image)
    mask = soteria_mask(scores, 50.0)
    assert int((~mask).sum()) == fraction_count(50.0, scores.numel())
    assert scores[~mask].max() <= scores[mask].min()


def _estimate(small, defended, *steps):
    model, _, _, grads = small
    est = estimate_defence(defended, steps, fc_weight_index(model))
    return est, [g[0] for g in est.apply([g[None] for g in grads])]


def test_clipping_estimate_recovers_the_bound(small):
    bound = _norm(small[3]) / 4
    step = DefenceStep("clipping", {"bound": bound, "per_layer": False})
    defended = _defend(small, step)
    est, reproduced = _estimate(small, defended, step)
    assert est.values["0.clipping"]["bound"] == pytest.approx(bound, rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-9)
               for a, b in zip(reproduced, defended, strict=True))


def test_sparsification_estimate_recovers_rate_and_mask(small):
    step = DefenceStep("sparsification", {"rate": 90.0})
    defended = _defend(small, step)
    est, reproduced = _estimate(small, defended, step)
    assert est.values["0.sparsification"]["rate"] == pytest.approx(90.0, abs=0.5)
    assert all(torch.equal(a, b) for a, b in zip(reproduced, defended, strict=True))


def test_soteria_estimate_recovers_the_mask(small):
    step = DefenceStep("soteria", {"rate": 80.0})
    defended = _defend(small, step)
    est, reproduced = _estimate(small, defended, step)
    assert all(torch.equal(a, b) for a, b in zip(reproduced, defended, strict=True))


def test_estimate_never_reads_secret_settings(small):
    """The same received gradient gives the same estimate whatever settings are claimed."""
    step = DefenceStep("clipping", {"bound": 0.01, "per_layer": False})
    defended = _defend(small, step)
    lie = DefenceStep("clipping", {"bound": 99.0, "per_layer": False})
    assert _estimate(small, defended, step)[0].values == _estimate(small, defended, lie)[0].values


def test_combined_defence_applies_steps_in_order(small):
    clip = DefenceStep("clipping", {"bound": 0.01, "per_layer": False})
    noise = DefenceStep("noise", {"sigma": 0.1})
    clip_then_noise = _defend(small, clip, noise)
    noise_then_clip = _defend(small, noise, clip)
    assert _norm(noise_then_clip) <= 0.01 * (1 + 1e-6)
    assert _norm(clip_then_noise) > 0.01


def test_same_seed_same_gradient(small):
    step = DefenceStep("noise", {"sigma": 0.1})
    a, b = _defend(small, step, seed=5), _defend(small, step, seed=5)
    c = _defend(small, step, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize(("arch", "width", "classes", "size"),
                         [("resnet18-cifar", 16, 10, 32), ("resnet18-imagenet", 64, 1000, 64)])
def test_label_inference_is_right_on_random_images(arch, width, classes, size):
    """>= 99 % of 200 seeded random images; the ImageNet model at 64x64 to keep CI fast
    (the head, and so the argument, does not depend on resolution)."""
    model = build_model(ModelConfig(arch, width=width, seed=0, num_classes=classes))
    fc = fc_weight_index(model)
    gen = torch.Generator().manual_seed(0)
    right = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the ImageNet model is big enough to use both cores
    try:
        for _ in range(200):
            image = torch.rand(1, 3, size, size, generator=gen) * 2 - 1
            label = torch.randint(classes, (1,), generator=gen)
            right += infer_label(client_gradient(model, image, label), fc) == int(label)
    finally:
        torch.set_num_threads(threads)  # conftest's one thread holds for the other tests
    assert right >= 198
