"""The client: one local gradient of the federated model at batch size 1, then its defence.

Files written per (defence, private image), under results/<experiment>/gradients/<defence>/:
- ``img<i>.pt``: what the server receives: the defended gradient, the parameter names, the
  defence's kinds and settings and the model spec. No label, no image.
- ``img<i>.json``: the client's truth (true label, private index) for the metrics stage only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ggl import io
from ggl.config import DefenceStep, Params
from ggl.data import load_part
from ggl.defences import ClientContext, Gradient, apply_defence
from ggl.models import build_model, fc_weight_index, model_spec
from ggl.runtime import derive_seed, resolve_device

GRADIENT_FORMAT = 1


def client_gradient(model: nn.Module, image: torch.Tensor, label: torch.Tensor) -> Gradient:
    """Cross-entropy gradient of every parameter for one image (1, 3, H, W) and label (1,)."""
    loss = nn.functional.cross_entropy(model(image), label)
    return [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]


def defence_record(name: str, steps: tuple[DefenceStep, ...]) -> dict[str, Any]:
    return {"name": name, "steps": [{"kind": s.kind, **s.settings} for s in steps]}


def steps_from_record(record: dict[str, Any]) -> tuple[DefenceStep, ...]:
    return tuple(DefenceStep.from_raw(step) for step in record["steps"])


def gradient_paths(results_dir: str | Path, defence: str, image_id: str) -> tuple[Path, Path]:
    folder = Path(results_dir) / "gradients" / defence
    return folder / f"{image_id}.pt", folder / f"{image_id}.json"


def run_gradients(params: Params, defence: str, data_dir: Path, results_dir: Path) -> list[Path]:
    """Write the defended gradient of every private image listed in params."""
    if defence not in params.defences:
        raise ValueError(f"--defence: {defence!r} is not in params' defences; "
                         f"allowed are {', '.join(params.defences)}")
    device = resolve_device(params.device)
    steps = params.defences[defence]
    images, labels = load_part(data_dir, "private")
    model = build_model(params.model, device)
    fc_index = fc_weight_index(model)
    names = [name for name, _ in model.named_parameters()]
    written = []
    for index in tqdm(params.private_images, desc=f"gradients {defence}", unit="img"):
        image = images[index : index + 1].to(device)
        label = labels[index : index + 1].to(device)
        seed = derive_seed(params.seed, "defence", defence, index)
        ctx = ClientContext(model, image, label, fc_index, torch.Generator().manual_seed(seed))
        received = apply_defence(client_gradient(model, image, label), steps, ctx)
        image_id = f"img{index}"
        pt_path, json_path = gradient_paths(results_dir, defence, image_id)
        public = {"format": GRADIENT_FORMAT, "image_id": image_id,
                  "defence": defence_record(defence, steps), "model": model_spec(params.model),
                  "image_size": params.data.image_size, "param_names": names,
                  "fc_index": fc_index, "defence_seed": seed}
        io.save_torch(pt_path, {**public, "gradient": [g.cpu() for g in received]})
        io.write_json(json_path, {**public, "private_index": index, "true_label": int(label)})
        written += [pt_path, json_path]
    return written


def load_received(path: str | Path) -> dict[str, Any]:
    """The server's view of one client update (see module docstring)."""
    record = io.load_torch(path)
    if record.get("format") != GRADIENT_FORMAT:
        raise ValueError(f"{path}: not a ggl gradient file of format {GRADIENT_FORMAT}")
    return record
