"""``ofa-triton serve``: tritonserver in the foreground, with its watchdog
(ofa_triton.watchdog) and the service's health endpoint (ofa_triton.service_health)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from .server import ServerOptions, kill_leftover_stubs, local_address, server_command
from .service_health import HEALTH_PORT, HealthEndpoint, ServiceHealth
from .triton_config import ensemble_models
from .watchdog import RepairError, Watchdog, log_to_stderr


def run_foreground(options: ServerOptions, watchdog: bool = True,
                   health_port: int | None = HEALTH_PORT) -> int:
    """tritonserver in the foreground, its log on this terminal. Ctrl-C (or SIGTERM) stops it
    cleanly. With ``watchdog`` (the default; ``--no-watchdog``) a dead or failing Python stub
    is replaced: its model reloaded in place with explicit model control, the server restarted
    without (docs/watchdog.md). With ``health_port`` (not None or 0), ``/ready`` and ``/live``
    of the service answer there (ofa_triton.service_health)."""
    workdir = Path(tempfile.mkdtemp(prefix="ofa-triton-server-"))
    argv, env = server_command(options, workdir)
    server = ForegroundServer(options, argv, env, watchdog=watchdog)
    endpoint = None
    if health_port:
        health = ServiceHealth(f"{local_address(options.host)}:{options.http_port}",
                               ensemble_models(options.repository), server_state=server.state,
                               watchdog=lambda: server.watchdog)
        try:
            endpoint = HealthEndpoint(health, options.host, health_port)   # before the server
        except OSError:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
    print(f"starting {argv[0]} (HTTP :{options.http_port}, gRPC :{options.grpc_port}, "
          f"metrics :{options.metrics_port}, model control {options.model_control}, admin API "
          f"{'restricted by key' if options.admin_key else 'open'}, watchdog "
          f"{'on' if watchdog else 'off'}, service health "
          f"{f'/ready and /live on :{health_port}' if endpoint else 'off'}); Ctrl-C stops it",
          flush=True)
    # tritonserver runs in a session of its own, so that a signal reaches it once, from here:
    # the first Ctrl-C, SIGTERM (docker stop) or SIGHUP (the terminal closed) stops it
    # cleanly (SIGINT: it finishes what it has, up to its exit timeout), the next kills it.
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    stops = 0

    def stop(signum, _frame):
        nonlocal stops
        stops += 1
        if stops == 1:
            print(f"ofa-triton serve: {signal.Signals(signum).name}: stopping tritonserver "
                  "cleanly (again to kill it)", file=sys.stderr, flush=True)
            server.send_signal(signal.SIGINT)
        else:
            server.send_signal(signal.SIGKILL)

    previous = {signum: signal.signal(signum, stop) for signum in signals}
    try:
        server.start()
        if stops:    # a signal came while it was starting
            server.send_signal(signal.SIGINT if stops == 1 else signal.SIGKILL)
        if endpoint is not None:
            endpoint.start()
        return server.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if endpoint is not None:
            endpoint.close()
        server.close()    # the watchdog, and the stubs left by every server it started
        shutil.rmtree(workdir, ignore_errors=True)


class ForegroundServer:
    """The tritonserver of ``ofa-triton serve`` (``run_foreground``), with its watchdog.

    ``start()`` starts the server and the watchdog (which waits for readiness itself);
    ``wait()`` returns the exit status of the server when it ends on its own or after a
    signal, not when the watchdog restarted it; ``send_signal`` stops the watchdog first, so
    that a shutdown is never taken for stubs dying; ``close()`` stops the watchdog and kills
    the stubs left by every server it started. Without explicit model control the watchdog
    repairs by ``restart()``: SIGINT, ``stop_timeout_s`` of grace (a server with a dead stub
    never finishes its clean shutdown; it would wait out its exit timeout, 30 s by default),
    SIGKILL, leftover stubs killed, the same command started again."""

    def __init__(self, options: ServerOptions, argv: list[str], env: dict[str, str], *,
                 watchdog: bool = True, stop_timeout_s: float = 5.0,
                 log: Callable[[str], None] | None = None, stdout=None, **watchdog_settings):
        self.options, self.argv, self.env = options, argv, env
        self.stop_timeout_s = stop_timeout_s
        self.stdout = stdout
        self.log = log or log_to_stderr
        self.process: subprocess.Popen | None = None
        self.watchdog: Watchdog | None = None
        self._want_watchdog = watchdog
        self._watchdog_settings = watchdog_settings
        self._lock = threading.Condition()
        self._restarting = False
        self._closing = False
        self._pids: list[int] = []

    @property
    def pid(self) -> int:
        return self.process.pid

    def state(self) -> str:
        """"running", "restarting" (by the watchdog), "stopping" (signalled: finishing what it
        has) or "exited"."""
        with self._lock:
            if self._restarting:
                return "restarting"
            process, closing = self.process, self._closing
        if process is None or process.poll() is not None:
            return "exited"
        return "stopping" if closing else "running"

    def _spawn(self) -> subprocess.Popen:
        # Its own session: signals reach it from this process only (run_foreground).
        process = subprocess.Popen(self.argv, env=self.env, stdout=self.stdout,
                                   stderr=subprocess.STDOUT if self.stdout else None,
                                   start_new_session=True)
        self._pids.append(process.pid)
        return process

    def start(self) -> "ForegroundServer":
        self.process = self._spawn()
        if self._want_watchdog:
            self.watchdog = Watchdog.for_options(self.options, self.process.pid,
                                                 restart=self.restart, log=self.log,
                                                 **self._watchdog_settings)
            self.watchdog.start()
        return self

    def restart(self) -> int:
        """Stop the server (short grace, then SIGKILL), kill its stubs, start it again;
        returns the new pid. Called from the watchdog's thread."""
        with self._lock:
            if self._closing:
                raise RepairError("the server is shutting down")
            self._restarting = True
            old = self.process
        try:
            if old.poll() is None:
                old.send_signal(signal.SIGINT)
                try:
                    old.wait(self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    old.kill()
                    old.wait()
            kill_leftover_stubs(old.pid)
            with self._lock:
                if self._closing:
                    raise RepairError("the server is shutting down")
                self.process = self._spawn()
                return self.process.pid
        finally:
            with self._lock:
                self._restarting = False
                self._lock.notify_all()

    def wait(self) -> int:
        """The exit status of the server, once it ends other than by a restart."""
        while True:
            process = self.process
            code = process.wait()
            with self._lock:
                while self._restarting:
                    self._lock.wait(0.5)
                if self.process is process:
                    return code

    def stop_watchdog(self) -> None:
        with self._lock:
            self._closing = True
        if self.watchdog is not None:
            self.watchdog.stop(wait=False)

    def send_signal(self, signum: int) -> None:
        self.stop_watchdog()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def close(self) -> None:
        self.stop_watchdog()
        if self.watchdog is not None:
            self.watchdog.stop(wait=True, timeout=10)
        for pid in self._pids:
            if self.process is None or pid != self.process.pid or self.process.poll() is not None:
                kill_leftover_stubs(pid)
