"""Visual grounding: image + referring text -> the box it describes (ModelScope
``damo/ofa_visual-grounding_refcoco_*_en``).

This folder and ``model_repository/visual_grounding/`` hold everything of the task:
- ``GroundingSettings``: the prompt, the beam search (four ``<bin_*>`` tokens) and the box
  geometry, read from configuration.json;
- ``preprocessing.py``: image and text -> pixels, the prompt's token ids and the image's size
  (``ofa_grounding_preprocess``);
- ``box.py``: the generated bins -> the box in the original image's pixels
  (``ofa_grounding_postprocess``);
- ``export.py``: the generation engine (ofa_triton.generation) for referring texts, and the
  warmup sample;
- ``client.py``: the client call of ``ofa_visual_grounding``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..base import TaskSettings
from ..generative import GenerationTaskSettings, GenerativeTask

# ModelScope's grounding prompt (cfg.model.prompt overrides it).
GROUNDING_PROMPT = ' which region does the text " {} " describe?'
# OfaForAllTasks sets num_bins to 1000 whatever the configuration says.
NUM_BINS = 1000

# RefCOCO fine-tunes: 512 px (used only for checkpoints without configuration.json).
RELEASED_SETTINGS = {"patch_image_size": 512, "max_src_length": 80, "prompt_type": "none",
                     "max_image_size": 512}


@dataclasses.dataclass(frozen=True)
class GroundingSettings(GenerationTaskSettings):
    prompt: str = GROUNDING_PROMPT
    # ModelScope's cfg.model.max_image_size (default 512): the bins' scale, in pixels.
    max_image_size: int = 512
    num_bins: int = NUM_BINS
    # The id of <bin_0>, as ModelScope computes it: the tokenizer's full length (BPE and the
    # 9192 added tokens) - num_bins. Known once the tokenizer is.
    first_bin_id: int = 0


class VisualGrounding(GenerativeTask):
    name = "visual-grounding"
    aliases = ("visual_grounding",)
    template_folder = "visual_grounding"
    public_model = "ofa_visual_grounding"
    preprocess_model = "ofa_grounding_preprocess"
    tokenizer_models = ("ofa_grounding_preprocess",)
    encoder_decoder_model = "ofa_grounding_generator"
    settings_class = GroundingSettings
    export_module = "visual_grounding.export"

    def defaults(self) -> dict[str, Any]:
        return dict(RELEASED_SETTINGS)

    def read_settings(self, model_cfg: Mapping[str, Any], directory: Path) -> TaskSettings:
        return GroundingSettings(**TaskSettings.image_and_text(model_cfg),
                                 beam_search=GenerationTaskSettings.read_beam_search(model_cfg),
                                 prompt=model_cfg.get("prompt") or GROUNDING_PROMPT,
                                 max_image_size=int(model_cfg.get("max_image_size", 512)))

    def settings_from_text(self, checkpoint, text) -> dict[str, Any]:
        return {"first_bin_id": text.vocab_size - NUM_BINS}
