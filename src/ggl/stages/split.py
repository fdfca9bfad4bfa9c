"""Stage split: the seeded public/private split of the configured dataset."""

from __future__ import annotations

from logging import Logger

from ggl.data import load_dataset, write_split
from ggl.pipeline.registry import Stage


def run(stage: Stage, log: Logger) -> None:
    params = stage.params
    split = load_dataset(params.data)
    write_split(split, params.data, stage.output("public"), stage.output("private"),
                stage.output("test"), stage.output("index"))
    log.info("split %s: %d public, %d private, %d test images", params.data.dataset,
             len(split.public_images), len(split.private_images), len(split.test_images))
