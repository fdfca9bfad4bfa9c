"""Generators: one interface, deterministic, buffers untouched; GAN training resumes;
BigGAN retrieval refuses anything it cannot verify."""

from __future__ import annotations

import hashlib
import io as bytes_io
import urllib.error
from dataclasses import replace

import pytest
import torch

from ggl import biggan, io
from ggl.gan import GanTrainConfig, quality_check, train_gan
from ggl.generators import load_generator


def _state(generator) -> dict:
    return {k: v.clone() for k, v in generator.net.state_dict().items()}


def _unchanged(before: dict, generator) -> bool:
    return all(torch.equal(before[k], v) for k, v in generator.net.state_dict().items())


def test_dcgan_interface_is_deterministic_and_leaves_buffers_alone():
    g = load_generator("dcgan", None, "cpu", image_size=32, latent_dim=16, width=4)
    before = _state(g)
    z = torch.randn(5, 16)
    a, b = g(z), g(z)
    assert a.shape == (5, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and _unchanged(before, g)
    assert g.standin is not None  # no checkpoint: says so


def test_biggan_standin_gives_224_images_deterministically():
    g = load_generator("biggan-deep-256", None, "cpu", image_size=224, channel_width=4)
    before = _state(g)
    z, labels = torch.randn(2, 128, generator=torch.Generator().manual_seed(0)), torch.tensor(
        [1, 999])
    a, b = g(z, labels), g(z, labels)
    assert a.shape == (2, 3, 224, 224)
    assert torch.isfinite(a).all() and a.min() >= -1 and a.max() <= 1 and a.std() > 0.05
    assert torch.equal(a, b) and _unchanged(before, g)
    assert "random-weight" in g.standin
    with pytest.raises(ValueError, match="labels"):
        g(z)


TINY = GanTrainConfig(epochs=3, batch_size=16, lr=2e-4, beta1=0.0, beta2=0.9, critic_steps=1,
                      gp_weight=10.0, latent_dim=8, width=2, ema=0.9, seed=0)


@pytest.fixture(scope="module")
def images():
    return torch.rand(48, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_killed_training_resumes_and_ends_where_an_uninterrupted_run_ends(images, tmp_path):
    train_gan(images, TINY, tmp_path / "straight", torch.device("cpu"))
    with pytest.raises(KeyboardInterrupt):
        train_gan(images, TINY, tmp_path / "killed", torch.device("cpu"), stop_after_epoch=2)
    assert (tmp_path / "killed/.resume.pt").exists()
    assert not (tmp_path / "killed/generator.pt").exists()
    resumed = io.load_torch(tmp_path / "killed/.resume.pt")
    assert resumed["epoch"] == 2
    train_gan(images, TINY, tmp_path / "killed", torch.device("cpu"))
    a = io.load_torch(tmp_path / "straight/generator.pt")  # weights_only=True
    b = io.load_torch(tmp_path / "killed/generator.pt")
    assert all(torch.equal(a["generator"][k], b["generator"][k]) for k in a["generator"])
    rows = (tmp_path / "killed/losses.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,critic_loss") and len(rows) == 1 + 3 * 3
    for name in ("samples.png", "losses.png"):
        assert (tmp_path / "killed" / name).stat().st_size > 0
    assert not (tmp_path / "killed/.resume.pt").exists()


def test_resume_file_of_other_settings_is_ignored(images, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train_gan(images, TINY, tmp_path, torch.device("cpu"), stop_after_epoch=1)
    other = replace(TINY, lr=1e-3)
    train_gan(images, other, tmp_path, torch.device("cpu"))
    rows = (tmp_path / "losses.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 3  # started over: three full epochs of the new settings


def test_quality_check_reports_readable_numbers(images):
    g = load_generator("dcgan", None, "cpu", image_size=32, latent_dim=8, width=2)
    labels = torch.arange(48) % 3
    q = quality_check(g, (images, labels), (images[:12], labels[:12]), 3, 0,
                      torch.device("cpu"), n_samples=60, epochs=1)
    assert 1 / 3 <= q["sample_confidence"] <= 1 and 1 / 3 <= q["real_confidence"] <= 1
    assert 1 <= q["classes_covered"] <= 3 and sum(q["sample_class_histogram"]) == 60


class _Response(bytes_io.BytesIO):
    def __init__(self, data: bytes, length: int | None = None) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(length if length is not None else len(data))}


def _opener(files: dict[str, bytes], lengths: dict[str, int] | None = None):
    def opener(url: str):
        name = url.rsplit("/", 1)[1]
        return _Response(files[name], (lengths or {}).get(name))

    return opener


def _serve(monkeypatch, files, checksums):
    monkeypatch.setattr(biggan, "recorded_checksums", lambda: checksums)
    return _opener(files)


CONFIG_BYTES = __import__("json").dumps(biggan.BIGGAN_DEEP_256).encode()
WEIGHTS = b"weights" * 1000


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_verified_download_lands_at_the_final_path(monkeypatch, tmp_path):
    files = {biggan.WEIGHTS_FILE: WEIGHTS, biggan.CONFIG_FILE: CONFIG_BYTES}
    opener = _serve(monkeypatch, files, {k: _sha(v) for k, v in files.items()})
    paths = biggan.fetch_biggan(tmp_path, opener=opener)
    assert paths[biggan.WEIGHTS_FILE].read_bytes() == WEIGHTS
    biggan.fetch_biggan(tmp_path, opener=lambda url: pytest.fail("downloaded again"))


def test_corrupt_download_is_refused_and_leaves_nothing(monkeypatch, tmp_path):
    files = {biggan.WEIGHTS_FILE: b"corrupt", biggan.CONFIG_FILE: CONFIG_BYTES}
    opener = _serve(monkeypatch, files, {biggan.WEIGHTS_FILE: _sha(WEIGHTS),
                                         biggan.CONFIG_FILE: _sha(CONFIG_BYTES)})
    with pytest.raises(biggan.DownloadError, match="does not match"):
        biggan.fetch_biggan(tmp_path, opener=opener)
    assert not (tmp_path / biggan.WEIGHTS_FILE).exists()
    assert [p.name for p in tmp_path.iterdir()] in ([], [biggan.CONFIG_FILE])


def test_truncated_download_is_refused_and_leaves_nothing(tmp_path):
    opener = lambda url: _Response(WEIGHTS[:100], length=len(WEIGHTS))  # noqa: E731
    with pytest.raises(biggan.DownloadError, match="truncated"):
        biggan.download("https://x/" + biggan.WEIGHTS_FILE, tmp_path / biggan.WEIGHTS_FILE,
                        _sha(WEIGHTS), opener=opener)
    assert list(tmp_path.iterdir()) == []


def test_unrecorded_hash_is_not_trusted_silently(tmp_path):
    with pytest.raises(biggan.DownloadError, match="--record-hash"):
        biggan.download("https://x/" + biggan.WEIGHTS_FILE, tmp_path / biggan.WEIGHTS_FILE,
                        None, opener=_opener({biggan.WEIGHTS_FILE: WEIGHTS}))
    assert list(tmp_path.iterdir()) == []


def test_offline_message_says_what_to_download_and_where(monkeypatch, tmp_path):
    def offline(url):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(biggan, "recorded_checksums", lambda: {})
    with pytest.raises(biggan.DownloadError) as info:
        biggan.fetch_biggan(tmp_path, opener=offline)
    message = str(info.value)
    for url in biggan.urls().values():
        assert url in message
    assert str(tmp_path / biggan.WEIGHTS_FILE) in message
