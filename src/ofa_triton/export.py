"""Checkpoint -> Triton model-repository artifacts: the validated ONNX graph, the tokenizer
files and the settings the Python models read, plus a record of how they were made.

Layout written under the repository (one Triton version directory per model; every model
name may carry the export's name prefix):

    <model>/config.pbtxt                              rendered from model_repository/
    <model>/warmup/                                   the warmup sample's tensors (warmup.py)
    <model>/<version>/manifest.json                   source and artifact sha256, settings,
                                                      validation, versions (every model)
    ofa_encoder_decoder/<version>/model.onnx          the scorer graph (--runtime onnxruntime)
    ofa_encoder_decoder/<version>/model.safetensors   or its weights and architecture
              .../ofa_architecture.json               (--runtime torch; torch_runtime.py)
    ofa_encoder_decoder/<version>/ofa_runtime.json    which of the two, in which precision
    ofa_encoder_decoder/<version>/ofa_settings.json   (the pad id, to trim padding per batch)
    ofa_preprocess/<version>/vocab.json, merges.txt   the checkpoint's BPE files
    ofa_preprocess/<version>/ofa_settings.json        image size, mean/std, prompts, token ids
    ofa_postprocess/<version>/ofa_settings.json       the answers and their order

Exporting into a repository that already holds these models adds a version beside the
others (the next free number unless one is given). Triton's versions of one model share one
config.pbtxt, so the new version must have the same tensor shapes (image size, source length,
number of answers); a checkpoint with other shapes goes under another name prefix. The configs
keep serving the version they served: ``ofa-triton deploy`` switches to the new one.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import platform
import shutil
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__
from .checkpoint import OfaCheckpoint, open_checkpoint
from .limits import InputLimits
from .manifest import MANIFEST_FILE, write_manifest
from .modeling import OfaVisualEntailmentModel
from .onnx_export import ONNX_OPSET, OnnxExportConfig, export_onnx, validate_onnx
from .preprocessing import VisualEntailmentPreprocessor
from .runtime import GRAPH_FILE, RUNTIMES, RuntimeRecord
from .settings import SETTINGS_FILE, ServingSettings
from .text import OfaTextEncoder
from .triton_config import (ModelNames, ServedVersions, ServingOptions, check_output_directory,
                            read_served_versions, write_model_files)
from .warmup import write_warmup_files

# The Triton release the tests serve with (nvidia-pytriton 0.7.0 ships it). The GPU image's
# base (docker/Dockerfile) is a newer release: README, "The GPU container".
TRITON_VERSION = "2.51.0"

DEFAULT_PRECISION = {"cpu": "fp32", "gpu": "fp16"}
# onnxruntime on the CPU (measured: BENCHMARKS.md); on GPUs the PyTorch runtime, the one that
# runs on the GPU machines this project is measured on (README, "Runtimes").
DEFAULT_RUNTIME = {"cpu": "onnxruntime", "gpu": "torch"}
RUNTIME_PRECISIONS = {"onnxruntime": ("fp32", "fp16", "int8"), "torch": ("fp32", "fp16", "bf16")}
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclasses.dataclass(frozen=True)
class LoadedCheckpoint:
    checkpoint: OfaCheckpoint
    text: OfaTextEncoder
    model: OfaVisualEntailmentModel
    settings: ServingSettings


def load_checkpoint(source: str | Path, **setting_overrides: Any) -> LoadedCheckpoint:
    """Open, check and load a checkpoint into the PyTorch scorer (the one way every caller
    does it: exporter, tests, baselines)."""
    checkpoint = open_checkpoint(source, **setting_overrides)
    task = checkpoint.settings
    text = OfaTextEncoder(checkpoint.vocab_file, checkpoint.merges_file,
                          max_src_length=task.max_src_length, prompt_type=task.prompt_type)
    arch = checkpoint.architecture
    if text.vocab_size != arch.vocab_size:
        raise ValueError(f"the tokenizer has {text.vocab_size} tokens (vocab.json plus 9192 "
                         f"<code_*>/<bin_*>) but config.json says vocab_size={arch.vocab_size}; "
                         "vocab.json and the weights do not belong together")
    answer_ids = text.answer_token_ids(list(task.answers))
    model = OfaVisualEntailmentModel(arch, answer_ids)
    model.load_checkpoint(checkpoint.load_state_dict())
    settings = ServingSettings(task=task, bos_token_id=text.bos_id, pad_token_id=text.pad_id,
                               eos_token_id=text.eos_id, answer_token_ids=tuple(answer_ids))
    return LoadedCheckpoint(checkpoint, text, model, settings)


def package_versions() -> dict[str, str]:
    names = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "safetensors", "tokenizers", "numpy",
             "pillow")
    versions = {"ofa-triton": __version__, "python": platform.python_version(),
                "triton": TRITON_VERSION}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _score(model: OfaVisualEntailmentModel, batch: dict) -> Any:
    import torch

    with torch.no_grad():
        return model(**{name: torch.from_numpy(value) for name, value in batch.items()}).numpy()


def export_config_for(loaded: LoadedCheckpoint) -> OnnxExportConfig:
    arch = loaded.checkpoint.architecture
    return OnnxExportConfig(image_size=loaded.settings.task.patch_image_size,
                            pad_token_id=arch.pad_token_id, bos_token_id=arch.bos_token_id,
                            eos_token_id=arch.eos_token_id, vocab_size=arch.vocab_size)


def existing_versions(repository: Path, names: ModelNames) -> dict[int, Path]:
    """{version: a manifest of it} for the versions already in ``repository`` under
    ``names`` (any of the four models)."""
    versions = {}
    for model in names.by_template().values():
        model_dir = repository / model
        if model_dir.is_dir():
            for directory in model_dir.iterdir():
                if directory.is_dir() and directory.name.isdigit():
                    versions.setdefault(int(directory.name), directory / MANIFEST_FILE)
    return versions


# Settings that decide the configs' tensor shapes, which every version of a model shares.
SHAPE_SETTINGS = ("patch_image_size", "max_src_length")


def check_new_version(repository: Path, names: ModelNames, version: int,
                      settings: ServingSettings) -> None:
    """Refuse to overwrite a version, or to add one whose shapes differ from the others'."""
    existing = existing_versions(repository, names)
    if version in existing:
        raise ValueError(f"version {version} of {names.ensemble} already exists in {repository}; "
                         f"export as --version {max(existing) + 1}, or remove that version's "
                         "directories first")
    new = settings.to_dict()
    for other, manifest in sorted(existing.items()):
        if not manifest.is_file():
            continue
        old = json.loads(manifest.read_text())["settings"]
        differing = [key for key in SHAPE_SETTINGS if old[key] != new[key]]
        if len(old["answers"]) != len(new["answers"]):
            differing.append("number of answers")
        if differing:
            raise ValueError(
                f"version {other} in {repository} differs in {', '.join(differing)}; the versions "
                "of one Triton model share one config.pbtxt, so this checkpoint cannot be a "
                "version of the same models: export it under another name, for example "
                "--name-prefix large_")


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
        from .quantization import graph_inputs, quantize_convolutions
        from .synthetic import photo_like_jpegs

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
    from .torch_runtime import validate_torch_model, write_torch_model

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


