"""Process faults: a Python-backend stub killed (SIGKILL) while requests are in flight.

What Triton 2.51's Python backend does, as observed here (docs/faults.md says what an
operator should do about it):
- requests that reach the dead instance fail after the backend's 1 s health check times out
  (about 1 s from the send here, 2 s for one queued behind a failing batch) with INTERNAL /
  HTTP 500 "Stub process '<instance>' is not healthy."; nothing hangs;
- the stub is NOT restarted: every later batch scheduled on that instance fails the same way;
  other instances of the model keep serving (``ofa_preprocess`` has two), a model with one
  instance (``ofa_encoder_decoder``) fails every request;
- server and model readiness stay 200, and the server log says nothing at the default
  verbosity: only the clients and the failure counters see it;
- unloading and loading the model (explicit model control) starts new stubs and serves again
  within seconds; without explicit model control, restart the server;
- a clean shutdown then waits out the exit timeout and exits 1: the dead instance never
  finishes unloading (also after the model was reloaded: the dead version stays UNLOADING).
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
# Each batch that the dead instance gets fails once the backend's 1 s health check of the
# stub times out: a request fails 1 s after its batch reached the instance, 2 s after when it
# queued behind a batch that was already failing, plus the time it spent in the steps before
# (docs/faults.md). Measured at load average 2-7 on this 2-core machine, in 19 runs of both
# kill tests (15-24 failed requests per run and model), from the later of the request's send
# and the kill: 0.98-1.06 s for most, 2.00-2.04 s for those queued behind a failing batch (in
# 5 runs, where the four clients fell out of step), and once 2.50 s from the send. The upper
# bound leaves 1 s above that; the lower one, from the send, is the health check itself.
ERROR_BOUND_S = (0.95, 3.5)
# After unload + load the ensemble must be ready again within this (docs/faults.md: "about
# 3 s"; measured 2.5-3.0 s, the load includes each model's warmup sample).
RECOVERY_BOUND_S = 15


def start_server(repository, log_dir, model_control: str = "explicit") -> TritonServer:
    """A server of this module's own on the session's tiny export (stubs get killed), with a
    short exit timeout, so that its shutdown does not wait 30 s. Explicit model control lets
    a test unload and load a model; "none" is the default deployment's."""
    options = ServerOptions.loopback(repository, model_control=model_control,
                                     extra_args=(f"--exit-timeout-secs={EXIT_TIMEOUT_S}",))
    return TritonServer(options, log_path=log_dir / "server.log")


@pytest.fixture(scope="module")
def server(exported_repositories, tmp_path_factory):
    """Shared by the kill tests; each one leaves it serving again (it reloads what it
    killed), so that they do not depend on each other's order."""
    with start_server(exported_repositories["tiny"], tmp_path_factory.mktemp("faults")) as server:
        server.wait_ready()
        yield server


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
        thread.join(ERROR_BOUND_S[1] + 60)
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
    return wait_for_the_ensemble(admin, started)


def wait_for_the_ensemble(admin, started: float) -> float:
    while not admin.is_model_ready(ENSEMBLE):
        assert time.monotonic() - started < RECOVERY_BOUND_S, "the ensemble did not come back"
        time.sleep(0.2)
    return time.monotonic() - started


def repository_state(admin, model: str) -> str:
    """The state of version 1 of ``model`` in /v2/repository/index."""
    [state] = [entry.get("state") for entry in admin.get_model_repository_index()
               if entry["name"] == model and entry.get("version") == "1"]
    return state


