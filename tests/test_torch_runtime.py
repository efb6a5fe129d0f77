"""The PyTorch runtime (``--runtime torch``): exports, served by a real tritonserver, against
ModelScope's goldens.

Tolerances (stated here, asserted below), probabilities against ModelScope's:
- fp32: 1e-4, the same as the onnxruntime graph (conftest.PROBABILITY_TOLERANCE);
- fp16: 3e-3; bf16: 2e-2, about three times what was measured on this CPU over every golden
  case, one padded batch per checkpoint: fp16 at most 1.03e-3 (tiny) and 4.8e-4 (variant),
  bf16 8.1e-3 and 4.9e-3 (bf16 keeps 8 bits of mantissa to fp16's 11), fp32 3.6e-7. Labels
  must equal ModelScope's wherever its two best answers are further apart than twice the
  tolerance (measured: every label equal in all three precisions).
The CUDA-graph tests need a GPU; the device run (benchmarks/device/run.sh) runs them there.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ofa_triton.tasks.visual_entailment.client import VisualEntailmentClient
from ofa_triton.export import export_repository
from ofa_triton.manifest import read_manifest, verify_repository
from ofa_triton.tasks.visual_entailment.preprocessing import VisualEntailmentPreprocessor, stack
from ofa_triton.runtime import (RuntimeParameters, RuntimeRecord, open_encoder_decoder,
                                parse_batch_sizes)
from ofa_triton.torch_runtime import WEIGHTS_FILE, TorchEncoderDecoder
from ofa_triton.triton_config import ServingOptions
from tests.conftest import PROBABILITY_TOLERANCE, assert_answers_match_goldens, start_triton

HALF_PRECISION_TOLERANCE = {"fp16": 3e-3, "bf16": 2e-2}


@pytest.fixture(scope="module")
def torch_repository(tmp_path_factory, checkpoint_dirs):
    """One repository: the tiny checkpoint's fp32 torch export unprefixed, the variant's fp32
    torch export, and the tiny's fp16 and bf16 torch exports, each under its own prefix."""
    repository = tmp_path_factory.mktemp("torch") / "repository"
    exports = {"": ("tiny", "fp32"), "variant_": ("variant", "fp32"),
               "fp16_": ("tiny", "fp16"), "bf16_": ("tiny", "bf16")}
    for prefix, (name, precision) in exports.items():
        export_repository(checkpoint_dirs[name], repository, runtime="torch",
                          precision=precision, options=ServingOptions(name_prefix=prefix),
                          progress=lambda _: None)
    return repository


@pytest.fixture(scope="module")
def torch_server(torch_repository, tmp_path_factory):
    with start_triton(torch_repository, tmp_path_factory.mktemp("torch-server")) as server:
        server.wait_ready()
        yield server


def test_export_writes_the_torch_artifacts_and_manifests_them(torch_repository):
    version_dir = torch_repository / "ofa_encoder_decoder" / "1"
    assert RuntimeRecord.read(version_dir) == RuntimeRecord("torch", "fp32")
    assert not (version_dir / "model.onnx").exists()
    manifest = read_manifest(version_dir)
    assert {WEIGHTS_FILE, "ofa_architecture.json", "ofa_runtime.json"} <= set(manifest["artifacts"])
    assert manifest["export"]["runtime"] == "torch" and manifest["export"]["opset"] is None
    assert manifest["validation"]["max_abs_diff_log_prob"] <= 1e-4
    assert (version_dir / WEIGHTS_FILE).stat().st_mode & 0o044 == 0o044   # readable by others
    assert all(not problems for problems in verify_repository(torch_repository).values())


@pytest.mark.parametrize("protocol", ("http", "grpc"))
@pytest.mark.parametrize("name", ("tiny", "variant"))
def test_served_fp32_answers_equal_modelscope(torch_server, goldens_by_name, golden_images,
                                              name, protocol):
    url = torch_server.http_url if protocol == "http" else torch_server.grpc_url
    model = "ofa_visual_entailment" if name == "tiny" else "variant_ofa_visual_entailment"
    assert_answers_match_goldens(VisualEntailmentClient(url, protocol, model_name=model),
                                 goldens_by_name[name], golden_images,
                                 tolerance=PROBABILITY_TOLERANCE)


@pytest.mark.parametrize("precision", sorted(HALF_PRECISION_TOLERANCE))
def test_served_half_precision_answers_within_their_tolerance(torch_server, goldens_by_name,
                                                              golden_images, precision):
    client = VisualEntailmentClient(torch_server.grpc_url, "grpc",
                                    model_name=f"{precision}_ofa_visual_entailment")
    assert_answers_match_goldens(client, goldens_by_name["tiny"], golden_images,
                                 tolerance=HALF_PRECISION_TOLERANCE[precision])


def test_served_bad_input_gets_its_own_error(torch_server, golden_images):
    from ofa_triton.client import PredictionError

    client = VisualEntailmentClient(torch_server.http_url)
    with pytest.raises(PredictionError, match="does not decode|cannot identify|not an image"):
        client.predict(b"not an image", "a dog")
    result = client.predict(golden_images["photo_640x480.jpg"].read_bytes(), "a dog")
    assert abs(sum(result.probabilities.values()) - 1) < 1e-5


