"""A user's own model, defence and dataset plug in from params exactly like built-ins."""

from __future__ import annotations

import torch
from conftest import tiny_params

from ggl.client import load_received, run_gradients
from ggl.config import Params
from ggl.data import load_dataset, write_split


def test_user_model_defence_and_dataset_run_through_the_gradient_stage(tmp_path):
    raw = tiny_params(**{"model.arch": "plugins_for_tests:tiny_net",
                         "data.dataset": "plugins_for_tests:blobs",
                         "data.public_size": 40, "data.private_size": 20})
    raw["defences"] = {"none": [], "halved": [{"kind": "plugins_for_tests:halve",
                                               "factor": 0.25}]}
    params = Params.from_raw(raw)
    write_split(load_dataset(params.data), params.data, tmp_path / "data")
    for name in params.defences:
        run_gradients(params, name, tmp_path / "data", tmp_path / "results")
    plain = load_received(tmp_path / "results/gradients/none/img0.pt")
    halved = load_received(tmp_path / "results/gradients/halved/img0.pt")
    assert plain["param_names"][-2:] == ["fc.weight", "fc.bias"]
    for a, b in zip(plain["gradient"], halved["gradient"], strict=True):
        assert torch.allclose(a * 0.25, b)