@pytest.mark.parametrize("model,instances", [("ofa_preprocess", 2), ("ofa_encoder_decoder", 1)])
def test_killed_stub_fails_its_requests_fast_until_the_model_is_reloaded(
        server, entailment_fields, model, instances):
    instance = f"{model}_0_0"
    victim = stub_pid(server, instance)
    assert victim is not None, stub_processes(server.process.pid)
    failures_before = backend_failures(server, model)

    outcomes = under_load(server, entailment_fields, lambda: os.kill(victim, signal.SIGKILL), 6.0)

    before = [o for o in outcomes if o[0] + o[1] < 0]
    after = [o for o in outcomes if o[0] >= 0]
    failed = [o for o in outcomes if o[2] is not None]
    assert before and all(error is None for _, _, error in before)
    assert failed, "killing the stub failed no request"
    for sent, took, error in failed:
        assert error.status == "StatusCode.INTERNAL", (error.status, str(error))
        assert f"Stub process '{instance}' is not healthy" in str(error)
        # From the send (it cannot fail before its batch's health check), and from the later
        # of its send and the kill (a request in flight when the stub died fails after it).
        assert took >= ERROR_BOUND_S[0], sorted(o[1] for o in failed)
        assert sent + took - max(sent, 0.0) < ERROR_BOUND_S[1], sorted(
            (round(o[0], 2), round(o[1], 3)) for o in failed)
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
    # Exactly one per failed request (the counter may trail the responses by a moment).
    deadline = time.monotonic() + 5
    while (backend_failures(server, model) < failures_before + len(failed)
           and time.monotonic() < deadline):
        time.sleep(0.2)
    assert backend_failures(server, model) == failures_before + len(failed)

    took = reload_model(server, model)
    assert took < RECOVERY_BOUND_S
    assert stub_pid(server, instance) not in (None, victim)
    client = VisualEntailmentClient(server.http_url)
    for index in range(2 * instances + 2):   # every instance gets its turn
        assert client.predict(entailment_fields["image"], f"after the reload {index}")


def test_a_server_whose_stubs_are_alive_stops_before_its_exit_timeout_with_status_0(
        exported_repositories, entailment_fields, tmp_path):
    """The control for the test below: without a dead stub, SIGINT ends in a clean exit,
    status 0, without waiting out the exit timeout (about 4 s here, the timeout is 5 s; the
    status says which: 1 when the timeout expired)."""
    with start_server(exported_repositories["tiny"], tmp_path, "none") as server:
        server.wait_ready()
        # Closed first: an open client connection also holds the exit until the timeout.
        with VisualEntailmentClient(server.http_url) as client:
            assert client.predict(entailment_fields["image"], entailment_fields["hypothesis"])
        returncode = server.stop(timeout=EXIT_TIMEOUT_S + 30)
    assert returncode == 0, (returncode, server.log()[-3000:])
    assert "Exit timeout expired" not in server.log()


@pytest.mark.parametrize("model_control", ["none", "explicit"])
def test_shutdown_after_a_stub_death_waits_for_the_exit_timeout(
        exported_repositories, entailment_fields, tmp_path, model_control):
    """The killed instance never finishes unloading: SIGINT ends in Triton's exit timeout
    (--exit-timeout-secs; 30 s by default) and exit status 1, rather than a prompt clean exit
    (0, in about 4 s here). With its own server, whose stub it kills itself: the default
    deployment ("none": nothing can be reloaded), and explicit model control after the
    unload and load that recover the service."""
    model, instance = "ofa_encoder_decoder", "ofa_encoder_decoder_0_0"
    with start_server(exported_repositories["tiny"], tmp_path, model_control) as server:
        server.wait_ready()
        client = VisualEntailmentClient(server.http_url)
        assert client.predict(entailment_fields["image"], entailment_fields["hypothesis"])
        os.kill(stub_pid(server, instance), signal.SIGKILL)
        with pytest.raises(PredictionError, match=f"Stub process '{instance}' is not healthy"
                           ) as caught:
            client.predict(entailment_fields["image"], entailment_fields["hypothesis"])
        assert caught.value.status == "500"
        if model_control == "explicit":
            # The unload of the dead instance never finishes: 3 s later the version is still
            # UNLOADING (a healthy one is UNAVAILABLE, "unloaded", after about 2 s here). The
            # load then starts new stubs and the index shows only the new version, READY.
            admin = httpclient.InferenceServerClient(server.http_url)
            admin.unload_model(model)
            time.sleep(3)
            assert repository_state(admin, model) == "UNLOADING"
            admin.load_model(model)
            assert repository_state(admin, model) == "READY"
            wait_for_the_ensemble(admin, time.monotonic())
            assert client.predict(entailment_fields["image"], entailment_fields["hypothesis"])
            admin.close()
        # No connection left open, which would hold the exit too (the control test above):
        # what remains to wait for is the dead instance.
        client.close()

        started = time.monotonic()
        returncode = server.stop(timeout=EXIT_TIMEOUT_S + 30)
        took = time.monotonic() - started
    # Measured: 5.39-5.72 s (six runs, both cases), exit status 1 every time; a server
    # whose stubs are all alive stops in about 4 s with status 0.
    assert returncode == 1, (returncode, server.log()[-3000:])
    assert EXIT_TIMEOUT_S <= took < EXIT_TIMEOUT_S + 5, took
    assert "Exit timeout expired" in server.log()
