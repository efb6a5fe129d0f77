"""The generator of ``ofa_caption_generator``: the PyTorch generation module on the instance's
device, one beam search per dynamic batch (every hypothesis of every request through one
decoder step per position; requests leave the batch as they finish)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...beam_search import SpecialTokens
from ...modeling.generation import OfaGenerationModel
from ...runtime import RuntimeRecord, trim_padding
from ...settings import ServingSettings
from ...torch_runtime import instance_device, load_weights, read_architecture
from .generation import caption_tokens, generate


class CaptionGenerator:
    """``tokens, scores = generator({"input_ids": ..., "patch_images": ...})``."""

    def __init__(self, version_dir: Path, *, instance_kind: str = "CPU", device_id: int = 0,
                 threads: int = 0, device: str = ""):
        version_dir = Path(version_dir)
        record = RuntimeRecord.read(version_dir)
        if record.runtime != "torch":
            raise ValueError(f"{version_dir} holds a {record.runtime} export; image captioning "
                             "is served by the PyTorch runtime (export with --runtime torch)")
        self.settings = ServingSettings.read(version_dir)
        self.device = instance_device(instance_kind, device_id, threads, device)
        self.model = load_weights(OfaGenerationModel(read_architecture(version_dir)),
                                  version_dir, self.device)
        task = self.settings.task
        self.generation = task.generation
        self.special = SpecialTokens(bos=self.settings.bos_token_id,
                                     pad=self.settings.pad_token_id,
                                     eos=self.settings.eos_token_id, unk=task.unk_token_id)

    @property
    def description(self) -> str:
        g = self.generation
        return (f"torch {torch.__version__} on {self.device}, beam {g.beam_size}, "
                f"max_len_b {g.max_len_b}")

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        # Every request carries the same prompt: trimmed, the source is ModelScope's, unpadded.
        batch = trim_padding(batch, self.settings.pad_token_id)
        input_ids = torch.from_numpy(batch["input_ids"]).to(self.device)
        pixels = torch.from_numpy(batch["patch_images"]).to(self.device)
        hypotheses = generate(self.model, input_ids, pixels, self.generation, self.special)
        return caption_tokens(hypotheses, self.settings.task, self.settings.pad_token_id)
