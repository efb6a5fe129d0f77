"""``ofa-triton tune``: the sweep model-analyzer cannot make on an ensemble.

model-analyzer (``ofa-triton model-analyzer-config``) searches an ensemble only in its quick
mode, which varies instance counts and max batch sizes but never the dynamic batcher's queue
delay (its manual search, which can, refuses ensembles). This sweep measures
a small grid of all three (instances of the preprocessing and encoder-decoder steps, max
batch size, queue delay) on an exported repository with the bundled perf_analyzer, and
reports the configuration with the most throughput whose p99 latency is within ``--p99-ms``,
as the export flags that give it.

Each candidate is the ensemble's models with their configs rendered again (the same templates
and code as the export) and their version directories linked, not copied; one throwaway
tritonserver on loopback ports serves each in turn.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from .manifest import ManifestError, read_manifest
from .settings import ServingSettings
from .triton_config import (ModelNames, ServedVersions, ServingOptions, ensemble_steps,
                            read_served_versions, render_configs)


class TuneError(ValueError):
    """The repository or the grid cannot be tuned; the message says why."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    max_batch_size: int
    queue_delay_us: int
    preprocess_instances: int
    encoder_decoder_instances: int

    def flags(self) -> str:
        """The export flags that give this configuration."""
        return (f"--max-batch-size {self.max_batch_size} --queue-delay-us {self.queue_delay_us} "
                f"--preprocess-instances {self.preprocess_instances} "
                f"--encoder-decoder-instances {self.encoder_decoder_instances}")


def grid(max_batch_sizes: Sequence[int], queue_delays_us: Sequence[int],
         preprocess_instances: Sequence[int],
         encoder_decoder_instances: Sequence[int]) -> list[Candidate]:
    candidates = [Candidate(*values) for values in itertools.product(
        max_batch_sizes, queue_delays_us, preprocess_instances, encoder_decoder_instances)]
    if not candidates:
        raise TuneError("the grid is empty: give at least one value of each setting")
    return candidates


@dataclasses.dataclass(frozen=True)
class ExportedEnsemble:
    """What the candidates are made from: the ensemble's models and their export options."""

    repository: Path
    names: ModelNames
    served: ServedVersions
    options: ServingOptions
    settings: ServingSettings
    runtime: str

    @classmethod
    def read(cls, repository: Path, ensemble: str) -> "ExportedEnsemble":
        from .perf_inputs import task_of_model

        repository = Path(repository).resolve()
        served = read_served_versions(repository, ensemble)
        if served is None:
            raise TuneError(f"{repository} has no model {ensemble!r}: export it first "
                            "(ofa-triton export), or name another with --model")
        task = task_of_model(ensemble)
        names = ModelNames(ensemble[:-len(task.public_model)], task.name)
        version_dir = repository / names.encoder_decoder / str(served.serving)
        try:
            record = read_manifest(version_dir)["export"]
        except ManifestError as error:
            raise TuneError(f"{error}: tune needs a repository exported by ofa-triton") from error
        options = ServingOptions(**{**record["serving"], "cuda_graph_batch_sizes": "auto"})
        return cls(repository, names, served, options, ServingSettings.read(version_dir),
                   record.get("runtime", "onnxruntime"))

    def write_candidate(self, candidate: Candidate, out: Path) -> Path:
        """A repository of the ensemble's models configured as ``candidate``."""
        options = dataclasses.replace(self.options, **dataclasses.asdict(candidate))
        configs = render_configs(self.settings, options.for_runtime(self.runtime), self.served,
                                 self.names)
        shutil.rmtree(out, ignore_errors=True)
        for template, model in self.names.by_template().items():
            (out / model).mkdir(parents=True)
            (out / model / "config.pbtxt").write_text(configs[template])
            for version in (self.repository / model).iterdir():
                if version.is_dir() and version.name.isdigit():
                    (out / model / version.name).symlink_to(version, target_is_directory=True)
        return out


def best_within(results: list[dict], p99_ms: float) -> dict | None:
    """The measured candidate with the most throughput whose p99 is within the budget."""
    fitting = [r for r in results if r.get("p99_ms") is not None and r["p99_ms"] <= p99_ms]
    return max(fitting, key=lambda r: r["throughput"], default=None)


def tune(repository: Path, ensemble: str, candidates: list[Candidate], concurrency: int,
         p99_ms: float, workdir: Path, inputs: Path | None = None,
         measurement_ms: int = 4000, progress: Callable[[str], None] = print) -> dict:
    """Measure every candidate at ``concurrency``; returns {"results", "best", ...}."""
    from .perf import run_perf_analyzer
    from .perf_inputs import task_of_model, write_model_inputs
    from .server import ServerOptions, TritonServer

    exported = ExportedEnsemble.read(repository, ensemble)
    steps = ensemble_steps(exported.repository, ensemble)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if inputs is None:
        inputs = workdir / "inputs.json"
        write_model_inputs(inputs, task_of_model(ensemble))
    results = []
    for index, candidate in enumerate(candidates, 1):
        progress(f"[{index}/{len(candidates)}] {candidate.flags()}")
        out = exported.write_candidate(candidate, workdir / "candidate")
        record = {**dataclasses.asdict(candidate), "flags": candidate.flags()}
        try:
            with TritonServer(ServerOptions.loopback(out),
                              log_path=workdir / f"tritonserver_{index}.log") as server:
                server.wait_ready(600)
                row = run_perf_analyzer(server.grpc_url, inputs, concurrency,
                                        workdir / f"perf_{index}.csv", workdir,
                                        measurement_ms=measurement_ms, model=ensemble,
                                        grow_window=False)
            record.update(throughput=row["throughput"], p50_ms=row["p50_ms"],
                          p99_ms=row["p99_ms"])
            progress(f"    {row['throughput']:.1f} infer/s, p50 {row['p50_ms']:.0f} ms, "
                     f"p99 {row['p99_ms']:.0f} ms")
        except Exception as error:   # a candidate that fails to load or measure: say, go on
            record["error"] = f"{type(error).__name__}: {error}"[:500]
            progress(f"    failed: {record['error']} (log: {workdir}/tritonserver_{index}.log)")
        results.append(record)
    best = best_within(results, p99_ms)
    summary = {"repository": str(exported.repository), "ensemble": ensemble, "steps": steps,
               "concurrency": concurrency, "p99_budget_ms": p99_ms,
               "exported_with": dataclasses.asdict(exported.options), "results": results,
               "best": best}
    (workdir / "tune.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
