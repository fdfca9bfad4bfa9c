"""Stage train-gan: WGAN-GP on the public split only; resumes from its scratch file."""

from __future__ import annotations

from logging import Logger

from ggl import io
from ggl.data import load_part
from ggl.gan import gan_config, train_gan
from ggl.pipeline.registry import Stage
from ggl.runtime import resolve_device


def run(stage: Stage, log: Logger) -> None:
    params = stage.params
    images, labels = load_part(stage.input("public"))
    resume = stage.scratch("gan_resume")
    trained = train_gan(images, gan_config(params), resume, resolve_device(params.device), log,
                        public_labels=labels)
    io.save_torch(stage.output("generator"), trained.checkpoint())
    io.write_text(stage.output("gan_losses"), trained.losses_csv())
    io.save_figure(stage.output("gan_losses_plot"), trained.losses_figure())
    io.save_image(stage.output("gan_samples"), trained.samples())
    resume.unlink(missing_ok=True)  # only now: the outputs are safe
    log.info("generator written to %s", stage.output("generator"))
