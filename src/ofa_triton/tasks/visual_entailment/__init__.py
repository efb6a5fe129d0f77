"""Visual entailment: image, optional premise and hypothesis -> entailment, contradiction or
neutral (ModelScope ``damo/ofa_visual-entailment_snli-ve_*_en``).

This folder and ``model_repository/visual_entailment/`` hold everything of the task:
- ``VisualEntailmentSettings``: prompts and answers, read from configuration.json;
- ``prompts.py``: the instruction text built from premise and hypothesis;
- ``preprocessing.py``: one request -> token ids and pixels (the ``ofa_preprocess`` model);
- ``export.py``: the scorer (``modeling.OfaVisualEntailmentModel``) exported as an ONNX graph
  or PyTorch weights, validated, and the warmup sample;
- ``labels.py``: answer scores -> label, confidence, probabilities (``ofa_postprocess``);
- ``client.py``: the client call of ``ofa_visual_entailment``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..base import OfaTask, TaskSettings, read_answer_map
from .labels import DEFAULT_ANSWER_MAP
from .prompts import HYPOTHESIS_ONLY_PROMPT, PREMISE_HYPOTHESIS_PROMPT
# Released SNLI-VE fine-tunes: 480 px, prev_output, 80 source tokens.
RELEASED_SETTINGS = {"patch_image_size": 480, "max_src_length": 80,
                     "prompt_type": "prev_output"}


@dataclasses.dataclass(frozen=True)
class VisualEntailmentSettings(TaskSettings):
    hypothesis_prompt: str
    premise_prompt: str
    # Answer words in answer-map order; the encoder-decoder's scores come in this order.
    answers: tuple[str, ...]


class VisualEntailment(OfaTask):
    name = "visual-entailment"
    aliases = ("visual_entailment",)
    template_folder = "visual_entailment"
    public_model = "ofa_visual_entailment"
    preprocess_model = "ofa_preprocess"
    tokenizer_models = ("ofa_preprocess",)
    encoder_decoder_model = "ofa_encoder_decoder"
    settings_class = VisualEntailmentSettings

    def defaults(self) -> dict[str, Any]:
        return dict(RELEASED_SETTINGS)

    def read_settings(self, model_cfg: Mapping[str, Any], directory: Path) -> TaskSettings:
        from ...checkpoint import CheckpointError

        if model_cfg.get("prompt_type") not in ("none", "prev_output"):
            # ModelScope's visual-entailment inference raises NotImplementedError on the rest.
            raise CheckpointError(f"prompt_type {model_cfg.get('prompt_type')!r}: ModelScope's "
                                  "visual entailment takes 'none' and 'prev_output'")
        answer_map = read_answer_map(model_cfg, directory) or DEFAULT_ANSWER_MAP
        # ModelScope: cfg.model.prompt overrides the prompt of whichever form is used.
        prompt = model_cfg.get("prompt")
        return VisualEntailmentSettings(
            **TaskSettings.image_and_text(model_cfg),
            hypothesis_prompt=prompt or HYPOTHESIS_ONLY_PROMPT,
            premise_prompt=prompt or PREMISE_HYPOTHESIS_PROMPT,
            answers=tuple(answer_map.keys()))

    def shape_signature(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        return {**super().shape_signature(settings), "number of answers": len(settings["answers"])}

    def config_values(self, settings) -> dict[str, Any]:
        return {"num_answers": len(settings.task.answers)}

    def load(self, checkpoint, text):
        from .export import load_scorer

        return load_scorer(checkpoint, text)

    def write_encoder_decoder(self, loaded, directory: Path, *, runtime: str, precision: str,
                              calibration: Any, progress) -> dict[str, Any]:
        from .export import write_scorer

        return write_scorer(loaded, directory, runtime=runtime, precision=precision,
                            calibration=calibration, progress=progress)

    def write_warmup_files(self, repository: Path, version: int, names, loaded) -> None:
        from .export import write_warmup_files

        write_warmup_files(repository, version, names, loaded)
