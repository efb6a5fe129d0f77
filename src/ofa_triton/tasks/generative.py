"""What every generating task (captioning, VQA, grounding) shares in its settings: the beam
search of configuration.json's ``model.beam_search``, and the longest output it allows.

No torch here: the pre- and postprocessing models import the tasks' settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pathlib import Path

from .base import OfaTask, TaskSettings


@dataclasses.dataclass(frozen=True)
class GenerationTaskSettings(TaskSettings):
    # configuration.json's model.beam_search merged over ModelScope's defaults
    # (generation.beam_search.GenerationSettings's fields).
    beam_search: Mapping[str, Any]
    unk_token_id: int = 3       # BART's <unk>; the beam search's unk_penalty applies to it
    # configuration.json's answer2label keys, in its order, and their BPE ids: a trie of them
    # constrains the generation (gen_type generation), or each is scored (gen_type traverse).
    answers: tuple[str, ...] = ()
    answer_ids: tuple[tuple[int, ...], ...] = ()
    traverse: bool = False

    @property
    def generation(self):
        from ..generation.beam_search import GenerationSettings

        return GenerationSettings(**self.beam_search)

    @property
    def longest_source(self) -> int:
        """The longest source in tokens (bos and eos included): ModelScope's maximum output
        length grows with it when max_len_a is not 0."""
        return self.source_length

    @property
    def output_length(self) -> int:
        """The longest output in tokens, eos included: ModelScope's max_len + 1."""
        return self.generation.max_len(self.longest_source) + 1

    @property
    def decoder_positions(self) -> int:
        """The decoder positions a request may use: the longest output, or when answers are
        scored, the longest decoder prompt, answer and eos."""
        if not self.traverse:
            return self.output_length
        prompt = {"none": 1, "src": self.longest_source}.get(self.prompt_type,
                                                              self.longest_source - 1)
        return prompt + max(len(ids) for ids in self.answer_ids) + 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GenerationTaskSettings":
        settings = super().from_dict(data)
        return dataclasses.replace(settings, beam_search=dict(data["beam_search"]),
                                   answer_ids=tuple(tuple(ids) for ids in
                                                    data.get("answer_ids", ())))

    @staticmethod
    def read_beam_search(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
        """configuration.json's model.beam_search over ModelScope's defaults, checked."""
        from ..generation.beam_search import GenerationSettings

        try:
            generation = GenerationSettings.from_configuration(model_cfg.get("beam_search"))
        except (TypeError, ValueError) as error:
            from ..checkpoint import CheckpointError

            raise CheckpointError(f"configuration.json model.beam_search: {error}") from None
        return dataclasses.asdict(generation)


class GenerativeTask(OfaTask):
    """A task served by the generation engine (ofa_triton.generation): its encoder-decoder is
    the engine's, validated on a few of the task's own requests. A subclass names its
    ``export_module`` (``sample_batch(loaded)`` and ``write_warmup_files(repository, version,
    names, loaded)``) and may add settings known once the tokenizer is (``settings_from_text``)."""

    # The task's export.py, relative to ofa_triton.tasks.
    export_module: str

    def _export(self):
        import importlib

        return importlib.import_module(f"{__package__}.{self.export_module}")

    def settings_from_text(self, checkpoint, text) -> dict[str, Any]:
        return {}

    def shape_signature(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        return {**super().shape_signature(settings),
                "maximum output length": self.settings_class.from_dict(settings).output_length}

    def config_values(self, settings) -> dict[str, Any]:
        return {"output_length": settings.task.output_length}

    def load(self, checkpoint, text):
        from ..generation.export import load_generation

        return load_generation(checkpoint, text, **self.settings_from_text(checkpoint, text))

    def write_encoder_decoder(self, loaded, directory: Path, *, runtime: str, precision: str,
                              calibration: Any, progress) -> dict[str, Any]:
        from ..generation.export import write_generator

        return write_generator(loaded, directory, runtime=runtime, precision=precision,
                               batch=self._export().sample_batch(loaded), progress=progress)

    def write_warmup_files(self, repository: Path, version: int, names, loaded) -> None:
        self._export().write_warmup_files(repository, version, names, loaded)
