"""Stage gradients: each client's defended update of its private image, for one defence."""

from __future__ import annotations

from logging import Logger
from typing import TYPE_CHECKING

from ggl import io
from ggl.client import defended_gradients
from ggl.config import Params
from ggl.data import load_part

if TYPE_CHECKING:
    from ggl.pipeline.registry import Files


def run(params: Params, files: Files, log: Logger) -> None:
    defence = files.stage.keys["defence"]
    images, labels = load_part(files.input("private"))
    for image, received, truth in defended_gradients(params, defence, images, labels):
        io.save_torch(files.output("received", image=image), received)
        io.write_json(files.output("truth", image=image), truth)
    log.info("defence %s: %d client updates", defence, len(params.private_images))
