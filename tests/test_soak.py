"""A short soak (benchmarks.soak, the code behind `make soak`): 75 s of open-loop load with one
invalid request in ten, against its own server, with the stubs' and the server's memory
sampled every second."""

from __future__ import annotations

import benchmarks.soak as soak
from benchmarks.soak import SoakConfig, run_soak, write_results

# 75 s is mostly warm-up: glibc arenas, onnxruntime's memory arena and the per-batch-size
# buffers grow until every batch size has been seen, and that still happens in the second
# half of so short a run (observed here: up to about 10 MB). The 30-minute `make soak` holds
# the real limit (50 MB over its second half); this catches gross leaks only: 1 MB per request
# would add several hundred MB here.
GROWTH_LIMIT_MB = 100
# Below the soak's 80%: a shared 2-core CI runner's capacity drifts with its neighbours, and at
# 80% of an optimistic measurement the queues would grow for the whole run.
LOAD_FRACTION = 0.6

# What each kind of invalid request must get: benchmarks/soak.py itself only requires a 400
# whose error contains "image" (the first two kinds) or "UTF-8", which a wrong refusal would
# pass too; this test holds each kind to its own message. The soak compares by substring, so
# the whole error is given where it is fixed; a truncated JPEG's names the cut file's size and
# how many bytes Pillow had left, which vary with the request, around the part given here.
ENSEMBLE_REFUSAL = "[400] in ensemble 'ofa_visual_entailment', "
EXPECTED_REFUSALS = {
    "not_an_image": ENSEMBLE_REFUSAL + "could not decode the image: its 33 bytes are not an "
                    "image in an accepted format (JPEG, PNG, WEBP, GIF, BMP, TIFF; "
                    "--image-formats); it is text (send the image file's bytes, not its name "
                    "or URL)",
    "truncated_jpeg": " bytes): OSError: image file is truncated (",
    "not_utf8": ENSEMBLE_REFUSAL + "'hypothesis' is not valid UTF-8 (byte 9)",
}


def test_short_soak_serves_every_valid_request_and_refuses_every_invalid_one(
        exported_repositories, tmp_path, monkeypatch):
    assert {kind.name for kind in soak.INVALID_KINDS} == set(EXPECTED_REFUSALS)
    monkeypatch.setattr(soak, "INVALID_KINDS", tuple(
        kind._replace(fragment=EXPECTED_REFUSALS[kind.name]) for kind in soak.INVALID_KINDS))
    config = SoakConfig(minutes=1.25, load_fraction=LOAD_FRACTION, capacity_seconds=8,
                        sample_seconds=1, progress_seconds=30, growth_limit_mb=GROWTH_LIMIT_MB)
    result = run_soak(exported_repositories["tiny"], config, tmp_path)
    write_results(result, tmp_path / "soak.json")

    assert result["passed"], result["failures"]
    requests = result["requests"]
    assert requests["valid_ok"] > 0 and requests["valid_failed"] == 0
    assert requests["invalid_sent"] >= requests["sent"] // 10 > 0
    assert requests["invalid_refused"] == requests["invalid_sent"]
    # Every process was watched, each stub by its model instance, none restarted.
    processes = set(result["memory"])
    assert {"tritonserver", "ofa_encoder_decoder_0_0", "ofa_postprocess_0_0",
            "ofa_preprocess_0_0", "ofa_preprocess_0_1"} <= processes
    assert all(len(figures["pids"]) == 1 for figures in result["memory"].values())
    assert (tmp_path / "soak_memory.csv").read_text().startswith("elapsed_s,process,pid,rss_mb")
