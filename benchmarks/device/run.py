"""The GPU benchmark in one command (``bash benchmarks/device/run.sh``), and its CPU smoke run.

    bash benchmarks/device/run.sh            # a GPU machine: OFA-large architecture, 480 px, fp16
    bash benchmarks/device/run.sh --smoke    # this CPU: the tiny checkpoint, the same steps

run.sh unpacks the device kit (benchmarks/device/kit.py) and starts this module. Stages, in
order of what each figure is worth when the machine's time runs out:
1. environment: the GPU (name, PCIe or SXM, driver, clocks), torch, the kit, the commit;
2. checkpoint and export: random weights of the profile's architecture, exported for the
   PyTorch runtime in the profile's precision, validated;
3. encoder-decoder alone, in this process, through the runtime the server uses (CUDA graphs):
   samples/s and achieved TFLOP/s at each batch size, against a dense GEMM in the same
   precision measured in the same run;
4. goldens on the device: every ModelScope golden case of the tiny checkpoint in fp32 and
   fp16, labels and probability differences, and CUDA graphs against eager kernels;
5. the ensemble on a real tritonserver: perf_analyzer over gRPC on photo-like JPEGs of the
   usual sizes at each concurrency, with the composing models' server-side breakdown;
6. against the eager one-request-at-a-time PyTorch service on the same device, with one
   closed-loop load generator and the same requests, interleaved per concurrency;
7. the generating tasks (captioning, VQA, grounding): the same weights as a checkpoint of
   each task (its released beam search), exported for the PyTorch runtime in the profile's
   precision, its public model on its own tritonserver, perf_analyzer over gRPC at the
   profile's concurrencies with the generator's server-side batch and compute.
Each stage's failure is recorded and the next stage still runs. The results JSON is rewritten
after every measurement, so a run cut short still returns figures; a stage that would not fit
in the time left (``--budget``) is skipped and says so. Files under the output directory: the
JSON, the perf_analyzer CSV, a plot and the logs (at most 8: what a GPU machine sends back).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from benchmarks.run import LARGE, breakdown, commit, interleaved_sweep, log, machine, \
    model_statistics  # noqa: E402


def served_names(task: str | None = None):
    """The served model names of ``task``'s export, unprefixed (triton_config.ModelNames;
    default: visual entailment's)."""
    from ofa_triton.triton_config import ModelNames

    return ModelNames(task=task) if task else ModelNames()


PROFILES = {
    "gpu": dict(model="ofa-large architecture, 480 px, fp16, random weights",
                architecture=LARGE, image_size=480, device="gpu", precision="fp16",
                batch_sizes=(1, 2, 4, 8, 16, 32, 64), max_batch_size=64,
                preprocess_instances=12, encoder_decoder_instances=2, queue_delay_us=2000,
                concurrency=(1, 2, 4, 8, 16, 32, 64, 128, 256), perf_ms=3000, perf_trials=4,
                comparison_concurrency=(1, 16, 64), comparison_s=8.0, gemm_size=8192,
                generation_concurrency={"captioning": (16, 64, 256), "vqa": (64,),
                                        "grounding": (64,)},
                generation_max_batch_size=64, generation_perf_ms=3000,
                budget_s=450, server_timeout_s=300),
    "smoke": dict(model="ofa-tiny architecture, 64 px, fp32, random weights (CPU smoke run)",
                  architecture={}, image_size=64, device="cpu", precision="fp32",
                  batch_sizes=(1, 2, 4, 8), max_batch_size=8,
                  preprocess_instances=1, encoder_decoder_instances=1, queue_delay_us=2000,
                  concurrency=(1, 4), perf_ms=800, perf_trials=3,
                  comparison_concurrency=(2,), comparison_s=2.0, gemm_size=512,
                  generation_concurrency={"captioning": (2,), "vqa": (2,), "grounding": (2,)},
                  # Longer windows than entailment's: a generating request takes longer, and
                  # perf_analyzer must see enough of them in a window to call it stable.
                  generation_max_batch_size=8, generation_perf_ms=2000,
                  budget_s=280, server_timeout_s=120),
}
# The golden checkpoint compared on the device in these precisions.
GOLDEN_CHECKPOINT = "tiny"
GOLDEN_PRECISIONS = ("fp32", "fp16")


