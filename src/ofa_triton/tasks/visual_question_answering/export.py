"""VQA's sample requests: what the export validates the generation engine on, and the warmup
sample of each of the task's Triton models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...generation.export import warmup_result
from ...warmup import sample_image, serialize_strings, write_sample_files
from ..preprocessing import stack
from .preprocessing import VqaPreprocessor

if TYPE_CHECKING:
    from ...export import LoadedCheckpoint
    from ...triton_config import ModelNames

SAMPLE_QUESTIONS = ("what is in the picture?", "what color is the sky")


def sample_batch(loaded: LoadedCheckpoint, rows: int = 2) -> dict[str, np.ndarray]:
    """``rows`` requests of the sample image with questions of different lengths."""
    preprocessor = VqaPreprocessor(loaded.settings, loaded.checkpoint.vocab_file,
                                   loaded.checkpoint.merges_file)
    image = sample_image(loaded.settings.limits)
    return stack([preprocessor.tensors(image, SAMPLE_QUESTIONS[i % len(SAMPLE_QUESTIONS)])
                  for i in range(rows)])


def write_warmup_files(repository: Path, version: int, names: ModelNames,
                       loaded: LoadedCheckpoint) -> None:
    """The sample request through each step, with the export's fp32 module as the generator."""
    batch = sample_batch(loaded, rows=1)
    result = warmup_result(loaded, batch)
    write_sample_files(repository, version, {
        names.step("ofa_vqa_preprocess"): {
            "image": serialize_strings([sample_image(loaded.settings.limits)]),
            "question": serialize_strings([SAMPLE_QUESTIONS[0].encode()])},
        names.step("ofa_vqa_generator"): {name: tensor[0].tobytes()
                                          for name, tensor in batch.items()},
        names.step("ofa_vqa_postprocess"): {name: result[name][0].tobytes()
                                            for name in ("tokens", "answer_index")},
    })