def test_variant_half_precision_within_tolerance_in_process(tmp_path, checkpoint_dirs,
                                                            goldens_by_name, golden_images):
    """The variant checkpoint (ImageNet mean/std, prompt_type none, 96 px) in fp16 and bf16,
    through the same runtime the server runs, one padded batch of every golden case."""
    goldens = goldens_by_name["variant"]
    for precision, tolerance in HALF_PRECISION_TOLERANCE.items():
        repository = tmp_path / precision
        export_repository(checkpoint_dirs["variant"], repository, runtime="torch",
                          precision=precision, progress=lambda _: None)
        preprocessor = VisualEntailmentPreprocessor.from_directory(
            repository / "ofa_preprocess" / "1")
        batch = stack([preprocessor.tensors(golden_images[c["image"]].read_bytes(),
                                            c["hypothesis"], c["premise"])
                       for c in goldens.cases])
        runtime = open_encoder_decoder(repository / "ofa_encoder_decoder" / "1")
        probabilities = np.exp(runtime(batch).astype(np.float64))
        expected = np.array([c["probabilities"] for c in goldens.cases])
        assert np.abs(probabilities - expected).max() <= tolerance, precision


def test_runtime_and_precision_pairs_are_checked(tiny_checkpoint, tmp_path):
    for runtime, precision, message in (("torch", "int8", "--runtime torch takes"),
                                        ("onnxruntime", "bf16", "--runtime onnxruntime takes")):
        with pytest.raises(ValueError, match=message):
            export_repository(tiny_checkpoint, tmp_path / runtime, runtime=runtime,
                              precision=precision, progress=lambda _: None)
    cli = subprocess.run([sys.executable, "-m", "ofa_triton.cli", "export", "--model",
                          str(tiny_checkpoint), "--repository", str(tmp_path / "cli"),
                          "--runtime", "torch", "--precision", "int8"],
                         capture_output=True, text=True)
    assert cli.returncode == 2 and "--runtime torch takes --precision fp32, fp16, bf16" in cli.stderr


def test_gpu_export_defaults_to_torch_with_cuda_graph_buckets(tiny_checkpoint, tmp_path):
    """--device gpu picks the PyTorch runtime in fp16 and captures every power-of-two batch
    size up to max_batch_size; the config can be edited afterwards (read at load)."""
    record = export_repository(tiny_checkpoint, tmp_path / "gpu",
                               options=ServingOptions(device="gpu", max_batch_size=24),
                               progress=lambda _: None)
    assert (record["export"]["runtime"], record["export"]["precision"]) == ("torch", "fp16")
    config = (tmp_path / "gpu" / "ofa_encoder_decoder" / "config.pbtxt").read_text()
    assert 'key: "cuda_graph_batch_sizes", value: { string_value: "1,2,4,8,16,24" }' in config
    assert "kind: KIND_GPU" in config
    parameters = RuntimeParameters.from_model_config(
        {"parameters": {"cuda_graph_batch_sizes": {"string_value": "1,2,4,8,16,24"},
                        "torch_compile": {"string_value": "none"}}})
    assert parse_batch_sizes(parameters.cuda_graph_batch_sizes, 24) == (1, 2, 4, 8, 16, 24)
    with pytest.raises(ValueError, match="at least max_batch_size"):
        parse_batch_sizes("1,2,4", 24)
    with pytest.raises(ValueError, match="comma-separated"):
        ServingOptions(cuda_graph_batch_sizes="one,two")


def test_an_old_export_without_a_runtime_record_is_onnxruntime(tmp_path):
    assert RuntimeRecord.read(tmp_path) == RuntimeRecord("onnxruntime", "fp32")
    (tmp_path / "ofa_runtime.json").write_text(json.dumps({"runtime": "tensorrt",
                                                           "precision": "fp16"}))
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        RuntimeRecord.read(tmp_path)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_graphs_answer_like_eager_kernels(torch_repository, goldens_by_name,
                                               golden_images):
    """Every golden case through the captured graphs (batches of 1 to 7 rows in buckets 1, 2,
    4, 8) and through eager kernels on the same GPU: the same scores."""
    version_dir = torch_repository / "ofa_encoder_decoder" / "1"
    preprocessor = VisualEntailmentPreprocessor.from_directory(
        torch_repository / "ofa_preprocess" / "1")
    goldens = goldens_by_name["tiny"]
    batch = stack([preprocessor.tensors(golden_images[c["image"]].read_bytes(),
                                        c["hypothesis"], c["premise"]) for c in goldens.cases])
    graphs = TorchEncoderDecoder(version_dir, instance_kind="GPU",
                                 cuda_graph_batch_sizes=(1, 2, 4, 8))
    eager = TorchEncoderDecoder(version_dir, instance_kind="GPU")
    assert sorted(graphs.graphs) == [1, 2, 4, 8] and not eager.graphs
    start = 0
    for rows in (1, 2, 3, 5, 7, 8, 4):
        part = {name: tensor[start:start + rows] for name, tensor in batch.items()}
        start = (start + rows) % (len(goldens.cases) - 8)
        assert graphs._fits_graphs(part)
        np.testing.assert_allclose(graphs(part), eager(part), atol=1e-4)
    probabilities = np.exp(graphs({k: v[:8] for k, v in batch.items()}).astype(np.float64))
    expected = np.array([c["probabilities"] for c in goldens.cases[:8]])
    assert np.abs(probabilities - expected).max() <= PROBABILITY_TOLERANCE
