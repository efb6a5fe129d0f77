"""Soak: a real server under steady open-loop load for a long time, with its memory watched.

    python -m benchmarks.soak --minutes 30          # make soak
    python -m benchmarks.soak --minutes 3 --repository work/model_repository

1. generate and export the tiny checkpoint into work/soak/ (or serve --repository as it is);
2. start tritonserver and measure its capacity briefly (closed loop, benchmarks.loadgen);
3. send requests open-loop at a fixed rate, 80% of that capacity, for --minutes: each one at
   its scheduled time whether or not earlier ones have been answered (a closed loop would
   slow down with the server and hide queueing); one in ten is invalid (bytes that are not an
   image, a truncated JPEG, a hypothesis that is not UTF-8) and must get its own HTTP 400;
4. sample the resident memory (VmRSS) of tritonserver and of every Python-backend stub (one
   process per model instance) every few seconds.

Criteria (exit status 1 when one fails): no valid request fails; every invalid request gets
its 400 with a message naming the problem; no process grows more than --growth-limit-mb over
the second half of the run (the first half absorbs warm-up: allocator arenas, caches).
Writes benchmarks/results/soak.json (with the commit measured, "-dirty" when tracked files
differed from it) and soak_memory.csv.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import json
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from benchmarks.run import commit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "work" / "soak"


@dataclasses.dataclass
class SoakConfig:
    minutes: float = 30.0
    load_fraction: float = 0.8          # of the measured closed-loop capacity
    rate: float | None = None           # requests/s; set: skip the capacity measurement
    invalid_fraction: float = 0.1
    capacity_seconds: float = 15.0
    capacity_concurrency: int = 8
    sample_seconds: float = 5.0         # memory sampling period
    progress_seconds: float = 30.0
    growth_limit_mb: float = 50.0       # per process, over the second half of the run
    request_timeout_s: float = 60.0     # a valid request slower than this counts as failed


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the requests -------------------------------------------------------------------------

class InvalidKind(NamedTuple):
    name: str
    breaks: Callable[[dict], tuple[str, bytes]]   # request -> (input name, its bad value)
    refusal: str     # the whole error it must get (a regular expression, after the ensemble's)


# The error of each kind, whole: a wrong refusal fails the soak too. A truncated JPEG's names
# the cut file's size and how many bytes Pillow had left, which vary with the request.
INVALID_KINDS = (
    InvalidKind("not_an_image", lambda r: ("image", b"this is text, sent as image bytes"),
                re.escape("could not decode the image: its 33 bytes are not an image in an "
                          "accepted format (JPEG, PNG, WEBP, GIF, BMP, TIFF; --image-formats); "
                          "it is text (send the image file's bytes, not its name or URL)")),
    InvalidKind("truncated_jpeg", lambda r: ("image", r["image"][: len(r["image"]) // 3]),
                r"could not decode the image \([\d,]+ bytes\): OSError: image file is "
                r"truncated \(\d+ bytes not processed\)"),
    InvalidKind("not_utf8", lambda r: ("hypothesis", b"two dogs \xff\xfe run"),
                re.escape("'hypothesis' is not valid UTF-8 (byte 9)")),
)


def is_refused_as(kind: InvalidKind, error: Exception | None, ensemble: str) -> bool:
    """An HTTP 400 with exactly ``kind``'s error, as the ensemble reports it."""
    if error is None or str(getattr(error, "status", lambda: None)()) != "400":
        return False
    return re.fullmatch(rf"\[400\] in ensemble '{re.escape(ensemble)}', {kind.refusal}",
                        str(error)) is not None


def is_invalid(index: int, fraction: float) -> bool:
    """Evenly spread: request ``index`` is invalid when it crosses the next multiple of
    1/fraction (every 10th for 0.1), so short runs get their share too."""
    return int((index + 1) * fraction) > int(index * fraction)


def infer_inputs(module, request: dict, invalid: InvalidKind | None = None) -> list:
    """The request's tensors (the visual-entailment client's build_inputs), one of them broken by
    ``invalid``."""
    from ofa_triton.tasks.visual_entailment.client import build_inputs

    inputs = build_inputs(module, request["image"], request["hypothesis"], request["premise"])
    if invalid is not None:
        name, value = invalid.breaks(request)
        tensor = next(t for t in inputs if t.name() == name)
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_))
    return inputs


# --- memory -------------------------------------------------------------------------------

