"""One VQA request in, model tensors out: what ``ofa_vqa_preprocess`` calls.

ModelScope's OfaVisualQuestionAnsweringPreprocessor: the image as for every task (image.py);
the question through ``pre_question`` (truncated to max_src_length words), a ``?`` appended
when it does not end with one, then `` {question}`` as bos + BPE + eos, right-padded to
max_src_length + 2 so that any two requests can share a batch.
"""

from __future__ import annotations

import numpy as np

from ...limits import check_text
from ...tensor_names import INPUT_IDS, PATCH_IMAGES
from ...text import pre_question
from ..preprocessing import ImagePromptPreprocessor


def question_prompt(question: str, max_words: int) -> str:
    question = pre_question(question, max_words)
    if not question.endswith("?"):
        question += "?"
    return f" {question}"


class VqaPreprocessor(ImagePromptPreprocessor):
    def source_ids(self, question: str) -> list[int]:
        return self.text.source_ids(question_prompt(question, self.text.max_src_length))

    def tensors(self, image_bytes: bytes, question: str) -> dict[str, np.ndarray]:
        """ModelScope's preprocessing of any question; only the image limits."""
        return {INPUT_IDS: self.padded(self.source_ids(question), self.source_length),
                PATCH_IMAGES: self.image_inputs(image_bytes)}

    def __call__(self, image_bytes: bytes, question: str) -> dict[str, np.ndarray]:
        """One request of the service: the question checked against the limits first."""
        check_text(question, "question", self.limits, "the question to answer about the image")
        return self.tensors(image_bytes, question)
