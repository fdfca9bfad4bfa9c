"""A warm process that stage commands share: it imports torch and the other heavy libraries
once, then forks one child per ``ggl <stage>`` command, which runs the command as a process of
its own would (the caller's arguments, working directory, environment, stdin/stdout/stderr and
exit code; ggl's own code imported afresh in every child, so an edit takes effect at once).
Importing torch and what the stages use costs 4-6 s per job on 2 cores; the default's 60 jobs
paid it 60 times (``benchmarks/README.md``, "worker").

The ``ggl`` command uses it for stage subcommands when started from the command line on Linux,
outside SLURM (each job there runs in its own allocation) and unless ``GGL_WORKER=0``: the first
command starts a worker in the background and runs in its own process; later ones connect to
it. A worker serves one Python environment (interpreter, ``sys.path``, the libraries' files and
the variables they read at import) and exits after ``IDLE_SECONDS`` without a command.
Snakemake's ``benchmark:`` files then time each job fully but count the memory of the
connecting process only: measure memory with ``GGL_WORKER=0``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

# What the stages import that costs most to import (torch's compiler front end comes with
# torch.optim and FlopCounterMode); none starts a Python thread or initialises CUDA.
PRELOAD = ("torch", "torch._dynamo", "torch.utils.flop_counter", "torchvision", "numpy",
           "scipy.stats", "scipy.ndimage", "scipy.optimize", "sklearn", "skimage.metrics",
           "cma", "botorch", "gpytorch", "opacus", "pandas", "matplotlib", "yaml", "jsonschema",
           "tqdm", "PIL.Image")
# Variables read when those libraries load (not per command): a worker serves one setting.
IMPORT_ENV_PREFIXES = ("OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "LD_", "PYTHON", "MPL",
                       "TORCH", "PYTORCH", "CUDA_", "LANG", "LC_")
IDLE_SECONDS = 120.0
PID_VARIABLE = "GGL_WORKER_PID"  # set in a child: the worker it was forked from
LOG_MARK = "forked from the ggl worker"  # what a forked stage's log says (stage_seconds counts it)
_INT = struct.Struct("!i")


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether stage commands go through a worker here."""
    return (sys.platform == "linux" and environ.get("GGL_WORKER", "1") != "0"
            and "SLURM_JOB_ID" not in environ)


