"""Find, check and load an OFA checkpoint of one of the tasks in ``tasks.TASKS``.

Accepted sources:
- a ModelScope model id (``damo/ofa_visual-entailment_snli-ve_large_en``), downloaded with
  ModelScope's hub client (it shows a progress bar) when there is a network;
- a local directory in ModelScope layout: ``configuration.json`` (the task and its settings),
  ``config.json`` (architecture), ``pytorch_model.bin`` or ``*.safetensors``, ``vocab.json``,
  ``merges.txt`` and the files configuration.json names (visual entailment's answer map);
- a local directory in the OFA-Sys Hugging Face layout: the same without
  ``configuration.json``; the task is then ``--task`` (default visual entailment) and its
  settings take the task's released values unless overridden.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .manifest import sha256_file
from .modeling.config import OfaArchitecture
from .tasks import OfaTask, TaskSettings, UnknownTaskError, task_named

WEIGHT_FILE_NAMES = ("pytorch_model.bin", "model.safetensors")


class CheckpointError(ValueError):
    """The checkpoint cannot be used; the message names the file or tensor at fault."""


@dataclasses.dataclass(frozen=True)
class OfaCheckpoint:
    directory: Path
    source: str                 # what the user passed: a model id or a path
    layout: str                 # "modelscope" or "huggingface"
    task: OfaTask
    architecture: OfaArchitecture
    settings: TaskSettings
    weights_file: Path
    vocab_file: Path
    merges_file: Path

    def files(self) -> list[Path]:
        """The files the export reads, for hashing."""
        names = [self.weights_file, self.vocab_file, self.merges_file,
                 self.directory / "config.json"]
        for extra in ("configuration.json", self._answer_map_name()):   # (visual entailment)
            if extra and (self.directory / extra).is_file():
                names.append(self.directory / extra)
        return sorted(set(names))

    def _answer_map_name(self) -> str | None:
        path = self.directory / "configuration.json"
        if not path.is_file():
            return None
        return read_json(path).get("model", {}).get("answer2label")

    def file_hashes(self) -> dict[str, str]:
        return {p.name: sha256_file(p) for p in self.files()}

    def load_state_dict(self) -> dict[str, Any]:
        return load_weights(self.weights_file)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not readable JSON: {error}") from error


def load_weights(path: Path) -> dict[str, Any]:
    """A state dict from ``.bin`` (torch.load, weights_only) or ``.safetensors``. A ``model.``
    prefix on every key (transformers' base_model_prefix) is removed."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read weights from {path}: {type(error).__name__}: "
                              f"{error}") from error
    if isinstance(state, Mapping) and "state_dict" in state and len(state) <= 3:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict")
    if state and all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    return dict(state)


def _find_weights(directory: Path) -> Path:
    for name in WEIGHT_FILE_NAMES:
        if (directory / name).is_file():
            return directory / name
    candidates = sorted(directory.glob("*.safetensors"))
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise CheckpointError(f"{directory} holds several .safetensors files "
                              f"({', '.join(c.name for c in candidates)}); sharded checkpoints "
                              "are not supported: merge them into model.safetensors")
    raise CheckpointError(f"{directory} has no weights: expected pytorch_model.bin or "
                          "*.safetensors")


def open_checkpoint(source: str | Path, task: str | None = None,
                    **setting_overrides: Any) -> OfaCheckpoint:
    """Resolve ``source`` (directory or ModelScope id) and check its files, without loading
    the weights. ``task`` overrides configuration.json's; ``setting_overrides``
    (patch_image_size, max_src_length, prompt_type) replace values from it; use them for the
    Hugging Face layout."""
    source_text = str(source)
    directory = Path(source).expanduser()
    if not directory.exists():
        if source_text.startswith((".", "/", "~")) or source_text.count("/") != 1:
            raise CheckpointError(f"{source_text} is neither a directory nor a ModelScope "
                                  "model id (namespace/name)")
        directory = download_from_modelscope(source_text)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory")

    missing = [name for name in ("config.json", "vocab.json", "merges.txt")
               if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"{directory} is missing {', '.join(missing)}: an OFA checkpoint "
                              "needs config.json, weights, vocab.json and merges.txt")
    weights = _find_weights(directory)
    config = read_json(directory / "config.json")
    try:
        architecture = OfaArchitecture.from_config_dict(config)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{directory / 'config.json'}: {error}") from error

    configuration_path = directory / "configuration.json"
    if configuration_path.is_file():
        layout = "modelscope"
        configuration = read_json(configuration_path)
        model_cfg = configuration.get("model", {})
        if model_cfg.get("type", "ofa") != "ofa":
            raise CheckpointError(f"{configuration_path}: model.type is "
                                  f"{model_cfg.get('type')!r}, not 'ofa'")
        if model_cfg.get("language", "en") != "en":
            raise CheckpointError(f"{configuration_path}: language "
                                  f"{model_cfg.get('language')!r} is not supported (English "
                                  "BPE checkpoints only)")
        named = configuration.get("task")
    else:
        layout = "huggingface"
        model_cfg, named = {}, None
    try:
        chosen = task_named(task or named)
    except UnknownTaskError as error:
        where = "--task" if task else f"{configuration_path} (task)"
        raise CheckpointError(f"{where}: {error}") from None
    cfg = {**chosen.defaults(), **model_cfg,
           **{key: value for key, value in setting_overrides.items() if value is not None}}
    settings = chosen.read_settings(cfg, directory)
    return OfaCheckpoint(directory=directory.resolve(), source=source_text, layout=layout,
                         task=chosen, architecture=architecture, settings=settings,
                         weights_file=weights, vocab_file=directory / "vocab.json",
                         merges_file=directory / "merges.txt")


def download_from_modelscope(model_id: str) -> Path:
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError as error:
        raise CheckpointError(f"{model_id} looks like a ModelScope model id, but the ModelScope "
                              "hub client is not installed: pip install modelscope") from error
    try:
        return Path(snapshot_download(model_id))
    except Exception as error:
        raise CheckpointError(f"could not download {model_id} from ModelScope "
                              f"({type(error).__name__}: {error}). Check the id and the network, "
                              "or download it elsewhere and pass the directory") from error
