"""The real perf_analyzer (shipped in tritonclient 2.50.0's wheel) against the ensemble.

It needs ``libb64.so.0d`` and ``libcudart.so.12``, which ``ofa_triton.perf`` (the one
implementation, also behind ``ofa-triton perf``) links from the nvidia-pytriton wheel's
vendored copies (or the device kit's): no apt package and no CUDA download.
"""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

from ofa_triton.perf import (VENDORED, library_directory, perf_analyzer_binary,
                             perf_analyzer_environment)

# VENDORED and perf_analyzer_binary are re-exported: the device kit imports them from here.
__all__ = ["VENDORED", "library_directory", "perf_analyzer_binary", "run_perf_analyzer"]


def run_perf_analyzer(url: str, inputs_json: Path, concurrency: int, csv_path: Path,
                      workdir: Path, measurement_ms: int = 4000, max_trials: int = 6,
                      model: str = "ofa_visual_entailment", grow_window: bool = True) -> dict:
    """One concurrency level over gRPC; returns the CSV row (figures in milliseconds).

    With ``grow_window`` the measurement window grows with the concurrency (on a CPU, where
    each request takes up to seconds, a window must still hold many of them). If
    perf_analyzer finds no stable measurement, it is asked once more with a looser stability
    threshold."""
    env = perf_analyzer_environment(workdir)
    window = measurement_ms * (max(1, concurrency // 8) if grow_window else 1)
    for stability in (30, 60):
        argv = [str(perf_analyzer_binary()), "-m", model, "-u", url, "-i", "grpc",
                "--input-data", str(inputs_json),
                "--concurrency-range", f"{concurrency}:{concurrency}",
                "--measurement-interval", str(window), "--max-trials", str(max_trials),
                "--stability-percentage", str(stability), "-f", str(csv_path), "--verbose-csv"]
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
        (workdir / (csv_path.stem + ".log")).write_text(result.stdout + result.stderr)
        if result.returncode == 0 and csv_path.exists():
            break
    else:
        raise RuntimeError(f"perf_analyzer found no stable measurement at concurrency "
                           f"{concurrency} ({result.returncode}):\n{result.stdout[-2000:]}")
    with open(csv_path) as handle:
        row = next(csv.DictReader(handle))
    return {"concurrency": concurrency,
            "throughput": float(row["Inferences/Second"]),
            "p50_ms": float(row["p50 latency"]) / 1000, "p90_ms": float(row["p90 latency"]) / 1000,
            "p99_ms": float(row["p99 latency"]) / 1000,
            "avg_ms": float(row["Avg latency"]) / 1000,
            "server_queue_ms": float(row["Server Queue"]) / 1000,
            "server_compute_infer_ms": float(row["Server Compute Infer"]) / 1000,
            "measurement_window_ms": window, "stability_percentage": stability,
            "csv": csv_path.name}
