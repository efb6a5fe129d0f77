"""Chaos: stubs killed under steady load while the watchdog repairs them.

    python -m benchmarks.chaos --seconds 60
    python -m benchmarks.chaos --seconds 60 --method unload-load    # the other repair

1. generate and export the tiny checkpoint into work/chaos/ (or serve --repository as it is);
2. start tritonserver with explicit model control and an admin key, the watchdog
   (ofa_triton.watchdog) and the service's health endpoint beside it;
3. closed-loop load at concurrency 8 (benchmarks.loadgen's TritonTarget, every request
   recorded: when sent, when answered, the error if any);
4. every --interval seconds SIGKILL a random stub of the next step in turn (ofa_preprocess,
   ofa_encoder_decoder, ofa_postprocess, ...). A kill waits until the previous one is repaired,
   so that each kill is measured on its own; none comes in the last --tail seconds.

Per kill: the detection time (kill to the watchdog noticing), the repair's own duration, the
recovery time (kill to the model and its ensemble ready again on new stubs), the
service's readiness (``ofa-triton serve``'s /ready, ofa_triton.service_health, probed every
50 ms: when it said 503 after the kill, when 200 again), the first success (completion of the first request sent after the kill that succeeded: the step
answers again; for ofa_preprocess the other instance answers at once), the failed requests
(attributed by the instance their error names, else to the latest kill), and the failures
of requests sent after the recovery, which must be none.

Criteria (exit status 1 when one fails): every kill is repaired, no request sent after its
kill's recovery fails, no request fails before the first kill, /ready says 503 after every
repaired kill and never 200 between a detection and the end of its repair. Writes
benchmarks/results/chaos.json (with the commit measured, "-dirty" when tracked files
differed from it) and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import re
import secrets
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks.soak import prepare_repository   # a fresh tiny export, as the soak's
from ofa_triton.triton_config import ENSEMBLE_MODEL, ServingOptions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "work" / "chaos"
_NAMES = ServingOptions().names()
# The entailment ensemble's three steps in the order requests pass them (each killed in turn).
STEPS = (_NAMES.preprocess, _NAMES.encoder_decoder,
         *sorted(set(_NAMES.by_template().values())
                 - {_NAMES.preprocess, _NAMES.encoder_decoder, ENSEMBLE_MODEL}))
_STUB_IN_ERROR = re.compile(r"Stub process '([^']+)' is not healthy")


@dataclasses.dataclass
class ChaosConfig:
    seconds: float = 60.0
    concurrency: int = 8
    interval_s: float = 6.0          # between kills (scheduled; a kill waits for the repair)
    first_kill_s: float = 5.0
    tail_s: float = 8.0              # no kill in the last tail_s seconds: room to recover
    kills: int | None = None         # at most this many
    method: str = "reload"           # the watchdog's repair (ofa_triton.watchdog.METHODS)
    seed: int = 0
    request_timeout_s: float = 60.0
    recovery_target_s: float = 5.0   # reported against, not a criterion
    exit_timeout_s: int = 5


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclasses.dataclass
class Outcome:
    sent: float
    done: float
    error: str | None


@dataclasses.dataclass
class Kill:
    step: str
    instance: str
    pid: int
    at: float


class ReadinessProbe:
    """GET a readiness URL every 50 ms from a thread: (sent, answered, ready) samples in
    time.monotonic() (also the tests' probe)."""

    def __init__(self, url: str, period_s: float = 0.05):
        self.url, self.period_s = url, period_s
        self.samples: list[tuple[float, float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="readiness-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            sent = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    ready = response.status == 200
            except OSError:   # 503 (HTTPError) or no answer
                ready = False
            self.samples.append((sent, time.monotonic(), ready))

    def __enter__(self) -> "ReadinessProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def between(self, start: float, end: float) -> list[bool]:
        """The answers to the probes sent at or after ``start`` and answered by ``end``."""
        return [ready for sent, done, ready in self.samples if start <= sent and done <= end]

    def first(self, ready: bool, after: float) -> float | None:
        """When the first probe sent at or after ``after`` that answered ``ready`` was sent."""
        return min((sent for sent, _, answer in self.samples
                    if sent >= after and answer == ready), default=None)


async def _drive(url: str, requests: list[dict], config: ChaosConfig, watchdog, start: float
                 ) -> tuple[list[Outcome], list[Kill]]:
    from benchmarks.loadgen import TritonTarget

    target = TritonTarget(url)
    await target.open()
    outcomes: list[Outcome] = []
    kills: list[Kill] = []
    stop_at = start + config.seconds
    counter = iter(range(10 ** 9))
    rng = random.Random(config.seed)

    async def worker() -> None:
        while (sent := time.monotonic()) < stop_at:
            request = requests[next(counter) % len(requests)]
            try:
                await asyncio.wait_for(target.send(request), config.request_timeout_s)
                error = None
            except Exception as caught:   # every failure is recorded and judged later
                error = f"{type(caught).__name__}: {caught}"[:300]
            outcomes.append(Outcome(sent, time.monotonic(), error))

    def repaired(kill: Kill) -> bool:
        return any(repair.ok and kill.pid in {stub.pid for stub in repair.dead}
                   for repair in list(watchdog.repairs))

    async def killer() -> None:
        next_at = start + config.first_kill_s
        index = 0
        while config.kills is None or index < config.kills:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            while kills and not repaired(kills[-1]) and time.monotonic() < stop_at:
                await asyncio.sleep(0.1)
            if time.monotonic() > stop_at - config.tail_s:
                return
            step = STEPS[index % len(STEPS)]
            stubs = [stub for stub in watchdog.watched() if stub.model == step]
            if not stubs:
                await asyncio.sleep(0.2)
                continue
            victim = rng.choice(stubs)
            try:
                os.kill(victim.pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            kills.append(Kill(step, victim.instance, victim.pid, time.monotonic()))
            log(f"  killed {victim.instance} (pid {victim.pid}) at "
                f"{kills[-1].at - start:.1f} s")
            index += 1
            next_at = kills[-1].at + config.interval_s

    try:
        await asyncio.gather(killer(), *(worker() for _ in range(config.concurrency)))
    finally:
        await target.close()
    return outcomes, kills


def attribute(outcomes: list[Outcome], kills: list[Kill]) -> dict[int, list[Outcome]]:
    """Failed outcome -> kill index: the latest kill of the instance its error names, else the
    latest kill before it was answered; -1 when it failed before any kill."""
    by_kill: dict[int, list[Outcome]] = {}
    for outcome in outcomes:
        if outcome.error is None:
            continue
        before = [i for i, kill in enumerate(kills) if kill.at <= outcome.done]
        named = _STUB_IN_ERROR.search(outcome.error)
        if named:
            same = [i for i in before if kills[i].instance == named.group(1)]
            before = same or before
        by_kill.setdefault(before[-1] if before else -1, []).append(outcome)
    return by_kill


def analyse(outcomes: list[Outcome], kills: list[Kill], repairs: list, start: float,
            config: ChaosConfig, service: ReadinessProbe | None = None) -> dict:
    failed_by_kill = attribute(outcomes, kills)
    rows, late = [], []
    for index, kill in enumerate(kills):
        repair = next((r for r in repairs if r.ok and kill.pid in {s.pid for s in r.dead}),
                      None)
        # The service's /ready (ofa_triton.service_health): 503 from the detection until the
        # repair finished, 200 again after.
        not_ready = service.first(False, kill.at) if service else None
        ready_again = (service.first(True, not_ready) if service and not_ready is not None
                       else None)
        ready_while_broken = (sum(service.between(repair.detected_at, repair.finished_at))
                              if service and repair else None)
        attempts = [r for r in repairs if kill.pid in {s.pid for s in r.dead}]
        recovered = repair.finished_at if repair else None
        first_success = min((o.done for o in outcomes
                             if o.error is None and o.sent >= kill.at), default=None)
        failed = failed_by_kill.get(index, [])
        # Failures caused by this kill (attributed to it) of requests sent after the step had
        # recovered: there must be none. (A request sent then may still fail because of the
        # next kill, if it is in flight when that comes: that one is the next kill's.)
        after_recovery = [o for o in failed if recovered is not None and o.sent >= recovered]
        late += after_recovery
        rows.append({
            "step": kill.step, "instance": kill.instance, "pid": kill.pid,
            "killed_at_s": round(kill.at - start, 3),
            "repaired": repair is not None,
            "repair_attempts": len(attempts),
            "detection_s": round(repair.detected_at - kill.at, 3) if repair else None,
            "repair_s": round(repair.seconds, 3) if repair else None,
            "recovery_s": round(recovered - kill.at, 3) if repair else None,
            "first_success_s": round(first_success - kill.at, 3) if first_success else None,
            "failed": len(failed),
            "last_failure_s": round(max(o.done for o in failed) - kill.at, 3) if failed
            else None,
            "failed_after_recovery": len(after_recovery),
            "service_not_ready_s": _since(not_ready, kill.at),
            "service_ready_again_s": _since(ready_again, kill.at),
            "service_ready_while_broken": ready_while_broken,
            "watchdog_line": repair.line if repair else None,
        })
    ok = [o for o in outcomes if o.error is None]
    latency = np.asarray([o.done - o.sent for o in ok]) * 1000 if ok else np.asarray([np.nan])
    summary = {
        "kills": len(kills),
        "repaired": sum(row["repaired"] for row in rows),
        "requests_ok": len(ok),
        "requests_failed": sum(o.error is not None for o in outcomes),
        "throughput": len(ok) / config.seconds,
        "latency_ok_ms": {"p50": float(np.percentile(latency, 50)),
                          "p99": float(np.percentile(latency, 99))},
        "failed_before_any_kill": len(failed_by_kill.get(-1, [])),
        "failed_after_recovery": sum(row["failed_after_recovery"] for row in rows),
        "failed_per_kill": _stats([row["failed"] for row in rows]),
        "detection_s": _stats([row["detection_s"] for row in rows]),
        "service_not_ready_s": _stats([row["service_not_ready_s"] for row in rows]),
        "service_ready_again_s": _stats([row["service_ready_again_s"] for row in rows]),
        "service_ready_while_broken": sum(row["service_ready_while_broken"] or 0
                                          for row in rows),
        "recovery_target_s": config.recovery_target_s,
        "within_target": sum(1 for row in rows if row["recovery_s"] is not None
                             and row["recovery_s"] <= config.recovery_target_s),
        "per_step": {step: {
            "kills": sum(row["step"] == step for row in rows),
            "recovery_s": _stats([row["recovery_s"] for row in rows if row["step"] == step]),
            "first_success_s": _stats([row["first_success_s"] for row in rows
                                       if row["step"] == step]),
            "failed_per_kill": _stats([row["failed"] for row in rows if row["step"] == step]),
        } for step in STEPS},
    }
    failures = []
    if summary["repaired"] != len(kills):
        failures.append(f"{len(kills) - summary['repaired']} of {len(kills)} kills were not "
                        "repaired")
    if summary["failed_after_recovery"]:
        failures.append(f"{summary['failed_after_recovery']} requests sent after a recovery "
                        f"failed (e.g. {late[0].error})")
    if summary["service_ready_while_broken"]:
        failures.append(f"the service's /ready said 200 {summary['service_ready_while_broken']}"
                        " times between a detection and the end of its repair")
    if service is not None and any(row["repaired"] and row["service_not_ready_s"] is None
                                   for row in rows):
        failures.append("the service's /ready never said 503 after a kill that was repaired")
    if summary["failed_before_any_kill"]:
        failures.append(f"{summary['failed_before_any_kill']} requests failed before any kill "
                        f"(e.g. {failed_by_kill[-1][0].error})")
    return {"summary": summary, "kills": rows, "failures": failures, "passed": not failures}


def _since(moment: float | None, origin: float) -> float | None:
    return None if moment is None else round(moment - origin, 3)


def _stats(values: list) -> dict | None:
    values = [value for value in values if value is not None]
    if not values:
        return None
    return {"mean": round(float(np.mean(values)), 3), "min": round(float(min(values)), 3),
            "max": round(float(max(values)), 3), "n": len(values)}


def run_chaos(repository: Path, config: ChaosConfig, work: Path) -> dict:
    """Serve ``repository`` with the watchdog, load it, kill stubs, judge."""
    from benchmarks.inputs import build_requests
    from benchmarks.loadgen import TritonTarget, run_load
    from ofa_triton.server import ServerOptions, TritonServer
    from ofa_triton.service_health import HealthEndpoint, ServiceHealth
    from ofa_triton.triton_config import ensemble_models
    from ofa_triton.watchdog import Watchdog

    work.mkdir(parents=True, exist_ok=True)
    requests = build_requests()
    lines: list[str] = []

    def watchdog_log(line: str) -> None:
        lines.append(line)
        log(line)

    options = ServerOptions.loopback(
        repository, model_control="explicit", admin_key=secrets.token_hex(16),
        extra_args=(f"--exit-timeout-secs={config.exit_timeout_s}",))
    server = TritonServer(options, log_path=work / "tritonserver.log")
    with server:
        server.wait_ready(600)
        watchdog = Watchdog.for_server(server, method=config.method, log=watchdog_log)
        watchdog.start()
        if not watchdog.baseline_taken.wait(60):
            raise RuntimeError("the watchdog took no baseline within 60 s")
        run_load(TritonTarget(server.http_url), requests, 2, 2.0, warmup=0)   # warm-up
        log(f"load at concurrency {config.concurrency} for {config.seconds:.0f} s, a kill "
            f"every {config.interval_s:.0f} s from {config.first_kill_s:.0f} s "
            f"(repair: {config.method})")
        # The service's readiness, as `ofa-triton serve` answers it, probed every 50 ms.
        health = ServiceHealth(server.http_url, ensemble_models(repository),
                               watchdog=lambda: watchdog)
        endpoint = HealthEndpoint(health, "127.0.0.1", 0).start()
        try:
            with ReadinessProbe(f"http://127.0.0.1:{endpoint.port}/ready") as service:
                start = time.monotonic()
                outcomes, kills = asyncio.run(_drive(server.http_url, requests, config,
                                                     watchdog, start))
                # The last kill's repair may still be finishing.
                deadline = time.monotonic() + 60
                while kills and time.monotonic() < deadline and not any(
                        r.ok and kills[-1].pid in {s.pid for s in r.dead}
                        for r in watchdog.repairs):
                    time.sleep(0.2)
                time.sleep(0.5)    # the probe's answers after the last repair
        finally:
            endpoint.close()
        watchdog.stop()
        repairs = list(watchdog.repairs)
    result = analyse(outcomes, kills, repairs, start, config, service)
    return {"config": dataclasses.asdict(config), **result,
            "watchdog_lines": lines,
            "repairs": [{"model": r.model, "action": r.action, "ok": r.ok,
                         "detected_at_s": round(r.detected_at - start, 3),
                         "seconds": round(r.seconds, 3), "line": r.line} for r in repairs]}


def write_results(result: dict, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


def print_summary(result: dict) -> None:
    summary = result["summary"]
    log(f"{summary['kills']} kills, {summary['repaired']} repaired; requests: "
        f"{summary['requests_ok']} ok, {summary['requests_failed']} failed "
        f"({summary['throughput']:.1f}/s ok, p99 {summary['latency_ok_ms']['p99']:.0f} ms)")
    for row in result["kills"]:
        log(f"  {row['killed_at_s']:6.1f} s {row['instance']:26s} detected "
            f"{_fmt(row['detection_s'])} s, recovered {_fmt(row['recovery_s'])} s "
            f"(repair {_fmt(row['repair_s'])} s), first success {_fmt(row['first_success_s'])}"
            f" s, {row['failed']} failed, {row['failed_after_recovery']} after recovery; "
            f"/ready 503 from {_fmt(row['service_not_ready_s'])} s to "
            f"{_fmt(row['service_ready_again_s'])} s")
    for step, figures in summary["per_step"].items():
        recovery = figures["recovery_s"]
        if recovery:
            log(f"  {step:20s} recovery mean {recovery['mean']:.2f} s, max "
                f"{recovery['max']:.2f} s; failed per kill mean "
                f"{figures['failed_per_kill']['mean']:.1f}")
    detection = summary["detection_s"]
    if detection:
        log(f"  detection mean {detection['mean']:.2f} s, max {detection['max']:.2f} s; "
            f"{summary['within_target']}/{summary['kills']} recovered within "
            f"{summary['recovery_target_s']:.0f} s; failed after recovery: "
            f"{summary['failed_after_recovery']}")
    not_ready, ready_again = summary["service_not_ready_s"], summary["service_ready_again_s"]
    if not_ready and ready_again:
        log(f"  the service's /ready: 503 from mean {not_ready['mean']:.2f} s (max "
            f"{not_ready['max']:.2f} s) after a kill, 200 again from mean "
            f"{ready_again['mean']:.2f} s; 200 between a detection and its repair's end: "
            f"{summary['service_ready_while_broken']} times")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    from benchmarks.run import commit, machine

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=ChaosConfig.seconds)
    parser.add_argument("--concurrency", type=int, default=ChaosConfig.concurrency)
    parser.add_argument("--interval", type=float, default=ChaosConfig.interval_s,
                        help="seconds between kills")
    parser.add_argument("--kills", type=int, default=None, help="at most this many kills")
    parser.add_argument("--method", choices=("reload", "unload-load"),
                        default=ChaosConfig.method, help="the watchdog's repair")
    parser.add_argument("--seed", type=int, default=ChaosConfig.seed)
    parser.add_argument("--repository", type=Path,
                        help="serve this exported repository instead of a fresh tiny export")
    parser.add_argument("--out", type=Path, default=RESULTS / "chaos.json")
    args = parser.parse_args(argv)
    config = ChaosConfig(seconds=args.seconds, concurrency=args.concurrency,
                         interval_s=args.interval, kills=args.kills, method=args.method,
                         seed=args.seed)
    sys.path.insert(0, str(ROOT / "src"))
    source_commit = commit()   # HEAD, "-dirty" when tracked files differ (as run.py records)
    repository = args.repository
    if repository is None:
        log(f"exporting the tiny checkpoint into {WORK}")
        repository = prepare_repository(WORK)
    result = {"commit": source_commit, "machine": machine(),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              **run_chaos(repository, config, WORK)}
    write_results(result, args.out)
    print_summary(result)
    log(f"wrote {args.out}")
    for failure in result["failures"]:
        log(f"FAILED: {failure}")
    log("chaos passed" if result["passed"] else "chaos FAILED")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
