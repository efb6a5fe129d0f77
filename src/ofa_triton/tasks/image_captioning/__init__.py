"""Image captioning: image -> caption (ModelScope ``damo/ofa_image-caption_coco_*_en``).

This folder and ``model_repository/image_captioning/`` hold everything of the task:
- ``CaptioningSettings``: the prompt and the beam search, read from configuration.json;
- ``preprocessing.py``: one image -> pixels and the prompt's token ids (``ofa_caption_preprocess``);
- ``generation.py``: beam search over the cached decoder, and ModelScope's caption text;
- ``export.py``: the generation module's weights, validated, and the warmup sample;
- ``runtime.py``: the generator of ``ofa_caption_generator``, one beam search per dynamic batch;
- ``client.py``: the client call of ``ofa_image_caption``.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..base import OfaTask, TaskSettings

# ModelScope's captioning prompt (cfg.model.prompt overrides it).
CAPTION_PROMPT = " what does the image describe?"

# Released COCO captioning fine-tunes: 480 px.
RELEASED_SETTINGS = {"patch_image_size": 480, "max_src_length": 80, "prompt_type": "none"}


@dataclasses.dataclass(frozen=True)
class CaptioningSettings(TaskSettings):
    prompt: str
    # configuration.json's model.beam_search merged over ModelScope's defaults
    # (beam_search.GenerationSettings's fields).
    beam_search: Mapping[str, Any]
    # The prompt's token count (bos and eos included), known once the tokenizer is: ModelScope's
    # maximum caption length depends on it (max_len_a * src_len + max_len_b).
    prompt_length: int = 0
    unk_token_id: int = 3       # BART's <unk>; the beam search's unk_penalty applies to it

    @property
    def generation(self):
        from ...beam_search import GenerationSettings

        return GenerationSettings(**self.beam_search)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CaptioningSettings":
        settings = super().from_dict(data)
        return dataclasses.replace(settings, beam_search=dict(data["beam_search"]))


class ImageCaptioning(OfaTask):
    name = "image-captioning"
    aliases = ("image_captioning",)
    template_folder = "image_captioning"
    public_model = "ofa_image_caption"
    tokenizer_models = ("ofa_caption_preprocess", "ofa_caption_postprocess")
    encoder_decoder_model = "ofa_caption_generator"
    settings_class = CaptioningSettings

    def defaults(self) -> dict[str, Any]:
        return dict(RELEASED_SETTINGS)

    def read_settings(self, model_cfg: Mapping[str, Any], directory: Path) -> TaskSettings:
        from ...beam_search import GenerationSettings

        try:
            generation = GenerationSettings.from_configuration(model_cfg.get("beam_search"))
        except (TypeError, ValueError) as error:
            from ...checkpoint import CheckpointError

            raise CheckpointError(f"configuration.json model.beam_search: {error}") from None
        return CaptioningSettings(**TaskSettings.image_and_text(model_cfg),
                                  prompt=model_cfg.get("prompt") or CAPTION_PROMPT,
                                  beam_search=dataclasses.asdict(generation))

    def shape_signature(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        return {**super().shape_signature(settings), "maximum caption length":
                caption_length(CaptioningSettings.from_dict(settings))}

    def config_values(self, settings) -> dict[str, Any]:
        return {"caption_length": caption_length(settings.task)}

    def load(self, checkpoint, text):
        from .export import load_generator

        return load_generator(checkpoint, text)

    def write_encoder_decoder(self, loaded, directory: Path, *, runtime: str, precision: str,
                              calibration: Any, progress) -> dict[str, Any]:
        from .export import write_generator

        return write_generator(loaded, directory, runtime=runtime, precision=precision,
                               progress=progress)

    def write_warmup_files(self, repository: Path, names, loaded) -> None:
        from .export import write_warmup_files

        write_warmup_files(repository, names, loaded)


def caption_length(settings: CaptioningSettings) -> int:
    """The longest caption in tokens, eos included: ModelScope's max_len + 1, max_len from the
    prompt's length."""
    return settings.generation.max_len(settings.prompt_length) + 1


_NO_PUNCTUATION = str.maketrans({mark: None for mark in string.punctuation})


def caption_text(text, tokens: Sequence[int]) -> str:
    """A caption's ids -> the caption, as OfaForAllTasks words it: ``text`` (an
    OfaTextEncoder) decodes them as ModelScope's tokenizer does, then strip, every punctuation
    character removed (English), strip again. Here rather than in generation.py so that the
    postprocessing model imports no torch."""
    return text.decode(list(tokens)).strip().translate(_NO_PUNCTUATION).strip()
