"""Stage fetch-biggan: BigGAN-deep-256's weights and config, verified, or nothing."""

from __future__ import annotations

from collections.abc import Sequence
from logging import Logger
from typing import TYPE_CHECKING

from ggl.biggan import fetch_biggan, parse_sha256_overrides
from ggl.config import Params

if TYPE_CHECKING:
    from ggl.pipeline.registry import Files


def run(params: Params, files: Files, log: Logger, sha256: Sequence[str] = ()) -> None:
    """``sha256``: the CLI's ``--sha256 [FILE=]HASH`` values (see ggl.biggan for why)."""
    path = fetch_biggan(files.output("biggan_weights"), files.output("biggan_config"),
                        sha256=parse_sha256_overrides(sha256))
    log.info("verified: %s", path)
