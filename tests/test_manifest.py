"""Manifests: written by the export, checked by `ofa-triton verify` and at model load."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from ofa_triton.manifest import (ALLOW_MISMATCH_ENV, MANIFEST_FILE, ManifestError, package_versions,
                                 read_manifest, verify_repository, verify_version_directory)
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


def test_the_warmup_sample_is_in_the_manifest(repository):
    artifacts = json.loads((repository / "ofa_preprocess/1" / MANIFEST_FILE).read_text())[
        "artifacts"]
    assert {"warmup/image", "warmup/hypothesis"} <= set(artifacts)
    (repository / "ofa_preprocess/1/warmup/image").write_bytes(b"not the sample")
    assert any("warmup/image: sha256 differs" in line
               for line in verify_repository(repository)["ofa_preprocess/1"])


def _record_versions(version_dir, **changed):
    record = read_manifest(version_dir)
    record["versions"] = {**record["versions"], **changed}
    (version_dir / MANIFEST_FILE).write_text(json.dumps(record))   # not hashed itself


def test_another_release_of_what_computes_answers_is_refused_and_a_patch_warned(
        repository, monkeypatch):
    version_dir = repository / "ofa_preprocess/1"
    running = package_versions()
    assert verify_version_directory(version_dir, running) == []   # exported here
    patch = running["numpy"].rsplit(".", 1)[0] + ".999"
    _record_versions(version_dir, numpy=patch, tokenizers=running["tokenizers"] + "1",
                     triton="9.9.9")   # Triton's release is not visible from a model
    warnings = verify_version_directory(version_dir, running)
    assert [line.split(": ", 1)[1] for line in warnings] == [
        f"numpy {running['numpy']} here, {patch} at export",
        f"tokenizers {running['tokenizers']} here, {running['tokenizers']}1 at export"]
    _record_versions(version_dir, pillow="12.1.0")
    with pytest.raises(ManifestError) as refused:
        verify_version_directory(version_dir, running)
    assert (f"pillow {running['pillow']} here, 12.1.0 at export: image decoding and resizing "
            f"may differ") in str(refused.value)
    assert f"set {ALLOW_MISMATCH_ENV}=1" in str(refused.value)
    monkeypatch.setenv(ALLOW_MISMATCH_ENV, "1")
    allowed = verify_version_directory(version_dir, running)
    assert f"(allowed by {ALLOW_MISMATCH_ENV}=1)" in allowed[0] and "pillow" in allowed[0]


def test_a_version_exported_under_another_pillow_is_refused_at_load(repository, tmp_path):
    """What the Python models run, not only the files: Pillow 12.1 and 13.0 resize the same
    image to pixels up to 0.19 apart, so a version exported under the other is refused."""
    _record_versions(repository / "ofa_preprocess/1", pillow="12.1.0")
    server = start_triton(repository, tmp_path)
    with server, pytest.raises(RuntimeError, match="exited"):
        server.wait_ready(120)
    log = server.log()
    assert "it was exported under other versions of what computes its answers" in log
    assert "pillow" in log and "12.1.0 at export" in log
