"""Warmup: each composing model runs a real sample while it loads, before the server reports
ready, and a version that cannot answer its sample never becomes ready (and never crashes
the server: see ofa_triton.warmup on why it is not Triton's model_warmup)."""

from __future__ import annotations

import io
import json
import shutil
import time

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2

from ofa_triton.limits import InputLimits
from ofa_triton.tasks.visual_entailment.preprocessing import VisualEntailmentPreprocessor, stack
from ofa_triton.settings import ServingSettings
from ofa_triton.tasks.visual_entailment.export import SAMPLE_HYPOTHESIS, sample_request
from ofa_triton.manifest import read_manifest, write_manifest
from ofa_triton.warmup import (SAMPLE_SIZE, WarmupError, read_warmup_sample, serialize_strings,
                               warm_up)
from tests.conftest import start_triton

STEPS = ("ofa_preprocess", "ofa_encoder_decoder", "ofa_postprocess")


def model_config(model_dir) -> dict:
    """config.pbtxt as the Python backend passes it to initialize(): protobuf JSON."""
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def test_export_writes_a_real_sample_for_every_step(exported_repositories):
    repository = exported_repositories["tiny"]
    version_dir = repository / "ofa_preprocess" / "1"
    task = ServingSettings.read(version_dir).task
    sample = {step: read_warmup_sample(model_config(repository / step), repository / step / "1")
              for step in STEPS}
    request = sample["ofa_preprocess"]
    assert Image.open(io.BytesIO(request["image"][0, 0])).size == SAMPLE_SIZE
    assert request["hypothesis"].tolist() == [[SAMPLE_HYPOTHESIS.encode()]]
    # Each step's sample is what the step before it makes of the sample request.
    preprocessor = VisualEntailmentPreprocessor.from_directory(version_dir)
    expected = stack([preprocessor(request["image"][0, 0], request["hypothesis"][0, 0].decode(),
                                   request["premise"][0, 0].decode())])
    assert expected.keys() == sample["ofa_encoder_decoder"].keys()
    for name, tensor in expected.items():
        np.testing.assert_array_equal(sample["ofa_encoder_decoder"][name], tensor)
    assert (sample["ofa_encoder_decoder"]["input_ids"] > 3).any()
    scores = sample["ofa_postprocess"]["answer_scores"]
    assert scores.shape == (1, len(task.answers))
    assert np.isclose(np.exp(scores).sum(), 1, atol=1e-4)
    for step in STEPS:   # Triton's model_warmup is not used (ofa_triton.warmup says why)
        assert "model_warmup" not in (repository / step / "config.pbtxt").read_text()


def test_warm_up_names_the_version_and_the_cause(exported_repositories):
    model_dir = exported_repositories["tiny"] / "ofa_postprocess"
    args = {"model_config": json.dumps(model_config(model_dir)),
            "model_repository": str(model_dir), "model_version": "1"}
    seen = []
    assert warm_up(args, seen.append) >= 0
    assert seen[0]["answer_scores"].dtype == np.float32

    def broken(_sample):
        raise KeyError("answer_scores")

    with pytest.raises(WarmupError, match=r"version 1 of ofa_postprocess failed its warmup "
                       r"sample, so it is not loaded: KeyError: 'answer_scores'"):
        warm_up(args, broken)


def test_every_instance_of_every_step_warms_up(exported_repositories, tmp_path):
    """warm_up runs inside initialize(), which Triton awaits before it marks a model loaded,
    so the server cannot be ready before it. What the log shows is that every instance ran
    it; a stub's log lines reach the server's log asynchronously, so not their order."""
    repository = tmp_path / "repository"
    shutil.copytree(exported_repositories["tiny"], repository)
    instances = {"ofa_preprocess": 2, "ofa_encoder_decoder": 1, "ofa_postprocess": 1}
    with start_triton(repository, tmp_path) as server:
        server.wait_ready()
        deadline = time.monotonic() + 10
        while True:
            counts = {step: server.log().count(f"{step}: ") for step in STEPS}
            if counts == instances or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert counts == instances, server.log()[-3000:]
    assert server.log().count("warmed up in") == sum(instances.values())


def test_a_version_that_fails_its_warmup_never_becomes_ready(exported_repositories, tmp_path):
    repository = tmp_path / "repository"
    shutil.copytree(exported_repositories["tiny"], repository)
    version_dir = repository / "ofa_preprocess" / "1"
    (version_dir / "warmup" / "image").write_bytes(
        serialize_strings([b"these bytes are not an image"]))
    # The manifest covers the sample: re-record it, so that the load gets as far as warmup.
    record = read_manifest(version_dir)
    del record["artifacts"]
    write_manifest(version_dir, record)
    with start_triton(repository, tmp_path) as server:
        with pytest.raises(RuntimeError, match="exited with code 1;"):
            server.wait_ready(timeout=120)
    failure = next(line for line in server.log().splitlines() if "failed to load" in line)
    assert "version 1 of ofa_preprocess failed its warmup sample" in failure
    assert "could not decode the image" in failure
    # A crashing server would leave its Python stubs behind; TritonServer.stop() kills them.


@pytest.mark.parametrize("limits", [
    InputLimits(),
    InputLimits(max_image_pixels=1000, image_formats=("PNG",), max_text_chars=5),
    InputLimits(max_image_bytes=2000),
])
def test_the_sample_fits_the_exports_input_limits(limits):
    """Warmup goes through the same checks as a client's request: strict limits must not
    make the export write a sample that its own server refuses."""
    request = sample_request(limits)
    with Image.open(io.BytesIO(request["image"])) as image:
        assert image.format in limits.image_formats
        assert image.width * image.height <= limits.max_image_pixels
    assert len(request["image"]) <= limits.max_image_bytes
    assert 0 < len(request["hypothesis"]) <= limits.max_text_chars
    with pytest.raises(ValueError, match="max-image-bytes"):
        sample_request(InputLimits(max_image_bytes=10))
