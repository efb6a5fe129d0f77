"""The service's own readiness and liveness, for load balancers and orchestrators:
``ofa-triton serve`` answers them on its health port (``--health-port``, 8003 by default).

Triton's probes do not say whether the service can answer (docs/faults.md, docs/watchdog.md):
- its ``/v2/health/ready`` and ``/v2/models/<ensemble>/ready`` stay 200 while a step's Python
  stub is dead, and every request routed to that stub fails;
- its strict ``/v2/health/ready`` is false during every deploy (a version loading or
  unloading), while the old version serves on.

``GET /ready`` answers 200 when all of these hold, else 503, with the reasons:
1. the tritonserver process runs (it is not being restarted by the watchdog, nor shutting
   down after a signal: a load balancer stops sending while it finishes what it has);
2. every ensemble of the repository is ready on the server (``/v2/models/<name>/ready``);
3. the watchdog has found nothing broken that it has not repaired yet
   (``Watchdog.unrepaired()``): from the moment it notices a dead or failing stub (within
   its 0.25 s poll) until the repaired model and its ensembles are ready again.

``GET /live`` answers 200 while the tritonserver process runs (or the watchdog restarts it),
503 once it has exited (a server that runs but does not answer is not ready; liveness is
for restarting what is gone, and a server loading its models is not gone). Both answer JSON:
``{"ready": bool, "live": bool, "reasons": [...], "ensembles": {name: bool}, "watchdog":
"on" | "off" | "stopped"}``. ``HEAD`` gives the status alone.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
from collections.abc import Callable, Iterable, Mapping

from .server import LOCAL_HTTP

HEALTH_PORT = 8003      # after Triton's 8000 (HTTP), 8001 (gRPC) and 8002 (metrics)
PATHS = ("/ready", "/live")


class HealthPortError(OSError):
    """The health port cannot be bound; the message says which flag to change."""


@dataclasses.dataclass(frozen=True)
class HealthReport:
    ready: bool
    live: bool
    reasons: list[str]
    ensembles: dict[str, bool]
    watchdog: str

    def as_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()


def health_report(server_state: str, triton_live: bool, ensembles: Mapping[str, bool],
                  unrepaired: Iterable[str], watchdog: str) -> HealthReport:
    """The service's health from what was observed (pure; unit-tested).

    ``server_state``: "running", "restarting", "stopping" or "exited" (the tritonserver
    process, ``ForegroundServer.state()``);
    ``ensembles``: each ensemble's readiness on the server; ``unrepaired``: the watchdog's
    lines for what it found broken and has not repaired."""
    reasons = []
    if server_state == "exited":
        reasons.append("tritonserver has exited")
    elif server_state == "stopping":
        reasons.append("tritonserver is shutting down (finishing the requests it has)")
    elif server_state == "restarting":
        reasons.append("tritonserver is being restarted by the watchdog")
    elif not triton_live:
        reasons.append("tritonserver does not answer /v2/health/live")
    if server_state == "running" and triton_live:
        if not ensembles:
            reasons.append("the repository has no ensemble to serve")
        reasons += [f"{name} is not ready on the server" for name, ready
                    in sorted(ensembles.items()) if not ready]
    reasons += [f"watchdog: {line}" for line in unrepaired]
    live = server_state in ("running", "restarting", "stopping")
    return HealthReport(ready=not reasons, live=live, reasons=reasons,
                        ensembles=dict(sorted(ensembles.items())), watchdog=watchdog)


class ServiceHealth:
    """Looks at the server each time it is asked (a probe costs one loopback request, plus
    one per ensemble). ``server_state`` says what the process is doing; ``watchdog`` returns the
    current watchdog, or None when there is none."""

    def __init__(self, http_url: str, ensembles: Iterable[str], *,
                 server_state: Callable[[], str] = lambda: "running",
                 watchdog: Callable[[], object | None] = lambda: None,
                 timeout_s: float = 1.0):
        self.http_url = http_url.removeprefix("http://").rstrip("/")
        self.ensembles = list(ensembles)
        self.server_state = server_state
        self.watchdog = watchdog
        self.timeout_s = timeout_s

    def _answers(self, path: str) -> bool:
        try:
            with LOCAL_HTTP.open(f"http://{self.http_url}{path}",
                                 timeout=self.timeout_s) as response:
                return response.status == 200
        except (OSError, ValueError):     # HTTPError (non-200) is an OSError
            return False

    def report(self) -> HealthReport:
        state = self.server_state()
        live = state == "running" and self._answers("/v2/health/live")
        ready = {name: live and self._answers(f"/v2/models/{name}/ready")
                 for name in self.ensembles}
        watchdog = self.watchdog()
        if watchdog is None:
            unrepaired, watching = [], "off"
        else:
            unrepaired = watchdog.unrepaired()
            watching = "stopped" if watchdog.stopped or not watchdog.is_alive() else "on"
        return health_report(state, live, ready, unrepaired, watching)


class HealthEndpoint:
    """``/ready`` and ``/live`` of a ``ServiceHealth`` on ``host:port``, from a thread. The
    port is bound in the constructor, so that a taken port fails before the server starts."""

    def __init__(self, health: ServiceHealth, host: str, port: int):
        self.health = health

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, body: bool) -> None:
                path = self.path.split("?", 1)[0].rstrip("/")
                if path not in PATHS:
                    status, payload = 404, json.dumps(
                        {"error": f"no {path or '/'} here; ask {' or '.join(PATHS)}"}).encode()
                else:
                    report = health.report()
                    ok = report.ready if path == "/ready" else report.live
                    status, payload = (200 if ok else 503), report.as_json()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if body:
                    self.wfile.write(payload)

            def do_GET(self) -> None:          # noqa: N802 (http.server's names)
                self._answer(body=True)

            def do_HEAD(self) -> None:         # noqa: N802
                self._answer(body=False)

            def log_message(self, format, *args) -> None:   # a probe is not news
                pass

        try:
            self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        except OSError as error:
            raise HealthPortError(f"the health endpoint cannot listen on {host}:{port} "
                                  f"({error.strerror or error}); choose another --health-port, "
                                  "or 0 to turn it off") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="ofa-triton-health", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> "HealthEndpoint":
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
