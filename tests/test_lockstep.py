"""Updates attacked side by side (ggl.attack.lockstep): each update gets its own estimate,
distance, start and optimiser, and the batched pass agrees with one update at a time."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny_params

from ggl.attack import ATTACKS, LOCKSTEP, lockstep
from ggl.attack.labels import infer_label
from ggl.attack.objective import DISTANCES, image_gradients, trial_gradients
from ggl.attack.run import Attacker, best_of_lockstep_trials, one_by_one
from ggl.config import ClientConfig, DefenceStep, ModelConfig, attack_config
from ggl.defences import estimate_defence, stack_estimates
from ggl.generators import build_dcgan
from ggl.models import build_model, fc_weight_index

UPDATES = 3


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig("resnet18-cifar", width=4, seed=0, num_classes=10))


@pytest.fixture(scope="module")
def updates(model):
    """Three received gradients of three images and labels (no defence)."""
    gen = torch.Generator().manual_seed(5)
    images = torch.rand(UPDATES, 3, 32, 32, generator=gen) * 2 - 1
    labels = [3, 7, 3]
    return [[g[0].detach() for g in trial_gradients(model, image[None], label)]
            for image, label in zip(images, labels, strict=True)]


def _steps(kind: str) -> list[DefenceStep]:
    return {"clipping": [DefenceStep("clipping", {"bound": 0.1, "per_layer": False})],
            "clipping-layer": [DefenceStep("clipping", {"bound": 0.1, "per_layer": True})],
            "sparsification": [DefenceStep("sparsification", {"rate": 90.0})],
            "soteria": [DefenceStep("soteria", {"rate": 80.0})]}[kind]


def _received(updates, model, kind):
    """Each update as its estimate sees it; sparsification's counts differ per update (extra
    zeros in the second), Soteria's masks by construction."""
    fc = fc_weight_index(model)
    out = [[g.clone() for g in grads] for grads in updates]
    if kind == "sparsification":
        for grads in out:
            for g in grads:
                flat = g.view(-1)
                flat[flat.abs() <= flat.abs().kthvalue(max(1, int(0.9 * len(flat)))).values] = 0
        out[1][0].view(-1)[:5] = 0
    if kind == "soteria":
        for i, grads in enumerate(out):
            grads[fc][:, i::UPDATES] = 0
    return out, fc


@pytest.mark.parametrize("kind", ["clipping", "clipping-layer", "sparsification", "soteria"])
def test_a_stacked_estimate_applies_each_update_its_own(model, updates, kind):
    received, fc = _received(updates, model, kind)
    estimates = [estimate_defence(r, _steps(kind), fc) for r in received]
    stacked = stack_estimates(estimates)
    assert stacked is not None
    trial = trial_gradients(model, torch.randn(UPDATES, 3, 32, 32,
                                               generator=torch.Generator().manual_seed(0)), 3)
    together = stacked.apply(trial)
    for i, estimate in enumerate(estimates):
        alone = estimate.apply([t[i:i + 1] for t in trial])
        for a, b in zip(alone, together, strict=True):
            torch.testing.assert_close(b[i:i + 1], a, rtol=1e-6, atol=0)
    if kind == "sparsification":  # the counts really differ, and the rows follow them
        assert len({counts for counts in stacked.ops[0].counts[0]}) == 2


def test_estimates_of_different_kinds_do_not_stack(model, updates):
    fc = fc_weight_index(model)
    mixed = [estimate_defence(updates[0], _steps("clipping"), fc),
             estimate_defence(updates[1], _steps("soteria"), fc)]
    assert stack_estimates(mixed) is None


