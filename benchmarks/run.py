"""Triton against the service it replaces, side by side in one run.

    python -m benchmarks.run --profile cpu     # make bench: OFA-tiny architecture, 256 px
    python -m benchmarks.run --profile gpu     # make bench-gpu: OFA-large architecture, 480 px, fp16

Order of work (one machine; every system is idle while another is measured):
1. generate the checkpoint (random weights, the profile's architecture) and export it;
2. start Triton, the ModelScope-pipeline web service (reference environment) and this
   project's eager PyTorch module in the same web-app shape (benchmarks/baseline_app.py);
3. Triton: perf_analyzer over gRPC at each concurrency, with the composing models' server
   breakdown from the statistics endpoint;
4. one closed-loop load generator over HTTP: at each concurrency, Triton, then ModelScope,
   then eager, back to back, so that drift of a shared machine hits all three alike;
5. FLOPs per sample, the machine's GEMM rate, and the encoder-decoder's achieved fraction.
Writes benchmarks/results/<profile>.json, the perf_analyzer CSVs and a throughput/p99 plot.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"   # committed: the run BENCHMARKS.md reports
WORK = ROOT / "work" / "bench"

LARGE = dict(d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
             decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096,
             resnet_type="resnet152")

PROFILES = {
    "cpu": dict(model="ofa-tiny architecture, 256 px, fp32, random weights", size_name="tiny",
                architecture={}, image_size=256, device="cpu", precision="fp32",
                concurrency=(1, 2, 4, 8, 16, 32), duration=10.0, perf_ms=4000, rounds=3,
                preprocess_instances=2, encoder_decoder_instances=1, max_batch_size=32,
                queue_delay_us=5000, int8=True),
    "gpu": dict(model="ofa-large architecture, 480 px, fp16, random weights", size_name="large",
                architecture=LARGE, image_size=480, device="gpu", precision="fp16",
                concurrency=(1, 2, 4, 8, 16, 32, 64, 128), duration=15.0, perf_ms=5000, rounds=3,
                preprocess_instances=12, encoder_decoder_instances=2, max_batch_size=64,
                queue_delay_us=2000, int8=False),
}
HEADLINE_CONCURRENCY = 8
# The opt-in int8 export (CPU profile) is served beside the fp32 one, under this name prefix.
INT8_PREFIX = "int8_"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "processor": platform.processor()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (OSError, ValueError):
        pass
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if gpu.returncode == 0 and gpu.stdout.strip():
            info["gpu"] = gpu.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def commit() -> str:
    """HEAD, with "-dirty" when tracked files differ from it (the results folder aside: a run
    rewrites it, and results measure the code, not earlier results)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":!benchmarks/results"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except OSError:
        return "unknown"


def model_statistics(client) -> dict:
    stats = {}
    for entry in client.get_inference_statistics()["model_stats"]:
        s = entry["inference_stats"]
        stats[entry["name"]] = {
            "inferences": int(entry["inference_count"]), "executions": int(entry["execution_count"]),
            **{key: int(s[key]["ns"]) for key in ("queue", "compute_input", "compute_infer",
                                                  "compute_output")},
            "batches": {int(b["batch_size"]): (int(b["compute_infer"]["count"]),
                                               int(b["compute_infer"]["ns"]))
                        for b in entry.get("batch_stats", [])},
        }
    return stats


