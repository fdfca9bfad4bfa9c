"""The pixel-space baselines DLG, iDLG, IG and GI, on tiny models with no defence."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_params
from torch import nn

from ggl.attack import ATTACKS
from ggl.attack.labels import infer_label
from ggl.attack.objective import DISTANCES, trial_gradients
from ggl.attack.run import Attacker, best_of_trials
from ggl.config import ModelConfig, attack_config
from ggl.metrics import psnr_pm1
from ggl.models import build_model, fc_weight_index


class SmallFC(nn.Module):
    """The DLG paper's setting: a small fully-connected network with sigmoid activations."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 64), nn.Sigmoid())
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def _attacker(model: nn.Module, image: torch.Tensor, label: int) -> Attacker:
    model.eval()
    received = [g[0].detach() for g in trial_gradients(model, image, label)]
    fc = fc_weight_index(model)
    return Attacker(received, (), model, fc, infer_label(received, fc), tuple(image.shape[1:]),
                    None, torch.device("cpu"))


def _cfg(method: str, budget: int, trials: int = 1):
    raw = tiny_params()["attacks"][method]
    return attack_config({**raw, "budget": budget, "trials": trials}, f"attacks.{method}")


def test_dlg_recovers_the_image_from_a_small_fully_connected_model():
    torch.manual_seed(0)
    model = SmallFC()
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    best, _ = best_of_trials(ATTACKS.get("dlg"), _attacker(model, image, 4),
                             _cfg("dlg", 300, trials=2), seed=0)
    assert psnr_pm1(best.image[None], image)[0] > 30


@pytest.fixture(scope="module")
def resnet():
    model = build_model(ModelConfig("resnet18-cifar", 4, 0, 10))
    model.requires_grad_(True)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    return model, image


@pytest.mark.parametrize("method", ["dlg", "idlg", "ig", "gi"])
def test_each_baseline_lowers_its_objective(resnet, method):
    model, image = resnet
    best, trials = best_of_trials(ATTACKS.get(method), _attacker(model, image, 7),
                                  _cfg(method, 40), seed=0)
    start = trials[0].curve[0][1]
    assert best.loss < 0.5 * start
    assert best.evaluations == 40 and best.info["iterations"] == 40
    assert best.image.shape == (3, 32, 32) and best.image.abs().max() <= 1


def test_ig_ignores_the_scale_of_the_received_gradient(resnet):
    """Cosine distance: clipping's rescaling cannot hurt IG (the paper's CelebA exception)."""
    model, image = resnet
    attacker = _attacker(model, image, 7)
    scaled = Attacker([g * 0.05 for g in attacker.received], *list(vars(attacker).values())[1:])
    trial = trial_gradients(model, torch.randn(3, 3, 32, 32), 7)
    assert torch.allclose(DISTANCES["cosine"](trial, attacker.received),
                          DISTANCES["cosine"](trial, scaled.received), atol=1e-6)
    a = ATTACKS.get("ig")(attacker, _cfg("ig", 15), 0)
    b = ATTACKS.get("ig")(scaled, _cfg("ig", 15), 0)
    assert [loss for _, loss in a.curve] == pytest.approx([loss for _, loss in b.curve],
                                                          rel=1e-4)