@pytest.mark.parametrize("distance", sorted(DISTANCES))
def test_a_distance_against_stacked_updates_is_each_rows_own(model, updates, distance):
    trial = trial_gradients(model, torch.randn(UPDATES, 3, 32, 32,
                                               generator=torch.Generator().manual_seed(1)), 7)
    stacked = [torch.stack(tensors) for tensors in zip(*updates, strict=True)]
    together = DISTANCES[distance](trial, stacked)
    alone = torch.cat([DISTANCES[distance]([t[i:i + 1] for t in trial], updates[i])
                       for i in range(UPDATES)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("soft", [False, True])
def test_image_gradients_equal_the_loop_and_differentiate_alike(model, soft):
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(UPDATES, 3, 32, 32, generator=gen)
    labels = (torch.randn(UPDATES, 10, generator=gen).softmax(1) if soft
              else torch.tensor([1, 4, 1]))
    weights = [torch.randn(p.shape, generator=gen) for p in model.parameters()]

    def second_order(fn):  # a function of the gradients, differentiated to the images
        x = images.clone().requires_grad_(True)
        grads = fn(x)
        value = sum((g * w).sum() for g, w in zip(grads, weights, strict=True))
        return grads, torch.autograd.grad(value, x)[0]

    batched, d_batched = second_order(lambda x: image_gradients(model, x, labels))
    loop, d_loop = second_order(lambda x: trial_gradients(model, x, labels, create_graph=True))
    for a, b in zip(batched, loop, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(d_batched, d_loop, rtol=1e-4, atol=1e-6)


def _attackers(model, updates, kind, generator=None):
    received, fc = _received(updates, model, kind)
    return [Attacker(r, tuple(_steps(kind)), model, fc, infer_label(r, fc), (3, 32, 32),
                     generator, torch.device("cpu")) for r in received]


def _cfg(method: str, budget: int):
    attacks = tiny_params()["attacks"]
    controlled = {"ggl-adam": attack_config({**attacks["ggl-adam"], "budget": budget,
                                             "trials": 1}, "attacks.ggl-adam")}
    return attack_config({**attacks[method], "budget": budget, "trials": 1},
                         f"attacks.{method}", controlled)


@pytest.mark.parametrize(("method", "kind"), [("ig", "clipping"), ("gi", "soteria"),
                                              ("dlg", "clipping-layer"),
                                              ("idlg", "sparsification"),
                                              ("ggl-adam", "sparsification"),
                                              ("noise-gradient", "clipping")])
def test_side_by_side_each_update_takes_its_own_steps(model, updates, method, kind):
    """Budget 1: the start points, exactly; a few steps: the same path to float rounding."""
    generator = build_dcgan(None, latent_dim=16, width=4)
    attackers = _attackers(model, updates, kind, generator)
    seeds = [11, 12, 13]
    for budget, tolerance in ((1, 0.0), (4, 1e-3)):
        cfg = _cfg(method, budget)
        together = best_of_lockstep_trials(LOCKSTEP[method], attackers, cfg, seeds)
        alone = best_of_lockstep_trials(one_by_one(ATTACKS.get(method)), attackers, cfg, seeds)
        for (a, _), (b, _) in zip(together, alone, strict=True):
            assert a.evaluations == b.evaluations == budget
            assert [e for e, _ in a.curve] == [e for e, _ in b.curve]
            torch.testing.assert_close(a.image, b.image, rtol=0, atol=tolerance)
            assert a.loss == pytest.approx(b.loss, rel=max(tolerance, 1e-5))
            assert [e for e, _ in a.checkpoints] == [e for e, _ in b.checkpoints]


def test_updates_go_side_by_side_by_protocol_and_in_passes_of_limited_size(model, updates):
    one = _attackers(model, updates, "clipping")
    other = dataclasses.replace(one[0], client=ClientConfig(batch_size=2))
    mixed = [*one, other, *one * 3]
    groups = lockstep.groups(mixed, "auto", True)
    assert [i for group in groups for i in group] == list(range(len(mixed)))
    assert all(len({mixed[i].client for i in group}) == 1 for group in groups)
    assert max(len(group) for group in groups) == lockstep.IMAGES_PER_PASS
    assert groups[:2] == [[0, 1, 2], [3]]
    assert lockstep.groups(mixed, "loop", True) == [[i] for i in range(len(mixed))]
    assert lockstep.groups(mixed, "auto", False) == [[i] for i in range(len(mixed))]
    assert lockstep.stack([other, other], adaptive=True) is None  # B > 1: one at a time
