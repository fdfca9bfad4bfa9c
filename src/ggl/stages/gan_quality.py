"""Stage gan-quality: how recognisable the generator's samples are to a public classifier."""

from __future__ import annotations

from logging import Logger

from ggl import io
from ggl.data import load_part
from ggl.gan import quality_check
from ggl.generators import build_generator
from ggl.pipeline.registry import Stage
from ggl.runtime import resolve_device


def run(stage: Stage, log: Logger) -> None:
    params = stage.params
    device = resolve_device(params.device)
    checkpoint = stage.input("generator")
    generator = build_generator(params, checkpoint, device)
    public, private = load_part(stage.input("public")), load_part(stage.input("private"))
    quality = quality_check(generator, *public, *private, device, params.seed,
                            num_classes=params.data.num_classes)
    io.write_json(stage.output("quality"), {**quality, "checkpoint": str(checkpoint)})
    log.info("quality: %s", {k: v for k, v in quality.items() if "histogram" not in k})
