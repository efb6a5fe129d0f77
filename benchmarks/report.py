"""Render benchmarks/results/<profile>.json as the tables of BENCHMARKS.md (between the
``<!-- results:NAME -->`` markers), so the document always shows the committed run."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "BENCHMARKS.md"
NAMES = {"triton": "Triton ensemble (HTTP)",
         "triton_int8": "Triton ensemble, int8 convolutions (HTTP)",
         "baseline": "ModelScope pipeline service", "baseline_eager": "eager PyTorch service"}


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render(results: dict, name: str) -> str:
    from ofa_triton.triton_config import ModelNames

    names = ModelNames()   # the default task's (visual entailment); int8 runs add a prefix
    machine = results["machine"]
    parts = [f"Run of {results['date']} at commit `{results['commit']}`, {results['seconds']:.0f} s; "
             f"{results['model']}; {machine.get('cpu_model', '?')}, {machine.get('cpus')} CPUs, "
             f"{machine.get('memory_gb', '?')} GB" + (f", {machine['gpu']}" if machine.get("gpu") else "")
             + f". Each load level ran {results['profile']['duration']:.0f} s after a 2 s warm-up."]
    headline = [[NAMES[key], f"{results[key]['throughput']:.2f}", f"{results[key]['p50_ms']:.0f}",
                 f"{results[key]['p99_ms']:.0f}"] for key in NAMES if results.get(key)]
    rounds = results["triton"].get("rounds", 1)
    parts.append(f"**At concurrency {results['concurrency']}** (one closed-loop load generator, "
                 f"same inputs, interleaved; median of {rounds} rounds):\n\n" + _table(
                     ["system", "throughput (req/s)", "p50 (ms)", "p99 (ms)"], headline))
    rounds_by_system = results.get("headline_rounds", {})
    for key in ("triton", "triton_int8"):
        per_round = [f"{t['throughput'] / b['throughput']:.2f}x" for t, b in
                     zip(rounds_by_system.get(key, []), rounds_by_system.get("baseline", []))]
        if per_round:
            parts.append(f"{NAMES[key]} / ModelScope throughput in each round: "
                         + ", ".join(per_round) + ".")
    if results.get("ratios_at_concurrency_8"):
        ratios = results["ratios_at_concurrency_8"]
        parts.append(f"Triton / ModelScope: **{ratios['throughput_triton_over_modelscope']:.2f}x "
                     f"throughput**, p99 ratio {ratios['p99_triton_over_modelscope']:.2f} "
                     f"(perf_analyzer's figure gives "
                     f"{ratios['throughput_triton_perf_analyzer_over_modelscope']:.2f}x)."
                     + (f" With int8 convolutions (opt-in, answers within 0.02): "
                        f"**{ratios['throughput_triton_int8_over_modelscope']:.2f}x**."
                        if "throughput_triton_int8_over_modelscope" in ratios else ""))
    sweep_rows = []
    for index, level in enumerate(results["profile"]["concurrency"]):
        row = [str(level)]
        for key in NAMES:
            entry = results["sweeps"].get(key)
            row.append(f"{entry[index]['throughput']:.2f} / {entry[index]['p99_ms']:.0f}"
                       if entry else "-")
        perf = results["perf_analyzer"][index]
        row.append(f"{perf['throughput']:.2f} / {perf['p99_ms']:.0f}")
        batch = perf["composing_models"].get(names.encoder_decoder, {}).get("average_batch_size")
        row.append(f"{batch:.2f}" if batch else "-")
        sweep_rows.append(row)
    parts.append("**Sweep** (throughput req/s / p99 ms):\n\n" + _table(
        ["concurrency", *NAMES.values(), "Triton, perf_analyzer (gRPC)",
         "encoder-decoder batch"], sweep_rows))
    at8 = next(r for r in results["perf_analyzer"] if r["concurrency"] == results["concurrency"])
    composing = dict(at8["composing_models"])
    composing.update((results.get("perf_analyzer_int8") or {}).get("composing_models", {}))
    breakdown_rows = [[model, f"{b['average_batch_size']:.2f}", f"{b['queue_ms']:.1f}",
                       f"{b['compute_input_ms']:.1f}", f"{b['compute_infer_ms']:.1f}",
                       f"{b['compute_output_ms']:.1f}"]
                      for model, b in composing.items()
                      if not model.endswith(names.ensemble)]
    parts.append(f"**Server-side breakdown at concurrency {results['concurrency']}** (perf_analyzer "
                 "run; Triton statistics per inference, ms; a batch's compute time is counted "
                 "for each of its requests):\n\n" + _table(
                     ["model", "avg batch", "queue", "compute input", "compute infer",
                      "compute output"], breakdown_rows))
    e = results["efficiency"]
    parts.append(_table(["efficiency", "value"], [
        ["FLOPs per sample (useful, at each request's tokens)", f"{e['flops_per_sample'] / 1e9:.2f} G"],
        ["of which ResNet", f"{e['resnet_flops_per_sample'] / 1e9:.2f} G"],
        ["FLOPs per sample at the padded length", f"{e['flops_per_sample_padded'] / 1e9:.2f} G"],
        ["parameters with OFA's real vocabulary (published)",
         f"{e['parameters_with_real_vocabulary_m']:.1f} M ({e['published_parameters_m']} M)"],
        ["dense GEMM, fp32 2048x2048, this machine", f"{e['gemm']['flops_per_second'] / 1e9:.1f} GFLOP/s"],
        ["encoder-decoder achieved (useful FLOPs / execution time)",
         f"{e['achieved_flops_per_second'] / 1e9:.1f} GFLOP/s"],
        ["fraction of the GEMM rate", f"**{e['achieved_fraction_of_gemm']:.0%}**"],
    ] + ([["encoder-decoder execution per sample at concurrency 8, fp32 / int8 convolutions",
           f"{e['encoder_decoder_ms_per_sample']:.1f} / "
           f"{e['int8_encoder_decoder_ms_per_sample']:.1f} ms"]]
         if "int8_encoder_decoder_ms_per_sample" in e else [])))
    return "\n\n".join(parts)


def update(name: str) -> None:
    results_path = ROOT / "benchmarks" / "results" / f"{name}.json"
    results = json.loads(results_path.read_text())
    text = DOCUMENT.read_text()
    pattern = re.compile(rf"(<!-- results:{re.escape(name)} -->\n).*?(<!-- /results:{re.escape(name)} -->)",
                         re.S)
    if not pattern.search(text):
        raise SystemExit(f"BENCHMARKS.md has no <!-- results:{name} --> section")
    DOCUMENT.write_text(pattern.sub(lambda m: m.group(1) + render(results, name) + "\n" + m.group(2),
                                    text))
    print(f"updated {DOCUMENT} from {results_path}")


if __name__ == "__main__":
    update(sys.argv[1] if len(sys.argv) > 1 else "cpu")
