"""Hostile and corrupt files stay inert: no file a user did not write as code is ever
unpickled into code, and each is refused with one line naming it."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from ggl import metrics
from ggl.errors import GglError


class Payload:
    """Unpickling this creates ``marker``: the proof that a file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def payload_file(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"features.0.weight": Payload(marker)}))
    return path


@pytest.fixture
def torch_cache(tmp_path, monkeypatch):
    """An empty torch hub cache of this test's own."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


@pytest.mark.parametrize("allow_stand_in", [True, False])
def test_a_crafted_vgg16_file_in_the_torch_cache_is_refused_by_hash_and_never_run(
        tmp_path, torch_cache, allow_stand_in):
    marker = tmp_path / "payload-ran"
    crafted = payload_file(torch_cache / metrics.VGG16_FILE, marker)
    with pytest.raises(GglError, match=f"{crafted}: refused, its SHA-256 .* does not match"):
        metrics.Lpips(allow_stand_in=allow_stand_in)
    assert not marker.exists()


def test_the_verified_vgg16_features_are_the_backbone_lpips_uses(torch_cache, monkeypatch):
    """The real file cannot be fetched here: its tensors' place in LPIPS is checked with
    seeded stand-in tensors of the same names and shapes."""
    import torchvision

    torch.manual_seed(1)
    features = {f"features.{k}": v for k, v in
                torchvision.models.vgg16(weights=None).features.state_dict().items()}
    torch_cache.mkdir(parents=True)
    (torch_cache / metrics.VGG16_FILE).write_bytes(b"stands in for the verified file")
    monkeypatch.setattr(metrics, "vgg16_features", lambda path: features)
    lp = metrics.Lpips(allow_stand_in=False)
    assert not lp.stand_in and lp.column == "lpips_vgg"
    backbone = lp.net.net.state_dict()
    assert len(backbone) == len(features) == 26
    for key, value in backbone.items():
        assert torch.equal(value, features[f"features.{key.split('.', 1)[1]}"]), key
