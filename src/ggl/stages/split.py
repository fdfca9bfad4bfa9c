"""Stage split: the seeded public/private split of the configured dataset."""

from __future__ import annotations

from logging import Logger
from typing import TYPE_CHECKING

from ggl.config import Params
from ggl.data import load_dataset, write_split

if TYPE_CHECKING:
    from ggl.pipeline.registry import Files


def run(params: Params, files: Files, log: Logger) -> None:
    split = load_dataset(params.data)
    write_split(split, params.data, files.output("public"), files.output("private"),
                files.output("index"))
    log.info("split %s: %d public, %d private images", params.data.dataset,
             len(split.public_images), len(split.private_images))
