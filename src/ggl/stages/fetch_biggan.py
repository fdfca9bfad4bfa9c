"""Stage fetch-biggan: BigGAN-deep-256's weights and config, verified, and the lock file that
records the weights' SHA-256 (trusted on first use, or pinned in params), or nothing."""

from __future__ import annotations

from logging import Logger

from ggl.biggan import TRUSTED_ON_FIRST_USE, WEIGHTS_FILE, fetch_biggan
from ggl.pipeline.registry import Stage


def run(stage: Stage, log: Logger) -> None:
    record = fetch_biggan(stage.output("biggan_weights"), stage.output("biggan_config"),
                          stage.output("biggan_lock"), stage.params.generator.sha256)
    digest = record["files"][WEIGHTS_FILE]["sha256"]
    source = record["weights_sha256_source"]
    log.info("BigGAN-deep-256 weights %s: SHA-256 %s, %s", stage.output("biggan_weights"),
             digest, source)
    if source == TRUSTED_ON_FIRST_USE:
        log.warning("the weights were trusted on first use, not verified against a published "
                    "hash (none is published); pin generator.sha256: %s in params to verify "
                    "every later download against it", digest)
