"""BigGAN-deep-256, the paper's 224x224 prior: its architecture and the retrieval stage.

The ``pytorch-pretrained-biggan`` package ships only the 128x128 default config; the 256 model's
config and weights are separate downloads. ``BIGGAN_DEEP_256`` records the architecture from
the BigGAN-deep paper (Brock et al., ICLR 2019, appendix B: ch = 128, a 4x4x16ch start, blocks
of 16,16 | 16,8 | 8,8 | 8,4 | 4,2 | 2,1 channel multipliers, each pair a plain then an
up-sampling residual block, non-local attention at 64x64, 51 truncation statistics); the fetch
stage checks it against the downloaded config.json.

Downloads stream to a temporary file and reach their final path only when whole (the
Content-Length matches) and verified against the SHA-256 recorded in ``checksums.json``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

from ggl import io

BIGGAN_DEEP_256: dict[str, Any] = {
    "output_dim": 256, "z_dim": 128, "class_embed_dim": 128, "channel_width": 128,
    "num_classes": 1000,
    "layers": [[False, 16, 16], [True, 16, 16], [False, 16, 16], [True, 16, 8],
               [False, 8, 8], [True, 8, 8], [False, 8, 8], [True, 8, 4],
               [False, 4, 4], [True, 4, 2], [False, 2, 2], [True, 2, 1]],
    "attention_layer_position": 8, "eps": 1e-4, "n_stats": 51,
}
WEIGHTS_FILE = "biggan-deep-256-pytorch_model.bin"
CONFIG_FILE = "biggan-deep-256-config.json"


class DownloadError(RuntimeError):
    """A download failed or did not verify; nothing was written at the final path."""


def urls() -> dict[str, str]:
    """The package's own URLs for the 256 model's weights and config."""
    from pytorch_pretrained_biggan import model

    return {WEIGHTS_FILE: model.PRETRAINED_MODEL_ARCHIVE_MAP["biggan-deep-256"],
            CONFIG_FILE: model.PRETRAINED_CONFIG_ARCHIVE_MAP["biggan-deep-256"]}


def recorded_checksums() -> dict[str, str | None]:
    text = resources.files("ggl").joinpath("checksums.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def record_checksum(name: str, sha256: str) -> Path:
    path = Path(str(resources.files("ggl").joinpath("checksums.json")))
    data = json.loads(path.read_text())
    data[name] = sha256
    io.write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def offline_help(dest: Path) -> str:
    lines = [f"  {url}  ->  {dest / name}" for name, url in urls().items()]
    return ("download these files by hand on a machine with internet access and place them "
            "as shown (then rerun; they are verified against src/ggl/checksums.json):\n"
            + "\n".join(lines))


def download(url: str, dest: Path, expected_sha256: str | None, record: bool = False,
             opener=urllib.request.urlopen) -> Path:
    """Stream ``url`` to ``dest`` atomically; refuse a truncated or unverified file."""
    name = dest.name
    try:
        with io.atomic_path(dest) as tmp:
            with opener(url) as response, open(tmp, "wb") as out:
                length = response.headers.get("Content-Length")
                shutil.copyfileobj(response, out, 1 << 20)
            size = tmp.stat().st_size
            if length is not None and size != int(length):
                raise DownloadError(f"{name}: truncated download ({size} of {length} bytes)")
            actual = sha256_of(tmp)
            if expected_sha256 is None and not record:
                raise DownloadError(
                    f"{name}: no SHA-256 is recorded for it in src/ggl/checksums.json (it "
                    f"could not be downloaded where ggl was built), so it cannot be verified. "
                    f"Its SHA-256 is {actual}. If you trust this download, run "
                    f"`ggl fetch-biggan --record-hash` to record it, and commit the file.")
            if expected_sha256 is not None and actual != expected_sha256:
                raise DownloadError(f"{name}: SHA-256 {actual} does not match the recorded "
                                    f"{expected_sha256}; the download is corrupt")
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"could not download {url} ({exc}); " + offline_help(dest.parent)
                            ) from exc
    if expected_sha256 is None and record:
        record_checksum(name, actual)
    return dest


def verify(path: Path, expected_sha256: str | None) -> bool:
    return path.is_file() and expected_sha256 is not None and sha256_of(path) == expected_sha256


def fetch_biggan(dest_dir: str | Path, record: bool = False,
                 opener=urllib.request.urlopen) -> dict[str, Path]:
    """Make sure the verified weights and config are in ``dest_dir``; download what is not."""
    dest_dir = Path(dest_dir)
    checksums = recorded_checksums()
    paths = {}
    for name, url in urls().items():
        path = dest_dir / name
        if not verify(path, checksums.get(name)):
            if path.exists():
                path.unlink()  # present but unverified: fetch again
            download(url, path, checksums.get(name), record, opener)
        paths[name] = path
    downloaded = json.loads(paths[CONFIG_FILE].read_text())
    if downloaded != BIGGAN_DEEP_256:
        raise DownloadError(f"{paths[CONFIG_FILE]} differs from the architecture recorded in "
                            f"ggl.biggan.BIGGAN_DEEP_256: {downloaded}")
    return paths
