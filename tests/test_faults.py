"""Process faults: a Python-backend stub killed (SIGKILL) while requests are in flight.

What Triton 2.51's Python backend does, as observed here (docs/faults.md says what an
operator should do about it):
- requests that reach the dead instance fail within about a second (the backend's health
  check times out) with INTERNAL / HTTP 500 "Stub process '<instance>' is not healthy.";
  nothing hangs;
- the stub is NOT restarted: every later batch scheduled on that instance fails the same way;
  other instances of the model keep serving (``ofa_preprocess`` has two), a model with one
  instance (``ofa_encoder_decoder``) fails every request;
- server and model readiness stay 200, and the server log says nothing at the default
  verbosity: only the clients and the failure counters see it;
- unloading and loading the model (explicit model control) starts new stubs and serves again
  within seconds; without explicit model control, restart the server;
- a clean shutdown then waits out the exit timeout: the dead instance never finishes unloading.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import urllib.request

import pytest
import tritonclient.http as httpclient

from ofa_triton.client import PredictionError
from ofa_triton.tasks.visual_entailment.client import VisualEntailmentClient
from ofa_triton.server import ServerOptions, TritonServer, stub_processes

ENSEMBLE = "ofa_visual_entailment"
EXIT_TIMEOUT_S = 5
# A failed request must come back within this (observed: 1 to 2 s).
ERROR_BOUND_S = 10
# After unload + load the model must serve again within this (observed: about 3 s).
RECOVERY_BOUND_S = 60


@pytest.fixture(scope="module")
def server(exported_repositories, tmp_path_factory):
    """Its own server on the session's tiny export (stubs get killed): explicit model
    control, so that a test can unload and load a model, and a short exit timeout, so that
    its shutdown does not wait 30 s."""
    options = ServerOptions.loopback(exported_repositories["tiny"], model_control="explicit",
                                     extra_args=(f"--exit-timeout-secs={EXIT_TIMEOUT_S}",))
    log_path = tmp_path_factory.mktemp("faults") / "server.log"
    with TritonServer(options, log_path=log_path) as server:
        server.wait_ready()
        yield server


@pytest.fixture(scope="module")
def request_fields(golden_images):
    return {"image": golden_images["photo_640x480.jpg"].read_bytes(),
            "hypothesis": "two people walk down a street"}


def stub_pid(server, instance: str) -> int | None:
    return next((s.pid for s in stub_processes(server.process.pid) if s.instance == instance),
                None)


def backend_failures(server, model: str) -> float:
    """``nv_inference_request_failure{reason="BACKEND"}`` of a step: requests whose whole
    batch the backend failed. Bad input does not count there (a step's error response counts
    as a success, docs/observability.md), so on these steps it means a broken stub."""
    url = f"http://127.0.0.1:{server.options.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    line = re.compile(rf'^nv_inference_request_failure\{{(?=[^}}]*model="{model}")'
                      rf'(?=[^}}]*reason="BACKEND")[^}}]*\}} (\S+)', re.M)
    return sum(float(value) for value in line.findall(text))


def under_load(server, fields: dict, action, seconds: float, workers: int = 4) -> list[tuple]:
    """``workers`` clients sending back to back over gRPC; ``action`` runs after 2 s, then
    the load goes on for ``seconds``. Returns (sent, took, error) per request, times relative
    to the action."""
    outcomes, stop = [], threading.Event()
    action_at = time.monotonic() + 2.0

    def worker():
        client = VisualEntailmentClient(server.grpc_url, "grpc", timeout=60)
        while not stop.is_set():
            sent = time.monotonic()
            try:
                client.predict(fields["image"], fields["hypothesis"])
                error = None
            except PredictionError as caught:
                error = caught
            outcomes.append((sent - action_at, time.monotonic() - sent, error))
        client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, action_at - time.monotonic()))
    action()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(ERROR_BOUND_S + 60)
        assert not thread.is_alive(), "a request hung"
    return outcomes


def reload_model(server, model: str) -> float:
    """Unload and load ``model``: new stubs. Loading it loads the ensemble that uses it
    again (loading the ensemble itself would reload every step). Returns the seconds until
    the ensemble is ready again."""
    admin = httpclient.InferenceServerClient(server.http_url, network_timeout=RECOVERY_BOUND_S)
    started = time.monotonic()
    admin.unload_model(model)
    admin.load_model(model)
    while not admin.is_model_ready(ENSEMBLE):
        assert time.monotonic() - started < RECOVERY_BOUND_S, "the ensemble did not come back"
        time.sleep(0.2)
    return time.monotonic() - started


@pytest.mark.parametrize("model,instances", [("ofa_preprocess", 2), ("ofa_encoder_decoder", 1)])
def test_killed_stub_fails_its_requests_fast_until_the_model_is_reloaded(
        server, request_fields, model, instances):
    instance = f"{model}_0_0"
    victim = stub_pid(server, instance)
    assert victim is not None, stub_processes(server.process.pid)
    failures_before = backend_failures(server, model)

    outcomes = under_load(server, request_fields, lambda: os.kill(victim, signal.SIGKILL), 6.0)

    before = [o for o in outcomes if o[0] + o[1] < 0]
    after = [o for o in outcomes if o[0] >= 0]
    failed = [o for o in outcomes if o[2] is not None]
    assert before and all(error is None for _, _, error in before)
    assert failed, "killing the stub failed no request"
    for _, took, error in failed:
        assert error.status == "StatusCode.INTERNAL", (error.status, str(error))
        assert f"Stub process '{instance}' is not healthy" in str(error)
        assert took < ERROR_BOUND_S
    served_late = [o for o in after if o[0] > 2.0 and o[2] is None]
    if instances > 1:
        assert served_late, "the model's other instances should keep serving"
    else:
        assert not served_late, "a single-instance model cannot serve without its stub"
        assert all(o[2] is not None for o in after if o[0] > 2.0)

    # No restart, and nothing that a readiness probe or the log at default verbosity sees;
    # the step's BACKEND failure counter does count them.
    assert stub_pid(server, instance) is None
    assert server.is_ready()
    assert httpclient.InferenceServerClient(server.http_url).is_model_ready(model)
    assert "is not healthy" not in server.log()
    assert backend_failures(server, model) >= failures_before + len(failed)

    took = reload_model(server, model)
    assert took < RECOVERY_BOUND_S
    assert stub_pid(server, instance) not in (None, victim)
    client = VisualEntailmentClient(server.http_url)
    for index in range(2 * instances + 2):   # every instance gets its turn
        assert client.predict(request_fields["image"], f"after the reload {index}")


def test_shutdown_after_a_stub_death_waits_for_the_exit_timeout(server):
    """The killed instances never finish unloading: SIGINT ends in Triton's exit timeout
    (--exit-timeout-secs; 30 s by default) rather than a prompt clean exit."""
    started = time.monotonic()
    returncode = server.stop(timeout=EXIT_TIMEOUT_S + 30)
    took = time.monotonic() - started
    assert took >= EXIT_TIMEOUT_S - 1, (took, returncode)
    assert returncode != 0
    assert "Exit timeout expired" in server.log()
