"""The client: one local gradient of the federated model at batch size 1, then its defence.

Per (defence, private image) two records: what the server receives (the defended gradient,
the parameter names, the defence's kinds and settings and the model spec; no label, no image)
and the client's truth (true label, private index), which only the metrics stage reads.
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
from ggl.config import DefenceStep, Params, dp_sgd_step, image_id
from ggl.defences import ClientContext, Gradient, apply_defence
from ggl.errors import GglError
from ggl.models import build_model, fc_weight_index
from ggl.runtime import derive_seed, resolve_device

GRADIENT_FORMAT = 1


def client_gradient(model: nn.Module, image: torch.Tensor, label: torch.Tensor) -> Gradient:
    """Cross-entropy gradient of every parameter for one image (1, 3, H, W) and label (1,)."""
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


def defended_gradients(params: Params, defence: str, images: torch.Tensor, labels: torch.Tensor,
                       ) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """For each private image params list: (image id, what the server receives, the client's
    truth). ``images`` and ``labels`` are the private split."""
    device = resolve_device(params.device)
    steps = params.defences[defence]
    record = {"name": defence, "steps": [{"kind": s.kind, **s.settings} for s in steps]}
    if (dp := dp_sgd_step(steps)) is not None:  # a public fact of the protocol, as its settings
        from ggl.dp import update_epsilon

        record["epsilon"] = update_epsilon(dp.settings["noise_multiplier"], dp.settings["delta"])
    model = build_model(params.model, device)
    fc_index = fc_weight_index(model)
    names = [name for name, _ in model.named_parameters()]
    for index in tqdm(params.private_images, desc=f"gradients {defence}", unit="img"):
        image = images[index : index + 1].to(device)
        label = labels[index : index + 1].to(device)
        seed = derive_seed(params.seed, "defence", defence, index)
        ctx = ClientContext(model, image, label, fc_index, torch.Generator().manual_seed(seed))
        received = apply_defence(client_gradient(model, image, label), steps, ctx)
        public = {"format": GRADIENT_FORMAT, "image_id": image_id(index),
                  "defence": record, "model": asdict(params.model),
                  "image_size": params.data.image_size, "param_names": names,
                  "fc_index": fc_index, "defence_seed": seed}
        yield (image_id(index), {**public, "gradient": [g.cpu() for g in received]},
               {**public, "private_index": index, "true_label": int(label)})


def load_received(path: str | Path) -> dict[str, Any]:
    """The server's view of one client update (see module docstring)."""
    record = io.load_torch(path)
    if record.get("format") != GRADIENT_FORMAT:
        raise GglError(f"{path}: not a ggl gradient file of format {GRADIENT_FORMAT}")
    return record
