"""Manifests: written by the export, checked by `ofa-triton verify` and at model load."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from ofa_triton.manifest import MANIFEST_FILE, verify_repository
from tests.conftest import start_triton

MODELS = ("ofa_preprocess", "ofa_encoder_decoder", "ofa_postprocess", "ofa_visual_entailment")


@pytest.fixture()
def repository(exported_repositories, tmp_path):
    copy = tmp_path / "repository"
    shutil.copytree(exported_repositories["tiny"], copy)
    return copy


def _verify(path):
    return subprocess.run([sys.executable, "-m", "ofa_triton.cli", "verify", "--repository",
                           str(path)], capture_output=True, text=True, timeout=120)


def test_every_model_version_has_a_manifest_with_what_it_is_made_of(repository,
                                                                    tiny_checkpoint):
    for model in MODELS:
        manifest = json.loads((repository / model / "1" / MANIFEST_FILE).read_text())
        assert set(manifest) >= {"created", "source", "export", "settings", "validation",
                                 "versions", "artifacts"}
        assert manifest["source"]["sha256"]["pytorch_model.bin"]
        assert manifest["validation"]["max_abs_diff_log_prob"] <= 1e-4
    graph = json.loads((repository / "ofa_encoder_decoder/1" / MANIFEST_FILE).read_text())
    assert {"model.onnx", "model.py", "ofa_settings.json"} <= set(graph["artifacts"])
    assert len(graph["artifacts"]["model.onnx"]["sha256"]) == 64


def test_verify_passes_a_clean_export(repository):
    result = _verify(repository)
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("ok   ") == len(MODELS)


def test_verify_names_changed_missing_and_unlisted_files(repository):
    with open(repository / "ofa_preprocess/1/vocab.json", "ab") as handle:
        handle.write(b" ")
    (repository / "ofa_postprocess/1/ofa_settings.json").unlink()
    (repository / "ofa_encoder_decoder/1/extra.bin").write_bytes(b"x")
    # Python writes __pycache__ there once a server has loaded model.py; it is ignored.
    (repository / "ofa_encoder_decoder/1/__pycache__").mkdir(exist_ok=True)
    (repository / "ofa_encoder_decoder/1/__pycache__/model.cpython-311.pyc").write_bytes(b"x")
    result = _verify(repository)
    assert result.returncode == 1
    assert "vocab.json: sha256 differs from the manifest" in result.stdout
    assert "ofa_settings.json: missing" in result.stdout
    assert "extra.bin: not in the manifest" in result.stdout
    assert "__pycache__" not in result.stdout
    problems = verify_repository(repository)
    assert problems["ofa_visual_entailment/1"] == []


def test_a_tampered_graph_is_refused_at_load(repository, tmp_path):
    graph = repository / "ofa_encoder_decoder/1/model.onnx"
    data = bytearray(graph.read_bytes())
    data[-100] ^= 0xFF
    graph.write_bytes(bytes(data))
    server = start_triton(repository, tmp_path)
    with server, pytest.raises(RuntimeError, match="exited"):
        server.wait_ready(120)
    log = server.log()
    assert "refusing to load" in log and "model.onnx: sha256 differs" in log
