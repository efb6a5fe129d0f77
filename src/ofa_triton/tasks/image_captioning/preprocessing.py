"""One captioning request in, model tensors out: what ``ofa_caption_preprocess`` calls.

ModelScope's OfaImageCaptioningPreprocessor: the image as for every task (image.py), the prompt
(`` what does the image describe?`` unless configuration.json names another) as bos + BPE +
eos, right-padded to the fixed length max_src_length + 2 so that any two requests can share a
batch.
"""

from __future__ import annotations

import numpy as np

from ...tensor_names import INPUT_IDS, PATCH_IMAGES
from ..preprocessing import ImagePromptPreprocessor


class CaptionPreprocessor(ImagePromptPreprocessor):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.input_ids = self.padded(self.text.source_ids(self.settings.task.prompt),
                                     self.source_length)

    def __call__(self, image_bytes: bytes) -> dict[str, np.ndarray]:
        """One request's tensors, without the batch dimension."""
        return {INPUT_IDS: self.input_ids.copy(), PATCH_IMAGES: self.image_inputs(image_bytes)}
