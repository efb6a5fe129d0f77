"""Warmup: each composing model runs a real sample while it loads, before the server reports
ready, and a version that cannot answer its sample never becomes ready."""

from __future__ import annotations

import io
import shutil
import struct

import numpy as np
import pytest
from PIL import Image

from ofa_triton.settings import ServingSettings
from ofa_triton.limits import InputLimits
from ofa_triton.warmup import SAMPLE_HYPOTHESIS, SAMPLE_SIZE, sample_request, serialize_strings
from tests.conftest import start_triton

STEPS = ("ofa_preprocess", "ofa_encoder_decoder", "ofa_postprocess")


def _strings(data: bytes) -> list[bytes]:
    values = []
    while data:
        (length,) = struct.unpack("<I", data[:4])
        values.append(data[4:4 + length])
        data = data[4 + length:]
    return values


def test_export_writes_a_real_sample_for_every_step(exported_repositories):
    repository = exported_repositories["tiny"]
    task = ServingSettings.read(repository / "ofa_preprocess" / "1").task
    warmup = {step: repository / step / "warmup" for step in STEPS}
    (image,) = _strings((warmup["ofa_preprocess"] / "image").read_bytes())
    assert Image.open(io.BytesIO(image)).size == SAMPLE_SIZE
    assert _strings((warmup["ofa_preprocess"] / "hypothesis").read_bytes()) == \
        [SAMPLE_HYPOTHESIS.encode()]
    ids = np.frombuffer((warmup["ofa_encoder_decoder"] / "input_ids").read_bytes(), np.int64)
    assert ids.shape == (task.max_src_length + 2,) and ids[0] == 0 and (ids > 3).any()
    pixels = np.frombuffer((warmup["ofa_encoder_decoder"] / "patch_images").read_bytes(),
                           np.float32)
    assert pixels.size == 3 * task.patch_image_size ** 2 and pixels.std() > 0.1
    scores = np.frombuffer((warmup["ofa_postprocess"] / "answer_scores").read_bytes(), np.float32)
    assert scores.shape == (len(task.answers),) and np.isclose(np.exp(scores).sum(), 1, atol=1e-4)
    for step in STEPS:
        assert 'name: "sample_request"' in (repository / step / "config.pbtxt").read_text()


def test_every_step_warms_up_before_it_is_loaded(exported_repositories, tmp_path):
    repository = tmp_path / "repository"
    shutil.copytree(exported_repositories["tiny"], repository)
    server = start_triton(repository, tmp_path)
    server.options.log_verbose = 1
    with server:
        server.wait_ready()
    log = server.log()
    for step in STEPS:
        warmed = log.find(f"model '{step}' instance {step}_0_0 is running warmup sample "
                          "'sample_request'")
        loaded = log.find(f"successfully loaded '{step}'")
        assert 0 <= warmed < loaded, f"{step}: no warmup before it was loaded"


def test_a_version_that_fails_its_warmup_never_becomes_ready(exported_repositories, tmp_path):
    repository = tmp_path / "repository"
    shutil.copytree(exported_repositories["tiny"], repository)
    (repository / "ofa_preprocess" / "warmup" / "image").write_bytes(
        serialize_strings([b"these bytes are not an image"]))
    with start_triton(repository, tmp_path) as server:
        with pytest.raises(RuntimeError, match="exited") as failure:
            server.wait_ready(timeout=120)
    assert "warmup" in str(failure.value).lower()
    assert "could not decode the image" in str(failure.value)


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
