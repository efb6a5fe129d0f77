"""``ofa-triton tune`` (ofa_triton.tune): candidates rendered from an export's own options,
and a real sweep with perf_analyzer against real tritonservers that picks the fastest
configuration within the p99 budget, or says that none fits."""

from __future__ import annotations

import json

import pytest

from ofa_triton.cli import main
from ofa_triton.triton_config import ENSEMBLE_MODEL
from ofa_triton.tune import Candidate, ExportedEnsemble, TuneError, best_within, grid


def test_grid_and_flags():
    candidates = grid([4, 16], [0, 2000], [2], [1, 2])
    assert len(candidates) == 8 and len(set(candidates)) == 8
    assert candidates[0].flags() == ("--max-batch-size 4 --queue-delay-us 0 "
                                     "--preprocess-instances 2 --encoder-decoder-instances 1")
    with pytest.raises(TuneError, match="empty"):
        grid([], [0], [1], [1])


def test_the_best_is_the_fastest_within_the_budget():
    results = [{"throughput": 50.0, "p99_ms": 300.0}, {"throughput": 40.0, "p99_ms": 120.0},
               {"throughput": 45.0, "p99_ms": 150.0}, {"error": "failed to load"}]
    assert best_within(results, 200) == results[2]
    assert best_within(results, 1000) == results[0]
    assert best_within(results, 100) is None


def test_a_candidate_keeps_the_export_and_changes_only_the_grid(exported_repositories,
                                                                 tmp_path):
    repository = exported_repositories["tiny"]
    exported = ExportedEnsemble.read(repository, ENSEMBLE_MODEL)
    out = exported.write_candidate(Candidate(4, 7000, 1, 2), tmp_path / "candidate")
    names = exported.names
    configs = {model: (out / model / "config.pbtxt").read_text()
               for model in names.by_template().values()}
    assert all("max_batch_size: 4" in text for text in configs.values())
    step_configs = [configs[m] for m in configs if m != names.ensemble]
    assert all("max_queue_delay_microseconds: 7000" in text for text in step_configs)
    assert "count: 2" in configs[names.encoder_decoder]
    assert "count: 1" in configs[names.preprocess]
    # Everything else as exported: the same queue policy, and the version directories linked.
    original = (repository / names.encoder_decoder / "config.pbtxt").read_text()
    assert ("max_queue_size: 256" in original) == ("max_queue_size: 256"
                                                    in configs[names.encoder_decoder])
    link = out / names.encoder_decoder / "1"
    assert link.is_symlink() and link.resolve() == (repository / names.encoder_decoder / "1")


def test_a_repository_without_the_model_is_refused(tmp_path, capsys):
    assert main(["tune", "--repository", str(tmp_path), "--p99-ms", "100"]) == 2
    assert "has no model 'ofa_visual_entailment'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        main(["tune", "--repository", str(tmp_path), "--p99-ms", "100",
              "--max-batch-sizes", "a,b"])
    assert stopped.value.code == 2
    assert "give whole numbers" in capsys.readouterr().err


def test_a_real_sweep_picks_the_fastest_within_the_budget(exported_repositories, tmp_path,
                                                          capsys):
    argv = ["tune", "--repository", str(exported_repositories["tiny"]), "--concurrency", "2",
            "--max-batch-sizes", "4", "--queue-delays-us", "0,5000",
            "--preprocess-instances", "1", "--encoder-decoder-instances", "1",
            "--measurement-ms", "1500", "--output", str(tmp_path / "tune")]
    assert main([*argv, "--p99-ms", "60000"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "tune" / "tune.json").read_text())
    measured = summary["results"]
    assert [r["queue_delay_us"] for r in measured] == [0, 5000]
    assert all(r["throughput"] > 0 and r["p99_ms"] > 0 for r in measured), measured
    assert summary["best"] == max(measured, key=lambda r: r["throughput"])
    assert f"export with: ofa-triton export ... {summary['best']['flags']}" in out

    # A budget no configuration meets: exit 1 and what to change.
    assert main([*argv, "--p99-ms", "0.001"]) == 1
    assert "no configuration kept p99 within" in capsys.readouterr().out