def breakdown(before: dict, after: dict) -> dict:
    """Per composing model over an interval: average batch size, and per-inference queue and
    compute milliseconds."""
    out = {}
    for name, a in after.items():
        b = before.get(name, {"inferences": 0, "executions": 0, "queue": 0, "compute_input": 0,
                              "compute_infer": 0, "compute_output": 0, "batches": {}})
        inferences = a["inferences"] - b["inferences"]
        executions = a["executions"] - b["executions"]
        if inferences <= 0:
            continue
        batch_infer_ns = sum(ns - b["batches"].get(size, (0, 0))[1]
                             for size, (_, ns) in a["batches"].items())
        out[name] = {
            "inferences": inferences, "executions": executions,
            "average_batch_size": inferences / executions if executions else None,
            "queue_ms": (a["queue"] - b["queue"]) / inferences / 1e6,
            "compute_input_ms": (a["compute_input"] - b["compute_input"]) / inferences / 1e6,
            "compute_infer_ms": (a["compute_infer"] - b["compute_infer"]) / inferences / 1e6,
            "compute_output_ms": (a["compute_output"] - b["compute_output"]) / inferences / 1e6,
            # Wall time of the model's executions (each batch counted once).
            "execution_compute_infer_s": batch_infer_ns / 1e9,
        }
    return out


