"""BigGAN-deep-256, the paper's 224x224 prior: its architecture and its verified retrieval.

``pytorch-pretrained-biggan`` ships only the 128x128 default config; the 256 model's config.json
and weights are separate downloads from the URLs inside the package (``urls()``).

``BIGGAN_DEEP_256`` equals ``BigGAN256`` in the package's own converter
(``pytorch_pretrained_biggan/convert_tf_to_pytorch.py``; ``tests/test_generators.py`` checks the
equality) and agrees with the BigGAN paper (Brock et al., ICLR 2019, appendix B); ``eps`` and
``n_stats`` are the package's defaults. ``fetch_biggan`` refuses a config.json that differs.

No SHA-256 of the weights is published, so ``EXPECTED_SHA256`` holds ``None``: a download is then
*not* trusted but kept beside the destination as ``<name>.unverified``, and the error prints its
SHA-256. Check that hash against a copy you trust, then rerun with it
(``fetch_biggan(dest, sha256={WEIGHTS_FILE: hash})``, CLI ``--sha256 HASH``): the kept file is
promoted without a second download. Commit the hash into ``EXPECTED_SHA256`` once known.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from ggl import io
from ggl.errors import GglError

log = logging.getLogger("ggl.biggan")

BIGGAN_DEEP_256: dict[str, Any] = {
    "output_dim": 256,
    "z_dim": 128,
    "class_embed_dim": 128,
    "channel_width": 128,
    "num_classes": 1000,
    "layers": [[False, 16, 16], [True, 16, 16],   # (up-sample?, in, out) x ch; 4 -> 8
               [False, 16, 16], [True, 16, 8],    # 8 -> 16
               [False, 8, 8], [True, 8, 8],       # 16 -> 32
               [False, 8, 8], [True, 8, 4],       # 32 -> 64
               [False, 4, 4], [True, 4, 2],       # 64 -> 128 (attention before [False, 4, 4])
               [False, 2, 2], [True, 2, 1]],      # 128 -> 256
    "attention_layer_position": 8,
    "eps": 1e-4,
    "n_stats": 51,
}

WEIGHTS_FILE = "biggan-deep-256-pytorch_model.bin"
CONFIG_FILE = "biggan-deep-256-config.json"

EXPECTED_SHA256: dict[str, str | None] = {WEIGHTS_FILE: None, CONFIG_FILE: None}  # None: unknown
# Not a checksum: 58,573,185 float32 values (with the BatchNorm statistics), about 234 MB.
APPROX_WEIGHTS_BYTES = 234_292_740

Opener = Callable[[str], Any]  # url -> a context-managed response with .read() and .headers
NO_HASH = "no SHA-256 is known for it"


class DownloadError(GglError):
    """A download failed or did not verify; nothing was written at the final path."""


def urls() -> dict[str, str]:
    """The package's own URLs for the 256 model's weights and config."""
    from pytorch_pretrained_biggan import model

    return {WEIGHTS_FILE: model.PRETRAINED_MODEL_ARCHIVE_MAP["biggan-deep-256"],
            CONFIG_FILE: model.PRETRAINED_CONFIG_ARCHIVE_MAP["biggan-deep-256"]}


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_sha256_overrides(values: Iterable[str]) -> dict[str, str]:
    """CLI ``--sha256`` values: ``HASH`` (the weights) or ``FILE=HASH``."""
    out: dict[str, str] = {}
    for value in values:
        name, _, digest = value.rpartition("=")
        name = name or WEIGHTS_FILE
        digest = digest.strip().lower()
        if name not in (WEIGHTS_FILE, CONFIG_FILE):
            raise GglError(f"--sha256: unknown file {name!r}; use {WEIGHTS_FILE} or "
                           f"{CONFIG_FILE}")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise GglError(f"--sha256: {value!r} is not a 64-digit hex SHA-256")
        out[name] = digest
    return out


def offline_help(dest: Mapping[str, Path]) -> str:
    lines = [f"  {url}\n    -> {dest[name]}" for name, url in urls().items()]
    return ("Download these files by hand on a machine with internet access and place them as "
            "shown, then rerun (nothing is downloaded when they are present and verify):\n"
            + "\n".join(lines)
            + f"\nThe weights are about {APPROX_WEIGHTS_BYTES / 1e6:.0f} MB. They are verified "
              "against ggl.biggan.EXPECTED_SHA256 (or --sha256); the config must equal "
              "ggl.biggan.BIGGAN_DEEP_256.")


def _config_matches(path: Path) -> bool:
    try:
        return json.loads(path.read_text()) == BIGGAN_DEEP_256
    except (ValueError, UnicodeDecodeError):
        return False


def _problem(name: str, path: Path, expected: str | None, actual: str) -> str | None:
    """Why ``path`` (holding ``name``) may not be trusted, or None when it verifies."""
    if expected is not None and actual != expected:
        return f"SHA-256 {actual} does not match the expected {expected}"
    if name == CONFIG_FILE and not _config_matches(path):
        return "its content differs from the architecture in ggl.biggan.BIGGAN_DEEP_256"
    if expected is None and name != CONFIG_FILE:
        return NO_HASH
    return None


def _stream(url: str, tmp: Path, opener: Opener) -> str:
    """Stream ``url`` into ``tmp``; refuse a short read; return the SHA-256."""
    with opener(url) as response, open(tmp, "wb") as out:
        length = response.headers.get("Content-Length")
        shutil.copyfileobj(response, out, 1 << 20)
    size = tmp.stat().st_size
    if length is not None and size != int(length):
        raise DownloadError(f"{url}: truncated download ({size} of {length} bytes)")
    return sha256_of(tmp)


_urlopen: Opener = partial(urllib.request.urlopen, timeout=60)


def _beside(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def download(name: str, url: str, dest: Mapping[str, Path], expected: str | None,
             opener: Opener = _urlopen) -> None:
    """Download file ``name`` to ``dest[name]``, reached only when whole and verified. A whole
    download without a known hash is kept as ``<final>.unverified`` instead, so that a rerun
    with its hash needs no second download."""
    final, kept = dest[name], _beside(dest[name], ".unverified")
    try:
        with io.atomic_path(final) as tmp:  # renamed onto `final` only if this block succeeds
            actual = _stream(url, tmp, opener)
            problem = _problem(name, tmp, expected, actual)
            if problem == NO_HASH:
                os.replace(tmp, kept)
                raise DownloadError(
                    f"{name}: downloaded, but no SHA-256 is known for it, so it is not trusted. "
                    f"It is kept at {kept}; its SHA-256 is {actual}. Check that hash against a "
                    f"copy you trust, then rerun with it (CLI: --sha256 {actual}; Python: "
                    f"fetch_biggan(..., sha256={{'{name}': '{actual}'}})) and record it in "
                    f"ggl.biggan.EXPECTED_SHA256.")
            if problem is not None:
                raise DownloadError(f"{name}: refused, {problem}; the download is corrupt or "
                                    f"not the expected file (nothing written at {final})")
    except (urllib.error.URLError, OSError) as exc:  # offline, DNS, HTTP errors, disk
        raise DownloadError(f"could not download {url} ({exc}).\n"
                            + offline_help(dest)) from exc


def fetch_biggan(weights: Path, config: Path, sha256: Mapping[str, str] | None = None, *,
                 sources: Mapping[str, str] | None = None, opener: Opener = _urlopen) -> Path:
    """Make sure verified BigGAN-deep-256 weights and config are at ``weights`` and ``config``:
    verified files present are not downloaded again, one that fails verification is moved aside
    to ``<path>.rejected`` (never trusted, never deleted). ``sha256`` overrides ``EXPECTED_SHA256``
    per file name, ``sources`` the package's URLs (tests, mirrors). Returns the weights path."""
    dest = {WEIGHTS_FILE: Path(weights), CONFIG_FILE: Path(config)}
    # The small, content-checked config first: a weights problem then leaves it in place.
    for name, url in sorted((sources or urls()).items(), key=lambda item: item[0] != CONFIG_FILE):
        expected = (sha256 or {}).get(name) or EXPECTED_SHA256.get(name)
        final, kept = dest[name], _beside(dest[name], ".unverified")
        if final.exists():
            problem = _problem(name, final, expected, sha256_of(final))
            if problem is None:
                log.info("%s: present and verified, not downloaded", final)
                continue
            if problem == NO_HASH:
                raise DownloadError(
                    f"{final} is present but no SHA-256 is known to verify it (its SHA-256 is "
                    f"{sha256_of(final)}); rerun with --sha256 after checking that hash")
            os.replace(final, _beside(final, ".rejected"))
            log.warning("%s: %s; moved aside to %s.rejected", final, problem, final.name)
        if kept.exists() and expected is not None:
            if _problem(name, kept, expected, sha256_of(kept)) is None:
                os.replace(kept, final)  # a whole earlier download, now verified
                log.info("%s: verified the kept download, no new download", final)
                continue
            kept.unlink()
        download(name, url, dest, expected, opener)
        log.info("%s: downloaded and verified", final)
    return dest[WEIGHTS_FILE]
