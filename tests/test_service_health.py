"""The service's own readiness (ofa_triton.service_health): what makes it false, and its HTTP
endpoint. Against a real server and a killed stub: tests/test_watchdog.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from ofa_triton.service_health import (HealthEndpoint, HealthPortError, HealthReport,
                                       ServiceHealth, health_report)
from ofa_triton.triton_config import ensemble_models

READY = {"ofa_visual_entailment": True, "ofa_caption": True}
BROKEN = "ofa_preprocess instance ofa_preprocess_0_1 (pid 7) died: being repaired"


def test_ready_only_when_the_server_runs_every_ensemble_is_ready_and_nothing_is_broken():
    report = health_report("running", True, READY, [], "on")
    assert report == HealthReport(True, True, [], READY, "on")
    assert health_report("running", True, {**READY, "ofa_caption": False}, [], "on").reasons == [
        "ofa_caption is not ready on the server"]
    # Triton says ready (its probes cannot see a dead stub): the watchdog's finding decides.
    broken = health_report("running", True, READY, [BROKEN], "on")
    assert not broken.ready and broken.live and broken.reasons == [f"watchdog: {BROKEN}"]
    assert health_report("running", True, {}, [], "off").reasons == [
        "the repository has no ensemble to serve"]


@pytest.mark.parametrize("state, live, reason", [
    ("restarting", True, "tritonserver is being restarted by the watchdog"),
    ("stopping", True, "tritonserver is shutting down (finishing the requests it has)"),
    ("exited", False, "tritonserver has exited"),
])
def test_a_server_that_restarts_stops_or_exited_is_not_ready(state, live, reason):
    # The ensembles' readiness cannot be asked then: not listed as reasons of their own.
    report = health_report(state, False, dict.fromkeys(READY, False), [], "on")
    assert (report.ready, report.live, report.reasons) == (False, live, [reason])


def test_a_running_server_that_does_not_answer_is_alive_but_not_ready():
    """Loading its models, or hung: an orchestrator must not restart it for that; a load
    balancer must not send it traffic."""
    report = health_report("running", False, dict.fromkeys(READY, False), [], "on")
    assert not report.ready and report.live
    assert report.reasons == ["tritonserver does not answer /v2/health/live"]


class CannedHealth(ServiceHealth):
    def __init__(self, report: HealthReport):
        super().__init__("127.0.0.1:1", [])
        self.canned = report

    def report(self) -> HealthReport:
        return self.canned


def ask(url: str, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def endpoint():
    health = CannedHealth(health_report("running", True, READY, [], "on"))
    endpoint = HealthEndpoint(health, "127.0.0.1", 0).start()
    yield endpoint
    endpoint.close()


def test_the_endpoint_answers_200_or_503_with_the_reasons(endpoint):
    base = f"http://127.0.0.1:{endpoint.port}"
    status, body = ask(f"{base}/ready")
    assert status == 200 and json.loads(body) == {
        "ready": True, "live": True, "reasons": [], "ensembles": READY, "watchdog": "on"}
    endpoint.health.canned = health_report("running", True, READY, [BROKEN], "on")
    status, body = ask(f"{base}/ready")
    assert status == 503 and json.loads(body)["reasons"] == [f"watchdog: {BROKEN}"]
    assert ask(f"{base}/live")[0] == 200                  # broken, yet alive
    assert ask(f"{base}/ready/?probe=1")[0] == 503        # a trailing slash, a query
    assert ask(f"{base}/ready", "HEAD") == (503, b"")
    endpoint.health.canned = health_report("exited", False, {}, [], "stopped")
    assert ask(f"{base}/live")[0] == 503
    status, body = ask(f"{base}/v2/health/ready")
    assert status == 404 and "ask /ready or /live" in json.loads(body)["error"]


def test_a_taken_port_fails_before_anything_starts_and_says_what_to_do(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(HealthPortError, match=r"choose another --health-port, or 0 to "
                           "turn it off"):
            HealthEndpoint(CannedHealth(health_report("running", True, READY, [], "on")),
                           "127.0.0.1", port)
        # ofa-triton serve: one line and exit 2, before any tritonserver starts.
        (tmp_path / "ofa_visual_entailment").mkdir()
        (tmp_path / "ofa_visual_entailment" / "config.pbtxt").write_text(
            'name: "ofa_visual_entailment"\nplatform: "ensemble"\n')
        result = subprocess.run(
            [sys.executable, "-m", "ofa_triton.cli", "serve", "--repository", str(tmp_path),
             "--host", "127.0.0.1", "--health-port", str(port)],
            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"ofa-triton serve: error: the health endpoint cannot listen on 127.0.0.1:{port} "
        "(Address already in use); choose another --health-port, or 0 to turn it off")
    assert "starting" not in result.stdout


def test_without_a_server_the_health_is_not_ready_and_says_why():
    """A ServiceHealth whose server does not answer (nothing listens on the port)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    report = ServiceHealth(f"127.0.0.1:{port}", ["ofa_visual_entailment"]).report()
    assert not report.ready and report.live and report.watchdog == "off"
    assert report.ensembles == {"ofa_visual_entailment": False}


def test_the_ensembles_are_read_from_the_repository(tmp_path):
    for name, platform in (("large_ofa_visual_entailment", "ensemble"),
                           ("large_ofa_preprocess", None), ("ofa_caption", "ensemble")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.pbtxt").write_text(
            f'name: "{name}"\n' + (f'platform: "{platform}"\n' if platform else
                                   'backend: "python"\n'))
    (tmp_path / "notes").mkdir()
    assert ensemble_models(tmp_path) == ["large_ofa_visual_entailment", "ofa_caption"]


def test_the_server_is_asked_directly_even_with_a_proxy_in_the_environment(monkeypatch):
    """HTTP_PROXY (common on corporate hosts) must not route the loopback probes through a
    proxy: a stand-in Triton that answers its health endpoints, and a proxy that is not."""
    import http.server
    import threading

    class Triton(http.server.BaseHTTPRequestHandler):
        def do_GET(self):   # noqa: N802
            known = self.path in ("/v2/health/live", "/v2/models/ofa_visual_entailment/ready")
            self.send_response(200 if known else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    triton = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Triton)
    threading.Thread(target=triton.serve_forever, daemon=True).start()
    try:
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, "http://127.0.0.1:9")     # nothing listens there
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        health = ServiceHealth(f"127.0.0.1:{triton.server_address[1]}",
                               ["ofa_visual_entailment"])
        assert health.report().ready
    finally:
        triton.shutdown()
        triton.server_close()
