"""BigGAN-deep-256 retrieval (ggl.biggan): the first complete download that is the
architecture's state dict is trusted and its hash recorded; later runs verify against the
record without downloading; nothing unverified ever reaches the final paths. The files are
served by a local HTTP server: a tiny BigGAN of the same architecture (channel_width 4) stands
in for the 234 MB weights."""

from __future__ import annotations

import hashlib
import http.server
import io as bytes_io
import json
import pickle
import threading
import urllib.error
from pathlib import Path

import pytest
import torch
from pytorch_pretrained_biggan import BigGAN, BigGANConfig

from ggl import biggan

TINY = {**biggan.BIGGAN_DEEP_256, "channel_width": 4}


def state_dict_bytes(architecture: dict, seed: int = 0) -> bytes:
    """A random BigGAN's state dict in torch's legacy format, as the published file is."""
    torch.manual_seed(seed)
    model = BigGAN(BigGANConfig.from_dict(architecture))
    buffer = bytes_io.BytesIO()
    torch.save(model.state_dict(), buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def weights() -> bytes:
    return state_dict_bytes(TINY)


class Server:
    """Serves a folder over HTTP on localhost and counts the requests."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.requests = folder, 0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.requests += 1
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def serve(self, weights: bytes, config: dict = TINY) -> dict[str, str]:
        (self.folder / biggan.WEIGHTS_FILE).write_bytes(weights)
        (self.folder / biggan.CONFIG_FILE).write_text(json.dumps(config))
        port = self.httpd.server_address[1]
        return {name: f"http://127.0.0.1:{port}/{name}"
                for name in (biggan.CONFIG_FILE, biggan.WEIGHTS_FILE)}


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "server"
    folder.mkdir()
    s = Server(folder)
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def paths(folder: Path) -> tuple[Path, Path, Path]:
    """Where the pipeline keeps the weights, the config and the lock file."""
    return (folder / biggan.WEIGHTS_FILE, folder / biggan.CONFIG_FILE,
            folder / "biggan-deep-256.lock.json")


def fetch(folder: Path, sources, pinned: str | None = None, opener=None) -> dict:
    extra = {"opener": opener} if opener else {}
    return biggan.fetch_biggan(*paths(folder), pinned, sources=sources, architecture=TINY,
                               **extra)


def offline(url: str):
    raise urllib.error.URLError("no network")


def test_first_download_is_trusted_recorded_and_never_repeated(tmp_path, server, weights):
    dest = tmp_path / "biggan"
    record = fetch(dest, server.serve(weights))
    w, c, lock = paths(dest)
    assert w.read_bytes() == weights and json.loads(c.read_text()) == TINY
    assert json.loads(lock.read_text()) == record
    assert record["files"][biggan.WEIGHTS_FILE]["sha256"] == biggan.sha256_of(w)
    assert record["weights_sha256_source"] == biggan.TRUSTED_ON_FIRST_USE
    assert "not verified against a published hash" in record["note"]
    assert server.requests == 2
    lock_bytes = lock.read_bytes()
    assert fetch(dest, server.serve(weights), opener=offline) == record  # verified, offline
    assert server.requests == 2 and lock.read_bytes() == lock_bytes
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in paths(dest))


def test_a_file_changed_afterwards_is_refused_moved_aside_and_fetched_again(
        tmp_path, server, weights):
    dest = tmp_path / "biggan"
    fetch(dest, server.serve(weights))
    w, _, lock = paths(dest)
    other = state_dict_bytes(TINY, seed=1)  # a valid state dict, but not the recorded one
    w.write_bytes(other)
    with pytest.raises(biggan.DownloadError, match="could not download"):
        fetch(dest, server.serve(weights), opener=offline)
    assert not w.exists() and Path(f"{w}.rejected").read_bytes() == other
    # a server now serving the changed file is refused too: the lock decides, not the server
    with pytest.raises(biggan.DownloadError, match="does not match .*recorded in"):
        fetch(dest, server.serve(other))
    assert not w.exists()
    fetch(dest, server.serve(weights))
    assert w.read_bytes() == weights


def test_a_pinned_hash_is_enforced_and_overrides_the_lock(tmp_path, server, weights):
    dest = tmp_path / "biggan"
    w, _, lock = paths(dest)
    with pytest.raises(biggan.DownloadError, match="pinned in params"):
        fetch(dest, server.serve(weights), pinned="0" * 64)
    assert not w.exists() and not lock.exists()
    fetch(dest, server.serve(weights))
    other = state_dict_bytes(TINY, seed=1)
    pinned = hashlib.sha256(other).hexdigest()
    record = fetch(dest, server.serve(other), pinned=pinned)  # the pin wins over the lock
    assert w.read_bytes() == other and record["weights_sha256_source"] == biggan.PINNED
    assert json.loads(lock.read_text())["files"][biggan.WEIGHTS_FILE]["sha256"] == pinned


class _Response(bytes_io.BytesIO):
    def __init__(self, data: bytes, length: int) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(length)}


def test_a_truncated_download_never_reaches_the_final_path(tmp_path, server, weights):
    dest = tmp_path / "biggan"
    sources = server.serve(weights)

    def truncating(url: str):
        data = (server.folder / url.rsplit("/", 1)[1]).read_bytes()
        return _Response(data[: len(data) // 2], len(data))

    with pytest.raises(biggan.DownloadError, match="truncated"):
        fetch(dest, sources, opener=truncating)
    assert list(dest.iterdir()) == []  # no temporary file left either


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("case", ["not torch", "pickle payload", "other architecture"])
def test_a_first_download_that_is_not_the_architectures_state_dict_is_refused(
        tmp_path, server, case):
    marker = tmp_path / "payload-ran"
    served = {"not torch": b"weights" * 1000,
              "pickle payload": pickle.dumps({"x": _Payload(marker)}),
              "other architecture": state_dict_bytes({**TINY, "num_classes": 10})}[case]
    dest = tmp_path / "biggan"
    with pytest.raises(biggan.DownloadError, match="refused"):
        fetch(dest, server.serve(served))
    w, c, lock = paths(dest)
    assert not w.exists() and not lock.exists() and c.exists()  # the config verified alone
    assert not marker.exists()


def test_a_config_that_differs_from_the_architecture_is_refused(tmp_path, server, weights):
    with pytest.raises(biggan.DownloadError, match="BIGGAN_DEEP_256"):
        fetch(tmp_path / "d", server.serve(weights, config={**TINY, "output_dim": 128}))
    assert list((tmp_path / "d").iterdir()) == []


def test_an_unreadable_lock_file_stops_instead_of_trusting_again(tmp_path, server, weights):
    dest = tmp_path / "biggan"
    fetch(dest, server.serve(weights))
    lock = paths(dest)[2]
    lock.write_text("{")
    with pytest.raises(biggan.DownloadError, match=f"{lock}: cannot read"):
        fetch(dest, server.serve(weights))


def test_the_offline_message_says_what_to_download_and_where(tmp_path):
    with pytest.raises(biggan.DownloadError) as info:
        biggan.fetch_biggan(*paths(tmp_path), opener=offline)
    message = str(info.value)
    for name, url in biggan.urls().items():
        assert url.startswith("https://") and url in message
        assert str(tmp_path / name) in message
    assert list(tmp_path.iterdir()) == []


def test_the_real_architectures_tensors_add_up_to_the_published_size():
    shapes = biggan.expected_shapes(biggan.BIGGAN_DEEP_256)
    assert shapes["embeddings.weight"] == (128, 1000)
    # 58,573,185 numbers with the BatchNorm statistics: the published file's ~234 MB
    total = sum(torch.Size(s).numel() for s in shapes.values())
    assert abs(4 * total - biggan.APPROX_WEIGHTS_BYTES) < 1e6
