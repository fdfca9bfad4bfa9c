"""GAN stage: a killed training resumes to the same weights; the quality check reports readable
numbers."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from ggl import io
from ggl.errors import GglError
from ggl.gan import CPU_RECIPE, PAPER_RECIPE, GanTrainConfig, quality_check, train_gan
from ggl.generators import load_generator

TINY = replace(CPU_RECIPE, epochs=3, batch_size=16, latent_dim=8, width=2, bn_recalibration=2,
               ema=0.9, gp_every=2, lr_decay=True)  # every option on: resume must restore all
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


class Killed(Exception):
    pass


def _kill_after(epoch: int):
    def hook(done: int) -> None:
        if done == epoch:
            raise Killed(f"killed after epoch {done}")

    return hook


def test_recipes_spell_out_every_field():
    assert PAPER_RECIPE.epochs == 100 and PAPER_RECIPE.critic_steps == 5
    assert PAPER_RECIPE.betas == (0.5, 0.999) and PAPER_RECIPE.width == 64
    raw = json.loads(json.dumps(asdict(CPU_RECIPE)))  # as read from YAML: betas is a list
    assert GanTrainConfig(**raw) == CPU_RECIPE


def _train(images, cfg, folder: Path, **kwargs):
    """Train with the resume file in ``folder``, as the train-gan stage does."""
    return train_gan(images, cfg, folder / "resume.pt", CPU, **kwargs)


def _weights_equal(a, b) -> bool:
    a, b = a.checkpoint()["generator"], b.checkpoint()["generator"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_training_resumes_and_ends_where_an_uninterrupted_run_ends(images, tmp_path):
    straight = _train(images, TINY, tmp_path / "straight")
    killed = tmp_path / "killed"
    seen: list[int] = []
    with pytest.raises(Killed):
        _train(images, TINY, killed, on_epoch_end=lambda e: (seen.append(e), _kill_after(2)(e)))
    assert seen == [1, 2]
    assert io.load_torch(killed / "resume.pt")["epoch"] == 2
    resumed_epochs: list[int] = []
    resumed = _train(images, TINY, killed, on_epoch_end=resumed_epochs.append)
    assert resumed_epochs == [3]  # only the missing epoch ran
    assert straight.checkpoint()["config"] == resumed.checkpoint()["config"]
    assert resumed.checkpoint()["config"]["width"] == 2
    assert _weights_equal(straight, resumed)
    rows = list(csv.reader(resumed.losses_csv().splitlines()))
    assert rows[0] == ["step", "epoch", "critic_loss", "generator_loss", "gradient_penalty",
                       "wasserstein"]
    assert len(rows) == 1 + 3 * (64 // 16) and rows[-1][1] == "3"
    assert resumed.losses_csv() == straight.losses_csv()
    assert torch.equal(resumed.samples(), straight.samples())
    io.save_torch(tmp_path / "generator.pt", resumed.checkpoint())
    g = load_generator("dcgan", tmp_path / "generator.pt", CPU, image_size=32, latent_dim=8,
                       width=2)
    assert g.stand_in is None and g(torch.randn(2, 8)).shape == (2, 3, 32, 32)


def test_resume_file_of_other_settings_or_images_is_not_used(images, tmp_path):
    with pytest.raises(Killed):
        _train(images, TINY, tmp_path, on_epoch_end=_kill_after(1))
    epochs: list[int] = []
    _train(images, replace(TINY, lr=1e-3), tmp_path, on_epoch_end=epochs.append)
    assert epochs == [1, 2, 3]  # started over
    with pytest.raises(Killed):
        _train(images, TINY, tmp_path, on_epoch_end=_kill_after(1))
    epochs.clear()
    _train(-images, TINY, tmp_path, on_epoch_end=epochs.append)
    assert epochs == [1, 2, 3]


def test_conditional_gan_resumes_and_its_samples_follow_the_label(images, tmp_path):
    cfg = replace(TINY, num_classes=3)
    labels = torch.arange(64) % 3
    with pytest.raises(ValueError, match="public label"):
        _train(images, cfg, tmp_path / "x")
    straight = _train(images, cfg, tmp_path / "straight", public_labels=labels)
    with pytest.raises(Killed):
        _train(images, cfg, tmp_path / "killed", on_epoch_end=_kill_after(2),
               public_labels=labels)
    epochs: list[int] = []
    resumed = _train(images, cfg, tmp_path / "killed", on_epoch_end=epochs.append,
                     public_labels=labels)
    assert epochs == [3]
    assert _weights_equal(straight, resumed)
    path = io.save_torch(tmp_path / "generator.pt", resumed.checkpoint())
    g = load_generator("dcgan", path, CPU, image_size=32, latent_dim=8, width=2,
                       conditional=True, num_classes=3)
    assert g.conditional and g.num_classes == 3 and g.stand_in is None
    z = torch.randn(1, 8).expand(3, 8)
    x = g(z, torch.arange(3))
    assert not torch.equal(x[0], x[1]) and not torch.equal(x[1], x[2])  # same z, other class
    with pytest.raises(ValueError, match="pass labels"):
        g(z)
    with pytest.raises(GglError, match="0 = unconditional"):  # params disagree with the file
        load_generator("dcgan", path, CPU, image_size=32, latent_dim=8, width=2)
    # A different labelling of the same images is other training data: no resume.
    with pytest.raises(Killed):
        _train(images, cfg, tmp_path / "relabel", on_epoch_end=_kill_after(1),
               public_labels=labels)
    epochs.clear()
    _train(images, cfg, tmp_path / "relabel", on_epoch_end=epochs.append,
           public_labels=labels.flip(0))
    assert epochs == [1, 2, 3]


def test_quality_check_reports_readable_numbers(images):
    g = load_generator("dcgan", None, CPU, image_size=32, latent_dim=8, width=2)
    labels = torch.arange(64) % 3
    q = quality_check(g, images, labels, images[:12], labels[:12], CPU, seed=0, n_samples=60,
                      classifier_epochs=1)
    for key in ("sample_confidence", "real_confidence"):
        assert 1 / 3 - 1e-6 <= q[key] <= 1
    assert 1 <= q["classes_covered"] <= 3 and q["num_classes"] == 3
    assert sum(q["sample_class_histogram"]) == 60 and len(q["sample_class_histogram"]) == 3
    assert 0 <= q["classifier_private_accuracy"] <= 1
    assert q["generator_stand_in"] is not None
    again = quality_check(g, images, labels, images[:12], None, CPU, seed=0, n_samples=60,
                          classifier_epochs=1)
    assert again["sample_confidence"] == q["sample_confidence"]  # seeded
    assert again["classifier_private_accuracy"] is None
