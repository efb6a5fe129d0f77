"""Image captioning's sample requests: what the export validates the generation engine on
(ofa_triton.generation.export), and the warmup sample of each of the task's Triton models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...generation.export import warmup_result
from ...warmup import sample_image, serialize_strings, write_sample_files
from ..preprocessing import stack
from .preprocessing import CaptionPreprocessor

if TYPE_CHECKING:
    from ...export import LoadedCheckpoint
    from ...triton_config import ModelNames


def sample_batch(loaded: LoadedCheckpoint, rows: int = 2) -> dict[str, np.ndarray]:
    preprocessor = CaptionPreprocessor(loaded.settings, loaded.checkpoint.vocab_file,
                                       loaded.checkpoint.merges_file)
    return stack([preprocessor(sample_image(loaded.settings.limits))] * rows)


def write_warmup_files(repository: Path, version: int, names: ModelNames,
                       loaded: LoadedCheckpoint) -> None:
    """The sample image through each step, with the export's fp32 module as the generator."""
    image = sample_image(loaded.settings.limits)
    batch = sample_batch(loaded, rows=1)
    tokens = warmup_result(loaded, batch)["tokens"]
    write_sample_files(repository, version, {
        names.step("ofa_caption_preprocess"): {"image": serialize_strings([image])},
        names.step("ofa_caption_generator"): {name: tensor[0].tobytes()
                                              for name, tensor in batch.items()},
        names.step("ofa_caption_postprocess"): {"tokens": tokens[0].tobytes()},
    })
