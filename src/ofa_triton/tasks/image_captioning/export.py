"""Image captioning's encoder-decoder: the generation module (``modeling.OfaGenerationModel``)
loaded from a checkpoint, exported for onnxruntime (an encoder graph and a decoder-step graph,
graphs.py) or the PyTorch runtime (weights), validated against the fp32 module, and the warmup
sample of each of the task's Triton models."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...modeling.generation import OfaGenerationModel
from ...onnx_export import ExportValidationError
from ...settings import ServingSettings
from ...text import OfaTextEncoder
from ...warmup import sample_image, serialize_strings, write_sample_files
from .generation import generate, special_tokens
from .preprocessing import CaptionPreprocessor, stack

if TYPE_CHECKING:
    from ...export import LoadedCheckpoint
    from ...triton_config import ModelNames


def load_generator(checkpoint, text: OfaTextEncoder) -> tuple[OfaGenerationModel, ServingSettings]:
    """The checkpoint's weights in the generation module, and the settings the Triton models
    read (with the prompt's token count, which the maximum caption length depends on)."""
    task = checkpoint.settings
    task = dataclasses.replace(task, prompt_length=len(text.source_ids(task.prompt)),
                               unk_token_id=text.tokenizer.token_to_id("<unk>"))
    model = OfaGenerationModel(checkpoint.architecture)
    model.load_checkpoint(checkpoint.load_state_dict())
    settings = ServingSettings(task=task, bos_token_id=text.bos_id, pad_token_id=text.pad_id,
                               eos_token_id=text.eos_id, task_name=checkpoint.task.name)
    return model, settings


def _sample_batch(loaded: LoadedCheckpoint, rows: int = 2) -> dict[str, np.ndarray]:
    preprocessor = CaptionPreprocessor(loaded.settings, loaded.checkpoint.vocab_file,
                                       loaded.checkpoint.merges_file)
    image = sample_image(loaded.settings.limits)
    return stack([preprocessor(image)] * rows)


def _teacher_forced_log_probs(model: OfaGenerationModel, batch: dict[str, np.ndarray],
                              tokens: list[list[int]], device: torch.device) -> torch.Tensor:
    """Every step's log-probabilities [B, steps, V] along given hypotheses."""
    steps = max(len(t) for t in tokens)
    input_ids = torch.from_numpy(batch["input_ids"]).to(device)
    pixels = torch.from_numpy(batch["patch_images"]).to(device)
    padded = torch.tensor([[model.arch.bos_token_id, *t, *[t[-1]] * (steps - len(t))]
                           for t in tokens], device=device)
    out = []
    with torch.inference_mode():
        cache = model.start(input_ids, pixels, steps + 1)
        positions = torch.arange(steps + 1, device=device)
        for at in range(steps):
            log_probs, cache = model.step(padded[:, at], positions[at:at + 1], cache)
            out.append(log_probs.float().cpu())
    return torch.stack(out, dim=1)


def validate_generator(reference: OfaGenerationModel, directory: Path, precision: str,
                       loaded: LoadedCheckpoint) -> dict[str, Any]:
    """Load ``directory`` as the server will and compare it with the fp32 ``reference``:
    each step's log-probabilities along the reference's own captions of a sample image (on the
    GPU when there is one)."""
    from ...torch_runtime import load_weights, read_architecture, validation_report

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    model = load_weights(OfaGenerationModel(read_architecture(directory)), directory, device)
    batch = _sample_batch(loaded)
    text = loaded.text
    settings = loaded.settings.task.generation
    hypotheses = generate(reference, torch.from_numpy(batch["input_ids"]),
                          torch.from_numpy(batch["patch_images"]), settings,
                          special_tokens(text))
    tokens = [sentence[0].tokens for sentence in hypotheses]
    expected = _teacher_forced_log_probs(reference, batch, tokens, torch.device("cpu"))
    got = _teacher_forced_log_probs(model, batch, tokens, device)
    finite = torch.isfinite(expected)
    worst = float((got[finite] - expected[finite]).abs().max())
    return validation_report(worst, precision, device, started, "generation weights",
                             steps=expected.shape[1])


def write_graphs(loaded: LoadedCheckpoint, directory: Path, precision: str,
                 progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The encoder and decoder-step graphs for onnxruntime in ``directory``, each validated
    against the PyTorch module, then the whole beam search over them against the module's on
    the sample image (the same captions, exactly)."""
    from ...beam_search import beam_search
    from ...onnx_export import export_onnx, validate_onnx
    from . import caption_length
    from .graphs import (ENCODER_GRAPH, STEP_GRAPH, EncoderGraph, EncoderGraphConfig,
                         OnnxDecoding, StepGraph, StepGraphConfig, open_sessions)

    if precision != "fp32":
        raise ValueError(f"captioning's onnxruntime graphs are fp32 (onnxruntime serves them on "
                         f"the CPU); for {precision} export --runtime torch")
    settings = loaded.settings.task
    model = loaded.model
    encoder = EncoderGraph(model, caption_length(settings))
    encoder_config = EncoderGraphConfig(settings.patch_image_size,
                                        tuple(loaded.text.source_ids(settings.prompt)))
    generation = settings.generation
    step = StepGraph(model, generation.temperature, generation.allowed)
    step_config = StepGraphConfig(encoder, encoder_config, model.arch.vocab_size)
    validation = {}
    for name, module, config in ((ENCODER_GRAPH, encoder, encoder_config),
                                 (STEP_GRAPH, step, step_config)):
        progress(f"[2/4] exporting {name} (opset {config.opset})")
        export_onnx(module, config, directory / name, precision)
        progress(f"[3/4] validating {name} against the PyTorch module with onnxruntime")
        validation[name] = validate_onnx(module, config, directory / name, precision)
    batch = _sample_batch(loaded)
    special = special_tokens(loaded.text)
    expected = generate(model, torch.from_numpy(batch["input_ids"]),
                        torch.from_numpy(batch["patch_images"]), generation, special)
    sessions = open_sessions(directory)
    got = beam_search(OnnxDecoding(*sessions, batch["input_ids"], batch["patch_images"]),
                      len(batch["input_ids"]), batch["input_ids"].shape[1], generation,
                      special, model.arch.vocab_size)
    if [[h.tokens for h in s] for s in got] != [[h.tokens for h in s] for s in expected]:
        raise ExportValidationError("the beam search over the ONNX graphs does not find the "
                                    "PyTorch module's captions for the sample image; do not "
                                    "serve them")
    worst = max(v["max_abs_diff_log_prob"] for v in validation.values())
    return {"precision": precision, "runtime": "onnxruntime", "graphs": validation,
            "max_abs_diff_log_prob": worst, "tolerance": validation[STEP_GRAPH]["tolerance"],
            "sample_captions_equal": True}


def write_generator(loaded: LoadedCheckpoint, directory: Path, *, runtime: str, precision: str,
                    progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The generation module for ``runtime`` in ``directory``, validated."""
    from ...torch_runtime import write_torch_model

    if runtime == "onnxruntime":
        return write_graphs(loaded, directory, precision, progress)
    progress(f"[2/4] writing the {precision} weights for the PyTorch runtime (safetensors)")
    write_torch_model(loaded.model, directory, precision)
    progress("[3/4] validating the saved weights against the fp32 PyTorch module (each "
             "generation step's log-probabilities)")
    validation = validate_generator(loaded.model, directory, precision, loaded)
    progress(f"      max |difference| {validation['max_abs_diff_log_prob']:.3g} "
             f"(tolerance {validation['tolerance']}, on {validation['device']})")
    return validation


def write_warmup_files(repository: Path, names: ModelNames, loaded: LoadedCheckpoint) -> None:
    """The sample image through each step, with the export's fp32 module as the generator."""
    from .generation import caption_tokens

    preprocessor = CaptionPreprocessor(loaded.settings, loaded.checkpoint.vocab_file,
                                       loaded.checkpoint.merges_file)
    image = sample_image(preprocessor.limits)
    batch = stack([preprocessor(image)])
    settings = loaded.settings.task
    hypotheses = generate(loaded.model, torch.from_numpy(batch["input_ids"]),
                          torch.from_numpy(batch["patch_images"]), settings.generation,
                          special_tokens(loaded.text))
    tokens, _ = caption_tokens(hypotheses, settings, loaded.settings.pad_token_id)
    write_sample_files(repository, {
        names.step("ofa_caption_preprocess"): {"image": serialize_strings([image])},
        names.step("ofa_caption_generator"): {name: tensor[0].tobytes()
                                              for name, tensor in batch.items()},
        names.step("ofa_caption_postprocess"): {"caption_tokens": tokens[0].tobytes()},
    })
