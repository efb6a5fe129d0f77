"""Self-healing for Python-backend stubs: find a dead or failing stub within about a second
and replace it, without a person.

Triton 2.51 does not restart a stub that died (docs/faults.md): every batch scheduled on its
instance fails with "Stub process '<instance>' is not healthy." while the readiness probes stay
200 and the log says nothing. A ``Watchdog`` (a thread beside the server) watches one running
tritonserver and repairs what it finds:

- **stubs**: every ``poll_s`` (0.25 s), the server's live stubs (``server.stub_processes``)
  against the instances seen when the server became ready and after each repair. An instance
  of a model version that is still READY with no live stub has died (an operator's unload or
  a reload makes the version not ready, or starts the new stubs first, so neither counts);
- **failure counters**: every ``metrics_poll_s`` (1 s), ``nv_inference_request_failure
  {reason="BACKEND"}`` of each composing model. Bad input never counts there (a step answers
  it as a per-request error, counted as a success), so a rise means a stub that no longer
  answers (a hung or stopped one, alive but "not healthy") or an exception that escaped
  ``execute()``. Ensembles are never repaired (their steps are).

Repairs, with explicit model control (the model-repository API, with the admin key if set):
- ``method="reload"`` (the default): load the model with its own configuration (read back
  from the server) plus one parameter that changes each time, ``ofa_triton_watchdog_reload``.
  A changed configuration makes Triton reload the model atomically: new instances (new stubs)
  load and warm up while the old model keeps its place, then take over; the ensembles stay
  ready throughout and no request fails because of the repair. (A plain ``load`` of unchanged
  files does nothing, docs/faults.md.) The models ignore parameters they do not know;
- ``method="unload-load"``: unload the model, then load it: the ensembles that use it are
  unavailable (``/v2/models/<ensemble>/ready`` is not ready, requests get 404 / NOT_FOUND)
  until it is loaded again, 1.5-2 s here.
Either way the watchdog waits until the model and the ensembles using it are ready again and
then watches the new stubs. Triton 2.51 never finishes unloading the old instances when the
dead stub had been given a batch, so their surviving stubs (the other ``ofa_preprocess``
instance, or a hung stub) keep running; the watchdog kills them ``reap_after_s`` (10 s) after
the repair.

Without explicit model control, the watchdog calls ``restart`` (given by the caller, e.g.
``ForegroundServer.restart`` for ``ofa-triton serve``): stop the server with a short grace,
kill its leftover stubs, start it again; it returns the new server's pid. With explicit model
control it is used only after ``reload_failures_before_restart`` failed reloads (None, the
default: never; a server whose models cannot load again would not start either).

Every action is one line through ``log`` (stderr by default), saying what happened and what
was done; a repair that fails is logged and retried with back-off. Nothing the watchdog does
raises into its caller.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from .server import LOCAL_HTTP, ServerOptions, admin_headers, local_address, stub_processes

RELOAD_PARAMETER = "ofa_triton_watchdog_reload"
METHODS = ("reload", "unload-load")


# --- the failure counters: parsing and deciding (pure, unit-tested) ------------------------

_FAILURE_LINE = re.compile(r"^nv_inference_request_failure\{([^}]*)\}\s+(\S+)", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def backend_failures(metrics_text: str) -> dict[str, float]:
    """``nv_inference_request_failure{reason="BACKEND"}`` per model (summed over versions)
    from Triton's Prometheus text."""
    counts: dict[str, float] = {}
    for labels, value in _FAILURE_LINE.findall(metrics_text):
        fields = dict(_LABEL.findall(labels))
        if fields.get("reason") != "BACKEND" or "model" not in fields:
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        counts[fields["model"]] = counts.get(fields["model"], 0.0) + number
    return counts


def failure_rises(before: Mapping[str, float], after: Mapping[str, float],
                  models: Iterable[str]) -> dict[str, tuple[float, float]]:
    """The ``models`` whose BACKEND failures rose from ``before`` to ``after``: model ->
    (before, after). A model missing from either side (not loaded then), or whose counter
    went down (Triton dropped and re-created it), is not a rise."""
    rises = {}
    for model in models:
        if model in before and model in after and after[model] > before[model]:
            rises[model] = (before[model], after[model])
    return rises


