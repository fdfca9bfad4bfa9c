"""BigGAN-deep-256, the paper's 224x224 prior: its architecture and its verified retrieval.

``pytorch-pretrained-biggan`` ships only the 128x128 default config; the 256 model's config.json
and weights are separate downloads from the URLs inside the package (``urls()``).

``BIGGAN_DEEP_256`` equals ``BigGAN256`` in the package's own converter
(``pytorch_pretrained_biggan/convert_tf_to_pytorch.py``; ``tests/test_generators.py`` checks the
equality) and agrees with the BigGAN paper (Brock et al., ICLR 2019, appendix B); ``eps`` and
``n_stats`` are the package's defaults. ``fetch_biggan`` refuses a config.json that differs.

No SHA-256 of the weights is published, so the weights are trusted on first use, and recorded:
the first complete download that is BigGAN-deep-256's state dict (it loads with
``weights_only=True`` and has exactly the architecture's tensors and shapes; the package's
converter saves ``model.state_dict()``) has its SHA-256 written to the lock file beside it, and
every later run verifies against that. A hash pinned in params (``generator.sha256``) overrides
the lock file. A file that fails verification is moved aside to ``<name>.rejected``, never
deleted and never used.
"""

from __future__ import annotations

import json
import logging
import urllib.error
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ggl import io
from ggl.download import (
    Check,
    DownloadError,
    Opener,
    ensure,
    hash_problem,
    sha256_of,
    urlopen,
)

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
# Not a checksum: 58,573,185 float32 values (with the BatchNorm statistics), about 234 MB.
APPROX_WEIGHTS_BYTES = 234_292_740

TRUSTED_ON_FIRST_USE = "trusted on first use"
PINNED = "pinned in params (generator.sha256)"
TOFU_NOTE = ("No SHA-256 of these weights is published: the first complete download that "
             "loaded as BigGAN-deep-256's state dict was trusted, not verified against a "
             "published hash. Later runs verify against the hash recorded here.")

def urls() -> dict[str, str]:
    """The package's own URLs for the 256 model's weights and config."""
    from pytorch_pretrained_biggan import model

    return {WEIGHTS_FILE: model.PRETRAINED_MODEL_ARCHIVE_MAP["biggan-deep-256"],
            CONFIG_FILE: model.PRETRAINED_CONFIG_ARCHIVE_MAP["biggan-deep-256"]}


def offline_help(dest: Mapping[str, Path], sources: Mapping[str, str]) -> str:
    lines = [f"  {url}\n    -> {dest[name]}" for name, url in sources.items()]
    return ("Download these files by hand on a machine with internet access and place them as "
            "shown, then rerun (nothing is downloaded when they are present and verify):\n"
            + "\n".join(lines)
            + f"\nThe weights are about {APPROX_WEIGHTS_BYTES / 1e6:.0f} MB. The config must equal "
              "ggl.biggan.BIGGAN_DEEP_256; the weights must load as its state dict and match "
              "generator.sha256 in params or the lock file's hash when either is there.")


# --- what makes a file trustworthy -----------------------------------------------------------

def config_problem(path: Path, architecture: Mapping[str, Any]) -> str | None:
    try:
        content = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        return f"it is not JSON ({exc})"
    if content != dict(architecture):
        return "its content differs from the architecture in ggl.biggan.BIGGAN_DEEP_256"
    return None


def expected_shapes(architecture: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of the architecture's state dict and its shape (the model built with random
    weights: 3 s and 0.23 GB for the real one; the meta device took 11 s)."""
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    model = BigGAN(BigGANConfig.from_dict(dict(architecture)))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def weights_problem(path: Path, architecture: Mapping[str, Any]) -> str | None:
    """Why ``path`` is not the architecture's state dict, or None. Never unpickles code."""
    import torch

    try:
        state = io.load_torch(path)
    except io.UnreadableFile as exc:
        return str(exc).split(": ", 1)[-1]
    if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        return "it is not a state dict of tensors"
    expected = expected_shapes(architecture)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    for what, keys in (("lacks", missing), ("has unknown", extra), ("has wrong shapes of", shapes)):
        if keys:
            return (f"it {what} {len(keys)} of BigGAN-deep-256's tensors (e.g. {keys[:3]}): "
                    "not the expected weights")
    return None


