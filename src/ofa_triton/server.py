"""Start a real ``tritonserver``: the one shipped in the nvidia-pytriton wheel (Triton 2.51,
with the Python backend), or one on PATH (the NGC container's).

The wheel's layout, and what it needs to run outside its container:
- ``pytriton/tritonserver/bin/tritonserver``;
- ``pytriton/tritonserver/backends/python/``, copied to a writable backend directory together
  with the stub for the running Python version (``triton_python_backend_stub``);
- ``LD_LIBRARY_PATH`` including ``nvidia_pytriton.libs`` (the stub fails to start without it).

The Python models import ``ofa_triton``, numpy<2, onnxruntime or torch from the environment of
the stub's interpreter. The stub runs an isolated interpreter (it ignores PYTHONPATH) whose
packages are those of the first ``python3`` on PATH: this interpreter's directory is put
first, so its virtual environment (``.venv``, or the device kit's) is what the models see.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A free TCP port on the loopback interface (for tests and benchmarks)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_address(host: str) -> str:
    """Where a local client reaches a server listening on ``host``."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host


# For requests to a server on this machine (its health, its repository API, its metrics):
# never through a proxy that HTTP_PROXY may name, whatever NO_PROXY says.
LOCAL_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class TritonNotFoundError(FileNotFoundError):
    pass


@dataclasses.dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backend_source: Path | None     # backends/python of the wheel; None: the binary's default
    stub: Path | None
    library_dir: Path | None


# A tritonserver laid out like the wheel's (bin/, backends/python/, python_backend_stubs/)
# with its shared libraries in lib/: the device kit unpacks one (benchmarks/device/kit.py).
TRITON_HOME_VARIABLE = "OFA_TRITON_HOME"


def _install_from(root: Path, libs: Path) -> TritonInstall | None:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if (root / "bin" / "tritonserver").is_file() and stub.is_file():
        return TritonInstall(root / "bin" / "tritonserver", root / "backends" / "python",
                             stub, libs if libs.is_dir() else None)
    return None


def find_triton() -> TritonInstall:
    """$OFA_TRITON_HOME if set, else the nvidia-pytriton wheel's server, else one on PATH."""
    home = os.environ.get(TRITON_HOME_VARIABLE)
    if home:
        install = _install_from(Path(home), Path(home) / "lib")
        if install is None:
            raise TritonNotFoundError(
                f"${TRITON_HOME_VARIABLE}={home} holds no bin/tritonserver with a Python "
                f"{sys.version_info.major}.{sys.version_info.minor} backend stub; unpack the "
                "device kit again, or unset it")
        return install
    try:
        import pytriton
    except ImportError:
        pytriton = None
    if pytriton is not None:
        package = Path(pytriton.__file__).resolve().parent
        install = _install_from(package / "tritonserver",
                                package.parent / "nvidia_pytriton.libs")
        if install is not None:
            return install
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonInstall(Path(on_path), None, None, None)
    raise TritonNotFoundError(
        "no tritonserver found: install the serving extra (pip install -e '.[serve]', which "
        "brings nvidia-pytriton 0.7.0 with Triton 2.51) or put tritonserver on PATH")