@dataclasses.dataclass(frozen=True)
class StubInfo:
    pid: int
    instance: str
    model: str
    version: str


@dataclasses.dataclass
class Problem:
    """What is wrong with one composing model."""
    model: str
    dead: list[StubInfo] = dataclasses.field(default_factory=list)   # instances with no stub
    failures: tuple[float, float] | None = None                       # BACKEND counter rise
    detected_at: float = 0.0                                          # time.monotonic()

    def describe(self) -> str:
        """What happened, for the log line: "ofa_preprocess instance ofa_preprocess_0_1
        (pid 1234) died", or "ofa_postprocess failed 3 requests in its backend (...)"."""
        parts = []
        if self.dead:
            names = ", ".join(f"{stub.instance} (pid {stub.pid})" for stub in self.dead)
            plural = "instances" if len(self.dead) > 1 else "instance"
            parts.append(f"{self.model} {plural} {names} died")
        if self.failures is not None:
            before, after = self.failures
            what = (f"{self.model} failed {after - before:g} requests in its backend "
                    f"(nv_inference_request_failure BACKEND {before:g} -> {after:g})")
            parts.append(what if not self.dead else what.split(" ", 1)[1])
            if not self.dead:
                parts[-1] += ", its stubs alive (hung or stopped?)"
        return " and ".join(parts) if parts else f"{self.model} is unhealthy"


def plan_repairs(dead: Mapping[str, list[StubInfo]],
                 rises: Mapping[str, tuple[float, float]], ensembles: Iterable[str],
                 now: float) -> dict[str, Problem]:
    """One problem per composing model that has a dead instance or rising BACKEND failures;
    ensembles are left out (repairing their steps brings them back)."""
    ensembles = set(ensembles)
    problems: dict[str, Problem] = {}
    for model, stubs in dead.items():
        if stubs and model not in ensembles:
            problems[model] = Problem(model, dead=list(stubs), detected_at=now)
    for model, rise in rises.items():
        if model in ensembles:
            continue
        problems.setdefault(model, Problem(model, detected_at=now)).failures = rise
    return problems


# --- what was done ------------------------------------------------------------------------

@dataclasses.dataclass
class Repair:
    """One repair (attempt): for tests, the chaos benchmark and anyone embedding the
    watchdog. Times are ``time.monotonic()``."""
    model: str                      # or several, comma-separated, for a restart
    what: str                       # Problem.describe()
    dead: list[StubInfo]
    failures: tuple[float, float] | None
    action: str                     # "reload", "unload-load" or "restart"
    detected_at: float
    started_at: float
    finished_at: float
    ok: bool
    line: str
    error: str | None = None
    new_pids: list[int] = dataclasses.field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.finished_at - self.started_at


class RepairError(RuntimeError):
    pass


# --- the watchdog -------------------------------------------------------------------------

