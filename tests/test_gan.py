"""GAN stage: a killed training resumes to the same weights; the quality check reports readable
numbers; BigGAN retrieval writes nothing it cannot verify and says what to do offline."""

from __future__ import annotations

import csv
import hashlib
import io as bytes_io
import json
import urllib.error
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from ggl import biggan, io
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


# --- BigGAN retrieval -----------------------------------------------------------------------

CONFIG_BYTES = json.dumps(biggan.BIGGAN_DEEP_256).encode()
WEIGHTS = b"weights" * 1000


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _serve(tmp_path: Path, weights: bytes = WEIGHTS, config: bytes = CONFIG_BYTES
           ) -> dict[str, str]:
    """The two files as local file:// URLs (urllib's real opener reads them)."""
    src = tmp_path / "server"
    src.mkdir(exist_ok=True)
    (src / biggan.WEIGHTS_FILE).write_bytes(weights)
    (src / biggan.CONFIG_FILE).write_bytes(config)
    return {name: (src / name).as_uri() for name in (biggan.WEIGHTS_FILE, biggan.CONFIG_FILE)}


NAMES = (biggan.WEIGHTS_FILE, biggan.CONFIG_FILE)


def _dest(folder: Path) -> tuple[Path, Path]:
    """Where the pipeline would keep the weights and the config."""
    return folder / biggan.WEIGHTS_FILE, folder / biggan.CONFIG_FILE


def _no_network(url: str):
    raise AssertionError(f"downloaded {url} again")


def test_verified_download_lands_and_is_not_repeated(tmp_path):
    dest = tmp_path / "biggan"
    path = biggan.fetch_biggan(*_dest(dest), sha256={biggan.WEIGHTS_FILE: _sha(WEIGHTS)},
                               sources=_serve(tmp_path))
    assert path == dest / biggan.WEIGHTS_FILE and path.read_bytes() == WEIGHTS
    assert json.loads((dest / biggan.CONFIG_FILE).read_text()) == biggan.BIGGAN_DEEP_256
    assert sorted(p.name for p in dest.iterdir()) == sorted([biggan.WEIGHTS_FILE,
                                                             biggan.CONFIG_FILE])
    biggan.fetch_biggan(*_dest(dest), sha256={biggan.WEIGHTS_FILE: _sha(WEIGHTS)},
                        sources=_serve(tmp_path), opener=_no_network)


def test_corrupt_download_is_refused_and_leaves_nothing(tmp_path):
    dest = tmp_path / "biggan"
    with pytest.raises(biggan.DownloadError, match="does not match"):
        biggan.fetch_biggan(*_dest(dest), sha256={biggan.WEIGHTS_FILE: _sha(WEIGHTS)},
                            sources=_serve(tmp_path, weights=b"corrupt" * 10))
    assert [p.name for p in dest.iterdir()] == [biggan.CONFIG_FILE]  # config verified alone


def test_config_that_differs_from_the_recorded_architecture_is_refused(tmp_path):
    other = json.dumps({**biggan.BIGGAN_DEEP_256, "output_dim": 128}).encode()
    with pytest.raises(biggan.DownloadError, match="BIGGAN_DEEP_256"):
        biggan.fetch_biggan(*_dest(tmp_path / "d"), sources=_serve(tmp_path, config=other))
    assert list((tmp_path / "d").iterdir()) == []


class _Response(bytes_io.BytesIO):
    def __init__(self, data: bytes, length: int) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(length)}


def test_truncated_download_is_refused_and_leaves_nothing(tmp_path):
    opener = lambda url: _Response(WEIGHTS[:100], len(WEIGHTS))  # noqa: E731
    with pytest.raises(biggan.DownloadError, match="truncated"):
        biggan.download(biggan.WEIGHTS_FILE, "https://example.invalid/w.bin",
                        dict(zip(NAMES, _dest(tmp_path), strict=True)), _sha(WEIGHTS),
                        opener=opener)
    assert list(tmp_path.iterdir()) == []


def test_unknown_hash_keeps_the_download_aside_until_a_hash_is_given(tmp_path, monkeypatch):
    monkeypatch.setitem(biggan.EXPECTED_SHA256, biggan.WEIGHTS_FILE, None)
    dest = tmp_path / "biggan"
    with pytest.raises(biggan.DownloadError, match=_sha(WEIGHTS)):
        biggan.fetch_biggan(*_dest(dest), sources=_serve(tmp_path))
    assert not (dest / biggan.WEIGHTS_FILE).exists()
    assert (dest / f"{biggan.WEIGHTS_FILE}.unverified").read_bytes() == WEIGHTS
    overrides = biggan.parse_sha256_overrides([_sha(WEIGHTS)])
    biggan.fetch_biggan(*_dest(dest), sha256=overrides, sources=_serve(tmp_path),
                        opener=_no_network)
    assert (dest / biggan.WEIGHTS_FILE).read_bytes() == WEIGHTS
    assert not (dest / f"{biggan.WEIGHTS_FILE}.unverified").exists()


def test_present_file_that_fails_verification_is_moved_aside_and_fetched(tmp_path):
    dest = tmp_path / "biggan"
    dest.mkdir()
    (dest / biggan.WEIGHTS_FILE).write_bytes(b"half a file")
    biggan.fetch_biggan(*_dest(dest), sha256={biggan.WEIGHTS_FILE: _sha(WEIGHTS)},
                        sources=_serve(tmp_path))
    assert (dest / biggan.WEIGHTS_FILE).read_bytes() == WEIGHTS
    assert (dest / f"{biggan.WEIGHTS_FILE}.rejected").read_bytes() == b"half a file"


def test_offline_message_says_what_to_download_and_where(tmp_path):
    def offline(url: str):
        raise urllib.error.URLError("no network")

    with pytest.raises(biggan.DownloadError) as info:
        biggan.fetch_biggan(*_dest(tmp_path), opener=offline)
    message = str(info.value)
    for name, url in biggan.urls().items():
        assert url.startswith("https://") and url in message
        assert str(tmp_path / name) in message
    assert list(tmp_path.iterdir()) == []


def test_sha256_overrides_are_checked():
    digest = "a" * 64
    assert biggan.parse_sha256_overrides([digest]) == {biggan.WEIGHTS_FILE: digest}
    assert biggan.parse_sha256_overrides([f"{biggan.CONFIG_FILE}={digest}"]) == {
        biggan.CONFIG_FILE: digest}
    with pytest.raises(GglError, match="64-digit"):
        biggan.parse_sha256_overrides(["abc"])
    with pytest.raises(GglError, match="unknown file"):
        biggan.parse_sha256_overrides([f"other.bin={digest}"])
