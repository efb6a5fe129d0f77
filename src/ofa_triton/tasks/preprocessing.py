"""What every task's preprocessing model holds: the checkpoint's tokenizer, its image
transform and the export's request limits; each task's preprocessor adds its prompt."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..image import ImageTransform, decode_image
from ..settings import ServingSettings
from ..text import OfaTextEncoder


class ImagePromptPreprocessor:
    """Built once per model instance (tokenizer construction is not per request)."""

    def __init__(self, settings: ServingSettings, vocab_file: str | Path, merges_file: str | Path):
        task = settings.task
        self.settings = settings
        self.limits = settings.limits
        self.text = OfaTextEncoder(vocab_file, merges_file, max_src_length=task.max_src_length,
                                   prompt_type=task.prompt_type)
        self.transform = ImageTransform(task.patch_image_size, tuple(task.mean), tuple(task.std))
        # Token ids are right-padded to fixed lengths so that Triton's dynamic batcher can
        # merge any two requests.
        self.source_length = task.source_length

    @classmethod
    def from_directory(cls, directory: str | Path):
        """The layout the exporter writes: ofa_settings.json, vocab.json, merges.txt."""
        directory = Path(directory)
        return cls(ServingSettings.read(directory), directory / "vocab.json",
                   directory / "merges.txt")

    def padded(self, ids: list[int], length: int) -> np.ndarray:
        out = np.full(length, self.settings.pad_token_id, dtype=np.int64)
        out[:len(ids)] = ids
        return out

    def image_inputs(self, image_bytes: bytes) -> np.ndarray:
        """The pixels, the image checked against the export's limits as it is decoded."""
        return self.transform(decode_image(image_bytes, self.limits))


def stack(items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One request's tensors each -> the batch."""
    return {name: np.stack([item[name] for item in items]) for name in items[0]}
