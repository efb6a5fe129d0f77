"""The generator of ``ofa_caption_generator``: the generation module on the instance's
device, one beam search per dynamic batch (every hypothesis of every request through one
decoder step per position; requests leave the batch as they finish)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...beam_search import SpecialTokens, beam_search
from ...modeling.generation import OfaGenerationModel
from ...runtime import RuntimeRecord, trim_padding
from ...settings import ServingSettings
from ...torch_runtime import instance_device, load_weights, read_architecture
from .generation import caption_tokens, generate


class CaptionGenerator:
    """``tokens, scores = generator({"input_ids": ..., "patch_images": ...})``, in the runtime
    the version was exported for: the PyTorch generation module on the instance's device, or
    the encoder and decoder-step graphs in onnxruntime on the CPU."""

    def __init__(self, version_dir: Path, *, instance_kind: str = "CPU", device_id: int = 0,
                 threads: int = 0, device: str = ""):
        version_dir = Path(version_dir)
        self.runtime = RuntimeRecord.read(version_dir).runtime
        self.settings = ServingSettings.read(version_dir)
        task = self.settings.task
        self.generation = task.generation
        self.special = SpecialTokens(bos=self.settings.bos_token_id,
                                     pad=self.settings.pad_token_id,
                                     eos=self.settings.eos_token_id, unk=task.unk_token_id)
        if self.runtime == "torch":
            self.device = instance_device(instance_kind, device_id, threads, device)
            self.model = load_weights(OfaGenerationModel(read_architecture(version_dir)),
                                      version_dir, self.device)
            self.vocab_size = self.model.arch.vocab_size
        else:
            if instance_kind.upper() == "GPU" or device.startswith("cuda"):
                raise RuntimeError("captioning's onnxruntime graphs run on the CPU; export "
                                   "--runtime torch for a GPU")
            from .graphs import open_sessions

            self.device = torch.device("cpu")
            self.sessions = open_sessions(version_dir, threads)
            self.vocab_size = int(self.sessions[1].get_outputs()[0].shape[1])

    @property
    def description(self) -> str:
        g = self.generation
        where = f"torch {torch.__version__}" if self.runtime == "torch" else "onnxruntime"
        return f"{where} on {self.device}, beam {g.beam_size}, max_len_b {g.max_len_b}"

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        # Every request carries the same prompt: trimmed, the source is ModelScope's, unpadded.
        batch = trim_padding(batch, self.settings.pad_token_id)
        if self.runtime == "torch":
            hypotheses = generate(self.model, torch.from_numpy(batch["input_ids"]).to(self.device),
                                  torch.from_numpy(batch["patch_images"]).to(self.device),
                                  self.generation, self.special)
        else:
            from .graphs import OnnxDecoding

            decoding = OnnxDecoding(*self.sessions, batch["input_ids"], batch["patch_images"])
            hypotheses = beam_search(decoding, len(batch["input_ids"]),
                                     batch["input_ids"].shape[1], self.generation, self.special,
                                     self.vocab_size)
        return caption_tokens(hypotheses, self.settings.task, self.settings.pad_token_id)