def rss_mb(pid: int) -> float | None:
    """Resident memory (VmRSS) of a process in MB; None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def sample_memory(server_pid: int, elapsed_s: float) -> list[dict]:
    """One row per process: tritonserver, and each stub named by its model instance."""
    from ofa_triton.server import stub_processes

    processes = [("tritonserver", server_pid)] + [(stub.instance, stub.pid)
                                                  for stub in stub_processes(server_pid)]
    rows = []
    for name, pid in processes:
        rss = rss_mb(pid)
        if rss is not None:
            rows.append({"elapsed_s": round(elapsed_s, 1), "process": name, "pid": pid,
                         "rss_mb": round(rss, 2)})
    return rows


def memory_summary(samples: list[dict], duration_s: float) -> dict[str, dict]:
    """Per process: RSS at start, half-time and end, the maximum, and the growth over the
    second half: the mean of the last tenth of that half minus the mean of its first tenth
    (means of a few samples, so that one sample's noise is not called growth)."""
    summary = {}
    for name in dict.fromkeys(row["process"] for row in samples):
        rows = [row for row in samples if row["process"] == name]
        second = [row for row in rows if row["elapsed_s"] >= duration_s / 2] or rows[-1:]
        window = max(1, len(second) // 10)
        growth = (np.mean([r["rss_mb"] for r in second[-window:]])
                  - np.mean([r["rss_mb"] for r in second[:window]]))
        summary[name] = {
            "pids": sorted({row["pid"] for row in rows}),
            "start_mb": rows[0]["rss_mb"], "half_mb": second[0]["rss_mb"],
            "end_mb": rows[-1]["rss_mb"], "max_mb": max(r["rss_mb"] for r in rows),
            "growth_second_half_mb": round(float(growth), 2),
        }
    return summary


# --- the open-loop drive ------------------------------------------------------------------

def failure_reason(error: Exception) -> str:
    """HTTP status ("503": a step's queue was full), or "timeout", or the exception's type."""
    if isinstance(error, asyncio.TimeoutError):
        return "timeout"
    status = error.status() if hasattr(error, "status") else None
    return str(status) if status else type(error).__name__


@dataclasses.dataclass
class Tally:
    sent: int = 0
    valid_ok: int = 0
    valid_failed: int = 0
    valid_failures: dict[str, int] = dataclasses.field(default_factory=dict)  # by status
    invalid_sent: int = 0
    invalid_refused: int = 0          # got the HTTP 400 naming the problem
    invalid_unexpected: int = 0       # answered, or refused some other way
    first_valid_error: str | None = None
    first_invalid_surprise: str | None = None
    max_in_flight: int = 0
    max_send_lag_ms: float = 0.0      # how far behind schedule the generator ever was


async def drive(url: str, requests: list[dict], rate: float, seconds: float, config: SoakConfig,
                server_pid: int) -> tuple[Tally, list[float], list[dict]]:
    """Open loop: request i is sent at start + i/rate. Latency counts from that scheduled
    time, so a generator that falls behind cannot hide server delay (coordinated omission)."""
    import tritonclient.http.aio as httpaio

    from ofa_triton.triton_config import ENSEMBLE_MODEL

    client = httpaio.InferenceServerClient(url, conn_limit=1024)
    tally, latencies, window, samples = Tally(), [], [], []
    in_flight: set[asyncio.Task] = set()
    start = time.perf_counter()

    async def one(index: int, scheduled: float) -> None:
        request = requests[index % len(requests)]
        kind = None
        if is_invalid(index, config.invalid_fraction):
            kind = INVALID_KINDS[tally.invalid_sent % len(INVALID_KINDS)]
            tally.invalid_sent += 1
        try:
            await asyncio.wait_for(
                client.infer(ENSEMBLE_MODEL, infer_inputs(httpaio, request, kind)),
                config.request_timeout_s)
            error = None
        except Exception as caught:  # judged below: expected for invalid requests only
            error = caught
        if kind is None:
            if error is None:
                tally.valid_ok += 1
                latencies.append(time.perf_counter() - scheduled)
                window.append(latencies[-1])
            else:
                tally.valid_failed += 1
                reason = failure_reason(error)
                tally.valid_failures[reason] = tally.valid_failures.get(reason, 0) + 1
                tally.first_valid_error = tally.first_valid_error or \
                    f"{type(error).__name__}: {error}"[:500]
        else:
            status = str(error.status()) if hasattr(error, "status") else None
            if is_refused_as(kind, error, ENSEMBLE_MODEL):
                tally.invalid_refused += 1
            else:
                tally.invalid_unexpected += 1
                tally.first_invalid_surprise = tally.first_invalid_surprise or \
                    f"{kind.name}: {'answered' if error is None else f'{status} {error}'}"[:500]

    async def watch() -> None:
        """Memory samples, and a progress line every progress_seconds."""
        next_progress = config.progress_seconds
        while True:
            elapsed = time.perf_counter() - start
            samples.extend(sample_memory(server_pid, elapsed))
            if elapsed >= next_progress:
                next_progress += config.progress_seconds
                ms = np.asarray(window) * 1000 if window else np.asarray([np.nan])
                window.clear()
                latest = {r["process"]: r["rss_mb"] for r in samples[-12:]}
                log(f"  {elapsed:6.0f}/{seconds:.0f} s  sent {tally.sent} "
                    f"({tally.sent / elapsed:.1f}/s), in flight {len(in_flight)}, valid ok "
                    f"{tally.valid_ok} failed {tally.valid_failed}, invalid refused "
                    f"{tally.invalid_refused}/{tally.invalid_sent}; last "
                    f"{config.progress_seconds:.0f} s p50 {np.percentile(ms, 50):.0f} ms p99 "
                    f"{np.percentile(ms, 99):.0f} ms; RSS server "
                    f"{latest.get('tritonserver', 0):.0f} MB, stubs "
                    f"{sum(v for k, v in latest.items() if k != 'tritonserver'):.0f} MB")
            await asyncio.sleep(config.sample_seconds)

    watcher = asyncio.create_task(watch())
    try:
        index = 0
        while (scheduled := start + index / rate) < start + seconds:
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tally.max_send_lag_ms = max(tally.max_send_lag_ms,
                                        (time.perf_counter() - scheduled) * 1000)
            task = asyncio.create_task(one(index, scheduled))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            tally.sent += 1
            tally.max_in_flight = max(tally.max_in_flight, len(in_flight))
            index += 1
        await asyncio.gather(*in_flight)
        samples.extend(sample_memory(server_pid, time.perf_counter() - start))
    finally:
        watcher.cancel()
        await client.close()
    return tally, latencies, samples


# --- the whole run ------------------------------------------------------------------------

def measure_capacity(url: str, requests: list[dict], config: SoakConfig):
    """Closed-loop throughput (benchmarks.loadgen) at ``capacity_concurrency``."""
    from benchmarks.loadgen import TritonTarget, run_load

    return run_load(TritonTarget(url), requests, config.capacity_concurrency,
                    config.capacity_seconds)


def run_soak(repository: Path, config: SoakConfig, work: Path) -> dict:
    """Start a server on ``repository``, measure, drive, judge. Returns the result; its
    ``failures`` list is empty when every criterion holds."""
    from benchmarks.inputs import build_requests
    from benchmarks.loadgen import TritonTarget, run_load
    from ofa_triton.server import ServerOptions, TritonServer

    source_commit = commit()   # HEAD, "-dirty" when tracked files differ (as run.py records)
    work.mkdir(parents=True, exist_ok=True)
    requests = build_requests()
    seconds = config.minutes * 60
    server = TritonServer(ServerOptions.loopback(repository), log_path=work / "tritonserver.log")
    with server:
        server.wait_ready(600)
        run_load(TritonTarget(server.http_url), requests, 2, 3.0, warmup=0)   # warm-up
        capacity = capacity_after = None
        rate = config.rate
        if rate is None:
            measured = measure_capacity(server.http_url, requests, config)
            capacity = measured.to_dict()
            rate = config.load_fraction * measured.throughput
            log(f"capacity (closed loop, concurrency {config.capacity_concurrency}): "
                f"{measured.throughput:.1f}/s, p99 {measured.p99_ms:.0f} ms; soaking at "
                f"{rate:.1f}/s for {seconds:.0f} s")
        tally, latencies, samples = asyncio.run(
            drive(server.http_url, requests, rate, seconds, config, server.process.pid))
        if tally.valid_failed:
            # Overload (503, timeouts) on a shared machine often means that it got slower
            # than when capacity was measured: measure again, for the report.
            capacity_after = measure_capacity(server.http_url, requests, config).to_dict()
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([np.nan])
    memory = memory_summary(samples, seconds)
    failures = []
    if tally.valid_failed:
        failures.append(f"{tally.valid_failed} valid requests failed, by status "
                        f"{tally.valid_failures} (first: {tally.first_valid_error}); "
                        f"closed-loop capacity afterwards {capacity_after['throughput']:.1f}/s "
                        f"for a rate of {rate:.1f}/s")
    if tally.invalid_unexpected or tally.invalid_refused != tally.invalid_sent:
        failures.append(f"{tally.invalid_sent - tally.invalid_refused} invalid requests did "
                        f"not get their 400 (first: {tally.first_invalid_surprise})")
    for name, figures in memory.items():
        if figures["growth_second_half_mb"] > config.growth_limit_mb:
            failures.append(f"{name} grew {figures['growth_second_half_mb']:.1f} MB over the "
                            f"second half (limit {config.growth_limit_mb:.0f} MB)")
        if len(figures["pids"]) > 1:
            failures.append(f"{name} was restarted (pids {figures['pids']})")
    return {
        "commit": source_commit,
        "config": dataclasses.asdict(config),
        "capacity": capacity,
        "capacity_after_failures": capacity_after,
        "rate": rate,
        "achieved_rate": tally.sent / seconds,
        "requests": dataclasses.asdict(tally),
        "latency_valid_ms": {"p50": float(np.percentile(ms, 50)),
                             "p90": float(np.percentile(ms, 90)),
                             "p99": float(np.percentile(ms, 99)), "max": float(ms.max())},
        "memory": memory,
        "memory_samples": samples,
        "failures": failures,
        "passed": not failures,
    }


def prepare_repository(work: Path) -> Path:
    """A fresh export of the generated tiny checkpoint (so that the models' code is current)."""
    from ofa_triton.export import export_repository
    from ofa_triton.tiny_checkpoint import generate_tiny_checkpoint

    checkpoint = work / "checkpoint"
    if not (checkpoint / "pytorch_model.bin").is_file():
        generate_tiny_checkpoint(checkpoint)
    repository = work / "repository"
    shutil.rmtree(repository, ignore_errors=True)
    export_repository(checkpoint, repository, progress=lambda m: log("  " + m.strip()))
    return repository


def write_results(result: dict, out: Path) -> Path:
    """The JSON result, and its memory samples as CSV beside it (<name>_memory.csv)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    samples = result["memory_samples"]
    csv_path = out.with_name(out.stem + "_memory.csv")
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["elapsed_s", "process", "pid", "rss_mb"])
        writer.writeheader()
        writer.writerows(samples)
    summary = {key: value for key, value in result.items() if key != "memory_samples"}
    out.write_text(json.dumps({**summary, "memory_csv": csv_path.name}, indent=2) + "\n")
    return csv_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=SoakConfig.minutes)
    parser.add_argument("--repository", type=Path,
                        help="serve this exported repository instead of a fresh tiny export")
    parser.add_argument("--rate", type=float, help="requests/s (skips the capacity measurement)")
    parser.add_argument("--load-fraction", type=float, default=SoakConfig.load_fraction)
    parser.add_argument("--invalid-fraction", type=float, default=SoakConfig.invalid_fraction)
    parser.add_argument("--growth-limit-mb", type=float, default=SoakConfig.growth_limit_mb)
    parser.add_argument("--sample-seconds", type=float, default=SoakConfig.sample_seconds)
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args(argv)
    config = SoakConfig(minutes=args.minutes, rate=args.rate, load_fraction=args.load_fraction,
                        invalid_fraction=args.invalid_fraction,
                        growth_limit_mb=args.growth_limit_mb, sample_seconds=args.sample_seconds)
    sys.path.insert(0, str(ROOT / "src"))
    repository = args.repository
    if repository is None:
        log(f"exporting the tiny checkpoint into {WORK}")
        repository = prepare_repository(WORK)
    result = run_soak(repository, config, WORK)
    csv_path = write_results(result, args.out)
    latency = result["latency_valid_ms"]
    tally = result["requests"]
    log(f"valid: {tally['valid_ok']} ok, {tally['valid_failed']} failed, p50 "
        f"{latency['p50']:.0f} ms, p99 {latency['p99']:.0f} ms; invalid: "
        f"{tally['invalid_refused']}/{tally['invalid_sent']} refused with their 400")
    for name, figures in result["memory"].items():
        log(f"  {name:26s} RSS {figures['start_mb']:7.1f} -> {figures['end_mb']:7.1f} MB, "
            f"second half {figures['growth_second_half_mb']:+.1f} MB")
    log(f"wrote {args.out} and {csv_path}")
    for failure in result["failures"]:
        log(f"FAILED: {failure}")
    log("soak passed" if result["passed"] else "soak FAILED")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
