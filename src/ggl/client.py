"""The client: its local update of the federated model on a batch of private images (params'
``client``: B images, E SGD steps; B = E = 1 is the paper's single gradient), then its defence.

Per (defence, update) two records: what the server receives (the defended update, the parameter
names, the protocol, the defence's kinds and settings and the model spec; no label, no image)
and the client's truth (true labels, private indices), which only the metrics stage reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ggl import io
from ggl.config import ClientConfig, DefenceStep, Params, dp_sgd_step
from ggl.defences import ClientContext, Gradient, apply_defence
from ggl.errors import GglError
from ggl.models import build_model, fc_weight_index
from ggl.runtime import derive_seed, resolve_device

GRADIENT_FORMAT = 2  # 2: the protocol (client) is recorded; batches and local steps


def client_gradient(model: nn.Module, image: torch.Tensor, label: torch.Tensor) -> Gradient:
    """Cross-entropy gradient (mean over the batch) of every parameter for images (B, 3, H, W)
    and labels (B,)."""
    loss = nn.functional.cross_entropy(model(image), label)
    return [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]


def local_update(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, local_steps: int,
                 local_lr: float, create_graph: bool = False) -> Gradient:
    """The update a client sends after ``local_steps`` SGD steps at ``local_lr`` on its batch
    (every step on the whole batch, mean cross-entropy): the sum of the step gradients, that is
    (w_0 - w_E) / lr; one step gives the gradient itself. Functional (the model's weights are
    not changed), so with ``create_graph`` it is differentiable in ``images``: the attacker's
    unrolled simulation of the client's local training, the same code as the client's."""
    from torch.func import functional_call

    names = [name for name, _ in model.named_parameters()]
    buffers = dict(model.named_buffers())
    weights = [p for _, p in model.named_parameters()]
    total: list[torch.Tensor] = []
    for _ in range(local_steps):
        logits = functional_call(model, {**buffers, **dict(zip(names, weights, strict=True))},
                                 (images,))
        grads = torch.autograd.grad(nn.functional.cross_entropy(logits, labels), weights,
                                    create_graph=create_graph)
        total = list(grads) if not total else [t + g for t, g in zip(total, grads, strict=True)]
        weights = [w - local_lr * g for w, g in zip(weights, grads, strict=True)]
    return total if create_graph else [t.detach() for t in total]


def steps_from_record(record: dict[str, Any]) -> tuple[DefenceStep, ...]:
    """The defence steps of a received update's ``defence`` record (see ``defended_gradients``)."""
    return tuple(DefenceStep.from_raw(step) for step in record["steps"])


def attacked_model(params: Params, client: ClientConfig, trained: dict[str, torch.Tensor] | None,
                   device: torch.device) -> nn.Module:
    """The federated model of the attacked round: its initialisation, or the trained weights."""
    model = build_model(params.model, device)
    if client.checkpoint == "trained":
        if trained is None:
            raise GglError("checkpoint trained: the utility stage's attacked_model is missing")
        model.load_state_dict(trained)
    return model


def defended_gradients(params: Params, defence: str, images: torch.Tensor, labels: torch.Tensor,
                       trained: dict[str, torch.Tensor] | None = None,
                       ) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """For each client update params list: (update id, what the server receives, the client's
    truth). ``images`` and ``labels`` are the private split; ``trained``: the utility stage's
    model under this defence, for clients at checkpoint trained."""
    device = resolve_device(params.device)
    steps = params.defences[defence]
    record = defence_record(params, defence)
    if (dp := dp_sgd_step(steps)) is not None:  # a public fact of the protocol, as its settings
        from ggl.dp import update_epsilon

        record["epsilon"] = update_epsilon(dp.settings["noise_multiplier"], dp.settings["delta"])
    models = {name: attacked_model(params, client, trained, device)
              for name, client in params.clients.items()}
    for update, (name, indices) in tqdm(
            [(u, (b.client, b.indices)) for u, b in params.updates().items()],
            desc=f"gradients {defence}", unit="update"):
        protocol, model = params.clients[name], models[name]
        fc_index = fc_weight_index(model)
        batch = images[list(indices)].to(device)
        batch_labels = labels[list(indices)].to(device)
        # batch size 1 keeps the seeds of the single-gradient protocol
        seed = derive_seed(params.seed, "defence", defence,
                           indices[0] if len(indices) == 1 else update)
        ctx = ClientContext(model, batch, batch_labels, fc_index,
                            torch.Generator().manual_seed(seed), protocol.local_steps,
                            protocol.local_lr)
        sent = (client_gradient(model, batch, batch_labels) if protocol.local_steps == 1 else
                local_update(model, batch, batch_labels, protocol.local_steps, protocol.local_lr))
        if not all(bool(torch.isfinite(g).all()) for g in sent):
            raise GglError(f"clients.{name}: the client's local training diverged on update "
                           f"{update} (a non-finite update after {protocol.local_steps} steps "
                           f"at local_lr {protocol.local_lr}); lower clients.{name}.local_lr")
        received = apply_defence(sent, steps, ctx)
        public = {"format": GRADIENT_FORMAT, "image_id": update, "client_name": name,
                  "client": asdict(protocol), "defence": record, "model": asdict(params.model),
                  "image_size": params.data.image_size,
                  "param_names": [n for n, _ in model.named_parameters()],
                  "fc_index": fc_index, "defence_seed": seed}
        yield (update, {**public, "gradient": [g.cpu() for g in received]},
               {**public, "private_indices": list(indices),
                "true_labels": batch_labels.cpu().tolist()})


