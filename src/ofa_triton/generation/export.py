"""The generation engine's export, for every generating task: the generation module
(``modeling.OfaGenerationModel``) loaded from a checkpoint, exported for onnxruntime (an encoder
graph and a decoder-step graph, graphs.py) or the PyTorch runtime (weights), and validated
against the fp32 module on a sample batch of the task's own requests."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..modeling.generation import OfaGenerationModel
from ..onnx_export import ExportValidationError
from ..runtime import trim_padding
from ..settings import ServingSettings
from ..tensor_names import INPUT_IDS, PATCH_IMAGES
from ..text import OfaTextEncoder, decoder_prompt
from .answers import AnswerTrie, score_answers, softmax_choice
from .beam_search import Hypothesis, beam_search
from .search import best_tokens, cached_decoding, generate, special_tokens

if TYPE_CHECKING:
    from ..export import LoadedCheckpoint

Progress = Callable[[str], None]


def load_generation(checkpoint, text: OfaTextEncoder, **task_fields
                    ) -> tuple[OfaGenerationModel, ServingSettings]:
    """The checkpoint's weights in the generation module, and the settings the Triton models
    read: the task's settings with the tokenizer's <unk>, the answers' ids and
    ``task_fields`` filled in."""
    task = checkpoint.settings
    task = dataclasses.replace(task, unk_token_id=text.tokenizer.token_to_id("<unk>"),
                               answer_ids=tuple(tuple(text.answer_ids(a)) for a in task.answers),
                               **task_fields)
    model = OfaGenerationModel(checkpoint.architecture)
    model.load_checkpoint(checkpoint.load_state_dict())
    settings = ServingSettings(task=task, bos_token_id=text.bos_id, pad_token_id=text.pad_id,
                               eos_token_id=text.eos_id, task_name=checkpoint.task.name)
    return model, settings


def _teacher_forced_log_probs(model: OfaGenerationModel, batch: dict[str, np.ndarray],
                              tokens: list[list[int]], device: torch.device) -> torch.Tensor:
    """Every step's log-probabilities [B, steps, V] along given hypotheses."""
    steps = max(len(t) for t in tokens)
    input_ids = torch.from_numpy(batch[INPUT_IDS]).to(device)
    pixels = torch.from_numpy(batch[PATCH_IMAGES]).to(device)
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


