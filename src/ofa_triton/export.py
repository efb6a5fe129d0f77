"""Checkpoint -> Triton model-repository artifacts: the validated ONNX graph, the tokenizer
files and the settings the Python models read, plus a record of how they were made.

Layout written under the repository (one Triton version directory per model; every model
name may carry the export's name prefix):

    <model>/config.pbtxt                              rendered from model_repository/
    <model>/<version>/manifest.json                   source and artifact sha256, settings,
                                                      validation, versions (every model)
    <model>/<version>/warmup/                         the warmup sample's tensors (warmup.py)
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
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .checkpoint import OfaCheckpoint, open_checkpoint
from .limits import InputLimits
from .manifest import MANIFEST_FILE, package_versions, write_manifest
from .onnx_export import ONNX_OPSET
from .runtime import RUNTIME_PRECISIONS, RUNTIMES, RuntimeRecord
from .settings import ServingSettings
from .text import OfaTextEncoder
from .triton_config import (ModelNames, ServedVersions, ServingOptions, check_output_directory,
                            read_served_versions, write_model_files)

DEFAULT_PRECISION = {"cpu": "fp32", "gpu": "fp16"}
# onnxruntime on the CPU (measured: BENCHMARKS.md); on GPUs the PyTorch runtime, the one that
# runs on the GPU machines this project is measured on (README, "Runtimes").
DEFAULT_RUNTIME = {"cpu": "onnxruntime", "gpu": "torch"}


@dataclasses.dataclass(frozen=True)
class LoadedCheckpoint:
    checkpoint: OfaCheckpoint
    text: OfaTextEncoder
    model: Any                  # the task's PyTorch module(s)
    settings: ServingSettings


def text_encoder(checkpoint: OfaCheckpoint) -> OfaTextEncoder:
    """The checkpoint's tokenizer, checked against its architecture."""
    settings = checkpoint.settings
    text = OfaTextEncoder(checkpoint.vocab_file, checkpoint.merges_file,
                          max_src_length=settings.max_src_length, prompt_type=settings.prompt_type)
    if text.vocab_size != checkpoint.architecture.vocab_size:
        raise ValueError(f"the tokenizer has {text.vocab_size} tokens (vocab.json plus 9192 "
                         "<code_*>/<bin_*>) but config.json says vocab_size="
                         f"{checkpoint.architecture.vocab_size}; vocab.json and the weights do "
                         "not belong together")
    return text


def load_checkpoint(source: str | Path, task: str | None = None,
                    **setting_overrides: Any) -> LoadedCheckpoint:
    """Open, check and load a checkpoint into its task's PyTorch modules (the one way every
    caller does it: exporter, tests, baselines)."""
    return load_opened(open_checkpoint(source, task, **setting_overrides))


def load_opened(checkpoint: OfaCheckpoint) -> LoadedCheckpoint:
    text = text_encoder(checkpoint)
    model, settings = checkpoint.task.load(checkpoint, text)
    return LoadedCheckpoint(checkpoint, text, model, settings)


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


def check_new_version(repository: Path, names: ModelNames, version: int,
                      settings: ServingSettings) -> None:
    """Refuse to overwrite a version, or to add one whose shapes differ from the others'."""
    existing = existing_versions(repository, names)
    if version in existing:
        raise ValueError(f"version {version} of {names.ensemble} already exists in {repository}; "
                         f"export as --version {max(existing) + 1}, or remove that version's "
                         "directories first")
    task = names.ofa_task
    new = task.shape_signature(settings.to_dict())
    for other, manifest in sorted(existing.items()):
        if not manifest.is_file():
            continue
        old = task.shape_signature(json.loads(manifest.read_text())["settings"])
        differing = [key for key in new if old[key] != new[key]]
        if differing:
            raise ValueError(
                f"version {other} in {repository} differs in {', '.join(differing)}; the versions "
                "of one Triton model share one config.pbtxt, so this checkpoint cannot be a "
                "version of the same models: export it under another name, for example "
                "--name-prefix large_")


