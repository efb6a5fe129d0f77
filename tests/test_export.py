"""`ofa-triton export`: the console script end to end, both precisions, and its errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ofa_triton.checkpoint import sha256_file
from ofa_triton.onnx_export import ONNX_OPSET

CLI = [sys.executable, "-m", "ofa_triton.cli"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=600)


def test_export_writes_a_checked_graph_tokenizer_files_and_a_record(exported_repositories,
                                                                    tiny_checkpoint):
    repository = exported_repositories["tiny"]
    graph = repository / "ofa_encoder_decoder" / "1" / "model.onnx"
    onnx.checker.check_model(str(graph), full_check=True)
    model = onnx.load(str(graph), load_external_data=False)
    assert model.opset_import[0].version == ONNX_OPSET >= 17
    assert [i.name for i in model.graph.input] == ["input_ids", "patch_images",
                                                   "decoder_input_ids"]
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input}
    assert dims["input_ids"] == ["batch", "source_length"]
    assert dims["decoder_input_ids"] == ["batch", "prompt_length"]

    record = json.loads((graph.parent / "manifest.json").read_text())
    assert record["source"]["sha256"]["pytorch_model.bin"] == \
        sha256_file(tiny_checkpoint / "pytorch_model.bin")
    assert record["export"]["precision"] == "fp32" and record["export"]["opset"] == ONNX_OPSET
    assert record["validation"]["max_abs_diff_log_prob"] <= 1e-4
    for package in ("torch", "onnx", "onnxruntime", "tokenizers", "triton"):
        assert record["versions"][package]
    preprocess = repository / "ofa_preprocess" / "1"
    assert (preprocess / "vocab.json").read_bytes() == (tiny_checkpoint / "vocab.json").read_bytes()
    assert json.loads((preprocess / "ofa_settings.json").read_text())["answers"] == \
        ["no", "yes", "maybe"]


def test_dynamic_batch_and_length_give_the_same_scores(exported_repositories):
    """A request's scores do not depend on what it is batched with or on padding."""
    graph = exported_repositories["tiny"] / "ofa_encoder_decoder" / "1" / "model.onnx"
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    pixels = rng.normal(size=(3, 3, 64, 64)).astype(np.float32)
    short = [0, 50, 60, 2]
    longer = [0, 70, 80, 90, 100, 110, 2]
    pad = 1

    def run(sources, images, extra_padding=0):
        width = max(map(len, sources)) + extra_padding
        ids = np.array([s + [pad] * (width - len(s)) for s in sources], dtype=np.int64)
        dec = np.array([s[:-1] + [pad] * (width - len(s)) for s in sources], dtype=np.int64)
        return session.run(None, {"input_ids": ids, "patch_images": images,
                                  "decoder_input_ids": dec})[0]

    alone = run([short], pixels[:1])
    batched = run([short, longer, short], pixels)
    assert np.abs(batched[0] - alone[0]).max() < 1e-5
    padded_more = run([short], pixels[:1], extra_padding=20)
    assert np.abs(padded_more[0] - alone[0]).max() < 1e-5


@pytest.mark.slow
def test_cli_exports_the_gpu_fp16_variant_of_another_configuration(checkpoint_dirs, tmp_path):
    """The ONNX graph for onnxruntime-gpu (the PyTorch runtime, --device gpu's default, is
    tested in test_torch_runtime.py)."""
    result = _run("export", "--model", checkpoint_dirs["variant"], "--repository", tmp_path,
                  "--device", "gpu", "--runtime", "onnxruntime")
    assert result.returncode == 0, result.stderr
    assert "[4/4]" in result.stdout
    record = json.loads((tmp_path / "ofa_encoder_decoder/1/manifest.json").read_text())
    assert record["export"]["precision"] == "fp16"
    assert record["validation"]["max_abs_diff_log_prob"] <= record["validation"]["tolerance"]
    assert record["settings"]["mean"] == [0.485, 0.456, 0.406]   # imagenet mean/std read
    assert record["settings"]["patch_image_size"] == 96
    onnx.checker.check_model(str(tmp_path / "ofa_encoder_decoder/1/model.onnx"), full_check=True)


