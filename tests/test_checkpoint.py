"""Checkpoint loading: layouts, weight formats, and errors that name the problem."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from ofa_triton.tasks.visual_entailment import RELEASED_SETTINGS
from ofa_triton.checkpoint import CheckpointError, open_checkpoint
from ofa_triton.export import load_checkpoint
from ofa_triton.modeling import CheckpointMismatchError


@pytest.fixture()
def tiny_copy(tiny_checkpoint, tmp_path) -> Path:
    target = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, target)
    return target


def _scores(loaded, ids=(0, 100, 200, 2)):
    with torch.no_grad():
        return loaded.model(torch.tensor([list(ids)]), torch.zeros(1, 3, 64, 64),
                            torch.tensor([list(ids[:-1])]))


def test_modelscope_layout_reads_task_settings(tiny_checkpoint):
    ck = open_checkpoint(tiny_checkpoint)
    assert ck.layout == "modelscope"
    assert ck.settings.patch_image_size == 64
    assert ck.settings.max_src_length == 80
    assert ck.settings.prompt_type == "prev_output"
    assert ck.settings.answers == ("no", "yes", "maybe")
    assert set(ck.file_hashes()) == {"pytorch_model.bin", "vocab.json", "merges.txt",
                                     "config.json", "configuration.json", "answer2label.json"}


def test_huggingface_layout_uses_released_settings_and_overrides(tiny_copy):
    (tiny_copy / "configuration.json").unlink()
    (tiny_copy / "answer2label.json").unlink()
    ck = open_checkpoint(tiny_copy)
    assert ck.layout == "huggingface"
    assert (ck.settings.patch_image_size, ck.settings.max_src_length) == (480, 80)
    assert ck.settings.answers == ("no", "yes", "maybe")
    ck = open_checkpoint(tiny_copy, patch_image_size=64, max_src_length=30, prompt_type="none")
    assert (ck.settings.patch_image_size, ck.settings.max_src_length,
            ck.settings.prompt_type) == (64, 30, "none")


def test_safetensors_with_tied_weights_stored_once_load_the_same(tiny_copy):
    from safetensors.torch import save_file

    reference = _scores(load_checkpoint(tiny_copy))
    state = torch.load(tiny_copy / "pytorch_model.bin", weights_only=True)
    for alias in ("decoder.embed_tokens.weight", "decoder.output_projection.weight"):
        del state[alias]  # transformers' safetensors writer keeps one of a tied group
    save_file({k: v.contiguous() for k, v in state.items()}, tiny_copy / "model.safetensors")
    (tiny_copy / "pytorch_model.bin").unlink()
    assert torch.equal(_scores(load_checkpoint(tiny_copy)), reference)


def test_model_prefix_on_every_key_is_accepted(tiny_copy):
    reference = _scores(load_checkpoint(tiny_copy))
    state = torch.load(tiny_copy / "pytorch_model.bin", weights_only=True)
    torch.save({f"model.{k}": v for k, v in state.items()}, tiny_copy / "pytorch_model.bin")
    assert torch.equal(_scores(load_checkpoint(tiny_copy)), reference)


@pytest.mark.parametrize("missing", ["config.json", "vocab.json", "merges.txt"])
def test_missing_file_is_named(tiny_copy, missing):
    (tiny_copy / missing).unlink()
    with pytest.raises(CheckpointError, match=missing):
        open_checkpoint(tiny_copy)


def test_missing_weights_are_named(tiny_copy):
    (tiny_copy / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="pytorch_model.bin or \\*.safetensors"):
        open_checkpoint(tiny_copy)


def test_missing_answer_map_is_named(tiny_copy):
    (tiny_copy / "answer2label.json").unlink()
    with pytest.raises(CheckpointError, match="answer2label.json"):
        open_checkpoint(tiny_copy)


def test_a_task_this_exporter_does_not_serve_is_refused(tiny_copy):
    configuration = json.loads((tiny_copy / "configuration.json").read_text())
    configuration["task"] = "video-captioning"
    (tiny_copy / "configuration.json").write_text(json.dumps(configuration))
    with pytest.raises(CheckpointError, match=r"configuration.json \(task\): task "
                       "'video-captioning' is not one this exporter serves.*--task"):
        open_checkpoint(tiny_copy)
    # --task overrides configuration.json's (here back to what the files are).
    assert open_checkpoint(tiny_copy, task="visual_entailment").task.name == "visual-entailment"
    with pytest.raises(CheckpointError, match="--task: task 'ocr'"):
        open_checkpoint(tiny_copy, task="ocr")


def test_missing_unexpected_and_mismatched_tensors_are_all_listed(tiny_copy):
    state = torch.load(tiny_copy / "pytorch_model.bin", weights_only=True)
    del state["encoder.layers.0.fc1.bias"]
    state["encoder.extra_head.weight"] = torch.zeros(2)
    state["decoder.layers.1.fc2.weight"] = torch.zeros(3, 3)
    torch.save(state, tiny_copy / "pytorch_model.bin")
    with pytest.raises(CheckpointMismatchError) as error:
        load_checkpoint(tiny_copy)
    message = str(error.value)
    assert "1 missing: encoder.layers.0.fc1.bias" in message
    assert "1 unexpected: encoder.extra_head.weight" in message
    assert "decoder.layers.1.fc2.weight: checkpoint (3, 3) != model (256, 1024)" in message


def test_config_that_does_not_fit_the_weights_is_reported(tiny_copy):
    config = json.loads((tiny_copy / "config.json").read_text())
    config["decoder_layers"] = 3
    (tiny_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError, match="36 unexpected: .*decoder.layers.3.fc1.weight"):
        load_checkpoint(tiny_copy)


def test_vocabulary_that_does_not_fit_config_is_reported(tiny_copy):
    config = json.loads((tiny_copy / "config.json").read_text())
    config["vocab_size"] += 1
    (tiny_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="vocab_size"):
        load_checkpoint(tiny_copy)


def test_not_a_state_dict_is_reported(tiny_copy):
    (tiny_copy / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_checkpoint(tiny_copy)


def _hub_module():
    # The module, not the function that modelscope.hub re-exports under the same name.
    return importlib.import_module("modelscope.hub.snapshot_download")


def test_model_id_goes_to_the_modelscope_hub_client(tiny_checkpoint, monkeypatch):
    requested = []

    def fake_snapshot_download(model_id):
        requested.append(model_id)
        return str(tiny_checkpoint)

    monkeypatch.setattr(_hub_module(), "snapshot_download", fake_snapshot_download)
    ck = open_checkpoint("damo/ofa_visual-entailment_snli-ve_large_en")
    assert requested == ["damo/ofa_visual-entailment_snli-ve_large_en"]
    assert ck.directory == tiny_checkpoint.resolve()
    assert ck.source == "damo/ofa_visual-entailment_snli-ve_large_en"


def test_unreachable_hub_says_what_to_do(monkeypatch):
    def offline(model_id):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(_hub_module(), "snapshot_download", offline)
    with pytest.raises(CheckpointError, match="download it elsewhere and pass the directory"):
        open_checkpoint("damo/some_model")


def test_nonexistent_path_is_not_mistaken_for_a_model_id(tmp_path):
    with pytest.raises(CheckpointError, match="neither a directory nor a ModelScope model id"):
        open_checkpoint(tmp_path / "nowhere")
    assert RELEASED_SETTINGS["max_src_length"] == 80