def log_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _stub_version(pid: int) -> str | None:
    """The version directory of a stub's model.py (argv[1]: <repository>/<model>/<version>/
    model.py in Triton 2.51); None once it has exited."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    return Path(argv[1]).parent.name if len(argv) > 1 else None


def _process_alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet waited for, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


class Watchdog(threading.Thread):
    """Watches one tritonserver and repairs its Python stubs (module docstring).

    ``start()`` it as soon as the server process runs: it waits for ``/v2/health/ready`` (as
    long as the server lives) before it takes the baseline. ``stop()`` ends it; a repair under
    way finishes first (``stop(wait=False)`` returns at once)."""

    def __init__(self, server_pid: int, http_url: str, metrics_url: str | None = None, *,
                 admin_key: str | None = None, model_control: str = "none",
                 restart: Callable[[], int] | None = None, method: str = "reload",
                 poll_s: float = 0.25, metrics_poll_s: float = 1.0, settle_s: float = 5.0,
                 ready_timeout_s: float = 600.0, reap_after_s: float | None = 10.0,
                 reload_failures_before_restart: int | None = None,
                 log: Callable[[str], None] | None = None):
        super().__init__(name="ofa-triton-watchdog", daemon=True)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {method!r}")
        if model_control not in ("none", "explicit"):
            raise ValueError(f"model_control must be 'none' or 'explicit', not {model_control!r}")
        self.server_pid = server_pid
        self.http_url = http_url.removeprefix("http://").rstrip("/")
        self.metrics_url = metrics_url
        self.admin_key = admin_key
        self.model_control = model_control
        self.restart_server = restart
        self.method = method
        self.poll_s, self.metrics_poll_s, self.settle_s = poll_s, metrics_poll_s, settle_s
        self.ready_timeout_s, self.reap_after_s = ready_timeout_s, reap_after_s
        self.reload_failures_before_restart = reload_failures_before_restart
        self.log = log or log_to_stderr
        self.repairs: list[Repair] = []          # every attempt, in order
        self.baseline_taken = threading.Event()  # set after each (re)baseline
        self._stopping = threading.Event()
        self._expected: dict[tuple[str, str, str], int] = {}   # (model, version, instance) -> pid
        self._versions: dict[int, str] = {}                    # pid -> version (cache)
        self._superseded: dict[int, tuple[StubInfo, float]] = {}   # old stubs -> reap time
        self._ensembles: dict[str, list[str]] = {}             # ensemble -> its steps
        self._failure_baseline: dict[str, float] = {}
        self._quiet_until: dict[str, float] = {}
        self._next_metrics = 0.0
        self._pending: dict[str, Problem] = {}
        self._attempts: dict[str, int] = {}
        self._next_attempt: dict[str, float] = {}
        self._failing_repairs: dict[str, tuple[int, float]] = {}   # metrics-only repairs
        self._generation = 0

    # -- construction helpers --------------------------------------------------------------

    @classmethod
    def for_options(cls, options: ServerOptions, server_pid: int, **settings) -> "Watchdog":
        """For a server started with ``options`` (``ofa-triton serve``, ``TritonServer``)."""
        host = local_address(options.host)
        settings = {"admin_key": options.admin_key, "model_control": options.model_control,
                    **settings}
        return cls(server_pid, f"{host}:{options.http_port}",
                   f"http://{host}:{options.metrics_port}/metrics", **settings)

    @classmethod
    def for_server(cls, server, **settings) -> "Watchdog":
        """For a started ``ofa_triton.server.TritonServer``."""
        return cls.for_options(server.options, server.process.pid, **settings)

    # -- the thread ------------------------------------------------------------------------

    def stop(self, wait: bool = True, timeout: float | None = 30.0) -> None:
        self._stopping.set()
        if wait and self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        try:
            if not self._wait_until_ready(None):
                return
            self._take_baseline()
            while not self._stopping.wait(self.poll_s):
                if not _process_alive(self.server_pid):
                    return    # the server exited on its own: whoever started it decides
                try:
                    self._tick()
                except Exception as error:   # never let a bug end the watch silently
                    self.log(f"watchdog: internal error, carrying on: "
                             f"{type(error).__name__}: {error}")
                    self._stopping.wait(5.0)
        except Exception as error:
            self.log(f"watchdog: stopped by an internal error: {type(error).__name__}: {error}")

    # -- HTTP ------------------------------------------------------------------------------

    def _request(self, path: str, body: bytes | None = None, *, admin: bool = False,
                 timeout: float = 5.0) -> tuple[int, bytes]:
        """(status, body); status 0 when the server did not answer."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if admin and self.admin_key:
            headers.update(admin_headers("http", self.admin_key))
        request = urllib.request.Request(f"http://{self.http_url}{path}", data=body,
                                         headers=headers,
                                         method="POST" if body is not None else "GET")
        try:
            with LOCAL_HTTP.open(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except (OSError, ValueError) as error:
            return 0, str(error).encode()

    def _ready(self, model: str | None = None, version: str | None = None) -> bool:
        if model is None:
            path = "/v2/health/ready"
        elif version is None:
            path = f"/v2/models/{model}/ready"
        else:
            path = f"/v2/models/{model}/versions/{version}/ready"
        return self._request(path, timeout=2.0)[0] == 200

    def _live(self) -> bool:
        return self._request("/v2/health/live", timeout=2.0)[0] == 200

    def _wait_until_ready(self, timeout: float | None,
                          models: Iterable[str] | None = None) -> bool:
        """Until the server (or each of ``models``) is ready; False when stopped, when the
        server exited, or after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        models = list(models) if models is not None else None
        while not self._stopping.is_set():
            if not _process_alive(self.server_pid):
                return False
            if models is None:
                if self._ready():
                    return True
            elif all(self._ready(model) for model in models):
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            self._stopping.wait(0.1)
        return False

    def _metrics(self) -> dict[str, float] | None:
        if not self.metrics_url:
            return None
        try:
            with LOCAL_HTTP.open(self.metrics_url, timeout=5.0) as response:
                return backend_failures(response.read().decode(errors="replace"))
        except (OSError, ValueError):
            return None

    # -- baseline --------------------------------------------------------------------------

    def _live_stubs(self) -> dict[tuple[str, str, str], int]:
        """(model, version, instance) -> pid of the server's live stubs, leaving out those
        that repairs replaced."""
        live = {}
        for stub in stub_processes(self.server_pid):
            if stub.pid in self._superseded:
                continue
            version = self._versions.get(stub.pid) or _stub_version(stub.pid)
            if version is None:
                continue
            self._versions[stub.pid] = version
            key = (stub.model, version, stub.instance)
            live[key] = max(stub.pid, live.get(key, 0))   # a duplicate: the newer one
        return live

    def _discover_ensembles(self) -> None:
        """Ensembles and their steps, from the server (index and configs; the admin key
        unlocks them). Best effort: without them, repairs wait for the server's readiness."""
        status, body = self._request("/v2/repository/index", b"{}", admin=True)
        if status != 200:
            return
        try:
            names = [entry["name"] for entry in json.loads(body) if entry.get("name")]
        except (ValueError, TypeError, KeyError):
            return
        ensembles = {}
        for name in dict.fromkeys(names):
            status, body = self._request(f"/v2/models/{name}/config", admin=True)
            if status != 200:
                continue
            try:
                config = json.loads(body)
            except ValueError:
                continue
            if config.get("platform") == "ensemble":
                steps = config.get("ensemble_scheduling", {}).get("step", [])
                ensembles[name] = [step.get("model_name") for step in steps
                                   if step.get("model_name")]
        self._ensembles = ensembles

    def _take_baseline(self) -> None:
        self._expected = self._live_stubs()
        self._discover_ensembles()
        self._failure_baseline = self._metrics() or {}
        self._quiet_until.clear()
        self.baseline_taken.set()

    def watched(self) -> list[StubInfo]:
        """The stubs it expects to be alive now (a snapshot; safe from any thread)."""
        expected, versions = dict(self._expected), dict(self._versions)
        return [StubInfo(pid, instance, model, versions.get(pid, version))
                for (model, version, instance), pid in sorted(expected.items())]

    def unrepaired(self) -> list[str]:
        """What it has found broken and not yet repaired, one line per model (a snapshot; safe
        from any thread): the service's readiness is false while this is not empty
        (ofa_triton.service_health)."""
        pending, attempts = dict(self._pending), dict(self._attempts)
        next_attempt = dict(self._next_attempt)
        lines = []
        for model, problem in sorted(pending.items()):
            failed = attempts.get(model, 0)
            if self.model_control != "explicit" and self.restart_server is None:
                state = ("not repairable without explicit model control; restart the server")
            elif failed == 0:
                state = "being repaired"
            else:
                wait = max(0.0, next_attempt.get(model, 0.0) - time.monotonic())
                state = (f"{failed} repair(s) failed, next in {wait:.0f} s (the server log "
                         "has the watchdog's lines)")
            lines.append(f"{problem.describe()}: {state}")
        return lines

    def ensembles_using(self, model: str) -> list[str]:
        return [name for name, steps in self._ensembles.items() if model in steps]

    # -- one look --------------------------------------------------------------------------

    def _find_dead(self) -> dict[str, list[StubInfo]]:
        live = self._live_stubs()
        for key, pid in live.items():
            self._expected[key] = pid        # new instances (a load, a reload) are adopted
        missing = [key for key in self._expected if key not in live]
        if not missing:
            return {}
        if not self._live():
            return {}                         # shutting down, or not answering: not ours
        dead: dict[str, list[StubInfo]] = {}
        readiness: dict[tuple[str, str], bool] = {}
        for key in missing:
            model, version, instance = key
            if (model, version) not in readiness:
                readiness[(model, version)] = self._ready(model, version)
            if readiness[(model, version)]:
                dead.setdefault(model, []).append(
                    StubInfo(self._expected[key], instance, model, version))
            else:
                # Unloaded on purpose (or a version a deploy dropped): stop expecting it.
                del self._expected[key]
        return dead

    def _find_rises(self, now: float) -> dict[str, tuple[float, float]]:
        if now < self._next_metrics:
            return {}
        self._next_metrics = now + self.metrics_poll_s
        counts = self._metrics()
        if counts is None:
            return {}
        watched = {model for model, _, _ in self._expected} - set(self._ensembles)
        quiet = {model for model, until in self._quiet_until.items() if now < until}
        rises = failure_rises(self._failure_baseline, counts, watched - quiet)
        self._failure_baseline = counts
        return rises

    def _tick(self) -> None:
        now = time.monotonic()
        dead = self._find_dead()
        rises = self._find_rises(now)
        for model, problem in plan_repairs(dead, rises, self._ensembles, now).items():
            pending = self._pending.get(model)
            if pending is None:
                self._pending[model] = problem
                # Detected once published (unrepaired() shows it, the service is not ready),
                # not when the tick began: a stub killed during the scans would otherwise
                # count as detected before its death.
                problem.detected_at = time.monotonic()
            else:
                known = {stub.pid for stub in pending.dead}
                pending.dead += [stub for stub in problem.dead if stub.pid not in known]
                if problem.failures is not None:
                    low = (pending.failures or problem.failures)[0]
                    pending.failures = (low, problem.failures[1])
        self._repair_due(now)
        self._reap(time.monotonic())

    # -- repairs ---------------------------------------------------------------------------

    def _hold_off(self, problem: Problem, now: float) -> float:
        """Repeated repairs of a model whose stubs are alive but keep failing (a bug that
        raises in execute() would otherwise reload it every few seconds): 10 s after the
        first, doubling to 5 minutes; forgotten after 10 quiet minutes."""
        if problem.dead:
            return 0.0
        count, last = self._failing_repairs.get(problem.model, (0, 0.0))
        if not count or now - last > 600:
            return 0.0
        return max(0.0, last + min(300.0, 10.0 * 2 ** (count - 1)) - now)

    def _repair_due(self, now: float) -> None:
        due = [model for model, problem in self._pending.items()
               if now >= self._next_attempt.get(model, 0.0)
               and self._hold_off(problem, now) == 0.0]
        if not due:
            return
        escalate = self.reload_failures_before_restart
        use_restart = self.restart_server is not None and (
            self.model_control != "explicit"
            or (escalate is not None
                and any(self._attempts.get(model, 0) >= escalate for model in due)))
        if use_restart:
            self._restart([self._pending[model] for model in self._pending])
            return
        if self.model_control != "explicit":
            for model in due:
                problem = self._pending[model]
                if self._attempts.get(model, 0) == 0:
                    self.log(f"watchdog: {problem.describe()}; cannot repair it: the server "
                             "runs without explicit model control and no restart was given "
                             "(restart the server)")
                self._attempts[model] = self._attempts.get(model, 0) + 1
                self._next_attempt[model] = float("inf")
            return
        for model in due:
            if self._stopping.is_set():
                return
            self._reload(self._pending[model])

    def _backoff(self, model: str) -> float:
        attempts = self._attempts.get(model, 0) + 1
        self._attempts[model] = attempts
        delay = min(60.0, 2.0 ** (attempts - 1)) * (1 + 0.1 * random.random())
        self._next_attempt[model] = time.monotonic() + delay
        return delay

    def _reload(self, problem: Problem) -> None:
        model = problem.model
        before = set(self._expected.values()) | {
            stub.pid for stub in stub_processes(self.server_pid)}
        started = time.monotonic()
        action = self.method
        try:
            if self.method == "reload":
                self._load_with_new_configuration(model)
                done = f"reloaded {model} in place"
            else:
                self._unload_then_load(model)
                done = f"unloaded and loaded {model}"
            waited = self.ensembles_using(model)
            if not self._wait_until_ready(self.ready_timeout_s, [model, *waited]):
                if self._stopping.is_set():
                    return
                raise RepairError(f"{model} or {', '.join(waited) or 'its ensembles'} not "
                                  f"ready {self.ready_timeout_s:.0f} s after the load")
        except (RepairError, OSError) as error:
            delay = self._backoff(model)
            line = (f"watchdog: {problem.describe()}; {action} of {model} failed: {error}; "
                    f"retrying in {delay:.0f} s")
            self._record(problem, action, started, False, line, str(error))
            return
        new_pids = self._rebaseline(model, before)
        finished = self._repaired(model, problem)
        line = (f"watchdog: {problem.describe()}; {done} (new stubs: pids "
                f"{', '.join(map(str, new_pids)) or 'none seen'}) in {finished - started:.1f} s")
        self._record(problem, action, started, True, line, new_pids=new_pids,
                     finished_at=finished)

    def _load_with_new_configuration(self, model: str) -> None:
        status, body = self._request(f"/v2/models/{model}/config", admin=True)
        if status != 200:
            raise RepairError(f"reading its configuration: {_http_error(status, body)}")
        try:
            config = json.loads(body)
        except ValueError as error:
            raise RepairError(f"its configuration is not JSON: {error}") from None
        self._generation += 1
        parameters = config.get("parameters") or {}
        parameters[RELOAD_PARAMETER] = {"string_value": f"{time.time():.3f}-{self._generation}"}
        config["parameters"] = parameters
        payload = json.dumps({"parameters": {"config": json.dumps(config)}}).encode()
        status, body = self._request(f"/v2/repository/models/{model}/load", payload,
                                     admin=True, timeout=self.ready_timeout_s)
        if status != 200:
            raise RepairError(f"load: {_http_error(status, body)}")

    def _unload_then_load(self, model: str) -> None:
        status, body = self._request(f"/v2/repository/models/{model}/unload", b"{}", admin=True)
        if status != 200:
            raise RepairError(f"unload: {_http_error(status, body)}")
        status, body = self._request(f"/v2/repository/models/{model}/load", b"{}", admin=True,
                                     timeout=self.ready_timeout_s)
        if status != 200:
            raise RepairError(f"load: {_http_error(status, body)}")

    def _rebaseline(self, model: str, before: set[int]) -> list[int]:
        """Expect the new stubs of ``model``; the ones it had (a survivor of the old
        instances, a hung one) are reaped later."""
        reap_at = time.monotonic() + (self.reap_after_s if self.reap_after_s is not None
                                      else float("inf"))
        new_pids = []
        for key in [key for key in self._expected if key[0] == model]:
            del self._expected[key]
        for stub in stub_processes(self.server_pid):
            if stub.model != model:
                continue
            version = _stub_version(stub.pid)
            if version is None:
                continue
            if stub.pid in before:
                self._superseded.setdefault(
                    stub.pid, (StubInfo(stub.pid, stub.instance, model, version), reap_at))
            else:
                self._versions[stub.pid] = version
                self._expected[(model, version, stub.instance)] = stub.pid
                new_pids.append(stub.pid)
        return sorted(new_pids)

    def _repaired(self, model: str, problem: Problem) -> float:
        """Forget the problem; returns when it was forgotten (``Repair.finished_at``: the
        service's readiness is true again from then on)."""
        self._attempts.pop(model, None)
        self._next_attempt.pop(model, None)
        now = time.monotonic()
        if problem.dead:
            self._failing_repairs.pop(model, None)
        else:
            count, _ = self._failing_repairs.get(model, (0, 0.0))
            self._failing_repairs[model] = (count + 1, now)
        # Batches that were queued on the dead instance still fail for a moment (1 s each):
        # not a new problem.
        self._quiet_until[model] = now + self.settle_s
        counts = self._metrics()
        if counts is not None and model in counts:
            self._failure_baseline[model] = counts[model]
        self._pending.pop(model, None)    # last: unrepaired() is empty from here on
        return time.monotonic()

    def _restart(self, problems: list[Problem]) -> None:
        models = ", ".join(problem.model for problem in problems)
        what = "; ".join(problem.describe() for problem in problems)
        started = time.monotonic()
        old_pid = self.server_pid
        try:
            new_pid = self.restart_server()
            if not isinstance(new_pid, int):
                raise RepairError(f"the restart callback returned {new_pid!r}, not a pid")
            self.server_pid = new_pid
            self._superseded.clear()
            self._versions.clear()
            if not self._wait_until_ready(self.ready_timeout_s):
                if self._stopping.is_set():
                    return
                raise RepairError(f"the new tritonserver (pid {new_pid}) not ready "
                                  f"{self.ready_timeout_s:.0f} s after its start")
        except Exception as error:   # the callback is the caller's code: anything may come
            delay = 0.0
            for problem in problems:
                delay = self._backoff(problem.model)
            line = (f"watchdog: {what}; restarting tritonserver (pid {old_pid}) failed: "
                    f"{type(error).__name__}: {error}; retrying in {delay:.0f} s")
            self._record_many(problems, models, started, False, line, str(error))
            return
        self._take_baseline()
        finished = max(self._repaired(problem.model, problem) for problem in problems)
        line = (f"watchdog: {what}; restarted tritonserver (pid {old_pid} -> {new_pid}) in "
                f"{finished - started:.1f} s")
        self._record_many(problems, models, started, True, line,
                          new_pids=sorted(self._expected.values()), finished_at=finished)

    def _record(self, problem: Problem, action: str, started: float, ok: bool, line: str,
                error: str | None = None, new_pids: list[int] | None = None,
                finished_at: float | None = None) -> None:
        self.repairs.append(Repair(problem.model, problem.describe(), list(problem.dead),
                                   problem.failures, action, problem.detected_at, started,
                                   finished_at or time.monotonic(), ok, line, error,
                                   new_pids or []))
        self.log(line)

    def _record_many(self, problems: list[Problem], models: str, started: float, ok: bool,
                     line: str, error: str | None = None, new_pids: list[int] | None = None,
                     finished_at: float | None = None) -> None:
        self.repairs.append(Repair(
            models, "; ".join(p.describe() for p in problems),
            [stub for p in problems for stub in p.dead],
            next((p.failures for p in problems if p.failures), None), "restart",
            min(p.detected_at for p in problems), started, finished_at or time.monotonic(), ok,
            line, error, new_pids or []))
        self.log(line)

    def kill_replaced_stubs(self) -> None:
        """Kill now, rather than ``reap_after_s`` after their repair, the stubs of replaced
        instances that still run (for a caller that stops the watchdog and keeps the
        server)."""
        for pid, (stub, _) in list(self._superseded.items()):
            self._superseded[pid] = (stub, 0.0)
        self._reap(float("inf"))

    def _reap(self, now: float) -> None:
        due = [pid for pid, (_, at) in self._superseded.items() if now >= at]
        killed = []
        for pid in due:
            stub, _ = self._superseded.pop(pid)
            if not _process_alive(pid) or _stub_version(pid) != stub.version:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(stub)
            except (ProcessLookupError, PermissionError):
                pass
        for stub in killed:
            self.log(f"watchdog: killed {stub.instance} (pid {stub.pid}), a stub of the "
                     f"replaced {stub.model} still running after the repair (Triton 2.51 "
                     "leaves the old instances when the dead stub had been given a batch)")


def _http_error(status: int, body: bytes) -> str:
    if status == 0:
        return f"no answer ({body.decode(errors='replace')[:200]})"
    try:
        message = json.loads(body).get("error") or body.decode(errors="replace")
    except (ValueError, AttributeError):
        message = body.decode(errors="replace")
    return f"HTTP {status}: {message[:300]}"
