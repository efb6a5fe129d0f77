"""Visual question answering: image + question -> answer (ModelScope
``damo/ofa_visual-question-answering_pretrain_*_en``).

This folder and ``model_repository/visual_question_answering/`` hold everything of the task:
- ``VqaSettings``: the beam search and the answer list, read from configuration.json;
- ``preprocessing.py``: image and question -> pixels and the question's token ids
  (``ofa_vqa_preprocess``);
- ``answer_text``: the generator's output worded as ModelScope's answer (``ofa_vqa_postprocess``);
- ``export.py``: the generation engine (ofa_triton.generation) for questions, and the warmup
  sample;
- ``client.py``: the client call of ``ofa_visual_question_answering``.

As configuration.json says: without ``answer2label``, free beam search from bos; with it and
``gen_type: generation``, the beam search constrained to the answers' trie; with
``gen_type: traverse``, every answer scored and the best one returned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..base import TaskSettings, read_answer_map
from ..generative import GenerationTaskSettings, GenerativeTask

# OFA's VQA fine-tunes: 480 px, no decoder prompt (used only for checkpoints without
# configuration.json).
RELEASED_SETTINGS = {"patch_image_size": 480, "max_src_length": 80, "prompt_type": "none"}


@dataclasses.dataclass(frozen=True)
class VqaSettings(GenerationTaskSettings):
    pass


class VisualQuestionAnswering(GenerativeTask):
    name = "visual-question-answering"
    aliases = ("visual_question_answering",)
    template_folder = "visual_question_answering"
    public_model = "ofa_visual_question_answering"
    preprocess_model = "ofa_vqa_preprocess"
    tokenizer_models = ("ofa_vqa_preprocess", "ofa_vqa_postprocess")
    encoder_decoder_model = "ofa_vqa_generator"
    settings_class = VqaSettings
    export_module = "visual_question_answering.export"

    def defaults(self) -> dict[str, Any]:
        return dict(RELEASED_SETTINGS)

    def read_settings(self, model_cfg: Mapping[str, Any], directory: Path) -> TaskSettings:
        from ...checkpoint import CheckpointError

        answers = tuple(read_answer_map(model_cfg, directory) or ())
        gen_type = model_cfg.get("gen_type", "generation")
        if gen_type not in ("generation", "traverse"):
            raise CheckpointError(f"configuration.json model.gen_type {gen_type!r}: ModelScope "
                                  "takes 'generation' or 'traverse'")
        if gen_type == "traverse" and not answers:
            raise CheckpointError("configuration.json says gen_type 'traverse' but names no "
                                  "answer2label file: there are no answers to score")
        settings = VqaSettings(**TaskSettings.image_and_text(model_cfg),
                               beam_search=GenerationTaskSettings.read_beam_search(model_cfg),
                               answers=answers, traverse=gen_type == "traverse")
        if answers and not settings.traverse and settings.generation.beam_size > len(answers):
            # ModelScope asserts this too: a beam wider than the answer list cannot fill.
            raise CheckpointError(f"beam_size {settings.generation.beam_size} is larger than "
                                  f"the {len(answers)} answers of the answer list")
        return settings


def answer_text(text, tokens: Sequence[int], answers: Sequence[str], answer_index: int) -> str:
    """The answer as OfaForAllTasks returns it: with traverse the answer list's entry; else the
    generated ids decoded as ModelScope's tokenizer does (special tokens skipped), stripped.
    ``text`` is an OfaTextEncoder."""
    if answer_index >= 0:
        return answers[answer_index]
    return text.decode(list(tokens)).strip()
