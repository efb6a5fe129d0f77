"""Visual entailment's encoder-decoder: the scorer (``modeling.OfaVisualEntailmentModel``)
loaded from a checkpoint, exported for onnxruntime (an ONNX graph: fp32, fp16, or int8
convolutions) or for the PyTorch runtime (weights), validated against the fp32 module, and the
warmup sample each of the task's Triton models runs at load.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...limits import InputLimits
from ...modeling import OfaVisualEntailmentModel
from ...onnx_export import OnnxExportConfig, export_onnx, validate_onnx
from ...runtime import GRAPH_FILE
from ...settings import SETTINGS_FILE, ServingSettings
from ...tensor_names import ANSWER_SCORES
from ...text import OfaTextEncoder
from ...warmup import sample_image, serialize_strings, write_sample_files
from .preprocessing import ModelInputs, VisualEntailmentPreprocessor, stack

if TYPE_CHECKING:
    from ...export import LoadedCheckpoint
    from ...triton_config import ModelNames

SAMPLE_HYPOTHESIS = "two dogs play in the snow"
SAMPLE_PREMISE = "a winter scene in a city park"


def load_scorer(checkpoint, text: OfaTextEncoder) -> tuple[OfaVisualEntailmentModel,
                                                          ServingSettings]:
    """The checkpoint's weights in the scorer, and the settings the Triton models read."""
    task = checkpoint.settings
    answer_ids = text.answer_token_ids(list(task.answers))
    model = OfaVisualEntailmentModel(checkpoint.architecture, answer_ids)
    model.load_checkpoint(checkpoint.load_state_dict())
    settings = ServingSettings(task=task, bos_token_id=text.bos_id, pad_token_id=text.pad_id,
                               eos_token_id=text.eos_id, answer_token_ids=tuple(answer_ids),
                               task_name=checkpoint.task.name)
    return model, settings


def _score(model: OfaVisualEntailmentModel, batch: dict) -> Any:
    import torch

    with torch.no_grad():
        return model(**{name: torch.from_numpy(value) for name, value in batch.items()}).numpy()


def export_config_for(loaded: LoadedCheckpoint) -> OnnxExportConfig:
    arch = loaded.checkpoint.architecture
    return OnnxExportConfig(image_size=loaded.settings.task.patch_image_size,
                            pad_token_id=arch.pad_token_id, bos_token_id=arch.bos_token_id,
                            eos_token_id=arch.eos_token_id, vocab_size=arch.vocab_size)


def write_scorer(loaded, directory: Path, *, runtime: str, precision: str, calibration: Any,
                 progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The scorer for ``runtime`` in ``directory``, validated; returns the figures."""
    config = export_config_for(loaded)
    if runtime == "torch":
        return write_torch_artifacts(loaded, config, directory, precision, progress)
    return write_graph(loaded, config, directory / GRAPH_FILE, precision, calibration, progress)


def write_graph(loaded: LoadedCheckpoint, config: OnnxExportConfig, path: Path, precision: str,
                calibration: tuple[list[bytes], str] | None = None,
                progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The validated graph at ``path``; returns its validation figures (and, for int8, how it
    was quantized). ``calibration``: int8's images and where they came from
    (quantization.calibration_images)."""
    progress(f"[2/4] exporting the {precision} ONNX graph (opset {config.opset})")
    if precision != "int8":
        export_onnx(loaded.model, config, path, precision)
        progress("[3/4] validating the graph against the PyTorch module with onnxruntime")
        validation = validate_onnx(loaded.model, config, path, precision)
    else:
        from ...quantization import graph_inputs, quantize_convolutions
        from ...synthetic import photo_like_jpegs

        images, described = calibration
        preprocessor = VisualEntailmentPreprocessor(loaded.settings, loaded.checkpoint.vocab_file,
                                                    loaded.checkpoint.merges_file)
        with tempfile.TemporaryDirectory(prefix="ofa-fp32-") as scratch:
            fp32_graph = Path(scratch) / GRAPH_FILE
            export_onnx(loaded.model, config, fp32_graph, "fp32")
            quantization = quantize_convolutions(
                fp32_graph, path, graph_inputs(preprocessor, images), progress)
        progress("[3/4] validating the graph against the PyTorch module with onnxruntime, on "
                 "held-out generated images")
        held_out = graph_inputs(preprocessor, photo_like_jpegs(8, seed=9000), batch_size=4)
        validation = validate_onnx(loaded.model, config, path, precision, inputs=held_out)
        validation["quantization"] = {**quantization, "calibration": described}
    progress(f"      max |difference| {validation['max_abs_diff_log_prob']:.3g} "
             f"(tolerance {validation['tolerance']})")
    return validation


def write_torch_artifacts(loaded: LoadedCheckpoint, config: OnnxExportConfig, directory: Path,
                          precision: str, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The PyTorch runtime's weights and architecture in ``directory``, validated by loading
    them as the server will; returns the validation figures."""
    from ...torch_runtime import validate_torch_model, write_torch_model

    progress(f"[2/4] writing the {precision} weights for the PyTorch runtime (safetensors)")
    write_torch_model(loaded.model, directory, precision)
    loaded.settings.write(directory)      # the answers' token ids, read by the loader
    progress("[3/4] validating the saved weights against the fp32 PyTorch module")
    inputs = [config.random_inputs(batch, seed=100 + index) for index, batch in enumerate((1, 3))]
    validation = validate_torch_model(loaded.model, directory, precision, inputs)
    (directory / SETTINGS_FILE).unlink()  # written again with the others below
    progress(f"      max |difference| {validation['max_abs_diff_log_prob']:.3g} "
             f"(tolerance {validation['tolerance']}, on {validation['device']})")
    return validation


def sample_request(limits: InputLimits = InputLimits()) -> dict[str, object]:
    """The warmup request: the shared sample image with natural texts cut to the limits."""
    cut = limits.max_text_chars
    return {"image": sample_image(limits), "hypothesis": SAMPLE_HYPOTHESIS[:cut],
            "premise": SAMPLE_PREMISE[:cut]}


def write_warmup_files(repository: Path, version: int, names: ModelNames,
                       loaded: LoadedCheckpoint) -> None:
    """The sample request through each step, with the export's PyTorch module as the
    encoder-decoder: its strings for ofa_preprocess, its tensors for ofa_encoder_decoder, its
    answer scores for ofa_postprocess."""
    preprocessor = VisualEntailmentPreprocessor(loaded.settings, loaded.checkpoint.vocab_file,
                                                loaded.checkpoint.merges_file)
    request = sample_request(preprocessor.limits)
    inputs: ModelInputs = preprocessor(request["image"], request["hypothesis"],
                                       request["premise"])
    batch = stack([inputs])
    write_sample_files(repository, version, {
        names.step("ofa_preprocess"): {
            name: serialize_strings([value if isinstance(value, bytes) else value.encode("utf-8")])
            for name, value in request.items()},
        names.step("ofa_encoder_decoder"): {name: tensor[0].tobytes()
                                            for name, tensor in batch.items()},
        names.step("ofa_postprocess"): {
            ANSWER_SCORES: np.asarray(_score(loaded.model, batch), dtype=np.float32)[0].tobytes()},
    })
