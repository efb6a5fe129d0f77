"""The benchmark harness behind `make bench` (benchmarks.run), end to end but short: the CPU
profile's checkpoint and exports (fp32 and int8 side by side), a real tritonserver, the real
perf_analyzer, the load generator against Triton and the eager service, the efficiency
figures, the JSON, the plot and the BENCHMARKS.md tables. The ModelScope baseline needs the
reference environment (make reference-env), which CI does not build; `make bench` runs it.

Speed is not asserted here (a benchmark, not a timed test): only that every part ran and
produced what BENCHMARKS.md is rendered from."""

from __future__ import annotations

import json

import pytest

from benchmarks import report, run


@pytest.fixture(scope="module")
def bench_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    out = run.main(["--profile", "cpu", "--concurrency", "1", "--duration", "2",
                    "--set", "perf_ms=3000", "rounds=1",
                    "--reference-python", str(root / "no-reference-environment"),
                    "--results-dir", str(root / "results"), "--work-dir", str(root / "work")])
    return out, json.loads(out.read_text())


def test_writes_the_results_file_the_issue_asks_for(bench_results):
    out, results = bench_results
    assert out.name == "cpu.json"
    for system in ("triton", "triton_int8", "baseline_eager"):
        assert results[system]["throughput"] > 0, system
        assert 0 < results[system]["p50_ms"] <= results[system]["p99_ms"], system
    assert results["baseline"] is None   # no reference environment here
    assert results["concurrency"] == 8
    assert results["model"].startswith("ofa-tiny architecture, 256 px")
    assert results["machine"]["cpus"] >= 1 and results["commit"]
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_every_level_ran_without_failures(bench_results):
    _, results = bench_results
    for system, rows in results["sweeps"].items():
        assert [row["concurrency"] for row in rows] == [1, 8], system
        assert all(row["failed"] == 0 and row["completed"] > 0 for row in rows), system


def test_perf_analyzer_rows_carry_the_composing_models(bench_results):
    out, results = bench_results
    assert [row["concurrency"] for row in results["perf_analyzer"]] == [1, 8]
    for row in results["perf_analyzer"]:
        assert row["throughput"] > 0
        assert (out.parent / row["csv"]).is_file()
        assert {"ofa_preprocess", "ofa_encoder_decoder", "ofa_postprocess"} <= set(
            row["composing_models"])
    int8 = results["perf_analyzer_int8"]["composing_models"]
    assert {"int8_ofa_preprocess", "int8_ofa_encoder_decoder", "int8_ofa_postprocess"} <= set(int8)


def test_efficiency_figures_are_consistent(bench_results):
    _, results = bench_results
    efficiency = results["efficiency"]
    # Counted FLOPs: the ResNet is most of them; parameters match OFA-tiny's published 33 M.
    assert 0.5 < efficiency["resnet_flops_per_sample"] / efficiency["flops_per_sample"] < 0.9
    assert abs(efficiency["parameters_with_real_vocabulary_m"]
               - efficiency["published_parameters_m"]) / efficiency["published_parameters_m"] < 0.05
    assert efficiency["gemm"]["flops_per_second"] > 0
    assert 0 < efficiency["achieved_fraction_of_gemm"] < 2
    assert efficiency["int8_encoder_decoder_ms_per_sample"] > 0


def test_report_renders_the_run(bench_results):
    _, results = bench_results
    text = report.render(results, "cpu")
    assert "Triton ensemble, int8 convolutions (HTTP)" in text
    assert "| 8 |" in text and "ofa_encoder_decoder" in text


GENERATING = {"captioning": ("image-captioning", "caption"),
              "vqa": ("visual-question-answering", "vqa"),
              "grounding": ("visual-grounding", "grounding")}


@pytest.fixture(scope="module")
def generation_results(tmp_path_factory):
    from benchmarks import generation

    root = tmp_path_factory.mktemp("bench-generation")
    # 5 s a level: at concurrency 8 a one-at-a-time service answers its eighth request after
    # 8 x ~350 ms here, and a level counts only requests that start and end within it.
    outs = generation.main(["--task", *GENERATING, "--concurrency", "1", "--duration", "5",
                            "--rounds", "1",
                            "--reference-python", str(root / "no-reference-environment"),
                            "--results-dir", str(root / "results"),
                            "--work-dir", str(root / "work")])
    return {name: (out, json.loads(out.read_text())) for name, out in zip(GENERATING, outs)}


@pytest.mark.parametrize("name", GENERATING)
def test_the_generation_benchmark_runs_end_to_end(generation_results, name):
    """benchmarks.generation (make bench's second half), per generating task: perf_analyzer
    with the composing models, the load generator against Triton and the eager service."""
    out, results = generation_results[name]
    task, short = GENERATING[name]
    assert out.name == f"cpu_{name}.json" and results["task"] == task
    assert results["export"] == {"runtime": "onnxruntime", "precision": "fp32"}
    for system in ("triton", "baseline_eager"):
        assert results[system]["throughput"] > 0, system
    assert results["baseline"] is None   # no reference environment here
    for system, rows in results["sweeps"].items():
        assert [row["concurrency"] for row in rows] == [1, 8], system
        assert all(row["failed"] == 0 and row["completed"] > 0 for row in rows), system
    for row in results["perf_analyzer"]:
        assert {f"ofa_{short}_preprocess", f"ofa_{short}_generator",
                f"ofa_{short}_postprocess"} <= set(row["composing_models"])
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_benchmarks_spell_no_model_name():
    """Model names come from ModelNames / ENSEMBLE_MODEL (a name prefix or a renamed template
    then reaches every benchmark); a string "ofa_..." in benchmarks/ code is a copy."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    quoted = [f"{path.relative_to(root)}:{node.lineno} {node.value!r}"
              for path in (root / "benchmarks").rglob("*.py")
              for node in ast.walk(ast.parse(path.read_text()))
              if isinstance(node, ast.Constant) and isinstance(node.value, str)
              and node.value.startswith("ofa_")]
    assert not quoted, quoted


@pytest.mark.parametrize("name", ["cpu.json", "soak.json", "chaos.json"])
def test_committed_results_record_the_commit_they_measured(name):
    from pathlib import Path

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / name
    commit = json.loads(results.read_text()).get("commit")
    assert commit and commit != "unknown" and not commit.endswith("-dirty"), (name, commit)