def export_repository(source: str | Path, repository: str | Path, *,
                      options: ServingOptions = ServingOptions(), precision: str | None = None,
                      runtime: str | None = None, version: int | None = None,
                      progress: Callable[[str], None] = print,
                      limits: InputLimits = InputLimits(), calibration_images: Path | None = None,
                      **setting_overrides: Any) -> dict[str, Any]:
    """Export ``source`` into ``repository`` (configs, model.py files, the encoder-decoder for
    ``runtime``, tokenizer files, settings, warmup sample) as ``version`` (default: the next
    free one) and return the export record. ``calibration_images``: a directory of typical
    request images for ``precision="int8"`` (default: generated ones)."""
    device = options.device
    names = options.names
    precision = precision or DEFAULT_PRECISION[device]
    runtime = runtime or DEFAULT_RUNTIME[device]
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    if precision == "int8" and device != "cpu":
        raise ValueError("--precision int8 is for --device cpu (onnxruntime's CPU int8 "
                         "kernels); on a GPU export fp16")
    if precision not in RUNTIME_PRECISIONS[runtime]:
        raise ValueError(f"--runtime {runtime} takes --precision "
                         f"{', '.join(RUNTIME_PRECISIONS[runtime])}, not {precision}")
    if calibration_images is not None and precision != "int8":
        raise ValueError("--calibration-images applies to --precision int8 only")
    calibration = None
    if precision == "int8":
        from .quantization import calibration_images as read_calibration_images

        calibration = read_calibration_images(calibration_images)   # bad paths fail first
    options = options.for_runtime(runtime)
    repository = Path(repository)
    check_output_directory(repository)
    if version is None:
        version = max(existing_versions(repository, names), default=0) + 1
    if version < 1:
        raise ValueError(f"version must be 1 or more, got {version}")

    progress(f"[1/4] loading checkpoint {source}")
    loaded = load_checkpoint(source, **setting_overrides)
    # The request limits travel with the other serving settings (ofa_settings.json, manifest).
    loaded = dataclasses.replace(loaded, settings=dataclasses.replace(loaded.settings,
                                                                      limits=limits))
    check_new_version(repository, names, version, loaded.settings)
    # A new repository serves this version; in an existing one what serves stays (switch
    # with ofa-triton deploy).
    served = read_served_versions(repository, names.ensemble) or ServedVersions(version)
    checkpoint = loaded.checkpoint
    arch = checkpoint.architecture
    progress(f"      {checkpoint.layout} layout, d_model={arch.d_model}, "
             f"{arch.encoder_layers}+{arch.decoder_layers} layers, {arch.resnet_type}, "
             f"{loaded.settings.task.patch_image_size}px, answers {list(loaded.settings.task.answers)}")

    config = export_config_for(loaded)
    graph_dir = repository / names.encoder_decoder / str(version)
    with tempfile.TemporaryDirectory(prefix="ofa-export-") as scratch:
        if runtime == "torch":
            validation = write_torch_artifacts(loaded, config, Path(scratch), precision,
                                               progress)
        else:
            validation = write_graph(loaded, config, Path(scratch) / GRAPH_FILE, precision,
                                     calibration, progress)
        graph_dir.mkdir(parents=True, exist_ok=True)
        # The graph or weights, and the external-data files of graphs over 2 GB.
        for artifact in Path(scratch).iterdir():
            shutil.move(str(artifact), graph_dir / artifact.name)
    RuntimeRecord(runtime, precision).write(graph_dir)

    progress(f"[4/4] writing version {version} of {names.ensemble}: configs, tokenizer "
             "files, settings, warmup sample")
    write_model_files(repository, version, loaded.settings, options, served)
    preprocess_dir = repository / names.preprocess / str(version)
    postprocess_dir = repository / names.postprocess / str(version)
    for directory in (preprocess_dir, graph_dir, postprocess_dir):
        directory.mkdir(parents=True, exist_ok=True)
        loaded.settings.write(directory)
    shutil.copyfile(checkpoint.vocab_file, preprocess_dir / "vocab.json")
    shutil.copyfile(checkpoint.merges_file, preprocess_dir / "merges.txt")
    write_warmup_files(repository, names, VisualEntailmentPreprocessor.from_directory(
        preprocess_dir), lambda batch: _score(loaded.model, batch))

    record = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": {"model": checkpoint.source, "directory": str(checkpoint.directory),
                   "layout": checkpoint.layout, "sha256": checkpoint.file_hashes()},
        "export": {"device": device, "runtime": runtime, "precision": precision,
                   "opset": ONNX_OPSET if runtime == "onnxruntime" else None,
                   "serving": dataclasses.asdict(options),
                   "version": version, "input_names": list(config.input_names),
                   "output_names": list(config.output_names),
                   "dynamic_axes": config.dynamic_axes},
        "architecture": arch.to_dict(),
        "settings": loaded.settings.to_dict(),
        "validation": validation,
        "versions": package_versions(),
    }
    for name in names.by_template().values():
        write_manifest(repository / name / str(version), record)
    progress(f"done: version {version} of {names.ensemble} in {repository} ({runtime}, "
             f"{precision})")
    return record