def export_repository(source: str | Path, repository: str | Path, *,
                      options: ServingOptions = ServingOptions(), precision: str | None = None,
                      runtime: str | None = None, version: int | None = None,
                      task: str | None = None,
                      progress: Callable[[str], None] = print,
                      limits: InputLimits = InputLimits(), calibration_images: Path | None = None,
                      **setting_overrides: Any) -> dict[str, Any]:
    """Export ``source`` into ``repository`` as ``version`` (default: the next free one): the
    models of its task (configuration.json's, or ``task``): configs, model.py files, the
    encoder-decoder for ``runtime``, tokenizer files, settings, warmup sample; returns the
    export record. ``calibration_images``: a directory of typical request images for
    ``precision="int8"`` (default: generated ones)."""
    device = options.device
    progress(f"[1/4] loading checkpoint {source}")
    checkpoint = open_checkpoint(source, task, **setting_overrides)   # no weights yet
    supported = checkpoint.task.runtimes
    precision = precision or DEFAULT_PRECISION[device]
    runtime = runtime or (DEFAULT_RUNTIME[device] if DEFAULT_RUNTIME[device] in supported
                          else supported[0])
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    if runtime not in supported:
        raise ValueError(f"{checkpoint.task.name} is served by --runtime "
                         f"{' or '.join(supported)}, not {runtime}")
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

    loaded = load_opened(checkpoint)
    names = options.names(checkpoint.task.name)
    if version is None:
        version = max(existing_versions(repository, names), default=0) + 1
    if version < 1:
        raise ValueError(f"version must be 1 or more, got {version}")
    # The request limits travel with the other serving settings (ofa_settings.json, manifest).
    loaded = dataclasses.replace(loaded, settings=dataclasses.replace(loaded.settings,
                                                                      limits=limits))
    check_new_version(repository, names, version, loaded.settings)
    # A new repository serves this version; in an existing one what serves stays (switch
    # with ofa-triton deploy).
    served = read_served_versions(repository, names.ensemble) or ServedVersions(version)
    arch = checkpoint.architecture
    progress(f"      {checkpoint.task.name}, {checkpoint.layout} layout, "
             f"d_model={arch.d_model}, {arch.encoder_layers}+{arch.decoder_layers} layers, "
             f"{arch.resnet_type}, {loaded.settings.task.patch_image_size}px")

    graph_dir = repository / names.encoder_decoder / str(version)
    with tempfile.TemporaryDirectory(prefix="ofa-export-") as scratch:
        validation = checkpoint.task.write_encoder_decoder(
            loaded, Path(scratch), runtime=runtime, precision=precision,
            calibration=calibration, progress=progress)
        graph_dir.mkdir(parents=True, exist_ok=True)
        # The graphs or weights, and the external-data files of graphs over 2 GB.
        for artifact in Path(scratch).iterdir():
            shutil.move(str(artifact), graph_dir / artifact.name)
    RuntimeRecord(runtime, precision).write(graph_dir)

    progress(f"[4/4] writing version {version} of {names.ensemble}: configs, tokenizer "
             "files, settings, warmup sample")
    write_model_files(repository, version, loaded.settings, options, served, names)
    for template, name in names.by_template().items():
        if template == checkpoint.task.public_model:
            continue   # the ensemble has no files of its own
        directory = repository / name / str(version)
        directory.mkdir(parents=True, exist_ok=True)
        loaded.settings.write(directory)
        if template in checkpoint.task.tokenizer_models:
            shutil.copyfile(checkpoint.vocab_file, directory / "vocab.json")
            shutil.copyfile(checkpoint.merges_file, directory / "merges.txt")
    checkpoint.task.write_warmup_files(repository, version, names, loaded)

    record = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": {"model": checkpoint.source, "directory": str(checkpoint.directory),
                   "layout": checkpoint.layout, "sha256": checkpoint.file_hashes()},
        "export": {"device": device, "runtime": runtime, "precision": precision,
                   "opset": ONNX_OPSET if runtime == "onnxruntime" else None,
                   "serving": dataclasses.asdict(options),
                   "version": version, "task": checkpoint.task.name},
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
