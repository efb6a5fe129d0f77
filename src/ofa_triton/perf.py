"""perf_analyzer against this project's models: the bundled binary and the libraries it needs
(``ofa-triton perf``; the benchmarks use the same functions). Standard library only, so that
the device kit's unpacking can import it on a bare interpreter; the ``--input-data`` files are
``perf_inputs.py``'s.

The binary: tritonclient 2.50.0's wheel ships ``perf_analyzer`` into the environment's
``bin/``. It is linked against ``libb64.so.0d`` and ``libcudart.so.12``, which a plain
machine lacks (``error while loading shared libraries: libb64.so.0d``). The nvidia-pytriton
wheel vendors both, renamed by auditwheel (``libb64-<hash>.so.0d``); a private directory of
symlinks under the sonames is enough: no apt package and no CUDA download.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

# soname perf_analyzer asks for -> the file-name prefix of the nvidia-pytriton wheel's copy.
VENDORED = {"libb64.so.0d": "libb64-", "libcudart.so.12": "libcudart-"}
LIBRARY_FOLDER = "perf_analyzer_libs"


# ---------------------------------------------------------------------------------------------
# The binary and its libraries


def perf_analyzer_binary() -> Path:
    """The perf_analyzer beside this interpreter (the virtual environment's, or the device
    kit's), else the first on PATH."""
    candidate = Path(sys.executable).parent / "perf_analyzer"
    found = candidate if candidate.is_file() else shutil.which("perf_analyzer")
    if not found:
        raise FileNotFoundError("perf_analyzer not found: pip install 'tritonclient[all]==2.50.0' "
                                "(pip install -e '.[serve]')")
    return Path(found)


def library_directory(workdir: Path) -> Path:
    """``workdir``/perf_analyzer_libs: symlinks under the sonames perf_analyzer asks for, to
    the server's vendored libraries (the nvidia-pytriton wheel's, or an unpacked device
    kit's). Raises FileNotFoundError when there are none."""
    from .server import find_triton

    vendored = find_triton().library_dir
    if vendored is None:
        raise FileNotFoundError("this tritonserver has no vendored libraries; install "
                                "libb64-0d and nvidia-cuda-runtime-cu12 for perf_analyzer")
    target = Path(workdir) / LIBRARY_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    for soname, prefix in VENDORED.items():
        matches = sorted(vendored.glob(prefix + "*"))
        if not matches:
            raise FileNotFoundError(f"{prefix}* not in {vendored}; install libb64-0d and "
                                    "nvidia-cuda-runtime-cu12 instead")
        link = target / soname
        if link.is_symlink() and link.resolve() != matches[0].resolve():
            link.unlink()   # left by another environment (or a deleted one)
        if not link.is_symlink():
            link.symlink_to(matches[0])
    return target


def perf_analyzer_environment(workdir: Path, environ: dict[str, str] | None = None,
                              strict: bool = True) -> dict[str, str]:
    """The environment perf_analyzer runs with: ``environ`` (default: this process's) with the
    library directory (above) ahead of its ``LD_LIBRARY_PATH``. ``strict=False``: without
    vendored libraries (a tritonserver from PATH, such as the NGC SDK container's, whose
    system has them) the environment is left as it is."""
    from .server import library_path

    env = dict(os.environ if environ is None else environ)
    try:
        directory = library_directory(workdir)
    except FileNotFoundError:
        if strict:
            raise
        return env
    env["LD_LIBRARY_PATH"] = library_path(directory, environ=env)
    return env


# ---------------------------------------------------------------------------------------------
# One measurement (the benchmarks, the device run and ofa-triton tune)


def run_perf_analyzer(url: str, inputs_json: Path, concurrency: int, csv_path: Path,
                      workdir: Path, measurement_ms: int = 4000, max_trials: int = 6,
                      model: str | None = None, grow_window: bool = True) -> dict:
    """One concurrency level over gRPC; returns the CSV row (figures in milliseconds).

    With ``grow_window`` the measurement window grows with the concurrency (on a CPU, where
    each request takes up to seconds, a window must still hold many of them). If
    perf_analyzer finds no stable measurement, it is asked once more with a looser stability
    threshold. ``model``: the visual-entailment ensemble unless given."""
    if model is None:
        from .triton_config import ENSEMBLE_MODEL   # not at import: standard library only

        model = ENSEMBLE_MODEL
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
