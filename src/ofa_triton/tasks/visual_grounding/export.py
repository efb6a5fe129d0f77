"""Grounding's sample requests: what the export validates the generation engine on, and the
warmup sample of each of the task's Triton models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...generation.export import warmup_result
from ...tensor_names import GENERATOR_INPUTS
from ...warmup import sample_image, serialize_strings, write_sample_files
from ..preprocessing import stack
from .preprocessing import GroundingPreprocessor

if TYPE_CHECKING:
    from ...export import LoadedCheckpoint
    from ...triton_config import ModelNames

SAMPLE_TEXTS = ("the man on the left", "a red car parked near the tree")


def sample_batch(loaded: LoadedCheckpoint, rows: int = 2) -> dict[str, np.ndarray]:
    """``rows`` requests of the sample image with texts of different lengths: the generator's
    inputs (the image size goes from preprocessing to postprocessing)."""
    preprocessor = GroundingPreprocessor(loaded.settings, loaded.checkpoint.vocab_file,
                                         loaded.checkpoint.merges_file)
    image = sample_image(loaded.settings.limits)
    batch = stack([preprocessor.tensors(image, SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)])
                   for i in range(rows)])
    return {name: batch[name] for name in GENERATOR_INPUTS}


def write_warmup_files(repository: Path, version: int, names: ModelNames,
                       loaded: LoadedCheckpoint) -> None:
    """The sample request through each step, with the export's fp32 module as the generator."""
    preprocessor = GroundingPreprocessor(loaded.settings, loaded.checkpoint.vocab_file,
                                         loaded.checkpoint.merges_file)
    image = sample_image(loaded.settings.limits)
    request = preprocessor.tensors(image, SAMPLE_TEXTS[0])
    batch = {name: request[name][None] for name in GENERATOR_INPUTS}
    tokens = warmup_result(loaded, batch)["tokens"]
    write_sample_files(repository, version, {
        names.step("ofa_grounding_preprocess"): {
            "image": serialize_strings([image]),
            "text": serialize_strings([SAMPLE_TEXTS[0].encode()])},
        names.step("ofa_grounding_generator"): {name: batch[name][0].tobytes()
                                                for name in GENERATOR_INPUTS},
        names.step("ofa_grounding_postprocess"): {"tokens": tokens[0].tobytes(),
                                                  "image_size": request["image_size"].tobytes()},
    })
