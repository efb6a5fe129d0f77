"""Export the scorer to ONNX, check the graph, and validate it against the PyTorch module.

One export config, as optimum's exporters keep one per model: input and output names, dynamic
axes, opset and dummy inputs live in ``OnnxExportConfig``. Validation after export runs
onnxruntime and the PyTorch module on the same random inputs (ragged lengths, so padding is
exercised) and reports the largest difference.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .modeling import OfaVisualEntailmentModel
from .tensor_names import ANSWER_SCORES, DECODER_INPUT_IDS, INPUT_IDS, PATCH_IMAGES

# Pinned: the graph is exported at this opset (LayerNormalization needs >= 17).
ONNX_OPSET = 17

# fp32 must match PyTorch to rounding; fp16, bf16 (PyTorch runtime) and int8 are checked against
# fp32 PyTorch, loosely (bf16 keeps 8 bits of mantissa to fp16's 11; int8 on preprocessed
# held-out images: its activation ranges are calibrated on images, and random pixels would fall
# outside them).
VALIDATION_TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2, "bf16": 1e-1, "int8": 1e-1}


class ExportValidationError(RuntimeError):
    """The exported graph does not reproduce the PyTorch module."""


@dataclasses.dataclass(frozen=True)
class OnnxExportConfig:
    image_size: int
    pad_token_id: int
    bos_token_id: int
    eos_token_id: int
    vocab_size: int
    opset: int = ONNX_OPSET
    input_names: tuple[str, ...] = OfaVisualEntailmentModel.INPUT_NAMES
    output_names: tuple[str, ...] = OfaVisualEntailmentModel.OUTPUT_NAMES

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        # Image height/width are dynamic although each export serves one size: with static
        # sizes the exporter would fold the image relative-position bias of every layer into a
        # constant ([heads, N, N] floats per layer).
        return {
            INPUT_IDS: {0: "batch", 1: "source_length"},
            PATCH_IMAGES: {0: "batch", 2: "height", 3: "width"},
            DECODER_INPUT_IDS: {0: "batch", 1: "prompt_length"},
            ANSWER_SCORES: {0: "batch"},
        }

    def random_inputs(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        """Right-padded token ids of ragged lengths (bos ... eos), decoder prompts that are the
        source without eos, and normal-ish pixels."""
        rng = np.random.Generator(np.random.PCG64(seed))
        lengths = rng.integers(3, 24, batch)
        source = np.full((batch, lengths.max()), self.pad_token_id, dtype=np.int64)
        decoder = np.full((batch, lengths.max() - 1), self.pad_token_id, dtype=np.int64)
        low = max(self.eos_token_id, self.pad_token_id) + 2
        for row, length in enumerate(lengths):
            body = rng.integers(low, self.vocab_size, length - 2)
            source[row, :length] = [self.bos_token_id, *body, self.eos_token_id]
            decoder[row, :length - 1] = source[row, :length - 1]
        pixels = rng.normal(0, 1, (batch, 3, self.image_size, self.image_size)).astype(np.float32)
        return {INPUT_IDS: source, PATCH_IMAGES: pixels, DECODER_INPUT_IDS: decoder}


# Precisions the module is traced in; int8 (CPU) is the fp32 graph quantized afterwards
# (quantization.py).
TRACED_PRECISIONS = ("fp32", "fp16")


def export_onnx(model: OfaVisualEntailmentModel, config: OnnxExportConfig, path: Path,
                precision: str = "fp32") -> None:
    """Trace the module to an ONNX graph at ``path`` and run onnx's full check.

    fp16 (for the GPU) is traced from a half-precision copy of the module: weights and
    arithmetic in fp16, the answer log-softmax in fp32, inputs and outputs fp32 so the Triton
    contract does not change with the precision."""
    import copy

    import onnx
    import torch

    if precision not in TRACED_PRECISIONS:
        raise ValueError(f"precision must be one of {TRACED_PRECISIONS}, not {precision!r}")
    traced = copy.deepcopy(model).half() if precision == "fp16" else model
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = set(path.parent.iterdir())
    sample = {k: torch.from_numpy(v) for k, v in config.random_inputs(2, seed=0).items()}
    traced.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns about tracing in general; the module is written for
        # it (no data-dependent Python branches), and validate_onnx checks the result.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            traced, tuple(sample[name] for name in config.input_names), str(path),
            input_names=list(config.input_names), output_names=list(config.output_names),
            dynamic_axes=config.dynamic_axes, opset_version=config.opset,
            do_constant_folding=True, dynamo=False)
    written = set(path.parent.iterdir()) - existing - {path}
    if written:
        _consolidate_external_data(path, written)
    onnx.checker.check_model(str(path), full_check=True)


def _consolidate_external_data(path: Path, tensor_files: set[Path]) -> None:
    """Graphs over protobuf's 2 GB limit (OFA-huge in fp32) are written by the exporter with
    one external file per tensor; keep them as one ``model.onnx.data`` beside the graph."""
    import onnx

    model = onnx.load(str(path))   # reads the external tensors into memory
    for tensor_file in tensor_files:
        tensor_file.unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)


def _session(path: Path, providers: list[str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=providers)


def validate_onnx(model, config, path: Path, precision: str,
                  providers: list[str] | None = None, batches: tuple[int, ...] = (1, 3),
                  inputs: list[dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
    """Run the graph and the PyTorch module (returning ``config.output_names`` in order) on
    the same inputs (``inputs``, or ``config.random_inputs`` in ``batches``). Checked in this
    order, so that a wrong shape cannot broadcast into a small difference: the graph's input
    and output names are the config's, the module returns one output per name, every output
    has the module's shape and infinities where the module has them; then the values, within
    VALIDATION_TOLERANCE[precision] (relative to the output's largest value for the outputs in
    ``config.relative_outputs``). Returns the figures for the export record."""
    import torch

    providers = providers or ["CPUExecutionProvider"]
    session = _session(path, providers)
    graph_inputs = sorted(i.name for i in session.get_inputs())
    graph_outputs = sorted(o.name for o in session.get_outputs())
    if (graph_inputs != sorted(config.input_names)
            or graph_outputs != sorted(config.output_names)):
        raise ExportValidationError(
            f"the {precision} ONNX graph takes {graph_inputs} and returns {graph_outputs}, the "
            f"export config names {sorted(config.input_names)} and "
            f"{sorted(config.output_names)}; do not serve it")
    worst = 0.0
    started = time.perf_counter()
    if inputs is None:
        inputs = [config.random_inputs(batch, seed=100 + index)
                  for index, batch in enumerate(batches)]
    for batch_inputs in inputs:
        outputs = session.run(list(config.output_names), batch_inputs)
        with torch.no_grad():
            module_outputs = model(*(torch.from_numpy(batch_inputs[n])
                                     for n in config.input_names))
        if isinstance(module_outputs, torch.Tensor):
            module_outputs = (module_outputs,)
        if len(module_outputs) != len(config.output_names):
            raise ExportValidationError(
                f"the module returns {len(module_outputs)} outputs, the export config names "
                f"{len(config.output_names)} ({list(config.output_names)})")
        for name, got, expected in zip(config.output_names, outputs, module_outputs):
            expected = expected.float().numpy()
            # Checked first: a wrong shape could broadcast into a small difference.
            if got.shape != expected.shape or not np.array_equal(np.isinf(got),
                                                                 np.isinf(expected)):
                raise ExportValidationError(
                    f"the {precision} ONNX graph's {name} has shape {list(got.shape)} and "
                    f"{int(np.isinf(got).sum())} infinities, the module's {list(expected.shape)} "
                    f"and {int(np.isinf(expected).sum())}; do not serve it")
            finite = np.isfinite(expected)
            if finite.any():
                difference = float(np.abs(got[finite] - expected[finite]).max())
                if name in getattr(config, "relative_outputs", ()):
                    # Hidden states and caches: relative to their scale, which grows with the
                    # model, unlike log-probabilities.
                    difference /= max(1.0, float(np.abs(expected[finite]).max()))
                worst = max(worst, difference)
    tolerance = VALIDATION_TOLERANCE[precision]
    report = {
        "precision": precision,
        "providers": session.get_providers(),
        "batches": [len(batch_inputs[config.input_names[0]]) for batch_inputs in inputs],
        "max_abs_diff_log_prob": worst,
        "tolerance": tolerance,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if not worst <= tolerance:
        raise ExportValidationError(
            f"the {precision} ONNX graph differs from the PyTorch module by {worst:.3g} "
            f"(tolerance {tolerance}); do not serve it")
    return report