def wait_http(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not up after {timeout}s")


def interleaved_sweep(targets: list, requests, profile) -> dict[str, list[dict]]:
    """At each concurrency, every system in turn, back to back: drift of a shared, noisy
    machine then hits the systems alike instead of whichever ran last."""
    from benchmarks.loadgen import run_load

    rows: dict[str, list[dict]] = {t.name: [] for t in targets}
    for concurrency in profile["concurrency"]:
        for target in targets:
            result = run_load(target, requests, concurrency, profile["duration"])
            log(f"  {target.name} c={concurrency}: {result.throughput:.2f}/s p50 "
                f"{result.p50_ms:.0f} ms p99 {result.p99_ms:.0f} ms failed {result.failed}"
                + (f" (first error: {result.first_error[:200]})" if result.first_error else ""))
            rows[target.name].append(result.to_dict())
    return rows


class BaselineService:
    """A baseline web service (benchmarks/baseline_app.py) in its own process and interpreter."""

    def __init__(self, name: str, kind: str, python: Path, checkpoint: Path, port: int,
                 log_dir: Path):
        self.name, self.port = name, port
        log(f"  starting {name}: the {kind} web service ({python})")
        self.process = subprocess.Popen(
            [str(python), "-m", "benchmarks.baseline_app", "--kind", kind, "--model",
             str(checkpoint), "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=open(log_dir / f"{name}.log", "wb"))

    def target(self):
        from benchmarks.loadgen import HttpJsonTarget

        wait_http(f"http://127.0.0.1:{self.port}/health")
        return HttpJsonTarget(self.name, f"127.0.0.1:{self.port}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def sweep_with_headline_rounds(targets, requests: list[dict], profile: dict
                               ) -> tuple[dict, dict]:
    """The interleaved sweep over the profile's concurrencies, then more interleaved rounds at
    the headline concurrency (the headline is their median); returns the sweeps and, per
    target, its rows at the headline concurrency."""
    sweeps = interleaved_sweep(targets, requests, profile)
    rounds = {t.name: [r for r in sweeps[t.name] if r["concurrency"] == HEADLINE_CONCURRENCY]
              for t in targets}
    for index in range(1, profile["rounds"]):
        log(f"  round {index + 1} of {profile['rounds']} at concurrency {HEADLINE_CONCURRENCY}")
        extra = interleaved_sweep(targets, requests,
                                  {**profile, "concurrency": (HEADLINE_CONCURRENCY,)})
        for name, rows in extra.items():
            rounds[name] += rows
    return sweeps, rounds


def headline(rows: list[dict] | None) -> dict | None:
    """The figures at the headline concurrency; the median over rounds where there are several."""
    import statistics

    rows = [r for r in rows or [] if r["concurrency"] == HEADLINE_CONCURRENCY]
    if not rows:
        return None
    return {key: statistics.median(r[key] for r in rows)
            for key in ("throughput", "p50_ms", "p99_ms")} | {"rounds": len(rows)}


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    series = [("Triton (load generator, HTTP)", results["sweeps"]["triton"], "s-"),
              ("Triton, int8 convolutions (HTTP)", results["sweeps"].get("triton_int8"), "D-"),
              ("Triton (perf_analyzer, gRPC)", results["perf_analyzer"], "o--"),
              ("ModelScope pipeline service", results["sweeps"].get("baseline"), "^-"),
              ("Eager PyTorch service", results["sweeps"].get("baseline_eager"), "v-")]
    for label, rows, style in series:
        if not rows:
            continue
        axis.plot([r["throughput"] for r in rows], [r["p99_ms"] for r in rows], style, label=label)
        for r in rows:
            axis.annotate(str(r["concurrency"]), (r["throughput"], r["p99_ms"]),
                          textcoords="offset points", xytext=(3, 3), fontsize=7)
    axis.set_xlabel("throughput (inferences/s)")
    axis.set_ylabel("p99 latency (ms)")
    axis.set_yscale("log")
    axis.set_title(f"{results['model']}\n{results['machine'].get('cpu_model', '')} "
                   f"({results['machine'].get('cpus')} CPUs)"
                   + (f", {results['machine']['gpu']}" if results["machine"].get("gpu") else ""),
                   fontsize=9)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--duration", type=float, help="seconds per load level")
    parser.add_argument("--concurrency", type=int, nargs="+")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=INT",
                        help="override integer profile values (e.g. encoder_decoder_instances=2)")
    parser.add_argument("--reference-python", type=Path, default=ROOT / ".venv-ref/bin/python")
    parser.add_argument("--results-dir", type=Path, default=RESULTS,
                        help=f"where the JSON, plot and CSVs go (default: {RESULTS})")
    parser.add_argument("--work-dir", type=Path, default=WORK,
                        help=f"checkpoint, export, logs (default: {WORK})")
    args = parser.parse_args(argv)
    profile = dict(PROFILES[args.profile])
    if args.duration:
        profile["duration"] = args.duration
    if args.concurrency:
        profile["concurrency"] = tuple(args.concurrency)
    for item in args.set:
        key, _, value = item.partition("=")
        profile[key] = int(value)
    if HEADLINE_CONCURRENCY not in profile["concurrency"]:
        profile["concurrency"] = tuple(sorted({*profile["concurrency"], HEADLINE_CONCURRENCY}))

    sys.path.insert(0, str(ROOT / "src"))
    import tritonclient.http as httpclient

    from benchmarks.efficiency import PUBLISHED_PARAMETERS_M, count_flops, measure_gemm_flops
    from benchmarks.inputs import build_requests, write_perf_analyzer_inputs
    from benchmarks.loadgen import TritonTarget, run_load
    from benchmarks.perf import run_perf_analyzer
    from ofa_triton.export import export_repository, load_checkpoint
    from ofa_triton.server import ServerOptions, TritonServer, free_port
    from ofa_triton.tasks.visual_entailment.preprocessing import VisualEntailmentPreprocessor
    from ofa_triton.tiny_checkpoint import generate_tiny_checkpoint
    from ofa_triton.triton_config import ModelNames, ServingOptions

    names = ModelNames()   # the default task's served names (visual entailment)
    started = time.monotonic()
    source_commit = commit()   # before this run rewrites the committed result files
    work, results_dir = args.work_dir, args.results_dir
    work.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    name = args.profile
    checkpoint = work / f"checkpoint-{name}"
    repository = work / f"repository-{name}"
    log(f"[1/5] checkpoint ({profile['model']}) and export")
    if not (checkpoint / "pytorch_model.bin").is_file():
        generate_tiny_checkpoint(checkpoint, image_size=profile["image_size"],
                                 architecture_overrides=profile["architecture"])
    options = ServingOptions(device=profile["device"], max_batch_size=profile["max_batch_size"],
                             queue_delay_us=profile["queue_delay_us"],
                             preprocess_instances=profile["preprocess_instances"],
                             encoder_decoder_instances=profile["encoder_decoder_instances"],
                             intra_op_threads=profile.get("intra_op_threads", 0))
    shutil.rmtree(repository, ignore_errors=True)   # a re-run must serve this export
    export_repository(checkpoint, repository, options=options, precision=profile["precision"],
                      progress=lambda m: log("      " + m.strip()))
    if profile["int8"]:
        log("      the same checkpoint with int8 convolutions, beside it as "
            f"{ModelNames(INT8_PREFIX).ensemble}")
        export_repository(checkpoint, repository, precision="int8",
                          options=dataclasses.replace(options, name_prefix=INT8_PREFIX),
                          progress=lambda m: log("      " + m.strip()))
    requests = build_requests()
    inputs_json = write_perf_analyzer_inputs(requests, work / "perf_analyzer_inputs.json")

    log("[2/5] starting Triton and the baselines (all idle until measured)")
    server = TritonServer(ServerOptions.loopback(repository), log_path=work / "tritonserver.log")
    baselines = []
    if not args.skip_baselines:
        if args.reference_python.is_file():
            baselines.append(BaselineService("baseline", "modelscope", args.reference_python,
                                             checkpoint, free_port(), work))
        else:
            log(f"  no ModelScope baseline: no reference environment at "
                f"{args.reference_python} (make reference-env)")
        baselines.append(BaselineService("baseline_eager", "eager", Path(sys.executable),
                                         checkpoint, free_port(), work))
    perf_rows, breakdowns, perf_int8 = [], {}, None
    try:
        with server:
            server.wait_ready(600)
            triton = [TritonTarget(server.http_url)]
            if profile["int8"]:
                triton.append(TritonTarget(server.http_url, ModelNames(INT8_PREFIX).ensemble,
                                           name="triton_int8"))
            targets = triton + [b.target() for b in baselines]
            for target in targets:   # warm-up: first requests load lazily initialized code
                run_load(target, requests, 2, 3.0, warmup=0)
            log("[3/5] Triton: perf_analyzer over gRPC, with the composing models' breakdown")
            stats_client = httpclient.InferenceServerClient(server.http_url)
            for concurrency in profile["concurrency"]:
                before = model_statistics(stats_client)
                row = run_perf_analyzer(server.grpc_url, inputs_json, concurrency,
                                        results_dir / f"{name}_perf_analyzer_c{concurrency}.csv",
                                        work, measurement_ms=profile["perf_ms"])
                breakdowns[concurrency] = breakdown(before, model_statistics(stats_client))
                row["composing_models"] = breakdowns[concurrency]
                perf_rows.append(row)
                batch = breakdowns[concurrency].get(names.encoder_decoder, {})
                log(f"  perf_analyzer c={concurrency}: {row['throughput']:.2f}/s p99 "
                    f"{row['p99_ms']:.0f} ms, encoder-decoder batch "
                    f"{batch.get('average_batch_size') or 0:.2f}")
            if profile["int8"]:   # its breakdown at the headline concurrency
                before = model_statistics(stats_client)
                perf_int8 = run_perf_analyzer(
                    server.grpc_url, inputs_json, HEADLINE_CONCURRENCY,
                    results_dir / f"{name}_int8_perf_analyzer_c{HEADLINE_CONCURRENCY}.csv", work,
                    measurement_ms=profile["perf_ms"], model=ModelNames(INT8_PREFIX).ensemble)
                perf_int8["composing_models"] = breakdown(before, model_statistics(stats_client))
                log(f"  perf_analyzer int8 c={HEADLINE_CONCURRENCY}: "
                    f"{perf_int8['throughput']:.2f}/s p99 {perf_int8['p99_ms']:.0f} ms")
            stats_client.close()
            log("[4/5] one closed-loop load generator: Triton (HTTP) and the baselines, "
                "interleaved per concurrency")
            sweeps, headline_rounds = sweep_with_headline_rounds(targets, requests, profile)
    finally:
        for baseline in baselines:
            baseline.stop()

    log("[5/5] efficiency: FLOPs per sample, GEMM rate, achieved fraction")
    loaded = load_checkpoint(checkpoint)
    settings = loaded.settings.task
    preprocessor = VisualEntailmentPreprocessor(loaded.settings, loaded.checkpoint.vocab_file,
                                                loaded.checkpoint.merges_file)
    preprocessor_lengths = [len(preprocessor.source_ids(r["hypothesis"], r["premise"]))
                            for r in requests]
    flops = count_flops(loaded.model, preprocessor_lengths, settings.source_length,
                        settings.patch_image_size)
    gemm = measure_gemm_flops()
    at8 = breakdowns[HEADLINE_CONCURRENCY][names.encoder_decoder]
    achieved = flops["flops_per_sample"] * at8["inferences"] / at8["execution_compute_infer_s"]
    efficiency = {
        **flops,
        "published_parameters_m": PUBLISHED_PARAMETERS_M[profile["size_name"]],
        "parameters_with_real_vocabulary_m": flops["parameters_with_real_vocabulary"] / 1e6,
        "gemm": gemm,
        "encoder_decoder_at_concurrency_8": at8,
        "achieved_flops_per_second": achieved,
        "achieved_fraction_of_gemm": achieved / gemm["flops_per_second"],
        "encoder_decoder_ms_per_sample": at8["execution_compute_infer_s"] / at8["inferences"] * 1e3,
    }
    if perf_int8:
        int8_at8 = perf_int8["composing_models"][ModelNames(INT8_PREFIX).encoder_decoder]
        efficiency["int8_encoder_decoder_ms_per_sample"] = \
            int8_at8["execution_compute_infer_s"] / int8_at8["inferences"] * 1e3
    log(f"  {flops['flops_per_sample'] / 1e9:.2f} GFLOP/sample, GEMM "
        f"{gemm['flops_per_second'] / 1e9:.1f} GFLOP/s, achieved "
        f"{achieved / 1e9:.1f} GFLOP/s = {efficiency['achieved_fraction_of_gemm']:.0%}")

    results = {
        # The comparison: one load generator, same inputs, same concurrency, interleaved.
        "triton": headline(headline_rounds["triton"]),
        "triton_perf_analyzer_grpc": headline(perf_rows),
        "triton_int8": headline(headline_rounds.get("triton_int8")),
        "perf_analyzer_int8": perf_int8,
        "baseline": headline(headline_rounds.get("baseline")),
        "baseline_eager": headline(headline_rounds.get("baseline_eager")),
        "headline_rounds": headline_rounds,
        "concurrency": HEADLINE_CONCURRENCY,
        "model": profile["model"],
        "machine": machine(),
        "commit": source_commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "profile": {k: v for k, v in profile.items() if k != "architecture"},
        "perf_analyzer": perf_rows,
        "sweeps": sweeps,
        "efficiency": efficiency,
        "seconds": round(time.monotonic() - started, 1),
    }
    if results["baseline"] and results["baseline"]["throughput"] > 0:
        results["ratios_at_concurrency_8"] = {
            "throughput_triton_over_modelscope": results["triton"]["throughput"] / results["baseline"]["throughput"],
            "p99_triton_over_modelscope": results["triton"]["p99_ms"] / results["baseline"]["p99_ms"],
            "throughput_triton_perf_analyzer_over_modelscope": results["triton_perf_analyzer_grpc"]["throughput"] / results["baseline"]["throughput"],
        }
        if results["triton_int8"]:
            results["ratios_at_concurrency_8"]["throughput_triton_int8_over_modelscope"] = \
                results["triton_int8"]["throughput"] / results["baseline"]["throughput"]
    out = results_dir / f"{name}.json" if name == "cpu" else \
        results_dir / f"gpu-{machine().get('gpu', 'unknown').lower().replace(' ', '-')}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    log(f"wrote {out} and {out.with_suffix('.png')} in {results['seconds']:.0f} s")
    return out


if __name__ == "__main__":
    main()