def _backend_directory(install: TritonInstall, workdir: Path) -> Path | None:
    if install.backend_source is None:
        return None
    backends = workdir / "backends"
    python_backend = backends / "python"
    if not python_backend.exists():
        shutil.copytree(install.backend_source, python_backend,
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(install.stub, python_backend / "triton_python_backend_stub")
    return backends


def library_path(*directories: Path | str | None, environ: dict[str, str] | None = None) -> str:
    """An ``LD_LIBRARY_PATH`` value: ``directories`` (None skipped) ahead of the inherited one
    (``environ``'s, by default this process's). The one place it is built: tritonserver's
    (below) and perf_analyzer's (``ofa_triton.perf``)."""
    inherited = (os.environ if environ is None else environ).get("LD_LIBRARY_PATH")
    entries = [str(directory) for directory in directories if directory is not None]
    return os.pathsep.join(entries + ([inherited] if inherited else []))


def _library_path(install: TritonInstall) -> str:
    """The server's vendored libraries, and the directory of the running interpreter's
    libpython (the stub embeds it; outside the system's library directories, e.g. a Python
    built under /opt, the stub fails to start without it)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    return library_path(install.library_dir, libdir if libdir and Path(libdir).is_dir() else None)


@dataclasses.dataclass
class ServerOptions:
    repository: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "0.0.0.0"
    log_verbose: int = 0
    # "none": the repository is fixed at start (the safe default: model code is not
    # sandboxed); "explicit": models load and unload through the model-repository API.
    model_control: str = "none"
    # With a key, the admin endpoints (RESTRICTED_APIS: model repository, model config, shared
    # memory, trace, logging) need the header "admin-key: <key>"; inference, health, metadata
    # and statistics stay open (and the metrics port, which no restriction covers).
    admin_key: str | None = None
    extra_args: tuple[str, ...] = ()

    @classmethod
    def loopback(cls, repository: Path, **settings) -> "ServerOptions":
        """Listening on 127.0.0.1 only, on free ports: tests, benchmarks, the soak."""
        return cls(repository=Path(repository), host="127.0.0.1", http_port=free_port(),
                   grpc_port=free_port(), metrics_port=free_port(), **settings)


ADMIN_HEADER = "admin-key"
# Triton 2.51's restricted-API categories are health, metadata, inference, shared-memory,
# model-config, model-repository, statistics, trace and logging. Refused without the key:
# HTTP 403, gRPC UNAVAILABLE (tests/test_admin.py). Trace and logging change what the server
# writes (verbosity, trace files), so they need the key as well.
RESTRICTED_APIS = "model-repository,model-config,shared-memory,trace,logging"


def admin_headers(protocol: str, key: str) -> dict[str, str]:
    """The header that unlocks the restricted APIs. Triton expects gRPC's under a prefix."""
    name = ADMIN_HEADER if protocol == "http" else f"triton-grpc-protocol-{ADMIN_HEADER}"
    return {name: key}


def open_admin_apis_warning(options: "ServerOptions") -> str | None:
    """A warning for a server that anyone beyond this machine can reach without an admin
    key: the restricted APIs (load and unload models, change the configs, the log verbosity
    and the traces) are then open to them too. None on loopback or with a key."""
    if options.admin_key or options.host in ("127.0.0.1", "localhost", "::1"):
        return None
    return (f"warning: no admin key: the {RESTRICTED_APIS.replace(',', ', ')} APIs are open "
            f"to anyone who reaches {options.host}:{options.http_port} (HTTP) or "
            f":{options.grpc_port} (gRPC); set a key with --admin-key-env VARIABLE, or serve on "
            f"--host 127.0.0.1 behind a proxy")


def policy_flags(model_control: str = "none", admin_key: str | None = None) -> list[str]:
    """The flags that decide how the server behaves, whoever starts it: ``ofa-triton serve``
    (also the container's entrypoint: docker/Dockerfile, docker-compose.yml) and the tests."""
    if model_control not in ("none", "explicit"):
        raise ValueError(f"model_control must be 'none' or 'explicit', not {model_control!r}")
    flags = ["--strict-readiness=true", "--exit-on-error=true",
             # Latency quantiles (p50 ... p99.9) per model, for dashboards and alerts
             # (docs/observability.md); Triton 2.51 leaves them off by default.
             "--metrics-config=summary_latencies=true",
             f"--model-control-mode={model_control}"]
    if model_control == "explicit":
        flags.append("--load-model=*")
    if admin_key:
        restriction = f"{RESTRICTED_APIS}:{ADMIN_HEADER}={admin_key}"
        flags += [f"--http-restricted-api={restriction}",
                  f"--grpc-restricted-protocol={restriction}"]
    return flags


def server_command(options: ServerOptions, workdir: Path,
                   install: TritonInstall | None = None) -> tuple[list[str], dict[str, str]]:
    install = install or find_triton()
    argv = [str(install.binary), f"--model-repository={Path(options.repository).resolve()}",
            f"--http-port={options.http_port}", f"--grpc-port={options.grpc_port}",
            f"--metrics-port={options.metrics_port}", f"--http-address={options.host}",
            f"--grpc-address={options.host}", f"--log-verbose={options.log_verbose}",
            *policy_flags(options.model_control, options.admin_key)]
    backends = _backend_directory(install, workdir)
    if backends is not None:
        argv.append(f"--backend-directory={backends}")
    env = dict(os.environ)
    # The stubs run this interpreter's packages (numpy<2, onnxruntime, Pillow, tokenizers).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if install.backend_source is not None:
        env["LD_LIBRARY_PATH"] = _library_path(install)
    # else: an installed server (the NGC image's) whose environment is already right; a
    # system library directory put first would shadow the image's CUDA compatibility libraries.
    return argv + list(options.extra_args), env


class TritonServer:
    """A tritonserver process: ``with TritonServer(options) as server: server.wait_ready()``."""

    def __init__(self, options: ServerOptions, log_path: Path | None = None):
        self.options = options
        self._workdir = Path(tempfile.mkdtemp(prefix="ofa-triton-server-"))
        self.log_path = log_path or self._workdir / "tritonserver.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> "TritonServer":
        argv, env = server_command(self.options, self._workdir)
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        return self

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.options.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def is_ready(self) -> bool:
        try:
            with LOCAL_HTTP.open(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self.process.returncode}; "
                                   f"its log:\n{self.log()[-6000:]}")
            if self.is_ready():
                return
            time.sleep(0.25)
        raise TimeoutError(f"tritonserver not ready after {timeout:.0f}s; its log:\n"
                           f"{self.log()[-6000:]}")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            # SIGINT: Triton finishes in-flight requests, unloads the models and exits.
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        kill_leftover_stubs(self.process.pid)
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self._workdir / "backends", ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class StubProcess:
    pid: int
    instance: str   # Triton's instance name, e.g. "ofa_preprocess_0_1"
    model: str


def stub_processes(server_pid: int) -> list[StubProcess]:
    """The Python-backend stubs of a tritonserver: one process per model instance, started by
    the server as ``triton_python_backend_stub <model.py> <shm region> <shm sizes> <server pid>
    <backend dir> <ipc handle> <instance name> ...`` (Triton 2.51). Matched by that server pid,
    so the list includes stubs that outlived their server."""
    stubs = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue   # exited meanwhile
        if (argv[0].endswith("triton_python_backend_stub") and len(argv) > 8
                and argv[5] == str(server_pid)):
            stubs.append(StubProcess(int(entry.name), argv[8], Path(argv[1]).parent.parent.name))
    return sorted(stubs, key=lambda stub: stub.instance)


def kill_leftover_stubs(server_pid: int) -> list[StubProcess]:
    """Kill the stubs that outlived their (exited) server. A tritonserver that crashes (seen:
    SIGSEGV when a model's warmup fails, Triton 2.51) leaves its stubs running, 50-250 MB each,
    because a stub does not notice its parent's death."""
    leftovers = stub_processes(server_pid)
    for stub in leftovers:
        try:
            os.kill(stub.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return leftovers
