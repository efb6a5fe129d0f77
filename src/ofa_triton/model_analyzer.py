"""A workspace for Triton's model-analyzer (``triton-model-analyzer`` on PyPI) to profile one
of this project's ensembles against the bundled tritonserver, CPU only, in local launch mode.

What model-analyzer 1.46.0 needs here, and why (measured on Triton 2.51.0):

- ``triton_server_path``: a wrapper that runs the bundled tritonserver with the backend
  directory, PATH (the Python stubs run this environment's interpreter) and library path that
  ``ofa-triton serve`` uses, and ``exec``s it: model-analyzer stops the server with SIGTERM and
  reads its memory on the pid it started. It adds the repository, ports and explicit model
  control itself, and loads each variant under the original name with a config override.
- ``perf_analyzer_path``: a wrapper that gives the bundled perf_analyzer its libraries.
- ``run_config_search_mode: quick``: brute search refuses ensembles ("Brute search mode is not
  supported for ensemble models"); ``cpu_only_composing_models``: otherwise it searches the
  steps as KIND_GPU instances. Without a GPU it starts no DCGM monitor and logs many "No GPU
  metric" warnings, which are harmless.
- perf_analyzer in time windows with a loose stability threshold: its default count windows
  (50 requests, 10% stability) never settled on a noisy 2-core machine.
- model-analyzer measures the ensemble's default configuration at concurrency
  2 x max_batch_size x instances, whatever ``run_config_search_max_concurrency`` says, and
  its "CPU memory" counts the tritonserver process only, not the Python stubs.

The profiled repository is a copy of the ensemble and its steps, so model-analyzer's work never
touches the served one; its output repository's variants keep the original model names, so
apply a winning configuration by re-exporting with the flags it corresponds to.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from .perf import perf_analyzer_binary, perf_analyzer_environment
from .perf_inputs import resolve_task, write_model_inputs
from .server import ServerOptions, server_command

MODEL_ANALYZER_VERSION = "1.46.0"   # the 24.11 release; pip offers no 1.45 (24.10)
PORTS = (18100, 18101, 18102)       # http, grpc, metrics of model-analyzer's server
# Flags model-analyzer passes itself (repository, ports, model control); the wrapper keeps the
# rest of what `ofa-triton serve` runs with.
_MODEL_ANALYZER_FLAGS = ("--model-repository", "--http-port", "--grpc-port", "--metrics-port",
                         "--model-control-mode", "--http-address", "--grpc-address")


class ModelAnalyzerError(ValueError):
    """The workspace cannot be written; the message says what to fix."""


def composing_models(repository: Path, ensemble: str) -> list[str]:
    """The steps of ``ensemble`` (``triton_config.ensemble_steps``), or an error naming the
    ensembles ``repository`` has."""
    from .triton_config import ensemble_steps

    if not (repository / ensemble / "config.pbtxt").is_file():
        served = sorted(p.parent.name for p in repository.glob("*/config.pbtxt")
                        if "ensemble_scheduling" in p.read_text())
        raise ModelAnalyzerError(f"{repository} has no ensemble {ensemble!r}; it has "
                                 f"{', '.join(served) or 'none'}")
    return list(dict.fromkeys(ensemble_steps(repository, ensemble)))


def _script(path: Path, lines: list[str]) -> Path:
    path.write_text("#!/usr/bin/env bash\n" + "\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def write_workspace(repository: Path, ensemble: str, workdir: Path, *,
                    images: Path | None = None, texts: Path | None = None,
                    max_concurrency: int = 16, max_instances: int = 2,
                    max_batch_size: int = 8) -> Path:
    """Write ``workdir``: the ensemble's repository copy, the two wrappers, perf_analyzer's
    inputs (the user's images and texts, or generated ones) and ``profile.yaml``; returns the
    YAML's path."""
    repository, workdir = Path(repository).resolve(), Path(workdir).resolve()
    steps = composing_models(repository, ensemble)
    task = resolve_task(model=ensemble)
    workdir.mkdir(parents=True, exist_ok=True)
    profiled = workdir / "repository"
    shutil.rmtree(profiled, ignore_errors=True)
    for model in (ensemble, *steps):
        shutil.copytree(repository / model, profiled / model)

    argv, env = server_command(ServerOptions(repository=profiled), workdir / "server")
    kept = [flag for flag in argv[1:] if not flag.startswith(_MODEL_ANALYZER_FLAGS)]
    server = _script(workdir / "tritonserver.sh", [
        f"export PATH={shlex.quote(env['PATH'])}",
        f"export LD_LIBRARY_PATH={shlex.quote(env['LD_LIBRARY_PATH'])}",
        f'exec {shlex.quote(argv[0])} "$@" {" ".join(map(shlex.quote, kept))}'])
    perf_env = perf_analyzer_environment(workdir, environ={})
    perf = _script(workdir / "perf_analyzer.sh", [
        f"export LD_LIBRARY_PATH={shlex.quote(perf_env['LD_LIBRARY_PATH'])}"
        '"${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"',
        f'exec {shlex.quote(str(perf_analyzer_binary()))} "$@"'])
    inputs = workdir / "inputs.json"
    write_model_inputs(inputs, task, images=images, texts=texts)

    results = workdir / "results"
    http, grpc, metrics = PORTS
    profile = workdir / "profile.yaml"
    profile.write_text(f"""\
# model-analyzer profile -f {profile}
# Written by `ofa-triton model-analyzer-config` (ofa_triton/model_analyzer.py says why each
# setting is what it is).
model_repository: {profiled}
output_model_repository_path: {workdir / "output_repository"}
override_output_model_repository: true
export_path: {results}
checkpoint_directory: {results / "checkpoints"}
triton_launch_mode: local
triton_server_path: {server}
triton_output_path: {results / "tritonserver.log"}
triton_http_endpoint: localhost:{http}
triton_grpc_endpoint: localhost:{grpc}
triton_metrics_url: http://localhost:{metrics}/metrics
client_protocol: grpc
client_max_retries: 120
perf_analyzer_path: {perf}
perf_analyzer_cpu_util: 190
perf_analyzer_timeout: 300
perf_output: true
perf_output_path: {results / "perf_analyzer_output.log"}
gpus: []
collect_cpu_metrics: true
run_config_search_mode: quick
run_config_search_max_concurrency: {max_concurrency}
run_config_search_max_instance_count: {max_instances}
run_config_search_max_model_batch_size: {max_batch_size}
cpu_only_composing_models: [{", ".join(steps)}]
profile_models:
  {ensemble}:
    perf_analyzer_flags:
      input-data: {inputs}
      measurement-mode: time_windows
      measurement-interval: 4000
      stability-percentage: 50
      max-trials: 6
""")
    (results / "checkpoints").mkdir(parents=True, exist_ok=True)
    return profile
