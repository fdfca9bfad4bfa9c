"""Atomic file writes and safe loads: every stage writes through these helpers, so a file appears
at its final path only when whole, and a killed job never leaves a half-written output that a
rerun would trust.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ggl.errors import GglError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)  # reading the umask means setting it: put it back at once
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return _write_with(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV table as text: the header row, then ``rows``."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


class UnreadableFile(GglError):
    """A file a stage reads is missing, corrupt or not what it should hold; names the file."""


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UnreadableFile(f"{path}: missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UnreadableFile(f"{path}: not valid JSON ({exc})") from None


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """Save tensors and plain containers; everything written loads with ``weights_only=True``."""
    # through a file object: torch.save(obj, tmp_path) would write the random temporary name
    # into the archive, and identical tensors would hash differently on every run
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)

    return _write_with(path, write)


def load_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Tensors and plain containers only (``weights_only=True``: a file holding anything else is
    refused, never unpickled); an error naming the file when it cannot be read."""
    import pickle

    try:
        with warnings.catch_warnings():  # torch's note on a legacy file's pickle protocol
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UnreadableFile(f"{path}: missing") from None
    except pickle.UnpicklingError as exc:  # never retried without weights_only
        detail = str(exc).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
        raise UnreadableFile(f"{path}: refused by the weights-only loader, so never unpickled: "
                             f"not tensors and plain containers alone "
                             f"({detail[0].split('. ')[0] if detail else 'unreadable'})") from None
    except Exception as exc:  # noqa: BLE001 - parsing arbitrary bytes fails in many ways
        raise UnreadableFile(f"{path}: not a readable torch file ({_first(exc)})") from None


def set_aside(path: str | os.PathLike, why: str, log: Any = None) -> Path:
    """Move a file that cannot be used to ``<name>.rejected`` (kept for inspection), warning."""
    path = Path(path)
    rejected = path.with_name(path.name + ".rejected")
    os.replace(path, rejected)
    message = f"{path}: {why}; moved aside to {rejected.name}"
    (log.warning if log is not None else warnings.warn)(message)
    return rejected


def read_resume(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                log: Any = None) -> dict[str, Any] | None:
    """A resume file's content; None when there is none, or when it cannot be read (it is then
    set aside and the work starts over: a resume file only saves time)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = load_torch(path, map_location)
    except UnreadableFile as exc:
        set_aside(path, f"unreadable ({str(exc).split(': ', 1)[-1]}), starting over", log)
        return None
    if not isinstance(state, dict):
        set_aside(path, "not a resume record, starting over", log)
        return None
    return state


@contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Around the code that takes a loaded file apart: a missing key, a wrong type or shape
    becomes one line naming the file instead of a traceback deep in a stage."""
    try:
        yield
    except (KeyError, TypeError, IndexError, AttributeError, RuntimeError, ValueError) as exc:
        raise UnreadableFile(f"{path}: not what ggl writes there ({_first(exc)})") from None


def finite(path: str | os.PathLike, tensors: Any) -> None:
    """Refuse a loaded file holding NaN or infinite values in any of its tensors."""
    values = tensors.values() if isinstance(tensors, dict) else (
        tensors if isinstance(tensors, list | tuple) else [tensors])
    for value in values:
        if isinstance(value, dict | list | tuple):
            finite(path, value)
        elif (isinstance(value, torch.Tensor) and value.is_floating_point()
              and not bool(torch.isfinite(value).all())):
            raise UnreadableFile(f"{path}: holds NaN or infinite values")


def _first(exc: BaseException) -> str:
    """The exception's type and first sentence: enough to name what is wrong in one line."""
    text = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text or 'empty or truncated'}"


def image_grid(images: torch.Tensor, nrow: int, padding: int = 1) -> torch.Tensor:
    """(N, C, H, W) -> one (C, H', W') grid, ``nrow`` images a row, ``padding`` black pixels
    around each; a single image comes back unpadded (the layout of torchvision's make_grid)."""
    if images.shape[0] == 1:
        return images[0]
    n, c, h, w = images.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    grid = images.new_zeros(c, rows * (h + padding) + padding, cols * (w + padding) + padding)
    for k in range(n):
        y, x = divmod(k, cols)
        top, left = y * (h + padding) + padding, x * (w + padding) + padding
        grid[:, top:top + h, left:left + w] = images[k]
    return grid


def save_image(path: str | os.PathLike, image: torch.Tensor) -> Path:
    """Save a (3, H, W) or (N, 3, H, W) image in [-1, 1] as PNG (a grid for a batch). Written
    with Pillow: importing torchvision for this cost every attack job 3 s."""
    from PIL import Image

    image = (image.detach().float().cpu().clamp(-1, 1) + 1) / 2
    batch = image if image.dim() == 4 else image.unsqueeze(0)
    nrow = max(1, int(round(batch.shape[0] ** 0.5)))
    pixels = image_grid(batch, nrow).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    picture = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    return _write_with(path, lambda tmp: picture.save(tmp, format="png"))


def save_figure(path: str | os.PathLike, fig: Any) -> Path:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    suffix = Path(path).suffix.lstrip(".") or "png"
    try:
        return _write_with(path, lambda tmp: fig.savefig(tmp, format=suffix, dpi=120,
                                                          bbox_inches="tight"))
    finally:
        plt.close(fig)