def socket_path() -> Path:
    """The socket of this Python environment's worker, in a folder only this user can open."""
    key = {"executable": sys.executable, "path": sys.path,
           "env": {k: v for k, v in sorted(os.environ.items())
                   if k.startswith(IMPORT_ENV_PREFIXES)},
           "libraries": [_library_stamp(name) for name in sorted({n.split(".")[0]
                                                                   for n in PRELOAD})]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"ggl-worker-{os.getuid()}"
    path = folder / f"{digest}.sock"
    if len(os.fsencode(path)) + 8 > 107:  # a socket's path (and the worker's staging name)
        raise OSError(f"{path}: too long for a Unix socket; set TMPDIR to a shorter folder")
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{folder} must belong to this user alone (mode 700)")
    return path


def _library_stamp(name: str) -> str:
    """Where a library lies and when it changed (an upgrade needs a new worker), unimported."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return f"{name}:absent"
    return f"{spec.origin}:{os.stat(spec.origin).st_mtime_ns}"


# --- the command's side ---------------------------------------------------------------------

def run(entry: str, argv: Sequence[str], path: Path | None = None) -> int | None:
    """Run ``entry`` ("module:function", called with ``argv``, returning an exit code) in a
    child of the worker and return its exit code; None when no worker took it (none running,
    or it was exiting): the caller runs the command itself."""
    path = path or socket_path()
    request = json.dumps({"entry": entry, "argv": list(argv), "argv0": sys.argv[0],
                          "cwd": os.getcwd(), "env": dict(os.environ),
                          "path": sys.path}).encode()
    message = _INT.pack(len(request)) + request
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        try:
            conn.connect(str(path))
            conn.settimeout(30)  # a stopped worker: run here (a late child finds us gone)
            sent = socket.send_fds(conn, [message], [0, 1, 2])
            conn.sendall(message[sent:])
            pid = _receive_int(conn)
        except OSError:
            return None
        if pid is None:
            return None
        conn.settimeout(None)  # the command takes as long as it takes
        forward = {sig: signal.signal(sig, lambda signum, _frame: _kill(pid, signum))
                   for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            code = _receive_int(conn)
        finally:
            for sig, handler in forward.items():
                signal.signal(sig, handler)
    if code is None:
        print(f"error: the ggl worker's process {pid} for this command ended without an exit "
              f"code (killed?); run it again with GGL_WORKER=0 to run it in a process of its "
              f"own", file=sys.stderr)
        return 1
    return code


def start(path: Path | None = None) -> None:
    """Start a worker in the background for later commands (it exits at once if one runs)."""
    subprocess.Popen([sys.executable, "-m", "ggl.worker", str(path or socket_path()),
                      json.dumps(sys.path)], cwd="/", stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _receive_int(conn: socket.socket) -> int | None:
    data = b""
    while len(data) < _INT.size:
        chunk = conn.recv(_INT.size - len(data))
        if not chunk:
            return None
        data += chunk
    return _INT.unpack(data)[0]


# --- the worker's side ----------------------------------------------------------------------

def serve(path: Path, idle_seconds: float = IDLE_SECONDS) -> int:
    """Import PRELOAD, then fork a child per request until ``idle_seconds`` pass without one.
    Returns 0 in the worker; in a child, the command's exit code (the caller exits with it)."""
    import fcntl  # POSIX only, as the worker

    lock = os.open(f"{path}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another worker serves this environment
    os.ftruncate(lock, 0)
    os.write(lock, f"{os.getpid()}\n".encode())  # which process to stop, for whoever must
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    if threading.active_count() != 1:
        return 0  # forking a process with Python threads is unsafe: serve nothing
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped without waiting
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{path}.{os.getpid()}"
    listener.bind(staging)
    listener.listen(16)
    os.replace(staging, path)  # clients see the socket only once it accepts
    listener.settimeout(idle_seconds)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(listener.fileno()).st_ino:
                    os.unlink(path)
            return 0
        with conn:
            try:
                request, fds = _receive_request(conn)
            except (OSError, ValueError):
                continue
            if os.fork() == 0:
                listener.close()
                os.close(lock)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                return _child(conn, request, fds)
            for fd in fds:
                os.close(fd)


def _receive_request(conn: socket.socket) -> tuple[dict, list[int]]:
    conn.settimeout(10)
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    if len(fds) != 3 or len(data) < _INT.size:
        for fd in fds:
            os.close(fd)
        raise ValueError("malformed request")
    size = _INT.unpack(data[:_INT.size])[0]
    data = data[_INT.size:]
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ValueError("truncated request")
        data += chunk
    conn.settimeout(None)
    return json.loads(data), fds


def _child(conn: socket.socket, request: dict, fds: list[int]) -> int:
    """Become the command's process, run it, report its exit code."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdout.reconfigure(line_buffering=os.isatty(1))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[PID_VARIABLE] = str(os.getppid())  # the stage's log says where it ran
    sys.path[:] = request["path"]
    sys.argv = [request["argv0"], *request["argv"]]
    tempfile.tempdir = None  # chosen again from this environment
    for name in [m for m in sys.modules if m == "ggl" or m.startswith("ggl.")]:
        del sys.modules[name]  # the worker's copy may be older than the code on disk
    try:
        conn.sendall(_INT.pack(os.getpid()))
    except OSError:
        return 1  # the caller gave up waiting and runs the command itself
    done = threading.Event()
    threading.Thread(target=_exit_with_caller, args=(conn, done), daemon=True).start()
    try:
        module, function = request["entry"].split(":")
        code = getattr(importlib.import_module(module), function)(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    done.set()
    with contextlib.suppress(OSError):
        conn.sendall(_INT.pack(code))
    return code


def _exit_with_caller(conn: socket.socket, done: threading.Event) -> None:
    """The command ends when its caller does (Snakemake killed it, say)."""
    with contextlib.suppress(OSError):
        conn.recv(1)
    if not done.is_set():
        os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    sys.path[:] = json.loads(sys.argv[2])  # the caller's, where the libraries are found
    sys.exit(serve(Path(sys.argv[1])))
