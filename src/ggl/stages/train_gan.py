"""Stage train-gan: WGAN-GP on the public split only; resumes from its scratch file."""

from __future__ import annotations

from logging import Logger
from typing import TYPE_CHECKING

from ggl import io
from ggl.config import Params
from ggl.data import load_part
from ggl.gan import gan_config, train_gan
from ggl.runtime import resolve_device

if TYPE_CHECKING:
    from ggl.pipeline.registry import Files


def run(params: Params, files: Files, log: Logger) -> None:
    images, labels = load_part(files.input("public"))
    resume = files.scratch("gan_resume")
    trained = train_gan(images, gan_config(params), resume, resolve_device(params.device), log,
                        public_labels=labels)
    io.save_torch(files.output("generator"), trained.checkpoint())
    io.write_text(files.output("gan_losses"), trained.losses_csv())
    io.save_figure(files.output("gan_losses_plot"), trained.losses_figure())
    io.save_image(files.output("gan_samples"), trained.samples())
    resume.unlink(missing_ok=True)  # only now: the outputs are safe
    log.info("generator written to %s", files.output("generator"))
