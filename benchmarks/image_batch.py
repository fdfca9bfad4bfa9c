"""What batching images would save a differentiable attack step (not built): the double-backprop
gradient of the gradient-matching loss for N private images, one image at a time as the Adam
attacks and the pixel baselines compute it now (``trial_gradients`` with ``create_graph``),
against all N at once with ``torch.func`` (per-image parameter gradients under ``vmap``, the
outer gradient with ``grad``). Prints milliseconds per image, best of the repeats, side by
side in one process.

    python benchmarks/image_batch.py                  # params.yaml's model, 8 images, 1 thread
    python benchmarks/image_batch.py --images 16 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.func import functional_call, grad, vmap

from ggl.attack.objective import l2_sum, trial_gradients
from ggl.config import load_params
from ggl.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    size, label = params.data.image_size, 3
    model = build_model(params.model, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    received = [g[0].detach() for g in trial_gradients(
        model, torch.randn(1, 3, size, size, generator=generator), label)]
    images = torch.randn(args.images, 3, size, size, generator=generator)

    def one_at_a_time() -> torch.Tensor:
        out = []
        for image in images:
            x = image[None].clone().requires_grad_(True)
            loss = l2_sum(trial_gradients(model, x, label, create_graph=True), received)
            out.append(torch.autograd.grad(loss.sum(), x)[0])
        return torch.cat(out)

    names = [name for name, _ in model.named_parameters()]
    weights = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    target = dict(zip(names, received, strict=True))
    labels = torch.tensor([label])

    def loss_of(weights: dict, image: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (weights, buffers), (image[None],))
        return torch.nn.functional.cross_entropy(logits, labels)

    def match(image: torch.Tensor) -> torch.Tensor:
        g = grad(loss_of)(weights, image)
        return sum((g[n] - target[n]).pow(2).sum() for n in names)

    def all_at_once() -> torch.Tensor:
        return grad(lambda batch: vmap(match)(batch).sum())(images)

    reference, batched = one_at_a_time(), all_at_once()  # warm-up, and the two agree
    worst = float((reference - batched).abs().max() / reference.abs().max())
    best = {}
    for _ in range(args.repeats):
        for fn in (one_at_a_time, all_at_once):
            start = time.perf_counter()
            fn()
            ms = (time.perf_counter() - start) / args.images * 1000
            best[fn.__name__] = min(best.get(fn.__name__, ms), ms)
    print(f"# {params.model.arch} width {params.model.width}, {size}x{size}, "
          f"{args.images} images, {args.threads} torch threads, best of {args.repeats}")
    print(f"one image at a time   {best['one_at_a_time']:7.1f} ms per image")
    print(f"all at once (vmap)    {best['all_at_once']:7.1f} ms per image  "
          f"{best['one_at_a_time'] / best['all_at_once']:.2f}x; largest difference "
          f"{worst:.1e} of the largest entry")


if __name__ == "__main__":
    main()
