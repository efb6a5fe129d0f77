"""The watchdog (ofa_triton.watchdog): a dead or failing Python stub is found and replaced
within seconds, against a real tritonserver (explicit model control, an admin key, the tiny
export), and a server without explicit model control is restarted instead.

Measured here (2 shared cores, 4 gRPC clients sending back to back): detection 0.01-0.25 s
after the SIGKILL (the 0.25 s poll), the in-place reload 1.5-1.8 s, the step serving again
1.6-2.1 s after the kill; with other suites loading both cores, up to 4.9 s and 5.2 s (the
target is 5 s; the bound asserted, RECOVERY_BOUND_S, leaves room for a loaded machine).
docs/watchdog.md has the figures of the chaos benchmark too.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
import urllib.request

import pytest

from benchmarks.chaos import ReadinessProbe
from ofa_triton.client import PredictionError
from ofa_triton.server import ServerOptions, server_command, stub_processes
from ofa_triton.service_health import HealthEndpoint, ServiceHealth
from ofa_triton.tasks.visual_entailment.client import VisualEntailmentClient
from ofa_triton.foreground import ForegroundServer
from ofa_triton.watchdog import (Problem, StubInfo, Watchdog, backend_failures, failure_rises,
                                 plan_repairs)
from tests.conftest import start_triton

ENSEMBLE = "ofa_visual_entailment"
STEPS = ("ofa_preprocess", "ofa_encoder_decoder", "ofa_postprocess")
ADMIN_KEY = "watchdog-test-key"
EXIT_TIMEOUT_S = 5
DETECTION_BOUND_S = 2.0      # measured 0.0-0.3 s: the 0.25 s poll, plus a scan of /proc
RECOVERY_TARGET_S = 5.0      # the target, kill to the step answering again
RECOVERY_BOUND_S = 15.0      # asserted: the target with room for a machine under load


# --- the decision logic, without a server -------------------------------------------------

METRICS = """\
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="ofa_visual_entailment",reason="OTHER",version="1"} 4
nv_inference_request_failure{model="ofa_visual_entailment",reason="BACKEND",version="1"} 0
nv_inference_request_failure{model="ofa_preprocess",reason="BACKEND",version="1"} 2
nv_inference_request_failure{model="ofa_preprocess",reason="REJECTED",version="1"} 7
nv_inference_request_failure{reason="BACKEND",version="2",model="ofa_preprocess"} 1
nv_inference_request_failure{model="ofa_encoder_decoder",reason="BACKEND",version="1"} 0
nv_inference_request_failure{model="ofa_postprocess",reason="CANCELED",version="1"} 3
nv_inference_request_success{model="ofa_postprocess",version="1"} 30
nv_inference_request_failure{model="large_ofa_postprocess",reason="BACKEND",version="1"} 5e+00
"""


def test_backend_failures_are_read_per_model_from_the_metrics():
    assert backend_failures(METRICS) == {
        "ofa_visual_entailment": 0.0, "ofa_preprocess": 3.0,       # both versions, any order
        "ofa_encoder_decoder": 0.0, "large_ofa_postprocess": 5.0}  # not CANCELED, REJECTED
    assert backend_failures("") == {}


def test_only_a_rise_of_a_watched_model_counts():
    before = {"ofa_preprocess": 3.0, "ofa_encoder_decoder": 2.0, "ofa_postprocess": 5.0,
              ENSEMBLE: 0.0}
    after = {"ofa_preprocess": 3.0, "ofa_encoder_decoder": 4.0, "ofa_postprocess": 1.0,
             ENSEMBLE: 9.0, "new_model": 8.0}
    # The ensemble is not watched; a counter that went down was re-created (not a rise); a
    # model that was not there before has no baseline yet.
    assert failure_rises(before, after, [*STEPS, "new_model"]) == {
        "ofa_encoder_decoder": (2.0, 4.0)}
    assert failure_rises(before, after, STEPS + (ENSEMBLE,))[ENSEMBLE] == (0.0, 9.0)
    assert failure_rises({}, after, STEPS) == {}


def test_repairs_are_planned_for_composing_models_only():
    dead_stub = StubInfo(1234, "ofa_preprocess_0_1", "ofa_preprocess", "1")
    plan = plan_repairs({"ofa_preprocess": [dead_stub], ENSEMBLE: [dead_stub]},
                        {"ofa_preprocess": (2.0, 5.0), "ofa_postprocess": (0.0, 1.0),
                         ENSEMBLE: (0.0, 8.0)}, ensembles=[ENSEMBLE], now=7.0)
    assert set(plan) == {"ofa_preprocess", "ofa_postprocess"}
    assert plan["ofa_preprocess"].dead == [dead_stub] and plan["ofa_preprocess"].detected_at == 7.0
    assert plan["ofa_preprocess"].describe() == (
        "ofa_preprocess instance ofa_preprocess_0_1 (pid 1234) died and failed 3 requests in "
        "its backend (nv_inference_request_failure BACKEND 2 -> 5)")
    assert plan["ofa_postprocess"].describe() == (
        "ofa_postprocess failed 1 requests in its backend (nv_inference_request_failure "
        "BACKEND 0 -> 1), its stubs alive (hung or stopped?)")
    two = Problem("ofa_preprocess", dead=[dead_stub, StubInfo(99, "ofa_preprocess_0_0",
                                                               "ofa_preprocess", "1")])
    assert two.describe() == ("ofa_preprocess instances ofa_preprocess_0_1 (pid 1234), "
                              "ofa_preprocess_0_0 (pid 99) died")
    assert plan_repairs({}, {}, [ENSEMBLE], 0.0) == {}


def test_a_model_that_keeps_failing_with_live_stubs_is_reloaded_less_and_less_often():
    watchdog = Watchdog(1, "127.0.0.1:1", log=lambda line: None)
    failing = Problem("ofa_postprocess", failures=(0.0, 1.0))
    assert watchdog._hold_off(failing, 100.0) == 0.0
    for count, wait in ((1, 10.0), (2, 20.0), (3, 40.0), (9, 300.0)):
        watchdog._failing_repairs["ofa_postprocess"] = (count, 100.0)
        assert watchdog._hold_off(failing, 100.0) == wait
    assert watchdog._hold_off(failing, 100.0 + 601) == 0.0     # forgotten after 10 minutes
    dead = Problem("ofa_postprocess", dead=[StubInfo(5, "ofa_postprocess_0_0",
                                                     "ofa_postprocess", "1")])
    assert watchdog._hold_off(dead, 100.0) == 0.0              # a death is repaired at once


# --- a real server ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def repository(exported_repositories, tmp_path_factory):
    copy = tmp_path_factory.mktemp("watchdog") / "repository"
    shutil.copytree(exported_repositories["tiny"], copy)
    return copy


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    """Explicit model control and an admin key; each test starts its own watchdog."""
    with start_triton(repository, tmp_path_factory.mktemp("watchdog-server"),
                      model_control="explicit", admin_key=ADMIN_KEY,
                      extra_args=(f"--exit-timeout-secs={EXIT_TIMEOUT_S}",)) as server:
        server.wait_ready()
        yield server


@pytest.fixture
def watchdog_factory(server):
    started = []

    def make(**settings) -> tuple[Watchdog, list[str]]:
        lines: list[str] = []
        watchdog = Watchdog.for_server(server, log=lines.append, **settings)
        watchdog.start()
        assert watchdog.baseline_taken.wait(30), "no baseline"
        started.append(watchdog)
        return watchdog, lines

    yield make
    for watchdog in started:
        watchdog.stop()
        assert not watchdog.is_alive()
        watchdog.kill_replaced_stubs()   # the next test's watchdog must not take them for new


class Load:
    """``workers`` gRPC clients sending back to back; every outcome kept as (sent, done,
    error) in time.monotonic()."""

    def __init__(self, server, fields: dict, workers: int = 4):
        self.outcomes: list[tuple[float, float, Exception | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, args=(server, fields), daemon=True)
                         for _ in range(workers)]

    def _work(self, server, fields):
        client = VisualEntailmentClient(server.grpc_url, "grpc", timeout=60)
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                client.predict(fields["image"], fields["hypothesis"])
                error = None
            except PredictionError as caught:
                error = caught
            self.outcomes.append((sent, time.monotonic(), error))
        client.close()

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)
            assert not thread.is_alive(), "a request hung"


def repair_of(watchdog: Watchdog, pid: int, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for repair in list(watchdog.repairs):
            if repair.ok and pid in {stub.pid for stub in repair.dead}:
                return repair
        time.sleep(0.05)
    raise AssertionError(f"no repair of pid {pid} within {timeout:.0f} s: {watchdog.repairs}")


def kill_under_load(server, fields, watchdog, model: str):
    """SIGKILL one stub of ``model`` after 1 s of load; the load goes on until 2 s after the
    repair. Returns (victim, kill time, repair, outcomes, a probe of Triton's readiness of the
    ensemble, a probe of the service's readiness: ``ofa-triton serve``'s /ready)."""
    victim = next(stub for stub in watchdog.watched() if stub.model == model)
    health = ServiceHealth(server.http_url, [ENSEMBLE], watchdog=lambda: watchdog)
    endpoint = HealthEndpoint(health, "127.0.0.1", 0).start()
    try:
        with ReadinessProbe(f"http://{server.http_url}/v2/models/{ENSEMBLE}/ready") as probe, \
                ReadinessProbe(f"http://127.0.0.1:{endpoint.port}/ready") as service, \
                Load(server, fields) as load:
            time.sleep(1.0)
            killed_at = time.monotonic()
            os.kill(victim.pid, signal.SIGKILL)
            repair = repair_of(watchdog, victim.pid, RECOVERY_BOUND_S + 30)
            time.sleep(2.0)
    finally:
        endpoint.close()
    return victim, killed_at, repair, load.outcomes, probe, service


def assert_the_service_was_not_ready_while_broken(service: ReadinessProbe, killed_at: float,
                                                  repair) -> float:
    """Ready before the kill; not ready from the detection until the repair finished (every
    50 ms probe in between); ready after. Returns how long after the kill the first probe
    said not ready (the blind window: at most the watchdog's poll)."""
    assert service.between(killed_at - 1.0, killed_at) and all(
        service.between(killed_at - 1.0, killed_at))
    broken = service.between(repair.detected_at, repair.finished_at)
    assert len(broken) >= 5 and not any(broken), broken
    after = service.between(repair.finished_at, float("inf"))
    assert after and all(after)
    return service.first(False, killed_at) - killed_at


@pytest.mark.parametrize("model", STEPS)   # in this order: preprocess, encoder, postprocess
def test_a_killed_stub_is_found_and_replaced_within_seconds(server, entailment_fields,
                                                            watchdog_factory,
                                                            model):
    watchdog, lines = watchdog_factory()
    victim, killed_at, repair, outcomes, probe, service = kill_under_load(server, entailment_fields,
                                                                          watchdog, model)
    detection = repair.detected_at - killed_at
    recovered = repair.finished_at - killed_at
    print(f"{model}: detected {detection:.2f} s after the kill, repaired in "
          f"{repair.seconds:.2f} s, serving again {recovered:.2f} s after the kill "
          f"(target {RECOVERY_TARGET_S:.0f} s)")
    assert 0 <= detection < DETECTION_BOUND_S
    assert recovered < RECOVERY_BOUND_S

    # Requests in flight on (or queued for) the dead stub may fail, with its name; every
    # request sent after the repair succeeds.
    failed = [(sent, error) for sent, _, error in outcomes if error is not None]
    for _, error in failed:
        assert f"Stub process '{victim.instance}' is not healthy" in str(error), str(error)
    assert all(sent < repair.finished_at for sent, _ in failed)
    after = [error for sent, _, error in outcomes if sent >= repair.finished_at]
    assert after and not any(after)
    # The step answers again: its new stubs, first answers measured from the kill.
    first_success = min(done for sent, done, error in outcomes
                        if error is None and sent >= killed_at)
    print(f"{model}: first success of a request sent after the kill "
          f"{first_success - killed_at:.2f} s")
    assert victim.pid not in {stub.pid for stub in stub_processes(server.process.pid)}
    assert repair.new_pids and set(repair.new_pids) <= {stub.pid for stub in watchdog.watched()}
    assert {stub.model for stub in watchdog.watched()} == set(STEPS)

    # The reload in place never took the ensemble out of service, so Triton's readiness saw
    # nothing at all, neither the death nor the repair; the service's readiness did.
    assert probe.samples and all(ready for _, _, ready in probe.samples)
    assert server.is_ready()
    blind = assert_the_service_was_not_ready_while_broken(service, killed_at, repair)
    print(f"{model}: the service's /ready said 503 {blind:.2f} s after the kill, 200 again "
          "when the repair finished")
    assert blind < DETECTION_BOUND_S

    # One line says what happened and what was done.
    [line] = [line for line in lines if "died" in line]
    assert re.fullmatch(rf"watchdog: {model} instance {victim.instance} \(pid {victim.pid}\) "
                        rf"died; reloaded {model} in place \(new stubs: pids "
                        rf"{', '.join(map(str, repair.new_pids))}\) in \d+\.\d s", line), line
    assert line == repair.line
    assert [r.action for r in watchdog.repairs] == ["reload"]


def test_unload_and_load_takes_the_ensemble_out_of_service_during_the_repair(
        server, entailment_fields, watchdog_factory):
    """``method="unload-load"`` (the issue's first design): the ensemble is unavailable while
    its step is unloaded, which a readiness probe sees; between the death and the detection
    the probe still says ready."""
    model = "ofa_encoder_decoder"
    watchdog, lines = watchdog_factory(method="unload-load")
    victim, killed_at, repair, outcomes, probe, service = kill_under_load(server, entailment_fields,
                                                                          watchdog, model)
    assert_the_service_was_not_ready_while_broken(service, killed_at, repair)
    print(f"unload-load: detected {repair.detected_at - killed_at:.2f} s, repaired in "
          f"{repair.seconds:.2f} s")
    assert all(probe.between(killed_at - 1.0, repair.detected_at))   # the blind window
    during = probe.between(repair.started_at, repair.finished_at)
    assert during and not all(during)
    assert all(probe.between(repair.finished_at, float("inf")))
    assert all(error is None for sent, _, error in outcomes if sent >= repair.finished_at)
    assert re.fullmatch(rf"watchdog: {model} instance {victim.instance} \(pid {victim.pid}\) "
                        rf"died; unloaded and loaded {model} \(new stubs: pids \d+\) in "
                        rf"\d+\.\d s", repair.line), repair.line
    assert lines.count(repair.line) == 1


def test_bad_input_triggers_no_repair(server, entailment_fields, watchdog_factory):
    """Invalid images are refused per request (400), counted as the step's successes: the
    BACKEND counters and the stubs do not move, and nothing is repaired."""
    from tritonclient.utils import InferenceServerException

    from tests.bad_inputs import INVALID_IMAGES, bytes_tensor, infer

    watchdog, lines = watchdog_factory()
    metrics_url = f"http://127.0.0.1:{server.options.metrics_port}/metrics"
    counters = backend_failures(urllib.request.urlopen(metrics_url).read().decode())
    stubs = watchdog.watched()
    images = [make() for name, (make, _) in sorted(INVALID_IMAGES.items())
              if not name.startswith("png_")]    # the huge-PNG cases are slow to build
    refused, answered = [], []

    def send(image: bytes | None, rows: int = 1):
        value = entailment_fields["image"] if image is None else image
        try:
            infer(server, "http", {"image": bytes_tensor(*[value] * rows),
                                   "hypothesis": bytes_tensor(*[b"a dog"] * rows)})
            answered.append(image is None)
        except InferenceServerException as error:
            refused.append((image is not None, str(error.status())))

    for _ in range(2):   # invalid and valid requests together, so that they share batches
        threads = [threading.Thread(target=send, args=(image,)) for image in images]
        threads += [threading.Thread(target=send, args=(None,)) for _ in range(4)]
        threads.append(threading.Thread(target=send, args=(images[0], 4)))   # a batch of 4
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert refused and all(invalid and status == "400" for invalid, status in refused)
    assert len(refused) == 2 * (len(images) + 1)
    assert answered.count(True) == 8

    time.sleep(2.5 * watchdog.metrics_poll_s)    # two looks at the counters at least
    assert watchdog.repairs == [] and lines == []
    after = backend_failures(urllib.request.urlopen(metrics_url).read().decode())
    assert {model: after[model] for model in STEPS} == {model: counters[model] for model in STEPS}
    assert watchdog.watched() == stubs


def test_a_hung_stub_is_found_by_its_failure_counter(server, entailment_fields, watchdog_factory):
    """A stopped stub (SIGSTOP) is alive, so only its BACKEND failures tell: Triton fails its
    batches after the 1 s health check. The reload replaces it and the stopped process is
    killed later (reap_after_s)."""
    watchdog, lines = watchdog_factory(reap_after_s=1.0)
    victim = next(stub for stub in watchdog.watched() if stub.model == "ofa_postprocess")
    client = VisualEntailmentClient(server.http_url)
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        with pytest.raises(PredictionError, match="is not healthy"):
            client.predict(entailment_fields["image"], entailment_fields["hypothesis"])
        failed_at = time.monotonic()
        deadline = time.monotonic() + 30
        while not any(repair.ok for repair in watchdog.repairs) and time.monotonic() < deadline:
            time.sleep(0.1)
        [repair] = watchdog.repairs
        print(f"hung: its request failed {failed_at - stopped_at:.2f} s after the SIGSTOP, "
              f"found {repair.detected_at - failed_at:.2f} s later; {repair.line}")
        assert repair.ok and repair.dead == [] and repair.failures is not None
        assert repair.detected_at - failed_at < DETECTION_BOUND_S
        assert client.predict(entailment_fields["image"], entailment_fields["hypothesis"])
        assert re.fullmatch(r"watchdog: ofa_postprocess failed 1 requests in its backend "
                            r"\(nv_inference_request_failure BACKEND \d+ -> \d+\), its stubs "
                            r"alive \(hung or stopped\?\); reloaded ofa_postprocess in place "
                            r"\(new stubs: pids \d+\) in \d+\.\d s", repair.line), repair.line
        deadline = time.monotonic() + 10
        while victim.pid in {s.pid for s in stub_processes(server.process.pid)}:
            assert time.monotonic() < deadline, "the stopped stub was not reaped"
            time.sleep(0.2)
        assert (f"watchdog: killed ofa_postprocess_0_0 (pid {victim.pid}), a stub of the "
                "replaced ofa_postprocess still running after the repair") in lines[-1], lines
    finally:
        try:
            os.kill(victim.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_failed_repair_is_logged_and_retried_with_back_off(server, watchdog_factory):
    """A wrong admin key: Triton refuses the repository API (403), the watchdog says so and
    tries again 1 s, then 2 s later; once the key is right, the next attempt repairs."""
    watchdog, lines = watchdog_factory(admin_key="not-the-key")
    victim = next(stub for stub in watchdog.watched() if stub.model == "ofa_encoder_decoder")
    os.kill(victim.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while len(watchdog.repairs) < 2:
        assert time.monotonic() < deadline and watchdog.is_alive(), lines
        time.sleep(0.1)
    watchdog.admin_key = ADMIN_KEY
    repair = repair_of(watchdog, victim.pid, 30)
    failed = [r for r in watchdog.repairs if not r.ok]
    assert len(failed) >= 2 and watchdog.repairs[-1] is repair
    for attempt, (first, second) in enumerate(zip(failed, failed[1:]), start=1):
        assert second.started_at - first.finished_at >= 2 ** (attempt - 1)   # back-off
    for attempt, line in enumerate(lines[:2], start=1):
        assert re.fullmatch(
            rf"watchdog: ofa_encoder_decoder instance ofa_encoder_decoder_0_0 \(pid "
            rf"{victim.pid}\) died.*; reload of ofa_encoder_decoder failed: reading its "
            rf"configuration: HTTP 403: .*; retrying in {2 ** (attempt - 1)} s", line), line
    assert lines[-1] == repair.line and " reloaded ofa_encoder_decoder in place " in repair.line


def test_without_explicit_model_control_the_server_is_restarted(repository, entailment_fields,
                                                               tmp_path):
    """``ofa-triton serve``'s default (model control none): the watchdog restarts the server
    through ForegroundServer (what run_foreground wires), whose wait() outlives the restart;
    a signal then stops it, and no stub of either server is left."""
    options = ServerOptions.loopback(repository,
                                     extra_args=(f"--exit-timeout-secs={EXIT_TIMEOUT_S}",))
    argv, env = server_command(options, tmp_path)
    lines: list[str] = []
    with open(tmp_path / "server.log", "wb") as output:
        server = ForegroundServer(options, argv, env, stop_timeout_s=2.0, log=lines.append,
                                  stdout=output)
        health = ServiceHealth(f"127.0.0.1:{options.http_port}", [ENSEMBLE],
                               server_state=server.state, watchdog=lambda: server.watchdog)
        endpoint = HealthEndpoint(health, "127.0.0.1", 0)
        ready_url = f"http://127.0.0.1:{endpoint.port}/ready"
        server.start()
        endpoint.start()
        waited: list[int] = []
        waiter = threading.Thread(target=lambda: waited.append(server.wait()), daemon=True)
        waiter.start()
        try:
            assert server.watchdog.baseline_taken.wait(120), "no baseline"
            first_pid = server.pid
            victim = next(s for s in server.watchdog.watched() if s.model == "ofa_encoder_decoder")
            with ReadinessProbe(ready_url) as service:
                time.sleep(0.5)
                killed_at = time.monotonic()
                os.kill(victim.pid, signal.SIGKILL)
                repair = repair_of(server.watchdog, victim.pid, 120)
                time.sleep(0.5)
            print(f"restart: detected {repair.detected_at - killed_at:.2f} s, serving again "
                  f"{repair.finished_at - killed_at:.2f} s after the kill")
            # Not ready while the server restarts and loads its models.
            assert_the_service_was_not_ready_while_broken(service, killed_at, repair)
            assert repair.action == "restart" and server.pid != first_pid
            assert re.fullmatch(rf"watchdog: ofa_encoder_decoder instance "
                                rf"ofa_encoder_decoder_0_0 \(pid {victim.pid}\) died; restarted "
                                rf"tritonserver \(pid {first_pid} -> {server.pid}\) in "
                                rf"\d+\.\d s", repair.line), repair.line
            with VisualEntailmentClient(f"127.0.0.1:{options.http_port}") as client:
                assert client.predict(entailment_fields["image"], entailment_fields["hypothesis"])
            assert waiter.is_alive(), "wait() returned on the restart"
            assert stub_processes(first_pid) == []
        finally:
            server.send_signal(signal.SIGINT)
            # From the signal on, a load balancer is told to stop sending.
            stopping = health.report()
            waiter.join(60)
            server.close()
            report = health.report()
            endpoint.close()
    assert not stopping.ready and stopping.reasons[0] in (
        "tritonserver is shutting down (finishing the requests it has)", "tritonserver has exited")
    assert (report.ready, report.live, report.reasons) == (False, False,
                                                           ["tritonserver has exited"])
    assert waited and not server.watchdog.is_alive()
    deadline = time.monotonic() + 10    # SIGKILLed stubs take a moment to leave /proc
    while stub_processes(server.pid) or stub_processes(first_pid):
        assert time.monotonic() < deadline, stub_processes(server.pid)
        time.sleep(0.1)
    assert lines == [repair.line]


def test_a_short_chaos_run(repository, tmp_path):
    """benchmarks.chaos for 15 s with two kills (so that it cannot rot)."""
    from benchmarks.chaos import ChaosConfig, run_chaos, write_results

    config = ChaosConfig(seconds=15, kills=2, interval_s=5, first_kill_s=3, tail_s=5)
    result = run_chaos(repository, config, tmp_path)
    write_results(result, tmp_path / "chaos.json")
    summary = result["summary"]
    assert result["passed"], result["failures"]
    assert summary["kills"] == summary["repaired"] == 2
    assert [row["step"] for row in result["kills"]] == ["ofa_preprocess", "ofa_encoder_decoder"]
    assert summary["failed_after_recovery"] == 0 and summary["requests_ok"] > 0
    for row in result["kills"]:
        assert row["detection_s"] < DETECTION_BOUND_S
        assert row["recovery_s"] < RECOVERY_BOUND_S
        assert row["watchdog_line"].startswith(f"watchdog: {row['step']} instance ")
        # The service's /ready: 503 within the detection bound, 200 again by the recovery.
        assert row["service_ready_while_broken"] == 0
        assert row["service_not_ready_s"] < DETECTION_BOUND_S
        assert row["service_not_ready_s"] < row["service_ready_again_s"]
        assert row["service_ready_again_s"] < row["recovery_s"] + 1.0
