"""Pure helpers of the Triton Python models (no server needed)."""

from __future__ import annotations

import numpy as np
import pytest

from ofa_triton.runtime import require_cuda, trim_padding
from ofa_triton.triton_requests import (RequestError, concat_batches, rows, split_rows,
                                        text_from_bytes)
from ofa_triton.settings import ServingSettings
from ofa_triton.triton_config import ModelNames, ServedVersions, ServingOptions, render_configs


def test_text_from_bytes():
    assert text_from_bytes(b"caf\xc3\xa9", "hypothesis") == "café"
    with pytest.raises(RequestError, match="'hypothesis' is not valid UTF-8"):
        text_from_bytes(b"\xff", "hypothesis")
    with pytest.raises(RequestError, match="must be a string"):
        text_from_bytes(3, "premise")


def test_rows_checks_shapes():
    assert rows(np.array([[b"a"], [b"b"]], dtype=object), "image", 2) == [b"a", b"b"]
    assert rows(None, "premise", 2) == [None, None]
    with pytest.raises(RequestError, match=r"shape \[batch, 1\]"):
        rows(np.array([b"a", b"b"], dtype=object), "image", 2)
    with pytest.raises(RequestError, match="has 1 rows but 'image' has 2"):
        rows(np.array([[b"a"]], dtype=object), "premise", 2)


def test_concat_and_split_round_trip():
    requests = [{"x": np.full((n, 2), n)} for n in (1, 3, 2)]
    batch, sizes = concat_batches(requests)
    assert batch["x"].shape == (6, 2) and sizes == [1, 3, 2]
    parts = split_rows(batch["x"] * 10, sizes)
    assert [p.shape[0] for p in parts] == sizes and (parts[1] == 30).all()


@pytest.fixture(scope="module")
def settings(exported_repositories):
    return ServingSettings.read(exported_repositories["tiny"] / "ofa_preprocess" / "1")


def test_gpu_and_cpu_configurations(settings):
    gpu = render_configs(settings, ServingOptions(device="gpu", encoder_decoder_instances=2,
                                                  preprocess_instances=4), ServedVersions(1),
                         ModelNames())
    assert "count: 2, kind: KIND_GPU" in gpu["ofa_encoder_decoder"]
    assert "count: 4, kind: KIND_CPU" in gpu["ofa_preprocess"]
    assert "KIND_CPU" in gpu["ofa_postprocess"]
    cpu = render_configs(settings, ServingOptions(device="cpu"), ServedVersions(1), ModelNames())
    assert "kind: KIND_CPU" in cpu["ofa_encoder_decoder"]
    for name, text in cpu.items():
        assert "$" not in text
        if name != "ofa_visual_entailment":
            assert "dynamic_batching" in text
        assert "max_batch_size: 32" in text
    assert "dims: [ 82 ]" in cpu["ofa_preprocess"]       # max_src_length 80 + bos + eos


def test_serving_options_are_checked():
    with pytest.raises(ValueError, match="device"):
        ServingOptions(device="tpu")
    with pytest.raises(ValueError, match="max_batch_size"):
        ServingOptions(max_batch_size=0)
    with pytest.raises(ValueError, match="name prefix"):
        ServingOptions(name_prefix="../large")


def test_trim_padding_keeps_every_non_pad_column():
    pad = 1
    batch = {"input_ids": np.array([[0, 5, 2, 1, 1, 1], [0, 5, 6, 7, 2, 1]]),
             "decoder_input_ids": np.array([[0, 5, 1, 1, 1], [0, 5, 6, 7, 1]]),
             "patch_images": np.zeros((2, 3, 4, 4), dtype=np.float32)}
    trimmed = trim_padding(batch, pad)
    assert trimmed["input_ids"].tolist() == [[0, 5, 2, 1, 1], [0, 5, 6, 7, 2]]
    assert trimmed["decoder_input_ids"].tolist() == [[0, 5, 1, 1], [0, 5, 6, 7]]
    assert trimmed["patch_images"] is batch["patch_images"]


def test_a_gpu_instance_refuses_onnxruntimes_silent_cpu_fallback():
    require_cuda(["CUDAExecutionProvider", "CPUExecutionProvider"], 0)
    with pytest.raises(RuntimeError, match="could not start its CUDA provider on GPU 1 .*"
                       r"onnxruntime-gpu\[cuda,cudnn\]"):
        require_cuda(["CPUExecutionProvider"], 1)
