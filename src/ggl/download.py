"""Downloads that reach their final path only whole and verified.

A ``Check`` says why a file may not be trusted (or None): a known SHA-256, a content check.
``ensure`` keeps a present file that passes it, moves one that fails aside to
``<name>.rejected`` (never deleted, never used), and downloads otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from ggl import io
from ggl.errors import GglError

log = logging.getLogger("ggl.download")

Opener = Callable[[str], Any]  # url -> a context-managed response with .read() and .headers
Check = Callable[[Path], "str | None"]  # why the file may not be trusted, or None


class DownloadError(GglError):
    """A download failed or did not verify; nothing was written at the final path."""


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_problem(path: Path, expected: str, where: str) -> str | None:
    actual = sha256_of(path)
    if actual != expected:
        return f"its SHA-256 {actual} does not match {expected} ({where})"
    return None


def _stream(url: str, tmp: Path, opener: Opener) -> None:
    """Stream ``url`` into ``tmp``; refuse a short read."""
    with opener(url) as response, open(tmp, "wb") as out:
        length = response.headers.get("Content-Length")
        shutil.copyfileobj(response, out, 1 << 20)
    size = tmp.stat().st_size
    if length is not None and size != int(length):
        raise DownloadError(f"{url}: truncated download ({size} of {length} bytes)")


urlopen: Opener = partial(urllib.request.urlopen, timeout=60)


def download(url: str, final: Path, check: Check, opener: Opener = urlopen) -> None:
    """Download ``url`` to ``final``, which it reaches only whole and verified by ``check``."""
    with io.atomic_path(final) as tmp:  # renamed onto `final` only if this block succeeds
        _stream(url, tmp, opener)
        problem = check(tmp)
        if problem is not None:
            raise DownloadError(f"{final.name}: the download from {url} is refused: {problem} "
                                f"(nothing written at {final})")


def ensure(url: str, final: Path, check: Check, opener: Opener = urlopen) -> None:
    """A verified file at ``final``: the one there if it passes ``check`` (no download), else a
    new download; a file that fails is moved aside to ``<final>.rejected``."""
    if final.exists():
        problem = check(final)
        if problem is None:
            log.info("%s: present and verified, not downloaded", final)
            return
        rejected = final.with_name(final.name + ".rejected")
        os.replace(final, rejected)
        log.warning("%s: refused (%s); moved aside to %s", final, problem, rejected)
    download(url, final, check, opener)
    log.info("%s: downloaded and verified", final)