def defence_record(params: Params, defence: str) -> dict[str, Any]:
    """The defence as a received update records it: its name and steps, settings written out."""
    return {"name": defence,
            "steps": [{"kind": s.kind, **s.settings} for s in params.defences[defence]]}


def _mismatch(key: str, got: Any, want: Any) -> str | None:
    """The first field where a received record differs from what params make, in words."""
    if got == want:
        return None
    if isinstance(got, dict) and isinstance(want, dict):
        field = next(k for k in sorted({*got, *want}, key=str) if got.get(k) != want.get(k))
        return f"its {key}.{field} {got.get(field)!r} is not {want.get(field)!r} as params make it"
    if isinstance(got, list) and isinstance(want, list) and len(got) == len(want):
        i = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
        return f"its {key}[{i}] {got[i]!r} is not {want[i]!r} as params make it"
    return f"its {key} {got!r:.80} is not {want!r:.80} as params make it"


def load_received(path: str | Path, params: Params, defence: str, update: str,
                  model: nn.Module) -> dict[str, Any]:
    """The server's view of one client update, refused (an error naming the file and the field)
    unless it is what params make the client send: the same model (``model``, built from
    params: the file never decides what code runs or what is allocated), image size, protocol
    and defence, every tensor of the model's shape and finite."""
    record = io.load_torch(path)

    def refuse(what: str) -> GglError:
        return GglError(f"{path}: refused, {what}")

    if not isinstance(record, dict) or record.get("format") != GRADIENT_FORMAT:
        raise refuse(f"not a ggl received-update record of format {GRADIENT_FORMAT}")
    name = record.get("client_name")
    if name not in params.clients:
        raise refuse(f"client_name {name!r} is not in params' clients")
    expected = {"image_id": update, "model": asdict(params.model),
                "image_size": params.data.image_size, "client": asdict(params.clients[name]),
                "param_names": [n for n, _ in model.named_parameters()],
                "fc_index": fc_weight_index(model)}
    for key, value in expected.items():
        if (problem := _mismatch(key, record.get(key), value)) is not None:
            raise refuse(problem)
    steps = record.get("defence", {}).get("steps") if isinstance(record.get("defence"),
                                                                 dict) else None
    if steps != defence_record(params, defence)["steps"]:
        raise refuse(f"its defence steps {steps!r} are not params' defences.{defence}")
    gradient = record.get("gradient")
    shapes = [tuple(p.shape) for p in model.parameters()]
    if not isinstance(gradient, list) or len(gradient) != len(shapes):
        raise refuse(f"its gradient is not a list of {len(shapes)} tensors")
    for i, (g, shape, pname) in enumerate(zip(gradient, shapes, expected["param_names"],
                                              strict=True)):
        if not isinstance(g, torch.Tensor) or tuple(g.shape) != shape or not g.is_floating_point():
            raise refuse(f"gradient[{i}] ({pname}) is not a float tensor of shape {shape}")
        if not bool(torch.isfinite(g).all()):
            raise refuse(f"gradient[{i}] ({pname}) holds NaN or infinite values")
    return record
