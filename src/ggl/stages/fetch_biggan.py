"""Stage fetch-biggan: BigGAN-deep-256's weights and config, verified, or nothing."""

from __future__ import annotations

from collections.abc import Sequence
from logging import Logger

from ggl.biggan import fetch_biggan, parse_sha256_overrides
from ggl.pipeline.registry import Stage


def run(stage: Stage, log: Logger, sha256: Sequence[str] = ()) -> None:
    """``sha256``: the CLI's ``--sha256 [FILE=]HASH`` values (see ggl.biggan for why)."""
    path = fetch_biggan(stage.output("biggan_weights"), stage.output("biggan_config"),
                        sha256=parse_sha256_overrides(sha256))
    log.info("verified: %s", path)