def validate_weights(reference: OfaGenerationModel, directory: Path, precision: str,
                     loaded: LoadedCheckpoint, batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Load ``directory`` as the server will and compare it with the fp32 ``reference``:
    each step's log-probabilities along the reference's own outputs for ``batch`` (on the GPU
    when there is one)."""
    from ..torch_runtime import load_weights, read_architecture, validation_report

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    model = load_weights(OfaGenerationModel(read_architecture(directory)), directory, device)
    hypotheses = generate(reference, torch.from_numpy(batch[INPUT_IDS]),
                          torch.from_numpy(batch[PATCH_IMAGES]),
                          loaded.settings.task.generation, special_tokens(loaded.text))
    tokens = [sentence[0].tokens for sentence in hypotheses]
    expected = _teacher_forced_log_probs(reference, batch, tokens, torch.device("cpu"))
    got = _teacher_forced_log_probs(model, batch, tokens, device)
    if got.shape != expected.shape:   # before the values: a wrong shape could broadcast
        raise ExportValidationError(
            f"the {precision} generation weights give log-probabilities of shape "
            f"{list(got.shape)}, the fp32 module {list(expected.shape)}; do not serve them")
    finite = torch.isfinite(expected)
    worst = float((got[finite] - expected[finite]).abs().max())
    return validation_report(worst, precision, device, started, "generation weights",
                             steps=expected.shape[1])


def engine_result(decoding, batch: dict[str, np.ndarray], loaded: LoadedCheckpoint):
    """What the engine answers for ``batch`` over ``decoding`` (a StepDecoder of either
    runtime): every request's hypotheses' tokens, or with traverse the answers' scores."""
    task, text = loaded.settings.task, loaded.text
    special = special_tokens(text)
    trie = AnswerTrie(task.answer_ids, special.bos, special.eos) if task.answer_ids else None
    if task.traverse:
        prompts = [decoder_prompt(row[row != special.pad].tolist(), task.prompt_type,
                                  special.bos) for row in batch[INPUT_IDS]]
        scores = np.zeros((len(prompts), len(task.answer_ids)), dtype=np.float32)
        for length in sorted({len(p) for p in prompts}):   # one prompt length per scoring
            rows = [i for i, p in enumerate(prompts) if len(p) == length]
            group = decoding.fork()
            group.reorder(torch.tensor(rows))
            scores[rows] = score_answers(group, [prompts[i] for i in rows], task.answer_ids,
                                         trie, special.pad)
        return scores
    if trie is not None:
        decoding = trie.decoding(decoding)
    hypotheses = beam_search(decoding, len(batch[INPUT_IDS]), batch[INPUT_IDS].shape[1],
                             task.generation, special, loaded.model.arch.vocab_size)
    return [[h.tokens for h in sentence] for sentence in hypotheses]


def _same_result(expected, got) -> bool:
    if isinstance(expected, np.ndarray):   # answer scores: the same winners, close scores
        # The shape first: argmax and allclose would broadcast a wrong one.
        return bool(isinstance(got, np.ndarray) and got.shape == expected.shape
                    and (expected.argmax(-1) == got.argmax(-1)).all()
                    and np.allclose(expected, got, atol=1e-4))
    return expected == got


def write_graphs(loaded: LoadedCheckpoint, directory: Path, precision: str,
                 batch: dict[str, np.ndarray], progress: Progress = print) -> dict[str, Any]:
    """The encoder and decoder-step graphs for onnxruntime in ``directory``, each validated
    against the PyTorch module, then the engine over them against the module's on the task's
    sample ``batch`` (the same outputs, exactly)."""
    from ..onnx_export import export_onnx, validate_onnx
    from .graphs import (ENCODER_GRAPH, STEP_GRAPH, EncoderGraph, EncoderGraphConfig,
                         OnnxDecoding, StepGraph, StepGraphConfig, open_sessions)

    if precision != "fp32":
        raise ValueError(f"the generation engine's onnxruntime graphs are fp32 (onnxruntime "
                         f"serves them on the CPU); for {precision} export --runtime torch")
    settings = loaded.settings.task
    model = loaded.model
    encoder = EncoderGraph(model, settings.decoder_positions)
    encoder_config = EncoderGraphConfig(settings.patch_image_size,
                                        tuple(int(i) for i in batch[INPUT_IDS][0]))
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
    with torch.inference_mode():
        positions = settings.decoder_positions if settings.traverse else None
        expected = engine_result(
            _module_decoding(model, batch, generation, positions), batch, loaded)
    sessions = open_sessions(directory)
    got = engine_result(OnnxDecoding(*sessions, batch[INPUT_IDS], batch[PATCH_IMAGES]),
                        batch, loaded)
    if not _same_result(expected, got):
        raise ExportValidationError("the generation engine over the ONNX graphs does not find "
                                    "the PyTorch module's outputs for the sample requests; do "
                                    "not serve them")
    worst = max(v["max_abs_diff_log_prob"] for v in validation.values())
    return {"precision": precision, "runtime": "onnxruntime", "graphs": validation,
            "max_abs_diff_log_prob": worst, "tolerance": validation[STEP_GRAPH]["tolerance"],
            "sample_outputs_equal": True}


def _module_decoding(model, batch, generation, positions):
    """The PyTorch module's StepDecoder for ``batch`` with ``positions`` decoder positions."""
    input_ids = torch.from_numpy(batch[INPUT_IDS])
    if positions is None:
        return cached_decoding(model, input_ids, torch.from_numpy(batch[PATCH_IMAGES]),
                               generation)
    from ..modeling.generation import CachedDecoding

    cache = model.start(input_ids, torch.from_numpy(batch[PATCH_IMAGES]), positions)
    return CachedDecoding(model, cache, generation.temperature, generation.allowed)


def write_generator(loaded: LoadedCheckpoint, directory: Path, *, runtime: str, precision: str,
                    batch: dict[str, np.ndarray], progress: Progress = print) -> dict[str, Any]:
    """The generation module for ``runtime`` in ``directory``, validated on ``batch`` (a few
    of the task's preprocessed requests)."""
    from ..torch_runtime import write_torch_model

    batch = trim_padding(batch, loaded.text.pad_id)
    if runtime == "onnxruntime":
        return write_graphs(loaded, directory, precision, batch, progress)
    progress(f"[2/4] writing the {precision} weights for the PyTorch runtime (safetensors)")
    write_torch_model(loaded.model, directory, precision)
    progress("[3/4] validating the saved weights against the fp32 PyTorch module (each "
             "generation step's log-probabilities)")
    validation = validate_weights(loaded.model, directory, precision, loaded, batch)
    progress(f"      max |difference| {validation['max_abs_diff_log_prob']:.3g} "
             f"(tolerance {validation['tolerance']}, on {validation['device']})")
    return validation


def warmup_result(loaded: LoadedCheckpoint, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The generator's outputs for ``batch`` with the export's fp32 module: what the warmup
    sample feeds the postprocessing model."""
    task = loaded.settings.task
    batch = trim_padding(batch, loaded.text.pad_id)
    rows = len(batch[INPUT_IDS])
    with torch.inference_mode():
        decoding = _module_decoding(loaded.model, batch, task.generation,
                                    task.decoder_positions if task.traverse else None)
        result = engine_result(decoding, batch, loaded)
    tokens = np.full((rows, task.output_length), loaded.text.pad_id, dtype=np.int64)
    answer_index = np.full((rows, 1), -1, dtype=np.int64)
    if task.traverse:
        answer_index[:, 0] = softmax_choice(result)[0]
    else:
        tokens, _ = best_tokens([[Hypothesis(s[0], 0.0)] for s in result], task.output_length,
                                loaded.text.pad_id)
    return {"tokens": tokens, "answer_index": answer_index}
