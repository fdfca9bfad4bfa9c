"""Threat models (params' clients): batches above one, several local steps and a trained
checkpoint, end to end on tiny params. What the server receives is the client's real E-step
update of its batch, which the attacker's simulation reproduces from the true batch; every
attack and control returns a batch; the metrics stage scores each private image against its
matched reconstruction; the aggregate compares the protocols."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import run_stage, tiny_params

from ggl import io
from ggl.attack.objective import simulated_update
from ggl.client import load_received
from ggl.config import ModelConfig, Params, ParamsError
from ggl.data import load_part
from ggl.models import build_model

ATTACKS = ("ggl-adam", "ggl-cmaes", "idlg", "dlg", "prior", "label-only", "noise-gradient")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("threat")
    raw = tiny_params()
    raw["private_images"] = [0, 1, 2, 3]
    raw["clients"] = {
        "fedsgd": {"batch_size": 1, "local_steps": 1, "local_lr": 0.1, "checkpoint": "initial"},
        "b2e3": {"batch_size": 2, "local_steps": 3, "local_lr": 0.1, "checkpoint": "initial"},
        "late": {"batch_size": 2, "local_steps": 1, "local_lr": 0.1, "checkpoint": "trained"}}
    raw["data"]["test_size"] = 20
    raw["utility"].update(rounds=2, clients=2, batch_size=4)
    raw["generator"]["kind"] = "plugins_for_tests:stand_in_dcgan"
    raw["generator"].update(latent_dim=16, width=4)
    raw["defences"] = {"none": [], "clipping": raw["defences"]["clipping"]}
    raw["attacks"] = {name: raw["attacks"][name] for name in ATTACKS}
    params = Params.from_raw(raw)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        run_stage(params, "split")
        for defence in params.defences:
            run_stage(params, "utility", defence=defence)
            run_stage(params, "gradients", defence=defence)
            for attack in params.attacks:
                run_stage(params, "attack", defence=defence, attack=attack)
        run_stage(params, "metrics")
        run_stage(params, "aggregate")
        yield params, root


def test_the_received_update_is_the_clients_e_step_update_that_the_simulation_reproduces(
        project):
    params, root = project
    images, labels = load_part(root / "data/tiny/private.pt")
    assert params.image_ids() == ["fedsgd-img0", "fedsgd-img1", "fedsgd-img2", "fedsgd-img3",
                                  "b2e3-batch0", "b2e3-batch1", "late-batch0", "late-batch1"]
    trained = io.load_torch(root / "results/tiny/utility/none/model.pt")
    for update, batch in params.updates().items():
        record = load_received(root / f"results/tiny/gradients/none/{update}.pt", params, "none",
                               update, build_model(params.model))
        assert record["client"] == vars(params.clients[batch.client])
        indices = batch.indices
        model = build_model(ModelConfig(**record["model"]))
        if batch.client == "late":
            model.load_state_dict(trained)
        client = params.clients[batch.client]
        simulated = simulated_update(model, images[list(indices)], labels[list(indices)],
                                     client.local_steps, client.local_lr)
        for ours, theirs in zip(simulated, record["gradient"], strict=True):
            torch.testing.assert_close(ours[0], theirs, rtol=0, atol=0)


def test_every_attack_returns_a_batch_and_each_image_gets_a_metrics_row(project):
    params, root = project
    frame = pd.read_csv(root / "results/tiny/metrics.csv")
    assert len(frame) == len(params.defences) * len(params.attacks) * 4 * 3
    assert set(frame["image_id"]) == {"img0", "img1", "img2", "img3"}
    assert set(frame["client"]) == {"fedsgd", "b2e3", "late"}
    # the untrained model's bias rule is exact (tests/test_labels.py)
    assert frame.loc[frame["client"] == "b2e3", "labels_exact"].all()
    for attack in params.attacks:
        shape = io.load_torch(root / f"results/tiny/attacks/none/{attack}/b2e3-batch0/"
                                     "reconstruction.pt").shape
        assert shape[-4:] == (2, 3, 32, 32), (attack, shape)
    assert (root / "results/tiny/figures/reconstructions_b2e3-batch0.png").is_file()


def test_the_aggregate_compares_every_protocol_and_keeps_the_paper_tables_to_the_first(
        project):
    params, root = project
    table = pd.read_csv(root / "results/tiny/tables/threat_models.csv")
    assert len(table) == 3 * len(params.defences) * len(params.attacks)
    late = table[table["client"] == "late"]
    summaries = {d: io.read_json(root / f"results/tiny/utility/{d}/summary.json")
                 for d in params.defences}
    assert (late["model_accuracy"] == late["defence"].map(
        {d: s["test_accuracy"] for d, s in summaries.items()})).all()
    assert (root / "results/tiny/figures/threat_models.png").is_file()
    assert "| b2e3 | 2 | 3 | initial |" in (root / "results/tiny/tables/threat_models.md"
                                           ).read_text()
    leakage = pd.read_csv(root / "results/tiny/tables/leakage.csv")
    assert leakage["images"].eq(4).all()  # the first protocol's rows only


def test_a_batch_size_must_divide_the_private_images():
    raw = tiny_params()
    raw["clients"]["fedsgd"]["batch_size"] = 3
    with pytest.raises(ParamsError, match="clients.fedsgd.batch_size: 3 does not divide the 2"):
        Params.from_raw(raw)


def test_a_trained_checkpoint_needs_the_utility_stage():
    raw = tiny_params()
    raw["clients"]["fedsgd"]["checkpoint"] = "trained"
    with pytest.raises(ParamsError, match="clients.fedsgd.checkpoint: trained .* utility.rounds"):
        Params.from_raw(raw)


def test_scorer_batched_cannot_score_a_client_batch():
    from ggl.attack.batched import Unsupported
    from ggl.attack.objective import Objective
    from ggl.defences import Estimate
    from ggl.settings import ObjectiveConfig

    model = build_model(ModelConfig("resnet18-cifar", 4, 0, 10, "batch"))
    received = [torch.zeros(p.shape) for p in model.parameters()]
    objective = Objective(model, lambda z: torch.zeros(len(z), 3, 32, 32), received, 1,
                          Estimate(), ObjectiveConfig(), scorer="batched", labels=[1, 2])
    with pytest.raises(Unsupported, match="scorer auto or loop"):
        objective(torch.zeros(1, 2 * 8))


def test_a_client_whose_local_training_diverges_stops_the_gradients_stage(tmp_path, monkeypatch):
    from ggl.errors import GglError

    monkeypatch.chdir(tmp_path)
    raw = tiny_params()
    raw["clients"]["fedsgd"].update(local_steps=3, local_lr=1e30)
    params = Params.from_raw(raw)
    run_stage(params, "split")
    with pytest.raises(GglError, match="clients.fedsgd: the client's local training diverged"):
        run_stage(params, "gradients", defence="none")
