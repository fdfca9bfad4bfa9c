"""Device choice, seeding and logging shared by every stage."""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path

import torch

from ggl.errors import GglError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GglError(f"device: {name!r} was asked for but no CUDA GPU is visible; "
                           "use 'auto' or 'cpu'")
    return torch.device(name)


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (names, indices): same parts, same seed, every run."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def data_fingerprint(images: torch.Tensor, labels: torch.Tensor | None = None) -> str:
    """A short hash of tensors (and labels): a resume must continue on the same data."""
    digest = hashlib.sha256(str(tuple(images.shape)).encode())
    digest.update(images.detach().cpu().contiguous().float().numpy().tobytes())
    if labels is not None:
        digest.update(labels.detach().cpu().contiguous().long().numpy().tobytes())
    return digest.hexdigest()[:16]


def get_logger(name: str, path: str | Path | None = None) -> logging.Logger:
    """A logger that writes to stderr and, when given, to the file ``path``."""
    logger = logging.getLogger(f"ggl.{name}")
    if logger.handlers:
        return logger
    logger.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path))
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    logger.propagate = False
    return logger