def test_cli_exports_a_huggingface_layout_with_overrides(tiny_checkpoint, tmp_path):
    hf = tmp_path / "hf"
    shutil.copytree(tiny_checkpoint, hf)
    (hf / "configuration.json").unlink()
    (hf / "answer2label.json").unlink()
    result = _run("export", "--model", hf, "--repository", tmp_path / "repo",
                  "--patch-image-size", "32", "--max-src-length", "40")
    assert result.returncode == 0, result.stderr
    settings = json.loads((tmp_path / "repo/ofa_preprocess/1/ofa_settings.json").read_text())
    assert (settings["patch_image_size"], settings["max_src_length"]) == (32, 40)


def test_cli_reports_a_bad_checkpoint_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = _run("export", "--model", tmp_path, "--repository", tmp_path / "repo")
    assert result.returncode == 2
    assert "error:" in result.stderr and "vocab.json" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_makes_the_tiny_checkpoint(tmp_path, tiny_checkpoint):
    result = _run("make-tiny-checkpoint", tmp_path / "tiny")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "tiny/GENERATED.json").read_text()) == \
        json.loads((tiny_checkpoint / "GENERATED.json").read_text())
    assert not Path(tmp_path / "repo").exists()


def test_export_refuses_to_overwrite_the_templates(tiny_checkpoint):
    from ofa_triton.triton_config import template_directory

    result = _run("export", "--model", tiny_checkpoint, "--repository", template_directory())
    assert result.returncode == 2 and "templates" in result.stderr
    assert not (template_directory() / "ofa_encoder_decoder" / "1" / "model.onnx").exists()


# --- validate_onnx: names and shapes are checked before the values -------------------------

class _ToyConfig:
    """An export config of one input ``x`` [B, 3] whose columns are equal, so that a [B, 1]
    output broadcast against a [B, 3] one differs by nothing."""

    opset = ONNX_OPSET

    def __init__(self, output_names=("y",)):
        self.input_names = ("x",)
        self.output_names = tuple(output_names)
        self.dynamic_axes = {"x": {0: "batch"}, **{name: {0: "batch"} for name in output_names}}

    def random_inputs(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        column = np.random.default_rng(seed).normal(size=(batch, 1)).astype(np.float32)
        return {"x": np.repeat(column, 3, axis=1)}


def _toy_module(forward):
    import torch

    class Toy(torch.nn.Module):
        def forward(self, x):
            return forward(x)

    return Toy()


def _toy_graph(tmp_path, forward) -> tuple[Path, _ToyConfig]:
    from ofa_triton.onnx_export import export_onnx

    config = _ToyConfig()
    path = tmp_path / "toy.onnx"
    export_onnx(_toy_module(forward), config, path)
    return path, config


def test_validate_onnx_passes_a_graph_that_matches_its_module(tmp_path):
    from ofa_triton.onnx_export import validate_onnx

    path, config = _toy_graph(tmp_path, lambda x: x * 2)
    report = validate_onnx(_toy_module(lambda x: x * 2), config, path, "fp32")
    assert report["max_abs_diff_log_prob"] == 0 and report["batches"] == [1, 3]


@pytest.mark.parametrize("graph, module", [
    (lambda x: x[:, :1] * 2, lambda x: x * 2),   # graph [B, 1], module [B, 3]
    (lambda x: x * 2, lambda x: x[:, :1] * 2),   # graph [B, 3], module [B, 1]
], ids=["graph-narrower", "module-narrower"])
def test_validate_onnx_refuses_a_broadcastable_shape_mismatch(tmp_path, graph, module):
    """Broadcast, the two outputs are equal: only a shape check before the values sees it."""
    from ofa_triton.onnx_export import ExportValidationError, validate_onnx

    path, config = _toy_graph(tmp_path, graph)
    inputs = config.random_inputs(3, seed=0)
    assert np.abs(graph(inputs["x"]) - module(inputs["x"])).max() == 0   # broadcast: equal
    with pytest.raises(ExportValidationError, match="shape"):
        validate_onnx(_toy_module(module), config, path, "fp32")


def test_validate_onnx_refuses_other_output_names_or_counts(tmp_path):
    from ofa_triton.onnx_export import ExportValidationError, validate_onnx

    path, _ = _toy_graph(tmp_path, lambda x: x * 2)
    with pytest.raises(ExportValidationError, match="returns \\['y'\\]"):
        validate_onnx(_toy_module(lambda x: x * 2), _ToyConfig(("scores",)), path, "fp32")
    with pytest.raises(ExportValidationError, match="returns 2 outputs"):
        validate_onnx(_toy_module(lambda x: (x * 2, x)), _ToyConfig(), path, "fp32")
