"""Lay out the Triton model repository from the templates in ``model_repository/``.

The templates (config.pbtxt with ``$name`` placeholders, and each model's ``1/model.py``) are
source files of this project; the export renders the configs with the checkpoint's shapes
and the serving options, and copies each model.py into the version directory it writes.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import string
from pathlib import Path

from .settings import ServingSettings

PREPROCESS_MODEL = "ofa_preprocess"
ENCODER_DECODER_MODEL = "ofa_encoder_decoder"
POSTPROCESS_MODEL = "ofa_postprocess"
ENSEMBLE_MODEL = "ofa_visual_entailment"
MODEL_NAMES = (PREPROCESS_MODEL, ENCODER_DECODER_MODEL, POSTPROCESS_MODEL, ENSEMBLE_MODEL)


def template_directory() -> Path:
    """``model_repository/`` of the source tree (or $OFA_TRITON_TEMPLATES)."""
    configured = os.environ.get("OFA_TRITON_TEMPLATES")
    directory = Path(configured) if configured else Path(__file__).resolve().parents[2] / "model_repository"
    if not (directory / "ofa_visual_entailment" / "config.pbtxt").is_file():
        raise FileNotFoundError(
            f"the model-repository templates are not at {directory}; run from a source "
            "checkout (pip install -e .) or set OFA_TRITON_TEMPLATES to its model_repository/")
    return directory


def check_output_directory(repository: Path) -> None:
    """Refuse to export into the templates themselves."""
    if Path(repository).resolve() == template_directory().resolve():
        raise ValueError(f"{repository} holds the model-repository templates; export into "
                         "another directory (for example work/model_repository)")


@dataclasses.dataclass(frozen=True)
class ServingOptions:
    """Export parameters of the Triton side."""

    device: str = "cpu"                 # "cpu": KIND_CPU everywhere; "gpu": encoder-decoder KIND_GPU
    max_batch_size: int = 32
    queue_delay_us: int = 2000          # how long a step waits to grow a batch
    preprocess_instances: int = 2       # CPU instances (per server)
    encoder_decoder_instances: int = 1  # per GPU with device=gpu, per server with device=cpu
    postprocess_instances: int = 1
    intra_op_threads: int = 0           # onnxruntime threads per encoder-decoder instance; 0: all cores
    max_queue_size: int = 256           # requests waiting per step before new ones are refused
    queue_timeout_us: int = 0           # longest wait in a step's queue; 0: no limit

    def __post_init__(self):
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', not {self.device!r}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            minimum = 0 if field.name in ("queue_delay_us", "intra_op_threads", "max_queue_size",
                                          "queue_timeout_us") else 1
            if isinstance(value, int) and value < minimum:
                raise ValueError(f"{field.name} must be positive, got {value}")


def render_configs(settings: ServingSettings, options: ServingOptions) -> dict[str, str]:
    values = {
        "max_batch_size": options.max_batch_size,
        "queue_delay_us": options.queue_delay_us,
        "source_length": settings.task.max_src_length + 2,
        "decoder_length": settings.task.max_src_length + 1,
        "image_size": settings.task.patch_image_size,
        "num_answers": len(settings.task.answers),
        "preprocess_instances": options.preprocess_instances,
        "encoder_decoder_instances": options.encoder_decoder_instances,
        "encoder_decoder_kind": "KIND_GPU" if options.device == "gpu" else "KIND_CPU",
        "postprocess_instances": options.postprocess_instances,
        "intra_op_threads": options.intra_op_threads,
        "max_queue_size": options.max_queue_size,
        "queue_timeout_us": options.queue_timeout_us,
    }
    templates = template_directory()
    return {name: string.Template((templates / name / "config.pbtxt").read_text()).substitute(values)
            for name in MODEL_NAMES}


def write_model_files(repository: Path, version: int, settings: ServingSettings,
                      options: ServingOptions) -> None:
    """config.pbtxt of every model, and each Python model's model.py in ``version``."""
    templates = template_directory()
    for name, config in render_configs(settings, options).items():
        model_dir = repository / name
        (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
        (model_dir / "config.pbtxt").write_text(config)
        source = templates / name / "1" / "model.py"
        if source.is_file():
            shutil.copyfile(source, model_dir / str(version) / "model.py")
