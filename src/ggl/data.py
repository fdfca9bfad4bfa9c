"""Datasets and the public/private split: the server's public images train the generator, the
clients' private images are attacked. Each dataset is a loader in ``DATASETS`` that returns a
``Split``. Images are stored as uint8 (N, 3, H, W) and loaded as float in [-1, 1] (mean = std =
0.5, as the paper), so every stage sees the same pixels.
"""

from __future__ import annotations

import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ggl import io
from ggl.config import DataConfig
from ggl.errors import GglError
from ggl.plugins import Registry


class DataError(GglError):
    """Data is missing or unusable; the message says what to download and where to put it."""


@dataclass
class Split:
    public_images: torch.Tensor  # uint8 (N, 3, H, W)
    public_labels: torch.Tensor  # int64 (N,)
    private_images: torch.Tensor
    private_labels: torch.Tensor
    source: dict[str, Any] = field(default_factory=dict)  # recorded in index.json
    # held out from both: the utility stage's test set (None: no test part)
    test_images: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None


DATASETS: Registry = Registry("dataset")


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div(255).mul(2).sub(1)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255]."""
    return images.add(1).div(2).mul(255).round().clamp(0, 255).to(torch.uint8)


def random_split(images: torch.Tensor, labels: torch.Tensor, cfg: DataConfig,
                 source: dict[str, Any]) -> Split:
    """Seeded disjoint public, private and test subsets of one pool of images. The test part
    comes after the other two in the same permutation, so adding it changes neither."""
    total = len(images)
    needed = cfg.public_size + cfg.private_size + cfg.test_size
    if needed > total:
        raise DataError(f"data.public_size + data.private_size + data.test_size = {needed} "
                        f"exceeds the {total} images of dataset {cfg.dataset!r}")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(cfg.split_seed))
    public = order[: cfg.public_size]
    private = order[cfg.public_size : cfg.public_size + cfg.private_size]
    test = order[cfg.public_size + cfg.private_size : needed]
    source = {**source, "public_indices": public.tolist(), "private_indices": private.tolist(),
              "test_indices": test.tolist()}
    return Split(images[public], labels[public], images[private], labels[private], source,
                 images[test], labels[test])


def _subsample(n_avail: int, n: int, seed: int, what: str, skip: int = 0) -> torch.Tensor:
    """``n`` seeded indices of ``n_avail``, after the first ``skip`` of the same permutation."""
    if skip + n > n_avail:
        raise DataError(f"{what} asks for {skip + n} images but only {n_avail} are available")
    return torch.randperm(n_avail, generator=torch.Generator().manual_seed(seed))[skip:skip + n]


@DATASETS.register("digits")
def load_digits(cfg: DataConfig) -> Split:
    """scikit-learn's bundled 8x8 digits (no download), upsampled to image_size, 3 channels."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.tensor(bunch.images / 16.0, dtype=torch.float32)[:, None]
    x = F.interpolate(x, size=cfg.image_size, mode="bilinear", align_corners=False)
    x = to_uint8(x.clamp(0, 1).mul(2).sub(1)).repeat(1, 3, 1, 1)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    source = {"name": "scikit-learn load_digits", "total": len(x),
              "transform": f"8x8 /16, bilinear to {cfg.image_size}, grey to 3 channels"}
    return random_split(x, labels, cfg, source)


def _square_transform(image_size: int, resize: int | None = None):
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(resize or image_size),
                               transforms.CenterCrop(image_size), transforms.PILToTensor()])


def _stack(dataset: Any, indices: torch.Tensor, label_of, what: str) -> tuple[torch.Tensor, ...]:
    from tqdm import tqdm

    images, labels = [], []
    for i in tqdm(indices.tolist(), desc=f"reading {what}", unit="img"):
        try:
            image, target = dataset[i]
        except (OSError, ValueError, SyntaxError) as exc:  # PIL: truncated or not an image
            name = getattr(dataset, "samples", None)
            where = name[i][0] if name else f"{what}, image {i}"
            raise DataError(f"{where}: not a readable image ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
        images.append(image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3])
        labels.append(label_of(target))
    if not images:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


