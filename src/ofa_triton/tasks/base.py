"""What an OFA task is made of here: its settings and its export config.

One export config per task, registered once (tasks/__init__.py), as optimum's exporters keep
one per model. A task owns, in its folder (``tasks/<task>/`` and
``model_repository/<task>/``), how it reads a checkpoint's configuration.json, which Triton
models it serves, how it exports and validates their graphs, its warmup sample, its
pre- and postprocessing and its client call. What all tasks share stays shared: image
decoding (image.py), the tokenizer and prompt cleaning (text.py), the request limits,
manifests, deploy, the runtimes and the server.

Nothing here imports torch: the pre- and postprocessing models import the task's settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from ..image import IMAGENET_MEAN_STD, OFA_MEAN_STD


@dataclasses.dataclass(frozen=True)
class TaskSettings:
    """What every task's preprocessing reads from configuration.json; a task's own settings
    class adds its fields (prompts, answers, generation)."""

    patch_image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_src_length: int
    prompt_type: str

    @property
    def source_length(self) -> int:
        """The source's fixed length in tokens, bos and eos included: max_src_length + 2. The
        preprocessing right-pads every source to it, and the configs declare it."""
        return self.max_src_length + 2

    @property
    def decoder_length(self) -> int:
        """The decoder prompt's fixed length in tokens (visual entailment's scorer):
        max_src_length + 1, right-padded like the source."""
        return self.max_src_length + 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TaskSettings":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: tuple(value) if isinstance(value, list) else value
                      for key, value in data.items() if key in fields})

    @staticmethod
    def image_and_text(cfg: Mapping[str, Any]) -> dict[str, Any]:
        """The shared fields from a configuration.json ``model`` section (with defaults and
        overrides already merged in)."""
        mean, std = IMAGENET_MEAN_STD if cfg.get("imagenet_default_mean_and_std") else OFA_MEAN_STD
        return {"patch_image_size": int(cfg["patch_image_size"]), "mean": tuple(mean),
                "std": tuple(std), "max_src_length": int(cfg["max_src_length"]),
                "prompt_type": str(cfg["prompt_type"])}


Progress = Callable[[str], None]


def read_answer_map(model_cfg: Mapping[str, Any], directory: Path) -> dict[str, Any] | None:
    """The answer list configuration.json's ``answer2label`` names ({answer: label}, in file
    order), or None when it names none."""
    from ..checkpoint import CheckpointError, read_json

    name = model_cfg.get("answer2label")
    if not name:
        return None
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"configuration.json names the answer map {name!r}, but {path} "
                              "does not exist")
    answer_map = read_json(path)
    if not answer_map:
        raise CheckpointError(f"the answer map {path} is empty")
    return answer_map


class OfaTask:
    """One task's export config. A subclass declares the class attributes and implements the
    methods; ``tasks.TASKS`` holds one instance of each."""

    # ModelScope's name of the task, as configuration.json's "task" spells it.
    name: ClassVar[str]
    # Other spellings configuration.json uses for it.
    aliases: ClassVar[tuple[str, ...]] = ()
    # model_repository/<template_folder>/: one folder per Triton model (config.pbtxt template,
    # and 1/model.py for Python models).
    template_folder: ClassVar[str]
    # The template name of the public model (the ensemble clients call).
    public_model: ClassVar[str]
    # The Triton model that turns a request into the encoder-decoder's tensors.
    preprocess_model: ClassVar[str]
    # The Triton models that read the tokenizer files (vocab.json, merges.txt).
    tokenizer_models: ClassVar[tuple[str, ...]] = ()
    # The Triton model that holds the exported encoder-decoder (graphs or weights).
    encoder_decoder_model: ClassVar[str]
    settings_class: ClassVar[type[TaskSettings]]
    # The runtimes this task's encoder-decoder exports for, the default first where the
    # device's default (export.DEFAULT_RUNTIME) is not among them.
    runtimes: ClassVar[tuple[str, ...]] = ("onnxruntime", "torch")
    # Settings that decide the configs' tensor shapes, which every version of a model shares.
    shape_settings: ClassVar[tuple[str, ...]] = ("patch_image_size", "max_src_length")

    def read_settings(self, model_cfg: Mapping[str, Any], directory: Path) -> TaskSettings:
        """The task's settings from configuration.json's ``model`` section (defaults and
        command-line overrides merged in); ``directory`` holds the files it names."""
        raise NotImplementedError

    def defaults(self) -> dict[str, Any]:
        """Settings a checkpoint without configuration.json (Hugging Face layout) gets."""
        return {}

    def load(self, checkpoint, text) -> tuple[Any, Any]:
        """The checkpoint (checkpoint.OfaCheckpoint) loaded into this task's PyTorch modules,
        and the ServingSettings its Triton models read; ``text`` is its OfaTextEncoder."""
        raise NotImplementedError

    def config_values(self, settings) -> dict[str, Any]:
        """This task's placeholders in its config.pbtxt templates (besides the shared ones)."""
        return {}

    def shape_signature(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """What of an exported version's settings (manifest) fixes its configs' shapes."""
        return {key: settings[key] for key in self.shape_settings}

    def write_encoder_decoder(self, loaded, directory: Path, *, runtime: str, precision: str,
                              calibration: Any, progress: Progress) -> dict[str, Any]:
        """Export and validate the encoder-decoder for ``runtime`` into ``directory``;
        returns the validation figures for the manifest."""
        raise NotImplementedError

    def write_warmup_files(self, repository: Path, version: int, names, loaded) -> None:
        """One sample request's tensors into each step's version's warmup/ folder
        (warmup.py)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<OFA task {self.name}>"
