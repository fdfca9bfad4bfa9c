"""Generators: one interface, deterministic, frozen, buffers untouched; checkpoints load with
weights_only=True; the BigGAN stand-in gives finite 224x224 images and says it is a stand-in."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ggl import io
from ggl.biggan import BIGGAN_DEEP_256
from ggl.errors import GglError
from ggl.generators import (
    GENERATORS,
    DCGANCritic,
    DCGANGenerator,
    Generator,
    dcgan_checkpoint,
    load_generator,
)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _unchanged(before: dict[str, torch.Tensor], module: nn.Module) -> bool:
    after = module.state_dict()
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k])
                                                  for k in before)


def test_paper_layer_spec_at_width_64():
    g, c = DCGANGenerator(128, 64), DCGANCritic(64)
    assert g.fc[0].out_features == 512 * 4 * 4
    assert [m.out_channels for m in g.net if isinstance(m, nn.ConvTranspose2d)] == [256, 128, 3]
    assert [m.out_channels for m in c.net if isinstance(m, nn.Conv2d)] == [128, 256, 512]
    assert c.net[-1].in_features == 8192
    assert g(torch.randn(2, 128)).shape == (2, 3, 32, 32)
    assert c(torch.zeros(2, 3, 32, 32)).shape == (2,)


def test_dcgan_interface_is_deterministic_frozen_and_leaves_buffers_alone():
    g = load_generator("dcgan", None, "cpu", image_size=32, latent_dim=16, width=4, seed=3)
    before = _snapshot(g)
    z = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    a, b = g(z), g(z, torch.arange(5))  # labels are ignored by an unconditional prior
    assert a.shape == (5, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and _unchanged(before, g)
    assert not g.training and not g.train().training  # pinned to eval mode
    assert all(not p.requires_grad for p in g.parameters())
    assert g.stand_in is not None and "random-weight" in g.stand_in
    zz = z.clone().requires_grad_(True)
    g(zz).square().sum().backward()  # gradients reach z, and nothing else
    assert zz.grad is not None and zz.grad.abs().sum() > 0
    assert all(p.grad is None for p in g.parameters())
    same_seed = load_generator("dcgan", None, "cpu", image_size=32, latent_dim=16, width=4, seed=3)
    assert torch.equal(same_seed(z), a)
    with pytest.raises(ValueError, match=r"\(n, 16\)"):
        g(torch.randn(5, 8))


def test_dcgan_resizes_to_the_model_resolution():
    g = load_generator("dcgan", None, "cpu", image_size=16, latent_dim=8, width=2)
    assert g(torch.randn(3, 8)).shape == (3, 3, 16, 16)


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(0)
    net = DCGANGenerator(16, 4)
    net.train()
    net(torch.randn(32, 16))  # non-trivial BatchNorm statistics
    net.eval()
    path = io.save_torch(tmp_path / "generator.pt", dcgan_checkpoint(net, 32, note="test"))
    raw = torch.load(path, weights_only=True)
    assert raw["config"] == {"arch": "dcgan", "latent_dim": 16, "width": 4, "image_size": 32,
                             "num_classes": 0, "note": "test"}
    g = load_generator("dcgan", path, "cpu", image_size=32, latent_dim=16, width=4)
    assert g.stand_in is None and g.info()["stand_in"] is None
    z = torch.randn(4, 16)
    with torch.no_grad():
        assert torch.allclose(g(z), net(z))
    with pytest.raises(GglError, match="width 4"):
        load_generator("dcgan", path, "cpu", image_size=32, latent_dim=16, width=8)


def _plugin_generator(checkpoint, latent_dim: int, image_size: int, **_):
    """A user's own prior, returned as a bare module: the loader wraps it."""
    return nn.Sequential(nn.Linear(latent_dim, 3 * image_size * image_size), nn.Tanh(),
                         nn.Unflatten(1, (3, image_size, image_size)))


def test_plugin_generator_is_wrapped_into_the_interface():
    assert {"dcgan", "biggan-deep-256"} <= set(GENERATORS.names())
    g = load_generator("test_generators:_plugin_generator", None, "cpu", latent_dim=4,
                       image_size=8)
    assert isinstance(g, Generator) and g(torch.randn(2, 4)).shape == (2, 3, 8, 8)
    assert g.stand_in is not None


@pytest.fixture(scope="module")
def biggan():
    return load_generator("biggan-deep-256", None, "cpu", image_size=224, seed=0)


def test_biggan_stand_in_gives_finite_224_images_deterministically(biggan):
    before = _snapshot(biggan)
    z = torch.randn(2, 128, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 999])
    with torch.no_grad():
        a, b = biggan(z, labels), biggan(z, labels)
    assert a.shape == (2, 3, 224, 224)
    assert torch.isfinite(a).all() and a.min() >= -1 and a.max() <= 1
    assert a.std() > 0.05 and (a[0] - a[1]).abs().mean() > 0.01  # not a constant image
    assert torch.equal(a, b) and _unchanged(before, biggan)
    assert biggan.conditional and biggan.num_classes == 1000 and biggan.latent_dim == 128
    assert "random-weight" in biggan.stand_in and biggan.info()["stand_in"] == biggan.stand_in
    with pytest.raises(ValueError, match="labels"):
        biggan(z)


def test_biggan_stand_in_is_the_same_every_build(biggan):
    again = load_generator("biggan-deep-256", None, "cpu", image_size=224, seed=0)
    z = torch.randn(1, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(again(z, torch.tensor([7])), biggan(z, torch.tensor([7])))


def test_recorded_biggan_256_config_is_the_packages_converter_config():
    from pytorch_pretrained_biggan.convert_tf_to_pytorch import BigGAN256

    # json round trip: the converter uses tuples, the published config.json lists
    assert json.loads(json.dumps(BigGAN256.to_dict())) == BIGGAN_DEEP_256


def test_missing_biggan_weights_say_how_to_get_them(tmp_path):
    with pytest.raises(GglError, match="fetch-biggan"):
        load_generator("biggan-deep-256", tmp_path / "absent.bin", "cpu", image_size=224)