CELEBA_HELP = (
    "CelebA was not found (or is incomplete) under {root}/celeba. Either set data.download: true "
    "on a machine with internet access (torchvision downloads it from Google Drive and checks "
    "its MD5 sums; `pip install gdown` is needed), or download by hand from "
    "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html the files img_align_celeba.zip, "
    "list_attr_celeba.txt, identity_CelebA.txt, list_bbox_celeba.txt, "
    "list_landmarks_align_celeba.txt and list_eval_partition.txt into {root}/celeba/ and unzip "
    "img_align_celeba.zip there (giving {root}/celeba/img_align_celeba/*.jpg)."
)
CELEBA_MALE = 20  # index of the "Male" attribute among CelebA's 40


@DATASETS.register("celeba")
def load_celeba(cfg: DataConfig) -> Split:
    """CelebA, binary 'Male' attribute: train split public, test split private (paper)."""
    from torchvision.datasets import CelebA

    transform = _square_transform(cfg.image_size)
    splits = ("train", "test", "valid") if cfg.test_size else ("train", "test")
    try:
        parts = {split: CelebA(cfg.root, split=split, target_type="attr", transform=transform,
                               download=cfg.download) for split in splits}
    except (RuntimeError, OSError, urllib.error.URLError, ImportError) as exc:
        raise DataError(CELEBA_HELP.format(root=cfg.root) + f" (cause: {exc})") from exc
    pub = _subsample(len(parts["train"]), cfg.public_size, cfg.split_seed, "data.public_size")
    priv = _subsample(len(parts["test"]), cfg.private_size, cfg.split_seed + 1,
                      "data.private_size")
    pub_x, pub_y = _stack(parts["train"], pub, lambda attr: int(attr[CELEBA_MALE]), "CelebA train")
    priv_x, priv_y = _stack(parts["test"], priv, lambda attr: int(attr[CELEBA_MALE]), "CelebA test")
    test = (_subsample(len(parts["valid"]), cfg.test_size, cfg.split_seed + 2, "data.test_size")
            if cfg.test_size else torch.zeros(0, dtype=torch.int64))
    test_x, test_y = (_stack(parts["valid"], test, lambda attr: int(attr[CELEBA_MALE]),
                             "CelebA valid") if cfg.test_size else (None, None))
    source = {"name": "CelebA (torchvision)", "root": cfg.root, "label": "attribute 20 Male",
              "public_from": "train", "private_from": "test", "test_from": "valid",
              "public_indices": pub.tolist(), "private_indices": priv.tolist(),
              "test_indices": test.tolist(),
              "transform": f"Resize({cfg.image_size}) CenterCrop({cfg.image_size})"}
    return Split(pub_x, pub_y, priv_x, priv_y, source, test_x, test_y)


IMAGENET_HELP = (
    "ImageNet validation data was not found under {root}. ImageNet cannot be downloaded "
    "automatically (it needs an account): get ILSVRC2012_img_val.tar and "
    "ILSVRC2012_devkit_t12.tar.gz from https://image-net.org/download-images.php and place both "
    "files in {root}/ (torchvision checks their MD5 sums and unpacks them on first use)."
)


@DATASETS.register("imagenet")
def load_imagenet(cfg: DataConfig) -> Split:
    """ImageNet val as the private split; the public prior is BigGAN (public_size must be 0)."""
    from torchvision.datasets import ImageNet

    if cfg.public_size != 0:
        raise DataError("data.public_size must be 0 for imagenet: its generator is the "
                        "pretrained BigGAN-deep-256, trained on ImageNet's train split")
    try:
        val = ImageNet(cfg.root, split="val", transform=_square_transform(cfg.image_size, 256))
    except (RuntimeError, OSError) as exc:
        raise DataError(IMAGENET_HELP.format(root=cfg.root) + f" (cause: {exc})") from exc
    priv = _subsample(len(val), cfg.private_size, cfg.split_seed, "data.private_size")
    test = _subsample(len(val), cfg.test_size, cfg.split_seed, "data.private_size + "
                      "data.test_size", skip=cfg.private_size)
    priv_x, priv_y = _stack(val, priv, int, "ImageNet val")
    test_x, test_y = _stack(val, test, int, "ImageNet val (test)")
    empty = torch.zeros(0, 3, cfg.image_size, cfg.image_size, dtype=torch.uint8)
    source = {"name": "ImageNet ILSVRC2012 val (torchvision)", "root": cfg.root,
              "private_indices": priv.tolist(), "test_indices": test.tolist(),
              "transform": f"Resize(256) CenterCrop({cfg.image_size})"}
    return Split(empty, torch.zeros(0, dtype=torch.int64), priv_x, priv_y, source, test_x,
                 test_y)