# --- the lock file -----------------------------------------------------------------------------

def read_lock(lock: Path) -> dict[str, Any]:
    """The recorded hashes, {} when there is no lock file yet. A lock file that cannot be read
    stops the run: trusting again silently would defeat it."""
    if not lock.exists():
        return {}
    try:
        record = json.loads(lock.read_text())
        digest = record["files"][WEIGHTS_FILE]["sha256"]
        if not (isinstance(digest, str) and len(digest) == 64):
            raise ValueError(f"bad SHA-256 {digest!r}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise DownloadError(
            f"{lock}: cannot read the recorded BigGAN hash ({exc}). Restore it from DVC's cache "
            f"(`dvc checkout {lock}`), pin the weights' hash in params (generator.sha256), or "
            "delete it to trust the next download again") from exc
    return record


def lock_record(dest: Mapping[str, Path], sources: Mapping[str, str], source: str
                ) -> dict[str, Any]:
    files = {name: {"sha256": sha256_of(path), "bytes": path.stat().st_size,
                    "url": sources[name]} for name, path in dest.items()}
    record: dict[str, Any] = {"files": files, "weights_sha256_source": source}
    if source == TRUSTED_ON_FIRST_USE:
        record["note"] = TOFU_NOTE
    return record


def fetch_biggan(weights: Path, config: Path, lock: Path, pinned: str | None = None, *,
                 sources: Mapping[str, str] | None = None, opener: Opener = urlopen,
                 architecture: Mapping[str, Any] = BIGGAN_DEEP_256) -> dict[str, Any]:
    """Make sure verified BigGAN-deep-256 weights and config are at ``weights`` and ``config``,
    and that ``lock`` records the weights' SHA-256; return the lock's record. The weights verify
    against ``pinned`` (params' generator.sha256) if given, else the lock's hash, else they are
    trusted on first use once they load as the architecture's state dict. ``sources`` overrides
    the package's URLs (tests, mirrors), ``architecture`` the expected one (tests)."""
    weights, config, lock = Path(weights), Path(config), Path(lock)
    sources = dict(sources or urls())
    dest = {CONFIG_FILE: config, WEIGHTS_FILE: weights}
    recorded = read_lock(lock)
    locked = recorded.get("files", {}).get(WEIGHTS_FILE, {}).get("sha256")
    if pinned is not None and locked not in (None, pinned):
        log.warning("%s records %s, params pin %s: the pinned hash wins", lock, locked, pinned)

    def weights_check(path: Path) -> str | None:
        if pinned is not None:
            return hash_problem(path, pinned, "pinned in params: generator.sha256")
        if locked is not None:
            return hash_problem(path, locked, f"recorded in {lock}")
        return weights_problem(path, architecture)

    checks: dict[str, Check] = {CONFIG_FILE: lambda p: config_problem(p, architecture),
                                WEIGHTS_FILE: weights_check}
    try:
        for name, path in dest.items():  # the small config first: it stays if the weights fail
            ensure(sources[name], path, checks[name], opener)
    except (urllib.error.URLError, OSError) as exc:  # offline, DNS, HTTP errors, disk
        raise DownloadError(f"could not download BigGAN-deep-256 ({exc}).\n"
                            + offline_help(dest, sources)) from exc
    source = PINNED if pinned is not None else (
        recorded.get("weights_sha256_source", TRUSTED_ON_FIRST_USE) if locked
        else TRUSTED_ON_FIRST_USE)
    record = lock_record(dest, sources, source)
    if record != recorded:
        io.write_json(lock, record)
    if source == TRUSTED_ON_FIRST_USE:
        log.warning("%s: %s SHA-256 %s (%s)", weights, TOFU_NOTE,
                    record["files"][WEIGHTS_FILE]["sha256"], lock)
    return record
