"""One grounding request in, model tensors out: what ``ofa_grounding_preprocess`` calls.

ModelScope's OfaVisualGroundingPreprocessor: the image as for every task (image.py), and its
size (after EXIF orientation), from which the box is scaled back; the text through
``pre_caption`` (truncated to max_src_length words) into the prompt
`` which region does the text " {text} " describe?``, as bos + BPE + eos, right-padded to
max_src_length + 2 so that any two requests can share a batch.
"""

from __future__ import annotations

import numpy as np

from ...image import decode_image
from ...limits import check_text
from ...tensor_names import INPUT_IDS, PATCH_IMAGES
from ...text import pre_caption
from ..preprocessing import ImagePromptPreprocessor


class GroundingPreprocessor(ImagePromptPreprocessor):
    def source_ids(self, text: str) -> list[int]:
        prompt = self.settings.task.prompt.format(pre_caption(text, self.text.max_src_length))
        return self.text.source_ids(prompt)

    def tensors(self, image_bytes: bytes, text: str) -> dict[str, np.ndarray]:
        """ModelScope's preprocessing of any text; only the image limits."""
        image = decode_image(image_bytes, self.limits)
        return {INPUT_IDS: self.padded(self.source_ids(text), self.source_length),
                PATCH_IMAGES: self.transform(image),
                "image_size": np.array(image.size, dtype=np.int64)}

    def __call__(self, image_bytes: bytes, text: str) -> dict[str, np.ndarray]:
        """One request of the service: the text checked against the limits first."""
        check_text(text, "text", self.limits, "the description of the region to find")
        return self.tensors(image_bytes, text)