@DATASETS.register("imagefolder")
def load_imagefolder(cfg: DataConfig) -> Split:
    """The user's own images, one sub-folder per class, resized and centre-cropped."""
    from torchvision.datasets import ImageFolder

    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"data.root: {str(root)!r} is not a folder; imagefolder expects "
                        f"{root}/<class name>/<image files>")
    try:
        folder = ImageFolder(str(root), transform=_square_transform(cfg.image_size))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"data.root: no images found under {root}: expected "
                        f"{root}/<class name>/<image files> ({exc})") from exc
    if len(folder.classes) != cfg.num_classes:
        raise DataError(f"data.num_classes is {cfg.num_classes} but {root} has "
                        f"{len(folder.classes)} class folders: {folder.classes}")
    images, labels = _stack(folder, torch.arange(len(folder)), int, str(root))
    source = {"name": "imagefolder", "root": str(root), "classes": folder.classes,
              "total": len(folder), "transform": f"Resize({cfg.image_size}) "
                                                 f"CenterCrop({cfg.image_size})"}
    return random_split(images, labels, cfg, source)


def load_dataset(cfg: DataConfig) -> Split:
    """Run the configured loader; a plugin may return a Split or (images, labels) to split."""
    result = DATASETS.get(cfg.dataset)(cfg)
    if isinstance(result, Split):
        return result
    images, labels = result
    if images.dtype != torch.uint8:
        images = to_uint8(images)
    return random_split(images, torch.as_tensor(labels, dtype=torch.int64), cfg,
                        {"name": cfg.dataset, "total": len(images)})


# --- the split's files: public.pt, private.pt, test.pt (uint8 images + labels), index.json --

def write_split(split: Split, cfg: DataConfig, public: Path, private: Path, test: Path,
                index: Path) -> None:
    if split.test_images is None:  # a plugin's Split without a test part
        split.test_images = split.private_images[:0]
        split.test_labels = split.private_labels[:0]
    if len(split.test_images) != cfg.test_size:
        raise DataError(f"data.test_size is {cfg.test_size} but dataset {cfg.dataset!r} gave "
                        f"{len(split.test_images)} test images")
    for path, part in ((public, "public"), (private, "private"), (test, "test")):
        images, labels = getattr(split, f"{part}_images"), getattr(split, f"{part}_labels")
        io.save_torch(path, {"images": images.contiguous(), "labels": labels})
    io.write_json(index, {
        "dataset": cfg.dataset, "image_size": cfg.image_size, "num_classes": cfg.num_classes,
        "split_seed": cfg.split_seed, "public_size": len(split.public_images),
        "private_size": len(split.private_images), "test_size": len(split.test_images),
        "pixel_range": "stored uint8 [0, 255]; loaded as float [-1, 1]",
        "private_label_counts": np.bincount(split.private_labels.numpy(),
                                            minlength=cfg.num_classes).tolist(),
        "source": split.source})


def load_part(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] and labels of one part of the split (public.pt, private.pt, test.pt)."""
    stored = io.load_torch(path)
    with io.reading(path):
        images, labels = stored["images"], stored["labels"]
        if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)
                and images.dim() == 4 and labels.shape == (len(images),)):
            raise ValueError("expected images (n, 3, H, W) and labels (n,)")
    io.finite(path, images)
    return to_unit_range(images), labels
