"""A user's own model, defence and dataset plug in from params exactly like built-ins."""

from __future__ import annotations

import torch
from conftest import run_stage, tiny_params

from ggl.client import load_received
from ggl.config import Params
from ggl.models import build_model


def test_user_model_defence_and_dataset_run_through_the_gradient_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = tiny_params(**{"model.arch": "plugins_for_tests:tiny_net",
                         "data.dataset": "plugins_for_tests:blobs",
                         "data.public_size": 40, "data.private_size": 20})
    raw["defences"] = {"none": [], "halved": [{"kind": "plugins_for_tests:halve",
                                               "factor": 0.25}]}
    params = Params.from_raw(raw)
    run_stage(params, "split")
    for name in params.defences:
        run_stage(params, "gradients", defence=name)
    model = build_model(params.model)
    plain = load_received("results/tiny/gradients/none/img0.pt", params, "none", "img0", model)
    halved = load_received("results/tiny/gradients/halved/img0.pt", params, "halved", "img0",
                           model)
    assert plain["param_names"][-2:] == ["fc.weight", "fc.bias"]
    for a, b in zip(plain["gradient"], halved["gradient"], strict=True):
        assert torch.allclose(a * 0.25, b)
