"""Image captioning: image -> caption (ModelScope ``damo/ofa_image-caption_coco_*_en``).

This folder and ``model_repository/image_captioning/`` hold everything of the task:
- ``CaptioningSettings``: the prompt and the beam search, read from configuration.json;
- ``preprocessing.py``: one image -> pixels and the prompt's token ids (``ofa_caption_preprocess``);
- ``caption_text``: the best hypothesis worded as ModelScope's caption;
- ``export.py``: the generation engine's export (ofa_triton.generation) for the caption
  prompt, and the warmup sample;
- ``client.py``: the client call of ``ofa_image_caption``.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..base import TaskSettings
from ..generative import GenerationTaskSettings, GenerativeTask

# ModelScope's captioning prompt (cfg.model.prompt overrides it).
CAPTION_PROMPT = " what does the image describe?"

# Released COCO captioning fine-tunes: 480 px.
RELEASED_SETTINGS = {"patch_image_size": 480, "max_src_length": 80, "prompt_type": "none"}


@dataclasses.dataclass(frozen=True)
class CaptioningSettings(GenerationTaskSettings):
    prompt: str = CAPTION_PROMPT
    # The prompt's token count (bos and eos included), known once the tokenizer is: ModelScope's
    # maximum caption length depends on it (max_len_a * src_len + max_len_b).
    prompt_length: int = 0

    @property
    def longest_source(self) -> int:
        return self.prompt_length


class ImageCaptioning(GenerativeTask):
    name = "image-captioning"
    aliases = ("image_captioning",)
    template_folder = "image_captioning"
    public_model = "ofa_image_caption"
    preprocess_model = "ofa_caption_preprocess"
    tokenizer_models = ("ofa_caption_preprocess", "ofa_caption_postprocess")
    encoder_decoder_model = "ofa_caption_generator"
    settings_class = CaptioningSettings
    export_module = "image_captioning.export"

    def defaults(self) -> dict[str, Any]:
        return dict(RELEASED_SETTINGS)

    def read_settings(self, model_cfg: Mapping[str, Any], directory: Path) -> TaskSettings:
        return CaptioningSettings(**TaskSettings.image_and_text(model_cfg),
                                  beam_search=GenerationTaskSettings.read_beam_search(model_cfg),
                                  prompt=model_cfg.get("prompt") or CAPTION_PROMPT)

    def settings_from_text(self, checkpoint, text) -> dict[str, Any]:
        # ModelScope's maximum caption length depends on the prompt's token count.
        return {"prompt_length": len(text.source_ids(checkpoint.settings.prompt))}


_NO_PUNCTUATION = str.maketrans({mark: None for mark in string.punctuation})


def caption_text(text, tokens: Sequence[int]) -> str:
    """A caption's ids -> the caption, as OfaForAllTasks words it: ``text`` (an
    OfaTextEncoder) decodes them as ModelScope's tokenizer does, then strip, every punctuation
    character removed (English), strip again. Here rather than in generation.py so that the
    postprocessing model imports no torch."""
    return text.decode(list(tokens)).strip().translate(_NO_PUNCTUATION).strip()
