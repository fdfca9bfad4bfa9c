"""Stage gradients: each client's defended update of its private images, for one defence."""

from __future__ import annotations

from logging import Logger

from ggl import io
from ggl.client import defended_gradients
from ggl.data import load_part
from ggl.pipeline.registry import Stage


def run(stage: Stage, log: Logger) -> None:
    params = stage.params
    defence = stage.keys["defence"]
    images, labels = load_part(stage.input("private"))
    trained = (io.load_torch(stage.input("attacked_model"))
               if stage.has("attacked_model") else None)
    for image, received, truth in defended_gradients(params, defence, images, labels, trained):
        io.save_torch(stage.output("received", image=image), received)
        io.write_json(stage.output("truth", image=image), truth)
    log.info("defence %s: %d client updates", defence, len(params.private_images))
