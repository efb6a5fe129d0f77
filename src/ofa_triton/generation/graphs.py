"""The generation engine's two ONNX graphs for onnxruntime, and the beam search's decoder
over them.

- ``encoder.onnx``: (input_ids, patch_images) -> what every generation step reads and never
  changes: the encoder's keys and values of every decoder layer, its padding mask, and the
  position biases of every decoder position (OfaGenerationModel.start);
- ``decoder_step.onnx``: (tokens, at, the self-attention cache, the encoder's part) -> the
  next token's log-probabilities and the updated cache (OfaGenerationModel.step). The cache
  goes in and out, of a fixed length (the longest output), so one graph serves every step.

Export configs as ``onnx_export.OnnxExportConfig`` is for the entailment scorer: names,
dynamic axes and random inputs; validation runs each graph against the PyTorch module.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..modeling.decoder import DecoderCache
from ..modeling.generation import OfaGenerationModel
from ..onnx_export import ONNX_OPSET
from ..tensor_names import GENERATOR_INPUTS, INPUT_IDS, PATCH_IMAGES

ENCODER_GRAPH = "encoder.onnx"
STEP_GRAPH = "decoder_step.onnx"
CACHE = ("self_k", "self_v")
ENCODER_STATE = ("cross_k", "cross_v", "encoder_mask", "self_bias", "cross_bias")


class EncoderGraph(nn.Module):
    INPUT_NAMES = GENERATOR_INPUTS
    OUTPUT_NAMES = ENCODER_STATE

    def __init__(self, model: OfaGenerationModel, positions: int):
        super().__init__()
        self.model, self.positions = model, positions

    def forward(self, input_ids: Tensor, patch_images: Tensor) -> tuple[Tensor, ...]:
        cache = self.model.start(input_ids, patch_images, self.positions)
        return tuple(getattr(cache, name) for name in ENCODER_STATE)


class StepGraph(nn.Module):
    INPUT_NAMES = ("tokens", "at", *CACHE, *ENCODER_STATE)
    OUTPUT_NAMES = ("log_probs", "next_self_k", "next_self_v")

    def __init__(self, model: OfaGenerationModel, temperature: float = 1.0,
                 allowed: tuple[int, int] | None = None):
        super().__init__()
        self.model, self.temperature, self.allowed = model, temperature, allowed

    def forward(self, tokens: Tensor, at: Tensor, self_k: Tensor, self_v: Tensor,
                cross_k: Tensor, cross_v: Tensor, encoder_mask: Tensor, self_bias: Tensor,
                cross_bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cache = DecoderCache(self_k, self_v, cross_k, cross_v, encoder_mask, self_bias,
                             cross_bias)
        log_probs, cache = self.model.step(tokens, at, cache, self.temperature, self.allowed)
        return log_probs, cache.self_k, cache.self_v


@dataclasses.dataclass(frozen=True)
class EncoderGraphConfig:
    image_size: int
    # A source of the task's (its prompt's token ids): the random inputs' token ids.
    source_ids: tuple[int, ...]
    opset: int = ONNX_OPSET
    input_names: tuple[str, ...] = EncoderGraph.INPUT_NAMES
    output_names: tuple[str, ...] = EncoderGraph.OUTPUT_NAMES
    relative_outputs: tuple[str, ...] = EncoderGraph.OUTPUT_NAMES

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        # Image height/width dynamic for the reason the scorer's are (onnx_export.py).
        return {INPUT_IDS: {0: "batch", 1: "source_length"},
                PATCH_IMAGES: {0: "batch", 2: "height", 3: "width"},
                "cross_k": {1: "batch", 3: "source"}, "cross_v": {1: "batch", 3: "source"},
                "encoder_mask": {0: "batch", 3: "source"}, "cross_bias": {3: "source"}}

    def random_inputs(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.Generator(np.random.PCG64(seed))
        pixels = rng.normal(0, 1, (batch, 3, self.image_size, self.image_size))
        return {INPUT_IDS: np.array([self.source_ids] * batch, dtype=np.int64),
                PATCH_IMAGES: pixels.astype(np.float32)}


@dataclasses.dataclass(frozen=True)
class StepGraphConfig:
    encoder: EncoderGraph
    encoder_config: EncoderGraphConfig
    vocab_size: int
    opset: int = ONNX_OPSET
    input_names: tuple[str, ...] = StepGraph.INPUT_NAMES
    output_names: tuple[str, ...] = StepGraph.OUTPUT_NAMES
    relative_outputs: tuple[str, ...] = ("next_self_k", "next_self_v")

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        rows = {"tokens": {0: "rows"}, "self_k": {1: "rows"}, "self_v": {1: "rows"},
                "cross_k": {1: "rows", 3: "source"}, "cross_v": {1: "rows", 3: "source"},
                "encoder_mask": {0: "rows", 3: "source"}, "cross_bias": {3: "source"},
                "log_probs": {0: "rows"}, "next_self_k": {1: "rows"}, "next_self_v": {1: "rows"}}
        return rows

    def random_inputs(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        """The encoder's real outputs for random pixels, random tokens at a random position and
        a random cache, so that every input carries information."""
        rng = np.random.Generator(np.random.PCG64(seed))
        encoder_inputs = self.encoder_config.random_inputs(batch, seed)
        with torch.no_grad():
            state = self.encoder(*(torch.from_numpy(encoder_inputs[n])
                                   for n in self.encoder_config.input_names))
        inputs = {name: tensor.float().numpy() for name, tensor in zip(ENCODER_STATE, state)}
        layers, rows, heads, _, head_dim = inputs["cross_k"].shape
        positions = inputs["self_bias"].shape[-1]
        for name in CACHE:
            inputs[name] = rng.normal(0, 1, (layers, rows, heads, positions, head_dim)).astype(
                np.float32)
        inputs["tokens"] = rng.integers(4, self.vocab_size, rows).astype(np.int64)
        inputs["at"] = np.array([rng.integers(0, positions)], dtype=np.int64)
        return inputs


class OnnxDecoding:
    """A StepDecoder (ofa_triton.beam_search) over the two graphs in onnxruntime: the cache is
    numpy on the host, reordered with the hypotheses the search keeps."""

    def __init__(self, encoder, step, input_ids: np.ndarray, patch_images: np.ndarray):
        self.step_session = step
        state = encoder.run(list(ENCODER_STATE), {INPUT_IDS: input_ids,
                                                  PATCH_IMAGES: patch_images})
        self.state = dict(zip(ENCODER_STATE, state))
        layers, rows, heads, _, head_dim = self.state["cross_k"].shape
        positions = self.state["self_bias"].shape[-1]
        empty = np.zeros((layers, rows, heads, positions, head_dim), dtype=np.float32)
        self.state.update(self_k=empty, self_v=empty.copy())

    def step(self, tokens: Tensor, at: int) -> Tensor:
        log_probs, self_k, self_v = self.step_session.run(list(StepGraph.OUTPUT_NAMES), {
            "tokens": tokens.numpy(), "at": np.array([at], dtype=np.int64), **self.state})
        self.state.update(self_k=self_k, self_v=self_v)
        return torch.from_numpy(log_probs)

    def fork(self) -> "OnnxDecoding":
        """A decoder with the same state that reorders and steps on its own."""
        twin = object.__new__(OnnxDecoding)
        twin.step_session, twin.state = self.step_session, dict(self.state)
        return twin

    def reorder(self, rows: Tensor) -> None:
        order = rows.numpy()
        for name in ("self_k", "self_v", "cross_k", "cross_v"):
            self.state[name] = np.take(self.state[name], order, axis=1)
        self.state["encoder_mask"] = np.take(self.state["encoder_mask"], order, axis=0)


def open_sessions(directory: Path, threads: int = 0):
    """The two graphs in onnxruntime's CPU provider."""
    import onnxruntime as ort

    from ..runtime import session_options

    options = session_options(threads)
    return tuple(ort.InferenceSession(str(Path(directory) / name), options,
                                      providers=["CPUExecutionProvider"])
                 for name in (ENCODER_GRAPH, STEP_GRAPH))
