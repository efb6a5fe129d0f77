"""The generating tasks: Triton against the services it replaces, side by side in one run.

    python -m benchmarks.generation --task captioning vqa grounding   # make bench's second half

The same harness as benchmarks/run.py, per task: a generated checkpoint of the task (OFA-tiny
architecture, 256 px, the task's released beam search, random weights) exported for the CPU
(onnxruntime, fp32) with max batch 16 and a 5 ms queue delay (PROFILE; the export's defaults
are 32 and 2 ms); Triton's public model measured by perf_analyzer over gRPC with the
composing models' breakdown; then one closed-loop load generator, the same photo-like JPEGs
and texts, interleaved per concurrency: Triton (HTTP), ModelScope's own pipeline of the task
behind a one-at-a-time web app (reference environment), and this project's generation module
in the same shape. Writes benchmarks/results/cpu_<task>.json, its plot and perf_analyzer CSVs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time
from pathlib import Path

from benchmarks.run import (HEADLINE_CONCURRENCY, RESULTS, ROOT, WORK, BaselineService, breakdown,
                            commit, headline, log, machine, model_statistics, plot,
                            sweep_with_headline_rounds)

PROFILE = dict(image_size=256, concurrency=(1, 2, 4, 8, 16), duration=10.0, perf_ms=4000,
               rounds=3, preprocess_instances=2, encoder_decoder_instances=1,
               max_batch_size=16, queue_delay_us=5000)
# Per task: its checkpoint, inputs, baselines, and what differs in the profile. Its public
# model and generator are the task's (triton_config.ModelNames).
TASKS = {
    "captioning": dict(
        task="image-captioning",
        model="ofa-tiny architecture, 256 px, beam 5, max_len_b 16, random weights",
        inputs=("image",), build="caption_inputs",
        baseline="modelscope-caption", eager="eager-caption"),
    "vqa": dict(
        task="visual-question-answering",
        model="ofa-tiny architecture, 256 px, free generation, beam 5, max_len_b 16, random "
              "weights", inputs=("image", "question"),
        build="vqa_inputs", baseline="modelscope-vqa", eager="eager-vqa",
        profile=dict(concurrency=(1, 4, 8))),
    "grounding": dict(
        task="visual-grounding",
        model="ofa-tiny architecture, 256 px, beam 5, four <bin_*> tokens, random weights",
        inputs=("image", "text"),
        build="grounding_inputs", baseline="modelscope-grounding", eager="eager-grounding",
        profile=dict(concurrency=(1, 4, 8))),
}


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", nargs="+", choices=sorted(TASKS), default=["captioning"])
    parser.add_argument("--duration", type=float, help="seconds per load level")
    parser.add_argument("--concurrency", type=int, nargs="+")
    parser.add_argument("--rounds", type=int, help="interleaved rounds at the headline level")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--reference-python", type=Path, default=ROOT / ".venv-ref/bin/python")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--work-dir", type=Path, default=WORK)
    args = parser.parse_args(argv)
    return [measure(args, name) for name in args.task]


def measure(args: argparse.Namespace, task_name: str) -> Path:
    spec = TASKS[task_name]
    profile = {**PROFILE, **spec.get("profile", {}), "model": spec["model"]}
    for key in ("duration", "concurrency", "rounds"):
        if getattr(args, key):
            profile[key] = getattr(args, key)
    profile["concurrency"] = tuple(sorted({*profile["concurrency"], HEADLINE_CONCURRENCY}))
    name = f"cpu_{task_name}"

    sys.path.insert(0, str(ROOT / "src"))
    import tritonclient.http as httpclient

    from benchmarks.inputs import build_requests, write_perf_analyzer_inputs
    from benchmarks import loadgen
    from benchmarks.loadgen import TritonTarget, run_load
    from benchmarks.perf import run_perf_analyzer
    from ofa_triton.export import export_repository
    from ofa_triton.server import ServerOptions, TritonServer, free_port
    from ofa_triton.tiny_checkpoint import generate_tiny_checkpoint
    from ofa_triton.triton_config import ModelNames, ServingOptions

    names = ModelNames(task=spec["task"])
    started = time.monotonic()
    source_commit = commit()
    work, results_dir = args.work_dir, args.results_dir
    work.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    checkpoint, repository = work / f"checkpoint-{task_name}", work / f"repository-{task_name}"
    log(f"[1/4] {task_name}: checkpoint ({profile['model']}) and export")
    if not (checkpoint / "pytorch_model.bin").is_file():
        generate_tiny_checkpoint(checkpoint, task=spec["task"], image_size=profile["image_size"])
    shutil.rmtree(repository, ignore_errors=True)
    options = ServingOptions(max_batch_size=profile["max_batch_size"],
                             queue_delay_us=profile["queue_delay_us"],
                             preprocess_instances=profile["preprocess_instances"],
                             encoder_decoder_instances=profile["encoder_decoder_instances"])
    record = export_repository(checkpoint, repository, options=options,
                               progress=lambda m: log("      " + m.strip()))
    requests = build_requests()
    inputs_json = write_perf_analyzer_inputs(requests, work / f"perf_analyzer_{task_name}.json",
                                             inputs=spec["inputs"])

    log("[2/4] starting Triton and the baselines (all idle until measured)")
    server = TritonServer(ServerOptions.loopback(repository),
                          log_path=work / f"tritonserver-{task_name}.log")
    baselines = []
    if not args.skip_baselines:
        if args.reference_python.is_file():
            baselines.append(BaselineService("baseline", spec["baseline"],
                                             args.reference_python, checkpoint, free_port(),
                                             work))
        else:
            log(f"  no ModelScope baseline: no reference environment at "
                f"{args.reference_python} (make reference-env)")
        baselines.append(BaselineService("baseline_eager", spec["eager"], Path(sys.executable),
                                         checkpoint, free_port(), work))
    perf_rows = []
    try:
        with server:
            server.wait_ready(600)
            targets = [TritonTarget(server.http_url, names.ensemble,
                                    build=getattr(loadgen, spec["build"]))]
            targets += [b.target() for b in baselines]
            for target in targets:   # warm-up: first requests load lazily initialized code
                run_load(target, requests, 2, 3.0, warmup=0)
            log("[3/4] Triton: perf_analyzer over gRPC, with the composing models' breakdown")
            stats = httpclient.InferenceServerClient(server.http_url)
            for concurrency in profile["concurrency"]:
                before = model_statistics(stats)
                row = run_perf_analyzer(server.grpc_url, inputs_json, concurrency,
                                        results_dir / f"{name}_perf_analyzer_c{concurrency}.csv",
                                        work, measurement_ms=profile["perf_ms"],
                                        model=names.ensemble)
                row["composing_models"] = breakdown(before, model_statistics(stats))
                perf_rows.append(row)
                generator = row["composing_models"].get(names.encoder_decoder, {})
                log(f"  perf_analyzer c={concurrency}: {row['throughput']:.2f}/s p99 "
                    f"{row['p99_ms']:.0f} ms, generator batch "
                    f"{generator.get('average_batch_size') or 0:.2f}")
            stats.close()
            log("[4/4] one closed-loop load generator: Triton (HTTP) and the baselines, "
                "interleaved per concurrency")
            sweeps, rounds = sweep_with_headline_rounds(targets, requests, profile)
    finally:
        for baseline in baselines:
            baseline.stop()

    results = {
        "task": spec["task"],
        "triton": headline(rounds["triton"]),
        "triton_perf_analyzer_grpc": headline(perf_rows),
        "baseline": headline(rounds.get("baseline")),
        "baseline_eager": headline(rounds.get("baseline_eager")),
        "headline_rounds": rounds,
        "concurrency": HEADLINE_CONCURRENCY,
        "model": profile["model"],
        "export": {"runtime": record["export"]["runtime"],
                   "precision": record["export"]["precision"]},
        "machine": machine(),
        "commit": source_commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "profile": profile,
        "perf_analyzer": perf_rows,
        "sweeps": sweeps,
        "seconds": round(time.monotonic() - started, 1),
    }
    if results["baseline"] and results["baseline"]["throughput"] > 0:
        results["ratios_at_concurrency_8"] = {
            "throughput_triton_over_modelscope":
                results["triton"]["throughput"] / results["baseline"]["throughput"],
            "p99_triton_over_modelscope":
                results["triton"]["p99_ms"] / results["baseline"]["p99_ms"],
        }
    out = results_dir / f"{name}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    log(f"wrote {out} and {out.with_suffix('.png')} in {results['seconds']:.0f} s")
    return out


if __name__ == "__main__":
    main()