class DeviceRun:
    """The results of one run, saved after every change; stages that fail are recorded."""

    def __init__(self, profile_name: str, out: Path, work: Path, budget_s: float):
        self.profile = dict(PROFILES[profile_name])
        self.name = profile_name
        self.out, self.work = out, work
        self.started = time.monotonic()
        self.budget_s = budget_s
        self.results: dict = {"profile_name": profile_name, "model": self.profile["model"],
                              "profile": {k: v for k, v in self.profile.items()
                                          if k != "architecture"},
                              "commit": commit(), "stages": {},
                              "date": datetime.datetime.now(datetime.timezone.utc)
                              .isoformat(timespec="seconds")}
        self.path = out / ("smoke.json" if profile_name == "smoke" else "gpu.json")

    def remaining(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def save(self) -> None:
        self.results["seconds"] = round(time.monotonic() - self.started, 1)
        scratch = self.path.with_suffix(".tmp")
        scratch.write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        os.replace(scratch, self.path)

    def rename_for_gpu(self, gpu_name: str) -> None:
        """gpu-<card>.json once the card is known (figures of different cards never mix)."""
        slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
        old, self.path = self.path, self.out / f"gpu-{slug}.json"
        if old.exists():
            old.unlink()

    @contextlib.contextmanager
    def stage(self, name: str, needs_s: float = 0.0):
        """Run a stage: record its seconds, or its error (and go on), or that it was skipped
        for lack of time. Yields the stage's result dict."""
        record: dict = {}
        self.results["stages"][name] = record
        if self.remaining() < needs_s:
            record["skipped"] = (f"{self.remaining():.0f} s left of the {self.budget_s:.0f} s "
                                 f"budget; this stage needs about {needs_s:.0f} s")
            log(f"[skip] {name}: {record['skipped']}")
            self.save()
            yield None
            return
        log(f"[{name}]")
        began = time.monotonic()
        try:
            yield record
            record["status"] = "ok"
        except Exception as error:   # recorded; the next stage still runs
            record["status"] = "failed"
            record["error"] = f"{type(error).__name__}: {error}"[:4000]
            record["traceback"] = traceback.format_exc()[-4000:]
            log(f"[{name}] FAILED: {record['error'][:500]}")
        finally:
            record["seconds"] = round(time.monotonic() - began, 1)
            self.save()


# --- stages -----------------------------------------------------------------------------------

def describe_environment(run: DeviceRun) -> None:
    import torch

    info = {"machine": machine(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "numpy": __import__("numpy").__version__, "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        query = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,pci.bus_id,driver_version,memory.total,"
             "clocks.max.sm,power.limit", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = query.stdout.strip()
        name = torch.cuda.get_device_name(0)
        info["gpu"] = name
        # SXM boards: "H100 80GB HBM3", "H200"; PCIe: "H100 PCIe", "H200 NVL".
        info["form_factor"] = "PCIe" if re.search(r"PCIe|NVL", name) else "SXM"
        properties = torch.cuda.get_device_properties(0)
        info["multiprocessors"] = properties.multi_processor_count
        info["memory_gib"] = round(properties.total_memory / 2 ** 30, 1)
        run.rename_for_gpu(name)
    kit = os.environ.get("OFA_DEVICE_KIT_RECORD")
    if kit and Path(kit).is_file():
        record = json.loads(Path(kit).read_text())
        info["kit"] = {key: record.get(key) for key in ("versions", "total_bytes", "commit",
                                                        "command", "built")}
    run.results["environment"] = info


def make_checkpoint_and_export(run: DeviceRun, record: dict) -> tuple[Path, Path]:
    from ofa_triton.export import export_repository
    from ofa_triton.tiny_checkpoint import generate_tiny_checkpoint
    from ofa_triton.triton_config import ServingOptions

    profile = run.profile
    checkpoint, repository = run.work / "checkpoint", run.work / "repository"
    began = time.monotonic()
    generate_tiny_checkpoint(checkpoint, image_size=profile["image_size"],
                             architecture_overrides=profile["architecture"])
    record["checkpoint_s"] = round(time.monotonic() - began, 1)
    options = ServingOptions(device=profile["device"], max_batch_size=profile["max_batch_size"],
                             queue_delay_us=profile["queue_delay_us"],
                             preprocess_instances=profile["preprocess_instances"],
                             encoder_decoder_instances=profile["encoder_decoder_instances"])
    shutil.rmtree(repository, ignore_errors=True)
    export = export_repository(checkpoint, repository, options=options, runtime="torch",
                               precision=profile["precision"],
                               progress=lambda m: log("      " + m.strip()))
    record["validation"] = export["validation"]
    return checkpoint, repository


def sample_batch(repository: Path, rows: int) -> dict:
    """``rows`` preprocessed benchmark requests (photo-like JPEGs of the usual sizes), padded
    to the configs' fixed lengths as Triton delivers them."""
    from benchmarks.inputs import build_requests
    from ofa_triton.tasks.visual_entailment.preprocessing import VisualEntailmentPreprocessor, stack

    preprocessor = VisualEntailmentPreprocessor.from_directory(
        repository / served_names().preprocess / "1")
    requests = build_requests(min(rows, 16))
    tensors = [preprocessor.tensors(r["image"], r["hypothesis"], r["premise"]) for r in requests]
    return stack([tensors[i % len(tensors)] for i in range(rows)])


def measure_encoder_decoder(run: DeviceRun, checkpoint: Path, repository: Path,
                            record: dict) -> None:
    """Samples/s per batch size through the serving runtime, and the achieved fraction of the
    GEMM rate measured in the same run."""
    import torch

    from benchmarks.efficiency import count_flops, measure_gemm_flops
    from ofa_triton.export import load_checkpoint
    from ofa_triton.torch_runtime import DTYPES, TorchEncoderDecoder

    profile = run.profile
    gpu = torch.cuda.is_available() and profile["device"] == "gpu"
    device = "cuda" if gpu else "cpu"
    loaded = load_checkpoint(checkpoint)
    task = loaded.settings.task
    # The graphs run at the fixed padded lengths, so that is the work each sample costs.
    flops = count_flops(loaded.model, [task.source_length], task.source_length,
                        task.patch_image_size)
    del loaded
    record["flops_per_sample"] = flops["flops_per_sample_padded"]
    record["parameters"] = flops["parameters"]
    dtype = DTYPES[profile["precision"]]
    record["gemm"] = measure_gemm_flops(profile["gemm_size"], device=device, dtype=dtype)
    log(f"      {flops['flops_per_sample_padded'] / 1e12:.3f} TFLOP/sample; dense "
        f"{record['gemm']['dtype']} GEMM {record['gemm']['flops_per_second'] / 1e12:.1f} TFLOP/s")
    began = time.monotonic()
    runtime = TorchEncoderDecoder(repository / served_names().encoder_decoder / "1",
                                  instance_kind="GPU" if gpu else "CPU",
                                  cuda_graph_batch_sizes=profile["batch_sizes"] if gpu else ())
    record["load_and_capture_s"] = round(time.monotonic() - began, 1)
    record["runtime"] = runtime.description
    batch = sample_batch(repository, max(profile["batch_sizes"]))
    record["batches"] = []
    for rows in profile["batch_sizes"]:
        part = {name: tensor[:rows] for name, tensor in batch.items()}
        for _ in range(2):
            runtime(part)
        iterations, began = 0, time.perf_counter()
        while iterations < 3 or (time.perf_counter() - began < 1.0 and iterations < 200):
            runtime(part)
            iterations += 1
        seconds = (time.perf_counter() - began) / iterations
        achieved = rows * record["flops_per_sample"] / seconds
        row = {"batch": rows, "ms_per_batch": seconds * 1e3, "samples_per_s": rows / seconds,
               "achieved_tflops": achieved / 1e12,
               "fraction_of_gemm": achieved / record["gemm"]["flops_per_second"]}
        record["batches"].append(row)
        log(f"      batch {rows}: {row['samples_per_s']:.1f} samples/s, "
            f"{row['achieved_tflops']:.1f} TFLOP/s = {row['fraction_of_gemm']:.0%} of GEMM")
        run.save()
    best = max(record["batches"], key=lambda r: r["samples_per_s"])
    record["best"] = best
    del runtime
    if gpu:
        torch.cuda.empty_cache()


def compare_goldens(run: DeviceRun, record: dict) -> None:
    """Every golden case of the tiny checkpoint in fp32 and fp16 through the serving runtime on
    this device: labels and probabilities against ModelScope's, fp16 against fp32, and CUDA
    graphs against eager kernels."""
    import numpy as np
    import torch

    from ofa_triton.export import export_repository
    from ofa_triton.tasks.visual_entailment.labels import ANSWER_TO_LABEL, scores_to_outputs
    from ofa_triton.tasks.visual_entailment.preprocessing import VisualEntailmentPreprocessor, stack
    from ofa_triton.tiny_checkpoint import generate_tiny_checkpoint
    from ofa_triton.torch_runtime import TorchEncoderDecoder
    from tests.golden.cases import CHECKPOINTS, write_images

    goldens = json.loads((ROOT / "tests" / "golden" /
                          f"{GOLDEN_CHECKPOINT}_visual_entailment.json").read_text())
    cases = [c for c in goldens["cases"] if c["hypothesis"].strip()]
    images = write_images(run.work / "golden_images")
    checkpoint = generate_tiny_checkpoint(run.work / "golden_checkpoint",
                                          **CHECKPOINTS[GOLDEN_CHECKPOINT])
    gpu = torch.cuda.is_available() and run.profile["device"] == "gpu"
    expected = np.array([c["probabilities"] for c in cases])
    probabilities = {}
    for precision in GOLDEN_PRECISIONS:
        repository = run.work / f"golden_{precision}"
        shutil.rmtree(repository, ignore_errors=True)
        export_repository(checkpoint, repository, runtime="torch", precision=precision,
                          progress=lambda _: None)
        preprocessor = VisualEntailmentPreprocessor.from_directory(
            repository / served_names().preprocess / "1")
        batch = stack([preprocessor.tensors(images[c["image"]].read_bytes(), c["hypothesis"],
                                            c["premise"]) for c in cases])
        version_dir = repository / served_names().encoder_decoder / "1"
        runtime = TorchEncoderDecoder(version_dir, instance_kind="GPU" if gpu else "CPU",
                                      cuda_graph_batch_sizes=(len(cases),) if gpu else ())
        scores = runtime(batch)
        probabilities[precision] = np.exp(scores.astype(np.float64))
        labels = scores_to_outputs(scores, goldens["answers"])[0]
        same = sum(label == ANSWER_TO_LABEL[c["answer"]] for label, c in zip(labels, cases))
        record[precision] = {
            "cases": len(cases), "labels_equal_to_modelscope": int(same),
            "max_probability_difference_to_modelscope":
                float(np.abs(probabilities[precision] - expected).max()),
            "runtime": runtime.description}
        if gpu:
            eager = TorchEncoderDecoder(version_dir, instance_kind="GPU")
            record[precision]["max_log_prob_difference_graphs_vs_eager"] = float(
                np.abs(scores - eager(batch)).max())
        log(f"      {precision}: {same}/{len(cases)} labels as ModelScope's, max |dp| "
            f"{record[precision]['max_probability_difference_to_modelscope']:.2e}")
    record["fp16_vs_fp32_max_probability_difference"] = float(
        np.abs(probabilities["fp16"] - probabilities["fp32"]).max())
    record["fp16_vs_fp32_labels_equal"] = int(
        (probabilities["fp16"].argmax(1) == probabilities["fp32"].argmax(1)).sum())


def start_server(run: DeviceRun, repository: Path, record: dict,
                 encoder_decoder: str | None = None,
                 log_name: str = "tritonserver.log"):
    """The exported repository on a real tritonserver (the kit's). If its instances cannot be
    placed as KIND_GPU, once more as KIND_CPU instances that run on the GPU (torch_device):
    ``encoder_decoder``'s (default: visual entailment's)."""
    from ofa_triton.server import ServerOptions, TritonServer, find_triton

    record["tritonserver"] = str(find_triton().binary)
    options = ServerOptions.loopback(repository)
    server = TritonServer(options, log_path=run.work / log_name).start()
    try:
        server.wait_ready(run.profile["server_timeout_s"])
        return server
    except (RuntimeError, TimeoutError) as error:
        server.stop()
        if run.profile["device"] != "gpu":
            raise
        record["kind_gpu_failure"] = str(error)[-3000:]
        log("      KIND_GPU did not load; trying KIND_CPU instances with torch_device cuda:0")
        encoder_decoder = encoder_decoder or served_names().encoder_decoder
        config = repository / encoder_decoder / "config.pbtxt"
        text = config.read_text().replace("kind: KIND_GPU", "kind: KIND_CPU").replace(
            'key: "torch_device", value: { string_value: "" }',
            'key: "torch_device", value: { string_value: "cuda:0" }')
        config.write_text(text)
        record["instance_kind"] = "KIND_CPU with torch_device cuda:0"
        server = TritonServer(ServerOptions.loopback(repository),
                              log_path=run.work / log_name.replace(".log", "-retry.log")).start()
        server.wait_ready(run.profile["server_timeout_s"])
        return server


def perf_sweep(run: DeviceRun, server, inputs_json: Path, record: dict) -> None:
    import tritonclient.http as httpclient

    from benchmarks.perf import run_perf_analyzer

    profile = run.profile
    record["levels"] = []
    public_model = served_names().ensemble
    stats = httpclient.InferenceServerClient(server.http_url)
    for concurrency in profile["concurrency"]:
        # A level takes up to perf_trials windows (twice that if it needs the looser
        # stability threshold); the window does not grow with the concurrency here: at GPU
        # rates even a 3 s window holds thousands of requests.
        needs = profile["perf_ms"] / 1e3 * profile["perf_trials"] + 5
        if run.remaining() < needs + 60:   # keep a minute for the comparison
            record.setdefault("skipped_levels", []).append(concurrency)
            continue
        before = model_statistics(stats)
        row = run_perf_analyzer(server.grpc_url, inputs_json, concurrency,
                                run.work / f"perf_c{concurrency}.csv", run.work,
                                measurement_ms=profile["perf_ms"],
                                max_trials=profile["perf_trials"], grow_window=False)
        row["composing_models"] = breakdown(before, model_statistics(stats))
        record["levels"].append(row)
        steps = row["composing_models"]
        log(f"      c={concurrency}: {row['throughput']:.1f}/s p99 {row['p99_ms']:.0f} ms; "
            + "; ".join(f"{name} batch {s['average_batch_size'] or 0:.1f} queue "
                        f"{s['queue_ms']:.1f} ms compute {s['compute_infer_ms']:.1f} ms"
                        for name, s in steps.items() if name != public_model))
        run.save()
    stats.close()
    if record["levels"]:
        record["best"] = max(record["levels"], key=lambda r: r["throughput"])
    write_perf_csv(run, record["levels"])


def write_perf_csv(run: DeviceRun, levels: list[dict]) -> None:
    """perf_analyzer's CSV rows of every level in one file."""
    rows = []
    for level in levels:
        with open(run.work / level["csv"]) as handle:
            rows += [{"concurrency_level": level["concurrency"], **row}
                     for row in csv.DictReader(handle)]
    if rows:
        with open(run.out / "perf_analyzer.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def compare_with_eager(run: DeviceRun, server, eager, record: dict) -> None:
    """Triton (HTTP) and the eager service, one load generator, the same requests, back to
    back at each concurrency."""
    from benchmarks.inputs import build_requests
    from benchmarks.loadgen import TritonTarget, run_load

    profile = run.profile
    requests = build_requests()
    targets = [TritonTarget(server.http_url), eager.target()]
    for target in targets:
        run_load(target, requests, 1, 1.0, warmup=0)   # the first requests initialize lazily
    levels = [c for c in profile["comparison_concurrency"]
              if run.remaining() > 2 * profile["comparison_s"] + 10]
    record["sweeps"] = interleaved_sweep(targets, requests,
                                         {"concurrency": tuple(levels),
                                          "duration": profile["comparison_s"]})
    record["ratios"] = []
    for triton, eager_row in zip(record["sweeps"]["triton"], record["sweeps"]["eager"]):
        if eager_row["throughput"] > 0 and eager_row["p99_ms"] > 0:
            record["ratios"].append({
                "concurrency": triton["concurrency"],
                "throughput_triton_over_eager": triton["throughput"] / eager_row["throughput"],
                "p99_triton_over_eager": triton["p99_ms"] / eager_row["p99_ms"]})


# The generating tasks measured after the entailment stages: the task (its public model and
# generator: triton_config.ModelNames), inputs, and the released configuration of the task
# (ModelScope's) for the checkpoint's weights.
GENERATING = {
    "captioning": dict(task="image-captioning", inputs=("image",),
                       beam_search={"beam_size": 5, "max_len_b": 16, "no_repeat_ngram_size": 3}),
    "vqa": dict(task="visual-question-answering", inputs=("image", "question"),
                beam_search={"beam_size": 5, "max_len_b": 16, "no_repeat_ngram_size": 3}),
    "grounding": dict(task="visual-grounding", inputs=("image", "text"),
                      beam_search={"beam_size": 5, "max_len_b": 4, "min_len": 4,
                                   "no_repeat_ngram_size": 3}),
}


def generating_checkpoint(checkpoint: Path, directory: Path, task: str) -> Path:
    """The entailment checkpoint's weights and vocabulary as a checkpoint of a generating task
    (ModelScope's released configuration of it): generating another checkpoint of the large
    architecture would cost the device minutes. The weights are not shaped for the task, so
    captions and answers often run to the maximum length: the slow case."""
    from ofa_triton.text import NUM_BINS

    spec = GENERATING[task]
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for item in checkpoint.iterdir():
        if item.is_file() and item.name not in ("configuration.json", "answer2label.json"):
            os.link(item, directory / item.name)
    configuration = json.loads((checkpoint / "configuration.json").read_text())
    model = configuration["model"]
    model.pop("answer2label", None)
    model.update(gen_type="generation", prompt_type="none", beam_search=dict(spec["beam_search"]))
    if task == "grounding":
        vocab_size = json.loads((checkpoint / "config.json").read_text())["vocab_size"]
        model["beam_search"]["constraint_range"] = f"{vocab_size - NUM_BINS},{vocab_size}"
    configuration.update(task=spec["task"], pipeline={"type": spec["task"]})
    (directory / "configuration.json").write_text(json.dumps(configuration, indent=2) + "\n")
    return directory


def measure_generation(run: DeviceRun, checkpoint: Path, task: str, record: dict) -> None:
    """A generating task's public model alone on a tritonserver: perf_analyzer over gRPC per
    concurrency, with the generator's batch and compute."""
    import tritonclient.http as httpclient

    from benchmarks.inputs import build_requests, write_perf_analyzer_inputs
    from benchmarks.perf import run_perf_analyzer
    from ofa_triton.export import export_repository
    from ofa_triton.triton_config import ServingOptions

    profile, spec = run.profile, GENERATING[task]
    names = served_names(spec["task"])
    source = generating_checkpoint(checkpoint, run.work / f"checkpoint-{task}", task)
    repository = run.work / f"repository-{task}"
    shutil.rmtree(repository, ignore_errors=True)
    options = ServingOptions(device=profile["device"],
                             max_batch_size=profile["generation_max_batch_size"],
                             queue_delay_us=profile["queue_delay_us"],
                             preprocess_instances=profile["preprocess_instances"],
                             encoder_decoder_instances=1)
    export = export_repository(source, repository, options=options, runtime="torch",
                               precision=profile["precision"],
                               progress=lambda m: log("      " + m.strip()))
    record["validation"] = export["validation"]
    inputs = write_perf_analyzer_inputs(build_requests(), run.work / f"{task}_inputs.json",
                                        inputs=spec["inputs"])
    server = start_server(run, repository, record, encoder_decoder=names.encoder_decoder,
                          log_name=f"tritonserver-{task}.log")
    try:
        stats = httpclient.InferenceServerClient(server.http_url)
        record["levels"] = []
        for concurrency in profile["generation_concurrency"][task]:
            window_ms = profile["generation_perf_ms"]
            if run.remaining() < window_ms / 1e3 * profile["perf_trials"] + 10:
                record.setdefault("skipped_levels", []).append(concurrency)
                continue
            before = model_statistics(stats)
            row = run_perf_analyzer(server.grpc_url, inputs, concurrency,
                                    run.work / f"{task}_perf_c{concurrency}.csv", run.work,
                                    measurement_ms=window_ms,
                                    max_trials=profile["perf_trials"], grow_window=False,
                                    model=names.ensemble)
            row["composing_models"] = breakdown(before, model_statistics(stats))
            record["levels"].append(row)
            generator = row["composing_models"].get(names.encoder_decoder, {})
            log(f"      {task} c={concurrency}: {row['throughput']:.1f}/s p99 "
                f"{row['p99_ms']:.0f} ms; generator batch "
                f"{generator.get('average_batch_size') or 0:.1f}, compute "
                f"{generator.get('compute_infer_ms', 0):.0f} ms")
            run.save()
        stats.close()
        if record["levels"]:
            record["best"] = max(record["levels"], key=lambda r: r["throughput"])
    finally:
        server.stop()


def plot(run: DeviceRun) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = run.results["stages"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    levels = (stages.get("ensemble_perf_analyzer") or {}).get("levels") or []
    if levels:
        x = [r["concurrency"] for r in levels]
        left.plot(x, [r["throughput"] for r in levels], "o-", label="Triton (perf_analyzer, gRPC)")
        right.plot(x, [r["p99_ms"] for r in levels], "o-", label="Triton (perf_analyzer, gRPC)")
    sweeps = (stages.get("against_eager") or {}).get("sweeps") or {}
    for name, rows in sweeps.items():
        x = [r["concurrency"] for r in rows]
        left.plot(x, [r["throughput"] for r in rows], "s--", label=f"{name} (load generator)")
        right.plot(x, [r["p99_ms"] for r in rows], "s--", label=f"{name} (load generator)")
    for axis, title in ((left, "throughput (inferences/s)"), (right, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrency")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    gpu = (run.results.get("environment") or {}).get("gpu", "CPU smoke run")
    figure.suptitle(f"{run.profile['model']} on {gpu} ({run.results['commit']})", fontsize=9)
    figure.tight_layout()
    figure.savefig(run.path.with_suffix(".png"), dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="gpu")
    parser.add_argument("--out", type=Path, required=True, help="where the results go")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ofa-device-run"),
                        help="checkpoints, exports, logs")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds this run may take (default: the profile's)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    run = DeviceRun(args.profile, args.out, args.work,
                    args.budget or PROFILES[args.profile]["budget_s"])
    from benchmarks.inputs import build_requests, write_perf_analyzer_inputs
    from benchmarks.run import BaselineService
    from ofa_triton.server import free_port

    with run.stage("environment") as record:
        describe_environment(run)
    checkpoint = repository = None
    with run.stage("checkpoint_and_export") as record:
        checkpoint, repository = make_checkpoint_and_export(run, record)
    if repository is None:
        return run.path
    with run.stage("encoder_decoder_alone", needs_s=30) as record:
        if record is not None:
            measure_encoder_decoder(run, checkpoint, repository, record)
    with run.stage("goldens_on_device", needs_s=20) as record:
        if record is not None:
            compare_goldens(run, record)
    server = eager = None
    try:
        with run.stage("serve", needs_s=60) as record:
            if record is not None:
                # The eager service loads while the server does.
                eager = BaselineService("eager", "eager", Path(sys.executable), checkpoint,
                                        free_port(), run.work)
                server = start_server(run, repository, record)
        if server is not None:
            inputs = write_perf_analyzer_inputs(build_requests(),
                                                run.work / "perf_analyzer_inputs.json")
            with run.stage("ensemble_perf_analyzer", needs_s=30) as record:
                if record is not None:
                    perf_sweep(run, server, inputs, record)
            with run.stage("against_eager", needs_s=20) as record:
                if record is not None:
                    compare_with_eager(run, server, eager, record)
    finally:
        if server is not None:
            server.stop()
        if eager is not None:
            eager.stop()
    try:
        for task, needs_s in (("captioning", 90), ("vqa", 60), ("grounding", 60)):
            with run.stage(task, needs_s=needs_s) as record:
                if record is not None:
                    measure_generation(run, checkpoint, task, record)
    finally:
        logs = ["tritonserver.log", "tritonserver-retry.log", "eager.log"]
        for task in GENERATING:   # a failed stage's server log explains it
            if (run.results["stages"].get(task) or {}).get("status") == "failed":
                logs += [f"tritonserver-{task}.log", f"tritonserver-{task}-retry.log"]
        for log_file in logs:
            if (run.work / log_file).is_file():   # the tail: what explains a failure
                text = (run.work / log_file).read_bytes()[-2_000_000:]
                (run.out / log_file).write_bytes(text)
    with run.stage("plot") as record:
        plot(run)
    log(f"wrote {run.path} in {time.monotonic() - run.started:.0f} s")
    return run.path


if __name__ == "__main__":
    main()
