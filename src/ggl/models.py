"""Federated models: randomly initialised (seeded), in eval mode, ending in an ``nn.Linear``
called ``fc`` (every model in ``MODELS`` and every plugin): label inference and Soteria read its
weight gradient, and MSE-R reads its 512-d input.
"""

from __future__ import annotations

import torch
from torch import nn

from ggl.config import ModelConfig
from ggl.plugins import Registry

MODELS: Registry = Registry("model")


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


@MODELS.register("resnet18-cifar")
class CifarResNet18(nn.Module):
    """CIFAR-style ResNet-18: 3x3 stride-1 stem, no max-pool, stages of width w, 2w, 4w, 8w."""

    def __init__(self, num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, in_planes = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            planes = width * 2**i
            layers.append(nn.Sequential(BasicBlock(in_planes, planes, stride),
                                        BasicBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


@MODELS.register("resnet18-imagenet")
def resnet18_imagenet(num_classes: int, width: int) -> nn.Module:
    """torchvision's resnet18 (7x7 stem, max-pool); only width 64 exists there."""
    from torchvision.models import resnet18

    if width != 64:
        raise ValueError(f"model.width: resnet18-imagenet is torchvision's resnet18, whose "
                         f"width is 64; got {width}")
    return resnet18(weights=None, num_classes=num_classes)


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> nn.Module:
    """Seeded random init on the CPU (same weights on every device), then eval mode; with
    ``norm: group`` its GroupNorm variant, the one Opacus accepts for DP-SGD."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = MODELS.get(cfg.arch)(num_classes=cfg.num_classes, width=cfg.width)
    if cfg.norm == "group":
        model = group_norm(model)
    if not isinstance(getattr(model, "fc", None), nn.Linear):
        raise ValueError(f"model.arch: {cfg.arch!r} must build an nn.Module whose last layer "
                         f"is an nn.Linear attribute named 'fc'")
    return model.to(device).eval()


def group_norm(model: nn.Module) -> nn.Module:
    """The model with every BatchNorm replaced by GroupNorm(gcd(32, channels), channels), in
    place: the variant Opacus' validator accepts for DP-SGD, as its ModuleValidator.fix builds
    it (a test holds the two equal), without importing Opacus (3 s) in every job."""
    import math

    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(model, name, nn.GroupNorm(math.gcd(32, child.num_features),
                                              child.num_features, affine=child.affine))
        else:
            group_norm(child)
    return model


def fc_weight_index(model: nn.Module) -> int:
    """Position of fc.weight in the model's parameter list (and so in every gradient list)."""
    for i, param in enumerate(model.parameters()):
        if param is model.fc.weight:
            return i
    raise ValueError("model has no fc.weight parameter")


def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of the linear head fc (the 512-d representation for ResNet-18)."""
    captured: list[torch.Tensor] = []
    handle = model.fc.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return captured[0]
