"""One visual-entailment request in, model tensors out: what ``ofa_preprocess`` calls.

Token ids are right-padded to fixed lengths (max_src_length + 2 for the source, + 1 for the
decoder prompt) so that Triton's dynamic batcher can merge any two requests. Padding changes
no score: padded encoder positions are masked, and the causal decoder never looks at them.

A request is checked against the export's input limits (``settings.limits``) first: the texts
here, the image where it is decoded.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ...limits import check_texts
from ..preprocessing import ImagePromptPreprocessor
from .prompts import PromptTemplates, build_prompt


@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """One request's tensors, without the batch dimension."""

    input_ids: np.ndarray          # int64 [max_src_length + 2], pad-filled
    patch_images: np.ndarray       # float32 [3, S, S]
    decoder_input_ids: np.ndarray  # int64 [max_src_length + 1], pad-filled


class VisualEntailmentPreprocessor(ImagePromptPreprocessor):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        task = self.settings.task
        self.templates = PromptTemplates(task.hypothesis_prompt, task.premise_prompt)
        self.decoder_length = task.decoder_length

    def source_ids(self, hypothesis: str, premise: str | None) -> list[int]:
        """The encoder's token ids, unpadded (``premise=None``: the hypothesis-only prompt)."""
        prompt = build_prompt(hypothesis, premise, self.text.max_src_length, self.templates)
        return self.text.source_ids(prompt)

    def text_inputs(self, hypothesis: str, premise: str | None) -> tuple[np.ndarray, np.ndarray]:
        """An empty premise means the hypothesis-only prompt, like an absent one."""
        source = self.source_ids(hypothesis, premise or None)
        decoder = self.text.decoder_prompt_ids(source)
        return self.padded(source, self.source_length), self.padded(decoder, self.decoder_length)

    def tensors(self, image_bytes: bytes, hypothesis: str, premise: str | None) -> ModelInputs:
        """ModelScope's preprocessing of any texts (blank ones too); only the image limits."""
        input_ids, decoder_input_ids = self.text_inputs(hypothesis, premise)
        return ModelInputs(input_ids, self.image_inputs(image_bytes), decoder_input_ids)

    def __call__(self, image_bytes: bytes, hypothesis: str, premise: str | None) -> ModelInputs:
        """One request of the service: the texts checked against the limits (first: that is
        cheap), then its tensors."""
        check_texts(hypothesis, premise, self.limits)
        return self.tensors(image_bytes, hypothesis, premise)


def stack(inputs: list[ModelInputs]) -> dict[str, np.ndarray]:
    """Batch of ModelInputs -> the graph's input dict."""
    return {field.name: np.stack([getattr(item, field.name) for item in inputs])
            for field in dataclasses.fields(ModelInputs)}
