"""Stage gan-quality: how recognisable the generator's samples are to a public classifier."""

from __future__ import annotations

from logging import Logger
from typing import TYPE_CHECKING

from ggl import io
from ggl.config import Params
from ggl.data import load_part
from ggl.gan import quality_check
from ggl.generators import build_generator
from ggl.runtime import resolve_device

if TYPE_CHECKING:
    from ggl.pipeline.registry import Files


def run(params: Params, files: Files, log: Logger) -> None:
    device = resolve_device(params.device)
    checkpoint = files.input("generator")
    generator = build_generator(params, checkpoint, device)
    public, private = load_part(files.input("public")), load_part(files.input("private"))
    quality = quality_check(generator, *public, *private, device, params.seed,
                            num_classes=params.data.num_classes)
    io.write_json(files.output("quality"), {**quality, "checkpoint": str(checkpoint)})
    log.info("quality: %s", {k: v for k, v in quality.items() if "histogram" not in k})
